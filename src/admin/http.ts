/** Small helpers the admin handlers share: JSON in, JSON out. */
import type { IncomingMessage, ServerResponse } from 'node:http'
import { MaitreError } from '../errors.ts'
import { SERVER_HEADER } from '../http/error-response.ts'

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

export function sendText(res: ServerResponse, status: number, text: string, cid: string): void {
  res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(text), 'x-cid': cid, server: SERVER_HEADER })
  res.end(text)
}

const MAX_BODY_BYTES = 1 << 20

export async function readJsonObject(req: IncomingMessage): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length
    if (size > MAX_BODY_BYTES) throw new MaitreError('MAITRE_BAD_REQUEST', `Request body exceeds ${MAX_BODY_BYTES} bytes`, { status: 413 })
    chunks.push(chunk)
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
  return parsed as Record<string, unknown>
}

export function methodNotAllowed(method: string | undefined, allowed: readonly string[]): MaitreError {
  return new MaitreError('MAITRE_METHOD_NOT_ALLOWED', `Method ${String(method)} is not supported here; use ${allowed.join(', ')}`, {
    headers: { allow: allowed.join(', ') },
  })
}

export function firstHeader(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value
}
