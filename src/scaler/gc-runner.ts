/**
 * The GC loop: every interval, gathers what each known version looks like, asks pickGarbage()
 * what to reap, and collects it. A collection runs under the activator's marker, so a request
 * that arrives meanwhile waits and then starts the version afresh; it re-decides right before
 * deleting (a request may have come since the verdict), and it drops the record and every cached
 * resolution before the backend delete, so nothing can re-create the version in between. A
 * version the backend still runs without a record (a delete that failed, a lost record) is
 * collected too, one interval after it was first seen so.
 */
import type { Backend } from '../backends/backend.ts'
import type { InstanceTracker } from '../backends/tracker.ts'
import type { Clock } from '../clock.ts'
import { startLoop, type Loop } from './loop.ts'
import type { Logger } from '../log.ts'
import type { ServiceRecord, ServiceRegistry } from '../versions/registry.ts'
import type { Tokens } from '../versions/tokens.ts'
import type { TokenData } from '../versions/token-store.ts'
import { currencyOf } from '../versions/currency.ts'
import type { Activator } from './activator.ts'
import { MaitreError } from '../errors.ts'
import { pickGarbage, type GcCandidate, type GcVerdict } from './gc.ts'
import { ALONE, fleetLoadOf, type Fleet } from './fleet.ts'

export interface GcOptions {
  readonly intervalMs: number
  readonly brokenTimeoutMs: number
  /** Defaults for tokens that do not set fallback-period-secs / stale-timeout-mins. */
  readonly fallbackMs: number
  readonly staleTimeoutMs: number
}

export interface GcDeps {
  readonly backend: Backend
  readonly tracker: InstanceTracker
  readonly registry: ServiceRegistry
  readonly tokens: Tokens
  readonly activator: Pick<Activator, 'collect'>
  readonly parametersOf: (record: ServiceRecord) => Readonly<Record<string, unknown>>
  /** The version tokens' descriptions, merged in order, run as (tokens that run as their requester: `requester`'s version; undefined if incomplete). */
  readonly serviceIdOfTokens?: (tokens: readonly TokenData[], requester?: string) => string | undefined
  /** Drops what is derived from the version's record (cached resolutions, overrides); called before the backend delete. */
  readonly forgetVersion: (serviceId: string) => Promise<void> | void
  /** Called after a version is collected (counting, metric series, its keep-alive history), with when it was last active. */
  readonly onCollected: (serviceId: string, reason: GcVerdict['reason'], lastActiveAt: number) => Promise<void> | void
  /**
   * Called as a collection takes the version (its record just dropped, before the backend
   * delete): what depends on when it was last active learns it before a request can come.
   */
  /** Returns whether the keep-alive forgot the version (its peers are told to forget it too). */
  readonly onCollecting?: (serviceId: string, reason: GcVerdict['reason'], lastActiveAt: number) => boolean | void
  /** Called after an operator deleted a version. */
  readonly onDeleted?: (serviceId: string) => void
  /** When a version's keep-alive policy lets it go, if the policy has its own say (an adaptive one). */
  readonly keepUntil?: (record: ServiceRecord, params: Readonly<Record<string, unknown>>, lastActiveAt: number) => number | undefined
  readonly clock: Clock
  readonly log: Logger
  /** The cluster: only its leader collects, and a version is idle only when every router says so (default: a router on its own). */
  readonly fleet?: Fleet
}

const RECENT_KEPT = 50
/** Idle collections whose backend delete failed, remembered until the version is collected as an orphan (the oldest forgotten first). */
const MAX_UNFINISHED_KEPT = 10_000
/** An operator's delete waits this often, this many times, for a request that is starting the version. */
const DELETE_ATTEMPTS = 50
const DELETE_RETRY_MS = 100

export class GcRunner {
  readonly #deps: GcDeps
  readonly #options: GcOptions
  /** First time each version was seen broken / stale with a token that no longer exists / running unrecorded. */
  readonly #brokenSince = new Map<string, number>()
  readonly #orphanedSince = new Map<string, number>()
  /** Versions an idle collection forgot whose backend delete failed: their idle time, for when they go as orphans. */
  readonly #idleUnfinished = new Map<string, number>()
  readonly #unrecordedSince = new Map<string, number>()
  readonly #collected: (GcVerdict & { at: number })[] = []
  #rounds = 0
  #loop: Loop | undefined

  /**
   * When this router began to look: what happened before (a request a second before a restart)
   * it cannot know, so no version counts as idle since before then.
   */
  readonly #watchingSince: number

  constructor(deps: GcDeps, options: GcOptions) {
    this.#deps = deps
    this.#options = options
    this.#watchingSince = deps.clock.now()
  }

  start(): void {
    this.#loop ??= startLoop(this.#deps.clock, this.#options.intervalMs, () => this.tick(), (err) => this.#deps.log.error({ err }, 'gc failed'))
  }

  stop(): void {
    this.#loop?.stop()
    this.#loop = undefined
  }

  /** Rounds run so far (for /state: a round is over once this moves). */
  rounds(): number {
    return this.#rounds
  }

  /** Recent collections, newest first (for /state). */
  recent(): readonly (GcVerdict & { at: number })[] {
    return this.#collected
  }

  /** Versions GC keeps a timestamp for (for tests: nothing is kept for versions that are gone). */
  trackedIds(): string[] {
    return [...new Set([...this.#brokenSince.keys(), ...this.#orphanedSince.keys(), ...this.#unrecordedSince.keys()])]
  }

  /** One collection round; resolves with what was collected. */
  async tick(): Promise<GcVerdict[]> {
    if (!(this.#deps.fleet ?? ALONE).isLeader()) {
      // Another router collects; what was seen here starts afresh should leadership come back.
      for (const map of [this.#brokenSince, this.#orphanedSince, this.#unrecordedSince]) map.clear()
      return []
    }
    const now = this.#deps.clock.now()
    const candidates = this.#candidates(now)
    const known = new Set(candidates.map((c) => c.id))
    for (const map of [this.#brokenSince, this.#orphanedSince, this.#unrecordedSince]) {
      for (const id of map.keys()) if (!known.has(id)) map.delete(id)
    }
    const collected: GcVerdict[] = []
    for (const verdict of pickGarbage(candidates, now)) {
      // Collections take a while each: a router that lost leadership meanwhile stops here.
      if (!(this.#deps.fleet ?? ALONE).isLeader()) break
      const done = await this.#collect(verdict.id).catch((err: unknown) => {
        this.#deps.log.error({ err, service: verdict.id }, 'garbage collection of a version failed; it is retried next round')
        return undefined
      })
      if (done !== undefined) collected.push(done)
    }
    this.#rounds += 1
    return collected
  }

  #candidates(now: number): GcCandidate[] {
    const recorded = this.#deps.registry.all().map((record) => this.#candidate(record, now))
    const unrecorded = this.#deps.backend.services()
      .filter((state) => this.#deps.registry.get(state.id) === undefined)
      .map((state) => this.#unrecordedCandidate(state.id, now))
    return [...recorded, ...unrecorded]
  }

  /** The verdict on one version as things are now (and when it was last active), or undefined if it is no longer garbage. */
  #verdictNow(serviceId: string): (GcVerdict & { lastActiveAt: number }) | undefined {
    const now = this.#deps.clock.now()
    const record = this.#deps.registry.get(serviceId)
    if (record === undefined && this.#deps.backend.state(serviceId) === undefined) return undefined
    const candidate = record === undefined ? this.#unrecordedCandidate(serviceId, now) : this.#candidate(record, now)
    const verdict = pickGarbage([candidate], now)[0]
    return verdict === undefined ? undefined : { ...verdict, lastActiveAt: candidate.lastActiveAt }
  }

  /**
   * Collects one version now if it is garbage now (the keep-alive policy's own timing: a
   * version it lets go need not wait for the next round). Resolves with what was done.
   */
  async collectIfDue(serviceId: string): Promise<GcVerdict | undefined> {
    if (!(this.#deps.fleet ?? ALONE).isLeader()) return undefined
    return this.#collect(serviceId).catch((err: unknown) => {
      this.#deps.log.error({ err, service: serviceId }, 'garbage collection of a version failed; it is retried next round')
      return undefined
    })
  }

  /** Collects one version under the activator's marker; undefined if it turned out not to be garbage. */
  #collect(serviceId: string): Promise<GcVerdict | undefined> {
    const { activator, registry } = this.#deps
    return activator.collect(serviceId, async () => {
      // Decided again, synchronously, now that activations wait: a request may have come since.
      const record = registry.get(serviceId)
      const verdict = this.#verdictNow(serviceId)
      if (verdict === undefined) return undefined
      // In a cluster, the others judge too: the verdict came from their load reports, up to a
      // publish interval old. One that uses the version now says no; the others hold their
      // requests for it (as activations here wait) until the collection is over.
      const fleet = this.#deps.fleet
      if (fleet?.allowCollect !== undefined && !(await fleet.allowCollect(serviceId, verdict.lastActiveAt, verdict.reason))) return undefined
      let collected: (GcVerdict & { lastActiveAt: number; forget: boolean }) | undefined
      try {
        collected = await this.#collectNow(serviceId, record, verdict)
        return collected === undefined ? undefined : { id: collected.id, reason: collected.reason }
      } finally {
        // (What it was collected for, as this router's keep-alive heard it: the peers' hear the same.)
        if (fleet?.allowCollect !== undefined) void fleet.collectDone?.(serviceId, collected === undefined ? undefined : { reason: collected.reason, lastActiveAt: collected.lastActiveAt, forget: collected.forget }).catch(() => undefined)
      }
    })
  }

  async #collectNow(serviceId: string, record: ServiceRecord | undefined, verdict: GcVerdict & { lastActiveAt: number }): Promise<(GcVerdict & { lastActiveAt: number; forget: boolean }) | undefined> {
    const { registry, backend, clock, log } = this.#deps
    // Record and cached resolutions first, then the backend delete: activations wait on the
    // collection meanwhile, so nothing can re-create the version in between. The record goes
    // only as the verdict saw it: another router that just recorded a request for it keeps it.
    if (!(await registry.forget(serviceId, record))) return undefined
    // An idle version whose instances outlived its record (the backend's delete failed) is
    // collected later as an orphan: it is still one collected for its idleness (an adaptive
    // keep-alive keeps what it learned of it, and may pre-warm it).
    // (A collection for any other reason: the version was recorded again since, and what an
    // earlier life of it left here is forgotten.)
    if (verdict.reason !== 'orphaned') this.#idleUnfinished.delete(serviceId)
    const unfinished = verdict.reason === 'orphaned' ? this.#idleUnfinished.get(serviceId) : undefined
    const reason = unfinished === undefined ? verdict.reason : 'idle'
    const lastActiveAt = unfinished ?? verdict.lastActiveAt
    const forget = this.#deps.onCollecting?.(serviceId, reason, lastActiveAt) === true
    await this.#deps.forgetVersion(serviceId)
    try {
      await backend.deleteService(serviceId)
    } catch (err) {
      if (reason === 'idle') {
        this.#idleUnfinished.delete(serviceId)
        this.#idleUnfinished.set(serviceId, lastActiveAt)
        if (this.#idleUnfinished.size > MAX_UNFINISHED_KEPT) this.#idleUnfinished.delete(this.#idleUnfinished.keys().next().value as string)
      }
      throw err
    }
    this.#idleUnfinished.delete(serviceId)
    // A version that never ran here still had a routing entry if requests asked for it.
    this.#deps.tracker.dropIfIdle(serviceId)
    await this.#deps.onCollected(serviceId, reason, lastActiveAt)
    this.#brokenSince.delete(serviceId)
    this.#orphanedSince.delete(serviceId)
    this.#unrecordedSince.delete(serviceId)
    this.#collected.unshift({ id: verdict.id, reason, at: clock.now() })
    this.#collected.length = Math.min(this.#collected.length, RECENT_KEPT)
    log.info({ service: serviceId, reason }, 'service garbage-collected')
    return { id: verdict.id, reason, lastActiveAt, forget }
  }

  /**
   * An operator's DELETE /apps/{id}: the version goes now, as a collection does (activations
   * wait for it, record and caches first, then the backend), whatever its idleness. Resolves
   * with whether the backend was running it.
   */
  async deleteNow(serviceId: string): Promise<boolean> {
    const { activator, registry, backend, clock, log } = this.#deps
    // A request starting the version right now goes first (its activation is not cut in half).
    for (let attempt = 0; attempt < DELETE_ATTEMPTS; attempt++) {
      const result = await this.#deleteOnce(serviceId, activator, registry, backend, log)
      if (result !== undefined) return result
      await new Promise<void>((resolve) => clock.setTimeout(resolve, DELETE_RETRY_MS))
    }
    throw new MaitreError('MAITRE_BACKEND', 'The service is being started by a request; try the delete again', { status: 503, details: { 'service-id': serviceId }, headers: { 'retry-after': '1' } })
  }

  #deleteOnce(serviceId: string, activator: GcDeps['activator'], registry: GcDeps['registry'], backend: GcDeps['backend'], log: GcDeps['log']): Promise<boolean | undefined> {
    return activator
      .collect(serviceId, async () => {
        const record = registry.get(serviceId)
        if (record !== undefined) await registry.forget(serviceId, record)
        await this.#deps.forgetVersion(serviceId)
        const running = backend.state(serviceId) !== undefined
        await backend.deleteService(serviceId)
        this.#deps.tracker.dropIfIdle(serviceId)
        this.#deps.onDeleted?.(serviceId)
        log.info({ service: serviceId, running }, 'service deleted by request')
        return running
      })
  }

  #unrecordedCandidate(serviceId: string, now: number): GcCandidate {
    const load = fleetLoadOf(this.#deps.tracker, this.#deps.fleet ?? ALONE, serviceId)
    const since = this.#unrecordedSince.get(serviceId) ?? now
    this.#unrecordedSince.set(serviceId, since)
    return {
      id: serviceId,
      outstanding: load.inFlight + load.queued,
      lastActiveAt: load.lastActiveAt,
      idleTimeoutMs: 0,
      staleSince: undefined,
      fallbackMs: 0,
      staleTimeoutMs: 0,
      brokenSince: undefined,
      brokenTimeoutMs: 0,
      unrecordedSince: since,
      unrecordedGraceMs: this.#options.intervalMs,
    }
  }

  #candidate(record: ServiceRecord, now: number): GcCandidate {
    this.#unrecordedSince.delete(record.id)
    const { backend, tracker, tokens } = this.#deps
    const params = this.#deps.parametersOf(record)
    const load = fleetLoadOf(tracker, this.#deps.fleet ?? ALONE, record.id)
    const state = backend.state(record.id)
    const broken = state?.deploymentError !== undefined && !state.instances.some((i) => i.healthy)
    if (broken && !this.#brokenSince.has(record.id)) this.#brokenSince.set(record.id, now)
    if (!broken) this.#brokenSince.delete(record.id)

    let staleSince: number | undefined
    let fallbackMs = this.#options.fallbackMs
    let staleTimeoutMs = this.#options.staleTimeoutMs
    // A version recorded before every version named its run-as-user (a token that ran as its
    // requester): requests resolve to the requester's own version now, never to this one. It is
    // as stale as one whose token is gone.
    const legacy = typeof record.core['run-as-user'] !== 'string'
    if (legacy && record.sources.length > 0) {
      staleSince = this.#orphanedSince.get(record.id) ?? now
      if (!this.#orphanedSince.has(record.id)) this.#orphanedSince.set(record.id, now)
    } else if (record.sources.length > 0) {
      const currency = currencyOf(record, {
        token: (name) => tokens.get(name),
        serviceIdOfTokens: (list, requester) => this.#deps.serviceIdOfTokens?.(list, requester),
        now,
      })
      // Orphaned since this router last saw it so, with no return in between: a token deleted,
      // made again (the version current again) and deleted once more counts from the second
      // delete, not the first.
      if (!currency.orphaned) this.#orphanedSince.delete(record.id)
      if (!currency.current) {
        if (currency.orphaned) {
          staleSince = this.#orphanedSince.get(record.id) ?? now
          if (!this.#orphanedSince.has(record.id)) this.#orphanedSince.set(record.id, now)
        }
        if (currency.movedOnAt !== undefined) staleSince = Math.max(staleSince ?? 0, currency.movedOnAt)
        for (const token of currency.movedBy) {
          if (typeof token['fallback-period-secs'] === 'number') fallbackMs = token['fallback-period-secs'] * 1000
          if (typeof token['stale-timeout-mins'] === 'number') staleTimeoutMs = token['stale-timeout-mins'] * 60_000
        }
      }
    }
    // (A restarted router knows no request from its previous life: without the floor, every
    // version recorded longer ago than its idle timeout went at the first round, its
    // suspension and overrides with it.)
    const lastActiveAt = Math.max(load.lastActiveAt, record.createdAt, this.#watchingSince)
    return {
      id: record.id,
      outstanding: load.inFlight + load.queued,
      lastActiveAt,
      idleTimeoutMs: (params['idle-timeout-mins'] as number) * 60_000,
      keepUntil: this.#deps.keepUntil?.(record, params, lastActiveAt),
      staleSince,
      fallbackMs,
      staleTimeoutMs,
      brokenSince: this.#brokenSince.get(record.id),
      brokenTimeoutMs: (params['grace-period-secs'] as number) * 1000 + this.#options.brokenTimeoutMs,
    }
  }
}
