/**
 * DNS rebinding: a page whose host name an attacker points at the router's address is
 * same-origin to the browser, which then sends the page's requests, and hands it the answers, as
 * if the router were that site. A router that trusts its callers by their address (one-user)
 * would take them for its admin. So on such a router a browser's request must name the router in
 * its Host, or, on the data path, name no service but by its Host (the page of a token's own host
 * calling that token is fine; one naming another token or a command in headers is not).
 */
import { MaitreError } from '../errors.ts'
import { hostWithoutPort } from './host.ts'

type Headers = Readonly<Record<string, string | string[] | undefined>>

/** A browser says so: Origin on writes and cross-origin requests, Sec-Fetch-Site on every request. Clients outside a browser (curl, undici's fetch, Waiter's CLI) send neither. */
export function fromBrowser(headers: Headers): boolean {
  return headers['origin'] !== undefined || headers['sec-fetch-site'] !== undefined
}

/** The x-waiter-* headers that tune a request and name no service (Waiter's per-request ones, less the token). */
const TUNING = new Set(['x-waiter-timeout', 'x-waiter-queue-timeout', 'x-waiter-streaming-timeout', 'x-waiter-debug', 'x-waiter-fallback-period-secs', 'x-waiter-async-check-interval', 'x-waiter-async-request-timeout'])

function namesServiceByHeaders(headers: Headers): boolean {
  for (const name in headers) if (name.startsWith('x-waiter-') && !TUNING.has(name)) return true
  return false
}

function refused(headers: Headers): MaitreError {
  return new MaitreError('MAITRE_CORS_REQUEST_FORBIDDEN', 'A browser may reach this router only through one of its own host names (server.hostnames), or a token only through its own host', { details: { host: String(headers['host'] ?? '').slice(0, 200) } })
}

/** The API: a browser's request names the router in its Host. */
export function assertBrowserReachesApi(headers: Headers, routerHostnames: ReadonlySet<string>, trustsByAddress: boolean): void {
  if (trustsByAddress && fromBrowser(headers) && !routerHostnames.has(hostWithoutPort(headers['host'] as string | undefined))) throw refused(headers)
}

/** The data path: a browser's request under a foreign Host names no service but by that Host. */
export function assertBrowserReachesService(headers: Headers, routerHostnames: ReadonlySet<string>, trustsByAddress: boolean): void {
  if (!trustsByAddress || !fromBrowser(headers)) return
  if (routerHostnames.has(hostWithoutPort(headers['host'] as string | undefined))) return
  if (namesServiceByHeaders(headers)) throw refused(headers)
}
