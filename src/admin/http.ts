/** Small helpers the admin handlers share: JSON in, JSON out. */
import type { EventEmitter } from 'node:events'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { MaitreError } from '../errors.ts'
import { jsonDepth, MAX_JSON_DEPTH } from '../limits.ts'
import { SERVER_HEADER } from '../http/error-response.ts'
import { jsonPieces } from './json-pieces.ts'

export interface AdminRequest {
  readonly req: IncomingMessage
  readonly res: ServerResponse
  readonly url: URL
  readonly cid: string
}

export function sendJson(res: ServerResponse, status: number, body: unknown, cid: string, headers: Record<string, string> = {}): void {
  const text = `${JSON.stringify(body, null, 2)}\n`
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(text),
    'x-cid': cid,
    server: SERVER_HEADER,
    ...headers,
  })
  res.end(text)
}

/** Pieces written per turn of the event loop by sendJsonInPieces (an entry is one piece, or ~10–20 when walked into). */
const PIECES_PER_TURN = 1024

/**
 * sendJson's text for a body that can be large (a listing over every version or token), sent
 * chunked as it is written: the event loop is let go every PIECES_PER_TURN pieces and a slow
 * reader is waited for; a reader gone stops it. Writing 10,000 versions' listing at once held
 * the loop ~0.5 s.
 */
export async function sendJsonInPieces(res: ServerResponse, status: number, body: unknown, cid: string): Promise<void> {
  if (leftBehind(res)) return
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'x-cid': cid, server: SERVER_HEADER })
  let text = ''
  let pieces = 0
  try {
    for (const piece of jsonPieces(body)) {
      text += piece
      if (++pieces % PIECES_PER_TURN !== 0) continue
      if (!(await writeOn(res, text))) return
      text = ''
      await new Promise((resolve) => setImmediate(resolve))
    }
    res.end(`${text}\n`)
  } catch (err) {
    // The head is out: the reader sees a cut answer, never a complete-looking partial one.
    res.destroy(err instanceof Error ? err : new Error(String(err)))
  }
}

/**
 * Writes a piece of a long answer, waiting for the reader to take it if it is behind. False once
 * the reader is gone: stop writing (what was written is let go).
 */
export async function writeOn(res: ServerResponse, text: string): Promise<boolean> {
  if (leftBehind(res)) return false
  if (!res.write(text)) await drainedOrClosed(res)
  return !leftBehind(res)
}

/**
 * Whether the reader is gone; if so, the answer is destroyed, so that what waits to be written
 * is let go (an HTTP/2 stream the reader cancelled otherwise keeps it, and its session stays open).
 */
export function leftBehind(res: ServerResponse): boolean {
  if (!answerGone(res)) return false
  if (!res.writableEnded) res.destroy()
  return true
}

/**
 * Whether an answer can no longer reach its reader. Over HTTP/2 (Node's compatibility
 * response) `destroyed` does not exist and a write to a closed stream just returns false, so
 * the stream's own state is read too.
 */
export function answerGone(res: ServerResponse): boolean {
  const stream = http2StreamOf(res)
  return res.destroyed === true || res.writableEnded || stream?.destroyed === true || stream?.closed === true
}

/** The HTTP/2 stream under a compatibility response (whose own events do not say that the reader cancelled). */
function http2StreamOf(res: ServerResponse): (EventEmitter & { destroyed?: boolean; closed?: boolean }) | undefined {
  return (res as unknown as { stream?: EventEmitter & { destroyed?: boolean; closed?: boolean } }).stream
}

/** Resolves once the response can take more, or has closed (at once if it already has). */
function drainedOrClosed(res: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    if (answerGone(res)) return resolve()
    // An HTTP/2 stream the reader cancelled with writes pending says 'aborted', not 'close'.
    const emitters: EventEmitter[] = [res, ...[http2StreamOf(res)].filter((s) => s !== undefined)]
    const events = ['drain', 'close', 'aborted', 'error'] as const
    const done = (): void => {
      for (const emitter of emitters) for (const event of events) emitter.off(event, done)
      resolve()
    }
    for (const emitter of emitters) for (const event of events) emitter.on(event, done)
  })
}

export function sendText(res: ServerResponse, status: number, text: string, cid: string): void {
  res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(text), 'x-cid': cid, server: SERVER_HEADER })
  res.end(text)
}

/** Largest JSON body the API reads (a token is a few KiB; its history keeps five more). */
export const MAX_BODY_BYTES = 256 * 1024

/**
 * Reads a JSON object body within the API's bounds: at most MAX_BODY_BYTES (413, and the
 * connection closes: the rest of the body is not read) and MAX_JSON_DEPTH levels (400). A client
 * that goes away mid-body is its own business: a 400-class failure, not an error of ours.
 */
export async function readJsonObject(req: IncomingMessage): Promise<Record<string, unknown>> {
  const declared = Number(req.headers['content-length'] ?? '0')
  if (declared > MAX_BODY_BYTES) throw tooLarge()
  const chunks: Buffer[] = []
  let size = 0
  try {
    for await (const chunk of req as AsyncIterable<Buffer>) {
      size += chunk.length
      if (size > MAX_BODY_BYTES) throw tooLarge()
      chunks.push(chunk)
    }
  } catch (err) {
    if (err instanceof MaitreError) throw err
    throw new MaitreError('MAITRE_CLIENT_CLOSED', 'Connection closed by the client while sending the request body', { cause: err })
  }
  const text = Buffer.concat(chunks).toString('utf8')
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch (err) {
    throw new MaitreError('MAITRE_BAD_REQUEST', `Invalid JSON in request body: ${(err as Error).message}`)
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new MaitreError('MAITRE_BAD_REQUEST', 'The request body must be a JSON object')
  }
  if (jsonDepth(parsed) > MAX_JSON_DEPTH) {
    throw new MaitreError('MAITRE_BAD_REQUEST', `The request body nests deeper than ${MAX_JSON_DEPTH} levels`, { details: { limit: 'json-depth', max: MAX_JSON_DEPTH } })
  }
  return parsed as Record<string, unknown>
}

function tooLarge(): MaitreError {
  return new MaitreError('MAITRE_BAD_REQUEST', `The request body exceeds ${MAX_BODY_BYTES} bytes`, {
    status: 413,
    details: { limit: 'body-bytes', max: MAX_BODY_BYTES },
    // The rest of the body is not read: the connection cannot carry another request.
    headers: { connection: 'close' },
  })
}

export function methodNotAllowed(method: string | undefined, allowed: readonly string[]): MaitreError {
  return new MaitreError('MAITRE_METHOD_NOT_ALLOWED', `Method ${String(method)} is not supported here; use ${allowed.join(', ')}`, {
    headers: { allow: allowed.join(', ') },
  })
}

export function firstHeader(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value
}

/**
 * A yes/no query parameter as Waiter reads it (Java's Boolean.parseBoolean): `true` in any case
 * is yes, anything else no. Waiter's CLI sends Python's `True`.
 */
export function queryFlag(url: URL, name: string): boolean {
  return url.searchParams.get(name)?.toLowerCase() === 'true'
}
