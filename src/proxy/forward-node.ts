/**
 * Forwarding through Node's own clients:
 * - node:http2 for every request to an HTTP/2 instance (backend-proto h2c or h2): one connection
 *   per instance, its streams multiplexed. Against undici's HTTP/2 it measured 7–12 µs of CPU
 *   per request less in a bare proxy and ~45 µs less per gRPC call in maitre, the same for a
 *   bodiless request (bench/RESULTS.md), and it sends request trailers, which undici cannot.
 * - node:http and node:https for the requests undici cannot carry to an HTTP/1.1 instance as the
 *   protocol asks: `Expect: 100-continue` (undici sends no expectation over HTTP/1.1, so an
 *   instance could not refuse a body before it came), and every request with a body (undici
 *   sends no request trailers, and its socket timeout starts with the request, so a body still
 *   moving to a slow reader was cut). Bodiless requests to HTTP/1.1 instances go through undici
 *   (forward.ts), which costs less there.
 * With an expectation, the instance hears it, and the client is told to send its body only when
 * the instance asks for it (or after a second of silence, as RFC 9110 §10.1.1 has a client do);
 * an instance that answers first never gets the body. The answer is written the same way for
 * every client (answer.ts), so a client cannot tell which carried its request.
 */
import { Agent as HttpAgent, request as httpRequest, type ClientRequest, type IncomingMessage, type ServerResponse } from 'node:http'
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https'
import { connect as connectH2, constants as h2constants, type ClientHttp2Session, type ClientHttp2Stream, type IncomingHttpHeaders as H2Headers } from 'node:http2'
import type { Socket } from 'node:net'
import { MaitreError } from '../errors.ts'
import type { Instance } from '../backends/backend.ts'
import { awaitClient, endAnswer, failedAnswer, writeAnswerHead, type AnswerHead } from './answer.ts'
import { BODY_TIMEOUT, HEADERS_TIMEOUT, MAX_ANSWER_HEAD_BYTES, hasBody, type ForwardRequest, type ForwardResult, type Forwarding } from './forwarding.ts'
import { backendRequestTrailers } from './headers.ts'
import { authority } from '../http/authority.ts'
import { GRPC_CONTENT_TYPE } from '../http/grpc.ts'

/** How long an instance may stay silent about an expectation before the body goes anyway (curl waits as long). */
export const EXPECT_WAIT_MS = 1000
/** An HTTP/2 connection to an instance with no stream for this long is closed. */
const H2_IDLE_MS = 4_000

/**
 * The request goes through Node's own clients: to an HTTP/2 instance always; to an HTTP/1.1
 * one when it needs what only they do (an expectation, trailers after its body, a socket
 * timeout that waits for the whole body: undici's starts with the request, so a body still
 * moving to a slow reader was cut), that is, with an expectation or a body.
 */
export function needsNodeClient(req: IncomingMessage, request: ForwardRequest): boolean {
  const proto = request.instance.proto
  return proto === 'h2c' || proto === 'h2' || request.continueClient !== undefined || hasBody(req)
}

function failure(code: string, message: string): Error {
  return Object.assign(new Error(message), { code })
}

/** The instance refused the stream before processing it: as undelivered as a refused connection. */
function refusedStream(): Error {
  return failure('ECONNREFUSED', 'The instance refused the stream (REFUSED_STREAM)')
}

/** The instance's HTTP/2 server reset the stream for its header block before answering (see the stream's error handler). */
function headersRefused(cause: Error): MaitreError {
  return new MaitreError('MAITRE_BAD_REQUEST', "The instance's HTTP/2 server refused the request's header block (ENHANCE_YOUR_CALM): too many or too large fields for it", { status: 431, details: { field: 'headers' }, cause })
}

/** What Node refuses to send because of the request's own fields or values: the client's doing. */
const REQUEST_REFUSALS = new Set(['ERR_HTTP2_INVALID_HEADER_VALUE', 'ERR_HTTP2_HEADER_SINGLE_VALUE', 'ERR_HTTP2_INVALID_CONNECTION_HEADERS', 'ERR_HTTP2_INVALID_PSEUDOHEADER', 'ERR_INVALID_HTTP_TOKEN', 'ERR_INVALID_CHAR', 'ERR_UNESCAPED_CHARACTERS', 'ERR_HTTP_INVALID_HEADER_VALUE'])

/** The two ways a request travels here: an HTTP/1.1 request, or an HTTP/2 stream. */
interface Upstream {
  /**
   * Calls `ready` once there is a connection to send on (at once if there is one already): not
   * before, so that a body is not taken from its client for a connection that is then refused,
   * and the request can still go to another instance.
   */
  whenConnected(ready: () => void): void
  /** Sends the body (piped from the client, with back-pressure), then its trailers. */
  sendBody(req: IncomingMessage): void
  /** Ends the request without a body (there is none). */
  endWithoutBody(): void
  /**
   * The answer is complete: a request not sent in full by now (a body the instance refused, or
   * answered before reading to its end) is cut, so its connection or stream cannot linger.
   */
  answered(): void
  /** Cuts the exchange: the connection (HTTP/1.1) or the stream (HTTP/2) goes. */
  cut(): void
  /** The instance is not reading the body as fast as it comes (its buffer is full). */
  backPressured(): boolean
}

/** One exchange between a client's response and an instance, on Node's clients. */
class NodeExchange {
  readonly #req: IncomingMessage
  readonly #res: ServerResponse
  readonly #request: ForwardRequest
  readonly #settle: (result: ForwardResult) => void
  #upstream: Upstream | undefined
  #timer: NodeJS.Timeout | undefined
  /** Stops waiting for a client that pushed back. */
  #stopWaiting: (() => void) | undefined
  #expectTimer: NodeJS.Timeout | undefined
  /** The body went (or was asked for): the expectation is settled. */
  #proceeded = false
  /** The whole request (body and trailers) has been handed to the instance's connection. */
  #sent = false
  /** Body bytes the instance has taken so far, and as of the timer's last tick. */
  #bodyBytes = 0
  #bodyBytesAtTick = 0
  #status: number | undefined
  #head: AnswerHead | undefined
  #clientGone = false
  #settled = false

  get settled(): boolean {
    return this.#settled
  }

  constructor(req: IncomingMessage, res: ServerResponse, request: ForwardRequest, settle: (result: ForwardResult) => void) {
    this.#req = req
    this.#res = res
    this.#request = request
    this.#settle = settle
  }

  start(upstream: Upstream): void {
    this.#upstream = upstream
    this.#timer = setTimeout(this.#firstByteOverdue, this.#request.socketTimeoutMs)
    // A client that is no longer there (it left while the request was set up) takes it down.
    this.#req.once('error', (err) => this.fail(err))
    if (!hasBody(this.#req)) {
      this.#proceeded = true
      this.#sent = true
      upstream.endWithoutBody()
    } else {
      upstream.whenConnected(() => {
        if (this.#settled || this.#proceeded) return
        if (this.#request.continueClient === undefined) this.#proceed()
        // The instance's second to ask for the body counts from when it could hear the question.
        else this.#expectTimer = setTimeout(() => this.#proceed(), EXPECT_WAIT_MS)
      })
    }
  }

  readonly clientGone = (): void => {
    if (this.#settled) return
    this.#clientGone = true
    this.fail(new Error('the client went away'))
  }

  /** The instance said 100 Continue. */
  readonly onContinue = (): void => this.#proceed()

  /**
   * The socket timeout bounds the instance's silence once it has the whole request. A body
   * still coming in at the client's pace (a client-streaming call, a slow upload) is no
   * silence of the instance's: the timer starts over, and the client's own idleness is the
   * body-idle bound's business. An instance that stopped reading the body is silent.
   */
  readonly #firstByteOverdue = (): void => {
    if (this.#settled) return
    if (!this.#sent) {
      // Judged by progress over the whole period, not by the moment: an instance that took
      // some of the body, however slowly, is not silent; nor is one waiting on a slow client.
      const moved = this.#bodyBytes !== this.#bodyBytesAtTick
      this.#bodyBytesAtTick = this.#bodyBytes
      if (!this.#proceeded || moved || (!this.#req.isPaused() && this.#upstream?.backPressured() !== true)) {
        this.#timer?.refresh()
        return
      }
    }
    this.fail(failure(HEADERS_TIMEOUT, `No response within ${this.#request.socketTimeoutMs} ms`))
  }

  /** The whole request went to the instance: its time to answer starts now. */
  readonly onSent = (): void => {
    this.#sent = true
    if (this.#status === undefined && !this.#settled) this.#timer?.refresh()
  }

  #proceed(): void {
    if (this.#proceeded || this.#settled) return
    this.#proceeded = true
    clearTimeout(this.#expectTimer)
    this.#request.continueClient?.()
    this.#upstream?.sendBody(this.#req)
    // (After the pipe: a reader of its own would start the body flowing before the pipe took it.)
    this.#req.on('data', (chunk: Buffer) => (this.#bodyBytes += chunk.length))
  }

  /** The instance's final answer begins. Returns whether to read on. */
  onResponse(status: number, headers: Readonly<Record<string, string | string[] | undefined>>): boolean {
    if (this.#settled) return false
    if (!this.#proceeded) {
      // The instance answered before it asked for the body: the body is never sent, and the
      // client's connection closes after this answer (its unsent body would follow otherwise).
      this.#proceeded = true
      clearTimeout(this.#expectTimer)
      this.#res.shouldKeepAlive = false
    }
    const head = writeAnswerHead(this.#res, this.#request, status, headers)
    if (head instanceof MaitreError) {
      this.fail(head)
      return false
    }
    this.#head = head
    this.#status = status
    this.#armStreaming()
    return true
  }

  #armStreaming(): void {
    clearTimeout(this.#timer)
    this.#timer = setTimeout(() => this.fail(failure(BODY_TIMEOUT, `The response sent nothing for ${this.#request.streamingTimeoutMs} ms`)), this.#request.streamingTimeoutMs)
  }

  /**
   * A chunk of the answer; a client that pushes back pauses the instance's answer until it
   * drains, for as long as it reads (awaitClient: one that reads nothing for the streaming
   * timeout is cut, as its own doing).
   */
  onData(chunk: Buffer, pause: () => void, resume: () => void): void {
    this.#timer?.refresh()
    if (!this.#res.write(chunk)) {
      pause()
      // The client is slow, not the instance: the instance's silence meanwhile is no timeout.
      clearTimeout(this.#timer)
      this.#stopWaiting = awaitClient(this.#res, this.#request, () => {
        this.#stopWaiting = undefined
        if (this.#settled) return
        this.#armStreaming()
        resume()
      }, this.fail)
    }
  }

  onEnd(trailers: Readonly<Record<string, string | string[] | undefined>>): void {
    if (this.#settled) return
    const status = this.#status
    const outcome = endAnswer(this.#res, status, this.#head, trailers)
    this.#finish({ outcome, status, error: undefined, notDelivered: false })
    this.#upstream?.answered()
  }

  readonly fail = (err: unknown): void => {
    if (this.#settled) return
    this.#upstream?.cut()
    const failed = failedAnswer(this.#res, this.#request, err, this.#clientGone, this.#status, !this.#sent)
    // Content-Length among the answer's trailers, which Node's parser fails on after the last
    // chunk: the answer is cut (part of its body may still sit unread in the parser's stream),
    // but the instance is not taken out of rotation for a field any of them may send on one path.
    const framingTrailer = this.#status !== undefined && (err as { code?: unknown }).code === 'HPE_INVALID_CONTENT_LENGTH'
    this.#finish(framingTrailer && failed.outcome === 'instance-error' ? { ...failed, outcome: 'generic-error' } : failed)
  }

  #finish(result: ForwardResult): void {
    this.#settled = true
    clearTimeout(this.#timer)
    clearTimeout(this.#expectTimer)
    this.#stopWaiting?.()
    this.#req.unpipe()
    this.#settle(result)
  }
}

/** The client's request as an HTTP/1.1 request to the instance. */
function overHttp1(exchange: NodeExchange, instance: Instance, req: IncomingMessage, request: ForwardRequest, agent: HttpAgent, connectTimeoutMs: number): Upstream {
  const headers: Record<string, string | string[]> = { ...request.headers }
  if (request.continueClient !== undefined) headers['expect'] = '100-continue'
  // Trailers need a chunked body: a length (an HTTP/2 client's) would leave them no room.
  if (req.headers['trailer'] !== undefined) delete headers['content-length']
  // A body without a length is framed as chunked, whatever the method: Node frames only some
  // methods' bodies by itself and would send a GET's or DELETE's raw on a kept-alive
  // connection, where its bytes would read as another request.
  if (hasBody(req) && headers['content-length'] === undefined) headers['transfer-encoding'] = 'chunked'
  const send = instance.proto === 'http' ? httpRequest : httpsRequest
  const up: ClientRequest = send({
    host: instance.host,
    port: instance.port,
    method: req.method ?? 'GET',
    path: req.url ?? '/',
    headers,
    agent,
    maxHeaderSize: MAX_ANSWER_HEAD_BYTES,
    rejectUnauthorized: false,
  })
  let connected = false
  let onConnected: (() => void) | undefined
  const connectedNow = (): void => {
    connected = true
    onConnected?.()
    onConnected = undefined
  }
  up.on('socket', (socket: Socket) => {
    if (!socket.connecting) return connectedNow()
    const timer = setTimeout(() => socket.destroy(failure('UND_ERR_CONNECT_TIMEOUT', `No connection within ${connectTimeoutMs} ms`)), connectTimeoutMs)
    socket.once('connect', () => {
      clearTimeout(timer)
      connectedNow()
    })
    socket.once('close', () => clearTimeout(timer))
  })
  up.on('error', exchange.fail)
  up.on('continue', exchange.onContinue)
  up.on('response', (answer: IncomingMessage) => {
    if (!exchange.onResponse(answer.statusCode ?? 502, answer.headers)) {
      answer.resume()
      return
    }
    answer.on('data', (chunk: Buffer) => exchange.onData(chunk, () => answer.pause(), () => answer.resume()))
    answer.on('end', () => exchange.onEnd(answer.trailers))
    answer.on('error', exchange.fail)
    answer.on('close', () => {
      if (!answer.complete) exchange.fail(failure('ECONNRESET', 'The instance closed the connection mid-answer'))
    })
  })
  if (request.continueClient !== undefined) up.flushHeaders()
  return {
    whenConnected(ready) {
      if (connected) ready()
      else onConnected = ready
    },
    sendBody(body) {
      body.pipe(up, { end: false })
      body.once('end', () => {
        const trailers = backendRequestTrailers(body.trailers)
        if (trailers !== undefined) up.addTrailers(trailers)
        up.end(exchange.onSent)
      })
    },
    endWithoutBody: () => up.end(),
    backPressured: () => up.writableNeedDrain,
    answered() {
      if (!up.writableEnded) up.destroy()
    },
    cut: () => up.destroy(),
  }
}


/** The client's request as a stream on the instance's HTTP/2 connection. */
function overHttp2(exchange: NodeExchange, session: ClientHttp2Session, instance: Instance, req: IncomingMessage, request: ForwardRequest, sessionError: () => Error | undefined, closed: () => void): Upstream {
  const headers: Record<string, string | string[]> = {}
  for (const name in request.headers) if (name !== 'host') headers[name] = request.headers[name] as string | string[]
  headers[':method'] = req.method ?? 'GET'
  headers[':path'] = req.url ?? '/'
  headers[':scheme'] = instance.proto === 'h2' ? 'https' : 'http'
  headers[':authority'] = String(request.headers['host'] ?? authority(instance.host, instance.port))
  if (request.continueClient !== undefined) headers['expect'] = '100-continue'
  const withBody = hasBody(req)
  const stream: ClientHttp2Stream = session.request(headers, { endStream: !withBody, waitForTrailers: withBody })
  let trailers: Record<string, string | string[]> | undefined
  let answerTrailers: H2Headers = {}
  stream.on('wantTrailers', () => stream.sendTrailers(trailers ?? {}))
  // A stream that fails because its connection did (refused, say) reports the connection's
  // error; one the instance refused (REFUSED_STREAM: a connection closing gracefully) was never
  // processed, and may go to another instance.
  // A stream reset with ENHANCE_YOUR_CALM before any answer is the instance's HTTP/2 server
  // refusing the request's header block (Node's stops at 128 fields, the router's own included):
  // the request's doing, a 431, not the instance's failure.
  let answered = false
  stream.on('error', (err) => exchange.fail(sessionError() ?? (stream.rstCode === h2constants.NGHTTP2_REFUSED_STREAM ? refusedStream() : !answered && stream.rstCode === h2constants.NGHTTP2_ENHANCE_YOUR_CALM ? headersRefused(err) : err)))
  stream.on('continue', exchange.onContinue)
  stream.on('response', (head) => {
    answered = true
    const status = Number(head[':status'] ?? 502)
    if (!exchange.onResponse(status, head)) return
    stream.on('data', (chunk: Buffer) => exchange.onData(chunk, () => stream.pause(), () => stream.resume()))
    stream.on('trailers', (t) => (answerTrailers = t))
    stream.on('end', () => {
      // Node ends the stream of a connection that dropped, or of a reset, as if it were
      // complete: an answer cut short must not pass for a whole one (nor a gRPC call without
      // its status for a finished one).
      const code = stream.rstCode
      const cut = sessionError() !== undefined || session.destroyed || (code !== undefined && code !== h2constants.NGHTTP2_NO_ERROR)
      // A gRPC answer (by its own content-type: a request that says gRPC may get any answer,
      // and gRPC-Web carries its status in the body) that ends without a status was cut short.
      const grpcUnfinished = GRPC_CONTENT_TYPE.test(String(head['content-type'] ?? '')) && answerTrailers['grpc-status'] === undefined && head['grpc-status'] === undefined
      if (cut || grpcUnfinished) exchange.fail(sessionError() ?? failure('ECONNRESET', `The instance's answer was cut short (HTTP/2 error ${code ?? 'none'})`))
      else exchange.onEnd(answerTrailers)
    })
  })
  stream.on('close', () => {
    closed()
    // Reset by the instance, or its connection went: anything not ended by now failed.
    if (exchange.settled) return
    const code = stream.rstCode
    exchange.fail(sessionError() ?? (code === h2constants.NGHTTP2_REFUSED_STREAM ? refusedStream() : failure('ECONNRESET', `The instance's stream closed (HTTP/2 error ${code ?? 'none'})`)))
  })
  return {
    whenConnected(ready) {
      // A stream is pending until its connection is up and gives it an id.
      if (!stream.pending) ready()
      else stream.once('ready', ready)
    },
    sendBody(body) {
      body.pipe(stream, { end: false })
      body.once('end', () => {
        trailers = backendRequestTrailers(body.trailers)
        stream.end(exchange.onSent)
      })
    },
    backPressured: () => stream.writableNeedDrain,
    endWithoutBody() {
      // (The stream was opened ended.)
    },
    answered() {
      if (!stream.writableEnded && !stream.closed) stream.close(h2constants.NGHTTP2_CANCEL)
    },
    cut() {
      if (!stream.closed) stream.close(h2constants.NGHTTP2_CANCEL)
    },
  }
}

/** One pooled HTTP/2 connection to an instance. */
interface H2Connection {
  readonly session: ClientHttp2Session
  /** Why the connection failed, if it did: its streams report this rather than their own reset. */
  error: Error | undefined
  /** Streams open on it now. */
  streams: number
  /** When a stream last opened or closed (ms since the epoch). */
  lastUsed: number
  /** The instance's SETTINGS arrived on it. */
  settled: boolean
}

/** Instances whose allowance of streams per connection is remembered, at most (the oldest forgotten first). */
const ALLOWANCES_KEPT = 10_000

export class NodeForwarder {
  readonly #connectTimeoutMs: number
  // Idle connections are kept 4 s, as undici's are: well inside the 5 s a Node instance keeps
  // them, so the router never sends on a connection the instance is closing.
  readonly #http = new HttpAgent({ keepAlive: true, timeout: 4_000 })
  readonly #https = new HttpsAgent({ keepAlive: true, timeout: 4_000, rejectUnauthorized: false })
  /**
   * HTTP/2 connections to each instance origin (h2c and h2), shared by their streams, each
   * closed when idle: one, and another whenever those open are carrying all the streams the
   * instance allows on one (its SETTINGS_MAX_CONCURRENT_STREAMS), so a request never waits in a
   * connection's queue against its socket timeout. Bounded by the version's concurrency-level
   * over that allowance.
   */
  readonly #sessions = new Map<string, H2Connection[]>()
  /**
   * The streams per connection each instance last allowed (its SETTINGS_MAX_CONCURRENT_STREAMS),
   * by instance id (an address may pass to another instance): what a new connection is held to
   * until its own SETTINGS arrive. Unknown: one, as a stream sent beyond the allowance is refused
   * (REFUSED_STREAM), a 502 for its client; so a cold burst opens up to concurrency-level
   * connections, each closed when idle, until the first SETTINGS are known.
   */
  readonly #allowances = new Map<string, number>()

  constructor(options: { connectTimeoutMs: number }) {
    this.#connectTimeoutMs = options.connectTimeoutMs
  }

  forward(req: IncomingMessage, res: ServerResponse, request: ForwardRequest): Forwarding {
    const { instance } = request
    let settle!: (result: ForwardResult) => void
    const result = new Promise<ForwardResult>((resolve) => (settle = resolve))
    const exchange = new NodeExchange(req, res, request, settle)
    let upstream: Upstream
    try {
      if (instance.proto === 'h2c' || instance.proto === 'h2') {
        const entry = this.#session(instance)
        upstream = overHttp2(exchange, entry.session, instance, req, request, () => entry.error, () => {
          entry.streams -= 1
          entry.lastUsed = Date.now()
        })
        // Counted once the stream exists (its close is then certain to uncount it).
        entry.streams += 1
        entry.lastUsed = Date.now()
      } else {
        upstream = overHttp1(exchange, instance, req, request, instance.proto === 'http' ? this.#http : this.#https, this.#connectTimeoutMs)
      }
    } catch (err) {
      // A field or value the instance's protocol cannot carry (Node checks them as it sends):
      // the request's doing, answered as such. Anything else (a connection closing as the
      // stream was asked for) sent nothing either: another instance may take it.
      const code = (err as { code?: string }).code ?? ''
      exchange.fail(REQUEST_REFUSALS.has(code) ? failure('UND_ERR_INVALID_ARG', (err as Error).message) : failure('ECONNREFUSED', `The instance's connection could not take the request: ${(err as Error).message}`))
      return { result, clientGone: exchange.clientGone, stop: exchange.fail }
    }
    exchange.start(upstream)
    return { result, clientGone: exchange.clientGone, stop: exchange.fail }
  }

  #session(instance: Instance): H2Connection {
    const origin = `${instance.proto === 'h2' ? 'https' : 'http'}://${authority(instance.host, instance.port)}`
    const pool = this.#sessions.get(origin) ?? []
    for (const known of pool) {
      if (!known.session.closed && !known.session.destroyed && known.streams < this.#streamsAllowed(known, instance.id)) return known
    }
    const session = connectH2(origin, { rejectUnauthorized: false, ALPNProtocols: ['h2'], settings: { enablePush: false } } as Parameters<typeof connectH2>[1])
    const entry: H2Connection = { session, error: undefined, streams: 0, lastUsed: Date.now(), settled: false }
    session.on('remoteSettings', (settings) => {
      entry.settled = true
      this.#allowances.delete(instance.id)
      this.#allowances.set(instance.id, Math.max(1, settings.maxConcurrentStreams ?? 2 ** 31 - 1))
      if (this.#allowances.size > ALLOWANCES_KEPT) this.#allowances.delete(this.#allowances.keys().next().value as string)
    })
    const forget = (): void => {
      const left = (this.#sessions.get(origin) ?? []).filter((other) => other !== entry)
      if (left.length === 0) this.#sessions.delete(origin)
      else this.#sessions.set(origin, left)
    }
    const connectTimer = setTimeout(() => session.destroy(failure('UND_ERR_CONNECT_TIMEOUT', `No connection within ${this.#connectTimeoutMs} ms`)), this.#connectTimeoutMs)
    session.once('connect', () => clearTimeout(connectTimer))
    session.on('error', (err) => {
      entry.error = err
      forget()
    })
    session.once('goaway', forget)
    session.once('close', () => {
      clearTimeout(connectTimer)
      forget()
    })
    // Closed once it has had no stream for H2_IDLE_MS (one timer per connection, not per request).
    const idle = (): void => {
      if (session.closed || session.destroyed) return
      const quietFor = Date.now() - entry.lastUsed
      if (entry.streams === 0 && quietFor >= H2_IDLE_MS) session.close()
      else setTimeout(idle, entry.streams === 0 ? H2_IDLE_MS - quietFor : H2_IDLE_MS).unref()
    }
    setTimeout(idle, H2_IDLE_MS).unref()
    this.#sessions.set(origin, [...pool, entry])
    return entry
  }

  /** The streams a connection may carry at once: as its SETTINGS say, or, before they arrive, as the instance's last did. */
  #streamsAllowed(entry: H2Connection, instanceId: string): number {
    if (entry.settled) return Math.max(1, entry.session.remoteSettings.maxConcurrentStreams ?? 2 ** 31 - 1)
    return this.#allowances.get(instanceId) ?? 1
  }

  async close(): Promise<void> {
    this.#http.destroy()
    this.#https.destroy()
    for (const pool of this.#sessions.values()) for (const { session } of pool) session.destroy()
    this.#sessions.clear()
  }
}
