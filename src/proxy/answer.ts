/**
 * Writing an instance's answer into the client's response: the one way both forwarders (undici's
 * and Node's own clients) relay a head, trailers and a failure, so a client cannot tell which
 * carried its request.
 */
import type { ServerResponse } from 'node:http'
import { constants as h2constants } from 'node:http2'
import { MaitreError } from '../errors.ts'
import type { ReleaseOutcome } from '../backends/tracker.ts'
import { allowedInTrailers, clientResponseHeaders, clientTrailers, forHttp2 } from './headers.ts'
import { BODY_TIMEOUT, classify, CONNECT_ERRORS, TIMEOUT_ERRORS, type ForwardRequest, type ForwardResult } from './forwarding.ts'
import { encodeGrpcMessage, GRPC_CONTENT_TYPE, GRPC_STATUS, grpcStatusOf } from '../http/grpc.ts'

/** What the head left for the end: a gRPC "trailers-only" answer's status and fields. */
export interface AnswerHead {
  readonly grpcStatus: string | undefined
  readonly statusTrailers: Record<string, string | string[]> | undefined
}

/**
 * Writes the client's response head from the instance's. An Error when the client's protocol
 * cannot carry it (Node checks the fields): the caller cuts the exchange and answers 502.
 */
export function writeAnswerHead(res: ServerResponse, request: ForwardRequest, statusCode: number, headers: Readonly<Record<string, string | string[] | undefined>>): AnswerHead | MaitreError {
  const coding = headers['transfer-encoding']
  if (coding !== undefined && coding !== 'chunked') {
    const unknown = unknownTransferCoding(coding)
    if (unknown !== undefined) return unknown
  }
  const out = clientResponseHeaders(headers, request.cid)
  if (request.clientHttp2 === true) forHttp2(out)
  let grpcStatus: string | undefined
  let statusTrailers: Record<string, string | string[]> | undefined
  if (headers['grpc-status'] !== undefined && isNativeGrpcAnswer(request, headers['content-type'])) {
    // A gRPC "trailers-only" answer: the status and all its metadata in the one HEADERS frame
    // that ended the stream. Relayed as an equally valid gRPC response the compatibility API
    // can write: headers (the router's own, and every field a trailer section may not carry:
    // content-type, set-cookie, cache-control, …), an empty body, and trailers holding the
    // status and the rest of the instance's metadata. (Its content-length, 0, would forbid the
    // trailers: the empty body goes without one.)
    grpcStatus = String(headers['grpc-status'])
    statusTrailers = {}
    delete out['content-length']
    for (const name of Object.keys(out)) {
      if (name === 'x-cid' || name === 'via' || !allowedInTrailers(name)) continue
      statusTrailers[name] = out[name] as string | string[]
      delete out[name]
    }
  }
  // RFC 9110 §8.6: no Content-Length on a 204 (an instance's own HTTP/1.1 server may send one,
  // and an HTTP/2 client takes it for a protocol error).
  if (statusCode === 204) delete out['content-length']
  const extra = request.extraHeaders?.()
  if (extra !== undefined) Object.assign(out, extra)
  const cors = request.cors
  if (cors !== undefined) withCors(out, cors)
  const cookies = request.setCookies
  if (cookies !== undefined) {
    const theirs = out['set-cookie']
    out['set-cookie'] = theirs === undefined ? [...cookies] : [...(Array.isArray(theirs) ? theirs : [theirs]), ...cookies]
  }
  try {
    writeHeadDroppingTrailer(res, statusCode, out)
  } catch (err) {
    // Headers the client's protocol cannot carry: a clean 502 instead of a broken stream; the
    // instance answered, so it is not ejected for it. (The failed head's reason phrase must not
    // stay on the 502's status line.)
    if (request.clientHttp2 !== true) res.statusMessage = ''
    return new MaitreError('MAITRE_UPSTREAM', `The instance's response headers cannot be relayed: ${(err as Error).message}`, { cause: err })
  }
  return { grpcStatus, statusTrailers }
}

/**
 * The token's CORS fields over the instance's: an app's `Access-Control-Allow-Origin: *` next to
 * the router's `Access-Control-Allow-Credentials: true` is a pair browsers refuse for a
 * credentialed call. Vary keeps the instance's fields and gains Origin.
 */
function withCors(out: Record<string, string | string[] | number>, cors: Readonly<Record<string, string>>): void {
  for (const [name, value] of Object.entries(cors)) {
    const theirs = out[name]
    if (name !== 'vary' || theirs === undefined) out[name] = value
    else {
      const listed = (Array.isArray(theirs) ? theirs.join(',') : String(theirs)).split(',').map((v) => v.trim().toLowerCase())
      if (!listed.includes('origin') && !listed.includes('*')) out[name] = `${Array.isArray(theirs) ? theirs.join(', ') : String(theirs)}, ${value}`
    }
  }
}

/**
 * Transfer-Encoding is the hop's: an answer in a coding besides chunked (`gzip, chunked`) would
 * reach the client still encoded with nothing saying so. The router decodes none (as nginx, it
 * answers 502), and the instance stays in rotation: the same path would do the same on any of them.
 */
function unknownTransferCoding(coding: string | string[]): MaitreError | undefined {
  const codings = (Array.isArray(coding) ? coding.join(',') : coding).split(',').map((c) => c.trim().toLowerCase()).filter((c) => c !== '')
  if (codings.every((c) => c === 'chunked')) return undefined
  const value = String(coding).slice(0, 100)
  return new MaitreError('MAITRE_UPSTREAM', `The instance's answer is in transfer coding "${value}"; the router decodes none but chunked`, { details: { field: 'transfer-encoding', rule: 'chunked only', value } })
}

/**
 * A `Trailer` field announces trailers, which only a chunked HTTP/1.1 body can carry: Node
 * refuses the head of a response it will not chunk (an HTTP/1.0 client, HEAD, 204, 304, a
 * Content-Length). Such a response carries no trailers (endAnswer's are dropped with it), so it
 * goes without the announcement rather than as a 502.
 */
function writeHeadDroppingTrailer(res: ServerResponse, statusCode: number, out: Record<string, string | string[]>): void {
  try {
    res.writeHead(statusCode, out)
  } catch (err) {
    if ((err as { code?: unknown }).code !== 'ERR_HTTP_TRAILER_INVALID' || out['trailer'] === undefined) throw err
    delete out['trailer']
    res.removeHeader('trailer')
    res.writeHead(statusCode, out)
  }
}

/**
 * Ends the client's response with the instance's trailers (gRPC's status travels in them): in
 * HTTP/2 always, in HTTP/1.1 when the response is chunked (Node drops them otherwise: a fixed
 * length leaves no room). Returns how the slot is released: gRPC's UNAVAILABLE is its 503.
 */
export function endAnswer(res: ServerResponse, status: number | undefined, head: AnswerHead | undefined, trailers: Readonly<Record<string, string | string[] | undefined>>, lastChunk?: Buffer): ReleaseOutcome {
  const relayed = clientTrailers(trailers)
  const all = head?.statusTrailers === undefined ? relayed : { ...head.statusTrailers, ...relayed }
  try {
    if (all !== undefined) res.addTrailers(all)
    res.end(lastChunk)
  } catch {
    // Trailers the client's protocol refuses: the response cannot end cleanly, so it is cut.
    res.destroy()
  }
  const busy = status === 503 || trailers['grpc-status'] === '14' || head?.grpcStatus === '14'
  return busy ? 'instance-busy' : 'success'
}

/** Errors of clients that stopped reading their answer (made by awaitClient). */
const STALLS = new WeakSet<object>()

/**
 * Bytes of the answer still waiting for the client: the response's buffer and, over HTTP/1.1,
 * what its socket has yet to hand the kernel (which shrinks with every byte the client reads,
 * not only by whole chunks). An HTTP/2 connection's socket carries other streams too: a stream's
 * own buffer alone says what its client took.
 */
function waitingForClient(res: ServerResponse, clientHttp2: boolean): number {
  if (clientHttp2) return res.writableLength
  const handle = (res.socket as { _handle?: { writeQueueSize?: unknown } } | null)?._handle
  const queued = handle?.writeQueueSize
  return res.writableLength + (typeof queued === 'number' ? queued : 0)
}

/**
 * The client pushed back (its response's buffer is full), so the instance's answer waits for
 * 'drain' — but not forever, or a client that stops reading would hold its slot for good. What
 * waits for the client is looked at every `ms` (proxy.clientStallTimeoutMs, never less than the
 * streaming timeout): a client that took some
 * of it is reading, however slowly, and is waited for; one that took nothing in a whole period
 * is `stalled`, with an error that is the client's doing (its slot goes back, and the instance
 * stays in rotation). Returns the function that stops waiting.
 */
export function awaitClient(res: ServerResponse, request: ForwardRequest, drained: () => void, stalled: (err: MaitreError) => void): () => void {
  const ms = request.clientStallMs ?? request.streamingTimeoutMs
  const http2 = request.clientHttp2 === true
  let left = waitingForClient(res, http2)
  const onDrain = (): void => {
    clearTimeout(timer)
    drained()
  }
  const timer = setTimeout(() => {
    const now = waitingForClient(res, http2)
    if (now < left) {
      left = now
      timer.refresh()
      return
    }
    res.off('drain', onDrain)
    const err = new MaitreError('MAITRE_CLIENT_TIMEOUT', `The client read nothing of the answer for ${ms} ms`, { details: { limit: 'client-stall-timeout-ms', max: ms } })
    STALLS.add(err)
    stalled(err)
  }, ms)
  res.once('drain', onDrain)
  return () => {
    clearTimeout(timer)
    res.off('drain', onDrain)
  }
}

/**
 * The result of an exchange that failed: what the client is told, and how the slot is released.
 * `requestOpen`: the client has not sent its whole request yet.
 */
export function failedAnswer(res: ServerResponse, request: ForwardRequest, err: unknown, clientGone: boolean, status: number | undefined, requestOpen = false): ForwardResult {
  const { outcome, error } = classify(err, clientGone)
  const code = (err as { code?: string }).code ?? ''
  // Once the response has started (and unless it was ended already: the listener answered for
  // it, a body gone idle, say), a gRPC call still ends as gRPC does, with its status in trailers
  // (a stream that ran out of time: DEADLINE_EXCEEDED; an instance gone: UNAVAILABLE); any
  // other response can only be cut, the one honest signal left.
  if (res.headersSent && !res.writableEnded) {
    // A client that stopped reading would never read a status either: its stream (or
    // connection) goes at once, rather than sit in the router's buffers behind the answer.
    if (STALLS.has(err as object)) cutClient(res, request)
    else if (!clientGone && isGrpcCall(request)) endGrpcCall(res, TIMEOUT_ERRORS.has(code) ? GRPC_STATUS.DEADLINE_EXCEEDED : grpcStatusOf(error, false), TIMEOUT_ERRORS.has(code) ? (err as Error).message : error.message)
    else res.destroy()
  }
  const notDelivered = !clientGone && status === undefined && CONNECT_ERRORS.has(code)
  // A gRPC call gone quiet both ways while its client may still send (a bidirectional call) may
  // be an instance waiting on its client: the streaming timeout ends it, but does not take the
  // instance out of rotation, or any caller could eject it by opening a call and saying nothing.
  const clientsTimeout = (request.timeoutsChosenByClient === true && TIMEOUT_ERRORS.has(code)) || (requestOpen && code === BODY_TIMEOUT && isGrpcCall(request))
  return {
    // (An error of maitre's own is the client's doing, answer begun or not: its body went idle,
    // or it stopped reading the answer.)
    outcome: clientsTimeout || err instanceof MaitreError ? 'client-error' : status === undefined ? outcome : clientGone ? 'client-error' : 'instance-error',
    status,
    error: res.headersSent ? undefined : error,
    ...(res.headersSent ? { cut: error } : {}),
    notDelivered,
  }
}

/** A gRPC call from an HTTP/2 client (its status can still be told in trailers). */
function isGrpcCall(request: ForwardRequest): boolean {
  const type = request.headers['content-type']
  return request.clientHttp2 === true && typeof type === 'string' && GRPC_CONTENT_TYPE.test(type)
}

/**
 * An answer whose status a gRPC client reads from trailers: native gRPC to an HTTP/2 client
 * (an answer without a content-type to a native gRPC call counts). gRPC-Web's, whose status a
 * browser reads from the headers, and anything to an HTTP/1.1 client go as they came.
 */
function isNativeGrpcAnswer(request: ForwardRequest, contentType: string | string[] | undefined): boolean {
  if (request.clientHttp2 !== true) return false
  return contentType === undefined ? isGrpcCall(request) : GRPC_CONTENT_TYPE.test(String(contentType))
}

/** Cuts the client's answer: its HTTP/2 stream is cancelled, its HTTP/1.1 connection closed. */
function cutClient(res: ServerResponse, request: ForwardRequest): void {
  const stream = (res as ServerResponse & { stream?: { close(code: number): void; closed: boolean } }).stream
  if (request.clientHttp2 === true && stream !== undefined) {
    if (!stream.closed) stream.close(h2constants.NGHTTP2_CANCEL)
  } else res.destroy()
}

function endGrpcCall(res: ServerResponse, grpcStatus: number, message: string): void {
  try {
    res.addTrailers({ 'grpc-status': String(grpcStatus), 'grpc-message': encodeGrpcMessage(message) })
    res.end()
  } catch {
    res.destroy()
  }
}
