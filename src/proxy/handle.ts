/**
 * The life of one proxied request: authenticate → resolve the version → start it if nothing
 * runs → take a slot (or queue) → forward → release the slot, whatever happened. Every failure
 * becomes a Waiter error response; a response already under way is cut instead.
 */
import type { KeepAliveRunner } from '../scaler/keep-alive-runner.ts'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { ANONYMOUS, type Principal } from '../auth/authenticator.ts'
import type { AuthGate } from '../auth/gate.ts'
import type { InstanceTracker, Lease } from '../backends/tracker.ts'
import type { Clock } from '../clock.ts'
import type { Logger } from '../log.ts'
import type { ActivationRequest, Activator } from '../scaler/activator.ts'
import type { Resolution, ResolvedRequest, Resolver } from '../versions/resolve.ts'
import { hostWithoutPort } from '../http/host.ts'
import { fallbackTarget } from '../versions/fallback.ts'
import type { LaunchSpec } from '../launch-spec.ts'
import { queueRejectionOf, statusClass, type Metrics } from '../metrics.ts'
import { cidOf } from '../http/cid.ts'
import { sendError, SERVER_HEADER } from '../http/error-response.ts'
import { allowedRequestHeaders, isPreflight, isSameOrigin, matchingRule, preflightHeaders, requestProto } from '../http/cors.ts'
import { asMaitreError, MaitreError } from '../errors.ts'
import { assertHttpsOrRedirect } from '../http/https-redirect.ts'
import { assertBrowserReachesService } from '../http/browser-guard.ts'
import { MAX_TIMEOUT_MS } from '../limits.ts'
import type { Forwarder, Forwarding } from './forward.ts'
import { backendRequestHeaders, COLD_START_HEADER } from './headers.ts'
import { continueRequest, expectsContinue, grpcCallAdmitted, grpcCallWaits, pathOf } from './server.ts'
import { isDebugRequested } from '../http/debug.ts'
import { grpcTimeoutMs, isGrpcCall } from '../http/grpc.ts'

export interface ProxyTimeouts {
  readonly queueTimeoutMs: number
  readonly socketTimeoutMs: number
  readonly streamingTimeoutMs: number
  /** A client that reads nothing of its answer for this long is cut (at least the streaming timeout). */
  readonly clientStallTimeoutMs?: number
}

export interface ProxyDeps {
  readonly auth: AuthGate
  readonly resolver: Resolver
  readonly activator: Activator
  readonly tracker: InstanceTracker
  readonly forwarder: Forwarder
  readonly launchSpecOf: (resolution: Resolution) => LaunchSpec
  /** The parameters a version runs with (its description, defaults and overrides). */
  readonly parametersOf: (resolution: Resolution) => Readonly<Record<string, unknown>>
  /** Suspended versions answer 503 until resumed. */
  readonly isSuspended: (serviceId: string) => boolean
  /** A request had to queue: decide about this version now rather than at the next tick. */
  readonly onQueued: (serviceId: string) => void
  /** Told of each request's version, for an adaptive keep-alive's history (absent: none kept). */
  readonly keepAlive?: Pick<KeepAliveRunner, 'arrived'>
  readonly timeouts: ProxyTimeouts
  readonly routerId: string
  readonly metrics: Metrics
  readonly clock: Clock
  readonly log: Logger
  /** Writes the per-request `request completed` line. */
  readonly accessLog: boolean
  /** The router's own host names (for the DNS-rebinding guard; absent: no guard, as in unit harnesses). */
  readonly routerHostnames?: ReadonlySet<string>
}


/** Header (ms) over token setting over config; non-positive or unparsable values fall through. */
export function pickTimeout(header: string | undefined, token: unknown, fallback: number): number {
  const fromHeader = header === undefined ? NaN : Number.parseInt(header, 10)
  if (fromHeader > 0) return Math.min(fromHeader, MAX_TIMEOUT_MS)
  if (typeof token === 'number' && token > 0) return Math.min(token, MAX_TIMEOUT_MS)
  return fallback
}

/** Whether the request set this timeout itself (a value pickTimeout takes). */
function chosenByClient(header: string | undefined): boolean {
  return header !== undefined && Number.parseInt(header, 10) > 0
}

/**
 * Waiter's fallback: within fallback-period-secs of a token edit, while the new version has no
 * healthy instance, a request goes to the newest previous version that has one — and the new
 * version is started meanwhile, so an update under load fails no request and waits for nothing.
 */
export function fallBack(resolution: Resolution, who: Principal, deps: ProxyDeps, periodHeader: string | undefined): Resolution {
  const target = fallbackTarget(resolution, deps.clock.now(), periodHeader, (id) => deps.tracker.load(id).healthy)
  if (target === undefined) return resolution
  const latest = resolution
  // A suspended new version stays down (as /waiter-ping and the keep-alive leave it): the
  // previous one serves meanwhile. Started, it would end the fallback with its healthy
  // instance, and every request would then be answered "suspended".
  if (!deps.isSuspended(latest.serviceId)) {
    const starting = deps.activator.ensure(activationOf(latest, deps))
    starting?.catch((err: unknown) => deps.log.warn({ err, service: latest.serviceId }, 'starting the new version failed'))
  }
  let previous: Resolution
  try {
    // The previous version is judged on its own: a caller it does not admit is not served by it.
    previous = deps.resolver.byServiceId(target, who, true)
  } catch (err) {
    if (err instanceof MaitreError && err.status < 500) return resolution
    throw err
  }
  // The previous version as it is, addressed by id (no token reference: its record must not
  // learn the edited token's new version, which would make it look current to the GC), under the
  // token's operational settings.
  return { ...previous, tokenMetadata: latest.tokenMetadata }
}

/** What the activator needs to start (and record) the version a request resolved to. */
export function activationOf(resolution: Resolution, deps: Pick<ProxyDeps, 'parametersOf' | 'launchSpecOf' | 'resolver'>): ActivationRequest {
  return {
    serviceId: resolution.serviceId,
    effective: () => deps.parametersOf(resolution),
    launchSpec: () => deps.launchSpecOf(resolution),
    remember: () => deps.resolver.remember(resolution),
  }
}

/**
 * A caller that could not be authenticated (refused, or the keys to check it are away) may still call a token whose owner turned
 * authentication off (one token, `authentication: disabled`, permitted-user `*`, its own
 * run-as-user: the resolver decides, before it records anything), and gets a token's
 * maintenance answer or https redirect; for anything else the authentication failure stands,
 * and says nothing about what the request named.
 */
export async function resolveAnonymously(req: IncomingMessage, deps: ProxyDeps, authFailure: unknown): Promise<ResolvedRequest> {
  // Keys that cannot be fetched leave the caller unknown, as missing credentials do: a token that
  // needs no credentials serves it all the same.
  if (!(authFailure instanceof MaitreError) || (authFailure.code !== 'MAITRE_UNAUTHORIZED' && authFailure.code !== 'MAITRE_AUTH_UNAVAILABLE')) throw authFailure
  assertHttpsOrRedirect(req, deps.resolver.tokenMetadataOf(req.headers))
  try {
    const resolving = deps.resolver.resolve(req.headers, ANONYMOUS)
    return resolving instanceof Promise ? await resolving : resolving
  } catch (err) {
    if (err instanceof MaitreError && err.code === 'MAITRE_MAINTENANCE') throw err
    throw authFailure
  }
}


/**
 * A CORS preflight, answered before authentication (browsers send it without credentials):
 * allowed when the page is of the request's own origin or a rule of the token allows it.
 */
function answerPreflight(req: IncomingMessage, res: ServerResponse, cid: string, deps: ProxyDeps): void {
  const origin = req.headers.origin as string
  const method = req.headers['access-control-request-method'] as string
  const path = pathOf(req.url)
  const rule = isSameOrigin(origin, req.headers.host, requestProto(req.headers)) ? undefined : matchingRule(deps.resolver.tokenMetadataOf(req.headers)['cors-rules'], origin, path, method)
  if (rule === undefined && !isSameOrigin(origin, req.headers.host, requestProto(req.headers))) {
    throw new MaitreError('MAITRE_CORS_PREFLIGHT_FORBIDDEN', 'Cross-origin request not allowed', { details: { origin: origin.slice(0, 200), method: method.slice(0, 20) } })
  }
  const headers = preflightHeaders(origin, rule, req.headers['access-control-request-headers'])
  res.writeHead(200, { ...headers, 'content-length': 0, 'x-cid': cid, server: SERVER_HEADER })
  res.end()
}

/** A cross-origin request (it carries an Origin not its own) passes only by a rule of its token; the answer then says so to the browser. */
export function corsHeadersFor(req: IncomingMessage, resolution: Resolution): Record<string, string> | undefined {
  const origin = req.headers.origin
  if (origin === undefined || isSameOrigin(origin, req.headers.host, requestProto(req.headers))) return undefined
  if (matchingRule(resolution.tokenMetadata['cors-rules'], origin, pathOf(req.url), req.method ?? 'GET') === undefined) {
    throw new MaitreError('MAITRE_CORS_REQUEST_FORBIDDEN', 'Cross-origin request not allowed', { details: { origin: origin.slice(0, 200) } })
  }
  return allowedRequestHeaders(origin, false)
}

/** Attempts at one request when instances refuse the connection (each refusal ejects the instance). */
const MAX_ATTEMPTS = 3

export interface ProxyHandler {
  (req: IncomingMessage, res: ServerResponse): Promise<void>
  /**
   * Ends every gRPC call still under way with `err` (the router's drain ran out of time): its
   * client gets a status it may retry elsewhere, where a cut connection would read INTERNAL or
   * UNAVAILABLE by chance. (Other requests are cut, as their clients would see anyway.)
   */
  stopUnderWay(err: MaitreError): void
}

export function createProxyHandler(deps: ProxyDeps): ProxyHandler {
  /** gRPC calls under way with an instance (for the drain's end). */
  const underWay = new Set<Forwarding>()
  const handler = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const started = deps.clock.now()
    const debug = isDebugRequested(req.headers)
    // Waiter's *-ns debug headers, measured in nanoseconds on the monotonic clock (only when asked).
    const startedNs = debug ? process.hrtime.bigint() : 0n
    let gotInstanceNs = 0n
    const cid = cidOf(req)
    let clientGone = false
    // Created only when the request has to wait (cold start or queue): most requests never do.
    let waitAborter: AbortController | undefined
    let forwarding: Forwarding | undefined
    // The one place that notices a client leaving; whatever the request is waiting on is told.
    res.once('close', () => {
      // Ended by us, the answer given (writableFinished would not do: over HTTP/2 it reads true
      // when the client reset the stream). An exchange with an instance still under way then
      // has nowhere left to answer (the listener answered for it: a body gone idle, say): it
      // ends too, and its slot comes back, as does a wait in the queue. (A relayed answer has
      // settled its exchange, and any wait, by now.)
      if (!res.writableEnded) clientGone = true
      waitAborter?.abort()
      forwarding?.clientGone()
    })
    const waitSignal = (): AbortSignal => {
      waitAborter ??= new AbortController()
      if (clientGone) waitAborter.abort()
      return waitAborter.signal
    }
    let principal: string | undefined
    let resolution: Resolution | undefined
    /** The client chose its queue timeout (x-waiter-queue-timeout, a gRPC deadline): a cold start it gave up on says little of how long starts take. */
    let queueTimeoutChosen = false
    /** The token the request named (a fallback serves it from a version addressed by id). */
    let token: string | undefined
    let lease: Lease | undefined
    let coldStart = false
    let queued = false
    let queueMs = 0
    let backendMs: number | undefined
    let status: number | undefined
    let failure: MaitreError | undefined
    /** The answer began, then failed (answer.ts cut it): set apart from `failure`, which the client was answered with. */
    let cut: MaitreError | undefined
    let instanceId: string | undefined
    try {
      // What cannot be forwarded is the client's mistake, answered before it costs anyone a slot
      // (or an instance its place in rotation): only a path (origin-form) is sent on. (CONNECT
      // never gets here: the listener answers it.)
      if (req.url === undefined || !req.url.startsWith('/')) {
        throw new MaitreError('MAITRE_BAD_REQUEST', 'The request target must be a path starting with /', { details: { target: (req.url ?? '').slice(0, 200) } })
      }
      // A body in a transfer coding besides chunked (gzip, say) cannot be passed on as it is
      // (Transfer-Encoding is the hop's), nor should it reach the instance undecoded and unsaid.
      const coding = req.headers['transfer-encoding']
      if (coding !== undefined && coding.trim().toLowerCase() !== 'chunked') {
        throw new MaitreError('MAITRE_TRANSFER_CODING', 'Transfer-Encoding other than chunked is not supported', { details: { field: 'transfer-encoding', rule: 'chunked only', value: coding.slice(0, 100) } })
      }
      if (isPreflight(req.method, req.headers)) {
        answerPreflight(req, res, cid, deps)
        status = res.statusCode
        return
      }
      // DNS rebinding (see browser-guard.ts).
      if (deps.routerHostnames !== undefined) assertBrowserReachesService(req.headers, deps.routerHostnames, deps.auth.trustsByAddress)
      // Awaited only when pending: the warm path (one-user principal, cached resolution) stays synchronous.
      let who: Principal
      let resolved: ResolvedRequest | undefined
      try {
        const authenticated = deps.auth.authenticate(req)
        who = authenticated instanceof Promise ? await authenticated : authenticated
      } catch (err) {
        resolved = await resolveAnonymously(req, deps, err)
        who = ANONYMOUS
      }
      const anonymous = who.anonymous === true
      if (!anonymous) principal = who.user
      if (resolved === undefined) {
        // The resolver also decides who may run and call the version (run-as, permitted-user).
        const resolving = deps.resolver.resolve(req.headers, who)
        resolved = resolving instanceof Promise ? await resolving : resolving
      }
      const perRequest = resolved.headers.perRequest
      assertHttpsOrRedirect(req, resolved.resolution.tokenMetadata)
      const cors = corsHeadersFor(req, resolved.resolution)
      if (cors !== undefined) for (const [name, value] of Object.entries(cors)) res.setHeader(name, value)
      token = resolved.resolution.source?.token
      resolution = fallBack(resolved.resolution, who, deps, perRequest['fallback-period-secs'])
      const serviceId = resolution.serviceId
      // The cookie saves a JWT caller a signature check per request. A one-user router trusts its
      // callers by address and never reads it: it hands the cookie out on API answers (where
      // Waiter's CLI picks it up) but spares the data path the header (3-4% of a tiny response's cost).
      const setCookies = anonymous || who.method === 'one-user' ? undefined : deps.auth.cookiesFor(who, requestProto(req.headers) === 'https')
      if (deps.isSuspended(serviceId)) throw new MaitreError('MAITRE_SUSPENDED', 'Service has been suspended', { details: { 'service-id': serviceId } })
      deps.tracker.noteRequest(serviceId)
      const meta = resolution.tokenMetadata
      // A gRPC call's deadline (grpc-timeout) bounds its wait and its answer, unless Waiter's headers say otherwise.
      const deadlineHeader = req.headers['grpc-timeout'] === undefined ? undefined : String(grpcTimeoutMs(req.headers['grpc-timeout']) ?? '')
      const timeouts: ProxyTimeouts = {
        queueTimeoutMs: pickTimeout(perRequest['queue-timeout'] ?? deadlineHeader, meta['queue-timeout-ms'], deps.timeouts.queueTimeoutMs),
        socketTimeoutMs: pickTimeout(perRequest['timeout'] ?? deadlineHeader, meta['socket-timeout-ms'], deps.timeouts.socketTimeoutMs),
        streamingTimeoutMs: pickTimeout(perRequest['streaming-timeout'], meta['streaming-timeout-ms'], deps.timeouts.streamingTimeoutMs),
      }
      queueTimeoutChosen = perRequest['queue-timeout'] !== undefined || deadlineHeader !== undefined
      const current = resolution
      const launchSpec = deps.launchSpecOf(current)
      // A gRPC call's client may say nothing while it waits (a bidirectional call waiting on the
      // server to speak first): the queue timeout, not the listener's body-idle bound, governs.
      // Only a call that can be one: to a service whose instances speak HTTP/2 (the header alone
      // would let any HTTP/2 request out of the body-idle bound).
      const grpcCall = isGrpcCall(req.headers, req.httpVersionMajor, launchSpec.backendProto)
      if (grpcCall) grpcCallWaits(req, res)
      // Cold start and queueing share the request's queue timeout.
      const deadline = started + timeouts.queueTimeoutMs
      const activation = activationOf(current, deps)
      // A request served by a fallback is the edited token's: the version it asked for (starting
      // now) learns of it, not the previous one, stale, which is never pre-warmed for it.
      const asked = resolved.resolution
      deps.keepAlive?.arrived(asked, deps.parametersOf(asked), asked === current ? activation : activationOf(asked, deps))
      const headers = backendRequestHeaders(req.headers, {
        cid,
        clientAddress: req.socket.remoteAddress ?? '',
        proto: 'http',
        authorization: launchSpec.authorization,
        // Waiter: a service served without authentication hears of no principal, even one who proved itself.
        principal: anonymous || current.authenticationDisabled ? undefined : who.user,
      })
      // Ask until the version runs; the slot is then taken in the same turn, so a garbage
      // collection can never slip between "it runs" and "this request holds a slot in it".
      let starting = deps.activator.ensure(activation)
      if (starting !== undefined) {
        // Waiting for a start counts against the version's queue bound, as a queued request does.
        const giveBack = deps.tracker.awaitStart(serviceId)
        try {
          while (starting !== undefined) {
            coldStart = true
            await deps.activator.bounded(serviceId, starting, { deadline, queueTimeoutMs: timeouts.queueTimeoutMs, signal: waitSignal() })
            starting = deps.activator.ensure(activation)
          }
        } finally {
          giveBack()
        }
      }
      lease = deps.tracker.tryAcquire(serviceId)
      if (lease === undefined) {
        coldStart ||= deps.tracker.load(serviceId).healthy === 0
        queued = true
        lease = await deps.tracker.acquire(serviceId, {
          timeoutMs: Math.max(1, deadline - deps.clock.now()),
          queueTimeoutMs: timeouts.queueTimeoutMs,
          signal: waitSignal(),
          onQueued: () => deps.onQueued(serviceId),
        })
      }
      if (queued || coldStart) queueMs = deps.clock.now() - started
      if (debug) gotInstanceNs = process.hrtime.bigint() - startedNs
      // Expect: 100-continue is answered once the request is admitted and holds a slot, and
      // its instance asked for the body: every refusal (maitre's: unknown token, forbidden,
      // queue full or timed out; or the instance's) comes first and final, and the body is
      // never sent for a request that cannot be served.
      const continueClient = expectsContinue(req) ? () => continueRequest(res) : undefined
      // An admitted gRPC call may go quiet between messages: its streaming timeout, not the
      // listener's body-idle bound, says for how long.
      if (grpcCall) grpcCallAdmitted(req, res, timeouts.streamingTimeoutMs)
      for (let attempt = 1; ; attempt++) {
        const instance = lease.instance
        instanceId = instance.id
        const forwardedAt = deps.clock.now()
        const forwardedNs = debug ? process.hrtime.bigint() : 0n
        forwarding = deps.forwarder.forward(req, res, {
          instance,
          cid,
          headers,
          // A gRPC deadline is one budget: what the wait left of it bounds the answer.
          socketTimeoutMs: perRequest['timeout'] === undefined && deadlineHeader !== undefined && deadlineHeader !== '' ? Math.max(1, Math.min(MAX_TIMEOUT_MS, started + Number(deadlineHeader) - deps.clock.now())) : timeouts.socketTimeoutMs,
          streamingTimeoutMs: timeouts.streamingTimeoutMs,
          clientStallMs: Math.max(timeouts.streamingTimeoutMs, deps.timeouts.clientStallTimeoutMs ?? 0),
          timeoutsChosenByClient: chosenByClient(perRequest['timeout'] ?? deadlineHeader) || chosenByClient(perRequest['streaming-timeout']),
          setCookies,
          cors,
          clientHttp2: req.httpVersionMajor === 2,
          continueClient,
          extraHeaders: !coldStart && !debug ? undefined : () => {
            const extra: Record<string, string> = {}
            if (coldStart) extra[COLD_START_HEADER] = 'true'
            if (debug) {
              extra['x-waiter-service-id'] = serviceId
              extra['x-waiter-backend-id'] = instance.id
              extra['x-waiter-backend-host'] = instance.host
              extra['x-waiter-backend-port'] = String(instance.port)
              extra['x-waiter-backend-proto'] = instance.proto
              extra['x-waiter-backend-response-ns'] = String(process.hrtime.bigint() - forwardedNs)
              extra['x-waiter-router-id'] = deps.routerId
              extra['x-waiter-get-available-instance-ns'] = String(gotInstanceNs)
              extra['x-waiter-queue-timeout-ms'] = String(timeouts.queueTimeoutMs)
              extra['x-waiter-socket-timeout-ms'] = String(timeouts.socketTimeoutMs)
              extra['x-waiter-streaming-timeout-ms'] = String(timeouts.streamingTimeoutMs)
              if (instance.logDirectory !== undefined) extra['x-waiter-backend-directory'] = instance.logDirectory
            }
            return extra
          },
        })
        if (clientGone) forwarding.clientGone()
        // (A forwarding's result never rejects: it settles with what happened. Only gRPC calls
        // are kept for the drain: measured, the set cost HTTP's tiny requests several per cent.)
        if (grpcCall) underWay.add(forwarding)
        const result = await forwarding.result
        if (grpcCall) underWay.delete(forwarding)
        forwarding = undefined
        backendMs = deps.clock.now() - forwardedAt
        lease.release(result.outcome)
        lease = undefined
        status = result.status
        // A request the instance never received (its connection was refused: the instance died
        // or is restarting) goes to another instance, whatever its method: at once if one has a
        // free slot, else in the queue, within the request's deadline. (The refusing instance is
        // ejected by now; with no other instance in rotation, the 502 says what happened.)
        if (result.error !== undefined && result.notDelivered && attempt < MAX_ATTEMPTS && !clientGone && !res.headersSent && !req.readableDidRead && deps.tracker.instanceSlots(serviceId).some((s) => s.routable && s.id !== instance.id)) {
          deps.log.warn({ cid, service: serviceId, instance: instance.id, attempt }, 'instance refused the connection; trying another')
          lease = deps.tracker.tryAcquire(serviceId)
          if (lease === undefined) {
            queued = true
            lease = await deps.tracker.acquire(serviceId, {
              timeoutMs: Math.max(1, deadline - deps.clock.now()),
              queueTimeoutMs: timeouts.queueTimeoutMs,
              signal: waitSignal(),
              onQueued: () => deps.onQueued(serviceId),
            })
          }
          continue
        }
        // An answer cut after it began failed all the same: logged and counted as what failed.
        if (result.cut !== undefined && !clientGone) cut = result.cut
        if (result.error !== undefined) {
          status = result.error.status
          failure = result.error
          // Waiter: maitre's own 502/504 for a request that reached an instance names it, with debug on.
          if (debug && !res.headersSent) {
            res.setHeader('x-waiter-backend-id', instance.id)
            res.setHeader('x-waiter-backend-host', instance.host)
            res.setHeader('x-waiter-backend-port', String(instance.port))
            res.setHeader('x-waiter-backend-proto', instance.proto)
          }
          sendError(req, res, result.error, { cid, principal, serviceId, token, instanceId: instance.id })
        }
        break
      }
    } catch (err) {
      lease?.release('generic-error')
      lease = undefined
      failure = asMaitreError(err)
      status = failure.status
      if (queued || coldStart) queueMs = deps.clock.now() - started
      sendError(req, res, failure, { cid, principal, serviceId: resolution?.serviceId, token })
    } finally {
      // The listener answered for it (a request body gone idle: 408) and the forward then saw the
      // body end: what the client was told is the listener's answer, not the forward's cut.
      if (!clientGone && res.writableEnded && cut?.code === 'MAITRE_CLIENT_CLOSED') {
        status = res.statusCode
        cut = undefined
      }
      const finalStatus = clientGone ? 499 : (cut?.status ?? status ?? 500)
      if (failure !== undefined && finalStatus >= 500) {
        // Every 5xx maitre answers is traceable by its cid; unexpected ones (no code of ours) are errors.
        const level = failure.code === 'MAITRE_INTERNAL' ? 'error' : 'warn'
        deps.log[level]({ cid, code: failure.code, status: finalStatus, reason: failure.message, service: resolution?.serviceId, instance: instanceId, err: failure.code === 'MAITRE_INTERNAL' ? failure.cause : undefined }, 'request failed')
      }
      // Its status line went out before it failed: the client saw that status, then a cut.
      if (cut !== undefined && finalStatus >= 500) deps.log.warn({ cid, code: cut.code, status: finalStatus, sent: status, reason: cut.message, service: resolution?.serviceId, instance: instanceId, cut: true }, 'request failed')
      if (resolution !== undefined) {
        const service = resolution.serviceId
        deps.metrics.requests.inc({ service, code: statusClass(finalStatus) })
        deps.metrics.requestDuration.observe({ service }, (deps.clock.now() - started) / 1000)
        if (queued) deps.metrics.queueWait.observe({ service }, queueMs / 1000)
        if (backendMs !== undefined) deps.metrics.backendResponse.observe({ service }, backendMs / 1000)
        if (coldStart) {
          deps.metrics.coldStarts.inc({ service })
          // One that ran out of queue time waited at least that long: left out, the slowest cold
          // starts (longer than the queue timeout) would never reach the histogram or its alert.
          // (Not when the client chose a short wait: polls of 100 ms would drag the quantiles down.)
          if (backendMs !== undefined || (failure?.code === 'MAITRE_QUEUE_TIMEOUT' && !queueTimeoutChosen)) {
            deps.metrics.coldStartDuration.observe({ service }, queueMs / 1000)
            deps.metrics.routerColdStartDuration.observe(queueMs / 1000)
          }
        }
        const rejection = queueRejectionOf(failure?.code)
        if (rejection !== undefined) deps.metrics.queueRejections.inc({ service, reason: rejection })
      }
      if (deps.accessLog) deps.log.info(
        {
          cid,
          method: req.method,
          path: req.url,
          token,
          service: resolution?.serviceId,
          status: clientGone ? 499 : status,
          ...(cut === undefined ? {} : { cut: cut.code }),
          instance: instanceId,
          queueMs,
          backendMs,
          totalMs: deps.clock.now() - started,
          coldStart,
        },
        'request completed',
      )
    }
  }
  return Object.assign(handler, {
    stopUnderWay(err: MaitreError): void {
      for (const forwarding of [...underWay]) forwarding.stop?.(err)
    },
  })
}
