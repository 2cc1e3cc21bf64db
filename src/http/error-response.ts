/**
 * Waiter's error responses: a `waiter-error` JSON object, an HTML page or plain text, chosen by
 * the Accept header (then the request's Content-Type), always carrying the request's x-cid.
 */
import type { IncomingMessage, ServerResponse } from 'node:http'
import { asMaitreError, type MaitreError } from '../errors.ts'
import { isDebugRequested } from './debug.ts'
import { encodeGrpcMessage, grpcStatusOf, grpcTimeoutMs, isGrpcRequest } from './grpc.ts'
export const SERVER_HEADER = 'maitre'
/** Marks responses maitre itself generated, with the error's code. */
export const ERROR_CODE_HEADER = 'x-maitre-error'

export interface ErrorContext {
  readonly cid: string
  readonly principal?: string | undefined
  readonly serviceId?: string | undefined
  readonly token?: string | undefined
  readonly instanceId?: string | undefined
}

type Format = 'json' | 'html' | 'text'

export function negotiate(req: IncomingMessage): Format {
  const accept = req.headers.accept ?? ''
  if (accept.includes('application/json')) return 'json'
  if (accept.includes('text/html')) return 'html'
  if (accept.includes('text/plain')) return 'text'
  return (req.headers['content-type'] ?? '').includes('application/json') ? 'json' : 'text'
}

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`)
}

export function errorBody(err: MaitreError, req: IncomingMessage, ctx: ErrorContext, format: Format): string {
  const url = req.url ?? '/'
  const q = url.indexOf('?')
  const info = {
    cid: ctx.cid,
    code: err.code,
    details: err.details,
    'error-class': err.errorClass,
    host: req.headers.host ?? '',
    'instance-id': ctx.instanceId ?? null,
    message: err.message,
    principal: ctx.principal ?? null,
    'query-string': q === -1 ? null : url.slice(q + 1),
    'request-method': req.method ?? 'GET',
    'service-id': ctx.serviceId ?? (err.details['service-id'] as string | undefined) ?? null,
    status: err.status,
    timestamp: new Date().toISOString(),
    title: err.title,
    uri: q === -1 ? url : url.slice(0, q),
    // The token the request named, when the error came before (or without) resolving it.
    'waiter-token': ctx.token ?? req.headers['x-waiter-token'] ?? null,
  }
  if (format === 'json') return `${JSON.stringify({ 'waiter-error': info }, null, 2)}\n`
  const rows: [string, unknown][] = [
    ['Correlation ID', info.cid],
    ['Request Method', info['request-method']],
    ['Request URI', info.uri],
    ['Host', info.host],
    ['Principal', info.principal],
    ['Service ID', info['service-id']],
    ['Token', info['waiter-token']],
    ['Status', info.status],
    ['Timestamp', info.timestamp],
  ]
  const shown = rows.filter(([, v]) => v !== null && v !== '')
  if (format === 'html') {
    const items = shown.map(([k, v]) => `<tr><th>${escapeHtml(k)}</th><td>${escapeHtml(String(v))}</td></tr>`).join('')
    return `<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>${escapeHtml(err.title)}</title></head><body><h1>${escapeHtml(err.title)}</h1><pre>${escapeHtml(err.message)}</pre><h2>Request Info</h2><table>${items}</table><h2>Additional Info</h2><pre>${escapeHtml(JSON.stringify(err.details, null, 2))}</pre></body></html>\n`
  }
  const width = Math.max(...shown.map(([k]) => k.length))
  return [
    err.title,
    '='.repeat(err.title.length),
    '',
    err.message,
    '',
    'Request Info',
    '============',
    ...shown.map(([k, v]) => `${k.padEnd(width)}: ${String(v)}`),
    '',
    'Additional Info',
    '===============',
    JSON.stringify(err.details, null, 2),
    '',
  ].join('\n')
}

const CONTENT_TYPES: Readonly<Record<Format, string>> = {
  json: 'application/json; charset=utf-8',
  html: 'text/html; charset=utf-8',
  text: 'text/plain; charset=utf-8',
}

/** Answers with the error unless a response is already under way, in which case the connection is cut. */
export function sendError(req: IncomingMessage, res: ServerResponse, error: unknown, ctx: ErrorContext): void {
  if (res.headersSent) {
    res.destroy()
    return
  }
  const err = asMaitreError(error)
  if (isGrpcRequest(req.headers, req.httpVersionMajor)) return sendGrpcError(req, res, err, ctx)
  const format = negotiate(req)
  const body = errorBody(err, req, ctx, format)
  // With x-waiter-debug, an error about a known version names it, as Waiter's do.
  const serviceId = ctx.serviceId ?? (err.details['service-id'] as string | undefined)
  // (Only an id a header can carry: one taken from a request's path may hold anything.)
  const debug = isDebugRequested(req.headers) && typeof serviceId === 'string' && HEADER_SAFE.test(serviceId)
  res.writeHead(err.status, {
    ...err.headers,
    'content-type': CONTENT_TYPES[format],
    'content-length': Buffer.byteLength(body),
    'x-cid': ctx.cid,
    server: SERVER_HEADER,
    [ERROR_CODE_HEADER]: err.code,
    ...(debug ? { 'x-waiter-service-id': serviceId } : {}),
  })
  res.end(req.method === 'HEAD' ? undefined : body)
}

/** Printable ASCII, no more than a service id's length: always a valid header value. */
const HEADER_SAFE = /^[\x21-\x7e]{1,253}$/

/**
 * A refusal of a gRPC call is a gRPC status: headers (:status 200, content-type
 * application/grpc, x-cid), no message, and trailers holding grpc-status and grpc-message, so a
 * gRPC client sees a gRPC error rather than a protocol error. The details stay in maitre's log
 * under the x-cid.
 */
function sendGrpcError(req: IncomingMessage, res: ServerResponse, err: MaitreError, ctx: ErrorContext): void {
  const serviceId = ctx.serviceId ?? (err.details['service-id'] as string | undefined)
  const { location: _location, ...errHeaders } = err.headers
  res.writeHead(200, {
    ...errHeaders,
    'content-type': 'application/grpc',
    'x-cid': ctx.cid,
    server: SERVER_HEADER,
    [ERROR_CODE_HEADER]: err.code,
    ...(isDebugRequested(req.headers) && typeof serviceId === 'string' ? { 'x-waiter-service-id': serviceId } : {}),
  })
  res.addTrailers({
    'grpc-status': String(grpcStatusOf(err, grpcTimeoutMs(req.headers['grpc-timeout']) !== undefined)),
    'grpc-message': encodeGrpcMessage(err.message),
  })
  res.end()
}
