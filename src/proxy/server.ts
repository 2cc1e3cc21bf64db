/**
 * The router's HTTP listener: one port for the data path and the Waiter API, split by Waiter's
 * classification rule. It owns what a connection may cost: admission (connections in all and per
 * client, decided before a byte of the connection is parsed), headers within headersTimeoutMs
 * (checked twice a second), a bounded header count, a body that keeps moving
 * (bodyIdleTimeoutMs), and a bounded number of pipelined requests per connection; each refusal a
 * JSON answer aimed at the caller who earned it, after which its connection is closed and nothing
 * more it sends is read. It also owns the drain: what "stop" means for connections and requests.
 */
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { constants as h2constants, createSecureServer as createHttp2SecureServer, createServer as createHttp2Server, type Http2ServerRequest, type Http2ServerResponse, type ServerHttp2Session, type ServerHttp2Stream } from 'node:http2'
import { createServer as createNetServer, isIPv6, type AddressInfo, type Socket } from 'node:net'
import { createSecureContext } from 'node:tls'
import { readFileSync } from 'node:fs'
import { MaitreError } from '../errors.ts'
import { cidOf } from '../http/cid.ts'
import { sendError } from '../http/error-response.ts'
import type { Logger } from '../log.ts'
import { isApiRequest } from './classify.ts'
import { hasSeveralHosts, isValidHost } from '../http/host.ts'
import { isWebSocketUpgrade, refuseUpgrade, shuttingDownError, stoppedByShutdownError } from './upgrade.ts'
import { isH2cUpgrade, spliceUpgradedRequest, SWITCHING_TO_H2C, upgradedRequestFrames } from './h2c-upgrade.ts'
import type { Duplex } from 'node:stream'

export interface ServerOptions {
  readonly maxHeaderBytes: number
  readonly keepAliveTimeoutMs: number
  readonly headersTimeoutMs: number
  readonly bodyIdleTimeoutMs: number
  readonly maxHeaders: number
  readonly maxConnections: number
  readonly maxConnectionsPerClient: number
  readonly maxRequestsPerConnection: number
  readonly routerHostnames: ReadonlySet<string>
  /** TLS on this listener (PEM): ALPN chooses HTTP/2 or HTTP/1.1. Absent: cleartext HTTP/1.1 and h2c. */
  readonly tls?: { readonly cert: Buffer; readonly key: Buffer } | undefined
  readonly api: (req: IncomingMessage, res: ServerResponse) => Promise<void>
  readonly proxy: (req: IncomingMessage, res: ServerResponse) => Promise<void>
  /**
   * Told when the drain's bound ran out with requests still under way, just before they are
   * cut: gRPC calls end with "shutting down" (UNAVAILABLE in their trailers), which the drain
   * then gives STOP_GRACE_MS to reach their clients.
   */
  readonly stopUnderWay?: (err: MaitreError) => void
  /** WebSocket upgrades on the data path (absent: an upgrade is served as plain HTTP/1.1). */
  readonly websocket?: {
    handle(req: IncomingMessage, socket: Duplex, head: Buffer): void
    /** Told when a drain starts: open WebSockets are asked to close (1001). */
    closeAll(): void
  }
  /** Told of each connection refused at a connection limit (counted in /metrics). */
  readonly onRefused?: (limit: 'connections' | 'connections-per-client') => void
  /** Refusals at a connection limit are logged at most once per this (default REFUSAL_LOG_MS). */
  readonly refusalLogMs?: number
  readonly log: Logger
}

/** Refusals at a connection limit are logged at most once per this, with how many there were. */
const REFUSAL_LOG_MS = 10_000

export interface RouterServer {
  readonly server: Server
  /** Listens; resolves with the bound port. */
  listen(port: number, host: string): Promise<number>
  /** True from the moment a drain starts (/readyz answers 503). */
  readonly draining: () => boolean
  /** Requests being handled right now. */
  readonly inFlight: () => number
  /** Data-path requests and WebSocket upgrades (not the router's own API) begun since the server was made. */
  readonly proxiedRequests: () => number
  /** Client connections open right now. */
  readonly connections: () => number
  /**
   * Stops taking new connections and lets every request under way finish, for at most
   * `timeoutMs`: every response from now on says `Connection: close`, requests that still arrive
   * on kept-alive connections are served, and connections close once idle. Then what is left is
   * cut. Safe to call twice. The listener closes once `before` settles (bounded by the caller):
   * meanwhile /readyz already says 503 and every response says close.
   */
  drain(timeoutMs: number, before?: Promise<unknown>): Promise<void>
}

/** What the body-idle sweep knows of a request under way. */
interface Open {
  readonly req: IncomingMessage
  readonly res: ServerResponse
  bytesRead: number
  movedAt: number
}

/**
 * What the listener keeps on each connection, as properties of the socket rather than in weak
 * maps: they are read and written on every request, and weak maps cost the collector more.
 */
const UNDER_WAY = Symbol('maitre.requestsUnderWay')
const REFUSED = Symbol('maitre.refused')
interface Counted extends Socket {
  /** Requests under way on this connection (HTTP/1.1 pipelining sends several at once). */
  [UNDER_WAY]?: number
  /** This connection was told no: whatever else arrives on it is not served. */
  [REFUSED]?: boolean
}
function markRefused(socket: Socket): void {
  ;(socket as Counted)[REFUSED] = true
}

/** What an HTTP/2 client with prior knowledge sends first (RFC 9113 §3.4). */
const H2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n')
/** Streams one HTTP/2 connection may have open at once (its SETTINGS_MAX_CONCURRENT_STREAMS). */
export const MAX_H2_STREAMS = 100

const CONNECT_REFUSED = 'CONNECT is not proxied: maitre opens no tunnels'

/** Node's own code for a request whose headers did not arrive within headersTimeout. */
const HEADERS_TIMEOUT = 'ERR_HTTP_REQUEST_TIMEOUT'
/** How long the rest of an answered HTTP/2 request's body is read and dropped before the stream is reset. */
const STOP_BODY_GRACE_MS = 250
/** The longest the rest of a body answered before it came is read and dropped (HTTP/1.1). */
const DROP_BODY_MS = 30_000
/** What the exchanges a drain stopped get to send their last words (a gRPC status) before their connections go. */
const STOP_GRACE_MS = 250

/**
 * Whom a connection is counted against: its IPv4 address, or the /64 of an IPv6 one (a single
 * host usually holds a whole /64, so per-address counting would give it billions of "clients").
 */
export function clientKey(address: string | undefined): string {
  if (address === undefined || address === '') return 'unknown'
  if (address.startsWith('::ffff:') && address.includes('.')) return address.slice(7)
  if (!isIPv6(address)) return address
  const [head = '', tail = ''] = address.split('::')
  const left = head === '' ? [] : head.split(':')
  const right = tail === '' ? [] : tail.split(':')
  const groups = address.includes('::') ? [...left, ...Array<string>(8 - left.length - right.length).fill('0'), ...right] : left
  return `${groups.slice(0, 4).map((g) => g.toLowerCase().replace(/^0+(?=.)/, '')).join(':')}::/64`
}

export function createRouterServer(options: ServerOptions): RouterServer {
  let draining = false
  /** Requests under way: at a drain, the ones that have not answered yet are told to close their connection. */
  const open = new Map<ServerResponse, Open>()
  let idle: (() => void) | undefined
  const perClient = new Map<string, number>()
  let connections = 0
  /** Every connection admitted and still open, whatever it became. */
  const admitted = new Set<Socket>()
  /**
   * Cleartext connections that have not yet said which protocol they speak: idle as far as a
   * drain goes (no request on them yet), and out of Node's reach (closeIdleConnections knows only
   * the connections it was handed), so the drain closes them itself rather than wait them out.
   */
  const awaitingFirstBytes = new Set<Socket>()

  const refuse = (socket: Socket, answer: string): void => {
    markRefused(socket)
    socket.end(answer)
    socket.destroySoon()
  }
  /** Refusals since the last warning, per limit: a flood of them is one line per REFUSAL_LOG_MS, not one per connection. */
  const refusals = { connections: 0, 'connections-per-client': 0 }
  const refusalLogMs = options.refusalLogMs ?? REFUSAL_LOG_MS
  let refusalLogAt = -Infinity
  let lastRefusal = { limit: 'connections' as keyof typeof refusals, max: 0 }
  /** The warning for refusals held back within the interval: they are told at its end, not only at the next refusal (which may never come). */
  let trailingLog: NodeJS.Timeout | undefined
  const logRefusals = (): void => {
    refusalLogAt = Date.now()
    options.log.warn({ refused: { ...refusals }, ...lastRefusal, open: connections }, 'connections refused at a connection limit')
    refusals.connections = 0
    refusals['connections-per-client'] = 0
  }
  const refusedAt = (limit: keyof typeof refusals, max: number): void => {
    options.onRefused?.(limit)
    refusals[limit] += 1
    lastRefusal = { limit, max }
    const wait = refusalLogAt + refusalLogMs - Date.now()
    if (wait <= 0) logRefusals()
    else trailingLog ??= setTimeout(() => {
      trailingLog = undefined
      logRefusals()
    }, wait).unref()
  }

  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    const socket = req.socket
    // HTTP/0.9 has no status line or headers to answer with; a connection that was refused is over.
    if (req.httpVersionMajor === 0 || (socket as Counted)[REFUSED] === true) {
      socket.destroy()
      return
    }
    if (draining) res.shouldKeepAlive = false
    const counted = socket as Counted
    const onSocket = (counted[UNDER_WAY] ?? 0) + 1
    counted[UNDER_WAY] = onSocket
    open.set(res, { req, res, bytesRead: socket.bytesRead, movedAt: Date.now() })
    // 'close' comes when the response is over, sent or cut: streamed answers (logs) included.
    res.once('close', () => {
      open.delete(res)
      counted[UNDER_WAY] = (counted[UNDER_WAY] ?? 1) - 1
      if (open.size === 0) idle?.()
      if (res.writableFinished && !req.complete && !req.destroyed) dropRestOfBody(req, options.bodyIdleTimeoutMs)
    })
    if (req.httpVersionMinor >= 1 && req.headers.host === undefined) {
      res.shouldKeepAlive = false
      const err = new MaitreError('MAITRE_BAD_REQUEST', 'An HTTP/1.1 request must name its Host', { details: { field: 'host' } })
      return sendError(req, res, err, { cid: cidOf(req) })
    }
    const hostError = badHost(req.headers.host, hasSeveralHosts(req.rawHeaders))
    if (hostError !== undefined) {
      res.shouldKeepAlive = false
      return sendError(req, res, hostError, { cid: cidOf(req) })
    }
    if (onSocket > options.maxRequestsPerConnection) {
      // Answered in turn (Node keeps pipelined answers in order), then the connection goes.
      res.shouldKeepAlive = false
      const err = new MaitreError('MAITRE_TOO_MANY_REQUESTS', `At most ${options.maxRequestsPerConnection} requests may be under way on one connection`, {
        details: { limit: 'requests-per-connection', max: options.maxRequestsPerConnection },
        headers: { 'retry-after': '1' },
      })
      return sendError(req, res, err, { cid: cidOf(req) })
    }
    dispatch(req, res)
  }

  /** Over the router's own TLS a request is https (unless a proxy in front already said what it was). */
  const markHttps = (req: IncomingMessage): void => {
    if (tlsServer !== undefined && req.headers['x-forwarded-proto'] === undefined) req.headers['x-forwarded-proto'] = 'https'
  }

  /** Data-path requests and WebSockets begun: what tells traffic from the probes and scrapes an idle router gets. */
  let proxied = 0
  /** One request, either protocol, to the API or the data path. */
  const dispatch = (req: IncomingMessage, res: ServerResponse): void => {
    markHttps(req)
    const path = pathOf(req.url)
    const api = isApiRequest(path, req.headers, options.routerHostnames)
    if (!api) proxied++
    const handler = api ? options.api : options.proxy
    handler(req, res).catch((err: unknown) => {
      // The handlers answer their own failures; anything that escapes them is a bug, caught
      // here so that it can never become an unhandled rejection that takes the router down.
      const cid = cidOf(req)
      options.log.error({ err, cid, method: req.method, path }, 'request handler failed unexpectedly')
      if (!res.headersSent && !res.writableEnded) sendError(req, res, err, { cid })
      else if (!res.writableEnded) res.destroy()
    })
  }

  const server = createHttpServer(
    {
      maxHeaderSize: options.maxHeaderBytes,
      keepAliveTimeout: options.keepAliveTimeoutMs,
      headersTimeout: options.headersTimeoutMs,
      requestTimeout: 0, // proxied requests may legitimately take long; the per-request timeouts govern
      // Node checks header deadlines every 30 s by default: a deadline is kept within half a second.
      connectionsCheckingInterval: 500,
      // Node would answer a missing Host itself, with a bare 400: answered below, in JSON.
      requireHostHeader: false,
      noDelay: true,
      // A WebSocket upgrade, and a well-formed h2c one (outside a drain), are taken as such;
      // any other is served as HTTP/1.1.
      shouldUpgradeCallback: (req: IncomingMessage) => (options.websocket !== undefined && isWebSocketUpgrade(req)) || (!draining && isH2cUpgrade(req)),
    },
    handle,
  )
  // More headers than this is a parse error (HPE_HEADER_OVERFLOW): a 431 from clientError below.
  server.maxHeadersCount = options.maxHeaders

  // HTTP/2 over cleartext on the same port, for clients with prior knowledge (gRPC's, curl's
  // --http2-prior-knowledge) and for those that ask with Upgrade: h2c (curl's --http2; see
  // h2c-upgrade.ts). The same handlers serve it through Node's compatibility API.
  const sessions = new Set<ServerHttp2Session>()
  const h2Options = {
    maxHeaderListPairs: options.maxHeaders,
    settings: { maxConcurrentStreams: MAX_H2_STREAMS, maxHeaderListSize: options.maxHeaderBytes },
  }
  const handleH2 = (req: Http2ServerRequest, res: Http2ServerResponse): void => {
    // The handlers read the Host the HTTP/1.1 way; in HTTP/2 it is the :authority. (A host field
    // that differs from it makes the request malformed: RFC 9113 §8.3.1.)
    const host = req.headers.host
    // (Host names ignore case: RFC 9113 compares them as URIs do.)
    const differs = host !== undefined && req.authority !== undefined && host !== req.authority && host.toLowerCase() !== req.authority.toLowerCase()
    if (host === undefined && req.authority !== undefined) req.headers.host = req.authority
    const request = req as unknown as IncomingMessage
    const response = res as unknown as ServerResponse
    // Counted for the drain as HTTP/1.1 requests are. (The body-idle sweep skips HTTP/2 streams,
    // whose connection's byte count moves with every stream: each has its own timer below.)
    open.set(response, { req: request, res: response, bytesRead: Number.NaN, movedAt: Number.POSITIVE_INFINITY })
    res.once('close', () => {
      open.delete(response)
      if (open.size === 0) idle?.()
    })
    // A request body that sends nothing for bodyIdleTimeoutMs: 408, or the stream is reset if
    // an answer already began. Only this stream goes; the connection's others carry on. An
    // admitted gRPC call is held to its streaming timeout instead (see grpcCallAdmitted).
    const stream = res.stream
    if (!stream.endAfterHeaders && !req.complete) {
      const onIdle = (): void => {
        // Complete, or answered in full (a refusal: stopBodyAfterAnswer ends the body).
        if (req.complete || res.writableEnded) return
        const callBound = quietCallBound(response)
        if (callBound === 0 || (callBound !== undefined && res.headersSent)) {
          // A gRPC call waiting for a slot, or one whose answer has begun, is not cut here: the
          // queue timeout bounds the first, the forwarder's streaming timeout the second.
          stream.setTimeout(0)
          return
        }
        const bound = callBound ?? options.bodyIdleTimeoutMs
        // Body bytes waiting to be read, or a body not yet asked for (Expect: 100-continue),
        // wait on us (a queued request), not on the client: look again later. (A stream's
        // timeout fires once per quiet spell; it is set anew.)
        if (req.readableLength > 0 || stream.readableLength > 0 || awaitingContinue(request, response)) {
          stream.setTimeout(bound, onIdle)
          return
        }
        const err = callBound === undefined
          ? new MaitreError('MAITRE_CLIENT_TIMEOUT', `The request body sent nothing for ${bound} ms`, { details: { limit: 'body-idle-ms', max: bound } })
          : new MaitreError('MAITRE_CLIENT_TIMEOUT', `The call sent nothing, and was sent nothing, for ${bound} ms (its streaming timeout)`, { details: { limit: 'streaming-timeout-ms', max: bound } })
        if (res.headersSent) stream.close(h2constants.NGHTTP2_CANCEL)
        else {
          // (A gRPC call hears a gRPC status, DEADLINE_EXCEEDED, in trailers.)
          sendError(request, response, err, { cid: cidOf(request) })
          // Whatever reads the body (the forward to an instance) learns that it will never
          // end, and lets its slot go. The stream itself is closed by stopBodyAfterAnswer once
          // the answer is out, trailers and all (closing it now would cut them off: a gRPC
          // client would see a call without a status).
          setImmediate(() => {
            req.once('error', () => undefined)
            req.destroy(err)
          })
        }
      }
      stream.setTimeout(options.bodyIdleTimeoutMs, onIdle)
      req.once('end', () => stream.setTimeout(0))
    }
    if (!stream.endAfterHeaders) stopBodyAfterAnswer(req, stream)
    const hostError = badHost(request.headers.host, differs)
    if (hostError !== undefined) return sendError(request, response, hostError, { cid: cidOf(request) })
    dispatch(request, response)
  }
  const h2 = createHttp2Server(h2Options, handleH2)

  // TLS (server.tls): one secure server does the handshake and serves HTTP/2 or, by ALPN (or its
  // absence), HTTP/1.1 with the same settings and handlers as the cleartext HTTP/1.1 server.
  const tlsServer = options.tls === undefined ? undefined : createHttp2SecureServer(
    { ...h2Options, cert: options.tls.cert, key: options.tls.key, minVersion: 'TLSv1.2', allowHTTP1: true, handshakeTimeout: options.headersTimeoutMs },
    (req: Http2ServerRequest | IncomingMessage, res: Http2ServerResponse | ServerResponse) => {
      if (req.httpVersionMajor === 2) handleH2(req as Http2ServerRequest, res as Http2ServerResponse)
      else handle(req as IncomingMessage, res as ServerResponse)
    },
  )
  if (tlsServer !== undefined) {
    // Its HTTP/1.1 side reads Node's HTTP server settings from the server object itself.
    Object.assign(tlsServer, {
      maxHeaderSize: options.maxHeaderBytes,
      maxHeadersCount: options.maxHeaders,
      keepAliveTimeout: options.keepAliveTimeoutMs,
      headersTimeout: options.headersTimeoutMs,
      requestTimeout: 0,
      connectionsCheckingInterval: 500,
      requireHostHeader: false,
      shouldUpgradeCallback: (req: IncomingMessage) => options.websocket !== undefined && isWebSocketUpgrade(req),
    })
    // A failed handshake is the client's affair: its socket goes, nothing is logged as ours.
    tlsServer.on('tlsClientError', (_err: Error, socket: Socket) => socket.destroy())
  }
  /** A connection upgraded with Upgrade: h2c is being handed to the HTTP/2 server (see upgrade()). */
  let handingOverUpgraded = false
  for (const h2Server of [h2, tlsServer]) {
    h2Server?.on('session', (session: ServerHttp2Session) => {
      sessions.add(session)
      // A connection with no stream open for keepAliveTimeoutMs is told GOAWAY, as an idle
      // HTTP/1.1 connection is closed (a long call keeps it, however quiet).
      let streams = 0
      let idleTimer: NodeJS.Timeout | undefined
      const armIdle = (): void => {
        idleTimer = setTimeout(() => session.close(), options.keepAliveTimeoutMs)
        idleTimer.unref()
      }
      armIdle()
      session.on('stream', (stream) => {
        streams += 1
        clearTimeout(idleTimer)
        stream.once('close', () => {
          streams -= 1
          if (streams === 0 && !session.closed && !session.destroyed) armIdle()
        })
      })
      session.once('close', () => {
        clearTimeout(idleTimer)
        sessions.delete(session)
      })
      // A drain under way: this connection gets no new streams. One upgraded from HTTP/1.1 had
      // its request accepted with the 101 (before the drain): stream 1 is answered first.
      if (draining && handingOverUpgraded) session.once('stream', () => session.close())
      else if (draining) session.close()
    })
  }

  // Admission, before the HTTP parser ever sees the connection: a refused one is answered and
  // closed, and not a byte of what its client sends is parsed or served.
  const listener = createNetServer({ noDelay: true }, (socket: Socket) => {
    // A client may reset its connection at any moment (before its first bytes, inside the
    // HTTP/2 preface, as it is refused): that ends its connection, never the router, which an
    // 'error' with no listener would. (Node's HTTP servers add listeners of their own once they
    // take the socket.)
    socket.on('error', () => socket.destroy())
    const client = clientKey(socket.remoteAddress)
    const mine = perClient.get(client) ?? 0
    if (options.maxConnectionsPerClient > 0 && mine >= options.maxConnectionsPerClient) {
      refuse(socket, rawError('429 Too Many Requests', 'MAITRE_TOO_MANY_CONNECTIONS', `Too many connections: this client has ${options.maxConnectionsPerClient} open, the most one client may`, { limit: 'connections-per-client', max: options.maxConnectionsPerClient }, { 'retry-after': '1' }))
      refusedAt('connections-per-client', options.maxConnectionsPerClient)
      return
    }
    if (options.maxConnections > 0 && connections >= options.maxConnections) {
      refuse(socket, rawError('503 Service Unavailable', 'MAITRE_TOO_MANY_CONNECTIONS', `Too many connections: the router has ${options.maxConnections} open, the most it takes`, { limit: 'connections', max: options.maxConnections }, { 'retry-after': '1' }))
      refusedAt('connections', options.maxConnections)
      return
    }
    connections += 1
    admitted.add(socket)
    perClient.set(client, mine + 1)
    socket.once('close', () => {
      admitted.delete(socket)
      connections -= 1
      const left = (perClient.get(client) ?? 1) - 1
      if (left === 0) perClient.delete(client)
      else perClient.set(client, left)
    })
    if (tlsServer === undefined) routeByPreface(socket)
    else tlsServer.emit('connection', socket)
  })

  /**
   * HTTP/1.1 or HTTP/2 is told by a connection's first bytes. A connection that sends nothing
   * within headersTimeoutMs is closed. (HTTP/1.1's parser reads the socket's handle directly,
   * so the bytes read here are handed to it as a data event; HTTP/2's session takes them back
   * from the stream.)
   */
  const routeByPreface = (socket: Socket): void => {
    let first: Buffer | undefined
    const silent = setTimeout(() => socket.destroy(), options.headersTimeoutMs)
    awaitingFirstBytes.add(socket)
    const onData = (chunk: Buffer): void => {
      first = first === undefined ? chunk : Buffer.concat([first, chunk])
      const n = Math.min(first.length, H2_PREFACE.length)
      const h2Preface = first.subarray(0, n).equals(H2_PREFACE.subarray(0, n))
      if (h2Preface && first.length < H2_PREFACE.length) return
      clearTimeout(silent)
      awaitingFirstBytes.delete(socket)
      socket.off('data', onData)
      if (h2Preface) {
        socket.pause()
        socket.unshift(first)
        h2.emit('connection', socket)
      } else {
        server.emit('connection', socket)
        socket.emit('data', first)
      }
    }
    socket.on('data', onData)
    socket.once('close', () => {
      clearTimeout(silent)
      awaitingFirstBytes.delete(socket)
    })
  }

  // A WebSocket upgrade: for a service only (Waiter's API has none), and not once a drain began.
  // An h2c upgrade: for anything, the API included.
  const onUpgrade = (req: IncomingMessage, socket: Duplex, head: Buffer): void => {
    // Node stops listening for the socket's errors once it hands it over: a client that resets
    // it now (waiting in the queue, before its preface, after a refusal) must not take the
    // router down with an unhandled error.
    socket.on('error', () => socket.destroy())
    // Pipelined behind requests still being answered: their answers go out whole first (Node
    // hands the socket over at once, and a 101 written now would come before them, the answers
    // then inside the new protocol's bytes). What the client sends meanwhile waits unread.
    afterEarlierAnswers(socket, () => upgrade(req, socket, head))
  }

  const upgrade = (req: IncomingMessage, socket: Duplex, head: Buffer): void => {
    if (socket.destroyed) return
    markHttps(req)
    const cid = cidOf(req)
    if ((socket as Counted)[REFUSED] === true) return void socket.destroy()
    // (A drain may have begun while the upgrade waited behind earlier answers: the new protocol's
    // connection would be closed as soon as it began.)
    if (draining) {
      return refuseUpgrade(req, socket, shuttingDownError(), { cid })
    }
    // (An h2c upgrade's request is judged as stream 1, by handleH2.)
    const hostError = isWebSocketUpgrade(req) ? badHost(req.headers.host, hasSeveralHosts(req.rawHeaders)) : undefined
    if (hostError !== undefined) return refuseUpgrade(req, socket, hostError, { cid })
    if (!isWebSocketUpgrade(req) && isH2cUpgrade(req)) {
      // The request is answered as stream 1 of the HTTP/2 connection the 101 starts.
      socket.write(SWITCHING_TO_H2C)
      spliceUpgradedRequest(socket as Socket, head, upgradedRequestFrames(req), options.headersTimeoutMs, (upgraded) => {
        // (The HTTP/2 server makes the session, and says so, within this call.)
        handingOverUpgraded = true
        try {
          h2.emit('connection', upgraded)
        } finally {
          handingOverUpgraded = false
        }
      })
      return
    }
    if (isApiRequest(pathOf(req.url), req.headers, options.routerHostnames) || options.websocket === undefined) {
      return refuseUpgrade(req, socket, new MaitreError('MAITRE_BAD_REQUEST', 'WebSocket upgrades are proxied to services only: name a token (x-waiter-token or the Host)', { details: { field: 'upgrade' } }), { cid })
    }
    proxied++
    options.websocket.handle(req, socket, head)
  }

  // CONNECT asks for a tunnel, which maitre does not open (Node would only drop the connection).
  // HTTP/1.1 hands over the socket; HTTP/2 (Node's compatibility layer, on the same event) a
  // request and its response: the stream is answered, the connection's others carry on.
  const onConnect = (req: IncomingMessage, socketOrResponse: Socket | ServerResponse): void => {
    if (req.httpVersionMajor === 2) {
      return sendError(req, socketOrResponse as ServerResponse, new MaitreError('MAITRE_BAD_REQUEST', CONNECT_REFUSED, { details: { method: 'CONNECT' } }), { cid: cidOf(req) })
    }
    refuse(socketOrResponse as Socket, rawError('400 Bad Request', 'MAITRE_BAD_REQUEST', CONNECT_REFUSED, { method: 'CONNECT' }))
  }

  const onClientError = (err: NodeJS.ErrnoException, socket: Socket): void => {
    const answer =
      err.code === HEADERS_TIMEOUT
        ? rawError('408 Request Timeout', 'MAITRE_CLIENT_TIMEOUT', `The request headers did not arrive within ${options.headersTimeoutMs} ms`, { limit: 'headers-timeout-ms', max: options.headersTimeoutMs })
        : err.code === 'HPE_HEADER_OVERFLOW'
          ? rawError('431 Request Header Fields Too Large', 'MAITRE_BAD_REQUEST', `The request headers exceed the limits: at most ${options.maxHeaders} headers and ${options.maxHeaderBytes} bytes`, { limit: 'headers', 'max-headers': options.maxHeaders, 'max-header-bytes': options.maxHeaderBytes })
          : rawError('400 Bad Request', 'MAITRE_BAD_REQUEST', `Malformed HTTP request (${err.code ?? 'parse error'})`, { 'parse-error': err.code ?? 'unknown' })
    if (!socket.writable) {
      socket.destroy()
      return
    }
    // Node reports every later chunk of a connection whose parsing failed: the one answer is
    // under way already (each report would add its wait to the answers still going out).
    if ((socket as Counted)[REFUSED] === true) return
    markRefused(socket)
    // The body of the request being answered went bad (a malformed chunk, a forbidden field in
    // its trailers): that request is over, as the client's fault. It is answered 400 at once (as
    // a body gone idle is answered 408), then whatever reads its body (the forward) learns it
    // will never end and lets go of its slot, and the connection goes. Left alone, it would wait
    // for body bytes that never come, holding its slot until the body-idle bound answered a false
    // "sent nothing" 408.
    // (The request whose body is being read is the newest on the connection: the one answered
    // now, or one pipelined behind it, whose answer Node holds until those before it are out.
    // Looked for only here, in a parse error's rare path, among the requests under way.)
    let current: IncomingMessage | undefined
    let answering: ServerResponse | undefined
    for (const entry of open.values()) {
      if (entry.req.socket === socket && !entry.req.complete) {
        current = entry.req
        answering = entry.res
      }
    }
    if (current !== undefined && answering !== undefined && !answering.writableFinished) {
      const bad = new MaitreError('MAITRE_BAD_REQUEST', `Malformed HTTP request body (${err.code ?? 'parse error'})`, { details: { 'parse-error': err.code ?? 'unknown' } })
      if (answering.headersSent) {
        // An answer under way (the instance answered early) cannot be made whole: cut.
        current.destroy(bad)
        socket.destroy()
        return
      }
      answering.shouldKeepAlive = false
      sendError(current, answering, bad, { cid: cidOf(current) })
      answering.once('finish', () => {
        current.destroy(bad)
        socket.destroy()
      })
      return
    }
    // Requests before the bad one may still be answering on this connection: their answers come
    // first and whole, then this one, then the connection goes. Never a second answer to one request.
    afterEarlierAnswers(socket, () => refuse(socket, answer))
  }
  // Expect: 100-continue is not answered at once (as Node would): the proxy answers it once it
  // admitted the request (continueRequest); an API call, which reads small bodies, goes on at once.
  const onCheckContinue = (req: IncomingMessage, res: ServerResponse): void => {
    if (isApiRequest(pathOf(req.url), req.headers, options.routerHostnames)) continueRequest(res)
    if (req.httpVersionMajor === 2) handleH2(req as unknown as Http2ServerRequest, res as unknown as Http2ServerResponse)
    else handle(req, res)
  }
  for (const any of [server, h2, tlsServer]) any?.on('checkContinue', onCheckContinue)
  h2.on('connect', onConnect)
  // The same answers on the cleartext HTTP/1.1 server and on TLS's HTTP/1.1 side.
  for (const http1 of [server, tlsServer]) {
    // Expect: 100-continue is not answered at once: the proxy answers it once it admitted the
    // request (an API call, which reads small bodies, is told to go on at once).
    http1?.on('upgrade', onUpgrade)
    http1?.on('connect', onConnect)
    http1?.on('clientError', onClientError)
  }

  // A body that stops moving, through no back-pressure of ours, is the client's idleness.
  const sweepEveryMs = Math.min(1000, Math.max(50, Math.floor(options.bodyIdleTimeoutMs / 4)))
  const sweep = setInterval(() => {
    const now = Date.now()
    for (const entry of open.values()) {
      // Already timed out (once), or an HTTP/2 stream (never swept).
      if (entry.movedAt === Number.POSITIVE_INFINITY) continue
      const { req, res } = entry
      const bytes = req.socket?.bytesRead ?? entry.bytesRead
      if (req.complete || req.isPaused() || req.readableLength > 0 || bytes !== entry.bytesRead || awaitingContinue(req, res)) {
        entry.bytesRead = bytes
        entry.movedAt = now
        continue
      }
      if (now - entry.movedAt < options.bodyIdleTimeoutMs) continue
      entry.movedAt = Number.POSITIVE_INFINITY // once
      bodyIdle(req, res, options.bodyIdleTimeoutMs)
    }
  }, sweepEveryMs)
  sweep.unref()

  let drained: Promise<void> | undefined
  return {
    server,
    async listen(port, host) {
      await new Promise<void>((resolveListen, reject) => {
        listener.once('error', reject)
        listener.listen(port, host, () => {
          listener.off('error', reject)
          // The HTTP server never listens itself (the listener above hands it the connections it
          // admits); its connection tracking, which enforces headersTimeout, starts on 'listening'.
          server.emit('listening')
          tlsServer?.emit('listening')
          resolveListen()
        })
      })
      return (listener.address() as AddressInfo).port
    },
    draining: () => draining,
    inFlight: () => open.size,
    proxiedRequests: () => proxied,
    connections: () => connections,
    drain(timeoutMs, before) {
      drained ??= (async () => {
        const deadline = Date.now() + timeoutMs
        draining = true
        for (const res of open.keys()) if (!res.headersSent) res.shouldKeepAlive = false
        await before?.catch(() => undefined)
        // Stop listening, but keep idle kept-alive connections open (http.Server#close would close
        // them at once): a request a client is sending on one right now is served, with
        // Connection: close, rather than lost in a reset.
        listener.close()
        // WebSockets have no end of their own: each is asked to close (1001, going away) now.
        options.websocket?.closeAll()
        // HTTP/2 connections are told GOAWAY: streams under way finish, no new ones start.
        for (const session of sessions) session.close()
        if (open.size > 0) {
          await new Promise<void>((done) => {
            const timer = setTimeout(done, timeoutMs)
            idle = () => {
              clearTimeout(timer)
              done()
            }
          })
        }
        // Idle connections go now; one still receiving a request's headers gets to finish it (and
        // is answered with Connection: close) or to run into its header deadline, within the drain's.
        const closeIdle = (): void => {
          for (const socket of awaitingFirstBytes) socket.destroy()
          server.closeIdleConnections()
          // (TLS's HTTP/1.1 side has it at run time; Node's types do not say so.)
          ;(tlsServer as { closeIdleConnections?: () => void } | undefined)?.closeIdleConnections?.()
        }
        closeIdle()
        while (connections > 0 && Date.now() < deadline) {
          // Not unref'd: the drain must finish (and the instances be stopped) before the process may end.
          await new Promise((r) => setTimeout(r, 50))
          closeIdle()
        }
        if (open.size > 0 || connections > 0) options.log.warn({ cut: open.size, connections, timeoutMs }, 'drain timed out; cutting the requests left')
        if (open.size > 0 && options.stopUnderWay !== undefined) {
          // Their last words first: each gRPC call still under way ends with UNAVAILABLE; only
          // then do the connections go.
          options.stopUnderWay(stoppedByShutdownError())
          await new Promise<void>((done) => {
            const timer = setTimeout(done, STOP_GRACE_MS)
            idle = () => {
              clearTimeout(timer)
              done()
            }
          })
        }
        clearInterval(sweep)
        // Refusals not yet told are told now, not lost with the process.
        if (trailingLog !== undefined) {
          clearTimeout(trailingLog)
          trailingLog = undefined
          logRefusals()
        }
        server.closeAllConnections()
        server.close()
        tlsServer?.close()
        for (const session of sessions) session.destroy()
        h2.close()
        // Whatever is still open (TLS, HTTP/2, upgraded connections) is cut now.
        for (const socket of admitted) socket.destroy()
      })()
      return drained
    },
  }
}

/** A Host the router will not route by (see isValidHost), or several that disagree: a 400 naming the rule. */
function badHost(host: string | undefined, several: boolean): MaitreError | undefined {
  if (several) return new MaitreError('MAITRE_BAD_REQUEST', 'A request must name one Host (HTTP/2: a host field that differs from :authority is another)', { details: { field: 'host', rule: 'exactly one' } })
  if (host === undefined || isValidHost(host)) return undefined
  return new MaitreError('MAITRE_BAD_REQUEST', 'The Host is not host[:port] (RFC 9112 §3.2)', { details: { field: 'host', rule: 'host[:port]', value: host.slice(0, 100) } })
}

/** A complete answer written straight to a socket that has no request object (yet): JSON, closing the connection. */
function rawError(status: string, code: string, message: string, details: Record<string, unknown>, headers: Record<string, string> = {}): string {
  const body = `${JSON.stringify({ 'waiter-error': { code, status: Number(status.slice(0, 3)), message, details } })}\n`
  const extra = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('')
  return `HTTP/1.1 ${status}\r\ncontent-type: application/json; charset=utf-8\r\n${extra}x-maitre-error: ${code}\r\nconnection: close\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`
}

/** 408 if nothing was answered yet, then the connection goes (the rest of its body never will). */
function bodyIdle(req: IncomingMessage, res: ServerResponse, timeoutMs: number): void {
  const socket = req.socket
  if (res.headersSent) {
    socket.destroy()
    return
  }
  res.shouldKeepAlive = false
  const err = new MaitreError('MAITRE_CLIENT_TIMEOUT', `The request body sent nothing for ${timeoutMs} ms`, { details: { limit: 'body-idle-ms', max: timeoutMs } })
  sendError(req, res, err, { cid: cidOf(req) })
  // Whatever reads the body (the forward to an instance) learns it will never end, and lets go.
  res.once('finish', () => {
    req.destroy(err)
    socket.destroy()
  })
}

/**
 * An HTTP/1.1 request whose answer went out in full before its body did (an instance's early
 * 413 or 401 to an upload it did not read): the rest of the body is read and dropped, as Node's
 * server does with a body nobody began to read, so that a client that sends its whole body
 * before it reads (Python's http.client and requests, Java's HttpURLConnection) finishes
 * sending and reads its answer, and the connection serves its next request. Left alone, the body
 * nobody reads any more stops the connection until the keep-alive timeout resets it, and such a
 * client never sees its answer. A body that then sends nothing for the body-idle bound, or is
 * still coming after DROP_BODY_MS, is cut.
 */
function dropRestOfBody(req: IncomingMessage, idleMs: number): void {
  const cut = (): void => void req.socket.destroy()
  const idle = setTimeout(cut, idleMs)
  // And at most DROP_BODY_MS in all (nginx's lingering_time): a client that trickles a byte a
  // while cannot keep the router reading for ever.
  const whole = setTimeout(cut, DROP_BODY_MS)
  for (const timer of [idle, whole]) timer.unref()
  req.on('data', () => idle.refresh())
  const done = (): void => {
    clearTimeout(idle)
    clearTimeout(whole)
  }
  req.once('end', done)
  req.once('close', done)
  req.resume()
}

/**
 * An HTTP/2 request whose answer went out in full before its body did (an instance's early 413,
 * a refusal of maitre's, a gRPC call ended by the server) must still end. Left alone it never
 * does: the body nobody reads any more shuts the stream's flow-control window, the client waits
 * on it for ever, and the stream counts as a request under way. (Node ends such a stream by
 * itself only when its body was never read.) So the rest of the body is read and dropped, as
 * Node's HTTP/1.1 server does, for at most STOP_BODY_GRACE_MS; a body still coming then is
 * stopped with RST_STREAM NO_ERROR, as RFC 9113 §8.1 lets a server that answered do. (Sent with
 * the answer's last frames, that reset makes some clients, curl 7.88 among them, drop an answer
 * they already have: hence the grace, which also covers the turn compat takes to send the
 * trailers it is asked for.) The answer is over when compat is asked for its trailers
 * ('wantTrailers': every answer with a body), or, for one that ended on its headers (a 204, a
 * 304), once its END_STREAM is out (localClose, a turn after 'finish').
 */
function stopBodyAfterAnswer(req: Http2ServerRequest, stream: ServerHttp2Stream): void {
  let stopping = false
  const stop = (): void => {
    if (stopping || req.complete || stream.closed || stream.destroyed) return
    stopping = true
    req.resume()
    const timer = setTimeout(() => {
      if (!req.complete && !stream.closed && !stream.destroyed) stream.close(h2constants.NGHTTP2_NO_ERROR)
    }, STOP_BODY_GRACE_MS)
    timer.unref()
    stream.once('close', () => clearTimeout(timer))
  }
  stream.on('wantTrailers', stop)
  stream.once('finish', () =>
    setImmediate(() => {
      if (!stream.destroyed && stream.state.localClose === 1) stop()
    }),
  )
}

/** The path of a request target, without its query. */
export function pathOf(url: string | undefined): string {
  if (url === undefined) return '/'
  const q = url.indexOf('?')
  return q === -1 ? url : url.slice(0, q)
}

/**
 * The PEM files of server.tls, read and tried at start: a missing file or a key that does not
 * match its certificate stops the router with a configuration error, not at the first client.
 */
export function readTlsFiles(paths: { readonly cert: string | null; readonly key: string | null }): { cert: Buffer; key: Buffer } | undefined {
  if (paths.cert === null || paths.key === null) return undefined
  const read = (field: 'cert' | 'key', path: string): Buffer => {
    try {
      return readFileSync(path)
    } catch (err) {
      throw new MaitreError('MAITRE_INVALID_CONFIG', `Cannot read server.tls.${field} ${path}: ${(err as Error).message}`, { details: { field: `server.tls.${field}` } })
    }
  }
  const files = { cert: read('cert', paths.cert), key: read('key', paths.key) }
  try {
    createSecureContext(files)
  } catch (err) {
    throw new MaitreError('MAITRE_INVALID_CONFIG', `server.tls.cert and server.tls.key are not a usable certificate and key: ${(err as Error).message}`, { details: { field: 'server.tls' } })
  }
  return files
}

/** A gRPC call's own quiet bound (set by grpcCallWaits and grpcCallAdmitted); 0: none. */
const QUIET_CALL_MS = Symbol('maitre.quietCallMs')
type QuietCallResponse = ServerResponse & { [QUIET_CALL_MS]?: number; stream?: ServerHttp2Stream }

/**
 * A client that sends nothing for a while is normal in a gRPC call (a bidirectional call waiting
 * on the server, a client-streaming one between messages), so once the router knows a request
 * for a gRPC call to a service, server.bodyIdleTimeoutMs no longer holds it. While it waits for
 * a slot (cold start, queue), its wait is bounded by the queue timeout (its deadline, when it
 * sent grpc-timeout) and by nothing else; grpcCallAdmitted says what bounds it after.
 */
export function grpcCallWaits(req: IncomingMessage, res: ServerResponse): void {
  setQuietBound(req, res, 0)
}

/**
 * The gRPC call holds a slot: from now on the streaming timeout applies between messages, as
 * Waiter's does. Until its answer begins, a call quiet both ways for that long is answered
 * DEADLINE_EXCEEDED (MAITRE_CLIENT_TIMEOUT); once it has begun, the listener never cuts it, and
 * the forwarder's streaming timeout ends one whose answer stops, with a gRPC status. A call that
 * keeps moving either way is never cut.
 */
export function grpcCallAdmitted(req: IncomingMessage, res: ServerResponse, streamingTimeoutMs: number): void {
  setQuietBound(req, res, streamingTimeoutMs)
}

function setQuietBound(req: IncomingMessage, res: ServerResponse, ms: number): void {
  const response = res as QuietCallResponse
  response[QUIET_CALL_MS] = ms
  // Only the period changes: the listener's callback stays (a setTimeout without one keeps it).
  if (response.stream !== undefined && !req.complete && !response.stream.destroyed) response.stream.setTimeout(ms)
}

function quietCallBound(res: ServerResponse): number | undefined {
  return (res as QuietCallResponse)[QUIET_CALL_MS]
}

/** Responses told 100 Continue (by continueRequest). */
const CONTINUED = Symbol('maitre.continued')

/** Answers Expect: 100-continue: the client may send its body now. */
export function continueRequest(res: ServerResponse): void {
  if ((res as ServerResponse & { [CONTINUED]?: boolean })[CONTINUED] === true || res.headersSent) return
  ;(res as ServerResponse & { [CONTINUED]?: boolean })[CONTINUED] = true
  res.writeContinue()
}

/**
 * Runs `then` once every answer to the requests that came before on this connection has gone
 * out whole (Node answers pipelined requests in turn, moving the next onto the socket as one
 * finishes); a connection that closes first is destroyed instead.
 */
function afterEarlierAnswers(socket: Duplex, then: () => void): void {
  const answering = (socket as Socket & { _httpMessage?: ServerResponse | null })._httpMessage
  if (answering === null || answering === undefined || answering.writableFinished) return then()
  answering.once('finish', () => setImmediate(() => afterEarlierAnswers(socket, then)))
  answering.once('close', () => {
    if (!answering.writableFinished) socket.destroy()
  })
}

/**
 * The client asks to be told before it sends its body. An HTTP/1.0 client cannot (RFC 9110
 * §10.1.1: the expectation is ignored, and no 1xx goes to it, which it would take for the answer).
 */
export function expectsContinue(req: IncomingMessage): boolean {
  return req.headers.expect?.toLowerCase() === '100-continue' && !(req.httpVersionMajor === 1 && req.httpVersionMinor === 0)
}

/** The client waits for our 100 Continue before it sends the body: its silence is not idleness. */
function awaitingContinue(req: IncomingMessage, res: ServerResponse): boolean {
  return expectsContinue(req) && (res as ServerResponse & { [CONTINUED]?: boolean })[CONTINUED] !== true
}
