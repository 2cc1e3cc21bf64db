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
import { clientResponseHeaders, clientTrailers, forHttp2 } from './headers.ts'

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
  /** The client speaks HTTP/2: single-value fields go as one value. */
  readonly clientHttp2?: boolean
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
  // HTTP/2 says "no body" by ending the stream with the headers; a length is optional there.
  if (req.httpVersionMajor === 2) return !(req as unknown as { stream: { endAfterHeaders: boolean } }).stream.endAfterHeaders
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
  #grpcStatus: string | undefined
  #statusTrailers: Record<string, string | string[]> | undefined
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

  onResponseStart(controller: Dispatcher.DispatchController, statusCode: number, headers: Record<string, string | string[] | undefined>): void {
    // 1xx interim answers (100 Continue, 103 Early Hints) are the hop's business, not the client's.
    if (statusCode < 200) return
    const out = clientResponseHeaders(headers, this.#request.cid)
    if (this.#request.clientHttp2 === true) forHttp2(out)
    if (headers['grpc-status'] !== undefined) {
      // A gRPC "trailers-only" answer: the status and all its metadata in the one HEADERS frame
      // that ended the stream. Relayed as an equally valid gRPC response the compatibility API
      // can write: headers (content-type and the router's own), an empty body, and trailers
      // holding the status and every other field the instance sent.
      this.#grpcStatus = String(headers['grpc-status'])
      this.#statusTrailers = {}
      for (const name of Object.keys(out)) {
        if (name === 'content-type' || name === 'x-cid' || name === 'via') continue
        this.#statusTrailers[name] = out[name] as string | string[]
        delete out[name]
      }
    }
    const extra = this.#request.extraHeaders?.()
    if (extra !== undefined) Object.assign(out, extra)
    const cookies = this.#request.setCookies
    if (cookies !== undefined) {
      const theirs = out['set-cookie']
      out['set-cookie'] = theirs === undefined ? [...cookies] : [...(Array.isArray(theirs) ? theirs : [theirs]), ...cookies]
    }
    try {
      this.#res.writeHead(statusCode, out)
    } catch (err) {
      // Headers the client's protocol cannot carry (Node checks them): a clean 502 instead of a
      // broken stream; the instance answered, so it is not ejected for it.
      controller.abort(new MaitreError('MAITRE_UPSTREAM', `The instance's response headers cannot be relayed: ${(err as Error).message}`, { cause: err }))
      return
    }
    this.#status = statusCode
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (!this.#res.write(chunk)) {
      controller.pause()
      this.#res.once('drain', this.#onDrain)
    }
  }

  onResponseEnd(_controller: Dispatcher.DispatchController, trailers: Record<string, string | string[] | undefined>): void {
    // Trailers (gRPC's status travels in them) go on as they came: in HTTP/2 always, in HTTP/1.1
    // when the response is chunked (Node drops them otherwise: a fixed length leaves no room).
    const relayed = clientTrailers(trailers)
    const all = this.#statusTrailers === undefined ? relayed : { ...this.#statusTrailers, ...relayed }
    try {
      if (all !== undefined) this.#res.addTrailers(all)
      this.#res.end()
    } catch {
      // Trailers the client's protocol refuses: the response cannot end cleanly, so it is cut.
      this.#res.destroy()
    }
    const status = this.#status
    // gRPC's UNAVAILABLE (in the trailers, or in the headers of a trailers-only answer) is its 503.
    const busy = status === 503 || trailers['grpc-status'] === '14' || this.#grpcStatus === '14'
    this.#finish({ outcome: busy ? 'instance-busy' : 'success', status, error: undefined, notDelivered: false })
  }

  onResponseError(_controller: Dispatcher.DispatchController | null, err: Error): void {
    const { outcome, error } = classify(err, this.#clientGone)
    const res = this.#res
    // Once the response has started, the only honest signal left is cutting the connection
    // (unless it was ended already: the listener answered for it, a body gone idle, say).
    if (res.headersSent && !res.writableEnded) res.destroy()
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

/** The scheme of an instance's origin for each backend-proto. */
const SCHEMES: Readonly<Record<Instance['proto'], 'http' | 'https'>> = { http: 'http', https: 'https', h2c: 'http', h2: 'https' }

export class Forwarder {
  /** HTTP/1.1, and TLS (https, h2) with ALPN choosing HTTP/2 or HTTP/1.1. */
  readonly #agent: Agent
  /** HTTP/2 over cleartext, by prior knowledge: one pooled connection per instance, streams multiplexed. */
  readonly #h2c: Agent

  constructor(options: { connectTimeoutMs: number }) {
    // An instance's TLS (backend-proto https or h2) guards the wire; whom the router talks to it
    // already knows, having started the instance at that address, so the instance's certificate
    // (self-signed, as a rule) is not checked against a CA: Waiter's client trusts them too.
    const common = { connect: { timeout: options.connectTimeoutMs, rejectUnauthorized: false }, keepAliveTimeout: 4_000, keepAliveMaxTimeout: 60_000 }
    // allowH2: https instances may agree on HTTP/2 by ALPN (backend-proto h2 always offers it).
    this.#agent = new Agent({ ...common, allowH2: true })
    this.#h2c = new Agent({ ...common, allowH2: true, useH2c: true, connections: 1, pipelining: 100 } as Agent.Options)
  }

  forward(req: IncomingMessage, res: ServerResponse, request: ForwardRequest): Forwarding {
    const { instance } = request
    let settle!: (result: ForwardResult) => void
    const result = new Promise<ForwardResult>((resolve) => (settle = resolve))
    const exchange = new Exchange(res, request, settle)
    // Invalid options (a header undici refuses) reach the handler's onResponseError too.
    const dispatcher = instance.proto === 'h2c' ? this.#h2c : this.#agent
    dispatcher.dispatch(
      {
        origin: `${SCHEMES[instance.proto]}://${instance.host}:${instance.port}`,
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

  async close(): Promise<void> {
    await Promise.all([this.#agent.close(), this.#h2c.close()])
  }
}
