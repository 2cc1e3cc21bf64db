/**
 * The router's HTTP listener: one port for the data path and the Waiter API, split by Waiter's
 * classification rule. Server timeouts are set explicitly so long proxied requests are not cut
 * by Node's defaults. It also owns the drain: what "stop" means for connections and requests.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { Server as NetServer, type AddressInfo, type Socket } from 'node:net'
import { cidOf } from '../http/cid.ts'
import { sendError } from '../http/error-response.ts'
import type { Logger } from '../log.ts'
import { isApiRequest } from './classify.ts'

export interface ServerOptions {
  readonly maxHeaderBytes: number
  readonly keepAliveTimeoutMs: number
  readonly headersTimeoutMs: number
  readonly routerHostnames: ReadonlySet<string>
  readonly api: (req: IncomingMessage, res: ServerResponse) => Promise<void>
  readonly proxy: (req: IncomingMessage, res: ServerResponse) => Promise<void>
  readonly log: Logger
}

export interface RouterServer {
  readonly server: Server
  /** Listens; resolves with the bound port. */
  listen(port: number, host: string): Promise<number>
  /** True from the moment a drain starts (/readyz answers 503). */
  readonly draining: () => boolean
  /** Requests being handled right now. */
  readonly inFlight: () => number
  /**
   * Stops taking new connections and lets every request under way finish, for at most
   * `timeoutMs`: every response from now on says `Connection: close`, requests that still arrive
   * on kept-alive connections are served, and connections close once idle. Then what is left is
   * cut. Safe to call twice.
   */
  drain(timeoutMs: number): Promise<void>
}

export function createRouterServer(options: ServerOptions): RouterServer {
  let draining = false
  /** Responses under way: at a drain, the ones that have not started yet are told to close their connection. */
  const open = new Set<ServerResponse>()
  let idle: (() => void) | undefined

  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    if (draining) res.shouldKeepAlive = false
    open.add(res)
    // 'close' comes when the response is over, sent or cut: streamed answers (logs) included.
    res.once('close', () => {
      open.delete(res)
      if (open.size === 0) idle?.()
    })
    const path = pathOf(req.url)
    const handler = isApiRequest(path, req.headers, options.routerHostnames) ? options.api : options.proxy
    handler(req, res)
      .catch((err: unknown) => {
        // The handlers answer their own failures; anything that escapes them is a bug, caught
        // here so that it can never become an unhandled rejection that takes the router down.
        const cid = cidOf(req)
        options.log.error({ err, cid, method: req.method, path }, 'request handler failed unexpectedly')
        if (!res.headersSent && !res.writableEnded) sendError(req, res, err, { cid })
        else if (!res.writableEnded) res.destroy()
      })
  }

  const server = createServer(
    {
      maxHeaderSize: options.maxHeaderBytes,
      keepAliveTimeout: options.keepAliveTimeoutMs,
      headersTimeout: options.headersTimeoutMs,
      requestTimeout: 0, // proxied requests may legitimately take long; the per-request timeouts govern
      noDelay: true,
    },
    handle,
  )
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
    if (!socket.writable) return
    const status = err.code === 'HPE_HEADER_OVERFLOW' ? '431 Request Header Fields Too Large' : '400 Bad Request'
    socket.end(`HTTP/1.1 ${status}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n`)
  })

  let drained: Promise<void> | undefined
  return {
    server,
    async listen(port, host) {
      await new Promise<void>((resolveListen, reject) => {
        server.once('error', reject)
        server.listen(port, host, () => {
          server.off('error', reject)
          resolveListen()
        })
      })
      return (server.address() as AddressInfo).port
    },
    draining: () => draining,
    inFlight: () => open.size,
    drain(timeoutMs) {
      drained ??= (async () => {
        draining = true
        for (const res of open) if (!res.headersSent) res.shouldKeepAlive = false
        // Stop listening, but unlike http.Server#close() keep idle kept-alive connections open: a
        // request a client is sending on one right now is served (with Connection: close) rather
        // than lost in a reset.
        NetServer.prototype.close.call(server)
        if (open.size > 0) {
          await new Promise<void>((done) => {
            const timer = setTimeout(done, timeoutMs)
            timer.unref()
            idle = () => {
              clearTimeout(timer)
              done()
            }
          })
        }
        if (open.size > 0) options.log.warn({ cut: open.size, timeoutMs }, 'drain timed out; cutting the requests left')
        server.closeAllConnections()
        server.close()
      })()
      return drained
    },
  }
}

function pathOf(url: string | undefined): string {
  if (url === undefined) return '/'
  const q = url.indexOf('?')
  return q === -1 ? url : url.slice(0, q)
}
