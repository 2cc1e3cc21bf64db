/**
 * What forwarding one request to one instance is asked and what it returns, whichever client
 * carries it (undici's dispatcher, or Node's own for what undici cannot send), and how a failure
 * of the exchange is told apart: the client's doing, the instance's, or the router's.
 */
import type { IncomingMessage } from 'node:http'
import { errors as undiciErrors } from 'undici'
import { MaitreError, ROUTER_RESOURCE_ERRORS } from '../errors.ts'
import type { Instance } from '../backends/backend.ts'
import type { ReleaseOutcome } from '../backends/tracker.ts'

export interface ForwardRequest {
  readonly instance: Instance
  readonly headers: Record<string, string | string[]>
  readonly cid: string
  readonly socketTimeoutMs: number
  readonly streamingTimeoutMs: number
  /** How long a client that reads nothing of its answer is waited for (awaitClient); the streaming timeout if absent. */
  readonly clientStallMs?: number
  /**
   * The caller chose these timeouts (x-waiter-timeout, x-waiter-streaming-timeout): running out
   * of a time the caller picked is the caller's doing, and never takes the instance out of
   * rotation (or a client could eject any instance with a short enough timeout).
   */
  readonly timeoutsChosenByClient?: boolean
  /** Set-Cookie values of the router's own (the x-waiter-auth cookie), added to the instance's. */
  readonly setCookies?: readonly string[] | undefined
  /** The client speaks HTTP/2: single-value fields go as one value. */
  readonly clientHttp2?: boolean
  /**
   * The client sent `Expect: 100-continue` and holds its body back: called to tell it to send
   * the body, once the instance asked for it (or ignored the expectation for a second). Never
   * called for an instance that answers first: the body is not sent to an instance that refuses.
   */
  readonly continueClient?: (() => void) | undefined
  /** Extra response headers (cold start, debug), decided when the response starts. */
  readonly extraHeaders: (() => Readonly<Record<string, string>>) | undefined
  /** The token's CORS answer to a cross-origin request: it wins over the instance's own (as Waiter's), its Vary merged in. */
  readonly cors?: Readonly<Record<string, string>> | undefined
}


export interface ForwardResult {
  /** How the slot is released: failures of the instance eject it. */
  readonly outcome: ReleaseOutcome
  /** The instance's status, when it answered. */
  readonly status: number | undefined
  /** Set when the request failed before a response started: the caller answers with it. */
  readonly error: MaitreError | undefined
  /**
   * Set when the exchange failed once the response had started: the client's answer was cut
   * (or a gRPC call ended with an error status), though its status line said otherwise. What
   * failed, for the log and the request counts.
   */
  readonly cut?: MaitreError
  /**
   * The instance cannot have received the request: its connection was refused or never
   * established. Safe to send to another instance, whatever the method. (A connection that
   * breaks later may have carried the request to an instance that acted on it, so it is not.)
   */
  readonly notDelivered: boolean
}

/** The instance was never reached: its connection was refused or never established. */
export const CONNECT_ERRORS = new Set(['ECONNREFUSED', 'UND_ERR_CONNECT_TIMEOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL'])
/**
 * The instance took longer than a timeout allowed: for its first byte, or between two chunks.
 * (undici's codes; Node's clients report their timeouts under the same ones.)
 */
export const HEADERS_TIMEOUT = 'UND_ERR_HEADERS_TIMEOUT'
export const BODY_TIMEOUT = 'UND_ERR_BODY_TIMEOUT'
export const TIMEOUT_ERRORS = new Set([HEADERS_TIMEOUT, BODY_TIMEOUT])
/**
 * The most an instance's answer head may take (status line and headers): four times what
 * undici and Node read by default (16 KiB), for the big Content-Security-Policy or cookie sets
 * real applications send. An instance past it answered: its answer is refused (502) without
 * taking it out of rotation, as an answer the client's protocol cannot carry is.
 */
export const MAX_ANSWER_HEAD_BYTES = 64 * 1024
const HEAD_OVERFLOW_ERRORS = new Set(['UND_ERR_HEADERS_OVERFLOW', 'HPE_HEADER_OVERFLOW'])
/** undici refused the request before sending it (a header or method it will not carry): the client's doing. */
const REFUSED_ERRORS = new Set(['UND_ERR_INVALID_ARG', 'UND_ERR_NOT_SUPPORTED'])

export function classify(err: unknown, clientGone: boolean): { outcome: ReleaseOutcome; error: MaitreError } {
  const code = (err as { code?: string }).code ?? ''
  if (clientGone || err instanceof undiciErrors.RequestAbortedError) {
    return { outcome: 'client-error', error: new MaitreError('MAITRE_CLIENT_CLOSED', 'Connection unexpectedly closed while streaming request', { cause: err }) }
  }
  // The client's body failed on our side (it went idle, say): the client's doing, told as such.
  if (err instanceof MaitreError) return { outcome: 'client-error', error: err }
  if (REFUSED_ERRORS.has(code)) {
    return { outcome: 'client-error', error: new MaitreError('MAITRE_BAD_REQUEST', `The request cannot be forwarded: ${(err as Error).message}`, { cause: err }) }
  }
  if (ROUTER_RESOURCE_ERRORS.has(code)) {
    return { outcome: 'generic-error', error: new MaitreError('MAITRE_ROUTER_OVERLOADED', 'The router is out of resources to reach the instance; try again', { headers: { 'retry-after': '1' }, cause: err }) }
  }
  if (CONNECT_ERRORS.has(code)) {
    return { outcome: 'instance-error', error: new MaitreError('MAITRE_UPSTREAM_CONNECT', 'Request failed to connect to service backend', { cause: err }) }
  }
  if (code === HEADERS_TIMEOUT) {
    return { outcome: 'instance-error', error: new MaitreError('MAITRE_UPSTREAM_TIMEOUT', 'Request to service backend timed out', { cause: err }) }
  }
  if (HEAD_OVERFLOW_ERRORS.has(code)) {
    return {
      outcome: 'generic-error',
      error: new MaitreError('MAITRE_UPSTREAM', `The instance's answer head (status line and headers) is over ${MAX_ANSWER_HEAD_BYTES / 1024} KiB, the most the router reads`, { details: { limit: 'answer-head-bytes', max: MAX_ANSWER_HEAD_BYTES }, cause: err }),
    }
  }
  if (code === 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH') {
    return { outcome: 'client-error', error: new MaitreError('MAITRE_CLIENT_CLOSED', 'Connection unexpectedly closed while streaming request', { cause: err }) }
  }
  return { outcome: 'instance-error', error: new MaitreError('MAITRE_UPSTREAM', 'Request to service backend failed', { cause: err }) }
}

/** A forward under way: its result, and the way to stop it when the client goes away. */
export interface Forwarding {
  readonly result: Promise<ForwardResult>
  /** The client is gone: cut the exchange with the instance (a no-op once it has ended). */
  readonly clientGone: () => void
  /**
   * The router stops and cannot wait for this exchange any longer: it ends with `err` as an
   * instance's failure would (a gRPC call with its status in trailers), not as the instance's
   * fault (a no-op once it has ended). Only Node's clients, which carry every gRPC call, offer it.
   */
  readonly stop?: (err: MaitreError) => void
}

/** The request carries a body (the forward streams it on). */
export function hasBody(req: IncomingMessage): boolean {
  // HTTP/2 says "no body" by ending the stream with the headers; a length is optional there.
  if (req.httpVersionMajor === 2) return !(req as unknown as { stream: { endAfterHeaders: boolean } }).stream.endAfterHeaders
  const length = req.headers['content-length']
  return req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0')
}
