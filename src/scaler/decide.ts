/**
 * What to scale a version to: Waiter's two-EMA formula (reference/waiter.md §5) plus a burst
 * path after Knative's panic mode. A pure function: time, load and the previous state come in,
 * the decision and the next state go out. No I/O, no clock, no imports outside this folder.
 */

export interface ScalingPolicy {
  readonly minInstances: number
  readonly maxInstances: number
  /** Requests one instance serves at once (≥ 1). */
  readonly concurrencyLevel: number
  /** Multiplies the outstanding count, (0, 2]. */
  readonly scaleFactor: number
  /** EMA weight per second towards a higher ideal, (0, 1). */
  readonly scaleUpFactor: number
  /** EMA weight per second towards a lower ideal, (0, 1). */
  readonly scaleDownFactor: number
  /** Changes smaller than this many instances are ignored, [0, 1). */
  readonly jitterThreshold: number
  /** Share of expired instances replaced per decision, (0, 1]. */
  readonly expiredInstanceRestartRate: number
  /** Most instances added in one decision (Waiter's quanta: what one scheduling round can place). */
  readonly maxScaleUpPerDecision: number
}

/** Waiter's quanta constraints: at most 64 cpus and 512 GB of memory per scale-up. */
export function scaleUpQuanta(cpus: number, memMb: number): number {
  return Math.max(1, Math.min(Math.floor(64 / cpus), Math.floor(524288 / memMb)))
}

export interface BurstOptions {
  /** Demand at this multiple of the ready capacity starts a burst (Knative's 200 %). */
  readonly threshold: number
  /** A burst lasts this long after demand last crossed the threshold; no scale-down meanwhile. */
  readonly holdMs: number
  /** Length of one scaling tick: EMA smoothing is normalised by whole ticks elapsed. */
  readonly tickMs: number
}

export const DEFAULT_BURST: BurstOptions = { threshold: 2, holdMs: 60_000, tickMs: 1_000 }

export interface ScalingInput {
  /** In-flight plus queued requests, fleet-wide. */
  readonly outstanding: number
  /** Instances currently requested from the backend. */
  readonly requested: number
  /** Instances ready to serve. */
  readonly healthy: number
  readonly expiredHealthy: number
  readonly expiredUnhealthy: number
}

export interface ScalingState {
  /** The smoothed (fractional) target, carried from tick to tick. */
  readonly target: number
  /** When the previous decision was taken; undefined before the first. */
  readonly decidedAt: number | undefined
  /** Bursting until this time (ms); 0 = not bursting. */
  readonly burstUntil: number
}

export type ScalingDirection = 'up' | 'down' | 'stable'

export interface ScalingDecision {
  /** Instances to request now. */
  readonly scaleTo: number
  /** scaleTo − requested. */
  readonly amount: number
  readonly direction: ScalingDirection
  readonly ideal: number
  readonly bursting: boolean
  readonly state: ScalingState
}

/** Waiter caps how many expired unhealthy instances count towards replacement. */
const MAX_EXPIRED_UNHEALTHY = 2

export const initialScalingState = (requested: number): ScalingState => ({ target: requested, decidedAt: undefined, burstUntil: 0 })

function clamp(value: number, policy: ScalingPolicy): number {
  return Math.min(policy.maxInstances, Math.max(policy.minInstances, value))
}

export function decide(policy: ScalingPolicy, input: ScalingInput, state: ScalingState, nowMs: number, burst: BurstOptions = DEFAULT_BURST): ScalingDecision {
  const { requested, healthy } = input
  const ideal = Math.ceil((input.outstanding * policy.scaleFactor) / policy.concurrencyLevel)
  const readyCapacity = healthy * policy.concurrencyLevel
  const overThreshold = input.outstanding > 0 && input.outstanding * policy.scaleFactor >= burst.threshold * readyCapacity
  // A clock stepped back (an NTP step, a restored VM) says no time has passed: the decision time
  // starts over from now, and a burst's hold lasts no longer than it would have from now. (Taken
  // as negative ticks, the smoothing ran away from the ideal: a version went to max-instances
  // for three requests, or its target became NaN and it never scaled again.)
  const steppedBack = state.decidedAt !== undefined && nowMs < state.decidedAt
  const heldUntil = Math.min(state.burstUntil, nowMs + burst.holdMs)
  const burstUntil = overThreshold ? nowMs + burst.holdMs : heldUntil
  const bursting = overThreshold || nowMs < heldUntil

  const ticks = state.decidedAt === undefined || steppedBack ? 0 : Math.floor((nowMs - state.decidedAt) / burst.tickMs)
  // Smoothing counts whole ticks only; a partial tick keeps the previous decision time.
  const decidedAt = state.decidedAt === undefined || ticks > 0 || steppedBack ? nowMs : state.decidedAt

  let target: number
  let to: number
  if (bursting) {
    // Jump straight to the ideal and never below what the burst already reached.
    target = clamp(Math.max(ideal, state.target), policy)
    to = Math.ceil(target - 1e-9)
  } else if (ticks === 0) {
    // The first look at a version (or a second look within one tick) only records the state.
    target = state.decidedAt === undefined ? requested : state.target
    to = requested
  } else {
    const up = 1 - (1 - policy.scaleUpFactor) ** ticks
    const down = 1 - (1 - policy.scaleDownFactor) ** ticks
    const towardsUp = up * ideal + (1 - up) * state.target
    const towardsDown = down * ideal + (1 - down) * state.target
    target = clamp(towardsUp >= state.target ? towardsUp : towardsDown, policy)
    const delta = target - requested
    const amount = (delta > 0 && ideal <= requested && requested >= policy.minInstances) || Math.abs(delta) < policy.jitterThreshold ? 0 : Math.ceil(delta - 0.01)
    to = requested + amount
    // Never more than halve in one step (Knative's max-scale-down-rate 2).
    if (to < requested) to = Math.max(to, Math.floor(requested / 2), policy.minInstances)
  }

  const expired = input.expiredHealthy + Math.min(MAX_EXPIRED_UNHEALTHY, input.expiredUnhealthy)
  // Replacements are added to a decision made from the target (or to a first look), never to a
  // second look within a tick, which only keeps the count: added to the count itself, each
  // queued request's poke would add another replacement for the same expired instance.
  const recordOnly = !bursting && ticks === 0 && state.decidedAt !== undefined
  if (expired > 0 && !recordOnly && !(to < requested && requested === healthy)) {
    to = to + Math.ceil(expired * policy.expiredInstanceRestartRate) - Math.max(0, healthy - to)
  }
  // No scale-down while a burst lasts (after the replacement arithmetic, so it cannot compound).
  if (bursting) to = Math.max(to, requested)
  to = Math.min(Math.max(to, 0), policy.maxInstances + expired, requested + policy.maxScaleUpPerDecision)

  const amount = to - requested
  return {
    scaleTo: to,
    amount,
    direction: amount > 0 ? 'up' : amount < 0 ? 'down' : 'stable',
    ideal,
    bursting,
    state: { target, decidedAt, burstUntil: bursting ? burstUntil : 0 },
  }
}
