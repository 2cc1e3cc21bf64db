/**
 * One call of a router to another's peer API: a POST of a JSON body under /maitre-peer/, proven
 * by the cluster's key, bounded in time (connect, headers, body) by one timeout or a signal the
 * caller shares across several calls.
 */
import { request, type Dispatcher } from 'undici'

export const PEER_PATH_PREFIX = '/maitre-peer/'
export const PEER_KEY_HEADER = 'x-maitre-peer-key'

export interface PeerPost {
  /** The peer's base URL (its advertised address). */
  readonly url: string
  /** The call under /maitre-peer/ (`refresh`, `backend/ensure`, …). */
  readonly what: string
  /** The cluster's peer key. */
  readonly key: string
  /** The JSON body, already serialized (one text posted to several peers is made once). */
  readonly body: string
  readonly timeoutMs: number
  /** Ends the call with others (a write's one deadline for every peer); default: its own timeout. */
  readonly signal?: AbortSignal
  /** undici's global dispatcher when absent. */
  readonly dispatcher?: Dispatcher
}

/** The peer's answer, its body left to read. */
export function postToPeer(call: PeerPost): Promise<Dispatcher.ResponseData> {
  return request(`${call.url}${PEER_PATH_PREFIX}${call.what}`, {
    method: 'POST',
    ...(call.dispatcher === undefined ? {} : { dispatcher: call.dispatcher }),
    headers: { 'content-type': 'application/json', [PEER_KEY_HEADER]: call.key },
    body: call.body,
    headersTimeout: call.timeoutMs,
    bodyTimeout: call.timeoutMs,
    signal: call.signal ?? AbortSignal.timeout(call.timeoutMs),
  })
}

/** A call whose answer carries nothing but its status: resolves on 200, rejects otherwise. */
export async function postToPeerOk(call: PeerPost): Promise<void> {
  const res = await postToPeer(call)
  await res.body.dump()
  if (res.statusCode !== 200) throw new Error(`status ${res.statusCode}`)
}
