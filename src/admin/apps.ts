/** Waiter's /apps and /apps/{id}: what each service version is, runs and suffers. */
import { MaitreError } from '../errors.ts'
import type { Backend, EndedInstance, Instance, ServiceState } from '../backends/backend.ts'
import type { InstanceTracker } from '../backends/tracker.ts'
import type { Autoscaler } from '../scaler/autoscaler.ts'
import type { Overrides } from '../versions/overrides.ts'
import type { Principal } from '../auth/authenticator.ts'
import type { Coordination } from '../cluster/coordination.ts'
import type { GcRunner } from '../scaler/gc-runner.ts'
import type { KeepAliveRunner } from '../scaler/keep-alive-runner.ts'
import type { KeepAliveView } from '../scaler/keep-alive-ledger.ts'
import type { Clock } from '../clock.ts'
import type { ServiceRecord, ServiceRegistry, TokenReference } from '../versions/registry.ts'
import { tokenEtag, type Tokens } from '../versions/tokens.ts'
import { globMatcher, MAX_FILTERS } from './glob.ts'
import { assertManages, mayManage } from './access.ts'
import { methodNotAllowed, queryFlag, readJsonObject, sendJson, sendJsonInPieces, type AdminRequest } from './http.ts'

export interface AppsApiDeps {
  readonly backend: Backend
  readonly tracker: InstanceTracker
  readonly registry: ServiceRegistry
  readonly tokens: Tokens
  readonly overrides: Overrides
  readonly autoscaler: Autoscaler
  readonly suspensions: { get(serviceId: string): unknown }
  readonly routerId: string
  /** The cluster this router is part of (a single router is a cluster of one). */
  readonly cluster: () => Pick<Coordination, 'members' | 'peerMayHold' | 'peerLoad'>
  /** Deletes a version now, as a collection does. */
  readonly gc: Pick<GcRunner, 'deleteNow'>
  /** What each version's keep-alive policy plans (absent: not shown). */
  readonly keepAlive?: Pick<KeepAliveRunner, 'view' | 'dormant' | 'forget'>
  readonly clock: Clock
}

export type ServiceStatus = 'Failing' | 'Inactive' | 'Starting' | 'Running'

/** Waiter's status labels (service.clj resolve-service-status). */
export function serviceStatus(state: ServiceState | undefined): ServiceStatus {
  if (state?.deploymentError !== undefined) return 'Failing'
  if (state === undefined || (state.requested === 0 && state.instances.length === 0)) return 'Inactive'
  return state.instances.some((i) => i.healthy) ? 'Running' : 'Starting'
}

function liveInstance(i: Instance, expiredByRequest: ReadonlySet<string>): Record<string, unknown> {
  return {
    id: i.id,
    'service-id': i.serviceId,
    host: i.host,
    port: i.port,
    'extra-ports': i.extraPorts,
    protocol: i.proto,
    'started-at': new Date(i.startedAt).toISOString(),
    healthy: i.healthy,
    // Waiter's own key for it, as its CLI reads it.
    'healthy?': i.healthy,
    // An instance an operator asked to expire is expired from that moment, as Waiter shows it.
    flags: [...new Set([...i.flags, ...(expiredByRequest.has(i.id) ? ['expired'] : [])])],
    'log-directory': i.logDirectory ?? null,
  }
}

function endedInstance(i: EndedInstance): Record<string, unknown> {
  return {
    id: i.id,
    'service-id': i.serviceId,
    host: i.host,
    port: i.port,
    'started-at': new Date(i.startedAt).toISOString(),
    'ended-at': new Date(i.endedAt).toISOString(),
    'exit-code': i.exitCode ?? null,
    message: i.message,
    flags: [...i.flags],
    'log-directory': i.logDirectory ?? null,
  }
}

/** The token combinations a version was reached through (a record from before they were kept: its tokens, one each). */
function sourceSetsOf(record: ServiceRecord): readonly (readonly TokenReference[])[] {
  return record.sourceSets ?? record.sources.map((s) => [s])
}

/**
 * Tokens whose current versions still lead here, as Waiter counts them: a combination's tokens
 * only when every token in that combination is still at the version it had (a request naming
 * `a,b` no longer reaches this version once `b` changed, even if `a` did not).
 */
function currentForTokens(record: ServiceRecord, tokens: Tokens): string[] {
  const current = new Set<string>()
  const isCurrent = (s: TokenReference): boolean => {
    const data = tokens.get(s.token)
    return data !== undefined && tokenEtag(data) === s.etag
  }
  for (const set of sourceSetsOf(record)) {
    if (set.every(isCurrent)) for (const s of set) current.add(s.token)
  }
  return [...current].sort()
}

/** Waiter's ?include=healthy-instances: where each healthy instance is. */
function healthyInstances(state: ServiceState | undefined): Record<string, unknown>[] {
  return (state?.instances ?? []).filter((i) => i.healthy).map((i) => ({ id: i.id, host: i.host, port: i.port, 'started-at': new Date(i.startedAt).toISOString() }))
}

/** Waiter's ?include=references: each way the version is referred to, by the tokens (at their versions) a request named. */
function referencesOf(record: ServiceRecord): Record<string, unknown>[] {
  const byTokens = sourceSetsOf(record).map((set) => ({ token: { sources: set.map((s) => ({ token: s.token, version: s.etag })) } }))
  // On-the-fly access is Waiter's empty reference.
  return record.direct === true ? [{}, ...byTokens] : byTokens
}

/** The description as it runs: the parameters given, with who it runs as and who may call it. */
function describedAsRun(record: ServiceRecord): Record<string, unknown> {
  return { ...record.core, 'permitted-user': record.core['permitted-user'] ?? '*' }
}

function summary(record: ServiceRecord, deps: AppsApiDeps): Record<string, unknown> {
  const state = deps.backend.state(record.id)
  const load = deps.tracker.load(record.id)
  const stats = deps.tracker.requestStats(record.id)
  // In cluster mode the whole fleet's requests under way (the other routers' as they last
  // reported them, at most 500 ms old), so that every router answers alike. `total` and the last
  // request's time are this router's own (the load reports carry activity, not arrivals).
  const peers = deps.cluster().peerLoad(record.id)
  const inFlight = load.inFlight + peers.inFlight
  const queued = load.queued + peers.queued
  const healthy = state?.instances.filter((i) => i.healthy).length ?? 0
  const core = record.core
  const out: Record<string, unknown> = {
    'service-id': record.id,
    'service-description': describedAsRun(record),
    status: serviceStatus(state),
    'instance-counts': {
      'healthy-instances': healthy,
      'unhealthy-instances': (state?.instances.length ?? 0) - healthy,
      'requested-instances': state?.requested ?? 0,
    },
    'request-metrics': { outstanding: inFlight + queued, 'in-flight': inFlight, queued, total: stats.total },
    'last-request-time': stats.lastRequestAt === undefined ? null : new Date(stats.lastRequestAt).toISOString(),
    'resource-usage': {
      cpus: (state?.instances.length ?? 0) * (core['cpus'] as number),
      mem: (state?.instances.length ?? 0) * (core['mem'] as number),
    },
    // Waiter's shape: one list per token combination, each token at the version it had.
    'source-tokens': sourceSetsOf(record).map((set) => set.map((s) => ({ token: s.token, version: s.etag }))),
    'current-for-tokens': currentForTokens(record, deps.tokens),
    url: `/apps/${record.id}`,
  }
  // Waiter's wording, as its clients match on it.
  if (state?.deploymentError !== undefined) out['deployment-error-message'] = state.deploymentError.startsWith('Deployment error: ') ? state.deploymentError : `Deployment error: ${state.deploymentError}`
  const scaling = deps.autoscaler.snapshot(record.id)
  if (scaling !== undefined) out['scaling-state'] = scaling['scaling-state']
  return out
}

function isKnownToRun(serviceId: string, deps: AppsApiDeps): boolean {
  if (deps.backend.state(serviceId) !== undefined) return true
  const load = deps.tracker.load(serviceId)
  return load.inFlight + load.queued > 0
}

export async function handleAppsList(r: AdminRequest, who: Principal, deps: AppsApiDeps): Promise<void> {
  if (r.req.method !== 'GET') throw methodNotAllowed(r.req.method, ['GET'])
  const token = r.url.searchParams.get('token')
  const tokenVersion = r.url.searchParams.get('token-version')
  const given = [...r.url.searchParams.entries()].filter(([key]) => !['token', 'token-version', 'include', 'effective-parameters'].includes(key))
  if (given.length > MAX_FILTERS) {
    throw new MaitreError('MAITRE_BAD_REQUEST', `At most ${MAX_FILTERS} filters`, { details: { limit: 'filters', max: MAX_FILTERS } })
  }
  const filters = given.map(([key, wanted]) => ({ path: key.split('.').slice(0, 4), match: globMatcher(key, wanted) }))
  const matches = (rec: ServiceRecord): boolean =>
    filters.every(({ path, match }) => {
      const actual = path.reduce<unknown>((v, k) => (typeof v === 'object' && v !== null && Object.hasOwn(v, k) ? (v as Record<string, unknown>)[k] : undefined), rec.core)
      return actual !== undefined && typeof actual !== 'object' && match(String(actual))
    })
  const reachedThrough = (rec: ServiceRecord, wanted: (s: TokenReference) => boolean): boolean => sourceSetsOf(rec).some((set) => set.some(wanted))
  const tokenMatch = token === null ? undefined : globMatcher('token', token)
  const tokenVersionMatch = tokenVersion === null ? undefined : globMatcher('token-version', tokenVersion)
  // As Waiter lists what its scheduler knows: versions the backend runs or holds (scaled to zero
  // but not yet collected), or with requests under way (a cold start). A version that is only
  // recorded (asked for by /service-id, or left from before a restart) is not listed, so
  // `waiter kill` and `waiter delete` see no service; /apps/{id} still answers for it.
  // Only the versions the caller may manage (admins see all). (Waiter also lists anyone's for
  // ?run-as-user=; maitre does not show one user's versions to another.)
  const records = deps.registry.all().filter((rec) =>
    isKnownToRun(rec.id, deps) &&
    (tokenMatch === undefined || reachedThrough(rec, (s) => tokenMatch(s.token))) &&
    (tokenVersionMatch === undefined || reachedThrough(rec, (s) => tokenVersionMatch(s.etag))) &&
    matches(rec) &&
    mayManage(who, rec))
  records.sort((a, b) => a.createdAt - b.createdAt)
  const effective = r.url.searchParams.getAll('include').includes('effective-parameters') || queryFlag(r.url, 'effective-parameters')
  const includes = new Set(r.url.searchParams.getAll('include'))
  await sendJsonInPieces(r.res, 200, records.map((rec) => ({
    ...summary(rec, deps),
    ...(effective ? { 'effective-parameters': deps.overrides.parameters(rec.id, rec.core) } : {}),
    ...(includes.has('healthy-instances') ? { instances: { 'healthy-instances': healthyInstances(deps.backend.state(rec.id)) } } : {}),
    ...(includes.has('references') ? { references: referencesOf(rec) } : {}),
  })), r.cid)
}

/** Waiter reads the kill timeout as a Java int of milliseconds: digits only, at most 2^31 - 1. */
export const MAX_KILL_TIMEOUT_MS = 2_147_483_647

function killTimeoutMs(param: string | null): number {
  if (param === null) return 0
  const ms = /^[0-9]{1,10}$/.test(param) ? Number(param) : Number.NaN
  if (!(ms <= MAX_KILL_TIMEOUT_MS)) {
    throw new MaitreError('MAITRE_BAD_REQUEST', `timeout must be a whole number of milliseconds from 0 to ${MAX_KILL_TIMEOUT_MS}`, { details: { field: 'timeout', value: param.slice(0, 50) } })
  }
  return ms
}

export async function handleApp(r: AdminRequest, serviceId: string, who: Principal, deps: AppsApiDeps): Promise<void> {
  const record = deps.registry.get(serviceId)
  if (record === undefined) return dormantApp(r, serviceId, who, deps)
  if (r.req.method === 'DELETE') {
    assertManages(who, record)
    // Checked before anything stops: a bad timeout is the caller's 400, and nothing is deleted.
    const timeoutMs = killTimeoutMs(r.url.searchParams.get('timeout'))
    // Gone as a collection would take it: record, caches, settings, then the backend. It leaves
    // /apps at once, and a second DELETE finds nothing (404).
    const existed = await deps.gc.deleteNow(serviceId)
    // Every router has let it go once none reports load for it (reports come every 500 ms).
    const agreed = (): boolean => !deps.cluster().peerMayHold(serviceId)
    const deadline = deps.clock.now() + timeoutMs
    // A caller that hangs up stops the wait (the deletion itself is done).
    while (!agreed() && deps.clock.now() < deadline && !r.res.destroyed) await new Promise<void>((resolve) => deps.clock.setTimeout(resolve, 100))
    // Waiter's answer for a version that was not running (recorded only, by /service-id or
    // before a restart): 404, no-such-service-exists, as for one at zero.
    return sendJson(r.res, existed ? 200 : 404, {
      'service-id': serviceId,
      success: existed,
      result: existed ? 'deleted' : 'no-such-service-exists',
      message: existed ? 'Service deleted' : 'Service was not running',
      'routers-agree': agreed(),
    }, r.cid)
  }
  if (r.req.method !== 'GET') throw methodNotAllowed(r.req.method, ['GET', 'DELETE'])
  const state = deps.backend.state(serviceId)
  // Waiter adds each instance's log-url for a caller who may read its logs.
  const manages = mayManage(who, record)
  const logUrl = (i: Pick<Instance, 'id' | 'host'>): Record<string, unknown> => (manages ? { 'log-url': `/apps/${encodeURIComponent(serviceId)}/logs?instance-id=${encodeURIComponent(i.id)}&host=${encodeURIComponent(i.host)}` } : {})
  // An ended instance whose sandbox is kept (a failed one, on the local backend) has logs to read too.
  const endedWithLogs = (i: EndedInstance): Record<string, unknown> => ({ ...endedInstance(i), ...(i.logDirectory === undefined ? {} : logUrl(i)) })
  const includes = new Set(r.url.searchParams.getAll('include'))
  const body: Record<string, unknown> = {
    'router-id': deps.routerId,
    'num-routers': Math.max(1, deps.cluster().members().length),
    ...summary(record, deps),
    instances: {
      ...(includes.has('healthy-instances') ? { 'healthy-instances': healthyInstances(state) } : {}),
      'active-instances': (state?.instances ?? []).map((i) => ({ ...liveInstance(i, deps.autoscaler.expiryRequested(serviceId)), ...logUrl(i) })),
      'failed-instances': (state?.failed ?? []).map(endedWithLogs),
      'killed-instances': (state?.killed ?? []).map(endedWithLogs),
    },
    'num-active-instances': state?.instances.length ?? 0,
    slots: deps.tracker.instanceSlots(serviceId),
    scaling: deps.autoscaler.snapshot(serviceId) ?? null,
  }
  if (includes.has('references')) body['references'] = referencesOf(record)
  if (deps.keepAlive !== undefined) body['keep-alive'] = keepAliveJson(deps.keepAlive.view(record, serviceId, deps.overrides.parameters(serviceId, record.core)))
  const overrides = deps.overrides.get(serviceId)
  if (overrides !== undefined) body['service-description-overrides'] = overrides
  const suspended = deps.suspensions.get(serviceId)
  if (suspended !== undefined) body['service-suspended-state'] = suspended
  if (r.url.searchParams.getAll('include').includes('effective-parameters') || queryFlag(r.url, 'effective-parameters')) {
    body['effective-parameters'] = deps.overrides.parameters(serviceId, record.core)
  }
  sendJson(r.res, 200, body, r.cid)
}

/**
 * A version with no record: unknown (404), or let go by its adaptive keep-alive, which still
 * remembers it and may start it again: shown as Inactive with what its keep-alive plans (to
 * any caller, as a recorded version is); its managers may DELETE its history.
 */
function dormantApp(r: AdminRequest, serviceId: string, who: Principal, deps: AppsApiDeps): void {
  const dormant = deps.keepAlive?.dormant(serviceId)
  if (dormant === undefined) throw new MaitreError('MAITRE_SERVICE_NOT_FOUND', 'Service not found', { details: { 'service-id': serviceId } })
  if (r.req.method === 'DELETE') {
    assertManages(who, { id: serviceId, core: dormant.core, sources: [], createdAt: 0 })
    // Nothing runs: what goes is its history, so it is not started again before a request.
    // Waiter's answer for a service that does not run: 404, no-such-service-exists.
    deps.keepAlive?.forget(serviceId)
    return sendJson(r.res, 404, { 'service-id': serviceId, success: false, result: 'no-such-service-exists', message: 'Service was not running; its keep-alive history is forgotten' }, r.cid)
  }
  if (r.req.method !== 'GET') throw methodNotAllowed(r.req.method, ['GET', 'DELETE'])
  sendJson(r.res, 200, {
    'router-id': deps.routerId,
    'num-routers': Math.max(1, deps.cluster().members().length),
    'service-id': serviceId,
    'service-description': { ...dormant.core, 'permitted-user': dormant.core['permitted-user'] ?? '*' },
    status: 'Inactive' satisfies ServiceStatus,
    'instance-counts': { 'healthy-instances': 0, 'unhealthy-instances': 0, 'requested-instances': 0 },
    'keep-alive': keepAliveJson(dormant.view),
  }, r.cid)
}

/** The keep-alive view as JSON: times as ISO strings, spans in seconds. */
function keepAliveJson(view: KeepAliveView): Record<string, unknown> {
  const at = (ms: number | undefined): string | null => (ms === undefined ? null : new Date(ms).toISOString())
  return {
    policy: view.policy,
    basis: view.basis,
    'idle-times-seen': view.idleTimes,
    'pre-warm-after-secs': view.prewarmMs / 1000,
    'keep-alive-secs': view.keepAliveMs / 1000,
    'let-go-after-secs': view.letGoMs / 1000,
    'idle-since': at(view.idleSince),
    'next-action': view.next === undefined ? null : { action: view.next.action, at: at(view.next.at) },
    'pre-warmed-at': at(view.prewarmedAt),
    'pre-warms': view.prewarms,
    'pre-warm-hits': view.hits,
    'pre-warm-misses': view.misses,
  }
}

/** /apps/{id}/override: scaling knobs of a running version, without a new id. */
export async function handleOverride(r: AdminRequest, serviceId: string, principal: Principal, deps: AppsApiDeps): Promise<void> {
  const record = deps.registry.get(serviceId)
  if (record === undefined) throw new MaitreError('MAITRE_SERVICE_NOT_FOUND', 'Service not found', { details: { 'service-id': serviceId } })
  const current = (): Record<string, unknown> => ({ 'service-id': serviceId, ...(deps.overrides.get(serviceId) ?? { overrides: {} }) })
  switch (r.req.method) {
    case 'GET':
      return sendJson(r.res, 200, current(), r.cid)
    case 'POST': {
      const body = await readJsonObject(r.req)
      await deps.overrides.set(serviceId, record.core, body, principal.user)
      // The version may have gone while the body came (deleted, collected): its overrides went
      // with it, and must not come back for a version started again under its id.
      if (deps.registry.get(serviceId) === undefined) {
        await deps.overrides.clear(serviceId)
        throw new MaitreError('MAITRE_SERVICE_NOT_FOUND', 'Service not found: it was deleted while the override was sent', { details: { 'service-id': serviceId } })
      }
      return sendJson(r.res, 200, { success: true, ...current() }, r.cid)
    }
    case 'DELETE':
      await deps.overrides.clear(serviceId)
      return sendJson(r.res, 200, { success: true, 'service-id': serviceId }, r.cid)
    default:
      throw methodNotAllowed(r.req.method, ['GET', 'POST', 'DELETE'])
  }
}
