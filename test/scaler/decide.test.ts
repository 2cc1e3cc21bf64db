import t from 'tap'
import { decide, initialScalingState, type BurstOptions, type ScalingPolicy, type ScalingState } from '../../src/scaler/decide.ts'

/** Waiter's code defaults. */
const WAITER: ScalingPolicy = {
  minInstances: 1,
  maxInstances: 500,
  concurrencyLevel: 1,
  scaleFactor: 1,
  scaleUpFactor: 0.1,
  scaleDownFactor: 0.001,
  jitterThreshold: 0.5,
  expiredInstanceRestartRate: 0.1,
  maxScaleUpPerDecision: 1000,
}
const NO_BURST: BurstOptions = { threshold: Number.POSITIVE_INFINITY, holdMs: 0, tickMs: 1000 }
const BURST: BurstOptions = { threshold: 2, holdMs: 60_000, tickMs: 1000 }

/**
 * Waiter's simulator idea: a fleet that starts instances instantly, driven by a client count per
 * second. Returns the requested count after every tick.
 */
function simulate(policy: ScalingPolicy, clients: (second: number) => number, seconds: number, burst = BURST, start = 1): number[] {
  let requested = start
  let state: ScalingState = initialScalingState(requested)
  const out: number[] = []
  for (let s = 0; s <= seconds; s++) {
    const d = decide(policy, { outstanding: clients(s), requested, healthy: requested, expiredHealthy: 0, expiredUnhealthy: 0 }, state, s * 1000, burst)
    requested = d.scaleTo
    state = d.state
    out.push(requested)
  }
  return out
}

t.test('stable traffic: for every client count 0..99 the fleet reaches it, then returns to min', async (t) => {
  const failures: string[] = []
  for (let clients = 0; clients < 100; clients++) {
    const loadSeconds = 120
    const trace = simulate(WAITER, (s) => (s < loadSeconds ? clients : 0), loadSeconds + 8000)
    const want = Math.max(1, clients)
    if (trace[loadSeconds - 1] !== want) failures.push(`${clients} clients: ${String(trace[loadSeconds - 1])} instances under load`)
    if (trace.at(-1) !== 1) failures.push(`${clients} clients: ${String(trace.at(-1))} instances long after the load`)
    if (trace.some((n) => n > want)) failures.push(`${clients} clients: overshoot to ${Math.max(...trace)}`)
  }
  t.same(failures, [], 'every count reached exactly, no overshoot, back to min')
})

t.test('step traffic without the burst path follows the EMA, normalised by elapsed ticks', async (t) => {
  const trace = simulate(WAITER, () => 10, 60, NO_BURST)
  t.equal(trace[0], 1, 'the first look records state only')
  t.ok(trace.every((n, i) => i === 0 || n >= (trace[i - 1] as number)), 'monotone while the load holds')
  t.ok((trace[5] as number) < 10, `smoothed: ${trace[5]} instances after 5 s`)
  t.equal(trace[60], 10, 'reaches the ideal within a minute')

  // One decision after 5 s equals five one-second decisions.
  const input = { outstanding: 10, requested: 1, healthy: 1, expiredHealthy: 0, expiredUnhealthy: 0 }
  const seed = decide(WAITER, input, initialScalingState(1), 0, NO_BURST).state
  const once = decide(WAITER, input, seed, 5000, NO_BURST).state.target
  let stepwise = seed
  for (let s = 1; s <= 5; s++) stepwise = decide(WAITER, input, stepwise, s * 1000, NO_BURST).state
  t.ok(Math.abs(once - stepwise.target) < 1e-9, `${once} == ${stepwise.target}`)
  t.equal(decide(WAITER, input, seed, 999, NO_BURST).state.decidedAt, 0, 'a partial tick keeps the previous decision time')
})

t.test('the burst path jumps to the ideal at once and holds while the burst lasts', async (t) => {
  const trace = simulate(WAITER, (s) => (s < 10 ? 20 : 2), 200, BURST)
  t.equal(trace[0], 20, 'demand ≥ 2× ready capacity: straight to 20 on the first tick')
  t.ok(trace.slice(0, 70).every((n) => n === 20), 'no scale-down for the hold after demand drops (60 s)')
  // Demand last crossed the threshold at 0 s, so the burst holds through 59 s. From 60 s the EMA
  // moves the target from 20 towards the ideal of 2 by the scale-down factor per tick, and the
  // fleet follows it down in whole instances (a step once the target is a whole instance lower).
  const target = 2 + (20 - 2) * (1 - WAITER.scaleDownFactor) ** (200 - 59)
  t.equal(trace[200], Math.ceil(target), `then the EMA brings it down: ${trace[200]} instances at 200 s (target ${target.toFixed(2)})`)
})

t.test('spiky traffic: the fleet meets the first spike and does not collapse in the troughs', async (t) => {
  const spiky = (s: number): number => (Math.floor(s / 5) % 2 === 0 ? 20 : 0)
  const trace = simulate(WAITER, spiky, 600, BURST)
  t.equal(trace[0], 20, 'the first spike is met at once')
  t.ok(trace.every((n) => n >= 18 && n <= 20), `stays between 18 and 20 for ten minutes (min ${Math.min(...trace)})`)
  const changes = trace.filter((n, i) => i > 0 && n !== trace[i - 1]).length
  t.ok(changes <= 4, `no thrashing: ${changes} changes in 600 ticks`)
})

t.test('Knative panic then un-panic: down only after the hold, never more than halving per tick', async (t) => {
  const fast = { ...WAITER, scaleDownFactor: 0.99 }
  const trace = simulate(fast, (s) => (s < 5 ? 40 : 0), 120, BURST)
  t.equal(trace[4], 40)
  const firstDrop = trace.findIndex((n) => n < 40)
  t.ok(firstDrop >= 60, `first scale-down at ${firstDrop} s: the hold runs 60 s from the last tick over the threshold (0 s)`)
  for (let i = firstDrop; i < trace.length; i++) {
    t.ok((trace[i] as number) >= Math.floor((trace[i - 1] as number) / 2), `tick ${i}: ${trace[i - 1]} → ${trace[i]} at most halves`)
    if ((trace[i] as number) === 1) break
  }
  t.equal(trace.at(-1), 1, 'back to min')
})

t.test('rate limit up: one decision adds at most the quanta (Waiter: 64 cpus, 512 GB)', async (t) => {
  const { scaleUpQuanta } = await import('../../src/scaler/decide.ts')
  t.equal(scaleUpQuanta(16, 1024), 4)
  t.equal(scaleUpQuanta(0.1, 262144), 2)
  t.equal(scaleUpQuanta(64, 1), 1)
  const trace = simulate({ ...WAITER, maxScaleUpPerDecision: scaleUpQuanta(16, 1024) }, () => 40, 12, BURST)
  t.same(trace.slice(0, 5), [5, 9, 13, 17, 21], 'four more per tick, even in a burst')
  t.equal(trace[10], 40)
})

t.test('the first request to a version at zero scales it up at once', async (t) => {
  const d = decide({ ...WAITER, minInstances: 1 }, { outstanding: 1, requested: 0, healthy: 0, expiredHealthy: 0, expiredUnhealthy: 0 }, initialScalingState(0), 0)
  t.equal(d.scaleTo, 1)
  t.equal(d.direction, 'up')
  t.ok(d.bursting)
  const many = decide(WAITER, { outstanding: 30, requested: 0, healthy: 0, expiredHealthy: 0, expiredUnhealthy: 0 }, initialScalingState(0), 0)
  t.equal(many.scaleTo, 30, '30 queued requests at zero: 30 instances, no waiting for a tick')
})

t.test('bounds, jitter and expired instances', async (t) => {
  const capped = simulate({ ...WAITER, maxInstances: 5 }, () => 1000, 10)
  t.ok(capped.every((n) => n <= 5), 'never above max-instances')
  t.ok(simulate({ ...WAITER, minInstances: 3 }, () => 0, 100, BURST, 3).every((n) => n === 3), 'never below min-instances')

  const jitter = decide(WAITER, { outstanding: 10, requested: 10, healthy: 10, expiredHealthy: 0, expiredUnhealthy: 0 }, { target: 10.4, decidedAt: 0, burstUntil: 0 }, 1000, NO_BURST)
  t.equal(jitter.amount, 0, 'a change under the jitter threshold is ignored')

  const expired = decide(WAITER, { outstanding: 3, requested: 3, healthy: 3, expiredHealthy: 1, expiredUnhealthy: 0 }, { target: 3, decidedAt: 0, burstUntil: 0 }, 1000, NO_BURST)
  t.equal(expired.scaleTo, 4, 'an expired instance gets a replacement before it is killed')
  let burstState: ScalingState = { target: 1, decidedAt: 0, burstUntil: 60_000 }
  let requested = 1
  for (let s = 1; s <= 10; s++) {
    const d = decide(WAITER, { outstanding: 0, requested, healthy: requested, expiredHealthy: 1, expiredUnhealthy: 0 }, burstState, s * 1000, BURST)
    burstState = d.state
    requested = d.scaleTo
  }
  t.equal(requested, 2, 'during a burst an expired instance gets one replacement, not one per tick')
  // Pokes (a queued request's immediate look) within one tick, while the replacement still starts:
  // the count stays, where each look used to add another replacement for the same instance.
  let poked: ScalingState = { target: 3, decidedAt: 1000, burstUntil: 0 }
  let count = 4
  for (let ms = 1050; ms < 2000; ms += 50) {
    const d = decide(WAITER, { outstanding: 3, requested: count, healthy: 2, expiredHealthy: 1, expiredUnhealthy: 0 }, poked, ms, NO_BURST)
    poked = d.state
    count = d.scaleTo
  }
  t.equal(count, 4, 'looks within a tick add no replacement on top of the count')
  const nextTick = decide(WAITER, { outstanding: 3, requested: count, healthy: 2, expiredHealthy: 1, expiredUnhealthy: 0 }, poked, 2000, NO_BURST)
  t.equal(nextTick.scaleTo, 4, 'and the next tick keeps the ideal plus one replacement')
  const lots = decide(WAITER, { outstanding: 3, requested: 3, healthy: 3, expiredHealthy: 0, expiredUnhealthy: 9 }, { target: 3, decidedAt: 0, burstUntil: 0 }, 1000, NO_BURST)
  t.equal(lots.scaleTo, 4, 'at most two expired unhealthy instances count (ceil(2 × 0.1) = 1)')
})

t.test('a clock stepped back (an NTP step, a restored VM) is no time passing: the target neither runs off to max-instances nor becomes NaN, and the burst hold is not stretched', async (t) => {
  const hour = 3_600_000
  for (const scaleDownFactor of [WAITER.scaleDownFactor, 0.5, 0.9]) {
    const policy = { ...WAITER, scaleDownFactor }
    let requested = 2
    // A decision made at 10:00, then the clock says 08:00.
    let state: ScalingState = { target: 2, decidedAt: 10 * hour, burstUntil: 0 }
    let now = 8 * hour
    for (let tick = 0; tick < 20; tick++, now += 1000) {
      const d = decide(policy, { outstanding: 3, requested, healthy: requested, expiredHealthy: 0, expiredUnhealthy: 0 }, state, now, NO_BURST)
      t.ok(Number.isFinite(d.state.target), `scale-down-factor ${scaleDownFactor}, tick ${tick}: a finite target (${d.state.target})`)
      requested = d.scaleTo
      state = d.state
    }
    t.ok(requested <= 3 && state.target <= 3, `scale-down-factor ${scaleDownFactor}: 3 requests ask for no more than 3 instances (${requested}, target ${state.target})`)
  }
  // Fifty queued on one instance after the step: the version scales (a NaN target never would).
  let state: ScalingState = { target: 1, decidedAt: 10 * hour, burstUntil: 10 * hour + 60_000 }
  let requested = 1
  let now = 8 * hour
  for (let tick = 0; tick < 3; tick++, now += 1000) {
    const d = decide({ ...WAITER, scaleDownFactor: 0.5 }, { outstanding: 50, requested, healthy: requested, expiredHealthy: 0, expiredUnhealthy: 0 }, state, now, NO_BURST)
    requested = d.scaleTo
    state = d.state
  }
  t.ok(requested > 1, `50 requests after the step scale the version up (${requested})`)
  const held = decide(WAITER, { outstanding: 0, requested: 1, healthy: 1, expiredHealthy: 0, expiredUnhealthy: 0 }, { target: 1, decidedAt: 10 * hour, burstUntil: 10 * hour + 60_000 }, 8 * hour, BURST)
  t.ok(held.state.burstUntil <= 8 * hour + BURST.holdMs, 'a burst hold set before the step lasts no longer than a hold from now')
})
