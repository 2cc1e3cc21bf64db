/**
 * How long a version stays up once idle, learned from its own past: the "hybrid histogram"
 * policy of Shahrad et al., "Serverless in the Wild" (USENIX ATC'20), as pure functions.
 *
 * Each version keeps a histogram of its idle times (from the end of its last activity to the
 * next request) in one-minute bins over four hours. When the histogram is representative, the
 * version is let go soon after a request and started again shortly before the next one is
 * likely, then kept until the next request is unlikely to come. The paper takes those times
 * from fixed percentiles (the 5th and the 99th, with 10 % margins); maitre's default weighs
 * them instead (see planKeepAlive). When the histogram is not representative (too many idle
 * times beyond four hours, no pattern), the fixed idle timeout applies.
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
  /**
   * How the times are taken from a trusted histogram: 'cost', the plan that costs least (idle
   * memory-time plus coldWorth for each cold start, over the idle times seen); 'percentiles',
   * the paper's rule (pre-warm at headPercentile, kept to tailPercentile).
   */
  readonly rule: 'cost' | 'percentiles'
  /** Idle times a histogram needs before it is trusted. */
  readonly minSamples: number
  /**
   * A version with at least one idle time within the histogram's range but fewer than
   * minSamples in all is kept this long once idle (undefined: its fixed idle timeout). One
   * with none keeps its fixed idle timeout.
   */
  readonly learningKeepMs?: number
  /** Share of idle times beyond the histogram's range above which it is not trusted. */
  readonly maxOutOfRange: number
  /** Coefficient of variation of the bin counts below which the idle times show no pattern. */
  readonly minCv: number
  /** Percentile of idle times before which the version is started again. */
  readonly headPercentile: number
  /** Percentile of idle times after which the version is let go ('percentiles'). */
  readonly tailPercentile: number
  /** Margin taken off the pre-warm time and added to the keep-alive time. */
  readonly margin: number
  /** 'percentiles': a version that is not let go early is kept no longer than its fixed idle timeout either. */
  readonly capAtFixed?: boolean
  /**
   * 'cost': what a cold start weighs against idle memory-time, in the version's own mean idle
   * times. One cold start of a version called every 2 minutes is worth 2 minutes of its
   * memory, one of a version called every 2 hours, 2 hours: each version's share of cold
   * starts counts the same, as in the paper's score (cold-start % per application).
   */
  readonly coldWorth: number
  /**
   * 'cost': and at least this share of the version's fixed idle timeout, however often it is
   * called (the operator's own price of a cold start: a fixed timeout keeps a version that long
   * to spare one). Without it a busy version's cold starts come cheap, and more calls start cold
   * in all than with the fixed timeout.
   */
  readonly minColdWorth: number
}

/**
 * Measured on the paper's traces (npm run bench:keepalive, bench/RESULTS.md): a histogram is
 * trusted after 3 idle times, and until then a version that has come back once is kept for the
 * histogram's range (the paper's own fallback: a version seen again is likely to be seen again,
 * and a first request says nothing, so it keeps the fixed timeout); the plan costs least with a
 * cold start worth one mean idle time, and at least half the fixed timeout; margins of 5 % (the
 * paper: 10 %).
 */
export const DEFAULT_ADAPTIVE: AdaptiveOptions = { rule: 'cost', minSamples: 3, learningKeepMs: IDLE_BINS * IDLE_BIN_MS, maxOutOfRange: 0.5, minCv: 2, headPercentile: 5, tailPercentile: 95, margin: 0.05, coldWorth: 1, minColdWorth: 0.5 }

/** The paper's rule with maitre's earlier settings (95th percentile, 5 % margins, capped at the fixed timeout): the bench's comparison. */
export const PERCENTILE_ADAPTIVE: AdaptiveOptions = { rule: 'percentiles', minSamples: 3, maxOutOfRange: 0.5, minCv: 2, headPercentile: 5, tailPercentile: 95, margin: 0.05, capAtFixed: true, coldWorth: 1, minColdWorth: 0 }

/** A version's idle times: one-minute bins over four hours, and those beyond. */
export class IdleHistogram {
  readonly bins = new Uint32Array(IDLE_BINS)
  outOfRange = 0
  samples = 0
  /** Idle times ever recorded (never halved): a plan made at one count holds until the next. */
  recorded = 0

  record(idleMs: number): void {
    this.recorded += 1
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

  /** The bin holding the given percentile (0–100) of the in-range idle times, or of those from `fromBin` on. */
  percentileBin(percentile: number, fromBin = 0): number {
    let inRange = this.inRange()
    for (let i = 0; i < fromBin; i++) inRange -= this.bins[i] ?? 0
    const rank = Math.max(1, Math.ceil((percentile / 100) * inRange))
    let seen = 0
    for (let i = fromBin; i < IDLE_BINS; i++) {
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
  /** With a pre-warm time: how long the version stays up once idle before it is let go (0 otherwise). */
  readonly letGoMs: number
}

/** The plan for one version: its fixed idle timeout, or what its idle times say. */
export function planKeepAlive(policy: KeepAlivePolicy, history: IdleHistogram | undefined, fixedTimeoutMs: number, options: AdaptiveOptions = DEFAULT_ADAPTIVE): KeepAlivePlan {
  const fixed = (basis: KeepAlivePlan['basis']): KeepAlivePlan => ({ policy, basis, prewarmMs: 0, keepAliveMs: fixedTimeoutMs, letGoMs: 0 })
  if (policy === 'fixed') return fixed('fixed')
  // A version that is never to be let go for idleness (idle-timeout-mins 0) is not let go early either.
  if (fixedTimeoutMs === 0) return fixed('fixed')
  if (history === undefined || history.samples < options.minSamples) {
    // Only for a version that came back within the range: one whose idle times are all longer
    // than four hours would be kept four hours for nothing.
    if (history === undefined || history.inRange() === 0 || options.learningKeepMs === undefined) return fixed('too-few-idle-times')
    return { policy, basis: 'too-few-idle-times', prewarmMs: 0, keepAliveMs: Math.max(fixedTimeoutMs, options.learningKeepMs), letGoMs: 0 }
  }
  if (history.outOfRange > options.maxOutOfRange * history.samples) return fixed('beyond-range')
  if (history.binCv() < options.minCv) return fixed('no-pattern')
  return options.rule === 'cost' ? cheapestPlan(policy, history, fixedTimeoutMs, options) : percentilePlan(policy, history, fixedTimeoutMs, options)
}

/** A bin's lower edge less the margin: a pre-warm time. (Rounded to the millisecond first: 1.1 × 30 min is not exactly 33 min in floating point.) */
function lowerEdge(bin: number, options: AdaptiveOptions): number {
  return Math.floor(Math.round(bin * IDLE_BIN_MS * (1 - options.margin)))
}

/** A bin's upper edge plus the margin: a time to keep the version until. */
function upperEdge(bin: number, options: AdaptiveOptions): number {
  return Math.ceil(Math.round((bin + 1) * IDLE_BIN_MS * (1 + options.margin)))
}

/**
 * How long a version that is to be pre-warmed stays up once idle before it is let go, when no
 * idle times gather just after its activity: 10 s, or half its pre-warm time if that is
 * shorter. Not at once: a version whose calls turn frequent would be stopped and started
 * between every two of them until its history caught up (it catches up fast: every call that
 * finds it let go counts).
 */
export const LET_GO_AFTER_MS = 10_000

function shortLetGo(prewarmMs: number): number {
  return Math.min(LET_GO_AFTER_MS, Math.floor(prewarmMs / 2))
}

/** The paper's rule: pre-warm at the head percentile, keep to the tail one. */
function percentilePlan(policy: KeepAlivePolicy, history: IdleHistogram, fixedTimeoutMs: number, options: AdaptiveOptions): KeepAlivePlan {
  const prewarmMs = lowerEdge(history.percentileBin(options.headPercentile), options)
  const keepUntilMs = upperEdge(history.percentileBin(options.tailPercentile), options)
  if (prewarmMs === 0) return { policy, basis: 'learned', prewarmMs, keepAliveMs: options.capAtFixed === true ? Math.min(keepUntilMs, fixedTimeoutMs) : keepUntilMs, letGoMs: 0 }
  return { policy, basis: 'learned', prewarmMs, keepAliveMs: keepUntilMs - prewarmMs, letGoMs: shortLetGo(prewarmMs) }
}

/** Splits of the histogram tried for a let-go (each after a run of idle times, before an empty bin): at most this many, the first. */
export const MAX_SPLITS = 8

/**
 * The plan that would have cost least over the idle times seen: idle memory-time (how long the
 * version was up and idle, per idle period) plus, for each cold start, `coldWorth` mean idle
 * times (at least `minColdWorth` of the fixed timeout). Two shapes are weighed:
 * - kept from the end of activity until the upper edge of one of the bins, plus the margin;
 * - let go after the idle times that gather just after activity (those before the first
 *   empty bins that follow a run of them; or, with none, after 10 s), started again at the
 *   head percentile of the rest, less the margin, and kept until the upper edge of one of
 *   theirs. A version whose pauses are 1 and 28 minutes by turns is kept 2.1 minutes, let go,
 *   started at 26.6 and kept to 30.45: the paper's rule, whose head percentile falls among the
 *   short pauses, never lets it go early.
 * An idle time counts as met by a plan only if its whole bin is (a pre-warm or a let-go inside
 * it is a cold start). O(IDLE_BINS × MAX_SPLITS) with prefix sums; the ledger makes a plan once
 * per idle time recorded.
 */
function cheapestPlan(policy: KeepAlivePolicy, history: IdleHistogram, fixedTimeoutMs: number, options: AdaptiveOptions): KeepAlivePlan {
  // count(i), time(i): idle times in bins below i, and their sum (each at its bin's middle).
  const counts = new Float64Array(IDLE_BINS + 1)
  const times = new Float64Array(IDLE_BINS + 1)
  for (let i = 0; i < IDLE_BINS; i++) {
    const n = history.bins[i] ?? 0
    counts[i + 1] = (counts[i] ?? 0) + n
    times[i + 1] = (times[i] ?? 0) + n * (i + 0.5) * IDLE_BIN_MS
  }
  const count = (i: number): number => counts[i] ?? 0
  const time = (i: number): number => times[i] ?? 0
  const total = history.samples
  const meanIdleMs = (time(IDLE_BINS) + history.outOfRange * IDLE_BINS * IDLE_BIN_MS) / Math.max(1, total)
  const coldMs = Math.max(options.coldWorth * meanIdleMs, options.minColdWorth * fixedTimeoutMs)
  // Bins wholly before `ms`; bins wholly at or after it.
  const binsBefore = (ms: number): number => Math.min(IDLE_BINS, Math.floor(ms / IDLE_BIN_MS))
  const firstBinFrom = (ms: number): number => Math.min(IDLE_BINS, Math.ceil(ms / IDLE_BIN_MS))
  const occupied = (i: number): boolean => (history.bins[i] ?? 0) > 0

  let best: KeepAlivePlan | undefined
  let bestCost = Number.POSITIVE_INFINITY
  const consider = (plan: KeepAlivePlan, cost: number): void => {
    if (cost < bestCost) {
      best = plan
      bestCost = cost
    }
  }
  // Kept until `until`: the idle times before it are met (their own length in memory), the rest are cold after `until` of memory.
  for (let i = 0; i < IDLE_BINS; i++) {
    if (!occupied(i)) continue
    const until = upperEdge(i, options)
    const met = binsBefore(until)
    consider({ policy, basis: 'learned', prewarmMs: 0, keepAliveMs: until, letGoMs: 0 }, time(met) + (total - count(met)) * (until + coldMs))
  }
  let splits = 0
  for (let k = 0; k < IDLE_BINS && splits < MAX_SPLITS; k++) {
    if (k > 0 && !(occupied(k - 1) && !occupied(k))) continue
    const rest = count(IDLE_BINS) - count(k)
    if (rest === 0) break
    splits += 1
    const head = history.percentileBin(options.headPercentile, k)
    const prewarmMs = lowerEdge(head, options)
    const letGoMs = k === 0 ? shortLetGo(prewarmMs) : upperEdge(k - 1, options)
    if (prewarmMs <= letGoMs) continue
    const kept = binsBefore(letGoMs)
    const prewarmed = firstBinFrom(prewarmMs)
    // Before the let-go: met. Between it and the pre-warm: cold, the let-go's memory. Within the
    // pre-warm's window: met, the let-go's memory and the wait from the pre-warm. After: cold.
    const beforePrewarm = time(kept) + (count(prewarmed) - count(kept)) * (letGoMs + coldMs)
    for (let i = head; i < IDLE_BINS; i++) {
      if (!occupied(i)) continue
      const until = upperEdge(i, options)
      const met = binsBefore(until)
      const cost = beforePrewarm + (time(met) - time(prewarmed)) + (count(met) - count(prewarmed)) * (letGoMs - prewarmMs) + (total - count(met)) * (letGoMs + until - prewarmMs + coldMs)
      consider({ policy, basis: 'learned', prewarmMs, keepAliveMs: until - prewarmMs, letGoMs }, cost)
    }
  }
  // (A histogram trusted with the default options has an occupied bin, so a plan was found;
  // with none, options that trust an empty one, the fixed timeout.)
  return best ?? { policy, basis: 'no-pattern', prewarmMs: 0, keepAliveMs: fixedTimeoutMs, letGoMs: 0 }
}

export interface KeepAliveSchedule {
  /** When the version is let go if nothing happens first (Infinity: never for idleness). */
  readonly collectAt: number
  /** When it is started again, if it is let go before then (undefined: it is not). */
  readonly prewarmAt: number | undefined
}

/**
 * What the plan means for a version idle since `idleSince`: kept to the end of its keep-alive
 * time; or, with a pre-warm time, let go once it has been idle for its let-go time, started
 * again at the pre-warm time and kept from there (`prewarmed`: it was, and nothing has come
 * since).
 */
export function scheduleOf(plan: KeepAlivePlan, idleSince: number, prewarmed: boolean): KeepAliveSchedule {
  if (plan.keepAliveMs <= 0) return { collectAt: Number.POSITIVE_INFINITY, prewarmAt: undefined }
  if (plan.prewarmMs <= 0) return { collectAt: idleSince + plan.keepAliveMs, prewarmAt: undefined }
  const prewarmAt = idleSince + plan.prewarmMs
  const expireAt = prewarmAt + plan.keepAliveMs
  return prewarmed ? { collectAt: expireAt, prewarmAt } : { collectAt: idleSince + plan.letGoMs, prewarmAt }
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
