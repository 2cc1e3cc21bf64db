import t from 'tap'
import fc from 'fast-check'
import { type KeepAlivePlan, DEFAULT_ADAPTIVE, IDLE_BIN_MS, IDLE_BINS, IDLE_SAMPLES_KEPT, IdleHistogram, idleSampleOf, planKeepAlive, prewarmDue, scheduleOf } from '../../src/scaler/keep-alive.ts'
import { KeepAliveLedger } from '../../src/scaler/keep-alive-ledger.ts'

const MIN = 60_000
/** The paper's own settings, for exact figures independent of maitre's tuned defaults. */
const PAPER = { rule: 'percentiles' as const, coldWorth: 1, minColdWorth: 0, minSamples: 5, maxOutOfRange: 0.5, minCv: 2, headPercentile: 5, tailPercentile: 99, margin: 0.1 }

function histogramOf(idleMinutes: number[]): IdleHistogram {
  const h = new IdleHistogram()
  for (const m of idleMinutes) h.record(m * MIN + 1000)
  return h
}

t.test('idle times fall in one-minute bins over four hours; longer ones are counted apart', async (t) => {
  const h = histogramOf([0, 0, 5, 239])
  h.record(IDLE_BINS * IDLE_BIN_MS + 1)
  t.equal(h.bins[0], 2)
  t.equal(h.bins[5], 1)
  t.equal(h.bins[239], 1)
  t.equal(h.outOfRange, 1)
  t.equal(h.samples, 5)
  t.equal(h.inRange(), 4)
})

t.test('the histogram stays bounded: at IDLE_SAMPLES_KEPT idle times every count is halved', async (t) => {
  const h = new IdleHistogram()
  for (let i = 0; i < IDLE_SAMPLES_KEPT - 1; i++) h.record(3 * MIN)
  t.equal(h.bins[3], IDLE_SAMPLES_KEPT - 1)
  h.record(3 * MIN)
  t.equal(h.bins[3], IDLE_SAMPLES_KEPT / 2, 'halved')
  t.equal(h.samples, IDLE_SAMPLES_KEPT / 2)
  // A pattern that changes takes over: the old one fades.
  for (let i = 0; i < IDLE_SAMPLES_KEPT; i++) h.record(90 * MIN)
  t.ok((h.bins[90] ?? 0) >= (h.bins[3] ?? 0) * 3, 'the new idle time dominates')
})

t.test('the plan: fixed as asked; adaptive learns from a periodic version, and falls back to the fixed timeout when it cannot', async (t) => {
  const periodic = histogramOf(Array.from({ length: 20 }, () => 29))
  t.same(planKeepAlive('fixed', periodic, 30 * MIN, PAPER), { policy: 'fixed', basis: 'fixed', prewarmMs: 0, keepAliveMs: 30 * MIN, letGoMs: 0 }, 'fixed ignores any history')
  const learned = planKeepAlive('adaptive', periodic, 30 * MIN, PAPER)
  // Every idle time in bin 29: pre-warm at 29 min less 10 %, keep to 30 min plus 10 %.
  // Let go after 10 s of idleness.
  t.same(learned, { policy: 'adaptive', basis: 'learned', prewarmMs: 29 * MIN * 0.9, keepAliveMs: 33 * MIN - 29 * MIN * 0.9, letGoMs: 10_000 })
  t.equal(planKeepAlive('adaptive', undefined, 30 * MIN, PAPER).basis, 'too-few-idle-times')
  t.same(planKeepAlive('adaptive', histogramOf([29, 29]), 30 * MIN, PAPER), { policy: 'adaptive', basis: 'too-few-idle-times', prewarmMs: 0, keepAliveMs: 30 * MIN, letGoMs: 0 }, 'the paper: the fixed timeout while learning')
  // maitre's default: a version that has come back is kept for the histogram's range while it learns; a first request says nothing.
  t.same(planKeepAlive('adaptive', undefined, 30 * MIN), { policy: 'adaptive', basis: 'too-few-idle-times', prewarmMs: 0, keepAliveMs: 30 * MIN, letGoMs: 0 }, 'no idle time yet: the fixed timeout')
  t.same(planKeepAlive('adaptive', new IdleHistogram(), 30 * MIN).keepAliveMs, 30 * MIN, 'nor with an empty history')
  t.same(planKeepAlive('adaptive', histogramOf([29, 29]), 30 * MIN), { policy: 'adaptive', basis: 'too-few-idle-times', prewarmMs: 0, keepAliveMs: IDLE_BINS * IDLE_BIN_MS, letGoMs: 0 }, `one or two idle times (fewer than ${DEFAULT_ADAPTIVE.minSamples}): kept four hours`)
  t.equal(planKeepAlive('adaptive', histogramOf([29, 29]), 300 * MIN).keepAliveMs, 300 * MIN, 'or its fixed timeout if that is longer')
  t.equal(planKeepAlive('adaptive', histogramOf([0]), 30 * MIN).keepAliveMs, IDLE_BINS * IDLE_BIN_MS, 'a second call within the first minute is a return too')
  t.same(planKeepAlive('adaptive', histogramOf([6 * 60, 7 * 60]), 30 * MIN), { policy: 'adaptive', basis: 'too-few-idle-times', prewarmMs: 0, keepAliveMs: 30 * MIN, letGoMs: 0 }, 'returns only after more than four hours: four hours would warm none, the fixed timeout')
  const beyond = histogramOf([29, 29, 29, 29, 29, 29, 29, 29, 29, 29])
  for (let i = 0; i < 11; i++) beyond.record(5 * 60 * MIN)
  t.same(planKeepAlive('adaptive', beyond, 30 * MIN, PAPER), { policy: 'adaptive', basis: 'beyond-range', prewarmMs: 0, keepAliveMs: 30 * MIN, letGoMs: 0 }, 'mostly beyond four hours: the fixed timeout')
  const spread = histogramOf(Array.from({ length: 240 }, (_, i) => i))
  t.equal(planKeepAlive('adaptive', spread, 30 * MIN, PAPER).basis, 'no-pattern', 'idle times spread evenly over the range show no pattern')
  t.same(planKeepAlive('adaptive', periodic, 0, PAPER), { policy: 'adaptive', basis: 'fixed', prewarmMs: 0, keepAliveMs: 0, letGoMs: 0 }, 'idle-timeout-mins 0 (never let go) is kept')
  const busy = histogramOf(Array.from({ length: 50 }, () => 0))
  t.same(planKeepAlive('adaptive', busy, 30 * MIN, PAPER), { policy: 'adaptive', basis: 'learned', prewarmMs: 0, keepAliveMs: 1.1 * MIN, letGoMs: 0 }, 'a busy version: kept a little over its longest usual pause, not let go early')
  // maitre's default, the cheapest plan (5 % margins): for a periodic version, the paper's shape.
  t.same(planKeepAlive('adaptive', periodic, 30 * MIN), { policy: 'adaptive', basis: 'learned', prewarmMs: 29 * MIN * 0.95, keepAliveMs: 30 * MIN * 1.05 - 29 * MIN * 0.95, letGoMs: 10_000 })
  const bursty = histogramOf([...Array.from({ length: 30 }, () => 0), 100, 100])
  t.same(planKeepAlive('adaptive', bursty, 30 * MIN, PAPER), { policy: 'adaptive', basis: 'learned', prewarmMs: 0, keepAliveMs: Math.round(101 * MIN * 1.1), letGoMs: 0 }, 'the paper keeps a bursty version to its 99th percentile, here 111 min')
  t.same(planKeepAlive('adaptive', bursty, 30 * MIN, { ...PAPER, tailPercentile: 95, margin: 0.05, capAtFixed: true }), { policy: 'adaptive', basis: 'learned', prewarmMs: 0, keepAliveMs: 30 * MIN, letGoMs: 0 }, 'capped at the fixed idle timeout, maitre\'s earlier rule')
  // The cheapest plan keeps it a minute after its activity (the short pauses), lets it go, and starts it again at 95 min for the long one.
  t.same(planKeepAlive('adaptive', bursty, 30 * MIN), { policy: 'adaptive', basis: 'learned', prewarmMs: 95 * MIN, keepAliveMs: 101 * MIN * 1.05 - 95 * MIN, letGoMs: 1.05 * MIN }, 'the cheapest plan: up a minute, let go, back at 95 min')
})

t.test('the cheapest plan: a version called twice, a minute apart, every half hour is kept 2 minutes, let go, and started again just before the half hour', async (t) => {
  // Idle times of ~1 minute (between the two calls) and ~28 minutes (to the next pair).
  const pairs = histogramOf(Array.from({ length: 20 }, (_, i) => (i % 2 === 0 ? 1 : 28)))
  const plan = planKeepAlive('adaptive', pairs, 10 * MIN)
  t.same(plan, { policy: 'adaptive', basis: 'learned', prewarmMs: 28 * MIN * 0.95, keepAliveMs: 29 * MIN * 1.05 - 28 * MIN * 0.95, letGoMs: 2 * MIN * 1.05 })
  t.same(scheduleOf(plan, 0, false), { collectAt: 2.1 * MIN, prewarmAt: 26.6 * MIN }, 'up through the short pause, let go, back before the long one')
  // The paper's rule: its 5th percentile is the short pause, so it never lets the version go early, and keeps it only to the cap.
  const paper = planKeepAlive('adaptive', pairs, 10 * MIN, { ...PAPER, tailPercentile: 95, margin: 0.05, capAtFixed: true })
  t.same(paper, { policy: 'adaptive', basis: 'learned', prewarmMs: 57_000, keepAliveMs: 29 * MIN * 1.05 - 57_000, letGoMs: 10_000 }, 'the paper: let go 10 s after each call, back at 57 s, kept the whole half hour')
  // What each plan costs on this history: the half hour up vs 2 minutes and a 3-minute window.
  const upFor = (p: typeof plan, idleMin: number): number => (idleMin * MIN < p.letGoMs ? idleMin * MIN : p.letGoMs + Math.max(0, idleMin * MIN - p.prewarmMs))
  t.ok(upFor(plan, 28.5) < upFor(paper, 28.5) / 5, 'the cheapest plan keeps it up a fifth as long or less over a long pause')
})

t.test('the cheapest plan weighs a cold start in the version\'s own mean idle times: the same pattern at a tenth of the pace gets ten times the times; a heavier cold start keeps it through a rare long pause', async (t) => {
  // Pauses of 2 minutes, one in ten of 20 minutes; and the same ten times slower.
  const paced = (scale: number): IdleHistogram => histogramOf(Array.from({ length: 20 }, (_, i) => (i % 10 === 0 ? 20 * scale : 2 * scale)))
  const meets = (plan: KeepAlivePlan, idleMin: number): boolean => {
    const idle = idleMin * MIN + 1000
    if (plan.prewarmMs === 0) return idle < plan.keepAliveMs
    return idle < plan.letGoMs || (idle >= plan.prewarmMs && idle < plan.prewarmMs + plan.keepAliveMs)
  }
  const fast = planKeepAlive('adaptive', paced(1), 10 * MIN)
  const slow = planKeepAlive('adaptive', paced(10), 10 * MIN)
  t.equal(fast.prewarmMs, 2 * MIN * 0.95, 'let go, back just before 2 minutes')
  t.equal(slow.prewarmMs, 10 * fast.prewarmMs, 'ten times slower: back just before 20')
  t.ok(meets(fast, 2) && meets(slow, 20), 'both meet their usual pause')
  t.ok(!meets(fast, 20) && !meets(slow, 200), 'neither is kept for the rare long one: a cold start costs less than the wait')
  const heavy = { ...DEFAULT_ADAPTIVE, coldWorth: 10 }
  t.ok(meets(planKeepAlive('adaptive', paced(1), 10 * MIN, heavy), 20) && meets(planKeepAlive('adaptive', paced(10), 10 * MIN, heavy), 200), 'a cold start worth 10 mean idle times: kept for the long pause too')
})

t.test('the cheapest plan prices a busy version\'s cold start at half its fixed timeout at least: its rarer pauses stay warm', async (t) => {
  // Sixty calls within a minute of the last, and one pause each of 2 to 8 minutes: a mean idle time under a minute.
  const busy = histogramOf([...Array.from({ length: 60 }, () => 0), 2, 3, 4, 5, 6, 7, 8])
  const priced = planKeepAlive('adaptive', busy, 10 * MIN)
  t.same(priced, { policy: 'adaptive', basis: 'learned', prewarmMs: 2 * MIN * 0.95, keepAliveMs: 9 * MIN * 1.05 - 2 * MIN * 0.95, letGoMs: 1.05 * MIN }, 'up a minute after its calls, back at 1.9 min, kept to 9.45: every pause met')
  const cheap = planKeepAlive('adaptive', busy, 10 * MIN, { ...DEFAULT_ADAPTIVE, minColdWorth: 0 })
  t.same(cheap, { policy: 'adaptive', basis: 'learned', prewarmMs: 0, keepAliveMs: 1.05 * MIN, letGoMs: 0 }, 'priced at its own mean idle time alone: every pause of 2 minutes or more would start cold')
})

t.test('the schedule: kept to the end of its keep-alive; with a pre-warm, let go soon, started again, kept from there', async (t) => {
  const plan = { policy: 'adaptive' as const, basis: 'learned' as const, prewarmMs: 10 * MIN, keepAliveMs: 5 * MIN, letGoMs: 10_000 }
  t.same(scheduleOf(plan, 1000, false), { collectAt: 1000 + 10_000, prewarmAt: 1000 + 10 * MIN }, 'let go after its let-go time idle')
  t.same(scheduleOf({ ...plan, letGoMs: 2 * MIN }, 1000, false), { collectAt: 1000 + 2 * MIN, prewarmAt: 1000 + 10 * MIN })
  t.same(scheduleOf(plan, 1000, true), { collectAt: 1000 + 15 * MIN, prewarmAt: 1000 + 10 * MIN })
  t.same(scheduleOf({ ...plan, prewarmMs: 0 }, 1000, false), { collectAt: 1000 + 5 * MIN, prewarmAt: undefined })
  t.same(scheduleOf({ ...plan, keepAliveMs: 0, prewarmMs: 0 }, 1000, false), { collectAt: Number.POSITIVE_INFINITY, prewarmAt: undefined })
  const schedule = scheduleOf(plan, 0, false)
  t.notOk(prewarmDue(schedule, plan, 10 * MIN - 1), 'not before its time')
  t.ok(prewarmDue(schedule, plan, 10 * MIN))
  t.notOk(prewarmDue(schedule, plan, 15 * MIN), 'nor once its keep-alive is over (the request did not come)')
})

t.test('idle samples: a gap of a minute or more counts as is; shorter gaps and busy arrivals count as zero at most once a minute', async (t) => {
  t.equal(idleSampleOf(10 * MIN, 0, undefined), 10 * MIN)
  t.equal(idleSampleOf(10 * MIN, 10 * MIN - 5000, undefined), 5000)
  t.equal(idleSampleOf(10 * MIN, 10 * MIN - 5000, 10 * MIN - 30_000), undefined, 'a second short gap within the minute is not counted')
  t.equal(idleSampleOf(10 * MIN, undefined, 10 * MIN - 30_000), undefined, 'nor a busy arrival')
  t.equal(idleSampleOf(10 * MIN, undefined, 8 * MIN), 0, 'a busy arrival a minute on counts as zero')
})

t.test('the ledger learns a period across collections, pre-warms before the next request, and counts hits and misses', async (t) => {
  const ledger = new KeepAliveLedger<string>(10, PAPER)
  const fixedMs = 30 * MIN
  const period = 20 * MIN
  // Requests every 20 minutes, each ending at once; the version is let go between them.
  let now = 0
  ledger.arrived('v', now, false, false, undefined, 'start-v')
  for (let i = 1; i <= 6; i++) {
    const plan = ledger.plan('v', 'adaptive', fixedMs)
    const schedule = ledger.scheduleRunning('v', plan, now)
    // Collected when its plan says (while learning: after the fixed timeout, beyond the next request).
    if (schedule.collectAt <= now + period) ledger.collected('v', now)
    const running = schedule.collectAt > now + period
    now += period
    ledger.arrived('v', now, running, running, running ? now - period : undefined)
  }
  const plan = ledger.plan('v', 'adaptive', fixedMs)
  t.equal(plan.basis, 'learned')
  t.equal(plan.prewarmMs, 18 * MIN, 'pre-warm at 20 min less 10 %')
  t.equal(plan.keepAliveMs, Math.round(21 * MIN * 1.1) - 18 * MIN)
  t.same(ledger.scheduleRunning('v', plan, now), { collectAt: now + 10_000, prewarmAt: now + 18 * MIN }, 'let go after 10 s of idleness')
  ledger.collected('v', now)
  t.equal(ledger.prewarmDue('v', plan, now + 17 * MIN), undefined)
  t.equal(ledger.prewarmDue('v', plan, now + 18 * MIN), 'start-v', 'its start payload, at the pre-warm time')
  ledger.prewarmed('v', now + 18 * MIN)
  t.same(ledger.scheduleRunning('v', plan, now + 18 * MIN), { collectAt: now + 18 * MIN + plan.keepAliveMs, prewarmAt: now + 18 * MIN }, 'a pre-warmed version is kept for its keep-alive time')
  t.equal(ledger.arrived('v', now + period, true, true, now + 18 * MIN), 'hit', 'the request finds it warm: a hit')
  const view = ledger.view('v', plan, true, now + period, now + period)
  t.match(view, { hits: 1, misses: 0, prewarms: 1, idleSince: now + period, next: { action: 'let-go', at: now + period + 10_000 } })
  t.equal(ledger.plan('v', 'adaptive', fixedMs).prewarmMs, 18 * MIN, 'the hit counted the idle time from the last request, not from the pre-warm')
  now += period
  ledger.collected('v', now)
  ledger.prewarmed('v', now + 18 * MIN)
  t.equal(ledger.collected('v', now + 18 * MIN), true, 'let go again unused: a miss')
  t.match(ledger.view('v', plan, false, undefined, now + 20 * MIN), { misses: 1, idleSince: now, next: undefined }, 'a miss keeps the end of the last real activity')
})

t.test('a pre-warm is a hit only when the request finds an instance ready; one still starting, or one that failed, is a miss', async (t) => {
  const ledger = new KeepAliveLedger<string>(10)
  ledger.arrived('v', 0, false, false, undefined, 'start-v')
  ledger.collected('v', 1000)
  ledger.prewarmed('v', 60_000)
  t.equal(ledger.arrived('v', 61_000, true, false, undefined), 'miss', 'asked for but not yet healthy: the request waits for the start')
  t.equal(ledger.arrived('v', 62_000, true, true, undefined), undefined, 'the next request has no pre-warm to judge')
  ledger.collected('v', 70_000)
  ledger.prewarmed('v', 120_000)
  t.equal(ledger.prewarmFailed('v'), true, 'a failed start is a miss')
  t.equal(ledger.prewarmFailed('v'), false, 'counted once')
  t.equal(ledger.arrived('v', 121_000, false, false, undefined), undefined, 'and the request after it is not judged again')
  t.match(ledger.view('v', ledger.plan('v', 'adaptive', 600_000), false, undefined, 121_000), { prewarms: 2, hits: 0, misses: 2 })
})

t.test('the ledger is bounded: the least recently seen versions are forgotten first', async (t) => {
  const ledger = new KeepAliveLedger<string>(2)
  ledger.arrived('a', 0, false, false, undefined, 'a')
  ledger.arrived('b', 0, false, false, undefined, 'b')
  ledger.arrived('a', 1, false, false, undefined, 'a')
  ledger.arrived('c', 2, false, false, undefined, 'c')
  t.same(ledger.ids().sort(), ['a', 'c'])
  ledger.forget('a')
  t.same(ledger.ids(), ['c'])
})

t.test('the GC follows a keep-alive deadline when the policy gives one, the idle timeout otherwise', async (t) => {
  const { pickGarbage } = await import('../../src/scaler/gc.ts')
  const base = { id: 'v', outstanding: 0, lastActiveAt: 0, idleTimeoutMs: 30 * MIN, staleSince: undefined, fallbackMs: 0, staleTimeoutMs: 0, brokenSince: undefined, brokenTimeoutMs: 0 }
  t.same(pickGarbage([base], 29 * MIN), [], 'fixed: kept for its idle timeout')
  t.same(pickGarbage([{ ...base, keepUntil: 2 * MIN }], 2 * MIN), [{ id: 'v', reason: 'idle' }], 'adaptive: let go sooner')
  t.same(pickGarbage([{ ...base, keepUntil: 45 * MIN }], 40 * MIN), [], 'or later')
  t.same(pickGarbage([{ ...base, keepUntil: 0, outstanding: 1 }], 40 * MIN), [], 'and never with a request under way')
})

t.test('a wall clock stepped back an hour does not leave the last arrival in the future: the next let-go idle period is measured and pre-warmed as usual', async (t) => {
  const ledger = new KeepAliveLedger<string>(10)
  const T = 10 * 3_600_000
  ledger.arrived('v', T, false, false, undefined, 'start-v')
  // The clock steps back an hour; the version is let go, and a request comes 35 minutes later.
  ledger.collected('v', T - 55 * 60_000)
  // (This one period reads a request after its let-go: the clock's own step, as before.)
  ledger.arrived('v', T - 20 * 60_000, false, false, undefined)
  const view = ledger.view('v', ledger.plan('v', 'adaptive', 10 * 60_000), false, undefined, T - 20 * 60_000)
  t.equal(view.idleTimes, 1, 'the cold start counts')
  ledger.collected('v', T - 19 * 60_000)
  t.equal(ledger.prewarmAt('v', { policy: 'adaptive', basis: 'learned', prewarmMs: 60_000, keepAliveMs: 60_000, letGoMs: 10_000 }), T - 18 * 60_000, 'and the next let-go is pre-warmed: the last arrival follows the clock')
})

t.test('the collection of a pre-warm whose start failed, with no request since, leaves the idle period where it began: the next request records the true idle time, and no second pre-warm is planned; other collections move it', async (t) => {
  const period = 20 * MIN
  const learned = (): { ledger: KeepAliveLedger<string>; now: number } => {
    const ledger = new KeepAliveLedger<string>(10, PAPER)
    let now = 0
    ledger.arrived('v', now, false, false, undefined, 'start-v')
    for (let i = 1; i <= 6; i++) {
      ledger.collected('v', now)
      now += period
      ledger.arrived('v', now, false, false, undefined)
    }
    ledger.collected('v', now)
    return { ledger, now }
  }
  {
    const { ledger, now } = learned()
    const plan = ledger.plan('v', 'adaptive', 30 * MIN)
    t.equal(plan.prewarmMs, 18 * MIN, 'learned: pre-warm at 18 min')
    ledger.prewarmed('v', now + 18 * MIN)
    ledger.prewarmFailed('v')
    // The GC collects the record the failed start left, 10 s later.
    t.equal(ledger.collected('v', now + 18 * MIN), false, 'no second miss for it')
    t.equal(ledger.prewarmDue('v', plan, now + 18 * MIN + 20_000), undefined, 'no second pre-warm for the same idle period')
    ledger.arrived('v', now + period, false, false, undefined)
    t.equal(ledger.plan('v', 'adaptive', 30 * MIN).prewarmMs, 18 * MIN, 'the call on its period recorded 20 min, not the 2 min since the failed start')
  }
  {
    // A version running with no request heard of here (in a cluster, one at another router whose
    // note was lost) is judged by its activity as before: its collection moves the idle period.
    const { ledger, now } = learned()
    const plan = ledger.plan('v', 'adaptive', 30 * MIN)
    t.same(ledger.scheduleRunning('v', plan, now + 5 * MIN), { collectAt: now + 5 * MIN + 10_000, prewarmAt: now + 23 * MIN }, 'let go 10 s after its activity')
    ledger.collected('v', now + 5 * MIN)
    t.equal(ledger.view('v', plan, false, undefined, now + 6 * MIN).idleSince, now + 5 * MIN, 'the idle period starts at that activity')
  }
})

t.test('the ledger makes a plan once per idle time: the same plan until the next idle time is recorded, then one that follows it', async (t) => {
  const ledger = new KeepAliveLedger<string>(10)
  let now = 0
  ledger.arrived('v', now, false, false, undefined)
  for (let i = 0; i < 3; i++) {
    ledger.collected('v', now)
    now += 30 * MIN
    ledger.arrived('v', now, false, false, undefined)
  }
  const first = ledger.plan('v', 'adaptive', 10 * MIN)
  t.equal(first.basis, 'learned')
  t.equal(ledger.plan('v', 'adaptive', 10 * MIN), first, 'asked again with nothing new: the very same plan')
  t.not(ledger.plan('v', 'adaptive', 20 * MIN), first, 'another fixed timeout: planned afresh')
  t.equal(ledger.plan('v', 'fixed', 10 * MIN).basis, 'fixed', 'and another policy')
  // A run of 5-minute idle times: the plan follows them.
  for (let i = 0; i < 6; i++) {
    ledger.collected('v', now)
    now += 5 * MIN
    ledger.arrived('v', now, false, false, undefined)
  }
  t.equal(ledger.plan('v', 'adaptive', 10 * MIN).prewarmMs, 5 * MIN * 0.95, 'the new idle times are planned for')
  t.not(ledger.plan('v', 'adaptive', 10 * MIN), first)
})

/**
 * What a plan costs on a histogram, worked out from the schedule's own terms (a request at idle
 * time t finds the version up if t < letGo, or within [prewarm, prewarm + keepAlive); a bin is
 * met only if all of it is), apart from the planner's prefix sums.
 */
function costOn(plan: KeepAlivePlan, h: IdleHistogram, coldMs: number): number {
  const within = (a: number, b: number, from: number, to: number): boolean => a >= from && b <= to
  const metBin = (i: number): boolean => {
    const a = i * IDLE_BIN_MS
    const b = (i + 1) * IDLE_BIN_MS
    if (plan.prewarmMs === 0) return within(a, b, 0, plan.keepAliveMs)
    return within(a, b, 0, plan.letGoMs) || within(a, b, plan.prewarmMs, plan.prewarmMs + plan.keepAliveMs)
  }
  const upFor = (t: number): number => (plan.prewarmMs === 0 ? Math.min(t, plan.keepAliveMs) : Math.min(t, plan.letGoMs) + (t >= plan.prewarmMs ? Math.min(t, plan.prewarmMs + plan.keepAliveMs) - plan.prewarmMs : 0))
  let cost = 0
  for (let i = 0; i < IDLE_BINS; i++) {
    const n = h.bins[i] ?? 0
    if (n > 0) cost += n * (upFor((i + 0.5) * IDLE_BIN_MS) + (metBin(i) ? 0 : coldMs))
  }
  return cost + h.outOfRange * (upFor(Number.POSITIVE_INFINITY) + coldMs)
}

t.test('the cheapest plan costs no more, on the idle times seen, than any plan of either shape built apart from it (random histograms)', async (t) => {
  const fixedMs = 10 * MIN
  const margin = DEFAULT_ADAPTIVE.margin
  const upper = (bin: number): number => Math.ceil(Math.round((bin + 1) * IDLE_BIN_MS * (1 + margin)))
  const lower = (bin: number): number => Math.floor(Math.round(bin * IDLE_BIN_MS * (1 - margin)))
  let learned = 0
  // Scattered idle times, and one or two periods with jitter (dense runs of bins, as real versions have).
  const scattered = fc.array(fc.oneof(fc.integer({ min: 0, max: 3 }), fc.integer({ min: 0, max: 60 }), fc.integer({ min: 0, max: 239 }), fc.constant(300)), { minLength: 0, maxLength: 40 })
  const periodic = fc.tuple(fc.integer({ min: 1, max: 200 }), fc.array(fc.integer({ min: -3, max: 3 }), { minLength: 0, maxLength: 80 })).map(([period, jitter]) => jitter.map((j) => Math.max(0, period + j)))
  const idleMinutes = fc.tuple(scattered, periodic, periodic).map(([a, b, c]) => [...a, ...b, ...c]).filter((m) => m.length >= 3)
  fc.assert(
    fc.property(idleMinutes, (minutes) => {
      const h = histogramOf(minutes)
      const plan = planKeepAlive('adaptive', h, fixedMs)
      if (plan.basis !== 'learned') return
      learned += 1
      if (plan.prewarmMs > 0 && !(plan.letGoMs > 0 && plan.letGoMs < plan.prewarmMs && plan.keepAliveMs > 0)) throw new Error(`an unsound plan: ${JSON.stringify(plan)}`)
      const mean = ((minutes.reduce((sum, m) => sum + (m >= IDLE_BINS ? IDLE_BINS : m + 0.5), 0)) * IDLE_BIN_MS) / minutes.length
      const coldMs = Math.max(mean, DEFAULT_ADAPTIVE.minColdWorth * fixedMs)
      const chosen = costOn(plan, h, coldMs)
      const occupied = [...h.bins.keys()].filter((i) => (h.bins[i] ?? 0) > 0)
      const others: KeepAlivePlan[] = occupied.map((i) => ({ policy: 'adaptive', basis: 'learned', prewarmMs: 0, keepAliveMs: upper(i), letGoMs: 0 }))
      // Let go after 10 s, or after the first run of idle times; back at the 5th percentile of the rest.
      const firstGap = occupied.findIndex((i, k) => occupied[k + 1] !== undefined && occupied[k + 1] !== i + 1)
      for (const split of [0, firstGap < 0 ? undefined : (occupied[firstGap] as number) + 1]) {
        if (split === undefined) continue
        const rest = occupied.filter((i) => i >= split)
        const restCount = rest.reduce((sum, i) => sum + (h.bins[i] ?? 0), 0)
        let seen = 0
        const head = rest.find((i) => (seen += h.bins[i] ?? 0) >= Math.max(1, Math.ceil(0.05 * restCount)))
        if (head === undefined) continue
        const prewarmMs = lower(head)
        const letGoMs = split === 0 ? Math.min(10_000, Math.floor(prewarmMs / 2)) : upper(split - 1)
        if (prewarmMs <= letGoMs) continue
        for (const i of rest) if (i >= head) others.push({ policy: 'adaptive', basis: 'learned', prewarmMs, keepAliveMs: upper(i) - prewarmMs, letGoMs })
      }
      for (const other of others) if (costOn(other, h, coldMs) < chosen - 1e-6) throw new Error(`${JSON.stringify(other)} costs ${costOn(other, h, coldMs)}, less than the chosen ${JSON.stringify(plan)} at ${chosen}`)
    }),
    { numRuns: 400, seed: 19 },
  )
  t.ok(learned > 100, `most histograms were trusted and planned (${learned})`)
})
