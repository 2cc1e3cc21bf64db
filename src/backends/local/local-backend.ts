/**
 * The embedded backend: each instance is a local process group, run with Waiter's shell-scheduler
 * semantics (reference §7.2) — `$PORT0..` from a port range, a sandbox directory holding stdout
 * and stderr, WAITER_* environment, HTTP health checks (every few tens of ms until the first
 * success, so cold starts cost the app's own start time), a grace period, a memory limit, relaunch
 * to the requested count with backoff, and SIGTERM then SIGKILL of the whole group. Nothing is
 * left behind: when an instance ends, what escaped its group (setsid, daemons) is killed and its
 * sandbox removed (but for the last few failed ones, kept for their logs); its stdout and stderr
 * are rotated past maxLogBytes; and at start-up whatever a crashed router left is swept away.
 */
import { mkdirSync, rmdirSync, writeFileSync } from 'node:fs'
import { readdir, rmdir } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { constants as osConstants } from 'node:os'
import { randomBytes } from 'node:crypto'
import type { Clock } from '../../clock.ts'
import type { LocalBackendConfig } from '../../config.ts'
import type { Logger } from '../../log.ts'
import { misconfigured } from '../../errors.ts'
import type { LaunchSpec } from '../../launch-spec.ts'
import type { Backend, EndedInstance, Instance, InstanceFlag, ServiceState } from '../backend.ts'
import { deploymentError } from '../deployment-error.ts'
import { afterFailure, afterHealthy, afterNoneHealthy, NO_FAILURES, relaunchDelayMs, type FailureRun } from '../relaunch-backoff.ts'
import { refuseUnsupportedProtos, ServiceListeners } from '../service-listeners.ts'
import { HealthProber, type ProbeResult } from './health-probe.ts'
import { LeftoverSweeper, SandboxScanner } from './leftovers.ts'
import { rotateOversizedLogs } from './log-rotation.ts'
import { treeResidentBytes } from './memory.ts'
import { PortAllocator } from './ports.ts'
import { removeTree } from './remove-tree.ts'
import { claimWorkDir, WORK_DIR_OWN } from './work-dir.ts'
import { startProcessGroup, type ProcessGroup } from './process-group.ts'
import { authority } from '../../http/authority.ts'

/** Names the record of a launch that failed before any process ran. */
const LAUNCH_FAILURE_SUFFIX = '.launch-failure'

export interface LocalBackendOptions extends Omit<LocalBackendConfig, 'workDir'> {
  readonly workDir: string
  /** The work directory was given explicitly, not the default under the data directory: it must be maitre's (work-dir.ts). */
  readonly claimWorkDir?: boolean
  readonly clock: Clock
  readonly log: Logger
}

const ENDED_KEPT = 10
/** The longest pause between two checks of an instance that has not passed one yet. */
const STARTUP_PROBE_MAX_MS = 1000
/** The shortest wait before a failed instance is launched again, whatever the back-off settings. */
const MIN_RELAUNCH_MS = 100
/** Health checks the router could not make (out of file descriptors) are said at most this often. */
const UNPROBED_WARN_EVERY_MS = 10_000
/** Written into each sandbox: what a later router needs to find the instance's processes. */
const INSTANCE_FILE = 'maitre-instance.json'
const LOG_FILES = ['stdout', 'stderr'] as const

interface KillReason {
  readonly failed: boolean
  readonly message: string
}

interface LocalInstance {
  readonly id: string
  readonly serviceId: string
  readonly ports: readonly number[]
  readonly startedAt: number
  readonly sandbox: string
  readonly group: ProcessGroup
  readonly flags: Set<InstanceFlag>
  healthy: boolean
  everHealthy: boolean
  consecutiveFailures: number
  killReason: KillReason | undefined
  cancelProbe: (() => void) | undefined
}

interface LocalService {
  readonly spec: LaunchSpec
  requested: number
  readonly instances: Map<string, LocalInstance>
  failed: EndedInstance[]
  killed: EndedInstance[]
  failedSinceHealthy: EndedInstance[]
  launching: number
  /** Failures in a row and the healthy stretch that would end them (relaunch-backoff.ts). */
  failureRun: FailureRun
  nextLaunchAt: number
  cancelRelaunch: (() => void) | undefined
  deploymentError: string | undefined
  deleted: boolean
}

export class LocalBackend implements Backend {
  readonly kind = 'local' as const
  readonly #o: LocalBackendOptions
  readonly #services = new Map<string, LocalService>()
  /** Instances being stopped, by pid, so close() can wait for them too. */
  readonly #stopping = new Map<number, Promise<unknown>>()
  /** Instances killed gracefully and still in their termination grace, by id: a forced kill cuts it short. */
  readonly #inGrace = new Map<string, LocalInstance>()
  /** Every instance still running or being cleaned up after, so close() can wait for all of it. */
  readonly #finishing = new Set<Promise<void>>()
  /** The start-up sweep of what a crashed router left behind; nothing launches before it is done. */
  readonly #swept: Promise<void>
  readonly #listeners: ServiceListeners
  readonly #ports: PortAllocator
  readonly #prober: HealthProber
  /** One scan of /proc for every instance that ended meanwhile (leftovers.ts). */
  readonly #leftovers: LeftoverSweeper
  #cancelMemoryCheck: (() => void) | undefined
  #closed = false
  #unprobedWarnedAt = Number.NEGATIVE_INFINITY
  /** Releases the work directory's lock, if this backend claimed it. */
  readonly #releaseWorkDir: () => void

  constructor(options: LocalBackendOptions) {
    // Absolute and normalised: sandboxes are found by their path's prefix (a trailing slash or a
    // relative workDir would keep the start-up sweep from finding a dead router's leftovers).
    this.#o = { ...options, workDir: resolve(options.workDir) }
    this.#listeners = new ServiceListeners(options.log)
    this.#ports = new PortAllocator(options.portRange, options.host, options.portRestMs, () => options.clock.now())
    this.#prober = new HealthProber(options.healthCheckTimeoutMs)
    const scanner = new SandboxScanner({
      onGiveUp: (what) =>
        what === 'listing'
          ? options.log.warn('the /proc listing did not answer within 2 s: this sweep for processes that escaped instances found nothing')
          : options.log.warn({ pid: what }, 'a process’s environment did not answer within 2 s (stuck in the kernel?): skipped by leftover sweeps until it does'),
    })
    this.#leftovers = new LeftoverSweeper(scanner.scan)
    // Before the sweep: it kills and removes whatever the directory holds.
    this.#releaseWorkDir = claimWorkDir(this.#o.workDir, options.claimWorkDir === true)
    mkdirSync(this.#o.workDir, { recursive: true })
    this.#swept = this.#sweepLeftovers()
    this.#scheduleMemoryCheck()
  }

  /** Resolves once the start-up sweep is done (ensureService waits for it anyway). */
  ready(): Promise<void> {
    return this.#swept
  }

  async ensureService(spec: LaunchSpec): Promise<void> {
    if (this.#closed) throw new Error('the local backend is closed')
    await this.#swept
    if (this.#closed) throw new Error('the local backend is closed')
    if (this.#services.has(spec.serviceId)) return
    if (spec.cmdType === 'docker' || spec.image !== undefined) {
      const field = spec.image !== undefined ? 'image' : 'cmd-type'
      // Waiter's wording for a command type its scheduler cannot run, and why.
      throw misconfigured([{ field, message: field === 'cmd-type' ? 'Command type docker is not supported (the local backend runs shell commands only)' : `The local backend runs shell commands only; ${field} is not supported here.` }])
    }
    refuseUnsupportedProtos(spec, { backend: ['http', 'https', 'h2c', 'h2'], healthCheck: ['http', 'https', 'h2c', 'h2'] })
    const service: LocalService = {
      spec,
      requested: spec.minInstances,
      instances: new Map(),
      failed: [],
      killed: [],
      failedSinceHealthy: [],
      launching: 0,
      failureRun: NO_FAILURES,
      nextLaunchAt: 0,
      cancelRelaunch: undefined,
      deploymentError: undefined,
      deleted: false,
    }
    this.#services.set(spec.serviceId, service)
    this.#o.log.info({ service: spec.serviceId, instances: service.requested }, 'service created')
    this.#reconcile(service)
  }

  async scale(serviceId: string, instances: number): Promise<void> {
    const service = this.#services.get(serviceId)
    if (service === undefined) return
    service.requested = Math.max(0, instances)
    this.#shrink(service)
    this.#reconcile(service)
  }

  /**
   * Stops instances beyond the requested count, as a ReplicaSet would: those not yet healthy
   * first, then the youngest. (The autoscaler scales down through killInstance, naming an idle
   * instance; this is for callers that only say how many.)
   */
  #shrink(service: LocalService): void {
    const surplus = service.instances.size - service.requested
    if (surplus <= 0) return
    const victims = [...service.instances.values()]
      .sort((a, b) => Number(a.healthy) - Number(b.healthy) || b.startedAt - a.startedAt)
      .slice(0, surplus)
    for (const victim of victims) this.#kill(service, victim, { failed: false, message: 'Scaled down' }, 'SIGTERM')
  }

  async killInstance(serviceId: string, instanceId: string, options: { readonly force?: boolean } = {}): Promise<boolean> {
    const service = this.#services.get(serviceId)
    const instance = service?.instances.get(instanceId)
    if (service !== undefined && instance === undefined && options.force === true) {
      // Already killed, within its termination grace: SIGKILL now (the count dropped with the first kill).
      const going = this.#inGrace.get(instanceId)
      if (going === undefined || going.serviceId !== serviceId) return false
      going.group.signal('SIGKILL')
      this.#o.log.info({ service: serviceId, instance: instanceId }, 'instance killed at once, its termination grace cut short')
      return true
    }
    if (service === undefined || instance === undefined) return false
    service.requested = Math.max(0, service.requested - 1)
    this.#kill(service, instance, { failed: false, message: options.force === true ? 'Force-killed by maitre' : 'Killed by maitre' }, options.force === true ? 'SIGKILL' : 'SIGTERM')
    return true
  }

  async deleteService(serviceId: string): Promise<void> {
    const service = this.#services.get(serviceId)
    if (service === undefined) return
    service.deleted = true
    service.requested = 0
    service.cancelRelaunch?.()
    // Signalled, not waited for: an instance may take its whole termination grace, and the
    // collection (or the request that waits on it to start the version again) need not. Each
    // one's exit removes its sandbox, and the last one the service's directory.
    const ending = service.instances.size
    for (const instance of [...service.instances.values()]) this.#kill(service, instance, { failed: false, message: 'Service deleted' }, 'SIGTERM')
    this.#services.delete(serviceId)
    this.#listeners.emit(serviceId)
    // The sandboxes kept for failed instances' logs go with the service.
    await Promise.all(service.failed.map((f) => this.#removeSandbox(f.logDirectory)))
    if (ending === 0) this.#removeServiceDir(serviceId)
    this.#o.log.info({ service: serviceId, ending }, 'service deleted')
  }

  state(serviceId: string): ServiceState | undefined {
    const service = this.#services.get(serviceId)
    return service === undefined ? undefined : this.#view(service)
  }

  requested(serviceId: string): number | undefined {
    return this.#services.get(serviceId)?.requested
  }

  services(): readonly ServiceState[] {
    return [...this.#services.values()].map((s) => this.#view(s))
  }

  subscribe(listener: (serviceId: string) => void): () => void {
    return this.#listeners.subscribe(listener)
  }

  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    // A stop during start-up: the sweep must be over before the work directory is let go, or
    // it would go on removing what the next router there makes.
    await this.#swept.catch(() => undefined)
    this.#cancelMemoryCheck?.()
    for (const service of this.#services.values()) {
      service.deleted = true
      service.cancelRelaunch?.()
      for (const instance of service.instances.values()) {
        this.#kill(service, instance, { failed: false, message: 'maitre stopped' }, 'SIGTERM')
      }
    }
    await Promise.all(this.#stopping.values())
    await Promise.all(this.#finishing)
    await this.#prober.close()
    // Nothing runs any more: no sandbox is kept (the next start would sweep them anyway).
    await this.#removeSandboxes()
    this.#releaseWorkDir()
  }

  #view(service: LocalService): ServiceState {
    const instances: Instance[] = [...service.instances.values()].map((i) => ({
      id: i.id,
      serviceId: i.serviceId,
      host: this.#o.host,
      port: i.ports[0] as number,
      extraPorts: i.ports.slice(1),
      proto: service.spec.backendProto,
      startedAt: i.startedAt,
      healthy: i.healthy,
      logDirectory: i.sandbox,
      flags: i.flags,
    }))
    return {
      id: service.spec.serviceId,
      requested: service.requested,
      instances,
      failed: service.failed,
      killed: service.killed,
      deploymentError: service.deploymentError,
    }
  }

  /** Launches instances until the requested count runs, waiting out the restart backoff. */
  #reconcile(service: LocalService): void {
    if (service.deleted || this.#closed || service.cancelRelaunch !== undefined) return
    const wait = service.nextLaunchAt - this.#o.clock.now()
    if (wait > 0) {
      service.cancelRelaunch = this.#o.clock.setTimeout(() => {
        service.cancelRelaunch = undefined
        this.#reconcile(service)
      }, wait)
      return
    }
    const missing = service.requested - service.instances.size - service.launching
    for (let i = 0; i < missing; i++) void this.#launch(service)
  }

  async #launch(service: LocalService): Promise<void> {
    const { spec } = service
    service.launching += 1
    let launching = true
    let ports: number[] = []
    // Started but not yet tracked: a launch that fails from here on must not leave it running.
    let untracked: ProcessGroup | undefined
    let sandboxMade: string | undefined
    try {
      ports = await this.#ports.reserve(spec.ports)
      // Scaled down (or deleted) while the ports were found: a launch no longer wanted is not
      // made, or the service would run more than it was told (#shrink sees running ones only).
      if (service.deleted || service.instances.size + service.launching - 1 >= service.requested) {
        this.#ports.release(ports)
        return
      }
      const id = `${spec.serviceId}.${randomBytes(5).toString('hex')}`
      const sandbox = join(this.#o.workDir, spec.serviceId, id)
      // Its own user's only: the sandbox holds the command (secrets included) and the logs, and
      // other users of the host have no business there.
      mkdirSync(sandbox, { recursive: true, mode: 0o700 })
      sandboxMade = sandbox
      const env: Record<string, string> = {
        PATH: process.env['PATH'] ?? '/usr/local/bin:/usr/bin:/bin',
        ...(process.env['LANG'] === undefined ? {} : { LANG: process.env['LANG'] }),
        ...spec.env,
        HOME: sandbox,
        MESOS_SANDBOX: sandbox,
        WAITER_SANDBOX: sandbox,
        PORT: String(ports[0]),
      }
      ports.forEach((port, index) => {
        env[`PORT${index}`] = String(port)
      })
      // Each sandbox holds its own run script: nothing of an instance outlives its sandbox.
      const runScript = join(sandbox, 'run-service.sh')
      writeFileSync(runScript, `#!/bin/bash\n\n${spec.command}\n`, { mode: 0o700 })
      const group = startProcessGroup(runScript, sandbox, env)
      untracked = group
      const instance: LocalInstance = {
        id,
        serviceId: spec.serviceId,
        ports,
        startedAt: this.#o.clock.now(),
        sandbox,
        group,
        flags: new Set(),
        healthy: false,
        everHealthy: false,
        consecutiveFailures: 0,
        killReason: undefined,
        cancelProbe: undefined,
      }
      writeFileSync(join(sandbox, INSTANCE_FILE), `${JSON.stringify({ id, serviceId: spec.serviceId, pid: group.pid, processGroup: group.pid, startedAt: instance.startedAt })}\n`)
      service.instances.set(id, instance)
      // Tracked from here: its exit cleans up after it.
      untracked = undefined
      sandboxMade = undefined
      this.#o.log.info({ service: spec.serviceId, instance: id, pid: group.pid, port: ports[0] }, 'instance started')
      const finished = group.exited
        .then((exit) => this.#onExit(service, instance, exit.code, exit.signal))
        .catch((err: unknown) => this.#o.log.error({ err, service: spec.serviceId, instance: id }, 'cleaning up after an instance failed'))
      this.#finishing.add(finished)
      void finished.then(() => this.#finishing.delete(finished))
      this.#scheduleProbe(service, instance, 0)
      this.#listeners.emit(spec.serviceId)
    } catch (err) {
      // Its ports go back to the pool: the process holding them goes first.
      untracked?.signal('SIGKILL')
      // Nothing records it (the failure has no log directory): nothing else would remove it.
      void (untracked?.exited ?? Promise.resolve()).then(() => this.#removeSandbox(sandboxMade))
      this.#ports.release(ports)
      this.#o.log.error({ err, service: spec.serviceId }, 'instance launch failed')
      // No longer launching before the failure is recorded: recording it reconciles the count,
      // which must see this launch as the missing instance it is (with no back-off, nothing
      // else would launch it again).
      service.launching -= 1
      launching = false
      this.#recordEnded(service, {
        id: `${spec.serviceId}${LAUNCH_FAILURE_SUFFIX}`,
        serviceId: spec.serviceId,
        host: this.#o.host,
        port: 0,
        startedAt: this.#o.clock.now(),
        endedAt: this.#o.clock.now(),
        exitCode: undefined,
        flags: new Set(),
        message: `Launch failed: ${(err as Error).message}`,
        logDirectory: undefined,
      }, true)
    } finally {
      if (launching) service.launching -= 1
    }
  }

  #scheduleProbe(service: LocalService, instance: LocalInstance, delayMs: number): void {
    instance.cancelProbe = this.#o.clock.setTimeout(() => {
      instance.cancelProbe = undefined
      void this.#probe(service, instance)
    }, delayMs)
  }

  /**
   * The instance is still this backend's to check: not killed, and not exited on its own (whose
   * probe in flight at its exit must not go on checking its port, which a later instance may get).
   */
  #probed(service: LocalService, instance: LocalInstance): boolean {
    return instance.killReason === undefined && service.instances.get(instance.id) === instance
  }

  /**
   * Waiter's two checks: the health check (readiness) decides whether the instance takes
   * requests, at every round; once it has been healthy, the liveness check (its own URL and port,
   * when the descriptor gives one) decides whether it is killed as dead, after
   * `liveness-check-max-consecutive-failures` in a row, and only with a grace period. An
   * instance whose readiness fails while it is alive stays, out of rotation.
   */
  async #probe(service: LocalService, instance: LocalInstance): Promise<void> {
    if (!this.#probed(service, instance)) return
    const { spec } = service
    const readiness = await this.#check(service, instance, spec.healthCheck)
    if (!this.#probed(service, instance)) return
    const ownLiveness = instance.everHealthy && spec.gracePeriodMs > 0 && !sameCheck(spec.livenessCheck, spec.healthCheck)
    const liveness = ownLiveness ? await this.#check(service, instance, spec.livenessCheck) : readiness
    if (!this.#probed(service, instance)) return
    // The router out of file descriptors (a connection flood, say) cannot check anyone: a round
    // it could not make is no failure of the instance's (it would be taken out of rotation, then
    // killed, every instance alike).
    if (readiness.inconclusive || liveness.inconclusive) {
      const now = this.#o.clock.now()
      if (now - this.#unprobedWarnedAt >= UNPROBED_WARN_EVERY_MS) {
        this.#unprobedWarnedAt = now
        this.#o.log.warn({ service: spec.serviceId, instance: instance.id }, 'health checks not made: the router is out of resources (file descriptors?); instances keep their state')
      }
    } else this.#recordProbe(service, instance, readiness, liveness)
    if (!this.#probed(service, instance)) return
    this.#scheduleProbe(service, instance, instance.everHealthy ? spec.healthCheck.intervalMs : this.#startupProbeDelay(spec, instance))
  }

  /**
   * Until its first success an instance is checked often, so a cold start ends as soon as it
   * listens, but never more often than a tenth of the time it has taken so far (up to a second,
   * or its health-check interval if shorter): that adds at most a tenth to a start's wait, and an
   * instance that never listens (with no grace period, for ever) costs a check a second, not 40.
   */
  #startupProbeDelay(spec: LaunchSpec, instance: LocalInstance): number {
    const age = this.#o.clock.now() - instance.startedAt
    return Math.max(this.#o.startupProbeIntervalMs, Math.min(age / 10, STARTUP_PROBE_MAX_MS, spec.healthCheck.intervalMs))
  }

  #check(service: LocalService, instance: LocalInstance, check: LaunchSpec['healthCheck']): Promise<ProbeResult> {
    const port = instance.ports[check.portIndex] ?? instance.ports[0]
    const scheme = check.proto === 'https' || check.proto === 'h2' ? 'https' : 'http'
    return this.#prober.probe({
      url: `${scheme}://${authority(this.#o.host, String(port))}${check.url}`,
      authorization: check.authenticated ? service.spec.authorization : undefined,
      h2c: check.proto === 'h2c',
    })
  }

  #recordProbe(service: LocalService, instance: LocalInstance, result: ProbeResult, liveness: ProbeResult): void {
    const { spec } = service
    if (result.connected) instance.flags.add('has-connected')
    if (result.responded) instance.flags.add('has-responded')
    if (result.timedOut) instance.flags.add('timeout-exception')
    if (result.status === 401) instance.flags.add('health-check-401')
    else instance.flags.delete('health-check-401')
    const wasHealthy = instance.healthy
    instance.healthy = result.ok
    if (result.ok) service.failureRun = afterHealthy(service.failureRun, this.#o.clock.now())
    else if (wasHealthy && ![...service.instances.values()].some((i) => i.healthy)) service.failureRun = afterNoneHealthy(service.failureRun)
    if (result.ok && !instance.everHealthy) {
      instance.everHealthy = true
      instance.consecutiveFailures = 0
      service.failedSinceHealthy = []
      this.#o.log.info({ service: spec.serviceId, instance: instance.id, startupMs: this.#o.clock.now() - instance.startedAt }, 'instance healthy')
    } else if (!instance.everHealthy) {
      const age = this.#o.clock.now() - instance.startedAt
      if (spec.gracePeriodMs > 0 && age >= spec.gracePeriodMs) {
        instance.flags.add('never-passed-health-checks')
        this.#kill(service, instance, { failed: true, message: `Exceeded grace period of ${spec.gracePeriodMs / 1000} seconds` }, 'SIGKILL')
        return
      }
    } else if (liveness.ok) {
      instance.consecutiveFailures = 0
    } else {
      instance.consecutiveFailures += 1
      if (spec.gracePeriodMs > 0 && instance.consecutiveFailures >= spec.livenessCheck.maxConsecutiveFailures) {
        this.#kill(service, instance, { failed: true, message: `Failed ${instance.consecutiveFailures} consecutive health checks` }, 'SIGKILL')
        return
      }
    }
    const errorChanged = this.#updateDeploymentError(service)
    if (wasHealthy !== instance.healthy || errorChanged) this.#listeners.emit(spec.serviceId)
  }

  #kill(service: LocalService, instance: LocalInstance, reason: KillReason, signal: NodeJS.Signals): void {
    if (instance.killReason !== undefined) return
    instance.killReason = reason
    instance.healthy = false
    instance.cancelProbe?.()
    service.instances.delete(instance.id)
    const pid = instance.group.pid
    this.#stopping.set(pid, instance.group.exited)
    void instance.group.exited.then(() => this.#stopping.delete(pid))
    instance.group.signal(signal)
    if (signal !== 'SIGKILL') {
      const delay = Math.max(service.spec.terminationGraceMs, this.#o.minSigkillDelayMs)
      const timer = setTimeout(() => instance.group.signal('SIGKILL'), delay)
      this.#inGrace.set(instance.id, instance)
      void instance.group.exited.then(() => {
        clearTimeout(timer)
        this.#inGrace.delete(instance.id)
      })
    }
    this.#o.log.info({ service: service.spec.serviceId, instance: instance.id, reason: reason.message, signal }, 'instance killed')
    this.#listeners.emit(service.spec.serviceId)
  }

  async #onExit(service: LocalService, instance: LocalInstance, code: number | null, signal: NodeJS.Signals | null): Promise<void> {
    instance.cancelProbe?.()
    const selfExit = instance.killReason === undefined
    if (selfExit) {
      instance.healthy = false
      service.instances.delete(instance.id)
    }
    const exitCode = selfExit ? (code ?? 128 + signalNumber(signal)) : undefined
    const message = instance.killReason?.message ?? `Exited with code ${String(exitCode)}`
    const failed = selfExit || instance.killReason?.failed === true
    this.#o.log[failed ? 'warn' : 'info']({ service: service.spec.serviceId, instance: instance.id, exitCode, signal, reason: message }, 'instance exited')
    this.#recordEnded(service, {
      id: instance.id,
      serviceId: instance.serviceId,
      host: this.#o.host,
      port: instance.ports[0] as number,
      startedAt: instance.startedAt,
      endedAt: this.#o.clock.now(),
      exitCode,
      flags: instance.flags,
      message,
      // A failed instance's sandbox is kept for its logs; one killed on purpose has nothing to tell.
      logDirectory: failed ? instance.sandbox : undefined,
    }, failed, instance.everHealthy)
    // The group is gone; whatever escaped it (setsid, a daemon) is not, until now.
    const leftovers = await this.#leftovers.sweep(instance.sandbox, instance.group.pid).catch((err: unknown) => {
      // The ports and the sandbox are still released: a failed sweep must not leak them.
      this.#o.log.error({ err, service: service.spec.serviceId, instance: instance.id }, 'could not look for processes that escaped the instance')
      return []
    })
    if (leftovers.length > 0) this.#o.log.warn({ service: service.spec.serviceId, instance: instance.id, pids: leftovers }, 'killed processes that escaped the instance')
    // Only now: an escaped process may have held one of them.
    this.#ports.release(instance.ports)
    // (A deleted service's failed instance has nobody left to read its logs.)
    if (!failed || service.deleted) await this.#removeSandbox(instance.sandbox)
    await this.#pruneFailedSandboxes(service)
    // The last instance of a deleted service takes the service's directory with it.
    if (service.deleted) this.#removeServiceDir(service.spec.serviceId)
  }

  /**
   * A deleted service's directory, once empty, unless the version runs again already (started
   * while the old instances took their grace): checked and removed in one step of the event
   * loop, so no launch of the new one can come between.
   */
  #removeServiceDir(serviceId: string): void {
    if (this.#services.has(serviceId)) return
    try {
      rmdirSync(join(this.#o.workDir, serviceId))
    } catch {
      // Not empty (another instance still ends), or gone already.
    }
  }

  /** Keeps the sandboxes of the newest failedSandboxesKept failed instances of a service; older ones go. */
  async #pruneFailedSandboxes(service: LocalService): Promise<void> {
    const keep = this.#o.failedSandboxesKept
    const old = service.failed.slice(keep).filter((f) => f.logDirectory !== undefined)
    if (old.length === 0) return
    service.failed = service.failed.map((f, index) => (index < keep ? f : { ...f, logDirectory: undefined }))
    await Promise.all(old.map((f) => this.#removeSandbox(f.logDirectory)))
  }

  /**
   * What a router that died (even by SIGKILL) left: its instances' process groups die with it
   * (their watchdogs), but what escaped a group lives on; kill it, and remove every sandbox.
   */
  async #sweepLeftovers(): Promise<void> {
    const killed = await this.#leftovers.sweep(this.#o.workDir)
    if (killed.length > 0) this.#o.log.warn({ workDir: this.#o.workDir, pids: killed }, 'killed processes a previous router left running')
    await this.#removeSandboxes()
  }

  async #removeSandboxes(): Promise<void> {
    const entries = (await readdir(this.#o.workDir).catch(() => [])).filter((entry) => !WORK_DIR_OWN.has(entry))
    await Promise.all(entries.map((entry) => this.#removeSandbox(join(this.#o.workDir, entry))))
  }

  /**
   * Never fails: a sandbox that cannot go is said so in the log, and whatever removed it (a
   * kill, a delete, a stop) goes on. A process dying at that moment may still create a file:
   * one retry.
   */
  async #removeSandbox(sandbox: string | undefined): Promise<void> {
    if (sandbox === undefined) return
    await removeTree(sandbox).catch(() => removeTree(sandbox)).catch((err: unknown) => this.#o.log.warn({ err, path: sandbox }, 'could not remove a sandbox'))
  }

  /**
   * `everHealthy`: the instance passed its health checks before it ended. Such a failure is listed
   * and backed off from, but is no step towards a deployment error: its command and health check
   * work (several that crash together under load would otherwise read as an invalid startup
   * command, and every request would be refused until a relaunch is healthy).
   */
  #recordEnded(service: LocalService, ended: EndedInstance, failed: boolean, everHealthy = false): void {
    if (failed) {
      const failed = [ended, ...service.failed]
      // An entry that falls off the list takes its sandbox with it (nothing else would remove it).
      for (const dropped of failed.slice(ENDED_KEPT)) void this.#removeSandbox(dropped.logDirectory)
      service.failed = failed.slice(0, ENDED_KEPT)
      if (!everHealthy) service.failedSinceHealthy = [...service.failedSinceHealthy, ended].slice(-ENDED_KEPT)
      const rule = { baseMs: this.#o.restartBackoffBaseMs, factor: service.spec.restartBackoffFactor, maxMs: this.#o.restartBackoffMaxMs }
      const now = this.#o.clock.now()
      const othersHealthy = [...service.instances.values()].some((i) => i.healthy)
      service.failureRun = afterFailure(service.failureRun, now, rule, othersHealthy)
      // (Never at once: a launch that keeps failing, a port range full say, would spin.)
      service.nextLaunchAt = now + Math.max(MIN_RELAUNCH_MS, relaunchDelayMs(service.failureRun, rule))
    } else {
      service.killed = [ended, ...service.killed].slice(0, ENDED_KEPT)
    }
    this.#updateDeploymentError(service)
    if (!service.deleted) {
      this.#reconcile(service)
      this.#listeners.emit(service.spec.serviceId)
    }
  }

  /** Returns whether the deployment error changed. */
  #updateDeploymentError(service: LocalService): boolean {
    const instances = [...service.instances.values()]
    const healthy = instances.filter((i) => i.healthy).length
    // A launch that failed before any process ran (no free port, a sandbox that could not be
    // made) says nothing of the service's command or health check: Waiter's rules judge the
    // instances that ran, and a version that could not be launched at all gets the launch's
    // own reason rather than "Unable to connect to run health checks".
    const ran = service.failedSinceHealthy.filter((f) => !f.id.endsWith(LAUNCH_FAILURE_SUFFIX))
    const launchFailures = service.failedSinceHealthy.length - ran.length
    const latestLaunchFailure = service.failedSinceHealthy.findLast((f) => f.id.endsWith(LAUNCH_FAILURE_SUFFIX))
    const next = deploymentError({
      healthy,
      failedSinceHealthy: ran,
      unhealthy: this.#view(service).instances.filter((i) => !i.healthy),
      minFailedInstances: this.#o.minFailedInstances,
    }) ?? (healthy === 0 && ran.length === 0 && launchFailures >= this.#o.minFailedInstances ? latestLaunchFailure?.message : undefined)
    if (next === service.deploymentError) return false
    service.deploymentError = next
    if (next !== undefined) this.#o.log.warn({ service: service.spec.serviceId, error: next }, 'deployment error')
    return true
  }

  #scheduleMemoryCheck(): void {
    this.#cancelMemoryCheck = this.#o.clock.setTimeout(() => {
      // One after the other: each gives the event loop back every so many files, which
      // side by side would add up in the same turns.
      void this.#checkMemory()
        .catch((err: unknown) => this.#o.log.error({ err }, 'memory check failed'))
        .then(() => this.#rotateLogs())
        .catch((err: unknown) => this.#o.log.error({ err }, 'log rotation failed'))
        .finally(() => {
          if (!this.#closed) this.#scheduleMemoryCheck()
        })
    }, this.#o.memoryCheckIntervalMs)
  }

  /** stdout and stderr kept under maxLogBytes (log-rotation.ts). */
  async #rotateLogs(): Promise<void> {
    const files: string[] = []
    for (const service of this.#services.values()) {
      for (const instance of service.instances.values()) for (const name of LOG_FILES) files.push(join(instance.sandbox, name))
    }
    await rotateOversizedLogs(files, this.#o.maxLogBytes)
  }

  async #checkMemory(): Promise<void> {
    const byGroup = new Map<number, [LocalService, LocalInstance]>()
    for (const service of this.#services.values()) {
      for (const instance of service.instances.values()) byGroup.set(instance.group.pid, [service, instance])
    }
    let read: { way: 'walk' | 'scan'; files: number } | undefined
    const usage = await treeResidentBytes(byGroup.keys(), { observe: (way, files) => (read = { way, files }) })
    // Built only when traced: with a thousand instances it is a sizeable object every second.
    if (this.#o.log.isLevelEnabled('trace')) this.#o.log.trace({ ...read, usage: Object.fromEntries([...usage].map(([pid, u]) => [pid, u.processes])) }, 'memory check')
    for (const [pid, { bytes }] of usage) {
      const entry = byGroup.get(pid)
      if (entry === undefined) continue
      const [service, instance] = entry
      if (bytes > service.spec.memMb * 1024 * 1024) {
        instance.flags.add('memory-limit-exceeded')
        this.#kill(service, instance, { failed: true, message: 'Exceeded allocated memory usage' }, 'SIGKILL')
      }
    }
  }
}


function signalNumber(signal: NodeJS.Signals | null): number {
  return signal === null ? 0 : (osConstants.signals[signal] ?? 0)
}

/** Two checks that probe the same thing: one probe answers both. */
function sameCheck(a: LaunchSpec['healthCheck'], b: LaunchSpec['healthCheck']): boolean {
  return a.url === b.url && a.portIndex === b.portIndex && a.proto === b.proto && a.authenticated === b.authenticated
}
