/**
 * Forwarding one request to one instance through undici's raw dispatch API: one handler object
 * per exchange writes the instance's answer straight into the client's response, with
 * back-pressure (a full client socket pauses the instance's response). The stream() helper measured ~15–25 µs of
 * proxy CPU more per request (an AsyncResource, a pipe and a finished() watcher each time).
 * The initial socket timeout becomes a 504, connect failures a 502, and a body that stalls past
 * the streaming timeout cuts the response off mid-stream. Requests with a body or an expectation,
 * and every request to an HTTP/2 instance, go through Node's clients instead (forward-node.ts).
 */
import type { IncomingMessage, ServerResponse } from 'node:http'
import { errors as undiciErrors, Pool, type Dispatcher } from 'undici'
import { MaitreError } from '../errors.ts'
import type { Instance } from '../backends/backend.ts'
import { awaitClient, endAnswer, failedAnswer, writeAnswerHead, type AnswerHead } from './answer.ts'
import { MAX_ANSWER_HEAD_BYTES, type ForwardRequest, type ForwardResult, type Forwarding } from './forwarding.ts'
import { NodeForwarder, needsNodeClient } from './forward-node.ts'
import { authority } from '../http/authority.ts'

export { classify, type ForwardRequest, type ForwardResult, type Forwarding } from './forwarding.ts'

/** One request/response exchange between a client's response and an instance, on undici. */
class Exchange implements Dispatcher.DispatchHandler {
  readonly #res: ServerResponse
  readonly #request: ForwardRequest
  readonly #settle: (result: ForwardResult) => void
  #controller: Dispatcher.DispatchController | undefined
  /** Stops waiting for a client that pushed back. */
  #stopWaiting: (() => void) | undefined
  #status: number | undefined
  #head: AnswerHead | undefined
  #clientGone = false
  #settled = false
  /** The body's Content-Length from an HTTP/1.1 instance until its first chunk, else -1. */
  #wholeBody = -1
  /** That first chunk when it is the whole body, for the end. */
  #held: Buffer | undefined
  /** Short timeouts, timed here (see PRECISE_BELOW_MS): the answer's head, then each silence of its body. */
  readonly #exactHeaders: boolean
  readonly #exactBody: boolean
  #timer: NodeJS.Timeout | undefined
  /** For an unsolicited 100 (isUnsolicitedContinue): the request, its instance's pool, and who may take it over. */
  readonly #req: IncomingMessage
  readonly #pool: InstancePool
  readonly #forwarder: Forwarder
  /** The forwarding that took the request over after an unsolicited 100 (Node's client). */
  #takenOverBy: Forwarding | undefined

  constructor(req: IncomingMessage, res: ServerResponse, request: ForwardRequest, settle: (result: ForwardResult) => void, exactHeaders: boolean, exactBody: boolean, pool: InstancePool, forwarder: Forwarder) {
    this.#req = req
    this.#res = res
    this.#request = request
    this.#settle = settle
    this.#exactHeaders = exactHeaders
    this.#exactBody = exactBody
    this.#pool = pool
    this.#forwarder = forwarder
  }

  #time(ms: number, err: () => Error): void {
    clearTimeout(this.#timer)
    const controller = this.#controller
    this.#timer = setTimeout(() => controller?.abort(err()), ms)
  }

  readonly clientGone = (): void => {
    this.#takenOverBy?.clientGone()
    if (this.#settled) return
    this.#clientGone = true
    this.#controller?.abort(new undiciErrors.RequestAbortedError())
  }

  readonly #onDrain = (): void => {
    this.#stopWaiting = undefined
    if (this.#exactBody && !this.#settled) this.#time(this.#request.streamingTimeoutMs, bodyTimeout)
    this.#controller?.resume()
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.#controller = controller
    // The client may have left while the request waited in undici's queue for a connection.
    if (this.#clientGone) controller.abort(new undiciErrors.RequestAbortedError())
    else if (this.#exactHeaders) this.#time(this.#request.socketTimeoutMs, headersTimeout)
  }

  onResponseStart(controller: Dispatcher.DispatchController, statusCode: number, headers: Record<string, string | string[] | undefined>): void {
    // 1xx interim answers (100 Continue, 103 Early Hints) are the hop's business, not the client's.
    if (statusCode < 200) return
    const head = writeAnswerHead(this.#res, this.#request, statusCode, headers)
    if (head instanceof MaitreError) {
      controller.abort(head)
      return
    }
    this.#head = head
    this.#status = statusCode
    if (this.#exactBody) this.#time(this.#request.streamingTimeoutMs, bodyTimeout)
    else if (this.#exactHeaders) clearTimeout(this.#timer)
    // Over HTTP/2 (an https instance may agree to it) the stream may end well after its data.
    const length = headers['content-length']
    if (typeof length === 'string' && this.#request.instance.proto === 'http') this.#wholeBody = Number(length)
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    this.#timer?.refresh()
    if (chunk.length === this.#wholeBody) {
      // The whole body in one chunk: HTTP/1.1's parser ends the message in this same call, so
      // the chunk leaves with the head in one res.end(chunk), cheaper than a write and an end.
      this.#wholeBody = -1
      this.#held = chunk
      return
    }
    this.#wholeBody = -1
    if (!this.#res.write(chunk)) {
      controller.pause()
      // A client slow to read is awaitClient's to time, not the instance's silence.
      clearTimeout(this.#timer)
      // For as long as the client reads: one that reads nothing for the streaming timeout is cut.
      this.#stopWaiting = awaitClient(this.#res, this.#request, this.#onDrain, (err) => controller.abort(err))
    }
  }

  onResponseEnd(_controller: Dispatcher.DispatchController | null, trailers: Record<string, string | string[] | undefined>): void {
    const status = this.#status
    const last = this.#held
    this.#held = undefined
    const outcome = endAnswer(this.#res, status, this.#head, trailers, last)
    this.#finish({ outcome, status, error: undefined, notDelivered: false })
  }

  onResponseError(_controller: Dispatcher.DispatchController | null, err: Error): void {
    if (this.#status === undefined && !this.#clientGone && !this.#settled && isUnsolicitedContinue(err)) {
      this.#pool.sendsContinue = true
      const takenOver = SAFE_METHODS.has(this.#req.method ?? 'GET') ? this.#forwarder.forwardByNode(this.#req, this.#res, this.#request) : undefined
      if (takenOver !== undefined) {
        this.#takenOverBy = takenOver
        clearTimeout(this.#timer)
        void takenOver.result.then((result) => this.#finish(result))
        return
      }
      this.#finish({ outcome: 'generic-error', status: undefined, error: unsolicitedContinueError(err), notDelivered: false })
      return
    }
    // The whole body came, then trailers llhttp will not read (RFC 9110 §6.5.1 has a recipient
    // ignore such fields): the answer ends as it would have, without them, and no one is blamed.
    if (this.#status !== undefined && !this.#clientGone && isFramingTrailer(err)) {
      this.onResponseEnd(null, {})
      return
    }
    this.#finish(failedAnswer(this.#res, this.#request, err, this.#clientGone, this.#status))
  }

  #finish(result: ForwardResult): void {
    if (this.#settled) return
    this.#settled = true
    clearTimeout(this.#timer)
    this.#held = undefined
    this.#stopWaiting?.()
    this.#settle(result)
  }
}

/**
 * undici times an answer's head and its body's silences with its coarse timers (about a second's
 * resolution: a 50 ms x-waiter-timeout fired after ~0.9 s, a 500 ms streaming timeout not at all
 * against 900 ms gaps). Timeouts shorter than this are timed here with Node's own timers, like
 * forward-node.ts does; the defaults (900 s, 20 s) stay with undici's, which cost nothing per request.
 */
const PRECISE_BELOW_MS = 10_000
const headersTimeout = (): Error => new undiciErrors.HeadersTimeoutError()
const bodyTimeout = (): Error => new undiciErrors.BodyTimeoutError()

/**
 * undici refuses any 100 Continue it did not ask for (it never sends an expectation), cutting
 * the connection as a "bad response" before the final answer; RFC 9110 §15.2 has a client accept
 * one, and Node's client does. Such an instance's bodiless requests go through Node's client
 * from then on; the one that met it is sent again there when its method is safe (GET, HEAD,
 * OPTIONS, TRACE), else answered 502 without taking the instance out of rotation: it is no
 * fault of the instance's, and every instance of the version would do the same.
 */
function isUnsolicitedContinue(err: Error): boolean {
  return err instanceof undiciErrors.SocketError && err.message === 'bad response'
}
/**
 * Content-Length among an answer's trailers: llhttp fails the message on it ("Content-Length
 * can't be present with Transfer-Encoding") after its last chunk, so the body is whole. (In the
 * head it fails before the answer starts, and stays an instance's failure.)
 */
function isFramingTrailer(err: Error): boolean {
  return err instanceof undiciErrors.HTTPParserError && /Content-Length can't be present with Transfer-Encoding/.test(err.message)
}
const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE'])
function unsolicitedContinueError(cause: Error): MaitreError {
  return new MaitreError('MAITRE_UPSTREAM', 'The instance answered 100 Continue to a request that did not ask for it; requests to it go through a client that accepts one from now on, try again', { cause })
}

/** The scheme of an instance's origin for each backend-proto. */
const SCHEMES: Readonly<Record<Instance['proto'], 'http' | 'https'>> = { http: 'http', https: 'https', h2c: 'http', h2: 'https' }

/** The pool of connections to one HTTP/1.1 instance. */
interface InstancePool {
  /**
   * null once the sweep closed it: the entry itself stays reachable from the instance (the
   * WeakMap holds it while the instance lives), so it must not keep the closed pool, whose
   * request queue alone is 16 KB (undici's FixedQueue), for every idle instance.
   */
  pool: Pool | null
  /** A request went through it since the last sweep. */
  used: boolean
  /** The instance answered a 100 Continue nobody asked for: its requests go through Node's client (isUnsolicitedContinue). */
  sendsContinue: boolean
}

/** How often pools are looked at; one unused for a whole period, with nothing under way, is closed. */
const POOL_SWEEP_MS = 30_000

function isOpen(entry: InstancePool | undefined): entry is InstancePool & { pool: Pool } {
  return entry !== undefined && entry.pool !== null && !entry.pool.closed && !entry.pool.destroyed
}

export class Forwarder {
  /**
   * Bodiless requests to HTTP/1.1 instances, in the clear (http) or over TLS (https, where ALPN
   * may choose HTTP/2): one undici Pool per instance, kept while the instance is used. (undici's Agent closes an
   * origin's pool whenever its last connection drops, so an instance that closes connections
   * after each answer cost a new pool, and its 16 KB queue, per request.)
   */
  readonly #pools = new Map<string, InstancePool>()
  /** The pool of each instance the tracker hands out (its objects are stable): no origin string per request. */
  #byInstance = new WeakMap<Instance, InstancePool>()
  readonly #poolOptions: Pool.Options
  readonly #sweep: NodeJS.Timeout | undefined
  /** Node's own clients: every request to an HTTP/2 instance, and those with a body or an expectation (forward-node.ts). */
  readonly #node: NodeForwarder

  /** `poolSweepMs`: how often pools are swept (POOL_SWEEP_MS; 0: never on its own, for tests that call sweepUnusedPools). */
  constructor(options: { connectTimeoutMs: number; poolSweepMs?: number }) {
    this.#node = new NodeForwarder(options)
    // An instance's TLS (backend-proto https or h2) guards the wire; whom the router talks to it
    // already knows, having started the instance at that address, so the instance's certificate
    // (self-signed, as a rule) is not checked against a CA: Waiter's client trusts them too.
    // allowH2: https instances may agree on HTTP/2 by ALPN.
    this.#poolOptions = { connect: { timeout: options.connectTimeoutMs, rejectUnauthorized: false }, keepAliveTimeout: 4_000, keepAliveMaxTimeout: 60_000, allowH2: true, maxHeaderSize: MAX_ANSWER_HEAD_BYTES }
    const sweepMs = options.poolSweepMs ?? POOL_SWEEP_MS
    this.#sweep = sweepMs > 0 ? setInterval(() => this.sweepUnusedPools(), sweepMs).unref() : undefined
  }

  #poolFor(instance: Instance): InstancePool & { pool: Pool } {
    const known = this.#byInstance.get(instance)
    const entry = isOpen(known) ? known : this.#originPool(instance, known)
    entry.used = true
    return entry
  }

  /**
   * The open pool of the instance's origin, made if need be, and remembered for the instance. A
   * new pool goes into the entry the instance or origin had (`known`: the sweep left it without
   * a pool), so what was learnt of the instance (sendsContinue) outlives its pool.
   */
  #originPool(instance: Instance, known: InstancePool | undefined): InstancePool & { pool: Pool } {
    const origin = `${SCHEMES[instance.proto]}://${authority(instance.host, instance.port)}`
    const shared = this.#pools.get(origin)
    if (isOpen(shared)) {
      this.#byInstance.set(instance, shared)
      return shared
    }
    const reused: InstancePool = known ?? shared ?? { pool: null, used: false, sendsContinue: false }
    const entry = Object.assign(reused, { pool: new Pool(origin, this.#poolOptions) })
    this.#pools.set(origin, entry)
    this.#byInstance.set(instance, entry)
    return entry
  }

  /** Pools of instances gone (or idle for a whole period) are closed: bounded by the instances in use. */
  sweepUnusedPools(): void {
    for (const [origin, entry] of this.#pools) {
      const pool = entry.pool
      if (pool === null) continue
      const { running, pending } = pool.stats
      if (!entry.used && running === 0 && pending === 0) {
        this.#pools.delete(origin)
        entry.pool = null
        pool.close().catch(() => undefined)
      }
      entry.used = false
    }
  }

  forward(req: IncomingMessage, res: ServerResponse, request: ForwardRequest): Forwarding {
    if (needsNodeClient(req, request)) return this.#node.forward(req, res, request)
    const entry = this.#poolFor(request.instance)
    if (entry.sendsContinue) return this.#node.forward(req, res, request)
    let settle!: (result: ForwardResult) => void
    const result = new Promise<ForwardResult>((resolve) => (settle = resolve))
    const exactHeaders = request.socketTimeoutMs < PRECISE_BELOW_MS
    const exactBody = request.streamingTimeoutMs < PRECISE_BELOW_MS
    const exchange = new Exchange(req, res, request, settle, exactHeaders, exactBody, entry, this)
    // Invalid options (a header undici refuses) reach the handler's onResponseError too.
    entry.pool.dispatch(
      {
        path: req.url ?? '/',
        method: req.method ?? 'GET',
        headers: request.headers,
        body: null, // requests with a body go through Node's clients (needsNodeClient)
        // (0: none of undici's; the Exchange times it.)
        headersTimeout: exactHeaders ? 0 : request.socketTimeoutMs,
        bodyTimeout: exactBody ? 0 : request.streamingTimeoutMs,
      },
      exchange,
    )
    return { result, clientGone: exchange.clientGone }
  }

  /** Through Node's client whatever the request (an instance that sends unsolicited 100s). */
  forwardByNode(req: IncomingMessage, res: ServerResponse, request: ForwardRequest): Forwarding {
    return this.#node.forward(req, res, request)
  }

  async close(): Promise<void> {
    if (this.#sweep !== undefined) clearInterval(this.#sweep)
    const pools = [...this.#pools.values()]
    this.#pools.clear()
    this.#byInstance = new WeakMap()
    await Promise.all([...pools.map((entry) => entry.pool?.close()), this.#node.close()])
  }
}
