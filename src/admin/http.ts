/** Small helpers the admin handlers share: JSON in, JSON out. */
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

/** Entries written per turn of the event loop by sendJsonInPieces. */
const ENTRIES_PER_TURN = 256

/**
 * sendJson's text for a body that can be large (a listing over every version or token), sent
 * chunked as it is written: the event loop is let go every ENTRIES_PER_TURN entries and a slow
 * reader is waited for. Writing 10,000 versions' listing at once held the loop ~0.5 s.
 */
export async function sendJsonInPieces(res: ServerResponse, status: number, body: unknown, cid: string): Promise<void> {
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'x-cid': cid, server: SERVER_HEADER })
  let text = ''
  let pieces = 0
  try {
    for (const piece of jsonPieces(body)) {
      text += piece
      if (++pieces % ENTRIES_PER_TURN !== 0) continue
      const flowing = res.write(text)
      text = ''
      await (flowing ? new Promise((resolve) => setImmediate(resolve)) : drainedOrClosed(res))
      if (res.destroyed) return
    }
    res.end(`${text}\n`)
  } catch (err) {
    // The head is out: the reader sees a cut answer, never a complete-looking partial one.
    res.destroy(err instanceof Error ? err : new Error(String(err)))
  }
}

/** Resolves once the response can take more, or has closed. */
export function drainedOrClosed(res: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      res.off('drain', done)
      res.off('close', done)
      resolve()
    }
    res.on('drain', done)
    res.on('close', done)
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
