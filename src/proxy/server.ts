/**
 * The router's HTTP listener: one port for the data path and the Waiter API, split by Waiter's
 * classification rule. Server timeouts are set explicitly so long proxied requests are not cut
 * by Node's defaults.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import { isApiRequest } from './classify.ts'

export interface ServerOptions {
  readonly maxHeaderBytes: number
  readonly keepAliveTimeoutMs: number
  readonly headersTimeoutMs: number
  readonly routerHostnames: ReadonlySet<string>
  readonly api: (req: IncomingMessage, res: ServerResponse) => Promise<void>
  readonly proxy: (req: IncomingMessage, res: ServerResponse) => Promise<void>
  readonly draining: () => boolean
}

export function createRouterServer(options: ServerOptions): Server {
  const server = createServer(
    {
      maxHeaderSize: options.maxHeaderBytes,
      keepAliveTimeout: options.keepAliveTimeoutMs,
      headersTimeout: options.headersTimeoutMs,
      requestTimeout: 0, // proxied requests may legitimately take long; the per-request timeouts govern
      noDelay: true,
    },
    (req, res) => {
      if (options.draining()) res.shouldKeepAlive = false
      const path = pathOf(req.url)
      const handler = isApiRequest(path, req.headers, options.routerHostnames) ? options.api : options.proxy
      void handler(req, res)
    },
  )
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
    if (!socket.writable) return
    const status = err.code === 'HPE_HEADER_OVERFLOW' ? '431 Request Header Fields Too Large' : '400 Bad Request'
    socket.end(`HTTP/1.1 ${status}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n`)
  })
  return server
}

function pathOf(url: string | undefined): string {
  if (url === undefined) return '/'
  const q = url.indexOf('?')
  return q === -1 ? url : url.slice(0, q)
}
