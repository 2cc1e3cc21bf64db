/**
 * Request slots per service version: each healthy instance offers concurrency-level slots; a
 * request takes a lease on one, or waits in a bounded FIFO queue until a slot frees, the queue
 * timeout passes, a deployment error is known, or the client goes away. Instances that fail a
 * request (connect error, backend 503) are ejected for an exponentially growing time.
 */
import { MaitreError } from '../errors.ts'
import type { Clock } from '../clock.ts'
import type { Instance } from './backend.ts'
import { chooseInstance, type LoadBalancing } from './instance-choice.ts'

export type ReleaseOutcome = 'success' | 'instance-error' | 'instance-busy' | 'client-error' | 'generic-error'

export interface Lease {
  readonly instance: Instance
  /** Frees the slot; safe to call more than once (only the first call counts). */
  release(outcome: ReleaseOutcome): void
}

export interface Routing {
  readonly concurrencyLevel: number
  readonly loadBalancing: LoadBalancing
  readonly maxQueueLength: number
}

export interface Load {
  /** Last time a request arrived or finished (or when the service was first seen). */
  readonly lastActiveAt: number
  /**
   * Requests this router carries: on its own slots, and on slots a peer lent it; not those on
   * slots it lent a peer, which that peer carries and counts. So the fleet's sum counts each
   * request once, before, during and after a loan (the borrower's queued request becomes its
   * in-flight one), however stale the reports it is summed from.
   */
  readonly inFlight: number
  readonly queued: number
  readonly healthy: number
  readonly slotsAvailable: number
}

export interface InstanceSlots {
  readonly id: string
  readonly used: number
  readonly ejectedUntil: number
  readonly locked: boolean
  /** False while an instance that is no longer healthy drains the requests it carries. */
  readonly routable: boolean
}

/**
 * What a router in a cluster adds to slot accounting: how many of an instance's slots are its to
 * fill (the rest belong to other routers), and the hooks slot lending runs on. A router on its
 * own has none of it: every slot is its own.
 */
export interface SlotSharing {
  /** How many requests this router may have on the instance at once (≤ concurrency-level). */
  limit(serviceId: string, instanceId: string, concurrencyLevel: number): number
  /** Requests waiting for a slot of the service on this router changed in number. */
  queueChanged(serviceId: string, queued: number): void
  /** A slot of the service is free and nobody here waits for it: another router may use it. */
  slotFree(serviceId: string): void
  /**
   * Instances came into rotation here (new to this router, or back from an ejection or a kill
   * hold) while requests still wait (so none of their slots is this router's share): peers
   * should hear again that they wait, since one may have offered such an instance while this
   * router could not take it, been declined, and stopped lending here.
   */
  rotationGrew(serviceId: string, queued: number): void
}

export interface TrackerOptions {
  readonly clock: Clock
  readonly random?: () => number
  /** First ejection lasts this long; each consecutive failure doubles it. */
  readonly ejectBaseMs: number
  readonly maxEjectMs: number
  /** Told about every ejection (for metrics and logs). */
  readonly onEject?: (serviceId: string, instanceId: string, periodMs: number, outcome: ReleaseOutcome) => void
}

/**
 * One instance's slots. The object lives while the instance is healthy or still carries a
 * request, so leases taken before a sync release into the same counter, and an instance that
 * fails a health check while busy keeps its in-flight count (for scaling, GC and kill choice)
 * until its requests drain.
 */
interface Slot {
  instance: Instance
  startedAt: number
  expired: boolean
  used: number
  failures: number
  ejectedUntil: number
  /** Reserved for a kill: takes no new requests. */
  locked: boolean
  /** Out of rotation until then for a kill the cluster's leader prepares (0 = none). */
  killHoldUntil: number
  /** Out of rotation until then for failing requests (0 = none); ejectedUntil is the later of the two. */
  failedUntil: number
  /** Healthy in the backend's last report: only routable slots take new requests. */
  routable: boolean
}

interface Bench {
  readonly failures: number
  readonly failedUntil: number
  readonly killHoldUntil: number
  /** Locked for a kill (see Slot.locked): it comes back locked, and takes nothing until unlocked. */
  readonly locked: boolean
}

interface Waiter {
  readonly grant: (lease: Lease) => void
  readonly fail: (err: MaitreError) => void
}

interface ServiceSlots {
  readonly id: string
  routing: Routing
  /** Routing was set from the version's parameters (not the default a sync starts with). */
  configured: boolean
  /** Last time a request arrived or finished. */
  lastActiveAt: number
  /** Requests this router has proxied to the version, and when the last one arrived (0: none). */
  requests: number
  lastRequestAt: number
  slots: Map<string, Slot>
  queue: Waiter[]
  /**
   * Ejections and kill holds of instances that left rotation (a failed health check) while the
   * backend still reports them: one that comes back healthy resumes them, so a flapping instance
   * does not shed its ejection. Bounded by the instances the backend reports.
   */
  benched: Map<string, Bench>
  /** Requests waiting for the version to start here (a cold start): they count against the queue's bound. */
  startWaiters: number
  /** Slots taken to lend to a peer (lend), not yet released: the peer carries their requests. */
  lent: number
  /** Requests granted a slot a peer lent (grantBorrowed), not yet done nor adopted as this router's own. */
  borrowed: number
  deploymentError: string | undefined
  ejectTimerCancel: (() => void) | undefined
}

export interface AcquireOptions {
  /** How long to wait in the queue. */
  readonly timeoutMs: number
  /** The request's whole queue timeout, as the error message states it (default: timeoutMs). */
  readonly queueTimeoutMs?: number | undefined
  readonly signal?: AbortSignal | undefined
  /** Told once the request really waits in the queue (not when it is refused at once). */
  readonly onQueued?: (() => void) | undefined
}

const DEFAULT_ROUTING: Routing = { concurrencyLevel: 1, loadBalancing: 'oldest', maxQueueLength: 1000 }

export class InstanceTracker {
  readonly #services = new Map<string, ServiceSlots>()
  readonly #clock: Clock
  readonly #random: () => number
  readonly #ejectBaseMs: number
  readonly #maxEjectMs: number
  readonly #onEject: TrackerOptions['onEject']
  #sharing: SlotSharing | undefined

  constructor(options: TrackerOptions) {
    this.#onEject = options.onEject
    this.#clock = options.clock
    this.#random = options.random ?? Math.random
    this.#ejectBaseMs = options.ejectBaseMs
    this.#maxEjectMs = options.maxEjectMs
  }

  /**
   * Whether the service's routing knobs were set. A version this router did not start (another
   * router did, or this one before a restart) is known from the backend alone until then.
   */
  isConfigured(serviceId: string): boolean {
    return this.#services.get(serviceId)?.configured === true
  }

  /** Joins a cluster's slot sharing (late: the cluster needs this tracker to lend its slots). */
  shareSlots(sharing: SlotSharing): void {
    this.#sharing = sharing
    this.redispatch()
  }

  /** Shares changed (routers came or went, or let go of slots): waiting requests may fit now. */
  redispatch(): void {
    for (const service of this.#services.values()) this.#dispatch(service)
  }

  /** Sets the routing knobs of a service (creating its entry); queued requests see new slots at once. */
  configure(serviceId: string, routing: Routing): void {
    const service = this.#service(serviceId)
    service.routing = routing
    service.configured = true
    this.#dispatch(service)
  }

  /**
   * Replaces the known instances of a service with what the backend reports. An instance that is
   * no longer healthy (or no longer reported) but still carries requests keeps its slot, out of
   * rotation, until they drain: its in-flight requests stay counted, it cannot be locked for a
   * kill, and if it recovers it resumes with the slots it still has in use.
   */
  sync(serviceId: string, instances: readonly Instance[], deploymentError: string | undefined): void {
    const service = this.#service(serviceId)
    const now = this.#clock.now()
    const next = new Map<string, Slot>()
    let added = false
    /** The longest ejection an instance back in rotation resumed (ms left; 0: none). */
    let resumedEjection = 0
    for (const instance of instances) {
      if (!instance.healthy) continue
      const slot = service.slots.get(instance.id)
      if (slot === undefined) {
        added = true
        const bench = service.benched.get(instance.id)
        const failedUntil = bench === undefined || bench.failedUntil <= now ? 0 : bench.failedUntil
        const killHoldUntil = bench === undefined || bench.killHoldUntil <= now ? 0 : bench.killHoldUntil
        const ejectedUntil = Math.max(failedUntil, killHoldUntil)
        next.set(instance.id, { instance, startedAt: instance.startedAt, expired: instance.flags.has('expired'), used: 0, failures: bench?.failures ?? 0, ejectedUntil, locked: bench?.locked ?? false, killHoldUntil, failedUntil, routable: true })
        resumedEjection = Math.max(resumedEjection, ejectedUntil - now)
      } else {
        slot.instance = instance
        slot.routable = true
        slot.expired ||= instance.flags.has('expired')
        next.set(instance.id, slot)
      }
    }
    for (const [id, slot] of service.slots) {
      if (next.has(id)) continue
      if (slot.used === 0) {
        this.#bench(service, slot)
        continue
      }
      slot.routable = false
      next.set(id, slot)
    }
    // Kept only for instances the backend still reports and that are out of rotation.
    if (service.benched.size > 0) {
      const reported = new Set<string>()
      for (const instance of instances) reported.add(instance.id)
      for (const id of service.benched.keys()) if (next.has(id) || !reported.has(id)) service.benched.delete(id)
    }
    service.slots = next
    if (resumedEjection > 0) this.#scheduleUneject(service, resumedEjection)
    service.deploymentError = deploymentError
    if (deploymentError !== undefined && routableCount(service) === 0) {
      const waiting = service.queue.splice(0)
      if (waiting.length > 0) this.#sharing?.queueChanged(serviceId, 0)
      for (const waiter of waiting) waiter.fail(deploymentFailure(serviceId, deploymentError))
    }
    this.#dispatch(service)
    if (added) this.#rotationGrew(service)
  }

  /** A request for the version arrived (counted once, however many slots it takes to serve). */
  noteRequest(serviceId: string): void {
    const service = this.#service(serviceId)
    service.requests += 1
    service.lastRequestAt = this.#clock.now()
  }

  /** When the version's last request ended, if none is under way or waiting here now (undefined otherwise, or if it is unknown here). */
  idleSince(serviceId: string): number | undefined {
    const service = this.#services.get(serviceId)
    if (service === undefined || service.queue.length > 0 || this.#inFlight(service) > 0 || service.borrowed > 0) return undefined
    return service.lastActiveAt
  }

  /** Waiter's request-metrics.total and last-request-time, as this router saw them. */
  requestStats(serviceId: string): { readonly total: number; readonly lastRequestAt: number | undefined } {
    const service = this.#services.get(serviceId)
    return { total: service?.requests ?? 0, lastRequestAt: service === undefined || service.lastRequestAt === 0 ? undefined : service.lastRequestAt }
  }

  /** A lease at once if a slot is free and nobody is queued ahead, else undefined. */
  tryAcquire(serviceId: string): Lease | undefined {
    const service = this.#services.get(serviceId)
    if (service === undefined || service.queue.length > 0) return undefined
    const lease = this.#take(service)
    if (lease !== undefined) service.lastActiveAt = this.#clock.now()
    return lease
  }

  /**
   * A slot to lend to a peer (the slot exchange), as tryAcquire; it counts here as a slot in use
   * (kill vetoes, routing), but its request is the borrower's to count in the load.
   */
  lend(serviceId: string, avoid?: ReadonlySet<string>): Lease | undefined {
    const service = this.#services.get(serviceId)
    if (service === undefined || service.queue.length > 0) return undefined
    const lease = this.#take(service, avoid)
    if (lease === undefined) return undefined
    service.lastActiveAt = this.#clock.now()
    service.lent += 1
    let released = false
    return {
      instance: lease.instance,
      release: (outcome) => {
        if (!released) {
          released = true
          service.lent -= 1
        }
        lease.release(outcome)
      },
    }
  }

  acquire(serviceId: string, options: AcquireOptions): Promise<Lease> {
    const service = this.#service(serviceId)
    service.lastActiveAt = this.#clock.now()
    const immediate = service.queue.length === 0 ? this.#take(service) : undefined
    if (immediate !== undefined) return Promise.resolve(immediate)
    if (service.deploymentError !== undefined && routableCount(service) === 0) {
      return Promise.reject(deploymentFailure(serviceId, service.deploymentError))
    }
    if (service.queue.length + service.startWaiters >= service.routing.maxQueueLength) return Promise.reject(this.#queueFull(service))
    if (options.signal?.aborted === true) return Promise.reject(clientGone())
    return new Promise<Lease>((resolve, reject) => {
      let settled = false
      const finish = (): void => {
        settled = true
        cancelTimer()
        options.signal?.removeEventListener('abort', onAbort)
        const index = service.queue.indexOf(waiter)
        if (index !== -1) {
          service.queue.splice(index, 1)
          this.#sharing?.queueChanged(service.id, service.queue.length)
        }
      }
      const waiter: Waiter = {
        grant: (lease) => {
          if (settled) return lease.release('success')
          finish()
          resolve(lease)
        },
        fail: (err) => {
          if (settled) return
          finish()
          reject(err)
        },
      }
      const onAbort = (): void => waiter.fail(clientGone())
      const cancelTimer = this.#clock.setTimeout(() => waiter.fail(this.#timeoutError(serviceId, service, options.queueTimeoutMs ?? options.timeoutMs)), options.timeoutMs)
      options.signal?.addEventListener('abort', onAbort, { once: true })
      service.queue.push(waiter)
      this.#sharing?.queueChanged(service.id, service.queue.length)
      options.onQueued?.()
    })
  }

  /**
   * A request waits for the version to start (Waiter queues it from its arrival): it takes a
   * place in the version's queue bound until the returned function gives it back, which it does
   * before it asks for a slot. Throws Waiter's queue-full error when the bound is reached, so a
   * long cold start (a Kubernetes image pull) cannot gather requests without limit.
   */
  awaitStart(serviceId: string): () => void {
    const service = this.#service(serviceId)
    if (service.queue.length + service.startWaiters >= service.routing.maxQueueLength) throw this.#queueFull(service)
    service.startWaiters += 1
    let given = false
    return () => {
      if (given) return
      given = true
      service.startWaiters -= 1
    }
  }

  load(serviceId: string): Load {
    const service = this.#services.get(serviceId)
    if (service === undefined) return { lastActiveAt: 0, inFlight: 0, queued: 0, healthy: 0, slotsAvailable: 0 }
    const now = this.#clock.now()
    let available = 0
    for (const slot of service.slots.values()) {
      if (slot.routable && slot.ejectedUntil <= now && !slot.locked) available += Math.max(0, this.#limitOf(service, slot) - slot.used)
    }
    return { lastActiveAt: service.lastActiveAt, inFlight: Math.max(0, this.#inFlight(service) - service.lent) + service.borrowed, queued: service.queue.length, healthy: routableCount(service), slotsAvailable: available }
  }

  /** Per-instance slot use, for the admin API and the scaler's choice of what to kill. */
  instanceSlots(serviceId: string): InstanceSlots[] {
    const service = this.#services.get(serviceId)
    return service === undefined
      ? []
      : [...service.slots.values()].map((s) => ({ id: s.instance.id, used: s.used, ejectedUntil: s.ejectedUntil, locked: s.locked, routable: s.routable }))
  }

  /**
   * Takes an idle instance out of rotation so it can be killed with no request in flight.
   * Returns false if the instance is busy (or unknown to routing, hence idle by definition: true).
   */
  lockForKill(serviceId: string, instanceId: string): boolean {
    const service = this.#services.get(serviceId)
    const slot = service?.slots.get(instanceId)
    if (slot === undefined) {
      // Out of rotation now (unhealthy): should it come back before the kill, it comes back locked.
      const bench = service?.benched.get(instanceId)
      if (bench?.locked === true) return false
      service?.benched.set(instanceId, { failures: bench?.failures ?? 0, failedUntil: bench?.failedUntil ?? 0, killHoldUntil: bench?.killHoldUntil ?? 0, locked: true })
      return true
    }
    if (slot.used > 0 || slot.locked) return false
    slot.locked = true
    return true
  }

  /**
   * An operator's kill: the instance leaves rotation at once, busy or not (its requests in flight
   * go on until the kill ends them). Returns whether this call locked it, so that only a kill that
   * did may unlock it when the kill fails: an autoscaler's own lock is not the operator's to lift.
   */
  lockForOperatorKill(serviceId: string, instanceId: string): boolean {
    const slot = this.#services.get(serviceId)?.slots.get(instanceId)
    if (slot === undefined || slot.locked) return false
    slot.locked = true
    return true
  }

  /** Returns a locked instance to rotation (its kill did not happen). */
  unlock(serviceId: string, instanceId: string): void {
    const service = this.#services.get(serviceId)
    const slot = service?.slots.get(instanceId)
    const bench = service?.benched.get(instanceId)
    if (bench?.locked === true) service?.benched.set(instanceId, { ...bench, locked: false })
    if (service === undefined || slot === undefined) return
    slot.locked = false
    this.#dispatch(service)
  }

  /** Marks instances past their expiry: they are chosen last for requests and first for kills. */
  markExpired(serviceId: string, instanceIds: ReadonlySet<string>): void {
    const service = this.#services.get(serviceId)
    if (service === undefined) return
    for (const slot of service.slots.values()) slot.expired = slot.instance.flags.has('expired') || instanceIds.has(slot.instance.id)
  }

  /** Drops a deleted service; its queued requests learn that it is gone. */
  forget(serviceId: string): void {
    const service = this.#services.get(serviceId)
    if (service === undefined) return
    this.#services.delete(serviceId)
    service.ejectTimerCancel?.()
    if (service.queue.length > 0) this.#sharing?.queueChanged(serviceId, 0)
    for (const waiter of service.queue.splice(0)) {
      waiter.fail(new MaitreError('MAITRE_SERVICE_NOT_FOUND', `Service ${serviceId} was deleted`, { details: { 'service-id': serviceId } }))
    }
  }

  /** Drops a service's entry if nothing waits on it or runs in it (a version that never ran). */
  dropIfIdle(serviceId: string): void {
    const service = this.#services.get(serviceId)
    if (service === undefined || service.queue.length > 0 || service.slots.size > 0) return
    service.ejectTimerCancel?.()
    this.#services.delete(serviceId)
  }

  /** Services with an entry (for tests and /state: nothing is kept for versions that are gone). */
  serviceIds(): string[] {
    return [...this.#services.keys()]
  }

  #service(serviceId: string): ServiceSlots {
    let service = this.#services.get(serviceId)
    if (service === undefined) {
      service = { id: serviceId, routing: DEFAULT_ROUTING, configured: false, lastActiveAt: this.#clock.now(), requests: 0, lastRequestAt: 0, slots: new Map(), queue: [], benched: new Map(), startWaiters: 0, lent: 0, borrowed: 0, deploymentError: undefined, ejectTimerCancel: undefined }
      this.#services.set(serviceId, service)
    }
    return service
  }

  #assigned(service: ServiceSlots): number {
    let total = 0
    for (const slot of service.slots.values()) if (slot.routable) total += this.#limitOf(service, slot)
    return total
  }

  #inFlight(service: ServiceSlots): number {
    let total = 0
    for (const slot of service.slots.values()) total += slot.used
    return total
  }

  /** `avoid`: instances not to pick (a borrower declined them). */
  #take(service: ServiceSlots, avoid?: ReadonlySet<string>): Lease | undefined {
    const now = this.#clock.now()
    const free: Slot[] = []
    for (const slot of service.slots.values()) {
      if (slot.routable && slot.ejectedUntil <= now && !slot.locked && slot.used < this.#limitOf(service, slot) && avoid?.has(slot.instance.id) !== true) free.push(slot)
    }
    const slot = chooseInstance(free, service.routing.loadBalancing, this.#random)
    if (slot === undefined) return undefined
    slot.used += 1
    let released = false
    return {
      instance: slot.instance,
      release: (outcome) => {
        if (released) return
        released = true
        slot.used -= 1
        service.lastActiveAt = this.#clock.now()
        this.#settle(service, slot, outcome)
        // A drained instance that left rotation while busy is forgotten now, as a sync would have.
        if (!slot.routable && slot.used === 0 && service.slots.get(slot.instance.id) === slot) {
          service.slots.delete(slot.instance.id)
          this.#bench(service, slot)
        }
        this.#dispatch(service)
      },
    }
  }

  /** Remembers an instance's ejection as it leaves rotation (see ServiceSlots.benched). */
  #bench(service: ServiceSlots, slot: Slot): void {
    if (slot.failures === 0 && slot.killHoldUntil === 0 && !slot.locked) return
    service.benched.set(slot.instance.id, { failures: slot.failures, failedUntil: slot.failedUntil, killHoldUntil: slot.killHoldUntil, locked: slot.locked })
  }

  #settle(service: ServiceSlots, slot: Slot, outcome: ReleaseOutcome): void {
    if (outcome === 'success') {
      slot.failures = 0
      slot.failedUntil = 0
      slot.ejectedUntil = slot.killHoldUntil
    } else if (outcome === 'instance-error' || outcome === 'instance-busy') {
      // A 503 says "busy", which a client can make any instance say: it never takes the last
      // instance out of rotation, or one 503 would leave the service with nothing to route to.
      if (outcome === 'instance-busy' && !this.#anotherRoutable(service, slot)) return
      slot.failures += 1
      const period = Math.min(this.#maxEjectMs, this.#ejectBaseMs * 2 ** Math.min(20, slot.failures - 1))
      slot.failedUntil = this.#clock.now() + period
      slot.ejectedUntil = Math.max(slot.failedUntil, slot.killHoldUntil)
      this.#scheduleUneject(service, period)
      this.#onEject?.(slot.instance.serviceId, slot.instance.id, period, outcome)
    }
  }

  #anotherRoutable(service: ServiceSlots, slot: Slot): boolean {
    const now = this.#clock.now()
    for (const other of service.slots.values()) {
      if (other !== slot && other.routable && !other.locked && other.ejectedUntil <= now) return true
    }
    return false
  }

  /** Wakes the queue when an ejection ends, since no other event would. */
  #scheduleUneject(service: ServiceSlots, periodMs: number): void {
    service.ejectTimerCancel?.()
    // Only ejections still running: one that ran out stays on its slot until a success clears
    // it, and counting it would make this timer due at once, again and again (a busy loop).
    const now = this.#clock.now()
    const earliest = Math.min(...[...service.slots.values()].filter((s) => s.ejectedUntil > now).map((s) => s.ejectedUntil))
    const wait = Number.isFinite(earliest) ? earliest - now : periodMs
    service.ejectTimerCancel = this.#clock.setTimeout(() => {
      service.ejectTimerCancel = undefined
      this.#dispatch(service)
      this.#rotationGrew(service)
      const stillEjected = [...service.slots.values()].some((s) => s.ejectedUntil > this.#clock.now())
      if (stillEjected) this.#scheduleUneject(service, periodMs)
    }, wait)
  }

  #dispatch(service: ServiceSlots): void {
    const waiting = service.queue.length
    while (service.queue.length > 0) {
      const lease = this.#take(service)
      if (lease === undefined) break
      const waiter = service.queue.shift() as Waiter
      waiter.grant(lease)
    }
    if (this.#sharing === undefined) return
    if (service.queue.length !== waiting) this.#sharing.queueChanged(service.id, service.queue.length)
    if (service.queue.length === 0) this.#sharing.slotFree(service.id)
  }

  #limitOf(service: ServiceSlots, slot: Slot): number {
    const level = service.routing.concurrencyLevel
    return this.#sharing === undefined ? level : this.#sharing.limit(service.id, slot.instance.id, level)
  }

  /**
   * Another router lends this one a slot it holds on an instance: the request that has waited
   * longest here takes it, and `done` tells the lender how it went when the request lets go.
   * Undefined if nobody waits (or the instance is not one this router may route to): the lender
   * keeps its slot. Otherwise `adopt`: called if the lender stops counting the request (its
   * offer's connection broke), it counts on this router from then until the request lets go.
   */
  grantBorrowed(serviceId: string, instanceId: string, done: (outcome: ReleaseOutcome) => void): (() => void) | undefined {
    const service = this.#services.get(serviceId)
    const slot = service?.slots.get(instanceId)
    if (service === undefined || slot === undefined || service.queue.length === 0) return undefined
    if (!slot.routable || slot.locked || slot.ejectedUntil > this.#clock.now()) return undefined
    const waiter = service.queue.shift() as Waiter
    this.#sharing?.queueChanged(serviceId, service.queue.length)
    let released = false
    let adopted = false
    service.borrowed += 1
    waiter.grant({
      instance: slot.instance,
      release: (outcome) => {
        if (released) return
        released = true
        service.lastActiveAt = this.#clock.now()
        if (!adopted) service.borrowed -= 1
        if (adopted) {
          slot.used -= 1
          if (!slot.routable && slot.used === 0 && service.slots.get(slot.instance.id) === slot) {
          service.slots.delete(slot.instance.id)
          this.#bench(service, slot)
        }
          this.#dispatch(service)
        }
        done(outcome)
      },
    })
    return () => {
      if (released || adopted) return
      adopted = true
      // Its own from now on: counted on the slot, as any of its requests.
      service.borrowed -= 1
      slot.used += 1
    }
  }

  /**
   * The leader means to kill an instance: unless this router carries a request on it (a veto),
   * it takes it out of rotation for `periodMs` (the kill comes meanwhile) and says yes.
   */
  ejectForKill(serviceId: string, instanceId: string, periodMs: number): boolean {
    const service = this.#services.get(serviceId)
    const slot = service?.slots.get(instanceId)
    if (service === undefined || slot === undefined) return true
    if (slot.used > 0) return false
    slot.killHoldUntil = this.#clock.now() + periodMs
    slot.ejectedUntil = Math.max(slot.ejectedUntil, slot.killHoldUntil)
    this.#scheduleUneject(service, periodMs)
    return true
  }

  /** The kill held for was vetoed: the instance returns to rotation (unless a failure ejected it since). */
  cancelKillHold(serviceId: string, instanceId: string): void {
    const service = this.#services.get(serviceId)
    // Out of rotation for a failed health check meanwhile: it comes back without the hold.
    const bench = service?.benched.get(instanceId)
    if (service !== undefined && bench !== undefined) service.benched.set(instanceId, { ...bench, killHoldUntil: 0 })
    const slot = service?.slots.get(instanceId)
    if (service === undefined || slot === undefined || slot.killHoldUntil === 0) return
    slot.killHoldUntil = 0
    slot.ejectedUntil = slot.failedUntil
    this.#dispatch(service)
    this.#rotationGrew(service)
  }

  #rotationGrew(service: ServiceSlots): void {
    if (service.queue.length > 0) this.#sharing?.rotationGrew(service.id, service.queue.length)
  }

  /** Per instance, requests this router carries beyond what `limit` now allows it (a share it lost while they ran). */
  *overLimit(): Iterable<readonly [serviceId: string, instanceId: string, over: number]> {
    if (this.#sharing === undefined) return
    for (const service of this.#services.values()) {
      for (const slot of service.slots.values()) {
        if (slot.used > 0 && slot.used > this.#limitOf(service, slot)) yield [service.id, slot.instance.id, slot.used]
      }
    }
  }

  #queueFull(service: ServiceSlots): MaitreError {
    const queued = service.queue.length + service.startWaiters
    return new MaitreError('MAITRE_QUEUE_FULL', 'Max queue length exceeded', {
      details: {
        'current-queue-length': queued,
        'max-queue-length': service.routing.maxQueueLength,
        'outstanding-requests': queued + this.#inFlight(service),
        'service-id': service.id,
      },
      headers: { 'retry-after': '1' },
    })
  }

  #timeoutError(serviceId: string, service: ServiceSlots, timeoutMs: number): MaitreError {
    const seconds = Number((timeoutMs / 1000).toFixed(3))
    const hint = routableCount(service) === 0 ? ' Check that your service is able to start properly!' : ' Check that your service is able to scale properly!'
    return new MaitreError('MAITRE_QUEUE_TIMEOUT', `After ${seconds} seconds, no instance available to handle request.${hint}`, {
      details: {
        'service-id': serviceId,
        'outstanding-requests': service.queue.length + this.#inFlight(service),
        'waiting-for-available-instance': service.queue.length,
        'slots-assigned': this.#assigned(service),
        'slots-in-use': this.#inFlight(service),
      },
      headers: { 'retry-after': '1' },
    })
  }
}

function routableCount(service: ServiceSlots): number {
  let count = 0
  for (const slot of service.slots.values()) if (slot.routable) count += 1
  return count
}

function deploymentFailure(serviceId: string, message: string): MaitreError {
  return new MaitreError('MAITRE_DEPLOYMENT', `Deployment error: ${message}`, { details: { 'service-id': serviceId } })
}

function clientGone(): MaitreError {
  return new MaitreError('MAITRE_CLIENT_CLOSED', 'Connection eagerly closed by client')
}
