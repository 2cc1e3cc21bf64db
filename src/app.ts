/**
 * The composition root: the only module that knows every other. It builds a router from a
 * Config, starts it, and stops it cleanly (drain, then stop every instance). It wires and
 * decides nothing: every rule lives in the module that owns it.
 */
import { mkdirSync } from 'node:fs'
import { osUserName } from './auth/os-user.ts'
import { join, resolve } from 'node:path'
import { createAdminHandler, publicApiOnly } from './admin/router.ts'
import { authGateOf } from './auth/configure.ts'
import { loadRouterSecret } from './auth/router-secret.ts'
import { lockDataDir } from './storage/lock.ts'
import { loadRouterId } from './cluster/router-id.ts'
import { EtcdCoordinator } from './cluster/etcd/coordinator.ts'
import { etcdFrameworkIds, etcdStores, restoreSharedRouterSecret, sharedRouterSecret } from './cluster/etcd/stores.ts'
import { joining, singleRouter, type Coordination } from './cluster/coordination.ts'
import { peerKey, SlotExchange, type CollectReason } from './cluster/slot-exchange.ts'
import { PeerSync } from './cluster/peer-sync.ts'
import { LeaderCalls } from './cluster/leader-calls.ts'
import { ArrivalNotes } from './cluster/arrival-notes.ts'
import type { Etcd3 } from 'etcd3'
import { advertisedUrl } from './cluster/advertise.ts'
import { agreeToCollect, localLoads, type CollectedVersion } from './scaler/fleet.ts'
import { LocalBackend } from './backends/local/local-backend.ts'
import { KubernetesBackend } from './backends/kubernetes.ts'
import { MesosBackend, type FrameworkIdStore } from './backends/mesos.ts'
import { LeaderBackend } from './cluster/leader-backend.ts'
import { fileFrameworkIds } from './backends/mesos/framework-id.ts'
import { KubeApi } from './backends/kubernetes/api.ts'
import { kubeConnection } from './backends/kubernetes/connection.ts'
import type { Backend } from './backends/backend.ts'
import { instrumented } from './backends/instrumented.ts'
import { Metrics, type ServiceGauges } from './metrics.ts'
import { VERSION } from './version.ts'
import { InstanceTracker } from './backends/tracker.ts'
import { systemClock, type Clock } from './clock.ts'
import { etcdPrefixOf, redactedConfig, type Config } from './config.ts'
import type { LaunchSpec } from './launch-spec.ts'
import { createLogger, type Logger } from './log.ts'
import { Forwarder } from './proxy/forward.ts'
import { createProxyHandler, type ProxyDeps } from './proxy/handle.ts'
import { createWebSocketProxy } from './proxy/websocket.ts'
import { createRouterServer, readTlsFiles } from './proxy/server.ts'
import { startMemoryRelease, type MemoryRelease } from './memory/release.ts'
import { Activator, routingOf } from './scaler/activator.ts'
import { Autoscaler } from './scaler/autoscaler.ts'
import { followBackend } from './scaler/backend-sync.ts'
import { GcRunner } from './scaler/gc-runner.ts'
import { KeepAliveLedger } from './scaler/keep-alive-ledger.ts'
import { KeepAliveRunner, payloadOfRecord, type PrewarmPayload, type RecordStarts } from './scaler/keep-alive-runner.ts'
import { scalableServiceOf } from './scaler/policy.ts'
import { serviceGauges } from './scaler/service-gauges.ts'
import { VersionMemory } from './scaler/version-memory.ts'
import { Overrides } from './versions/overrides.ts'
import { Suspensions } from './versions/suspensions.ts'
import { dropOrphanSettings } from './versions/orphan-settings.ts'
import { TOKEN_DEFAULTS } from './versions/parameters.ts'
import { ServiceRegistry, type ServiceRecord } from './versions/registry.ts'
import { Resolver, type Resolution } from './versions/resolve.ts'
import { openTokenStore } from './versions/token-store.ts'
import { fileStores } from './storage/json-dir.ts'
import { Tokens } from './versions/tokens.ts'
import { currencyOf } from './versions/currency.ts'
import { VersionParameters } from './versions/version-parameters.ts'
import { authority } from './http/authority.ts'
import { routerHostnames as routerHostnamesOf } from './http/router-hostnames.ts'

export interface AppOverrides {
  readonly clock?: Clock
  readonly log?: Logger
}

export interface App {
  /** Listens; resolves with the bound port. */
  start(): Promise<number>
  /** Drains requests, then stops every instance. Safe to call twice. */
  stop(): Promise<void>
  readonly url: () => string
  /** The admin API's own listener, when it has one. */
  readonly adminUrl: () => string | undefined
}

/** In cluster mode, what a backend only the leader may drive needs: etcd, and who leads. */
interface ClusterOfBackend {
  readonly etcd: Etcd3
  readonly prefix: string
  readonly coordination: () => Coordination
  readonly secret: string
  /** A recorded version's LaunchSpec (demand a new leader carries over). */
  readonly specOf: (serviceId: string) => LaunchSpec | undefined
}

function createBackend(config: Config, dataDir: string, clock: Clock, log: Logger, cluster: ClusterOfBackend | undefined, specOf: (serviceId: string) => LaunchSpec | undefined): Backend {
  if (config.backend.kind === 'kubernetes') {
    const k8s = config.backend.kubernetes
    return new KubernetesBackend({ ...k8s, api: new KubeApi(kubeConnection(k8s), { requestTimeoutMs: k8s.requestTimeoutMs }), cluster: config.cluster, clock, log })
  }
  if (config.backend.kind === 'mesos') {
    const mesos = (frameworkIds: FrameworkIdStore, frameworkIdRequired: boolean): MesosBackend =>
      new MesosBackend({ ...config.backend.mesos, cluster: config.cluster, clock, log, frameworkIds, frameworkIdRequired, user: osUserName(), specOf })
    if (cluster === undefined) return mesos(fileFrameworkIds(join(dataDir, 'mesos-framework.json')), false)
    // One scheduler per framework: the leader subscribes, the other routers go through it.
    return new LeaderBackend({
      kind: 'mesos',
      start: () => mesos(etcdFrameworkIds(cluster.etcd, cluster.prefix), true),
      specOf: cluster.specOf,
      isLeader: () => cluster.coordination().isLeader(),
      leaderUrl: () => {
        const coordination = cluster.coordination()
        const leader = coordination.leaderId()
        return leader === coordination.routerId ? undefined : coordination.members().find((m) => m.routerId === leader)?.url
      },
      peerKey: peerKey(cluster.secret),
      log,
    })
  }
  const workDir = config.backend.local.workDir
  return new LocalBackend({ ...config.backend.local, workDir: workDir ?? join(dataDir, 'instances'), claimWorkDir: workDir !== null, clock, log })
}

export async function createApp(config: Config, injected: AppOverrides = {}): Promise<App> {
  const clock = injected.clock ?? systemClock
  const log = injected.log ?? createLogger(config.log.level)
  // Read first: a bad certificate stops the router before it holds anything.
  const tls = readTlsFiles(config.server.tls)
  const dataDir = resolve(config.dataDir)
  mkdirSync(dataDir, { recursive: true })
  // Before anything reads or sweeps it: one router per data directory.
  const unlock = lockDataDir(dataDir)
  try {
    return await assemble(config, { clock, log, dataDir, unlock, tls })
  } catch (err) {
    unlock()
    throw err
  }
}

async function assemble(config: Config, base: { clock: Clock; log: Logger; dataDir: string; unlock: () => void; tls: ReturnType<typeof readTlsFiles> }): Promise<App> {
  const { clock, log, dataDir, unlock, tls } = base
  const user = config.auth.user ?? osUserName()
  const routerId = await loadRouterId(config.routerId, dataDir)
  const routerHostnames = routerHostnamesOf([config.server.host, config.server.admin.host], config.server.hostnames)

  // Cluster mode: shared state lives in etcd; without endpoints, in the data directory.
  const etcdPrefix = etcdPrefixOf(config)
  // etcd's client (gRPC) is loaded in cluster mode only: a router on its own starts without it.
  const etcd = config.etcd.endpoints.length > 0 ? (await import('./cluster/etcd/connect.ts')).connectEtcd(config.etcd) : undefined
  const sharedStores = etcd === undefined ? undefined : etcdStores(etcd, etcdPrefix, log)
  const stores = sharedStores ?? fileStores(dataDir, ({ store, key, verb, err }) => log.error({ err, store, key }, `a ${store} was ${verb}, but its directory could not be synced: a power loss may undo it`))
  const secret = etcd !== undefined && config.secret === null ? await sharedRouterSecret(etcd, etcdPrefix) : await loadRouterSecret(config.secret, dataDir)

  // Stores open first: a corrupt store stops startup before anything runs.
  const tokens = new Tokens(await openTokenStore(stores), clock, config.cluster, { maxTokens: config.maxTokens, maxTokensPerOwner: config.maxTokensPerOwner, reservedNames: routerHostnames })
  const registry = await ServiceRegistry.open(stores, clock, config.maxVersions)
  const overrides = await Overrides.open(stores, clock)
  const suspensions = await Suspensions.open(stores, clock)
  if (stores.kind === 'file') await dropOrphanSettings((serviceId) => registry.get(serviceId) !== undefined, overrides, suspensions, log)
  const parameters = new VersionParameters(overrides, { cluster: config.cluster, secret }, config.proxy.resolutionCacheSize)

  // Late-bound: the gauges read the tracker and autoscaler, which are built below.
  let gauges: () => Iterable<ServiceGauges> = () => []
  let websocketsOpen = (): number => 0
  const metrics = new Metrics(
    { services: () => gauges(), tokens: () => [...tokens.entries()].length, versions: () => registry.all().length, websockets: () => websocketsOpen(), connections: () => serverLoad().connections },
    { version: VERSION },
  )
  let port = config.server.port
  const url = (): string => `http://${authority(config.server.host, port)}`
  // Late-bound: a cluster router joins once it listens (its peers need its URL); until then it
  // follows, so it acts for nobody.
  let coordination: Coordination = etcd === undefined ? singleRouter(routerId, url, clock.now()) : joining(routerId, config.etcd.endpoints)
  const specOfRecord = (serviceId: string): LaunchSpec | undefined => {
    const record = registry.get(serviceId)
    return record === undefined ? undefined : parameters.launchSpecOfRecord(record)
  }
  const led = createBackend(config, dataDir, clock, log, etcd === undefined ? undefined : { etcd, prefix: etcdPrefix, coordination: () => coordination, secret, specOf: specOfRecord }, specOfRecord)
  const backend = instrumented(led, metrics)
  const tracker = new InstanceTracker({
    clock,
    ejectBaseMs: config.proxy.ejectBaseMs,
    maxEjectMs: config.proxy.maxEjectMs,
    onEject: (service, instance, periodMs, outcome) => {
      metrics.ejections.inc({ service })
      log.warn({ service, instance, periodMs, outcome }, 'instance ejected')
    },
  })
  const activator = new Activator(backend, tracker, clock, log)
  // Cluster mode: each router fills only its share of every instance's slots and lends the rest.
  const exchange =
    etcd === undefined
      ? undefined
      : new SlotExchange({
          routerId,
          secret,
          tracker,
          view: () => coordination.slotView(),
          clock,
          log,
          killEjectMs: config.proxy.ejectBaseMs,
          onVeto: (service) => metrics.killVetoes.inc({ service }),
          onPeerGone: (peer) => coordination.suspect?.(peer),
          holdForCollection: (serviceId, lastActiveAt, periodMs) => agreeToCollect(tracker, activator, serviceId, lastActiveAt, periodMs),
          releaseCollectionHold: (serviceId, deleted) => activator.releaseHold(serviceId, deleted),
          leaderId: () => coordination.leaderId(),
          // (keepAlive is made further down; a collection is only heard once the router serves.)
          collectedByLeader: (serviceId, reason, lastActiveAt, forget) => void keepAlive.collected(serviceId, reason, lastActiveAt, forget),
        })
  if (exchange !== undefined) tracker.shareSlots(exchange)
  // Cluster mode: a write to the shared state is answered once every peer has read it.
  const peerSync = sharedStores === undefined ? undefined : new PeerSync({ routerId, key: peerKey(secret), members: () => coordination.members(), log, onOutcome: (outcome) => metrics.peerSyncs.inc({ outcome }) })
  if (peerSync !== undefined) sharedStores?.afterCommit((store, key) => peerSync.announce(store, key))
  // Cluster mode: an operator's expiry through a follower reaches the leader, which replaces instances.
  const leaderCalls = etcd === undefined ? undefined : new LeaderCalls({ key: peerKey(secret), coordination: () => coordination, expireHere: (serviceId, instanceId) => autoscaler.expire(serviceId, instanceId) })
  // Cluster mode: every router's keep-alive learns from the requests that reached the others.
  const arrivalNotes = etcd === undefined ? undefined : new ArrivalNotes({ routerId, key: peerKey(secret), members: () => coordination.members(), log, onOutcome: (outcome, count) => metrics.keepAliveNotes.inc({ outcome }, count) })
  const fleet = {
    isLeader: () => coordination.isLeader(),
    peerLoad: (serviceId: string) => coordination.peerLoad(serviceId),
    allowKill: exchange === undefined ? undefined : (serviceId: string, instanceId: string) => exchange.allowKill(serviceId, instanceId),
    cancelKill: exchange === undefined ? undefined : (serviceId: string, instanceId: string) => exchange.cancelKill(serviceId, instanceId),
    allowCollect: exchange === undefined ? undefined : (serviceId: string, lastActiveAt: number, reason: CollectReason) => exchange.allowCollect(serviceId, lastActiveAt, reason),
    collectDone: exchange === undefined ? undefined : (serviceId: string, collected: CollectedVersion | undefined) => exchange.collectDone(serviceId, collected),
  }
  // The GC's test of a version its tokens still lead to (stale ones scale as if min-instances were 1; only current ones are pre-warmed).
  const isCurrentRecord = (record: ServiceRecord): boolean => currencyOf(record, { token: (name) => tokens.get(name), serviceIdOfTokens: (list, requester) => resolver.serviceIdOfTokens(list, requester), now: clock.now() }).current
  const autoscaler = new Autoscaler(
    {
      backend,
      tracker,
      serviceOf: (serviceId) => {
        const record = registry.get(serviceId)
        return record === undefined ? undefined : scalableServiceOf(parameters.ofRecord(record), !isCurrentRecord(record))
      },
      clock,
      log,
      onDecision: (service, decision) => {
        if (decision.direction !== 'stable') metrics.scalingDecisions.inc({ service, direction: decision.direction })
      },
      fleet,
    },
    {
      tickMs: config.scaler.tickMs,
      burst: { threshold: config.scaler.burstThreshold, holdMs: config.scaler.burstHoldMs, tickMs: config.scaler.tickMs },
      interKillMs: config.scaler.interKillMs,
    },
  )
  const resolver = new Resolver(tokens, registry, {
    routerHostnames,
    allowOnTheFly: config.proxy.allowOnTheFly,
    serviceIdPrefix: config.serviceIdPrefix,
    cacheSize: config.proxy.resolutionCacheSize,
    fallbackPeriodSecs: TOKEN_DEFAULTS.fallbackPeriodSecs,
  })
  const memory = new VersionMemory({ resolver, parameters, autoscaler, overrides, suspensions })
  const routingOfVersion = (serviceId: string) => {
    const record = registry.get(serviceId)
    return record === undefined ? undefined : routingOf(parameters.ofRecord(record))
  }
  followBackend({ backend, tracker, metrics, log, routingOf: routingOfVersion, onGone: (serviceId) => memory.stoppedRunning(serviceId), starting: (serviceId) => activator.starting(serviceId) })
  overrides.onChange((serviceId) => {
    const routing = routingOfVersion(serviceId)
    if (routing !== undefined) tracker.configure(serviceId, routing)
  })
  // The keep-alive runner (below) hands its collections to the GC, which asks it when adaptive
  // versions go.
  const gc: GcRunner = new GcRunner(
    {
      backend,
      tracker,
      registry,
      tokens,
      activator,
      parametersOf: (record) => parameters.ofRecord(record),
      serviceIdOfTokens: (list, requester) => resolver.serviceIdOfTokens(list, requester),
      forgetVersion: (serviceId) => memory.collected(serviceId),
      onCollecting: (serviceId, reason, lastActiveAt) => keepAlive.collected(serviceId, reason, lastActiveAt),
      onCollected: async (serviceId, reason) => {
        metrics.gcDeletions.inc({ reason })
        await metrics.removeService(serviceId)
      },
      onDeleted: (serviceId) => {
        keepAlive.deleted(serviceId)
        // A version that never ran (suspended, say) has series the backend's report of it gone never removes.
        const load = tracker.load(serviceId)
        metrics.removeService(serviceId, load.inFlight + load.queued > 0).catch((err: unknown) => log.warn({ err, service: serviceId }, 'removing metric series failed'))
      },
      keepUntil: (record, params, lastActiveAt) => keepAlive.keepUntil(record, params, lastActiveAt),
      clock,
      log,
      fleet,
    },
    {
      intervalMs: config.scaler.gcIntervalMs,
      brokenTimeoutMs: config.scaler.brokenServiceTimeoutMins * 60_000,
      fallbackMs: TOKEN_DEFAULTS.fallbackPeriodSecs * 1000,
      staleTimeoutMs: TOKEN_DEFAULTS.staleTimeoutMins * 60_000,
    },
  )
  const keepAlive: KeepAliveRunner = new KeepAliveRunner(
    {
      ledger: new KeepAliveLedger<PrewarmPayload>(config.scaler.keepAliveVersions),
      backend,
      tracker,
      registry,
      activator,
      collectIfIdle: (serviceId) => gc.collectIfDue(serviceId),
      parametersOf: (record) => parameters.ofRecord(record),
      // A version is started without a request only while the tokens the last request named
      // still lead to it (the GC's own test of a current version).
      isCurrent: (serviceId, { sources, core }) => isCurrentRecord({ id: serviceId, core, sources, sourceSets: [sources], createdAt: 0 }),
      isSuspended: (serviceId) => suspensions.get(serviceId) !== undefined,
      isOverridden: (serviceId) => overrides.get(serviceId) !== undefined,
      onPrewarm: () => metrics.prewarms.inc(),
      onHit: () => metrics.prewarmHits.inc(),
      onMiss: () => metrics.prewarmMisses.inc(),
      tellPeers: arrivalNotes === undefined ? undefined : (serviceId, arrival) => arrivalNotes.tell(serviceId, arrival),
      clock,
      log,
      fleet,
    },
    { defaultPolicy: config.scaler.keepAlive, tickMs: config.scaler.keepAliveTickMs },
  )
  gauges = () =>
    serviceGauges({
      backend,
      tracker,
      autoscaler,
      decides: () => fleet.isLeader(),
      maxInstancesOf: (serviceId) => {
        const record = registry.get(serviceId)
        return record === undefined ? undefined : (parameters.ofRecord(record)['max-instances'] as number)
      },
    })
  // A request another router told of: this router's own record says what the version is.
  const recordStarts: RecordStarts = {
    parametersOf: (record) => parameters.ofRecord(record),
    launchSpecOf: (record) => parameters.launchSpecOfRecord(record),
    remember: (record) => registry.remember(record.id, record.core, record.sources.at(-1), record.sources, record.direct === true),
  }
  const knownVersion = (serviceId: string): { params: Readonly<Record<string, unknown>>; payload: PrewarmPayload | undefined } | undefined => {
    const record = registry.get(serviceId)
    return record === undefined ? undefined : { params: parameters.ofRecord(record), payload: payloadOfRecord(record, recordStarts) }
  }
  const forwarder = new Forwarder({ connectTimeoutMs: config.proxy.connectTimeoutMs })
  const auth = authGateOf(config.auth, { oneUser: user, routerSecret: secret, clock })
  const launchSpecOf = (resolution: Resolution): LaunchSpec => parameters.launchSpec(resolution)
  const parametersOf = (resolution: Resolution): Readonly<Record<string, unknown>> => parameters.ofResolution(resolution)

  const proxyDeps: ProxyDeps = {
    auth,
    routerHostnames,
    resolver,
    activator,
    tracker,
    forwarder,
    launchSpecOf,
    parametersOf,
    onQueued: (serviceId) => autoscaler.poke(serviceId),
    keepAlive,
    isSuspended: (serviceId) => suspensions.get(serviceId) !== undefined,
    metrics,
    timeouts: config.proxy,
    routerId,
    clock,
    log,
    accessLog: config.log.access,
  }
  const proxy = createProxyHandler(proxyDeps)
  const websocket = createWebSocketProxy(proxyDeps, config.proxy.websocket)
  websocketsOpen = websocket.open
  // Late-bound: the API reports the drain the server (built from the API) carries out.
  let draining = (): boolean => false
  let serverLoad = (): { inFlight: number; connections: number } => ({ inFlight: 0, connections: 0 })
  const api = createAdminHandler({
    auth,
    resolver,
    tokens,
    registry,
    backend,
    tracker,
    routerId,
    routerHostnames,
    serviceIdPrefix: config.serviceIdPrefix,
    admins: new Set([...config.auth.admins, ...(config.auth.kind === 'one-user' ? [user] : [])]),
    overrides,
    autoscaler,
    gc,
    // An operator's DELETE of a version its keep-alive alone remembers is told to every router
    // (as the leader's collection is): one that kept its history would pre-warm it once it leads.
    keepAlive: exchange === undefined ? keepAlive : {
      view: (record, serviceId, params) => keepAlive.view(record, serviceId, params),
      dormant: (serviceId) => keepAlive.dormant(serviceId),
      forget: (serviceId) => {
        keepAlive.forget(serviceId)
        void exchange.collectDone(serviceId, { reason: 'idle', lastActiveAt: clock.now(), forget: true }).catch(() => undefined)
      },
    },
    keepAliveArrivals: keepAlive,
    metrics,
    suspensions,
    activator,
    launchSpecOf,
    parametersOf,
    settings: () => redactedConfig(config),
    draining: () => draining(),
    serverLoad: () => serverLoad(),
    cluster: () => coordination,
    peers: exchange,
    storesPeer: sharedStores,
    arrivalsPeer: arrivalNotes === undefined ? undefined : { heard: (serviceId, arrival) => keepAlive.heard(serviceId, knownVersion(serviceId), arrival) },
    leaderPeer: leaderCalls === undefined ? undefined : { isLeader: () => coordination.isLeader(), expire: (serviceId, instanceId, from) => leaderCalls.expireAsLeader(serviceId, instanceId, from), noteExpiry: (serviceId, instanceId) => void autoscaler.expire(serviceId, instanceId) },
    expireInstance: (serviceId, instanceId) => (leaderCalls === undefined ? Promise.resolve(autoscaler.expire(serviceId, instanceId)) : leaderCalls.expire(serviceId, instanceId)),
    backendPeer: led instanceof LeaderBackend ? led : undefined,
    clock,
    log,
  })
  const separateAdmin = config.server.admin.host !== null
  const onRefused = (limit: 'connections' | 'connections-per-client'): void => void metrics.connectionsRefused.inc({ limit })
  const server = createRouterServer({ ...config.server, tls, routerHostnames, api: separateAdmin ? publicApiOnly(api) : api, proxy, stopUnderWay: proxy.stopUnderWay, websocket, onRefused, log })
  // On its own listener, every request is an API call.
  const adminServer = separateAdmin ? createRouterServer({ ...config.server, tls, routerHostnames, api, proxy: api, onRefused, log }) : undefined
  let adminPort: number | undefined
  draining = server.draining
  serverLoad = () => ({ inFlight: server.inFlight(), connections: server.connections() })

  let stopping: Promise<void> | undefined
  let memoryRelease: MemoryRelease | undefined

  return {
    url,
    adminUrl: () => {
      const host = config.server.admin.host
      if (host === null || adminPort === undefined) return undefined
      return `http://${authority(host, adminPort)}`
    },
    async start() {
      port = await server.listen(config.server.port, config.server.host)
      if (adminServer !== undefined) adminPort = await adminServer.listen(config.server.admin.port, config.server.admin.host as string)
      if (etcd !== undefined) {
        coordination = await EtcdCoordinator.start({
          client: etcd,
          prefix: etcdPrefix,
          routerId,
          url: () => advertisedUrl(config.server.advertiseUrl, config.server.host, port),
          urlIsOwnAddress: config.server.advertiseUrl === null,
          leaseTtlSecs: config.etcd.leaseTtlSecs,
          endpoints: config.etcd.endpoints,
          localLoads: () => localLoads(tracker),
          overShare: () => tracker.overLimit(),
          onLeaderChanged: () => activator.releaseAllHolds(),
          clock,
          log,
          // A configured secret is in no router's etcd: nothing to put back.
          ...(config.secret === null ? { onRejoined: () => restoreSharedRouterSecret(etcd, etcdPrefix, secret, log) } : {}),
        })
        coordination.onSlotViewChange(() => exchange?.viewChanged())
        exchange?.viewChanged()
      }
      autoscaler.start()
      gc.start()
      keepAlive.start()
      const { quietMs, growthMb } = config.server.memoryRelease
      if (quietMs > 0) {
        memoryRelease = startMemoryRelease({
          quietMs,
          growthBytes: growthMb * 1024 * 1024,
          requests: server.proxiedRequests,
          clock,
          log,
          onRelease: ({ rssBefore, rssAfter }) => {
            metrics.memoryReleases.inc()
            metrics.memoryReleasedBytes.inc(Math.max(0, rssBefore - rssAfter))
          },
        })
      }
      log.info({ port, host: config.server.host, adminPort, dataDir, backend: backend.kind, routerId, user, cluster: coordination.mode === 'etcd' ? { etcd: config.etcd.endpoints, prefix: etcdPrefix } : undefined }, 'maitre listening')
      return port
    },
    stop() {
      stopping ??= (async () => {
        log.info({ inFlight: server.inFlight() }, 'stopping: draining requests')
        if (led instanceof LeaderBackend) led.endLongPolls()
        // Its peers learn it drains before its listener closes, so its refusals are not taken
        // for its death; it keeps lending its idle slots meanwhile (its share stays its own).
        // The autoscaler keeps running while requests drain (they may need an instance), and
        // stops before the backend does: it never scales down because the router is leaving.
        await Promise.all([server.drain(config.server.shutdownTimeoutMs, coordination.announceDraining?.()), adminServer?.drain(config.server.shutdownTimeoutMs)])
        autoscaler.stop()
        gc.stop()
        keepAlive.stop()
        memoryRelease?.stop()
        await exchange?.close()
        await backend.close()
        await forwarder.close()
        await registry.flush()
        await peerSync?.close()
        await leaderCalls?.close()
        await arrivalNotes?.close()
        // Leaving the cluster revokes this router's lease: membership, load and leadership go at once.
        // The shared stores' watches are let go meanwhile: an etcd that does not answer is waited out once.
        await Promise.all([coordination.close(), sharedStores?.close()])
        etcd?.close()
        unlock()
        log.info('stopped')
      })()
      return stopping
    },
  }
}
