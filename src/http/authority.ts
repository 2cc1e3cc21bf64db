/** `host:port` as a URL or an :authority holds it: an IPv6 address in brackets (RFC 3986 §3.2.2). */
export function authority(host: string, port: number | string): string {
  return `${host.includes(':') && !host.startsWith('[') ? `[${host}]` : host}:${port}`
}
