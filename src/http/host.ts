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

/**
 * RFC 9112 §3.2 / RFC 3986 §3.2.2: a Host is `host [":" port]`, the host an IP literal in
 * brackets, an IPv4 address or a registered name (empty allowed). Anything else is refused at the
 * edge with a 400: passed on, it failed in the router's HTTP client (undici asserts on an unclosed
 * bracket) as if the instance had, and took the instance out of rotation.
 */
const VALID_HOST = /^(?:\[(?:[0-9A-Fa-f:.]+(?:%(?:25)?[\w.~-]+)?|v[0-9A-Fa-f]+\.[\w.~!$&'()*+,;=:-]+)\]|[\w.~!$&'()*+,;=%-]*)(?::[0-9]*)?$/

export function isValidHost(host: string): boolean {
  return VALID_HOST.test(host)
}

/** More than one Host field (RFC 9112 §3.2: a 400): Node keeps the first, a proxy in front may have judged by another. */
export function hasSeveralHosts(rawHeaders: readonly string[]): boolean {
  let seen = false
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i] as string
    if (name.length === 4 && name.toLowerCase() === 'host') {
      if (seen) return true
      seen = true
    }
  }
  return false
}
