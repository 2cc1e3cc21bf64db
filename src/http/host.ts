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

/**
 * The token a Host names: as sent (token names are case-sensitive, as in Waiter), else in lower
 * case when only that exists (every Host-named token was found so until maitre looked them up as
 * sent, and DNS names ignore case: curl sends `MyApp.example` as typed).
 */
export function tokenNamedByHost(host: string, exists: (name: string) => boolean): string {
  if (exists(host)) return host
  const lower = host.toLowerCase()
  return lower !== host && exists(lower) ? lower : host
}
