/** The Waiter API served by the router itself (requests that isApiRequest classifies as API calls). */
import type { IncomingMessage, ServerResponse } from 'node:http'
import { asMaitreError, MaitreError } from '../errors.ts'
import type { AuthGate } from '../auth/gate.ts'
import { assertManages } from './access.ts'
import { fallbackTarget } from '../versions/fallback.ts'
import type { Logger } from '../log.ts'
import type { Coordination } from '../cluster/coordination.ts'
import { cidOf } from '../http/cid.ts'
import { sendError, SERVER_HEADER } from '../http/error-response.ts'
import { isPreflight, isSameOrigin, preflightHeaders, requestProto } from '../http/cors.ts'
import { assertBrowserReachesApi } from '../http/browser-guard.ts'
import type { Resolver } from '../versions/resolve.ts'
import { handleApp, handleAppsList, handleOverride, type AppsApiDeps } from './apps.ts'
import { handleInstanceSignal, handleLogs, type InstanceApiDeps } from './instances.ts'
import { handlePing, type PingDeps } from './ping.ts'
import { handlePeer, type ArrivalsPeer, type BackendPeer, type LeaderPeer, type PeerExchange, type StoresPeer } from './peer.ts'
import { PEER_PATH_PREFIX } from '../cluster/slot-exchange.ts'
import type { Suspensions } from '../versions/suspensions.ts'
import type { GcRunner } from '../scaler/gc-runner.ts'
import type { Metrics } from '../metrics.ts'
import { sendMetrics } from './send-metrics.ts'
import { methodNotAllowed, queryFlag, sendJson, sendJsonInPieces, sendText, type AdminRequest } from './http.ts'
import { handleToken, handleTokenHistory, handleTokens, type TokenApiDeps } from './tokens.ts'

export interface AdminDeps extends TokenApiDeps, AppsApiDeps, PingDeps, Pick<InstanceApiDeps, 'expireInstance'> {
  readonly suspensions: Suspensions
  readonly auth: AuthGate
  readonly resolver: Resolver
  readonly gc: GcRunner
  readonly metrics: Metrics
  readonly settings: () => unknown
  readonly draining: () => boolean
  /** The listener's own load: requests being handled and client connections open. */
  readonly serverLoad: () => { readonly inFlight: number; readonly connections: number }
  /** This router's view of the cluster (a single router is a cluster of one). */
  readonly cluster: () => Coordination
  /** The slot exchange with the other routers (cluster mode only). */
  readonly peers?: PeerExchange | undefined
  /** The backend the cluster's leader drives, when it is one (Mesos in cluster mode). */
  readonly backendPeer?: BackendPeer | undefined
  /** Cluster mode: the shared stores, read again when a peer wrote one of their keys. */
  readonly storesPeer?: StoresPeer | undefined
  /** Cluster mode: what a follower asks of the leader. */
  readonly leaderPeer?: LeaderPeer | undefined
  /** What the keep-alive learns of requests that reached the other routers. */
  readonly arrivalsPeer?: ArrivalsPeer | undefined
  readonly log: Logger
}

/** A percent-decoded path segment; a malformed escape is the caller's 400, not our 500. */
function pathSegment(segment: string): string {
  try {
    return decodeURIComponent(segment)
  } catch {
    throw new MaitreError('MAITRE_BAD_REQUEST', 'The path holds a malformed percent-escape', { details: { segment: segment.slice(0, 200) } })
  }
}

export function createAdminHandler(deps: AdminDeps): (req: IncomingMessage, res: ServerResponse) => Promise<void> {
  return async (req, res) => {
    const cid = cidOf(req)
    let principal: string | undefined
    try {
      const url = requestUrl(req.url)
      const r: AdminRequest = { req, res, url, cid }
      const path = url.pathname
      // Router to router, proven by the cluster's key rather than a user's credentials.
      if (path.startsWith(PEER_PATH_PREFIX)) return await handlePeer(r, deps.peers, deps.backendPeer, deps.storesPeer, deps.leaderPeer, deps.arrivalsPeer)
      switch (path) {
        case '/':
          if (req.method !== 'GET') throw methodNotAllowed(req.method, ['GET'])
          return sendJson(res, 200, { message: 'Welcome to maitre', cid, 'router-id': deps.routerId }, cid)
        case '/status':
        case '/livez':
          return sendJson(res, 200, { status: 'ok' }, cid)
        case '/metrics':
          return await sendMetrics(res, deps.metrics, cid)
        case '/readyz': {
          if (deps.draining()) return sendJson(res, 503, { status: 'draining', message: 'Router is in drain mode.' }, cid)
          // A cluster router that has not joined (yet, or again) can fill no slot of its own.
          const cluster = deps.cluster()
          if (cluster.mode === 'etcd' && !cluster.members().some((m) => m.routerId === cluster.routerId)) {
            return sendJson(res, 503, { status: 'joining', message: 'Router is joining its cluster.' }, cid)
          }
          // Until the backend has seen what runs, this router knows no instance to send a request to.
          const unready = deps.backend.notReadyBecause?.()
          if (unready !== undefined) return sendJson(res, 503, { status: 'backend-syncing', message: unready }, cid)
          return sendJson(res, 200, { status: 'ok' }, cid)
        }
      }
      // DNS rebinding (see browser-guard.ts).
      assertBrowserReachesApi(req.headers, deps.routerHostnames, deps.auth.trustsByAddress)
      const origin = req.headers.origin
      // The API has no CORS rules of its own: pages of the router's own origin only. A page of
      // another origin cannot make a browser spend the caller's cookie here.
      const foreign = origin !== undefined && !isSameOrigin(origin, req.headers.host, requestProto(req.headers))
      if (isPreflight(req.method, req.headers)) {
        if (foreign) throw new MaitreError('MAITRE_CORS_PREFLIGHT_FORBIDDEN', 'Cross-origin request not allowed', { details: { origin: origin.slice(0, 200) } })
        res.writeHead(200, { ...preflightHeaders(origin as string, undefined, req.headers['access-control-request-headers']), 'content-length': 0, 'x-cid': cid, server: SERVER_HEADER })
        return void res.end()
      }
      const who = await deps.auth.authenticate(req)
      principal = who.user
      if (foreign) throw new MaitreError('MAITRE_CORS_REQUEST_FORBIDDEN', 'Cross-origin request not allowed', { details: { origin: origin.slice(0, 200) } })
      const cookies = deps.auth.cookiesFor(who, requestProto(req.headers) === 'https')
      if (cookies !== undefined) res.setHeader('set-cookie', cookies)
      switch (path) {
        case '/token':
          return await handleToken(r, who, deps)
        case '/tokens':
          return await handleTokens(r, deps)
        case '/token-history':
          return handleTokenHistory(r, who, deps)
        case '/waiter-ping':
          return await handlePing(r, who, deps)
        case '/service-id':
        case '/app-name': {
          const { resolution, headers } = await deps.resolver.resolve(req.headers, who)
          // The version that would serve the request now: during a fallback, the previous one
          // (?latest=true: the token's newest, whatever serves). Nothing is started.
          const latest = queryFlag(url, 'latest')
          const target = latest ? undefined : fallbackTarget(resolution, deps.clock.now(), headers.perRequest['fallback-period-secs'], (id) => deps.tracker.load(id).healthy)
          let serving = resolution.serviceId
          if (target !== undefined) {
            try {
              serving = deps.resolver.byServiceId(target, who).serviceId
            } catch (err) {
              if (!(err instanceof MaitreError) || err.status >= 500) throw err
            }
          }
          return sendText(res, 200, serving, cid)
        }
        case '/apps':
          return await handleAppsList(r, who, deps)
        case '/settings':
          if (req.method !== 'GET') throw methodNotAllowed(req.method, ['GET'])
          return sendJson(res, 200, deps.settings(), cid)
        case '/state':
          return sendJson(res, 200, {
            'router-id': deps.routerId,
            routers: Object.fromEntries(deps.cluster().members().map((m) => [m.routerId, m.url])),
            'in-flight-requests': deps.serverLoad().inFlight,
            'open-connections': deps.serverLoad().connections,
            details: Object.fromEntries(['autoscaler', 'cluster', 'gc-services', 'instance-tracker', 'scheduler'].map((n) => [n, `/state/${n}`])),
          }, cid)
        case '/state/maintainer':
          // What Waiter's CLI and tools read to find every router: { state: { routers: { id: url } } }.
          return sendJson(res, 200, {
            'router-id': deps.routerId,
            state: { routers: Object.fromEntries(deps.cluster().members().map((m) => [m.routerId, m.url])) },
          }, cid)
        case '/state/cluster': {
          const cluster = deps.cluster()
          return sendJson(res, 200, {
            'router-id': cluster.routerId,
            mode: cluster.mode,
            leader: cluster.leaderId() ?? null,
            'is-leader': cluster.isLeader(),
            members: cluster.members(),
            'etcd-endpoints': cluster.endpoints,
          }, cid)
        }
        case '/state/instance-tracker':
          return await sendJsonInPieces(res, 200, {
            'router-id': deps.routerId,
            state: Object.fromEntries(deps.backend.services().map((svc) => [svc.id, { load: deps.tracker.load(svc.id), slots: deps.tracker.instanceSlots(svc.id) }])),
          }, cid)
        case '/state/scheduler':
          return await sendJsonInPieces(res, 200, { 'router-id': deps.routerId, state: { kind: deps.backend.kind, services: deps.backend.services() } }, cid)
        case '/state/autoscaler':
          return await sendJsonInPieces(res, 200, { 'router-id': deps.routerId, state: deps.autoscaler.snapshots() }, cid)
        case '/state/gc-services':
          return sendJson(res, 200, { 'router-id': deps.routerId, state: { rounds: deps.gc.rounds(), 'recently-collected': deps.gc.recent() } }, cid)
      }
      // Any other /state/{segment} names a version, whatever serviceIdPrefix made its id.
      const serviceState = /^\/state\/([^/]+)$/.exec(path)
      if (serviceState !== null) {
        const id = pathSegment(serviceState[1] as string)
        if (deps.registry.get(id) === undefined) throw new MaitreError('MAITRE_SERVICE_NOT_FOUND', 'Service not found', { details: { 'service-id': id } })
        return sendJson(res, 200, {
          'router-id': deps.routerId,
          state: { backend: deps.backend.state(id) ?? null, tracker: { load: deps.tracker.load(id), slots: deps.tracker.instanceSlots(id) }, autoscaler: deps.autoscaler.snapshot(id) ?? null },
        }, cid)
      }
      const sub = /^\/apps\/([^/]+)\/(override|suspend|resume|logs|instance\/([^/]+)\/(kill|expire))$/.exec(path)
      if (sub !== null) {
        const serviceId = pathSegment(sub[1] as string)
        const record = deps.registry.get(serviceId)
        if (record === undefined) throw new MaitreError('MAITRE_SERVICE_NOT_FOUND', 'Service not found', { details: { 'service-id': serviceId } })
        // Reading a version's overrides is anyone's; changing anything about it, or reading its logs, is its managers'.
        if (!(sub[2] === 'override' && req.method === 'GET')) assertManages(who, record)
        switch (sub[2]) {
          case 'override':
            return await handleOverride(r, serviceId, who, deps)
          case 'suspend':
            if (req.method !== 'POST') throw methodNotAllowed(req.method, ['POST'])
            await deps.suspensions.suspend(serviceId, who.user)
            // Deleted while the suspension was written (the delete cleared suspensions first):
            // left, it would hold the version's next life down from its first request.
            if (deps.registry.get(serviceId) === undefined) {
              await deps.suspensions.resume(serviceId)
              throw new MaitreError('MAITRE_SERVICE_NOT_FOUND', 'Service not found: it was deleted while the suspension was made', { details: { 'service-id': serviceId } })
            }
            return sendJson(res, 200, { success: true, 'service-id': serviceId }, cid)
          case 'resume':
            if (req.method !== 'POST') throw methodNotAllowed(req.method, ['POST'])
            await deps.suspensions.resume(serviceId)
            return sendJson(res, 200, { success: true, 'service-id': serviceId }, cid)
          case 'logs':
            return await handleLogs(r, serviceId, deps)
          default:
            return await handleInstanceSignal(r, serviceId, pathSegment(sub[3] as string), sub[4] as 'kill' | 'expire', deps)
        }
      }
      const app = /^\/apps\/([^/]+)$/.exec(path)
      if (app !== null) return await handleApp(r, pathSegment(app[1] as string), who, deps)
      throw new MaitreError('MAITRE_NOT_FOUND', 'Not found', { details: { path } })
    } catch (err) {
      const failure = asMaitreError(err)
      // Every 5xx is traceable by its cid; one that is no error of ours (a bug) is an error line.
      if (failure.status >= 500) {
        const unexpected = failure.code === 'MAITRE_INTERNAL'
        deps.log[unexpected ? 'error' : 'warn']({ cid, code: failure.code, status: failure.status, reason: failure.message, path: (req.url ?? '/').split('?')[0]?.slice(0, 200), err: failure.cause ?? undefined }, 'admin request failed')
      }
      sendError(req, res, failure, { cid, principal })
    }
  }
}

/** The request target as a URL; one that is no path (`http://[`, `//[/x`) is the caller's 400, not our 500. */
function requestUrl(target: string | undefined): URL {
  try {
    return new URL(target ?? '/', 'http://router')
  } catch {
    throw new MaitreError('MAITRE_BAD_REQUEST', 'The request target must be a path starting with /', { details: { target: String(target).slice(0, 200) } })
  }
}

/** What the main listener still answers when the admin API has a listener of its own. */
const PUBLIC_PATHS = new Set(['/status', '/livez', '/readyz'])

/**
 * The API as the main listener serves it when the admin API listens elsewhere: health checks for
 * load balancers, and the routers' own peer calls (peers dial the advertised, main, address);
 * anything else is not found here, without a word about where it is.
 */
export function publicApiOnly(api: (req: IncomingMessage, res: ServerResponse) => Promise<void>): (req: IncomingMessage, res: ServerResponse) => Promise<void> {
  return async (req, res) => {
    let path: string
    try {
      path = requestUrl(req.url).pathname
    } catch (err) {
      return sendError(req, res, asMaitreError(err), { cid: cidOf(req) })
    }
    if (PUBLIC_PATHS.has(path) || path.startsWith(PEER_PATH_PREFIX)) return api(req, res)
    sendError(req, res, new MaitreError('MAITRE_NOT_FOUND', 'Not found', { details: { path: path.slice(0, 200) } }), { cid: cidOf(req) })
  }
}
