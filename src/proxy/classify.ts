/**
 * Waiter's rule for telling an API call from a request to proxy: some paths are always the API;
 * otherwise a request addressed to the router's own host name with no x-waiter-* header (other
 * than x-waiter-debug) is the API, and everything else is proxied.
 */
import type { IncomingHttpHeaders } from 'node:http'
import { hostWithoutPort } from '../http/host.ts'

const ALWAYS_API = new Set(['/app-name', '/service-id', '/token', '/waiter-ping'])
// /maitre-peer/ is router-to-router (slot lending, kill vetoes): never a service's path.
const API_PATTERN = /^\/(waiter-(async\/(v2\/)?(complete|result|status)\/|auth\/|consent|interstitial)|maitre-peer\/)/

export function isApiRequest(path: string, headers: IncomingHttpHeaders, routerHostnames: ReadonlySet<string>): boolean {
  if (ALWAYS_API.has(path) || API_PATTERN.test(path)) return true
  const host = hostWithoutPort(headers.host)
  if (host !== '' && !routerHostnames.has(host)) return false
  for (const name in headers) {
    if (name.startsWith('x-waiter-') && name !== 'x-waiter-debug') return false
  }
  return true
}
