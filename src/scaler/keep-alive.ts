/**
 * How long a version stays up once idle, learned from its own past: the "hybrid histogram"
 * policy of Shahrad et al., "Serverless in the Wild" (USENIX ATC'20), as pure functions.
 *
 * Each version keeps a histogram of its idle times (from the end of its last activity to the
 * next request) in one-minute bins over four hours. When the histogram is representative, the
 * version is let go at once after a request and started again shortly before the next one is
 * likely (the 5th percentile of its idle times, less a margin), then kept until the next
 * request is unlikely to come (the 99th percentile, plus a margin). When it is not (too few
 * idle times, too many beyond four hours, no pattern), the fixed idle timeout applies.
 * No clock and no I/O: times come in as numbers.
 */

export const IDLE_BIN_MS = 60_000
/** Four hours of one-minute bins. */
export const IDLE_BINS = 240
/**
 * Bounded and adaptive: once this many idle times are counted, every count is halved, so the
 * histogram follows a pattern that changes and its counts stay small. A histogram is
 * IDLE_BINS 32-bit counts and three numbers: under 1 KB per version.
 */
export const IDLE_SAMPLES_KEPT = 2048

export type KeepAlivePolicy = 'fixed' | 'adaptive'

export interface AdaptiveOptions {
  /** Idle times a histogram needs before it is trusted. */
  readonly minSamples: number
  /** Share of idle times beyond the histogram's range above which it is not trusted. */
  readonly maxOutOfRange: number
  /** Coefficient of variation of the bin counts below which the idle times show no pattern. */
  readonly minCv: number
  /** Percentile of idle times before which the version is started again. */
  readonly headPercentile: number
  /** Percentile of idle times after which the version is let go. */
  readonly tailPercentile: number
  /** Margin taken off the pre-warm time and added to the keep-alive time. */
  readonly margin: number
  /** A version that is not let go early is kept no longer than its fixed idle timeout either. */
  readonly capAtFixed?: boolean
}

/**
 * The paper's rule (pre-warm at the 5th percentile, keep to a high one, with margins), with
 * three choices measured on its traces (npm run bench:keepalive, bench/RESULTS.md): a
 * histogram is trusted after 3 idle times; the tail is the 95th percentile with 5 % margins
 * (the paper: 99th, 10 %); and a version that is not let go early is kept no longer than its
 * fixed idle timeout (capAtFixed). Together they keep the policy within the memory of a fixed
 * timeout while its pre-warms take the cold starts away.
 */
export const DEFAULT_ADAPTIVE: AdaptiveOptions = { minSamples: 3, maxOutOfRange: 0.5, minCv: 2, headPercentile: 5, tailPercentile: 95, margin: 0.05, capAtFixed: true }

/** A version's idle times: one-minute bins over four hours, and those beyond. */
export class IdleHistogram {
  readonly bins = new Uint32Array(IDLE_BINS)
  outOfRange = 0
  samples = 0

  record(idleMs: number): void {
    const bin = Math.floor(Math.max(0, idleMs) / IDLE_BIN_MS)
    if (bin >= IDLE_BINS) this.outOfRange += 1
    else this.bins[bin] = (this.bins[bin] ?? 0) + 1
    this.samples += 1
    if (this.samples >= IDLE_SAMPLES_KEPT) this.#halve()
  }

  #halve(): void {
    let total = 0
    for (let i = 0; i < IDLE_BINS; i++) {
      const halved = (this.bins[i] ?? 0) >>> 1
      this.bins[i] = halved
      total += halved
    }
    this.outOfRange >>>= 1
    this.samples = total + this.outOfRange
  }

  /** Samples within the range. */
  inRange(): number {
    return this.samples - this.outOfRange
  }

  /** The bin holding the given percentile of the in-range idle times (0–100). */
  percentileBin(percentile: number): number {
    const inRange = this.inRange()
    const rank = Math.max(1, Math.ceil((percentile / 100) * inRange))
    let seen = 0
    for (let i = 0; i < IDLE_BINS; i++) {
      seen += this.bins[i] ?? 0
      if (seen >= rank) return i
    }
    return IDLE_BINS - 1
  }

  /** Coefficient of variation of the bin counts: high when the idle times gather in a few bins. */
  binCv(): number {
    const inRange = this.inRange()
    if (inRange === 0) return 0
    const mean = inRange / IDLE_BINS
    let squares = 0
    for (let i = 0; i < IDLE_BINS; i++) {
      const d = (this.bins[i] ?? 0) - mean
      squares += d * d
    }
    return Math.sqrt(squares / IDLE_BINS) / mean
  }
}

export interface KeepAlivePlan {
  readonly policy: KeepAlivePolicy
  /** Why this plan: 'fixed' (chosen), or for an adaptive version 'learned' or why it fell back. */
  readonly basis: 'fixed' | 'learned' | 'too-few-idle-times' | 'beyond-range' | 'no-pattern' | 'operator'
  /** Once idle this long, the version is started again (0: it is not let go early). */
  readonly prewarmMs: number
  /** Then kept this long before it is let go (0: never, a fixed idle timeout of 0). */
  readonly keepAliveMs: number
}

/** The plan for one version: its fixed idle timeout, or what its idle times say. */
export function planKeepAlive(policy: KeepAlivePolicy, history: IdleHistogram | undefined, fixedTimeoutMs: number, options: AdaptiveOptions = DEFAULT_ADAPTIVE): KeepAlivePlan {
  const fixed = (basis: KeepAlivePlan['basis']): KeepAlivePlan => ({ policy, basis, prewarmMs: 0, keepAliveMs: fixedTimeoutMs })
  if (policy === 'fixed') return fixed('fixed')
  // A version that is never to be let go for idleness (idle-timeout-mins 0) is not let go early either.
  if (fixedTimeoutMs === 0) return fixed('fixed')
  if (history === undefined || history.samples < options.minSamples) return fixed('too-few-idle-times')
  if (history.outOfRange > options.maxOutOfRange * history.samples) return fixed('beyond-range')
  if (history.binCv() < options.minCv) return fixed('no-pattern')
  const head = history.percentileBin(options.headPercentile)
  const tail = history.percentileBin(options.tailPercentile)
  // The head bin's lower edge, less the margin; the tail bin's upper edge, plus the margin.
  // (Rounded to the millisecond first: 1.1 × 30 min is not exactly 33 min in floating point.)
  const prewarmMs = Math.floor(Math.round(head * IDLE_BIN_MS * (1 - options.margin)))
  const keepUntilMs = Math.ceil(Math.round((tail + 1) * IDLE_BIN_MS * (1 + options.margin)))
  if (prewarmMs === 0 && options.capAtFixed === true) return { policy, basis: 'learned', prewarmMs, keepAliveMs: Math.min(keepUntilMs, fixedTimeoutMs) }
  return { policy, basis: 'learned', prewarmMs, keepAliveMs: keepUntilMs - prewarmMs }
}

export interface KeepAliveSchedule {
  /** When the version is let go if nothing happens first (Infinity: never for idleness). */
  readonly collectAt: number
  /** When it is started again, if it is let go before then (undefined: it is not). */
  readonly prewarmAt: number | undefined
}

/**
 * What the plan means for a version idle since `idleSince`: kept to the end of its keep-alive
 * time; or, with a pre-warm time, let go once it has been idle for letGoAfterMs(), started
 * again at the pre-warm time and kept from there (`prewarmed`: it was, and nothing has come
 * since).
 */
export function scheduleOf(plan: KeepAlivePlan, idleSince: number, prewarmed: boolean): KeepAliveSchedule {
  if (plan.keepAliveMs <= 0) return { collectAt: Number.POSITIVE_INFINITY, prewarmAt: undefined }
  if (plan.prewarmMs <= 0) return { collectAt: idleSince + plan.keepAliveMs, prewarmAt: undefined }
  const prewarmAt = idleSince + plan.prewarmMs
  const expireAt = prewarmAt + plan.keepAliveMs
  return prewarmed ? { collectAt: expireAt, prewarmAt } : { collectAt: idleSince + letGoAfterMs(plan), prewarmAt }
}

/**
 * How long a version that is to be pre-warmed stays up once idle before it is let go: 10 s, or
 * half its pre-warm time if that is shorter. Not at once: a version whose calls turn frequent
 * would be stopped and started between every two of them until its history caught up (it
 * catches up fast: every call that finds it let go counts). Longer costs memory at every idle
 * period of every such version (a minute: 5 % more idle memory-time on the 1-day trace).
 */
export const LET_GO_AFTER_MS = 10_000

export function letGoAfterMs(plan: KeepAlivePlan): number {
  return Math.min(LET_GO_AFTER_MS, Math.floor(plan.prewarmMs / 2))
}

/** Whether a version that is not running should be started now: it was let go before its pre-warm time, which has come. */
export function prewarmDue(schedule: KeepAliveSchedule, plan: KeepAlivePlan, now: number): boolean {
  return schedule.prewarmAt !== undefined && now >= schedule.prewarmAt && now < schedule.prewarmAt + plan.keepAliveMs
}

/**
 * In a cluster each router sees only the requests that reach it, so each tells the others of
 * the requests to an adaptive version that reach it: every one that finds the version not
 * running (a cold start, which the histogram must count), and otherwise at most one per version
 * every PEER_NOTE_GAP_MS. That loses nothing the histogram keeps: an idle time of a minute or
 * more ends with a request at least that long after this router's previous one (its activity is
 * part of the fleet's), so it is always told; shorter ones count as zero, at most once a minute;
 * and a pre-warmed version's next request comes at least 57 s after its idle time began (the
 * first bin's edge less the margin), so its hit or miss is always told too.
 */
export const PEER_NOTE_GAP_MS = 30_000

/**
 * The idle time a request arriving at `now` adds to its version's histogram, if any. `idleSince`:
 * when the version's last activity ended (undefined: a request is still under way). A gap under
 * a minute (or a busy version) counts as a zero idle time, at most once a minute, as the
 * paper's per-minute counts would: a version called many times a minute does not fill its
 * histogram with them.
 */
export function idleSampleOf(now: number, idleSince: number | undefined, lastSampleAt: number | undefined): number | undefined {
  const gap = idleSince === undefined ? 0 : Math.max(0, now - idleSince)
  if (gap >= IDLE_BIN_MS) return gap
  return lastSampleAt === undefined || now - lastSampleAt >= IDLE_BIN_MS ? gap : undefined
}
