/**
 * Forwarding one request to one instance through undici's raw dispatch API: one handler object
 * per exchange writes the instance's answer straight into the client's response, with
 * back-pressure both ways (the request body is a stream undici reads at the socket's pace; a
 * full client socket pauses the instance's response). The stream() helper measured ~15–25 µs of
 * proxy CPU more per request (an AsyncResource, a pipe and a finished() watcher each time).
 * The initial socket timeout becomes a 504, connect failures a 502, and a body that stalls past
 * the streaming timeout cuts the response off mid-stream.
 */
import type { IncomingMessage, ServerResponse } from 'node:http'
import { Agent, errors as undiciErrors, type Dispatcher } from 'undici'
import { MaitreError } from '../errors.ts'
import type { Instance } from '../backends/backend.ts'
import type { ReleaseOutcome } from '../backends/tracker.ts'
import { clientResponseHeaders } from './headers.ts'

export interface ForwardRequest {
  readonly instance: Instance
  readonly headers: Record<string, string | string[]>
  readonly cid: string
  readonly socketTimeoutMs: number
  readonly streamingTimeoutMs: number
  /**
   * The caller chose these timeouts (x-waiter-timeout, x-waiter-streaming-timeout): running out
   * of a time the caller picked is the caller's doing, and never takes the instance out of
   * rotation (or a client could eject any instance with a short enough timeout).
   */
  readonly timeoutsChosenByClient?: boolean
  /** Set-Cookie values of the router's own (the x-waiter-auth cookie), added to the instance's. */
  readonly setCookies?: readonly string[] | undefined
  /** Extra response headers (cold start, debug), decided when the response starts. */
  readonly extraHeaders: (() => Readonly<Record<string, string>>) | undefined
}


export interface ForwardResult {
  /** How the slot is released: failures of the instance eject it. */
  readonly outcome: ReleaseOutcome
  /** The instance's status, when it answered. */
  readonly status: number | undefined
  /** Set when the request failed before a response started: the caller answers with it. */
  readonly error: MaitreError | undefined
  /**
   * The instance cannot have received the request: its connection was refused or never
   * established. Safe to send to another instance, whatever the method. (A connection that
   * breaks later may have carried the request to an instance that acted on it, so it is not.)
   */
  readonly notDelivered: boolean
}

const CONNECT_ERRORS = new Set(['ECONNREFUSED', 'UND_ERR_CONNECT_TIMEOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL'])
/** The instance took longer than a timeout allowed: for its first byte, or between two chunks. */
const TIMEOUT_ERRORS = new Set(['UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT'])
/** The router itself is out of something (descriptors, buffers, memory): no fault of the instance. */
const ROUTER_ERRORS = new Set(['EMFILE', 'ENFILE', 'ENOBUFS', 'ENOMEM'])
/** undici refused the request before sending it (a header or method it will not carry): the client's doing. */
const REFUSED_ERRORS = new Set(['UND_ERR_INVALID_ARG', 'UND_ERR_NOT_SUPPORTED'])

function hasBody(req: IncomingMessage): boolean {
  const length = req.headers['content-length']
  return req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0')
}

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
  if (ROUTER_ERRORS.has(code)) {
    return { outcome: 'generic-error', error: new MaitreError('MAITRE_ROUTER_OVERLOADED', 'The router is out of resources to reach the instance; try again', { headers: { 'retry-after': '1' }, cause: err }) }
  }
  if (CONNECT_ERRORS.has(code)) {
    return { outcome: 'instance-error', error: new MaitreError('MAITRE_UPSTREAM_CONNECT', 'Request failed to connect to service backend', { cause: err }) }
  }
  if (code === 'UND_ERR_HEADERS_TIMEOUT') {
    return { outcome: 'instance-error', error: new MaitreError('MAITRE_UPSTREAM_TIMEOUT', 'Request to service backend timed out', { cause: err }) }
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
}

/** One request/response exchange between a client's response and an instance. */
class Exchange implements Dispatcher.DispatchHandler {
  readonly #res: ServerResponse
  readonly #request: ForwardRequest
  readonly #settle: (result: ForwardResult) => void
  #controller: Dispatcher.DispatchController | undefined
  #status: number | undefined
  #clientGone = false
  #settled = false

  constructor(res: ServerResponse, request: ForwardRequest, settle: (result: ForwardResult) => void) {
    this.#res = res
    this.#request = request
    this.#settle = settle
  }

  readonly clientGone = (): void => {
    if (this.#settled) return
    this.#clientGone = true
    this.#controller?.abort(new undiciErrors.RequestAbortedError())
  }

  readonly #onDrain = (): void => {
    this.#controller?.resume()
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.#controller = controller
    // The client may have left while the request waited in undici's queue for a connection.
    if (this.#clientGone) controller.abort(new undiciErrors.RequestAbortedError())
  }

  onResponseStart(_controller: Dispatcher.DispatchController, statusCode: number, headers: Record<string, string | string[] | undefined>): void {
    // 1xx interim answers (100 Continue, 103 Early Hints) are the hop's business, not the client's.
    if (statusCode < 200) return
    this.#status = statusCode
    const out = clientResponseHeaders(headers, this.#request.cid)
    const extra = this.#request.extraHeaders?.()
    if (extra !== undefined) Object.assign(out, extra)
    const cookies = this.#request.setCookies
    if (cookies !== undefined) {
      const theirs = out['set-cookie']
      out['set-cookie'] = theirs === undefined ? [...cookies] : [...(Array.isArray(theirs) ? theirs : [theirs]), ...cookies]
    }
    this.#res.writeHead(statusCode, out)
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (!this.#res.write(chunk)) {
      controller.pause()
      this.#res.once('drain', this.#onDrain)
    }
  }

  onResponseEnd(): void {
    this.#res.end()
    const status = this.#status
    this.#finish({ outcome: status === 503 ? 'instance-busy' : 'success', status, error: undefined, notDelivered: false })
  }

  onResponseError(_controller: Dispatcher.DispatchController | null, err: Error): void {
    const { outcome, error } = classify(err, this.#clientGone)
    const res = this.#res
    // Once the response has started, the only honest signal left is cutting the connection.
    if (res.headersSent) res.destroy()
    const status = this.#status
    const code = (err as { code?: string }).code ?? ''
    const notDelivered = !this.#clientGone && status === undefined && CONNECT_ERRORS.has(code)
    const clientsTimeout = this.#request.timeoutsChosenByClient === true && TIMEOUT_ERRORS.has(code)
    this.#finish({
      outcome: clientsTimeout ? 'client-error' : status === undefined ? outcome : this.#clientGone ? 'client-error' : 'instance-error',
      status,
      error: res.headersSent ? undefined : error,
      notDelivered,
    })
  }

  #finish(result: ForwardResult): void {
    if (this.#settled) return
    this.#settled = true
    this.#settle(result)
  }
}

export class Forwarder {
  readonly #agent: Agent

  constructor(options: { connectTimeoutMs: number }) {
    this.#agent = new Agent({
      connect: { timeout: options.connectTimeoutMs },
      keepAliveTimeout: 4_000,
      keepAliveMaxTimeout: 60_000,
    })
  }

  forward(req: IncomingMessage, res: ServerResponse, request: ForwardRequest): Forwarding {
    const { instance } = request
    let settle!: (result: ForwardResult) => void
    const result = new Promise<ForwardResult>((resolve) => (settle = resolve))
    const exchange = new Exchange(res, request, settle)
    // Invalid options (a header undici refuses) reach the handler's onResponseError too.
    this.#agent.dispatch(
      {
        origin: `${instance.proto === 'https' ? 'https' : 'http'}://${instance.host}:${instance.port}`,
        path: req.url ?? '/',
        method: req.method ?? 'GET',
        headers: request.headers,
        body: hasBody(req) ? req : null,
        headersTimeout: request.socketTimeoutMs,
        bodyTimeout: request.streamingTimeoutMs,
      },
      exchange,
    )
    return { result, clientGone: exchange.clientGone }
  }

  close(): Promise<void> {
    return this.#agent.close()
  }
}
