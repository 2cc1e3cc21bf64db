/**
 * The composition root: the only module that knows every other. It builds a router from a
 * Config, starts it, and stops it cleanly (drain, then stop every instance).
 */
import { existsSync, mkdirSync, readFileSync } from 'node:fs'
import type { Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { hostname, userInfo } from 'node:os'
import { join, resolve } from 'node:path'
import { randomBytes } from 'node:crypto'
import { LRUCache } from 'lru-cache'
import { createAdminHandler } from './admin/router.ts'
import { oneUserAuthenticator } from './auth/authenticator.ts'
import { LocalBackend } from './backends/local/local-backend.ts'
import { KubernetesBackend } from './backends/kubernetes.ts'
import { KubeApi } from './backends/kubernetes/api.ts'
import { kubeConnection } from './backends/kubernetes/connection.ts'
import type { Backend } from './backends/backend.ts'
import { instrumented } from './backends/instrumented.ts'
import { Metrics, type ServiceGauges } from './metrics.ts'
import { VERSION } from './version.ts'
import { InstanceTracker } from './backends/tracker.ts'
import { systemClock, type Clock } from './clock.ts'
import type { Config } from './config.ts'
import type { LaunchSpec } from './launch-spec.ts'
import { createLogger, type Logger } from './log.ts'
import { Forwarder } from './proxy/forward.ts'
import { createProxyHandler } from './proxy/handle.ts'
import { createRouterServer } from './proxy/server.ts'
import { Activator, routingOf } from './scaler/activator.ts'
import { Autoscaler } from './scaler/autoscaler.ts'
import { scaleUpQuanta } from './scaler/decide.ts'
import { GcRunner } from './scaler/gc-runner.ts'
import { Overrides } from './versions/overrides.ts'
import { Suspensions } from './versions/suspensions.ts'
import { TOKEN_METADATA } from './versions/parameters.ts'
import type { ServiceRecord } from './versions/registry.ts'
import { writeFileAtomic } from './storage/json-dir.ts'
import { launchSpecOf } from './versions/launch.ts'
import { ServiceRegistry } from './versions/registry.ts'
import { Resolver, type Resolution } from './versions/resolve.ts'
import { openFileTokenStore } from './versions/token-store.ts'
import { Tokens } from './versions/tokens.ts'

/** Waiter's defaults for the token settings that GC and fallback use, from the one parameter table. */
const TOKEN_DEFAULTS = {
  fallbackPeriodSecs: TOKEN_METADATA.get('fallback-period-secs')?.default as number,
  staleTimeoutMins: TOKEN_METADATA.get('stale-timeout-mins')?.default as number,
}

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
}

/** The router secret, generated once per data directory so instance passwords survive restarts. */
async function routerSecret(config: Config, dataDir: string): Promise<string> {
  if (config.secret !== null) return config.secret
  const path = join(dataDir, 'router-secret')
  if (existsSync(path)) return readFileSync(path, 'utf8').trim()
  const secret = randomBytes(24).toString('hex')
  await writeFileAtomic(path, `${secret}\n`)
  return secret
}

function redacted(config: Config): unknown {
  return { ...config, secret: config.secret === null ? null : '<redacted>' }
}

function createBackend(config: Config, dataDir: string, clock: Clock, log: Logger): Backend {
  if (config.backend.kind === 'kubernetes') {
    const k8s = config.backend.kubernetes
    return new KubernetesBackend({ ...k8s, api: new KubeApi(kubeConnection(k8s)), cluster: config.cluster, clock, log })
  }
  return new LocalBackend({ ...config.backend.local, workDir: config.backend.local.workDir ?? join(dataDir, 'instances'), clock, log })
}

export async function createApp(config: Config, injected: AppOverrides = {}): Promise<App> {
  const clock = injected.clock ?? systemClock
  const log = injected.log ?? createLogger(config.log.level)
  const dataDir = resolve(config.dataDir)
  mkdirSync(dataDir, { recursive: true })
  const secret = await routerSecret(config, dataDir)
  const user = config.auth.user ?? userInfo().username
  const routerId = `router-${randomBytes(4).toString('hex')}`
  const routerHostnames = new Set(['localhost', '127.0.0.1', '[::1]', hostname().toLowerCase(), config.server.host, ...config.server.hostnames.map((h) => h.toLowerCase())])

  // Stores open first: a corrupt store stops startup before anything runs.
  const tokens = new Tokens(openFileTokenStore(dataDir), clock, config.cluster)
  const registry = new ServiceRegistry(dataDir, clock)
  const overrides = new Overrides(dataDir, clock)
  const suspensions = new Suspensions(dataDir, clock)

  // Late-bound: the gauges read the tracker and autoscaler, which are built below.
  let gauges: () => Iterable<ServiceGauges> = () => []
  const metrics = new Metrics(
    { services: () => gauges(), tokens: () => [...tokens.entries()].length, versions: () => registry.all().length },
    { version: VERSION },
  )
  const backend = instrumented(createBackend(config, dataDir, clock, log), metrics)
  const tracker = new InstanceTracker({
    clock,
    ejectBaseMs: config.proxy.ejectBaseMs,
    maxEjectMs: config.proxy.maxEjectMs,
    onEject: (service, instance, periodMs, outcome) => {
      metrics.ejections.inc({ service })
      log.warn({ service, instance, periodMs, outcome }, 'instance ejected')
    },
  })
  const knownErrors = new Map<string, string>()
  backend.subscribe((serviceId) => {
    const state = backend.state(serviceId)
    if (state === undefined) {
      tracker.forget(serviceId)
      knownErrors.delete(serviceId)
      return
    }
    tracker.sync(serviceId, state.instances, state.deploymentError)
    if (state.deploymentError !== undefined && knownErrors.get(serviceId) !== state.deploymentError) {
      metrics.deploymentErrors.inc({ service: serviceId, reason: state.deploymentError })
    }
    if (state.deploymentError === undefined) knownErrors.delete(serviceId)
    else knownErrors.set(serviceId, state.deploymentError)
  })
  const activator = new Activator(backend, tracker, log)
  const parametersOf = (resolution: Resolution): Readonly<Record<string, unknown>> => {
    const record = overrides.get(resolution.serviceId)
    return record === undefined ? resolution.effective : { ...resolution.effective, ...record.overrides }
  }
  const recordParameters = (record: ServiceRecord): Readonly<Record<string, unknown>> => overrides.parameters(record.id, record.core)
  const launchSpecs = new LRUCache<string, LaunchSpec>({ max: config.proxy.resolutionCacheSize })
  const specOf = (resolution: Resolution): LaunchSpec => {
    let spec = launchSpecs.get(resolution.serviceId)
    if (spec === undefined) {
      spec = launchSpecOf(resolution.serviceId, parametersOf(resolution), { cluster: config.cluster, secret })
      launchSpecs.set(resolution.serviceId, spec)
    }
    return spec
  }
  const autoscaler = new Autoscaler(
    {
      backend,
      tracker,
      serviceOf: (serviceId) => {
        const record = registry.get(serviceId)
        if (record === undefined) return undefined
        const p = recordParameters(record)
        return {
          policy: {
            minInstances: p['min-instances'] as number,
            maxInstances: p['max-instances'] as number,
            concurrencyLevel: p['concurrency-level'] as number,
            scaleFactor: p['scale-factor'] as number,
            scaleUpFactor: p['scale-up-factor'] as number,
            scaleDownFactor: p['scale-down-factor'] as number,
            jitterThreshold: p['jitter-threshold'] as number,
            expiredInstanceRestartRate: p['expired-instance-restart-rate'] as number,
            maxScaleUpPerDecision: scaleUpQuanta(p['cpus'] as number, p['mem'] as number),
          },
          instanceExpiryMs: (p['instance-expiry-mins'] as number) * 60_000,
        }
      },
      clock,
      log,
      onDecision: (service, decision) => {
        if (decision.direction !== 'stable') metrics.scalingDecisions.inc({ service, direction: decision.direction })
      },
    },
    {
      tickMs: config.scaler.tickMs,
      burst: { threshold: config.scaler.burstThreshold, holdMs: config.scaler.burstHoldMs, tickMs: config.scaler.tickMs },
      interKillMs: config.scaler.interKillMs,
    },
  )
  overrides.onChange((serviceId) => {
    launchSpecs.delete(serviceId)
    const record = registry.get(serviceId)
    if (record !== undefined) tracker.configure(serviceId, routingOf(recordParameters(record)))
  })
  const resolver = new Resolver(tokens, registry, {
    routerHostnames,
    allowOnTheFly: config.proxy.allowOnTheFly,
    serviceIdPrefix: config.serviceIdPrefix,
    cacheSize: config.proxy.resolutionCacheSize,
    fallbackPeriodSecs: TOKEN_DEFAULTS.fallbackPeriodSecs,
  })
  const gc = new GcRunner(
    {
      backend,
      tracker,
      registry,
      tokens,
      parametersOf: recordParameters,
      onCollected: async (serviceId, reason) => {
        metrics.gcDeletions.inc({ reason })
        await metrics.removeService(serviceId)
        launchSpecs.delete(serviceId)
        await overrides.clear(serviceId)
        resolver.forget(serviceId)
      },
      clock,
      log,
    },
    {
      intervalMs: config.scaler.gcIntervalMs,
      brokenTimeoutMs: config.scaler.brokenServiceTimeoutMins * 60_000,
      fallbackMs: TOKEN_DEFAULTS.fallbackPeriodSecs * 1000,
      staleTimeoutMs: TOKEN_DEFAULTS.staleTimeoutMins * 60_000,
    },
  )
  gauges = function* () {
    for (const state of backend.services()) {
      const load = tracker.load(state.id)
      const healthy = state.instances.filter((i) => i.healthy).length
      yield { service: state.id, inFlight: load.inFlight, queued: load.queued, healthy, starting: state.instances.length - healthy, target: autoscaler.snapshot(state.id)?.target }
    }
  }
  const forwarder = new Forwarder({ connectTimeoutMs: config.proxy.connectTimeoutMs })
  const authenticator = oneUserAuthenticator(user)

  let draining = false
  let inFlight = 0
  let idle: (() => void) | undefined
  const counted = <A extends unknown[]>(fn: (...args: A) => Promise<void>) => async (...args: A): Promise<void> => {
    inFlight += 1
    try {
      await fn(...args)
    } finally {
      inFlight -= 1
      if (inFlight === 0) idle?.()
    }
  }

  const proxy = createProxyHandler({
    authenticator,
    resolver,
    activator,
    tracker,
    forwarder,
    launchSpecOf: specOf,
    parametersOf,
    onQueued: (serviceId) => autoscaler.poke(serviceId),
    isSuspended: (serviceId) => suspensions.get(serviceId) !== undefined,
    metrics,
    timeouts: config.proxy,
    routerId,
    clock,
    log,
    accessLog: config.log.access,
  })
  const api = createAdminHandler({
    authenticator,
    resolver,
    tokens,
    registry,
    backend,
    tracker,
    routerId,
    routerHostnames,
    serviceIdPrefix: config.serviceIdPrefix,
    overrides,
    autoscaler,
    gc,
    metrics,
    suspensions,
    activator,
    launchSpecOf: specOf,
    parametersOf,
    settings: () => redacted(config),
    draining: () => draining,
    log,
  })
  const server: Server = createRouterServer({
    ...config.server,
    routerHostnames,
    api: counted(api),
    proxy: counted(proxy),
    draining: () => draining,
  })

  let port = config.server.port
  let stopping: Promise<void> | undefined

  return {
    url: () => `http://${config.server.host.includes(':') ? `[${config.server.host}]` : config.server.host}:${port}`,
    async start() {
      await new Promise<void>((resolveListen, reject) => {
        server.once('error', reject)
        server.listen(config.server.port, config.server.host, () => {
          server.off('error', reject)
          resolveListen()
        })
      })
      port = (server.address() as AddressInfo).port
      routerHostnames.add(`${config.server.host}`)
      autoscaler.start()
      gc.start()
      log.info({ port, host: config.server.host, dataDir, backend: backend.kind, routerId, user }, 'maitre listening')
      return port
    },
    stop() {
      stopping ??= (async () => {
        draining = true
        log.info({ inFlight }, 'stopping: draining requests')
        const closed = new Promise<void>((done) => server.close(() => done()))
        if (inFlight > 0) {
          await new Promise<void>((done) => {
            idle = done
            setTimeout(done, config.server.shutdownTimeoutMs).unref()
          })
        }
        server.closeAllConnections()
        await closed
        autoscaler.stop() // never scale down because we are leaving
        gc.stop()
        await backend.close()
        await forwarder.close()
        await registry.flush()
        log.info('stopped')
      })()
      return stopping
    },
  }
}
