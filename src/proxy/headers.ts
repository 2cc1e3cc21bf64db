/** Header hygiene between client and instance (RFC 9110 §7.6.1 hop-by-hop, Waiter's x-waiter-*). */
import type { IncomingHttpHeaders } from 'node:http'
import { ROUTER_COOKIES, setsRouterCookie, withoutRouterCookies } from '../auth/cookie.ts'

export const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-authenticate',
  'proxy-authorization',
  'proxy-connection',
  'te',
  // RFC 2616's misspelt "Trailers" (Waiter strips it). "Trailer" itself is end to end: it
  // announces the trailer fields that follow the body.
  'trailers',
  'transfer-encoding',
  'upgrade',
  // HTTP/2's upgrade settings (RFC 7540 §3.2.1): for the connection they came on, and a field
  // HTTP/2 itself refuses to carry.
  'http2-settings',
])

/** Connection-specific fields HTTP/2 forbids (RFC 9113 §8.2.2) beyond the hop-by-hop ones: never relayed. */
const CONNECTION_SPECIFIC = new Set([...HOP_BY_HOP, 'http2-settings'])

/** Fields HTTP/2 allows once only (Node refuses a second value): an HTTP/2 client gets the first. */
const SINGLE_VALUE = new Set([
  'access-control-allow-credentials', 'access-control-max-age', 'access-control-request-method', 'age', 'authorization',
  'content-encoding', 'content-language', 'content-length', 'content-location', 'content-md5', 'content-range',
  'content-type', 'date', 'dnt', 'etag', 'expires', 'from', 'host', 'if-match', 'if-modified-since', 'if-none-match',
  'if-range', 'if-unmodified-since', 'last-modified', 'location', 'max-forwards', 'proxy-authorization', 'range',
  'referer', 'retry-after', 'tk', 'upgrade-insecure-requests', 'user-agent', 'x-content-type-options',
])

export const VIA = '1.1 maitre'
export const COLD_START_HEADER = 'x-maitre-cold-start'

function hasRouterCookie(value: string | string[]): boolean {
  const text = Array.isArray(value) ? value.join(';') : value
  for (const name of ROUTER_COOKIES) if (text.includes(name)) return true
  return false
}

/** Header names the Connection header lists: also hop-by-hop for this one message. */
function connectionListed(headers: IncomingHttpHeaders | Record<string, unknown>): Set<string> | undefined {
  const field = headers['connection']
  // (undici hands a field sent on several lines over as an array; Node's parser joins them.)
  const value = Array.isArray(field) ? field.join(',') : field
  if (typeof value !== 'string' || value === '') return undefined
  // The common values name no other header; skip building a set for them on every message.
  const lower = value.toLowerCase()
  if (lower === 'keep-alive' || lower === 'close') return undefined
  return new Set(lower.split(',').map((s) => s.trim()))
}

export interface BackendRequestContext {
  readonly cid: string
  readonly clientAddress: string
  readonly proto: 'http' | 'https'
  readonly authorization: string
  /** Unset for a service served without authentication: the instance hears of no principal. */
  readonly principal: string | undefined
}

/** The headers sent to an instance: the client's, minus hop-by-hop and x-waiter-*, plus Waiter's. */
export function backendRequestHeaders(incoming: IncomingHttpHeaders, ctx: BackendRequestContext): Record<string, string | string[]> {
  const listed = connectionListed(incoming)
  const out: Record<string, string | string[]> = {}
  for (const name in incoming) {
    const value = incoming[name]
    if (value === undefined || name.startsWith(':') || name.startsWith('x-waiter-') || listed?.has(name) === true) continue
    if (HOP_BY_HOP.has(name)) {
      // TE is hop-by-hop, but "trailers" is what a gRPC client says and its server expects.
      if (name === 'te' && value === 'trailers') out[name] = value
      continue
    }
    if (name === 'authorization' || name === 'expect') continue
    if (name === 'cookie' && hasRouterCookie(value)) {
      // The router's own cookies (x-waiter-auth) are credentials for the router, not the instance's business.
      const kept = withoutRouterCookies(Array.isArray(value) ? value.join('; ') : value)
      if (kept !== undefined) out[name] = kept
      continue
    }
    out[name] = value
  }
  lengthAfterDisposition(out)
  out['x-cid'] = ctx.cid
  out['authorization'] = ctx.authorization
  if (ctx.principal !== undefined) {
    out['x-waiter-auth-principal'] = ctx.principal
    out['x-waiter-auth-user'] = ctx.principal
    out['x-waiter-authenticated-principal'] = ctx.principal
  }
  const via = incoming['via']
  out['via'] = via === undefined ? VIA : `${via}, ${VIA}`
  const forwardedFor = incoming['x-forwarded-for']
  out['x-forwarded-for'] = forwardedFor === undefined ? ctx.clientAddress : `${forwardedFor}, ${ctx.clientAddress}`
  if (incoming['x-forwarded-proto'] === undefined) out['x-forwarded-proto'] = ctx.proto
  if (incoming['x-forwarded-host'] === undefined && incoming.host !== undefined) out['x-forwarded-host'] = incoming.host
  return out
}

/** The instance's response headers as the client gets them. */
export function clientResponseHeaders(
  backend: Readonly<Record<string, string | string[] | undefined>>,
  cid: string,
): Record<string, string | string[]> {
  const listed = connectionListed(backend)
  const out: Record<string, string | string[]> = {}
  for (const name in backend) {
    const value = backend[name]
    if (value === undefined || CONNECTION_SPECIFIC.has(name) || name.startsWith(':') || listed?.has(name) === true) continue
    if (name === 'set-cookie') {
      // An instance cannot set (or clear) the router's own cookies: the auth cookie is the router's to give.
      const kept = (Array.isArray(value) ? value : [String(value)]).filter((c) => !setsRouterCookie(c))
      if (kept.length > 0) out[name] = kept
      continue
    }
    out[name] = value
  }
  out['x-cid'] = cid
  const via = backend['via']
  out['via'] = via === undefined ? VIA : `${String(via)}, ${VIA}`
  return lengthAfterDisposition(out)
}

/**
 * Node's writer reads a Content-Disposition that comes after a Content-Length as UTF-8 (its
 * support for non-ASCII file names, nodejs/node#46528): the instance's bytes, which the router
 * relays as they came (latin1 strings), were then rewritten, or refused as invalid characters
 * (a 502 for any download named in Chinese). With the length after it, they go out untouched.
 */
export function lengthAfterDisposition<T extends Record<string, unknown>>(headers: T): T {
  if (headers['content-disposition'] === undefined || headers['content-length'] === undefined) return headers
  const length = headers['content-length']
  delete headers['content-length']
  ;(headers as Record<string, unknown>)['content-length'] = length
  return headers
}

/** An HTTP/2 client takes one value of a single-value field: the first, as HTTP/1.1 readers mostly do. */
export function forHttp2(headers: Record<string, string | string[]>): Record<string, string | string[]> {
  for (const name in headers) {
    const value = headers[name]
    if (Array.isArray(value) && SINGLE_VALUE.has(name)) headers[name] = value[0] ?? ''
  }
  return headers
}

/**
 * Fields a trailer section must not carry (RFC 9110 §6.5.1: framing, routing, request
 * modifiers, authentication, response control and content processing), on top of the
 * connection's own; a recipient may drop them, and the router does.
 */
const NOT_IN_TRAILERS = new Set([
  ...CONNECTION_SPECIFIC,
  'content-length', 'content-type', 'content-encoding', 'content-range', 'trailer', 'host', 'expect', 'max-forwards',
  'cache-control', 'authorization', 'proxy-authorization', 'cookie', 'set-cookie', 'www-authenticate', 'proxy-authenticate',
  'age', 'date', 'expires', 'location', 'retry-after', 'vary', 'warning',
])

/** Whether a field may be sent in a trailer section (RFC 9110 §6.5.1). */
export function allowedInTrailers(name: string): boolean {
  return !NOT_IN_TRAILERS.has(name) && !name.startsWith(':')
}

/** The fields of a trailer section that pass: allowed in trailers (RFC 9110 §6.5.1) and by `keep`. */
function passingTrailers(trailers: Readonly<Record<string, string | string[] | undefined>>, keep: (name: string) => boolean): Record<string, string | string[]> | undefined {
  let out: Record<string, string | string[]> | undefined
  for (const name in trailers) {
    const value = trailers[name]
    if (value === undefined || NOT_IN_TRAILERS.has(name) || name.startsWith(':') || !keep(name)) continue
    ;(out ??= {})[name] = value
  }
  return out
}

/** The instance's trailers as the client gets them: end-to-end fields only (never framing, connection or control ones). */
export function clientTrailers(trailers: Readonly<Record<string, string | string[] | undefined>>): Record<string, string | string[]> | undefined {
  return passingTrailers(trailers, keepAll)
}

const keepAll = (): boolean => true

/** Request fields the router writes itself (backendRequestHeaders): never taken from a client's trailers. */
const ROUTER_SET = new Set(['x-cid', 'via', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'forwarded'])

/**
 * The client's request trailers as the instance gets them: what RFC 9110 allows in a trailer
 * section, and none of the fields the router itself sets or strips in the request's headers
 * (Waiter's x-waiter-* and principal headers, x-cid, via, x-forwarded-*): a client cannot
 * forge in its trailers what the router would never let through in its headers.
 */
export function backendRequestTrailers(trailers: Readonly<Record<string, string | string[] | undefined>>): Record<string, string | string[]> | undefined {
  return passingTrailers(trailers, notRouterSet)
}

const notRouterSet = (name: string): boolean => !name.startsWith('x-waiter-') && !ROUTER_SET.has(name)
