/**
 * Forwarding one request to one instance with undici: bodies stream both ways with back-pressure
 * (nothing is buffered whole), the initial socket timeout becomes a 504, connect failures a 502,
 * and a body that stalls past the streaming timeout cuts the response off mid-stream.
 */
import type { IncomingMessage, ServerResponse } from 'node:http'
import { Agent, errors as undiciErrors } from 'undici'
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
  /** Aborted when the client goes away. */
  readonly signal: AbortSignal
  /** Extra response headers (cold start, debug), decided when the response starts. */
  readonly extraHeaders: () => Readonly<Record<string, string>>
}

export interface ForwardResult {
  /** How the slot is released: failures of the instance eject it. */
  readonly outcome: ReleaseOutcome
  /** The instance's status, when it answered. */
  readonly status: number | undefined
  /** Set when the request failed before a response started: the caller answers with it. */
  readonly error: MaitreError | undefined
}

const CONNECT_ERRORS = new Set(['ECONNREFUSED', 'UND_ERR_CONNECT_TIMEOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL'])

function hasBody(req: IncomingMessage): boolean {
  const length = req.headers['content-length']
  return req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0')
}

function classify(err: unknown, clientGone: boolean): { outcome: ReleaseOutcome; error: MaitreError } {
  const code = (err as { code?: string }).code ?? ''
  if (clientGone || err instanceof undiciErrors.RequestAbortedError) {
    return { outcome: 'client-error', error: new MaitreError('ERR_CLIENT_CLOSED', 'Connection unexpectedly closed while streaming request', { cause: err }) }
  }
  if (CONNECT_ERRORS.has(code)) {
    return { outcome: 'instance-error', error: new MaitreError('ERR_UPSTREAM_CONNECT', 'Request failed to connect to service backend', { cause: err }) }
  }
  if (code === 'UND_ERR_HEADERS_TIMEOUT') {
    return { outcome: 'instance-error', error: new MaitreError('ERR_UPSTREAM_TIMEOUT', 'Request to service backend timed out', { cause: err }) }
  }
  if (code === 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH') {
    return { outcome: 'client-error', error: new MaitreError('ERR_CLIENT_CLOSED', 'Connection unexpectedly closed while streaming request', { cause: err }) }
  }
  return { outcome: 'instance-error', error: new MaitreError('ERR_UPSTREAM', 'Request to service backend failed', { cause: err }) }
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

  async forward(req: IncomingMessage, res: ServerResponse, request: ForwardRequest): Promise<ForwardResult> {
    const { instance } = request
    let status: number | undefined
    try {
      await this.#agent.stream(
        {
          origin: `${instance.proto === 'https' ? 'https' : 'http'}://${instance.host}:${instance.port}`,
          path: req.url ?? '/',
          method: req.method ?? 'GET',
          headers: request.headers,
          body: hasBody(req) ? req : null,
          headersTimeout: request.socketTimeoutMs,
          bodyTimeout: request.streamingTimeoutMs,
          signal: request.signal,
        },
        ({ statusCode, headers }) => {
          status = statusCode
          res.writeHead(statusCode, { ...clientResponseHeaders(headers, request.cid), ...request.extraHeaders() })
          return res
        },
      )
      return { outcome: status === 503 ? 'instance-busy' : 'success', status, error: undefined }
    } catch (err) {
      const { outcome, error } = classify(err, request.signal.aborted)
      // Once the response has started, the only honest signal left is cutting the connection.
      if (res.headersSent) res.destroy()
      return { outcome: status === undefined ? outcome : request.signal.aborted ? 'client-error' : 'instance-error', status, error: res.headersSent ? undefined : error }
    }
  }

  close(): Promise<void> {
    return this.#agent.close()
  }
}
