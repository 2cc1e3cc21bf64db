/**
 * WebSockets through the router. An upgrade is admitted as any request is (authenticate →
 * resolve → start the version if nothing runs → take a slot or queue), then opened to the
 * instance, and only once the instance has accepted is the client's handshake completed, with
 * the subprotocol the instance chose and the request's x-cid. From then on messages are relayed
 * one by one, so the router can bound their size and the connection's idleness, relay close
 * codes as sent, and tell the client at once (1011) when the instance goes away. The connection
 * holds its slot for its whole life: it counts in flight for scaling, and an instance carrying it
 * is never picked for a scale-down kill.
 *
 * Why `ws` on both sides rather than forwarding the bytes (http-proxy-3's way): a byte tunnel
 * cannot bound a message, cannot tell an idle connection from one that streams, and turns an
 * instance's death into a bare TCP reset; a message relay does all three, for the cost of
 * parsing frames.
 */
import type { IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'
import { WebSocket, WebSocketServer, type RawData } from 'ws'
import { ANONYMOUS, type Principal } from '../auth/authenticator.ts'
import type { Lease, ReleaseOutcome } from '../backends/tracker.ts'
import { asMaitreError, MaitreError, ROUTER_RESOURCE_ERRORS } from '../errors.ts'
import { cidOf } from '../http/cid.ts'
import { isDebugRequested } from '../http/debug.ts'
import { queueRejectionOf, statusClass } from '../metrics.ts'
import type { Resolution, ResolvedRequest } from '../versions/resolve.ts'
import { assertHttpsOrRedirect } from '../http/https-redirect.ts'
import { assertBrowserReachesService } from '../http/browser-guard.ts'
import { activationOf, corsHeadersFor, fallBack, pickTimeout, resolveAnonymously, type ProxyDeps } from './handle.ts'
import { backendRequestHeaders, clientResponseHeaders } from './headers.ts'
import { answerOnSocket, refuseUpgrade, SHUTTING_DOWN, shuttingDownError } from './upgrade.ts'
import { authority } from '../http/authority.ts'

export interface WebSocketLimits {
  /** Largest message either side may send; a larger one closes the connection with 1009. */
  readonly maxMessageBytes: number
  /** A connection with no message either way for this long is closed (1001). */
  readonly idleTimeoutMs: number
}

export interface WebSocketProxy {
  /** Takes an upgrade the listener handed over; answers every failure itself, never throws. */
  handle(req: IncomingMessage, socket: Duplex, head: Buffer): void
  /** Closes every relayed connection with 1001 (the router is going away). */
  closeAll(): void
  /** Connections relayed right now. */
  open(): number
}

/** Sending side of a relay stops reading while the other side has this much unsent. */
const HIGH_WATER_BYTES = 1024 * 1024
/** Largest body of an instance's refusal of the upgrade that is passed on to the client. */
const MAX_REFUSAL_BODY_BYTES = 64 * 1024
/** A client handshake's key: 16 bytes in base64 (RFC 6455 §4.2.1). */
const KEY = /^[+/0-9A-Za-z]{22}==$/
/** The client's handshake headers: the router makes its own handshake with the instance. */
const HANDSHAKE_HEADERS = ['sec-websocket-key', 'sec-websocket-version', 'sec-websocket-extensions', 'sec-websocket-protocol']

/** Close codes a peer may send (RFC 6455 §7.4): not 1004-1006 or 1015, which only describe. */
function sendableCode(code: number): number | undefined {
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999) ? code : undefined
}

/** Read as the dial reads it (the target after an origin: `//x` is a path there, not a host). */
function relayableTarget(target: string): boolean {
  if (target.includes('#')) return false
  try {
    const url = new URL(`ws://instance${target}`)
    return url.pathname + url.search === target
  } catch {
    return false
  }
}

function checkHandshake(req: IncomingMessage): void {
  if (req.method !== 'GET') throw new MaitreError('MAITRE_BAD_REQUEST', 'A WebSocket upgrade must be a GET', { details: { method: (req.method ?? '').slice(0, 20) } })
  if (req.url === undefined || !req.url.startsWith('/')) {
    throw new MaitreError('MAITRE_BAD_REQUEST', 'The request target must be a path starting with /', { details: { target: (req.url ?? '').slice(0, 200) } })
  }
  // The instance is dialled through a URL, which would drop a fragment, resolve dot segments,
  // turn "\" into "/" and escape what it does not take raw: such a target is refused rather than
  // sent on changed (the HTTP path passes it as it came).
  if (!relayableTarget(req.url)) {
    throw new MaitreError('MAITRE_BAD_REQUEST', 'The request target of a WebSocket upgrade must read the same as a URL path: no fragment (#), dot segments, backslashes or characters a URL escapes', { details: { target: req.url.slice(0, 200) } })
  }
  const key = req.headers['sec-websocket-key']
  if (typeof key !== 'string' || !KEY.test(key.trim())) throw new MaitreError('MAITRE_BAD_REQUEST', 'A WebSocket upgrade needs a Sec-WebSocket-Key of 16 bytes in base64', { details: { field: 'sec-websocket-key' } })
  const version = req.headers['sec-websocket-version']
  if (version !== '13' && version !== '8') {
    throw new MaitreError('MAITRE_BAD_REQUEST', 'Sec-WebSocket-Version must be 13 (or 8)', { details: { field: 'sec-websocket-version' }, headers: { 'sec-websocket-version': '13, 8' } })
  }
  const offered = checkSubprotocols(req.headers['sec-websocket-protocol'])
  // HTTP's list syntax allows empty elements ("chat.v2,", RFC 9110 §5.6.1), which the WebSocket
  // library would refuse with a bare 400 after a slot was taken: the offer goes on as the list it means.
  if (offered.length === 0) delete req.headers['sec-websocket-protocol']
  else req.headers['sec-websocket-protocol'] = offered.join(', ')
}

/** A subprotocol name is an HTTP token (RFC 6455 §4.1, RFC 9110 §5.6.2). */
const TOKEN = /^[!#$%&'*+\-.0-9A-Z^_`|a-z~]+$/

function subprotocols(header: string | undefined): string[] {
  if (header === undefined) return []
  return header.split(',').map((p) => p.trim()).filter((p) => p !== '')
}

/** The offered subprotocols must be distinct tokens: refused before a slot is taken, as the instance's client would refuse them. */
function checkSubprotocols(header: string | string[] | undefined): string[] {
  const offered = subprotocols(Array.isArray(header) ? header.join(',') : header)
  const bad = offered.find((p) => !TOKEN.test(p))
  if (bad !== undefined) throw new MaitreError('MAITRE_BAD_REQUEST', 'Sec-WebSocket-Protocol must list subprotocol names (HTTP tokens)', { details: { field: 'sec-websocket-protocol', rule: 'token', value: bad.slice(0, 100) } })
  if (new Set(offered).size !== offered.length) throw new MaitreError('MAITRE_BAD_REQUEST', 'Sec-WebSocket-Protocol must not name a subprotocol twice', { details: { field: 'sec-websocket-protocol', rule: 'distinct' } })
  return offered
}

export function createWebSocketProxy(deps: ProxyDeps, limits: WebSocketLimits): WebSocketProxy {
  // The instance's choice of subprotocol and the headers added to the 101, per upgrade request.
  const chosen = new WeakMap<IncomingMessage, string | undefined>()
  const added = new WeakMap<IncomingMessage, readonly string[]>()
  const server = new WebSocketServer({
    noServer: true,
    clientTracking: false,
    perMessageDeflate: false,
    maxPayload: limits.maxMessageBytes,
    // Pings are the two ends' business (relay() passes them on): answered here, they would
    // tell an instance's heartbeat that a hung client is alive.
    autoPong: false,
    handleProtocols: (_offered, req) => chosen.get(req) ?? false,
  })
  server.on('headers', (headers, req) => {
    for (const line of added.get(req) ?? []) headers.push(line)
  })
  /** Each relayed connection, by its way of closing both sides. */
  const closers = new Map<object, (code: number, reason: string) => void>()
  /** closeAll() was called (the router drains): an upgrade admitted from now on is not opened. */
  let shuttingDown = false

  /**
   * `noted` learns the version as soon as it is resolved, and of a cold start as soon as one is
   * waited for: an upgrade refused after that (queue full or timed out, a deployment error, the
   * client gone) is counted and logged against its version.
   */
  async function admit(req: IncomingMessage, socket: Duplex, cid: string, signal: AbortSignal, noted: { resolved(resolution: Resolution, token: string | undefined): void; coldStart(): void }): Promise<{ who: Principal; resolution: Resolution; lease: Lease; socketTimeoutMs: number }> {
    checkHandshake(req)
    if (deps.routerHostnames !== undefined) assertBrowserReachesService(req.headers, deps.routerHostnames, deps.auth.trustsByAddress)
    let who: Principal
    let resolved: ResolvedRequest | undefined
    try {
      who = await deps.auth.authenticate(req)
    } catch (err) {
      resolved = await resolveAnonymously(req, deps, err)
      who = ANONYMOUS
    }
    resolved ??= await deps.resolver.resolve(req.headers, who)
    const perRequest = resolved.headers.perRequest
    assertHttpsOrRedirect(req, resolved.resolution.tokenMetadata)
    corsHeadersFor(req, resolved.resolution)
    const resolution = fallBack(resolved.resolution, who, deps, perRequest['fallback-period-secs'])
    const serviceId = resolution.serviceId
    noted.resolved(resolution, resolved.resolution.source?.token)
    // The relay opens an HTTP/1.1 WebSocket to the instance, which one that speaks only HTTP/2
    // cannot take (WebSockets over HTTP/2, RFC 8441, are not carried). Refused before a slot is
    // taken or anything dialled: the failed handshake would otherwise count against the
    // instance and take it out of rotation, at the call of anyone allowed to call the service.
    const backendProto = deps.launchSpecOf(resolution).backendProto
    if (backendProto === 'h2c' || backendProto === 'h2') {
      throw new MaitreError('MAITRE_BAD_REQUEST', `WebSockets are not carried to a service whose backend-proto is ${backendProto}: its instances speak only HTTP/2, and the router opens WebSockets to an instance over HTTP/1.1`, {
        details: { rule: 'websocket-backend-proto', 'backend-proto': backendProto, 'service-id': serviceId },
      })
    }
    if (deps.isSuspended(serviceId)) throw new MaitreError('MAITRE_SUSPENDED', 'Service has been suspended', { details: { 'service-id': serviceId } })
    deps.tracker.noteRequest(serviceId)
    const meta = resolution.tokenMetadata
    const queueTimeoutMs = pickTimeout(perRequest['queue-timeout'], meta['queue-timeout-ms'], deps.timeouts.queueTimeoutMs)
    const socketTimeoutMs = pickTimeout(perRequest['timeout'], meta['socket-timeout-ms'], deps.timeouts.socketTimeoutMs)
    const deadline = deps.clock.now() + queueTimeoutMs
    const activation = activationOf(resolution, deps)
    // A WebSocket is a call like any other for the keep-alive policy (its arrival, a pre-warm's hit).
    const asked = resolved.resolution
    deps.keepAlive?.arrived(asked, deps.parametersOf(asked), asked === resolution ? activation : activationOf(asked, deps))
    let coldStart = false
    let starting = deps.activator.ensure(activation)
    if (starting !== undefined) {
      // Waiting for a start counts against the version's queue bound, as for any request.
      const giveBack = deps.tracker.awaitStart(serviceId)
      try {
        while (starting !== undefined) {
          if (!coldStart) noted.coldStart()
          coldStart = true
          await deps.activator.bounded(serviceId, starting, { deadline, queueTimeoutMs, signal })
          starting = deps.activator.ensure(activation)
        }
      } finally {
        giveBack()
      }
    }
    const lease = deps.tracker.tryAcquire(serviceId) ?? await deps.tracker.acquire(serviceId, {
      timeoutMs: Math.max(1, deadline - deps.clock.now()),
      queueTimeoutMs,
      signal,
      onQueued: () => deps.onQueued(serviceId),
    })
    if (!socket.writable) {
      lease.release('client-error')
      throw new MaitreError('MAITRE_CLIENT_CLOSED', 'The client went away', {})
    }
    return { who, resolution, lease, socketTimeoutMs }
  }

  function handle(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const started = deps.clock.now()
    const cid = cidOf(req)
    socket.on('error', () => undefined)
    const aborter = new AbortController()
    let relaying = false
    let onClientGone: (() => void) | undefined
    socket.once('close', () => {
      aborter.abort()
      if (!relaying) onClientGone?.()
    })
    let resolution: Resolution | undefined
    let token: string | undefined
    let principal: string | undefined
    let status: number | undefined
    let failure: MaitreError | undefined
    let instanceId: string | undefined
    let coldStart = false
    let finished = false
    const finish = (): void => {
      if (finished) return
      finished = true
      const finalStatus = status ?? 499
      if (failure !== undefined && finalStatus >= 500) {
        deps.log[failure.code === 'MAITRE_INTERNAL' ? 'error' : 'warn']({ cid, code: failure.code, status: finalStatus, reason: failure.message, service: resolution?.serviceId, instance: instanceId, websocket: true }, 'request failed')
      }
      if (resolution !== undefined) {
        deps.metrics.requests.inc({ service: resolution.serviceId, code: statusClass(finalStatus) })
        deps.metrics.requestDuration.observe({ service: resolution.serviceId }, (deps.clock.now() - started) / 1000)
        if (coldStart) deps.metrics.coldStarts.inc({ service: resolution.serviceId })
        const rejection = queueRejectionOf(failure?.code)
        if (rejection !== undefined) deps.metrics.queueRejections.inc({ service: resolution.serviceId, reason: rejection })
      }
      if (deps.accessLog) {
        deps.log.info({ cid, method: req.method, path: req.url, token, service: resolution?.serviceId, status: finalStatus, instance: instanceId, totalMs: deps.clock.now() - started, coldStart, websocket: true }, 'request completed')
      }
    }
    const refuse = (err: unknown): void => {
      failure = asMaitreError(err)
      status = socket.writable ? failure.status : 499
      refuseUpgrade(req, socket, failure, { cid, principal, serviceId: resolution?.serviceId, token })
      finish()
    }

    const noted = {
      resolved(r: Resolution, t: string | undefined): void {
        resolution = r
        token = t
      },
      coldStart(): void {
        coldStart = true
      },
    }
    admit(req, socket, cid, aborter.signal, noted).then((admitted) => {
      if (shuttingDown) {
        // Admitted (it waited for a start or a slot) while the router began to drain: a
        // connection opened now would be cut within the drain. A 503 lets the client reconnect
        // through another router at once.
        admitted.lease.release('generic-error')
        refuse(shuttingDownError())
        return
      }
      try {
        connect(admitted)
      } catch (err) {
        // Whatever throws before the instance is dialled (an address the URL cannot hold, say)
        // is the router's failure, not the instance's: the slot comes back, the client is told.
        admitted.lease.release('generic-error')
        onClientGone = undefined
        refuse(err)
      }
    }, refuse)

    function connect(admitted: Awaited<ReturnType<typeof admit>>): void {
      if (admitted.who.anonymous !== true) principal = admitted.who.user
      const { lease } = admitted
      const instance = lease.instance
      instanceId = instance.id
      const current = admitted.resolution
      const headers = backendRequestHeaders(req.headers, {
        cid,
        clientAddress: req.socket.remoteAddress ?? '',
        proto: 'http',
        authorization: deps.launchSpecOf(current).authorization,
        principal: admitted.who.anonymous === true || current.authenticationDisabled ? undefined : admitted.who.user,
      })
      for (const name of HANDSHAKE_HEADERS) delete headers[name]
      const scheme = instance.proto === 'https' ? 'wss' : 'ws'
      const backend = new WebSocket(`${scheme}://${authority(instance.host, instance.port)}${req.url ?? '/'}`, subprotocols(req.headers['sec-websocket-protocol'] as string | undefined), {
        headers: headers as Record<string, string>,
        perMessageDeflate: false,
        maxPayload: limits.maxMessageBytes,
        autoPong: false,
        handshakeTimeout: Math.min(admitted.socketTimeoutMs, 2 ** 31 - 1),
        followRedirects: false,
        rejectUnauthorized: false,
      })
      let released = false
      const release = (outcome: ReleaseOutcome): void => {
        if (released) return
        released = true
        lease.release(outcome)
      }
      onClientGone = () => {
        backend.terminate()
        release('client-error')
        status = 499
        finish()
      }
      /** The error the connection to the instance failed with, if any (the router's own resources running out is no fault of the instance's). */
      let backendError: string | undefined
      backend.on('error', (err: Error & { code?: string }) => void (backendError ??= err.code))
      // The instance said 101 without choosing one of the subprotocols offered (RFC 6455 lets
      // it; a browser then fails the connection, and so does the router's client): no reason
      // to take it out of rotation, since anyone may offer a subprotocol it does not speak.
      // (A handshake that fails on anything else, a wrong accept key say, is the instance's.)
      let unmatchedSubprotocol = false
      backend.once('upgrade', (response) => {
        const offered = subprotocols(req.headers['sec-websocket-protocol'] as string | undefined)
        const chose = response.headers['sec-websocket-protocol']
        unmatchedSubprotocol = chose === undefined ? offered.length > 0 : !offered.includes(String(chose))
      })
      backend.once('unexpected-response', (_request, response) => {
        // The instance answered the upgrade with a plain response: the client gets it as it came.
        relaying = true
        const chunks: Buffer[] = []
        let size = 0
        response.on('data', (chunk: Buffer) => {
          if (size < MAX_REFUSAL_BODY_BYTES) chunks.push(chunk.subarray(0, MAX_REFUSAL_BODY_BYTES - size))
          size += chunk.length
        })
        response.once('error', () => undefined)
        // A refusal whose body stalls (no byte for the streaming timeout) or breaks off is the
        // instance's failure: the client gets a 502, and the slot comes back either way.
        response.setTimeout(deps.timeouts.streamingTimeoutMs, () => response.destroy())
        let ended = false
        response.once('end', () => {
          ended = true
          const code = response.statusCode ?? 502
          release(code >= 500 ? 'instance-error' : 'success')
          status = code
          const passed = clientResponseHeaders(response.headers, cid)
          delete passed['content-length']
          const body = Buffer.concat(chunks)
          answerOnSocket(req, socket, (res) => {
            res.writeHead(code, { ...passed, 'content-length': body.length })
            res.end(body)
          })
          backend.terminate()
          finish()
        })
        response.once('close', () => {
          if (ended) return
          release('instance-error')
          backend.terminate()
          refuse(new MaitreError('MAITRE_UPSTREAM', 'The instance refused the WebSocket upgrade and its answer broke off', { details: { 'service-id': current.serviceId, 'instance-id': instance.id } }))
        })
      })
      backend.once('close', () => {
        if (relaying || finished) return
        relaying = true
        if (unmatchedSubprotocol) {
          release('client-error')
          refuse(new MaitreError('MAITRE_UPSTREAM', 'The instance accepted the WebSocket upgrade, but not on the terms offered: it chose none of the offered subprotocols (or one not offered)', {
            details: { 'service-id': current.serviceId, 'instance-id': instance.id, 'offered-subprotocols': subprotocols(req.headers['sec-websocket-protocol'] as string | undefined).slice(0, 10) },
          }))
          return
        }
        // The connection to the instance failed before any answer: the instance's failure, unless
        // the router itself was out of file descriptors or memory (as for HTTP: a 503 to retry).
        if (backendError !== undefined && ROUTER_RESOURCE_ERRORS.has(backendError)) {
          release('generic-error')
          refuse(new MaitreError('MAITRE_ROUTER_OVERLOADED', 'The router is out of resources to reach the instance; try again', { headers: { 'retry-after': '1' }, details: { 'service-id': current.serviceId } }))
          return
        }
        release('instance-error')
        refuse(new MaitreError('MAITRE_UPSTREAM', 'The WebSocket connection to the instance failed', { details: { 'service-id': current.serviceId, 'instance-id': instance.id } }))
      })
      backend.once('open', () => {
        if (!socket.writable) {
          backend.terminate()
          release('client-error')
          status = 499
          return finish()
        }
        chosen.set(req, backend.protocol === '' ? undefined : backend.protocol)
        const extra = [`x-cid: ${cid}`]
        if (isDebugRequested(req.headers)) extra.push(`x-waiter-service-id: ${current.serviceId}`, `x-waiter-backend-id: ${instance.id}`, `x-waiter-router-id: ${deps.routerId}`)
        added.set(req, extra)
        // Completed at once; if the client's socket is gone by now, ws drops it without calling
        // back, and the socket's close (relaying still false) lets the instance and slot go.
        server.handleUpgrade(req, socket, head, (client) => {
          relaying = true
          status = 101
          relay(client, backend, (outcome) => {
            release(outcome)
            finish()
          })
        })
      })
    }
  }

  /** Messages both ways until either side closes; `done` once both have. */
  function relay(client: WebSocket, backend: WebSocket, done: (outcome: ReleaseOutcome) => void): void {
    const pair = { client, backend }
    let idleTimer: NodeJS.Timeout | undefined
    const touch = (): void => {
      idleTimer?.refresh()
    }
    // Both sides closed: the timer is gone and a late event must not re-arm it.
    idleTimer = setTimeout(() => closeBoth(1001, 'Idle timeout'), limits.idleTimeoutMs)
    idleTimer.unref()
    // Set once the router has begun closing the instance's side (the client closed, a message
    // broke the bound, idleness, shutdown): a connection that then ends without a close frame
    // is not the instance failing. ws stops reading a side whose message broke the bound, so
    // the instance's close reply is never read there and its end always looks like 1006.
    let closingBackend = false
    const closeBoth = (code: number, reason: string): void => {
      closingBackend = true
      for (const side of [client, backend]) {
        side.resume()
        side.close(code, reason)
      }
    }
    closers.set(pair, closeBoth)
    // Dialled before the drain began, answered after it asked every relay to close: this one too.
    if (shuttingDown) closeBoth(1001, SHUTTING_DOWN)
    let outcome: ReleaseOutcome = 'success'
    let closed = 0
    const closedOne = (): void => {
      closed += 1
      if (closed < 2) return
      clearTimeout(idleTimer)
      idleTimer = undefined
      closers.delete(pair)
      done(outcome)
    }
    const pipe = (from: WebSocket, to: WebSocket): void => {
      let paused = false
      from.on('message', (data: RawData, isBinary: boolean) => {
        touch()
        if (to.readyState !== WebSocket.OPEN) return
        to.send(data, { binary: isBinary }, () => {
          if (paused && to.bufferedAmount <= HIGH_WATER_BYTES / 2) {
            paused = false
            from.resume()
          }
        })
        if (!paused && to.bufferedAmount > HIGH_WATER_BYTES) {
          paused = true
          from.pause()
        }
      })
      // Pings and pongs go end to end, so each end's heartbeat learns whether the other is alive.
      // Under back-pressure they are dropped (a flood of them must not pile up here): a ping
      // that goes unanswered then says what is true, that the other end does not keep up.
      from.on('ping', (data: Buffer) => {
        touch()
        if (to.readyState === WebSocket.OPEN && to.bufferedAmount <= HIGH_WATER_BYTES) to.ping(data)
      })
      from.on('pong', (data: Buffer) => {
        touch()
        if (to.readyState === WebSocket.OPEN && to.bufferedAmount <= HIGH_WATER_BYTES) to.pong(data)
      })
    }
    pipe(client, backend)
    pipe(backend, client)
    const tooBig = (err: Error & { code?: string }): boolean => err.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH'
    client.on('error', (err: Error & { code?: string }) => {
      if (!tooBig(err)) return
      closingBackend = true
      backend.close(1009, 'Message too big')
    })
    backend.on('error', (err: Error & { code?: string }) => {
      if (!tooBig(err)) return
      // ws has closed the instance's side with 1009 itself: the router's bound, not a failure.
      closingBackend = true
      client.close(1009, 'Message too big')
    })
    client.once('close', (code: number, reason: Buffer) => {
      closingBackend = true
      // A side paused for back-pressure must read again, or it never sees the close reply.
      backend.resume()
      const sendable = sendableCode(code)
      if (backend.readyState === WebSocket.OPEN) backend.close(sendable, sendable === undefined ? undefined : reason)
      else if (backend.readyState === WebSocket.CONNECTING) backend.terminate()
      closedOne()
    })
    backend.once('close', (code: number, reason: Buffer) => {
      client.resume()
      // 1006: the instance's connection ended with no close frame (it died, or was killed),
      // unless the router was closing it, in which case the instance is not to blame (and not
      // to be ejected: one oversized message would otherwise take it out of rotation).
      if (code === 1006 && !closingBackend) outcome = 'instance-error'
      const sendable = code === 1006 ? 1011 : sendableCode(code)
      const why = code === 1006 ? 'The instance closed the connection' : sendable === undefined ? undefined : reason
      if (client.readyState === WebSocket.OPEN) client.close(sendable, why)
      closedOne()
    })
  }

  return {
    handle,
    closeAll() {
      shuttingDown = true
      for (const close of closers.values()) close(1001, SHUTTING_DOWN)
    },
    open: () => closers.size,
  }
}
