import { MaitreError } from '../errors.ts'
import { requestProto } from './cors.ts'
import { hostWithoutPort } from './host.ts'

/**
 * A token with `https-redirect` is served over https only: a request that came over plain http
 * gets Waiter's 301 (GET, HEAD) or 307 (others) to the same URL on https.
 */
export function assertHttpsOrRedirect(req: { readonly headers: Readonly<Record<string, string | string[] | undefined>>; readonly url?: string | undefined; readonly method?: string | undefined }, tokenMetadata: Readonly<Record<string, unknown>>): void {
  if (tokenMetadata['https-redirect'] !== true) return
  if (requestProto(req.headers) === 'https') return
  const host = typeof req.headers['host'] === 'string' ? req.headers['host'] : ''
  const location = `https://${hostWithoutPort(host)}${req.url ?? '/'}`
  const status = req.method === 'GET' || req.method === 'HEAD' ? 301 : 307
  throw new MaitreError('MAITRE_HTTPS_REDIRECT', `This service is served over https only: ${location}`, { status, headers: { location }, details: { location } })
}
