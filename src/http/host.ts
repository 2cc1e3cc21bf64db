/** The Host header's name, without its port. */

/** The name as sent (Waiter looks a token up by it as it is: token names are case-sensitive). */
export function hostAsSent(host: string | undefined): string {
  if (host === undefined) return ''
  if (host.startsWith('[')) return host.slice(0, host.indexOf(']') + 1)
  const colon = host.indexOf(':')
  return colon === -1 ? host : host.slice(0, colon)
}

/** The name in lower case, as the router's own host names are compared (DNS names ignore case). */
export function hostWithoutPort(host: string | undefined): string {
  return hostAsSent(host).toLowerCase()
}
