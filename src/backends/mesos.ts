/**
 * The Mesos backend: maitre is a Mesos framework. Each instance is a task run by the agent's
 * command executor; the master's offers are placed by bin-packing (mesos/placement.ts), and the
 * master's health checks decide which instances are healthy.
 *
 * - Demand is what is asked for less what runs or is being launched. With none, the framework
 *   SUPPRESSes offers; when demand appears or grows it REVIVEs them (which also clears the
 *   filters of offers it declined). Offers it cannot use are declined at once with a refuse
 *   filter, so the master offers them to other frameworks meanwhile; none is held.
 * - Every status update that carries a uuid is acknowledged. A task is gone only once its
 *   terminal update comes; a task that ended without being killed is replaced.
 * - After every subscription the framework adopts the tasks the master says it runs (their
 *   labels carry their service and LaunchSpec), reconciles them explicitly, and again every 15
 *   minutes implicitly. The framework id is kept (FrameworkIdStore) and the failover timeout is
 *   days, so a router restart finds its tasks running instead of launching them twice.
 *
 * Like Kubernetes (and unlike the local backend), close() leaves tasks running for the next router.
 */
import { settlesWithin, type Clock } from '../clock.ts'
import type { MesosBackendConfig } from '../config.ts'
import type { Logger } from '../log.ts'
import type { LaunchSpec } from '../launch-spec.ts'
import { misconfigured } from '../errors.ts'
import type { Backend, EndedInstance, Instance, ServiceState } from './backend.ts'
import { deploymentError } from './deployment-error.ts'
import { afterFailure, afterHealthy, afterNoneHealthy, NO_FAILURES, relaunchDelayMs, type FailureRun } from './relaunch-backoff.ts'
import { refuseUnsupportedProtos, ServiceListeners } from './service-listeners.ts'
import { place, type AgentUse, type Demand } from './mesos/placement.ts'
import { TERMINAL_STATES, type Event, type Offer, type TaskState, type TaskStatus } from './mesos/protocol.ts'
import { MesosScheduler, redirectTarget } from './mesos/scheduler.ts'
import { endFlags, endMessage, exitCodeOf, labelOf, LABELS, lostWithItsAgent, newTaskId, portsOfState, serviceIdOfTask, taskInfoOf } from './mesos/tasks.ts'
import { request } from 'undici'

/** Where the framework id lives between runs (a file in the data directory; etcd in cluster mode). */
export interface FrameworkIdStore {
  load(): Promise<string | undefined>
  /**
   * Keeps `id` in place of `replacing` (the id loaded, now superseded: the master removed that
   * framework), or where none is kept. A store shared by routers (etcd) refuses, with
   * MAITRE_STORE_CONFLICT, when it keeps another id by then: another router's.
   */
  save(id: string, replacing: string | undefined): Promise<void>
}

export interface MesosBackendOptions extends MesosBackendConfig {
  readonly cluster: string
  readonly clock: Clock
  readonly log: Logger
  readonly frameworkIds: FrameworkIdStore
  /**
   * The framework id must be read before subscribing (cluster mode: it is the cluster's, in
   * etcd): a failed read is tried again, never taken for "no id" (that would register a second
   * framework, launch everything again and orphan the first one's tasks). Without it (a file in
   * the data directory), an unreadable id is logged and the router subscribes as a new framework.
   */
  readonly frameworkIdRequired?: boolean
  /** The OS user maitre runs as: the framework's default task user. */
  readonly user: string
  /**
   * A recorded version's launch spec, for a task adopted from the master's state: its label
   * carries no credentials (the master shows labels to whoever reads its state), so what it
   * runs with comes from the version's record. Without one, an adopted version is replaced only
   * once a request ensures it again.
   */
  readonly specOf?: (serviceId: string) => LaunchSpec | undefined
}

const ENDED_KEPT = 10
/** Implicit reconciliation (every task the master knows of this framework), as the reference advises. */
const IMPLICIT_RECONCILE_MS = 15 * 60_000
/** First wait before reconciling again the tasks that got no update since the subscription. */
const RECONCILE_RETRY_MS = 5_000
/** A failed DECLINE is tried again after this, doubling, five times. */
const DECLINE_RETRY_MS = 250
const MAX_RECONCILE_RETRY_MS = 5 * 60_000
/** A KILL with no terminal update after this (plus the task's grace) is sent again, the wait doubling. */
const KILL_RETRY_MS = 2_000
const MAX_KILL_RETRY_MS = 60_000
/** A failed SUPPRESS or REVIVE is tried again after this. */
const OFFERS_CALL_RETRY_MS = 1_000
/** A failed task's service relaunches after this, times restart-backoff-factor per failure in a row… */
const RELAUNCH_BASE_MS = 1_000
/** …up to this. */
const RELAUNCH_MAX_MS = 60_000
/** How often the backend checks that the master's view of its demand holds (see #watch). */
const WATCH_MS = 2_000
/** Demand with no offer for this long: the master may have missed a REVIVE, or filters hold; revive. */
const OFFERLESS_MS = 10_000
/** The master's state could not be read to adopt tasks: tried again after this, doubling. */
const ADOPT_RETRY_MS = 500
const MAX_ADOPT_RETRY_MS = 15_000
/** A refuse filter for offers declined while demand is still unplaced: short, so a fit that frees up is seen. */
const UNPLACED_REFUSE_SECS = 1

interface MesosTask {
  readonly id: string
  /** The service record it was launched or adopted for (a service deleted and made again is another record). */
  readonly owner: MesosService
  readonly agentId: string
  host: string
  ports: number[]
  state: TaskState
  healthy: boolean
  everHealthy: boolean
  startedAt: number
  killing: boolean
  /** The ACCEPT that launches it, while in flight: a KILL waits for it, or it would overtake its own launch. */
  launching: Promise<void> | undefined
  /** The kill's grace: the service's termination grace, or 0 for a forced kill. */
  graceMs: number
  /** The last update's time (ms): a reconciliation after a subscription waits for one newer than it. */
  updatedAt: number
}

interface MesosService {
  readonly id: string
  spec: LaunchSpec | undefined
  requested: number
  readonly tasks: Map<string, MesosTask>
  failed: EndedInstance[]
  killed: EndedInstance[]
  failedSinceHealthy: EndedInstance[]
  deploymentError: string | undefined
  /** Tasks failed in a row and the healthy stretch that would end them (relaunch-backoff.ts): each failure puts the next launch further off. */
  failureRun: FailureRun
  /** No task of it is launched before this (ms since the epoch): its relaunch back-off. */
  nextLaunchAt: number
}

export class MesosBackend implements Backend {
  readonly kind = 'mesos' as const
  readonly #o: MesosBackendOptions
  readonly #services = new Map<string, MesosService>()
  /** Tasks by id whatever their service, for updates (which carry only the id). */
  readonly #tasks = new Map<string, MesosTask>()
  readonly #listeners: ServiceListeners
  readonly #scheduler: Promise<MesosScheduler>
  /** What the master last confirmed of this framework's offers: suppressed, revived, or unknown (a call failed, a new subscription). */
  #offersState: 'suppressed' | 'revived' | undefined
  /** The demand last told to the master by a REVIVE: more than this revives again. */
  #revivedFor = 0
  /** REVIVEs sent so far: an offer round that saw one go out meanwhile may have filtered what it revived. */
  #revives = 0
  /**
   * Offer rounds so far that placed all demand and filtered the rest for the long while: a REVIVE
   * answered after one covers none of the demand that comes after it (the round's filters reach
   * the master after that REVIVE), though it was sent for as much.
   */
  #roundsPlacingAll = 0
  /** A SUPPRESS or REVIVE in flight (they go one at a time, the latest wish last). */
  #offersCall: Promise<void> | undefined
  #offersWish: { readonly force: boolean } | undefined
  #lastOffersAt = 0
  #subscribedAt = 0
  /**
   * The master's state has been read since the last subscription: until then nothing is launched,
   * or a version asked for right after a restart would get new tasks beside the ones it runs.
   */
  #adopted = false
  #cancelReconcile: (() => void) | undefined
  #cancelWatch: (() => void) | undefined
  /** Timers that send a KILL, SUPPRESS or REVIVE again: cancelled on close. */
  readonly #timers = new Set<() => void>()
  #closed = false
  /** The framework id the store keeps, as far as this router knows (loaded, then saved). */
  #keptId: string | undefined
  /** A save of the framework id under way: close() waits for it to know whether the id is kept. */
  #saving: Promise<void> | undefined
  /** The framework id this router went on to adopt and launch as (kept, or not keepable where that is allowed). */
  #ranAs: string | undefined

  constructor(options: MesosBackendOptions) {
    this.#o = options
    this.#listeners = new ServiceListeners(options.log)
    this.#scheduler = this.#connect()
    this.#watch()
  }

  async #connect(): Promise<MesosScheduler> {
    const o = this.#o
    let frameworkId: string | undefined
    for (let wait = ADOPT_RETRY_MS; !this.#closed; wait = Math.min(MAX_ADOPT_RETRY_MS, wait * 2)) {
      try {
        frameworkId = await o.frameworkIds.load()
        break
      } catch (err) {
        if (o.frameworkIdRequired !== true) {
          // Already lost; the router still has to run. The old framework's tasks run on until
          // its failover timeout, unknown to this one.
          o.log.error({ err }, 'the kept mesos framework id cannot be read: subscribing as a new framework')
          break
        }
        o.log.warn({ err, retryInMs: wait }, 'the mesos framework id cannot be read: not subscribing until it can')
      }
      if (this.#closed) break
      // close() cuts the wait short: a router on its way out does not wait out a back-off.
      await new Promise<void>((resolve) => {
        const wake = (): void => {
          cancel()
          this.#timers.delete(wake)
          resolve()
        }
        const cancel = this.#o.clock.setTimeout(wake, wait)
        this.#timers.add(wake)
      })
    }
    this.#keptId = frameworkId
    const scheduler = new MesosScheduler({
      masters: o.master.split(',').map((m) => m.trim().replace(/\/+$/, '')).filter((m) => m !== ''),
      frameworkInfo: {
        user: o.user,
        name: o.frameworkName,
        roles: [o.role],
        // TASK_KILLING_STATE: a task in its termination grace shows as TASK_KILLING (else
        // TASK_RUNNING until it ends), so a router adopting it then knows it is on its way out.
        capabilities: [{ type: 'MULTI_ROLE' }, { type: 'TASK_KILLING_STATE' }],
        failover_timeout: o.failoverTimeoutSecs,
        checkpoint: true,
        ...(o.principal === null ? {} : { principal: o.principal }),
      },
      frameworkId,
      credentials: o.principal === null || o.secret === null ? undefined : { principal: o.principal, secret: o.secret },
      requestTimeoutMs: o.requestTimeoutMs,
      clock: o.clock,
      log: o.log,
      onEvent: (event) => this.#onEvent(event),
      onDisconnected: () => this.#o.log.warn({ frameworkId: scheduler.frameworkId }, 'mesos stream lost; subscribing again'),
    })
    if (!this.#closed) scheduler.start()
    return scheduler
  }

  /** It knows what runs: the master's state has been read since it subscribed (cluster mode shows its view from then on). */
  get ready(): boolean {
    return this.#adopted
  }

  async ensureService(spec: LaunchSpec): Promise<void> {
    if (this.#closed) throw new Error('the mesos backend is closed')
    refuseUnsupportedProtos(spec, { backend: ['http', 'https', 'h2c', 'h2'], healthCheck: ['http', 'https'], why: "Mesos's HTTP health checks speak HTTP/1.1; give an HTTP/2 service an HTTP/1.1 health check port with health-check-port-index" })
    if (spec.healthCheck.authenticated) {
      throw misconfigured([{ field: 'health-check-authentication', message: 'health-check-authentication standard is not supported by the Mesos backend: its HTTP health checks send no headers.' }])
    }
    const known = this.#services.get(spec.serviceId)
    if (known !== undefined) {
      // Adopted from the master's state before anything asked for it: now it can be replaced too.
      known.spec ??= spec
      return
    }
    this.#services.set(spec.serviceId, this.#newService(spec.serviceId, spec, spec.minInstances))
    this.#o.log.info({ service: spec.serviceId, instances: spec.minInstances }, 'service created')
    this.#demandChanged()
    this.#listeners.emit(spec.serviceId)
  }

  #newService(id: string, spec: LaunchSpec | undefined, requested: number): MesosService {
    return { id, spec, requested, tasks: new Map(), failed: [], killed: [], failedSinceHealthy: [], deploymentError: undefined, failureRun: NO_FAILURES, nextLaunchAt: 0 }
  }

  async scale(serviceId: string, instances: number): Promise<void> {
    const service = this.#services.get(serviceId)
    if (service === undefined) return
    const requested = Math.max(0, instances)
    if (requested === service.requested) return
    service.requested = requested
    // Going down, the backend picks: instances not healthy first, then the youngest.
    const live = [...service.tasks.values()].filter((t) => !t.killing)
    const excess = live.length - requested
    if (excess > 0) {
      const victims = live.sort((a, b) => Number(a.healthy) - Number(b.healthy) || b.startedAt - a.startedAt).slice(0, excess)
      for (const task of victims) this.#kill(service, task, false)
    }
    this.#demandChanged()
    this.#listeners.emit(serviceId)
  }

  async killInstance(serviceId: string, instanceId: string, options: { readonly force?: boolean } = {}): Promise<boolean> {
    const service = this.#services.get(serviceId)
    const task = service?.tasks.get(instanceId)
    if (service === undefined || task === undefined) return false
    if (task.killing) {
      // Already on its way out, within its termination grace: a forced kill cuts the grace short
      // (a second KILL with a shorter kill_policy shortens it); the count dropped with the first.
      if (options.force !== true || task.graceMs === 0) return false
      task.graceMs = 0
      void (task.launching ?? Promise.resolve()).then(() => this.#killCall(task))
      this.#o.log.info({ service: serviceId, instance: instanceId }, 'instance killed at once, its termination grace cut short')
      return true
    }
    service.requested = Math.max(0, service.requested - 1)
    this.#kill(service, task, options.force === true)
    this.#o.log.info({ service: serviceId, instance: instanceId }, 'instance killed')
    this.#demandChanged()
    this.#listeners.emit(serviceId)
    return true
  }

  #killCall(task: MesosTask): Promise<boolean> {
    return this.#call({ type: 'KILL', kill: { task_id: { value: task.id }, agent_id: { value: task.agentId }, kill_policy: { grace_period: { nanoseconds: task.graceMs * 1_000_000 } } } }, { service: task.owner.id, instance: task.id })
  }

  /**
   * Asks the master to kill a task; it stays a task (not an instance) until its terminal update,
   * and the KILL is sent again until that comes (a call lost, a master that restarted meanwhile).
   * A task still being launched is killed once its ACCEPT is answered, not before: a KILL that
   * overtook it would find no task, and the launch would then run one nobody knows.
   */
  #kill(service: MesosService, task: MesosTask, force: boolean): void {
    task.killing = true
    task.graceMs = force ? 0 : (service.spec?.terminationGraceMs ?? 0)
    void (task.launching ?? Promise.resolve()).then(() => this.#sendKill(task, KILL_RETRY_MS))
  }

  async #sendKill(task: MesosTask, retryMs: number): Promise<void> {
    if (this.#closed || this.#tasks.get(task.id) !== task) return
    await this.#killCall(task)
    if (this.#closed) return
    // Whether or not that call went through, the task is gone only once its terminal update comes.
    const cancel = this.#o.clock.setTimeout(() => {
      this.#timers.delete(cancel)
      void this.#sendKill(task, Math.min(MAX_KILL_RETRY_MS, retryMs * 2))
    }, retryMs + task.graceMs)
    this.#timers.add(cancel)
  }

  async deleteService(serviceId: string): Promise<void> {
    const service = this.#services.get(serviceId)
    if (service === undefined) return
    service.requested = 0
    for (const task of service.tasks.values()) if (!task.killing) this.#kill(service, task, false)
    this.#services.delete(serviceId)
    this.#demandChanged()
    this.#listeners.emit(serviceId)
    this.#o.log.info({ service: serviceId }, 'service deleted')
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
    this.#cancelReconcile?.()
    this.#cancelWatch?.()
    for (const cancel of this.#timers) cancel()
    this.#timers.clear()
    const scheduler = await this.#scheduler
    // From here on it takes no framework back (one failed over to the next leader stays there).
    scheduler.hold()
    try {
      await this.#tearDownUnkept(scheduler)
    } finally {
      await scheduler.close()
    }
  }

  /**
   * A framework this router registered and neither kept nor ran as (a leader that stopped
   * between SUBSCRIBED and keeping the id) holds nothing, and no router will subscribe as it
   * again: left at the master, it would sit there disconnected for its failover timeout (a week
   * by default), one more for each such hand-over. So it is torn down, within twice the request
   * timeout: once a SUBSCRIBE or a save under way is answered (or the first timeout passed), and
   * only if the store, asked again, keeps another id (a save that failed or timed out may have
   * been written all the same) and the subscription that registered it is still the current one
   * (one taken back since may be the next leader's by now).
   */
  async #tearDownUnkept(scheduler: MesosScheduler): Promise<void> {
    const timeoutMs = this.#o.requestTimeoutMs
    await settlesWithin(this.#o.clock, Promise.all([scheduler.newSubscriptionSettled(), scheduler.tearingDown, this.#saving?.catch(() => undefined)]), timeoutMs)
    const id = scheduler.frameworkId
    if (id === undefined || id === this.#keptId || id === this.#ranAs || scheduler.tearingDown !== undefined) return
    if (!scheduler.registeredByThisSubscription) {
      this.#o.log.warn({ frameworkId: id }, 'a mesos framework this router registered and never kept is left at the master (its subscription ended: it may be the next leader’s now, or stay until its failover timeout)')
      return
    }
    let abandoned = false
    const done = await settlesWithin(
      this.#o.clock,
      (async () => {
        let kept: string | undefined
        try {
          kept = await this.#o.frameworkIds.load()
        } catch (err) {
          this.#o.log.warn({ err, frameworkId: id }, 'could not tell whether the mesos framework this router registered is kept: left at the master')
          return
        }
        if (kept === id) {
          this.#keptId = id
          return
        }
        if (abandoned) return
        this.#o.log.info({ frameworkId: id, kept }, 'tearing down the mesos framework this router registered and never kept: it runs nothing')
        await scheduler.tearDown(undefined)
      })(),
      timeoutMs,
    )
    if (!done) {
      abandoned = true
      this.#o.log.warn({ frameworkId: id }, 'the store did not say in time whether the mesos framework this router registered is kept: left at the master')
    }
  }

  #view(service: MesosService): ServiceState {
    const instances: Instance[] = []
    for (const task of service.tasks.values()) {
      if (task.killing || task.host === '' || task.ports.length === 0) continue
      instances.push({
        id: task.id,
        serviceId: service.id,
        host: task.host,
        port: task.ports[0] as number,
        extraPorts: task.ports.slice(1),
        proto: service.spec?.backendProto ?? 'http',
        startedAt: task.startedAt,
        healthy: task.state === 'TASK_RUNNING' && task.healthy,
        logDirectory: undefined,
        flags: new Set(),
      })
    }
    return { id: service.id, requested: service.requested, instances, failed: service.failed, killed: service.killed, deploymentError: service.deploymentError }
  }

  // -------------------------------------------------------------------------------------------
  // Events

  /** One event; a malformed one is logged and skipped, never the end of the stream. */
  #onEvent(event: Event): void {
    if (this.#closed) {
      if (event.type === 'OFFERS') this.#declineWhileClosing(event.offers?.offers)
      return
    }
    try {
      switch (event.type) {
        case 'SUBSCRIBED':
          void this.#subscribed(String(event.subscribed?.framework_id?.value ?? ''))
          break
        case 'OFFERS':
          this.#lastOffersAt = this.#o.clock.now()
          void this.#offered(wellFormedOffers(event.offers?.offers))
          break
        case 'UPDATE': {
          const status = event.update?.status
          if (typeof status?.task_id?.value !== 'string' || typeof status.state !== 'string') throw new Error('an UPDATE without a task id or state')
          this.#updated(status)
          break
        }
        case 'FAILURE':
          this.#o.log.warn({ failure: event.failure }, 'mesos reports an agent or executor lost')
          break
        default:
          // HEARTBEAT (the scheduler's watchdog saw it), RESCIND (no offer is held here), the rest unused.
          break
      }
    } catch (err) {
      this.#o.log.error({ err, type: event.type }, 'a mesos event could not be read; skipped')
    }
  }

  async #subscribed(frameworkId: string): Promise<void> {
    this.#subscribedAt = this.#o.clock.now()
    this.#lastOffersAt = this.#subscribedAt
    this.#offersState = undefined
    this.#revivedFor = 0
    this.#adopted = false
    this.#o.log.info({ frameworkId }, 'subscribed to mesos')
    const subscribedAt = this.#subscribedAt
    if (!(await this.#keep(frameworkId, subscribedAt))) return
    this.#ranAs = frameworkId
    // Until the master's state is read, nothing is launched (a restart would launch beside what
    // runs): read it again and again, as long as this subscription lasts.
    for (let wait = ADOPT_RETRY_MS; ; wait = Math.min(MAX_ADOPT_RETRY_MS, wait * 2)) {
      if (this.#closed || this.#subscribedAt !== subscribedAt) return
      try {
        await this.#adopt(frameworkId)
        break
      } catch (err) {
        this.#o.log.warn({ err, retryInMs: wait }, 'could not read the mesos master state to adopt running tasks')
      }
      await new Promise<void>((resolve) => this.#o.clock.setTimeout(resolve, wait))
    }
    if (this.#closed || this.#subscribedAt !== subscribedAt) return
    this.#adopted = true
    this.#reconcile(RECONCILE_RETRY_MS, true)
    // Kills the master may not have had (sent before a restart of it, or while disconnected).
    for (const task of this.#tasks.values()) if (task.killing && task.launching === undefined) void this.#killCall(task)
    // Also clears the refuse filters of offers declined before the adoption.
    this.#demandChanged(true)
  }

  /**
   * Keeps the framework id the master gave (a new framework, or the same one). Where the id must
   * be kept (cluster mode), it is tried again until it is, before anything is adopted or
   * launched: the next leader must subscribe as this framework, or it would launch everything
   * again beside it. If another router kept another id meanwhile (its save reached the store
   * after this router read it), that one is the cluster's framework: this one, which ran
   * nothing, is torn down and the kept one subscribed as (false: nothing is adopted on this
   * subscription; the next SUBSCRIBED carries on).
   */
  async #keep(frameworkId: string, subscribedAt: number): Promise<boolean> {
    for (let wait = ADOPT_RETRY_MS; frameworkId !== this.#keptId; wait = Math.min(MAX_ADOPT_RETRY_MS, wait * 2)) {
      if (this.#closed || this.#subscribedAt !== subscribedAt) return false
      try {
        const saving = this.#o.frameworkIds.save(frameworkId, this.#keptId)
        this.#saving = saving
        try {
          await saving
        } finally {
          if (this.#saving === saving) this.#saving = undefined
        }
        this.#keptId = frameworkId
        break
      } catch (err) {
        if ((err as { code?: unknown }).code === 'MAITRE_STORE_CONFLICT') {
          const kept = await this.#loadKept(subscribedAt)
          if (kept === null) return false
          this.#keptId = kept
          // Its own save, written after all (an answer lost): kept.
          if (kept === frameworkId) break
          // Deleted meanwhile (by hand): tried again, after the wait below, where none is kept.
          if (kept === undefined) {
            await new Promise<void>((resolve) => this.#o.clock.setTimeout(resolve, wait))
            continue
          }
          this.#o.log.error({ frameworkId, kept }, 'another router kept another mesos framework id: this framework (it ran nothing) is torn down, and the kept one subscribed as')
          await (await this.#scheduler).tearDown(kept)
          return false
        }
        if (this.#o.frameworkIdRequired !== true) {
          this.#o.log.error({ err, frameworkId }, 'could not keep the mesos framework id')
          break
        }
        this.#o.log.warn({ err, frameworkId, retryInMs: wait }, 'could not keep the mesos framework id: trying again before anything is launched')
      }
      await new Promise<void>((resolve) => this.#o.clock.setTimeout(resolve, wait))
    }
    return true
  }

  /** The id the store keeps, read again until it can be; null if this subscription ended (or the backend closed) first. */
  async #loadKept(subscribedAt: number): Promise<string | undefined | null> {
    for (let wait = ADOPT_RETRY_MS; ; wait = Math.min(MAX_ADOPT_RETRY_MS, wait * 2)) {
      if (this.#closed || this.#subscribedAt !== subscribedAt) return null
      try {
        return await this.#o.frameworkIds.load()
      } catch (err) {
        this.#o.log.warn({ err, retryInMs: wait }, 'the kept mesos framework id cannot be read: trying again before anything is launched')
      }
      await new Promise<void>((resolve) => this.#o.clock.setTimeout(resolve, wait))
    }
  }

  /** Takes over the tasks the master runs for this framework that this router does not know yet. */
  async #adopt(frameworkId: string): Promise<void> {
    const scheduler = await this.#scheduler
    let target = scheduler.leader
    if (target === undefined) throw new Error('no master to read the state of')
    let state: MasterState | undefined
    for (let redirects = 0; state === undefined; redirects += 1) {
      const res = await request(`${target}/master/state`, { headers: scheduler.authorizationHeaders(), headersTimeout: this.#o.requestTimeoutMs, bodyTimeout: this.#o.requestTimeoutMs })
      const location = redirectTarget(target, res.headers['location'])
      if (res.statusCode === 307 && location !== undefined && redirects < 3) {
        await res.body.dump()
        target = location
      } else if (res.statusCode !== 200) {
        await res.body.dump()
        throw new Error(`GET /master/state: ${res.statusCode}`)
      } else {
        state = (await res.body.json()) as MasterState
      }
    }
    const hosts = new Map((state.slaves ?? []).map((s) => [s.id, s.hostname]))
    const framework = (state.frameworks ?? []).find((f) => f.id === frameworkId)
    for (const t of framework?.tasks ?? []) {
      if (typeof t.id !== 'string' || TERMINAL_STATES.has(t.state as TaskState) || this.#tasks.has(t.id)) continue
      if (labelOf(t.labels, LABELS.cluster) !== this.#o.cluster) continue
      const serviceId = labelOf(t.labels, LABELS.serviceId) ?? serviceIdOfTask(t.id)
      if (serviceId === undefined) continue
      let service = this.#services.get(serviceId)
      if (service === undefined) {
        service = this.#newService(serviceId, this.#o.specOf?.(serviceId) ?? parseSpec(labelOf(t.labels, LABELS.launchSpec)), 0)
        this.#services.set(serviceId, service)
      }
      const statuses = t.statuses ?? []
      const task: MesosTask = {
        id: t.id,
        owner: service,
        agentId: t.slave_id,
        host: hosts.get(t.slave_id) ?? '',
        ports: portsOfState(t.resources?.ports),
        state: t.state as TaskState,
        healthy: statuses[statuses.length - 1]?.healthy === true,
        everHealthy: statuses.some((s) => s.healthy === true),
        startedAt: Math.round((statuses[0]?.timestamp ?? this.#o.clock.now() / 1000) * 1000),
        killing: false,
        launching: undefined,
        graceMs: service.spec?.terminationGraceMs ?? 0,
        updatedAt: 0,
      }
      service.tasks.set(task.id, task)
      this.#tasks.set(task.id, task)
      // A task the last router was killing is killed again, not counted.
      if (t.state === 'TASK_KILLING') this.#kill(service, task, false)
      // Its count is what runs, or what a request asked for meanwhile if that is more.
      service.requested = Math.max(service.requested, [...service.tasks.values()].filter((k) => !k.killing).length)
      this.#o.log.info({ service: serviceId, instance: task.id, state: task.state }, 'task adopted')
      this.#update(service)
    }
  }

  async #offered(offers: readonly Offer[]): Promise<void> {
    const revivesBefore = this.#revives
    let placement: ReturnType<typeof place>
    try {
      placement = place({ offers, demands: this.#demands(), used: this.#used(), spread: this.#o.spread })
    } catch (err) {
      this.#o.log.error({ err }, 'mesos offers could not be placed; declined')
      await this.#decline(offers.map((o) => o.id), UNPLACED_REFUSE_SECS)
      return
    }
    // Declined or left over while some demand is still unplaced: a short filter, so resources
    // that free up are offered again soon; with everything placed, the long one.
    const refuseSeconds = placement.unplaced.size > 0 ? UNPLACED_REFUSE_SECS : this.#o.declineRefuseSecs
    // Every task is recorded before any call goes out: offers that come meanwhile see the demand
    // met, and a kill waits for the launch.
    const accepts = placement.launches.map((launch) => {
      const infos = []
      const tasks: MesosTask[] = []
      for (const placed of launch.tasks) {
        const service = this.#services.get(placed.serviceId)
        if (service?.spec === undefined) continue
        const id = newTaskId(service.id)
        const now = this.#o.clock.now()
        const task: MesosTask = { id, owner: service, agentId: launch.agentId, host: placed.hostname, ports: [...placed.ports], state: 'TASK_STAGING', healthy: false, everHealthy: false, startedAt: now, killing: false, launching: undefined, graceMs: service.spec.terminationGraceMs, updatedAt: now }
        service.tasks.set(id, task)
        this.#tasks.set(id, task)
        tasks.push(task)
        infos.push(taskInfoOf(service.spec, placed, id, this.#o.cluster))
        this.#o.log.info({ service: service.id, instance: id, agent: launch.agentId, host: placed.hostname, ports: placed.ports }, 'instance launching')
        this.#listeners.emit(service.id)
      }
      const launching = (async () => {
        const ok = await this.#call({ type: 'ACCEPT', accept: { offer_ids: launch.offerIds, operations: [{ type: 'LAUNCH', launch: { task_infos: infos } }], filters: { refuse_seconds: refuseSeconds } } }, { agent: launch.agentId })
        for (const task of tasks) task.launching = undefined
        if (ok) return
        // Unknown whether the master took it (an answer lost is not a refusal). Asked, until it
        // answers, it says LOST for what it never launched, and the demand comes back then; and
        // the offers are declined, or (Mesos has no offer timeout) they stay held, their agent
        // never offered again. (Declining offers the master did use changes nothing.)
        for (const task of tasks) task.updatedAt = 0
        this.#reconcile(RECONCILE_RETRY_MS)
        void this.#decline(launch.offerIds, UNPLACED_REFUSE_SECS)
      })()
      for (const task of tasks) task.launching = launching
      return launching
    })
    // Everything asked for is placed, and this round filters what is left over for the long
    // while: demand that comes from now on is not what the last REVIVE was for, and must revive
    // (a second version asked for during the round, as many instances as the first, waited
    // for the offerless watch, ~10 s, else).
    if (placement.unplaced.size === 0) {
      this.#revivedFor = 0
      this.#roundsPlacingAll += 1
    }
    const declined = placement.unused.length === 0 ? Promise.resolve(true) : this.#decline(placement.unused, refuseSeconds)
    await Promise.all([...accepts, declined])
    if (placement.unplaced.size > 0) this.#o.log.debug({ unplaced: Object.fromEntries(placement.unplaced) }, 'instances that fit no offer')
    // A REVIVE that went out during the round cleared filters this round then set: again.
    this.#demandChanged(this.#revives !== revivesBefore)
  }

  /** What this framework runs on each agent, for the fitness of placing more there. */
  #used(): Map<string, AgentUse> {
    const used = new Map<string, { cpus: number; memMb: number; instances: Map<string, number> }>()
    for (const task of this.#tasks.values()) {
      const spec = task.owner.spec
      const use = used.get(task.agentId) ?? { cpus: 0, memMb: 0, instances: new Map<string, number>() }
      use.cpus += spec?.cpus ?? 0
      use.memMb += spec?.memMb ?? 0
      if (!task.killing) use.instances.set(task.owner.id, (use.instances.get(task.owner.id) ?? 0) + 1)
      used.set(task.agentId, use)
    }
    return used
  }

  #updated(status: TaskStatus): void {
    if (status.uuid !== undefined && status.agent_id !== undefined) {
      const ack = { type: 'ACKNOWLEDGE' as const, acknowledge: { agent_id: status.agent_id, task_id: status.task_id, uuid: status.uuid } }
      void this.#scheduler.then((s) => s.call(ack)).catch((err: unknown) => this.#o.log.warn({ err, task: status.task_id.value }, 'mesos acknowledgement failed (the master will send the update again)'))
    }
    const task = this.#tasks.get(status.task_id.value)
    if (task === undefined) {
      this.#unknownTask(status)
      return
    }
    const service = task.owner
    const current = this.#services.get(service.id) === service
    task.updatedAt = this.#o.clock.now()
    if (!TERMINAL_STATES.has(status.state)) {
      task.state = status.state
      if (status.healthy !== undefined) task.healthy = status.healthy
      if (status.state !== 'TASK_RUNNING') task.healthy = false
      if (task.healthy && !task.everHealthy) this.#o.log.info({ service: service.id, instance: task.id, startupMs: Math.max(0, this.#o.clock.now() - task.startedAt) }, 'instance healthy')
      if (task.healthy) task.everHealthy = true
      if (current) {
        if (task.healthy) {
          service.failedSinceHealthy = []
          service.failureRun = afterHealthy(service.failureRun, this.#o.clock.now())
        } else if (![...service.tasks.values()].some((t) => t.healthy)) service.failureRun = afterNoneHealthy(service.failureRun)
        this.#update(service)
      }
      return
    }
    this.#forget(task.id)
    const ended: EndedInstance = {
      id: task.id,
      serviceId: service.id,
      host: task.host,
      port: task.ports[0] ?? 0,
      startedAt: task.startedAt,
      endedAt: this.#o.clock.now(),
      exitCode: task.killing ? undefined : exitCodeOf(status),
      flags: endFlags(status, task.everHealthy),
      message: task.killing ? 'Killed by maitre' : endMessage(status),
      logDirectory: undefined,
    }
    if (task.killing) {
      service.killed = [ended, ...service.killed].slice(0, ENDED_KEPT)
    } else {
      service.failed = [ended, ...service.failed].slice(0, ENDED_KEPT)
      // A lost agent or launch says nothing of the service: replaced, but no step towards a
      // deployment error. Nor does a task that passed its health checks before it failed: its
      // command and health check work (several that crash together under load would otherwise
      // read as an invalid startup command and refuse every request until one is healthy again).
      if (!lostWithItsAgent(status)) {
        if (!task.everHealthy) service.failedSinceHealthy = [...service.failedSinceHealthy, ended].slice(-ENDED_KEPT)
        this.#holdRelaunch(service)
      }
      this.#o.log.warn({ service: service.id, instance: task.id, state: status.state, reason: status.reason, message: status.message }, 'instance failed')
    }
    if (current) this.#update(service)
    this.#demandChanged()
  }

  /**
   * An update for a task this router does not know. Before the master's state is adopted it may
   * be one of an earlier run (the reconciliation after the adoption asks again). After, a live
   * one is an orphan — a LOST task whose agent came back after its replacement started, a launch
   * this router gave up on — and is killed rather than left running unseen.
   */
  #unknownTask(status: TaskStatus): void {
    if (TERMINAL_STATES.has(status.state) || !this.#adopted || status.agent_id === undefined) return
    const taskId = status.task_id.value
    if (serviceIdOfTask(taskId) === undefined) return
    this.#o.log.warn({ task: taskId, state: status.state }, 'a task this router does not run: killed')
    void this.#call({ type: 'KILL', kill: { task_id: status.task_id, agent_id: status.agent_id } }, { instance: taskId })
  }

  #forget(taskId: string): void {
    const task = this.#tasks.get(taskId)
    if (task === undefined) return
    this.#tasks.delete(taskId)
    task.owner.tasks.delete(taskId)
  }

  /** Recomputes the deployment error (Waiter's rules) and tells listeners. */
  #update(service: MesosService): void {
    const healthy = [...service.tasks.values()].filter((t) => !t.killing && t.state === 'TASK_RUNNING' && t.healthy).length
    const next = deploymentError({ healthy, failedSinceHealthy: service.failedSinceHealthy, unhealthy: [], minFailedInstances: this.#o.minFailedInstances })
    if (next !== service.deploymentError) {
      service.deploymentError = next
      if (next !== undefined) this.#o.log.warn({ service: service.id, error: next }, 'deployment error')
    }
    this.#listeners.emit(service.id)
  }

  // -------------------------------------------------------------------------------------------
  // Demand, offers, reconciliation

  /**
   * A task of the service failed: its next launch waits RELAUNCH_BASE_MS × restart-backoff-factor
   * ^ (failures in a row − 1), up to RELAUNCH_MAX_MS, as the local backend's and Marathon's do;
   * the row ends only after a task was healthy for twice that cap (relaunch-backoff.ts).
   * (Relaunched at the next offer, a command that exits at once ran about once a second for as
   * long as the version was asked for, each failure a REVIVE clearing every decline filter.)
   */
  #holdRelaunch(service: MesosService): void {
    const rule = { baseMs: RELAUNCH_BASE_MS, factor: service.spec?.restartBackoffFactor ?? 1, maxMs: RELAUNCH_MAX_MS }
    const now = this.#o.clock.now()
    const othersHealthy = [...service.tasks.values()].some((t) => t.healthy && !t.killing)
    service.failureRun = afterFailure(service.failureRun, now, rule, othersHealthy)
    const waitMs = relaunchDelayMs(service.failureRun, rule)
    service.nextLaunchAt = now + waitMs
    const cancel = this.#o.clock.setTimeout(() => {
      this.#timers.delete(cancel)
      this.#demandChanged()
    }, waitMs)
    this.#timers.add(cancel)
  }

  #demands(): Demand[] {
    const demands: Demand[] = []
    if (!this.#adopted) return demands
    const now = this.#o.clock.now()
    for (const service of this.#services.values()) {
      if (service.spec === undefined || now < service.nextLaunchAt) continue
      const live = [...service.tasks.values()].filter((t) => !t.killing).length
      const count = service.requested - live
      if (count > 0) demands.push({ serviceId: service.id, count, cpus: service.spec.cpus, memMb: service.spec.memMb, ports: Math.max(1, service.spec.ports) })
    }
    return demands
  }

  #wanted(): number {
    return this.#demands().reduce((sum, d) => sum + d.count, 0)
  }

  /**
   * Tells the master whether offers are wanted: SUPPRESS with no demand, REVIVE when it appears
   * or grows (which also clears the filters of offers declined earlier). The calls go one at a
   * time and the latest wish is what is sent next; a failed one leaves the state unknown and is
   * tried again, so the framework is never left suppressed with demand.
   */
  #demandChanged(force = false): void {
    if (this.#closed) return
    this.#offersWish = { force: force || (this.#offersWish?.force ?? false) }
    this.#offersCall ??= this.#sendOffersWish().finally(() => (this.#offersCall = undefined))
  }

  async #sendOffersWish(): Promise<void> {
    while (this.#offersWish !== undefined && !this.#closed) {
      const { force } = this.#offersWish
      this.#offersWish = undefined
      const wanted = this.#wanted()
      let ok = true
      if (wanted === 0) {
        this.#revivedFor = 0
        if (this.#offersState !== 'suppressed' || force) {
          ok = await this.#call({ type: 'SUPPRESS', suppress: { roles: [this.#o.role] } }, {})
          this.#offersState = ok ? 'suppressed' : undefined
        }
      } else if (this.#offersState !== 'revived' || wanted > this.#revivedFor || force) {
        this.#revives += 1
        const roundsPlacingAllBefore = this.#roundsPlacingAll
        ok = await this.#call({ type: 'REVIVE', revive: { roles: [this.#o.role] } }, {})
        this.#offersState = ok ? 'revived' : undefined
        // A round that placed everything while the REVIVE was unanswered met what it was for, and
        // filtered the rest after it: the demand it was sent for is no longer what it covers (a
        // second version asked for then, as many instances, waited for the offerless watch).
        this.#revivedFor = ok && this.#roundsPlacingAll === roundsPlacingAllBefore ? wanted : 0
      } else {
        this.#revivedFor = wanted
      }
      if (!ok) {
        if (this.#closed) return
        const cancel = this.#o.clock.setTimeout(() => {
          this.#timers.delete(cancel)
          this.#demandChanged()
        }, OFFERS_CALL_RETRY_MS)
        this.#timers.add(cancel)
        return
      }
    }
  }

  /** Every WATCH_MS: demand that has seen no offer for OFFERLESS_MS revives offers again. */
  #watch(): void {
    this.#cancelWatch = this.#o.clock.setTimeout(() => {
      if (this.#closed) return
      if (this.#adopted && this.#wanted() > 0 && this.#o.clock.now() - this.#lastOffersAt > OFFERLESS_MS) {
        this.#lastOffersAt = this.#o.clock.now()
        this.#demandChanged(true)
      }
      this.#watch()
    }, WATCH_MS)
  }

  /**
   * Reconciles the tasks this router believes live; those that got no update since the
   * subscription are asked about again with a growing wait, and every task implicitly each 15 min.
   */
  #reconcile(retryMs: number, afterSubscription = false): void {
    this.#cancelReconcile?.()
    if (this.#closed) return
    const since = this.#subscribedAt
    const stale = [...this.#tasks.values()].filter((t) => t.updatedAt < since)
    if (stale.length > 0) {
      void this.#call({ type: 'RECONCILE', reconcile: { tasks: stale.map((t) => ({ task_id: { value: t.id }, agent_id: { value: t.agentId } })) } }, {})
    }
    // Right after a subscription, also every task the master knows of this framework (ones this
    // router never heard of included): their states come as updates.
    if (afterSubscription) void this.#call({ type: 'RECONCILE', reconcile: { tasks: [] } }, {})
    const next = stale.length > 0 ? retryMs : IMPLICIT_RECONCILE_MS
    this.#cancelReconcile = this.#o.clock.setTimeout(() => {
      if (this.#closed) return
      if (stale.length === 0) void this.#call({ type: 'RECONCILE', reconcile: { tasks: [] } }, {})
      this.#reconcile(Math.min(MAX_RECONCILE_RETRY_MS, retryMs * 2))
    }, next)
  }

  /**
   * Declines offers. One that fails is tried again in the background, a few times, for as long
   * as the subscription lasts (a new one voids every offer): Mesos has no offer timeout, so an
   * offer never declined is held for good, and its agent never offered again.
   */
  async #decline(offerIds: readonly { value: string }[], refuseSeconds: number): Promise<boolean> {
    // The offers are this subscription's: a new one voids them.
    const subscribedAt = this.#subscribedAt
    const decline = (): Promise<boolean> => this.#call({ type: 'DECLINE', decline: { offer_ids: offerIds, filters: { refuse_seconds: refuseSeconds } } }, {})
    if (await decline()) return true
    void (async () => {
      for (let wait = DECLINE_RETRY_MS; wait <= DECLINE_RETRY_MS * 16; wait *= 2) {
        await new Promise<void>((resolve) => this.#o.clock.setTimeout(resolve, wait))
        if (this.#closed || this.#subscribedAt !== subscribedAt || (await decline())) return
      }
    })()
    return false
  }

  /**
   * Offers that reach a router on its way out: nothing is placed on them, and close() may wait
   * up to twice the request timeout (for the framework's fate) before the stream ends and the
   * master takes them back; held until then, their agents are offered to no other framework.
   * Declined at once, with the long filter (nothing more is placed here, and a next leader that
   * subscribes as this framework revives, which clears it); one that fails is the stream's end's
   * to return.
   */
  #declineWhileClosing(offers: unknown): void {
    const offerIds = Array.isArray(offers) ? offers.flatMap((o: { id?: { value?: unknown } } | null) => (typeof o?.id?.value === 'string' ? [{ value: o.id.value }] : [])) : []
    if (offerIds.length === 0) return
    void this.#scheduler.then((scheduler) => scheduler.call({ type: 'DECLINE', decline: { offer_ids: offerIds, filters: { refuse_seconds: this.#o.declineRefuseSecs } } })).catch(() => undefined)
  }

  /** A call on the current subscription; false (logged) if it did not go through. */
  async #call(call: Parameters<MesosScheduler['call']>[0], context: Record<string, unknown>): Promise<boolean> {
    if (this.#closed) return false
    try {
      await (await this.#scheduler).call(call)
      return true
    } catch (err) {
      if (!this.#closed) this.#o.log.warn({ err, call: call.type, ...context }, 'mesos call failed')
      return false
    }
  }
}

/** The offers an OFFERS event carries that have what placement reads; the others are left to expire. */
function wellFormedOffers(offers: unknown): Offer[] {
  if (!Array.isArray(offers)) return []
  return offers.filter((o): o is Offer => {
    const offer = o as Partial<Offer> | null
    return typeof offer?.id?.value === 'string' && typeof offer.agent_id?.value === 'string' && typeof offer.hostname === 'string' && Array.isArray(offer.resources)
  })
}

/** The part of GET /master/state read to adopt tasks (v0 names: `slaves`, `slave_id`). */
interface MasterState {
  readonly slaves?: readonly { readonly id: string; readonly hostname: string }[]
  readonly frameworks?: readonly {
    readonly id: string
    readonly tasks?: readonly {
      readonly id: string
      readonly slave_id: string
      readonly state: string
      readonly labels?: unknown
      readonly resources?: { readonly ports?: unknown }
      readonly statuses?: readonly { readonly state: string; readonly timestamp?: number; readonly healthy?: boolean }[]
    }[]
  }[]
}

/** A whole launch spec from a task's label (as routers before 2026-12-02 wrote it); one without its credentials is none. */
function parseSpec(text: string | undefined): LaunchSpec | undefined {
  if (text === undefined) return undefined
  try {
    const spec = JSON.parse(text) as LaunchSpec
    return typeof spec.serviceId === 'string' && typeof spec.command === 'string' && typeof spec.env === 'object' && spec.env !== null && 'authorization' in spec ? spec : undefined
  } catch {
    return undefined
  }
}
