/** An HTTP upgrade at the listener: which ones are WebSockets, and how one that will not happen is refused. */
import { ServerResponse, type IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'
import { sendError } from '../http/error-response.ts'
import { MaitreError } from '../errors.ts'

/** Whether an upgrade asks for a WebSocket (other upgrades, h2c for one, are served as HTTP/1.1). */
export function isWebSocketUpgrade(req: IncomingMessage): boolean {
  return req.headers.upgrade?.toLowerCase() === 'websocket'
}

/** Writes one plain HTTP answer on an upgrade's socket (no server response exists for it), then closes the connection. */
export function answerOnSocket(req: IncomingMessage, socket: Duplex, answer: (res: ServerResponse) => void): void {
  if (!socket.writable) {
    socket.destroy()
    return
  }
  const res = new ServerResponse(req)
  res.shouldKeepAlive = false
  res.assignSocket(socket as Parameters<ServerResponse['assignSocket']>[0])
  res.once('finish', () => {
    res.detachSocket(socket as Parameters<ServerResponse['detachSocket']>[0])
    socket.end()
  })
  answer(res)
}

/** Answers an upgrade that will not happen with Waiter's error response, then closes the connection. */
export function refuseUpgrade(req: IncomingMessage, socket: Duplex, error: unknown, ctx: { cid: string; principal?: string | undefined; serviceId?: string | undefined; token?: string | undefined }): void {
  answerOnSocket(req, socket, (res) => sendError(req, res, error, ctx))
}

/** Why an upgrade is refused (503, Retry-After) or a relayed WebSocket closed (1001) once the router drains. */
export const SHUTTING_DOWN = 'The router is shutting down'

/** The refusal of an upgrade that would begin while the router drains: its client reconnects elsewhere. */
export function shuttingDownError(): MaitreError {
  return new MaitreError('MAITRE_ROUTER_OVERLOADED', SHUTTING_DOWN, { status: 503, headers: { 'retry-after': '1' }, details: { draining: true } })
}

/**
 * How a gRPC call still under way when the drain ran out of time ends (its client reads
 * UNAVAILABLE, and retries by its own policy). No Retry-After: the instance has the request and
 * may have acted on it.
 */
export function stoppedByShutdownError(): MaitreError {
  return new MaitreError('MAITRE_ROUTER_OVERLOADED', `${SHUTTING_DOWN} with the request still under way`, { status: 503, details: { draining: true } })
}
