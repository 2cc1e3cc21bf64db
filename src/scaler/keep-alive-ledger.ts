/**
 * What the keep-alive policy remembers of each version, across its collections: its idle-time
 * histogram, when its last activity ended, whether it was pre-warmed since, and what it takes
 * to start it again. No clock and no I/O (times come in as numbers), so the router and the
 * trace replay in bench/ drive the very same code.
 *
 * Bounded: at most `maxVersions` entries, the least recently used dropped first; an entry is
 * an IdleHistogram (under 1 KB) and a few numbers, plus the caller's start payload.
 */
import { LRUCache } from 'lru-cache'
import { IdleHistogram, idleSampleOf, PEER_NOTE_GAP_MS, planKeepAlive, prewarmDue, scheduleOf, type AdaptiveOptions, type KeepAlivePlan, type KeepAlivePolicy, type KeepAliveSchedule, DEFAULT_ADAPTIVE } from './keep-alive.ts'

export const DEFAULT_LEDGER_VERSIONS = 10_000

/** How late another router's note of a request can be heard (its age bound at the peer API). */
const LATE_NOTE_MS = 60_000

interface Entry<P> {
  readonly histogram: IdleHistogram
  /** When the version's last activity ended, as last known (kept across its collections). */
  idleSince: number | undefined
  lastSampleAt: number | undefined
  /** Started by a pre-warm at this time, and no request has come since. */
  prewarmedAt: number | undefined
  /** The idle period (its idleSince) a pre-warm was last made for: one per period. */
  prewarmedFor: number | undefined
  /** The last request's arrival: one since the version was let go starts it itself. */
  lastArrivalAt: number | undefined
  /** When this router last told its peers of a request here (cluster mode). */
  toldAt: number | undefined
  prewarms: number
  hits: number
  misses: number
  /** What it takes to start the version again (the last request's). */
  payload: P | undefined
  /** The last plan made, for the histogram as it was (a plan weighs every bin: made once per idle time). */
  planned: { readonly recorded: number; readonly policy: KeepAlivePolicy; readonly fixedTimeoutMs: number; readonly plan: KeepAlivePlan } | undefined
}

export interface KeepAliveView {
  readonly policy: KeepAlivePolicy
  readonly basis: KeepAlivePlan['basis']
  readonly idleTimes: number
  readonly prewarmMs: number
  readonly keepAliveMs: number
  /** With a pre-warm time: how long it stays up once idle before it is let go. */
  readonly letGoMs: number
  readonly idleSince: number | undefined
  readonly prewarmedAt: number | undefined
  /** What happens next if no request comes first. */
  readonly next: { readonly action: 'let-go' | 'pre-warm'; readonly at: number } | undefined
  readonly prewarms: number
  readonly hits: number
  readonly misses: number
}

/** Let go (an idle period began at its collection) and no request has come since: whatever runs it now, no request ended that period. */
function letGoWithNoRequestSince(entry: Entry<unknown>): boolean {
  return entry.idleSince !== undefined && (entry.lastArrivalAt === undefined || entry.lastArrivalAt <= entry.idleSince)
}

/** Not yet pre-warmed for its current idle period, and no request has come since it began (one would start the version itself). */
function awaitsPrewarm(entry: Entry<unknown>): boolean {
  return entry.prewarmedFor !== entry.idleSince && (entry.lastArrivalAt === undefined || entry.idleSince === undefined || entry.lastArrivalAt <= entry.idleSince)
}

/** What became of a pre-warm when the next request came. */
export type PrewarmOutcome = 'hit' | 'miss'

export class KeepAliveLedger<P = unknown> {
  readonly #entries: LRUCache<string, Entry<P>>
  readonly #options: AdaptiveOptions

  constructor(maxVersions: number = DEFAULT_LEDGER_VERSIONS, options: AdaptiveOptions = DEFAULT_ADAPTIVE) {
    this.#entries = new LRUCache<string, Entry<P>>({ max: maxVersions })
    this.#options = options
  }

  #entry(serviceId: string): Entry<P> {
    let entry = this.#entries.get(serviceId)
    if (entry === undefined) {
      entry = { histogram: new IdleHistogram(), idleSince: undefined, lastSampleAt: undefined, prewarmedAt: undefined, prewarmedFor: undefined, lastArrivalAt: undefined, toldAt: undefined, prewarms: 0, hits: 0, misses: 0, payload: undefined, planned: undefined }
      this.#entries.set(serviceId, entry)
    }
    return entry
  }

  /**
   * A request for the version arrives. `running`: instances are asked for; `warm`: one is
   * healthy, so the request waits for no start. `runningIdleSince`: when the running version's
   * last activity ended (undefined: a request is under way, or the version is not running, in
   * which case the end of activity recorded at its collection counts). Returns what became of a
   * pre-warm: a hit when the request found the version warm, a miss when it still waited for the
   * start (the pre-warm came too late, or failed); undefined with no pre-warm pending.
   */
  arrived(serviceId: string, now: number, running: boolean, warm: boolean, runningIdleSince: number | undefined, payload?: P): PrewarmOutcome | undefined {
    const entry = this.#entry(serviceId)
    if (payload !== undefined) entry.payload = payload
    const prewarmed = entry.prewarmedAt !== undefined
    const hit = prewarmed && running && warm
    if (prewarmed && !hit) entry.misses += 1
    // When the idle period this request ends began. A version let go with no request since
    // began it at its collection, whatever runs it now (its pre-warm; in a cluster, a request at
    // another router that has not told this one yet); a running one, when its activity last ended.
    const letGo = letGoWithNoRequestSince(entry)
    let idleSince = letGo || !running ? entry.idleSince : runningIdleSince
    // A request seen here since then already ended that period: this one comes within the busy
    // spell that followed (in a cluster, two routers that each saw a request to a version idle
    // for an hour tell of it once each, not as two hours-long idle times; nor do two cold starts).
    const ended = idleSince !== undefined && entry.lastArrivalAt !== undefined && entry.lastArrivalAt > idleSince
    if (ended) idleSince = entry.lastArrivalAt
    if (running || idleSince !== undefined) {
      // A version let go too early (a cold start) always counts: its history must catch up.
      const sample = idleSampleOf(now, idleSince, running || ended ? entry.lastSampleAt : undefined)
      if (sample !== undefined) {
        entry.histogram.record(sample)
        entry.lastSampleAt = now
      }
    }
    if (hit) entry.hits += 1
    entry.prewarmedAt = undefined
    // A request told of late by another router (a minute at most) arrived before one seen here
    // already; anything further ahead is a clock stepped back, which the next arrival follows.
    const last = entry.lastArrivalAt
    entry.lastArrivalAt = last !== undefined && last > now && last - now <= LATE_NOTE_MS ? last : now
    return prewarmed ? (hit ? 'hit' : 'miss') : undefined
  }

  /**
   * Whether to tell the other routers of a request that just arrived here (see
   * PEER_NOTE_GAP_MS): always when the version was not running, else once per gap. Records the
   * telling.
   */
  tell(serviceId: string, now: number, running: boolean): boolean {
    const entry = this.#entry(serviceId)
    // (A clock stepped back since is not taken for a gap not yet over.)
    if (running && entry.toldAt !== undefined && now >= entry.toldAt && now - entry.toldAt < PEER_NOTE_GAP_MS) return false
    entry.toldAt = now
    return true
  }

  /** A pre-warm's start failed: it will serve no request, a miss (counted once). */
  prewarmFailed(serviceId: string): boolean {
    const entry = this.#entries.get(serviceId)
    if (entry?.prewarmedAt === undefined) return false
    entry.misses += 1
    entry.prewarmedAt = undefined
    return true
  }

  /** The version was collected; `lastActiveAt`: when its last activity ended. Returns whether it was a pre-warm that served nothing (a miss). */
  collected(serviceId: string, lastActiveAt: number): boolean {
    const entry = this.#entries.get(serviceId)
    if (entry === undefined) return false
    const miss = entry.prewarmedAt !== undefined
    if (miss) entry.misses += 1
    // The collection of what this router's own pre-warm started, with no request since (its start
    // failed) leaves the idle period where it began: moved to that start, the next request's idle
    // time would be measured from it (60 s for a 20-minute period). Any other collection moves it
    // (with no request heard of here, one at another router may have gone untold).
    else if (!(letGoWithNoRequestSince(entry) && entry.prewarmedFor === entry.idleSince)) entry.idleSince = lastActiveAt
    entry.prewarmedAt = undefined
    return miss
  }

  /** The version was started by a pre-warm. */
  prewarmed(serviceId: string, now: number): void {
    const entry = this.#entry(serviceId)
    entry.prewarmedAt = now
    entry.prewarmedFor = entry.idleSince
    entry.prewarms += 1
  }

  /** Forgets a version (its token is gone, an operator deleted it). */
  forget(serviceId: string): void {
    this.#entries.delete(serviceId)
  }

  plan(serviceId: string, policy: KeepAlivePolicy, fixedTimeoutMs: number): KeepAlivePlan {
    const entry = this.#entries.peek(serviceId)
    if (entry === undefined) return planKeepAlive(policy, undefined, fixedTimeoutMs, this.#options)
    const { histogram, planned } = entry
    if (planned !== undefined && planned.recorded === histogram.recorded && planned.policy === policy && planned.fixedTimeoutMs === fixedTimeoutMs) return planned.plan
    const plan = planKeepAlive(policy, histogram, fixedTimeoutMs, this.#options)
    entry.planned = { recorded: histogram.recorded, policy, fixedTimeoutMs, plan }
    return plan
  }

  /** The schedule of a running version whose last activity ended at `lastActiveAt`. */
  scheduleRunning(serviceId: string, plan: KeepAlivePlan, lastActiveAt: number): KeepAliveSchedule {
    const entry = this.#entries.peek(serviceId)
    const prewarmed = entry?.prewarmedAt !== undefined
    return scheduleOf(plan, prewarmed ? (entry?.idleSince ?? lastActiveAt) : lastActiveAt, prewarmed)
  }

  /**
   * For a version that is not running: its start payload if its pre-warm time has come (and
   * its keep-alive time has not passed), else undefined.
   */
  prewarmDue(serviceId: string, plan: KeepAlivePlan, now: number): P | undefined {
    const entry = this.#entries.peek(serviceId)
    if (entry === undefined || entry.idleSince === undefined || entry.payload === undefined || !awaitsPrewarm(entry)) return undefined
    return prewarmDue(scheduleOf(plan, entry.idleSince, false), plan, now) ? entry.payload : undefined
  }

  /** When a version that is not running is due for its pre-warm (undefined: it is not). */
  prewarmAt(serviceId: string, plan: KeepAlivePlan): number | undefined {
    const entry = this.#entries.peek(serviceId)
    if (entry === undefined || entry.idleSince === undefined || !awaitsPrewarm(entry)) return undefined
    return scheduleOf(plan, entry.idleSince, false).prewarmAt
  }

  /** What it takes to start the version again, from its last request. */
  payload(serviceId: string): P | undefined {
    return this.#entries.peek(serviceId)?.payload
  }

  /** Versions the ledger remembers. */
  ids(): string[] {
    return [...this.#entries.keys()]
  }

  /** `lastActiveAt`: when a running version's last request ended (undefined: one is under way). */
  view(serviceId: string, plan: KeepAlivePlan, running: boolean, lastActiveAt: number | undefined, now: number): KeepAliveView {
    const entry = this.#entries.peek(serviceId)
    const schedule = running && lastActiveAt !== undefined ? this.scheduleRunning(serviceId, plan, lastActiveAt) : !running && entry?.idleSince !== undefined ? scheduleOf(plan, entry.idleSince, false) : undefined
    let next: KeepAliveView['next']
    if (schedule !== undefined && running && Number.isFinite(schedule.collectAt)) next = { action: 'let-go', at: schedule.collectAt }
    else if (schedule !== undefined && !running && entry?.payload !== undefined && awaitsPrewarm(entry) && schedule.prewarmAt !== undefined && now < schedule.prewarmAt + plan.keepAliveMs) next = { action: 'pre-warm', at: schedule.prewarmAt }
    return {
      policy: plan.policy,
      basis: plan.basis,
      idleTimes: entry?.histogram.samples ?? 0,
      prewarmMs: plan.prewarmMs,
      keepAliveMs: plan.keepAliveMs,
      letGoMs: plan.letGoMs,
      idleSince: running ? (entry?.prewarmedAt !== undefined ? entry.idleSince : lastActiveAt) : entry?.idleSince,
      prewarmedAt: entry?.prewarmedAt,
      next,
      prewarms: entry?.prewarms ?? 0,
      hits: entry?.hits ?? 0,
      misses: entry?.misses ?? 0,
    }
  }
}
