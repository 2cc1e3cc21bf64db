/**
 * The scaling control loop: every tick, for each version the backend runs, read its load from
 * the tracker, ask decide() what to run, and carry it out — scale up through the backend, or
 * kill one idle instance (locked first, so no request lands on it) per tick. Also marks
 * instances past their expiry so they are replaced, then killed first.
 */
import type { Backend, ServiceState } from '../backends/backend.ts'
import type { InstanceTracker } from '../backends/tracker.ts'
import type { Clock } from '../clock.ts'
import { startLoop, type Loop } from './loop.ts'
import type { Logger } from '../log.ts'
import { decide, initialScalingState, type BurstOptions, type ScalingDirection, type ScalingPolicy, type ScalingState } from './decide.ts'
import { chooseKill } from './kill-choice.ts'
import { ALONE, fleetLoadOf, type Fleet } from './fleet.ts'

export interface ScalableService {
  readonly policy: ScalingPolicy
  /** Instances older than this are expired; 0 = never. */
  readonly instanceExpiryMs: number
}

export interface AutoscalerOptions {
  readonly tickMs: number
  readonly burst: BurstOptions
  /** Least time between two kills of one service (Waiter's inter-kill-request-wait-time-ms). */
  readonly interKillMs: number
}

export interface LastDecision {
  readonly at: number
  readonly direction: ScalingDirection
  readonly outstanding: number
  readonly ideal: number
  readonly requested: number
  readonly scaleTo: number
  readonly bursting: boolean
  readonly killed: string | undefined
}

export interface ScalingSnapshot {
  readonly 'scaling-state': ScalingDirection
  readonly target: number
  readonly bursting: boolean
  readonly 'last-decision': LastDecision | undefined
}

interface Entry {
  state: ScalingState
  last: LastDecision | undefined
  lastKillAt: number
  running: Promise<void> | undefined
  /** A poke's decision is queued and has not started: further pokes add nothing to it. */
  pokeQueued: boolean
  /** Decisions queued or running: the loop adds none while one is under way. */
  pending: number
}

export interface AutoscalerDeps {
  readonly backend: Backend
  readonly tracker: InstanceTracker
  readonly serviceOf: (serviceId: string) => ScalableService | undefined
  readonly clock: Clock
  readonly log: Logger
  /** Told about every decision (for metrics). */
  readonly onDecision?: (serviceId: string, decision: LastDecision) => void
  /** The cluster: only its leader decides, on the load of every router (default: a router on its own). */
  readonly fleet?: Fleet
}

export class Autoscaler {
  readonly #deps: AutoscalerDeps
  readonly #options: AutoscalerOptions
  readonly #entries = new Map<string, Entry>()
  /** Instances an operator asked to expire (Waiter's /instance/{id}/expire), by version. */
  readonly #expireRequested = new Map<string, Set<string>>()
  #loop: Loop | undefined

  constructor(deps: AutoscalerDeps, options: AutoscalerOptions) {
    this.#deps = deps
    this.#options = options
  }

  start(): void {
    // The loop never waits on a version's decision: one held up by its backend (a kill waiting on
    // a cluster's controller) delays neither the other versions nor the next tick, and that
    // version is decided again at the first tick after its decision is done.
    this.#loop ??= startLoop(this.#deps.clock, this.#options.tickMs, () => this.#launch(), (err) => this.#deps.log.error({ err }, 'autoscaler tick failed'))
  }

  /** Stops the loop; never scales down on the way out. */
  stop(): void {
    this.#loop?.stop()
    this.#loop = undefined
  }

  /** One decision for every running version, one version after the other; resolves when all are done. */
  async tick(): Promise<void> {
    for (const id of this.#liveServices()) await this.#scaleOnce(id)
  }

  /**
   * The loop's tick: a decision for every running version that has none under way, not waited
   * for, DECISIONS_PER_TURN versions per turn of the event loop (requests are served between
   * them); resolves once every version's decision has begun, so ticks never overlap.
   */
  async #launch(): Promise<void> {
    const loop = this.#loop
    const ids = this.#liveServices()
    for (let from = 0; from < ids.length; from += DECISIONS_PER_TURN) {
      if (from > 0) {
        await new Promise((resolve) => setImmediate(resolve))
        // Stopped meanwhile (and perhaps started again: the new loop's ticks decide from now on).
        if (this.#loop !== loop) return
      }
      for (const id of ids.slice(from, from + DECISIONS_PER_TURN)) if ((this.#entries.get(id)?.pending ?? 0) === 0) void this.#scaleOnce(id)
    }
  }

  /** The versions the backend runs; what is kept about any other is dropped. */
  #liveServices(): string[] {
    const live = this.#deps.backend.services().map((s) => s.id)
    const known = new Set(live)
    for (const id of this.#entries.keys()) if (!known.has(id)) this.forget(id)
    for (const id of this.#expireRequested.keys()) if (!known.has(id)) this.forget(id)
    return live
  }

  /** Drops everything kept about a version the backend no longer runs. */
  forget(serviceId: string): void {
    this.#entries.delete(serviceId)
    this.#expireRequested.delete(serviceId)
  }

  /** Versions with state here (for tests: nothing is kept for versions that are gone). */
  serviceIds(): string[] {
    return [...new Set([...this.#entries.keys(), ...this.#expireRequested.keys()])]
  }

  /** Instances of a version an operator asked to expire (and that still run). */
  expiryRequested(serviceId: string): ReadonlySet<string> {
    return this.#expireRequested.get(serviceId) ?? EMPTY
  }

  /** Marks an instance expired: it is replaced, then killed first. */
  expire(serviceId: string, instanceId: string): boolean {
    if (this.#deps.backend.state(serviceId)?.instances.some((i) => i.id === instanceId) !== true) return false
    let requested = this.#expireRequested.get(serviceId)
    if (requested === undefined) this.#expireRequested.set(serviceId, (requested = new Set()))
    requested.add(instanceId)
    this.poke(serviceId)
    return true
  }

  /**
   * Decides for one version now instead of at the next tick (a request is waiting for it). Pokes
   * coalesce: while one decision is queued, more pokes add nothing, since it reads the load
   * when it runs.
   */
  poke(serviceId: string): void {
    const entry = this.#entries.get(serviceId)
    if (entry?.pokeQueued === true) return
    void this.#scaleOnce(serviceId, true)
  }

  snapshot(serviceId: string): ScalingSnapshot | undefined {
    const entry = this.#entries.get(serviceId)
    if (entry === undefined) return undefined
    return {
      'scaling-state': entry.last?.direction ?? 'stable',
      target: Number(entry.state.target.toFixed(3)),
      bursting: entry.state.burstUntil > this.#deps.clock.now(),
      'last-decision': entry.last,
    }
  }

  snapshots(): Record<string, ScalingSnapshot> {
    const out: Record<string, ScalingSnapshot> = {}
    for (const id of this.#entries.keys()) {
      const snap = this.snapshot(id)
      if (snap !== undefined) out[id] = snap
    }
    return out
  }

  /** Serialised per service, so a poke and a tick never act on the same version at once. */
  #scaleOnce(serviceId: string, poked = false): Promise<void> {
    const state = this.#deps.backend.state(serviceId)
    const service = this.#deps.serviceOf(serviceId)
    if (state === undefined || service === undefined) return Promise.resolve()
    let entry = this.#entries.get(serviceId)
    if (entry === undefined) {
      entry = { state: initialScalingState(state.requested), last: undefined, lastKillAt: 0, running: undefined, pokeQueued: false, pending: 0 }
      this.#entries.set(serviceId, entry)
    }
    const current = entry
    if (poked) current.pokeQueued = true
    current.pending += 1
    const run = (current.running ?? Promise.resolve())
      .then(() => {
        if (poked) current.pokeQueued = false
        return this.#apply(serviceId, service, current)
      })
      .catch((err: unknown) => this.#deps.log.error({ err, service: serviceId }, 'scaling failed'))
      .finally(() => {
        current.pending -= 1
      })
    current.running = run
    return run
  }

  async #apply(serviceId: string, service: ScalableService, entry: Entry): Promise<void> {
    const { backend, tracker, clock, log } = this.#deps
    const state = backend.state(serviceId)
    if (state === undefined) return
    const fleet = this.#deps.fleet ?? ALONE
    const requested = this.#expireRequested.get(serviceId)
    if (requested !== undefined) {
      // Instances that ended need no expiry any more (on a router that does not lead too: the
      // leader's notes of expiries would otherwise pile up there).
      for (const id of requested) if (!state.instances.some((i) => i.id === id)) requested.delete(id)
      if (requested.size === 0) this.#expireRequested.delete(serviceId)
    }
    if (!fleet.isLeader()) {
      // Another router decides. Should leadership come here, it starts from what the backend
      // runs then, not from a target computed before.
      entry.state = initialScalingState(state.requested)
      entry.last = undefined
      return
    }
    const now = clock.now()
    const expired = expiredIds(state, service.instanceExpiryMs, now, requested ?? EMPTY)
    tracker.markExpired(serviceId, expired)
    const load = fleetLoadOf(tracker, fleet, serviceId)
    const healthy = state.instances.filter((i) => i.healthy)
    const outstanding = load.inFlight + load.queued
    const decision = decide(
      service.policy,
      {
        outstanding,
        requested: state.requested,
        healthy: healthy.length,
        expiredHealthy: healthy.filter((i) => expired.has(i.id)).length,
        expiredUnhealthy: state.instances.filter((i) => !i.healthy && expired.has(i.id)).length,
      },
      entry.state,
      now,
      this.#options.burst,
    )
    entry.state = decision.state
    let killed: string | undefined
    // A kill "after" now was made before the clock stepped back: the pause between kills starts over from now.
    if (now < entry.lastKillAt) entry.lastKillAt = now
    if (decision.amount > 0) {
      await backend.scale(serviceId, decision.scaleTo)
    } else if (decision.amount < 0 && state.requested > state.instances.length) {
      // Instances the backend still owes (a relaunch waiting out its back-off, a task with no
      // offer yet) go first: fewer are asked for, and none that runs is killed for them. (A kill
      // would lower the count and stop a running one, leaving the owed one to come, or nothing.)
      await backend.scale(serviceId, Math.max(decision.scaleTo, state.instances.length))
    } else if (decision.amount < 0 && now - entry.lastKillAt >= this.#options.interKillMs && (state.killsUnderWay ?? 0) === 0) {
      // A scale-down no larger than the expired instances that run retires those: an expired
      // instance still busy (a long stream, a WebSocket) is waited for, not exchanged for its idle
      // replacement, which the next tick would only start again.
      const retiring = -decision.amount <= state.instances.filter((i) => expired.has(i.id)).length
      killed = await this.#killOne(serviceId, state, expired, retiring)
      if (killed !== undefined) entry.lastKillAt = now
    }
    if (decision.amount !== 0) {
      log.info({ service: serviceId, direction: decision.direction, outstanding, ideal: decision.ideal, from: state.requested, to: decision.scaleTo, bursting: decision.bursting, killed }, 'scaling decision')
    }
    entry.last = {
      at: now,
      direction: decision.direction,
      outstanding,
      ideal: decision.ideal,
      requested: state.requested,
      scaleTo: decision.scaleTo,
      bursting: decision.bursting,
      killed,
    }
    this.#deps.onDecision?.(serviceId, entry.last)
  }

  async #killOne(serviceId: string, state: ServiceState, expired: ReadonlySet<string>, onlyExpired: boolean): Promise<string | undefined> {
    const { backend, tracker } = this.#deps
    const inFlight = new Map(tracker.instanceSlots(serviceId).map((s) => [s.id, s.used]))
    let candidates = state.instances.map((i) => ({ id: i.id, startedAt: i.startedAt, healthy: i.healthy, expired: expired.has(i.id), inFlight: inFlight.get(i.id) ?? 0 }))
    if (onlyExpired) candidates = candidates.filter((c) => c.expired)
    // An instance another router vetoes (it carries a request there) is passed over for the next
    // choice, as Waiter does, a few times per tick at most.
    for (let attempt = 0; attempt < MAX_KILL_ATTEMPTS; attempt++) {
      const choice = chooseKill(candidates)
      if (choice === undefined || !tracker.lockForKill(serviceId, choice.id)) return undefined
      // Every other router takes it out of rotation first; one with a request on it vetoes the kill.
      const allowed = await (this.#deps.fleet?.allowKill?.(serviceId, choice.id) ?? Promise.resolve(true)).catch(() => false)
      if (!allowed) {
        tracker.unlock(serviceId, choice.id)
        candidates = candidates.filter((c) => c.id !== choice.id)
        continue
      }
      // The peers' round took time (seconds, with vetoes and slow peers): a router deposed
      // meanwhile must not kill, or two leaders would act at once.
      const stillLeader = (this.#deps.fleet ?? ALONE).isLeader()
      // A kill that threw may have gone through (a delete that timed out): the peers' hold then
      // lapses by itself; one refused outright, or never sent, is called off at once.
      const killed = stillLeader ? await backend.killInstance(serviceId, choice.id).catch(() => undefined) : false
      if (killed !== true) {
        tracker.unlock(serviceId, choice.id)
        // The routers that agreed took the instance out of rotation for a kill that is not coming.
        if (killed === false) await this.#deps.fleet?.cancelKill?.(serviceId, choice.id).catch(() => undefined)
        return undefined
      }
      return choice.id
    }
    return undefined
  }
}

/** Instances a scale-down tries per tick when other routers veto the first choices. */
const MAX_KILL_ATTEMPTS = 3

/**
 * Versions whose decisions one turn of the event loop begins. A decision costs ~10 µs, so a
 * turn holds the loop a few ms; before, a tick began all of them in one, ~100–300 ms at 10,000
 * versions every second, with every request waiting.
 */
const DECISIONS_PER_TURN = 256

const EMPTY: ReadonlySet<string> = new Set()

function expiredIds(state: ServiceState, expiryMs: number, now: number, requested: ReadonlySet<string>): Set<string> {
  const out = new Set<string>()
  for (const i of state.instances) {
    if (i.flags.has('expired') || requested.has(i.id) || (expiryMs > 0 && now - i.startedAt >= expiryMs)) out.add(i.id)
  }
  return out
}
