import type { IncomingHttpHeaders } from 'node:http'

/**
 * Whether a request asked for Waiter's debug headers. Waiter's rule (utils.clj
 * request->debug-enabled?) is the header's presence, whatever its value, and every answer —
 * proxied, error, ping — follows the same rule.
 */
export function isDebugRequested(headers: IncomingHttpHeaders): boolean {
  return headers['x-waiter-debug'] !== undefined
}
