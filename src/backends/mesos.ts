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
import type { Clock } from '../clock.ts'
import type { MesosBackendConfig } from '../config.ts'
import type { Logger } from '../log.ts'
import type { LaunchSpec } from '../launch-spec.ts'
import { misconfigured } from '../errors.ts'
import type { Backend, EndedInstance, Instance, ServiceState } from './backend.ts'
import { deploymentError } from './deployment-error.ts'
import { refuseUnsupportedProtos, ServiceListeners } from './service-listeners.ts'
import { place, type AgentUse, type Demand } from './mesos/placement.ts'
import { TERMINAL_STATES, type Event, type Offer, type TaskState, type TaskStatus } from './mesos/protocol.ts'
import { MesosScheduler } from './mesos/scheduler.ts'
import { endFlags, endMessage, exitCodeOf, labelOf, LABELS, lostWithItsAgent, newTaskId, portsOfState, serviceIdOfTask, taskInfoOf } from './mesos/tasks.ts'
import { request } from 'undici'

/** Where the framework id lives between runs (a file in the data directory; etcd in cluster mode). */
export interface FrameworkIdStore {
  load(): Promise<string | undefined>
  save(id: string): Promise<void>
}

export interface MesosBackendOptions extends MesosBackendConfig {
  readonly cluster: string
  readonly clock: Clock
  readonly log: Logger
  readonly frameworkIds: FrameworkIdStore
  /** The OS user maitre runs as: the framework's default task user. */
  readonly user: string
}

const ENDED_KEPT = 10
/** Implicit reconciliation (every task the master knows of this framework), as the reference advises. */
const IMPLICIT_RECONCILE_MS = 15 * 60_000
/** First wait before reconciling again the tasks that got no update since the subscription. */
const RECONCILE_RETRY_MS = 5_000
const MAX_RECONCILE_RETRY_MS = 5 * 60_000

interface MesosTask {
  readonly id: string
  readonly serviceId: string
  readonly agentId: string
  host: string
  ports: number[]
  state: TaskState
  healthy: boolean
  everHealthy: boolean
  startedAt: number
  killing: boolean
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
}

export class MesosBackend implements Backend {
  readonly kind = 'mesos' as const
  readonly #o: MesosBackendOptions
  readonly #services = new Map<string, MesosService>()
  /** Tasks by id whatever their service, for updates (which carry only the id). */
  readonly #tasks = new Map<string, MesosTask>()
  readonly #listeners: ServiceListeners
  readonly #scheduler: Promise<MesosScheduler>
  /** Offers are suppressed (nothing wanted) as far as this framework last told the master. */
  #suppressed = false
  /** The demand last told to the master by a REVIVE: more than this revives again. */
  #revivedFor = 0
  #subscribedAt = 0
  /**
   * The master's state has been read since the last subscription: until then nothing is launched,
   * or a version asked for right after a restart would get new tasks beside the ones it runs.
   */
  #adopted = false
  #cancelReconcile: (() => void) | undefined
  #closed = false

  constructor(options: MesosBackendOptions) {
    this.#o = options
    this.#listeners = new ServiceListeners(options.log)
    this.#scheduler = this.#connect()
  }

  async #connect(): Promise<MesosScheduler> {
    const o = this.#o
    const frameworkId = await o.frameworkIds.load()
    const scheduler = new MesosScheduler({
      masters: o.master.split(',').map((m) => m.trim().replace(/\/+$/, '')).filter((m) => m !== ''),
      frameworkInfo: {
        user: o.user,
        name: o.frameworkName,
        roles: [o.role],
        capabilities: [{ type: 'MULTI_ROLE' }],
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
    scheduler.start()
    return scheduler
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
    return { id, spec, requested, tasks: new Map(), failed: [], killed: [], failedSinceHealthy: [], deploymentError: undefined }
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
    if (service === undefined || task === undefined || task.killing) return false
    service.requested = Math.max(0, service.requested - 1)
    this.#kill(service, task, options.force === true)
    this.#o.log.info({ service: serviceId, instance: instanceId }, 'instance killed')
    this.#demandChanged()
    this.#listeners.emit(serviceId)
    return true
  }

  /** Asks the master to kill a task; it stays a task (not an instance) until its terminal update. */
  #kill(service: MesosService, task: MesosTask, force: boolean): void {
    task.killing = true
    const graceMs = force ? 0 : (service.spec?.terminationGraceMs ?? 0)
    void this.#call({ type: 'KILL', kill: { task_id: { value: task.id }, agent_id: { value: task.agentId }, kill_policy: { grace_period: { nanoseconds: graceMs * 1_000_000 } } } }, { service: service.id, instance: task.id })
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
    await (await this.#scheduler).close()
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

  #onEvent(event: Event): void {
    if (this.#closed) return
    switch (event.type) {
      case 'SUBSCRIBED':
        void this.#subscribed(event.subscribed?.framework_id.value ?? '')
        break
      case 'OFFERS':
        void this.#offered(event.offers?.offers ?? [])
        break
      case 'UPDATE':
        if (event.update !== undefined) this.#updated(event.update.status)
        break
      case 'FAILURE':
        this.#o.log.warn({ failure: event.failure }, 'mesos reports an agent or executor lost')
        break
      default:
        // HEARTBEAT (the scheduler's watchdog saw it), RESCIND (no offer is held here), the rest unused.
        break
    }
  }

  async #subscribed(frameworkId: string): Promise<void> {
    this.#subscribedAt = this.#o.clock.now()
    this.#suppressed = false
    this.#revivedFor = 0
    this.#adopted = false
    this.#o.log.info({ frameworkId }, 'subscribed to mesos')
    await this.#o.frameworkIds.save(frameworkId).catch((err: unknown) => this.#o.log.error({ err, frameworkId }, 'could not keep the mesos framework id'))
    try {
      await this.#adopt(frameworkId)
    } catch (err) {
      // Without the state, reconciliation still brings the known tasks' states; tasks of an
      // earlier run stay unknown until the next subscription reads it.
      this.#o.log.warn({ err }, 'could not read the mesos master state to adopt running tasks')
    }
    this.#adopted = true
    this.#reconcile(RECONCILE_RETRY_MS, true)
    // Also clears the refuse filters of offers declined before the adoption.
    this.#demandChanged(true)
  }

  /** Takes over the tasks the master runs for this framework that this router does not know yet. */
  async #adopt(frameworkId: string): Promise<void> {
    const scheduler = await this.#scheduler
    const leader = scheduler.leader
    if (leader === undefined) return
    const res = await request(`${leader}/master/state`, { headers: scheduler.authorizationHeaders(), headersTimeout: this.#o.requestTimeoutMs, bodyTimeout: this.#o.requestTimeoutMs })
    if (res.statusCode !== 200) {
      await res.body.dump()
      throw new Error(`GET /master/state: ${res.statusCode}`)
    }
    const state = (await res.body.json()) as MasterState
    const hosts = new Map((state.slaves ?? []).map((s) => [s.id, s.hostname]))
    const framework = (state.frameworks ?? []).find((f) => f.id === frameworkId)
    for (const t of framework?.tasks ?? []) {
      if (TERMINAL_STATES.has(t.state as TaskState) || this.#tasks.has(t.id)) continue
      if (labelOf(t.labels, LABELS.cluster) !== this.#o.cluster) continue
      const serviceId = labelOf(t.labels, LABELS.serviceId) ?? serviceIdOfTask(t.id)
      if (serviceId === undefined) continue
      let service = this.#services.get(serviceId)
      if (service === undefined) {
        service = this.#newService(serviceId, parseSpec(labelOf(t.labels, LABELS.launchSpec)), 0)
        this.#services.set(serviceId, service)
      }
      const statuses = t.statuses ?? []
      const task: MesosTask = {
        id: t.id,
        serviceId,
        agentId: t.slave_id,
        host: hosts.get(t.slave_id) ?? '',
        ports: portsOfState(t.resources?.ports),
        state: t.state as TaskState,
        healthy: statuses[statuses.length - 1]?.healthy === true,
        everHealthy: statuses.some((s) => s.healthy === true),
        startedAt: Math.round((statuses[0]?.timestamp ?? this.#o.clock.now() / 1000) * 1000),
        killing: false,
        updatedAt: 0,
      }
      service.tasks.set(task.id, task)
      this.#tasks.set(task.id, task)
      // Its count is what runs, or what a request asked for meanwhile if that is more.
      service.requested = Math.max(service.requested, [...service.tasks.values()].filter((k) => !k.killing).length)
      this.#o.log.info({ service: serviceId, instance: task.id, state: task.state }, 'task adopted')
      this.#update(service)
    }
  }

  async #offered(offers: readonly Offer[]): Promise<void> {
    const demands = this.#demands()
    const used = new Map<string, { cpus: number; memMb: number; instances: Map<string, number> }>()
    for (const task of this.#tasks.values()) {
      const spec = this.#services.get(task.serviceId)?.spec
      const use = used.get(task.agentId) ?? { cpus: 0, memMb: 0, instances: new Map<string, number>() }
      use.cpus += spec?.cpus ?? 0
      use.memMb += spec?.memMb ?? 0
      use.instances.set(task.serviceId, (use.instances.get(task.serviceId) ?? 0) + 1)
      used.set(task.agentId, use)
    }
    const placement = place({ offers, demands, used: used as ReadonlyMap<string, AgentUse>, spread: this.#o.spread })
    // Every task is recorded before any call goes out: offers that come meanwhile see them as demand met.
    const accepts = placement.launches.map((launch) => {
      const infos = []
      for (const placed of launch.tasks) {
        const service = this.#services.get(placed.serviceId)
        if (service?.spec === undefined) continue
        const id = newTaskId(service.id)
        const now = this.#o.clock.now()
        const task: MesosTask = { id, serviceId: service.id, agentId: launch.agentId, host: placed.hostname, ports: [...placed.ports], state: 'TASK_STAGING', healthy: false, everHealthy: false, startedAt: now, killing: false, updatedAt: now }
        service.tasks.set(id, task)
        this.#tasks.set(id, task)
        infos.push(taskInfoOf(service.spec, placed, id, this.#o.cluster))
        this.#o.log.info({ service: service.id, instance: id, agent: launch.agentId, host: placed.hostname, ports: placed.ports }, 'instance launching')
        this.#listeners.emit(service.id)
      }
      return { launch, infos }
    })
    await Promise.all(
      accepts.map(async ({ launch, infos }) => {
        const ok = await this.#call({ type: 'ACCEPT', accept: { offer_ids: launch.offerIds, operations: [{ type: 'LAUNCH', launch: { task_infos: infos } }], filters: { refuse_seconds: this.#o.declineRefuseSecs } } }, { agent: launch.agentId })
        // Never launched: the demand is still there, for the next offers.
        if (!ok) for (const info of infos) this.#forget(info.task_id.value)
      }),
    )
    if (placement.unused.length > 0) {
      await this.#call({ type: 'DECLINE', decline: { offer_ids: placement.unused, filters: { refuse_seconds: this.#o.declineRefuseSecs } } }, {})
    }
    if (placement.unplaced.size > 0) this.#o.log.debug({ unplaced: Object.fromEntries(placement.unplaced) }, 'instances that fit no offer')
    this.#demandChanged()
  }

  #updated(status: TaskStatus): void {
    const scheduler = this.#scheduler
    if (status.uuid !== undefined && status.agent_id !== undefined) {
      const ack = { type: 'ACKNOWLEDGE' as const, acknowledge: { agent_id: status.agent_id, task_id: status.task_id, uuid: status.uuid } }
      void scheduler.then((s) => s.call(ack)).catch((err: unknown) => this.#o.log.warn({ err, task: status.task_id.value }, 'mesos acknowledgement failed (the master will send the update again)'))
    }
    const task = this.#tasks.get(status.task_id.value)
    if (task === undefined) {
      // A task this router does not know: one of a deleted service, ended since; or one the
      // master's state did not list yet (adopted on the next subscription's state).
      if (!TERMINAL_STATES.has(status.state)) this.#o.log.debug({ task: status.task_id.value, state: status.state }, 'update for an unknown mesos task')
      return
    }
    const service = this.#services.get(task.serviceId)
    task.updatedAt = this.#o.clock.now()
    if (!TERMINAL_STATES.has(status.state)) {
      task.state = status.state
      if (status.healthy !== undefined) task.healthy = status.healthy
      if (status.state !== 'TASK_RUNNING') task.healthy = false
      if (task.healthy) task.everHealthy = true
      if (service !== undefined) {
        if (task.healthy) service.failedSinceHealthy = []
        this.#update(service)
      }
      return
    }
    this.#forget(task.id)
    if (service === undefined) return
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
      // A lost agent says nothing of the service: replaced, but no step towards a deployment error.
      if (!lostWithItsAgent(status)) service.failedSinceHealthy = [...service.failedSinceHealthy, ended].slice(-ENDED_KEPT)
      this.#o.log.warn({ service: service.id, instance: task.id, state: status.state, reason: status.reason, message: status.message }, 'instance failed')
    }
    this.#update(service)
    this.#demandChanged()
  }

  #forget(taskId: string): void {
    const task = this.#tasks.get(taskId)
    if (task === undefined) return
    this.#tasks.delete(taskId)
    this.#services.get(task.serviceId)?.tasks.delete(taskId)
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

  #demands(): Demand[] {
    const demands: Demand[] = []
    if (!this.#adopted) return demands
    for (const service of this.#services.values()) {
      if (service.spec === undefined) continue
      const live = [...service.tasks.values()].filter((t) => !t.killing).length
      const count = service.requested - live
      if (count > 0) demands.push({ serviceId: service.id, count, cpus: service.spec.cpus, memMb: service.spec.memMb, ports: Math.max(1, service.spec.ports) })
    }
    return demands
  }

  /** Tells the master whether offers are wanted: SUPPRESS with no demand, REVIVE when it appears or grows. */
  #demandChanged(force = false): void {
    const wanted = this.#demands().reduce((sum, d) => sum + d.count, 0)
    if (wanted === 0) {
      this.#revivedFor = 0
      if (!this.#suppressed || force) {
        this.#suppressed = true
        void this.#call({ type: 'SUPPRESS', suppress: { roles: [this.#o.role] } }, {})
      }
    } else if (this.#suppressed || wanted > this.#revivedFor || force) {
      this.#suppressed = false
      this.#revivedFor = wanted
      void this.#call({ type: 'REVIVE', revive: { roles: [this.#o.role] } }, {})
    } else {
      this.#revivedFor = wanted
    }
  }

  /**
   * Reconciles the tasks this router believes live; those that got no update since the
   * subscription are asked about again with a growing wait, and every task implicitly each 15 min.
   */
  #reconcile(retryMs: number, afterSubscription = false): void {
    this.#cancelReconcile?.()
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

  /** A call on the current subscription; false (logged) if it did not go through. */
  async #call(call: Parameters<MesosScheduler['call']>[0], context: Record<string, unknown>): Promise<boolean> {
    try {
      await (await this.#scheduler).call(call)
      return true
    } catch (err) {
      if (!this.#closed) this.#o.log.warn({ err, call: call.type, ...context }, 'mesos call failed')
      return false
    }
  }
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

function parseSpec(text: string | undefined): LaunchSpec | undefined {
  if (text === undefined) return undefined
  try {
    const spec = JSON.parse(text) as LaunchSpec
    return typeof spec.serviceId === 'string' && typeof spec.command === 'string' ? spec : undefined
  } catch {
    return undefined
  }
}
