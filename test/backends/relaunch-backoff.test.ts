/**
 * The relaunch back-off's run of failures: it grows with every failure, an instance that passed
 * its health checks does not end it, only a healthy stretch of twice the cap with no failure does.
 */
import t from 'tap'
import { afterFailure, afterHealthy, afterNoneHealthy, NO_FAILURES, relaunchDelayMs, stableWindowMs } from '../../src/backends/relaunch-backoff.ts'

const rule = { baseMs: 250, factor: 2, maxMs: 30_000 }

t.test('failures in a row double the wait up to the cap', async (t) => {
  let run = NO_FAILURES
  t.equal(relaunchDelayMs(run, rule), 0, 'nothing failed: no wait')
  const waits: number[] = []
  for (let i = 0; i < 10; i++) {
    run = afterFailure(run, i * 100, rule, false)
    waits.push(relaunchDelayMs(run, rule))
  }
  t.same(waits, [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000])
  t.equal(relaunchDelayMs(afterFailure(NO_FAILURES, 0, { ...rule, factor: 1 }, false), { ...rule, factor: 1 }), 250, 'factor 1: always the base')
})

t.test('an instance that is healthy and crashes seconds later does not end the run: the wait keeps growing', async (t) => {
  let run = NO_FAILURES
  let now = 0
  const waits: number[] = []
  for (let i = 0; i < 5; i++) {
    now += relaunchDelayMs(run, rule) + 200 // relaunched, starts in 200 ms…
    run = afterHealthy(run, now) // …passes its health check…
    now += 3000 // …and crashes three seconds later
    run = afterFailure(run, now, rule, false)
    waits.push(relaunchDelayMs(run, rule))
  }
  t.same(waits, [250, 500, 1000, 2000, 4000], 'as if it had never been healthy')
})

t.test('healthy for the stable window (twice the cap) with no failure: the next failure starts a fresh run', async (t) => {
  t.equal(stableWindowMs(rule), 60_000)
  let run = NO_FAILURES
  for (let i = 0; i < 6; i++) run = afterFailure(run, i, rule, false)
  t.equal(relaunchDelayMs(run, rule), 8000)
  run = afterHealthy(run, 1000)
  t.equal(afterHealthy(run, 5000).healthySince, 1000, 'a later healthy check does not move the start of the stretch')
  t.equal(relaunchDelayMs(afterFailure(run, 1000 + 59_999, rule, false), rule), 16_000, 'a failure just inside the window continues the run')
  t.equal(relaunchDelayMs(afterFailure(run, 1000 + 60_000, rule, false), rule), 250, 'one at its end starts afresh')
})

t.test('a failure while other instances stay healthy: their stretch counts from the failure, no healthy check needed', async (t) => {
  let run = afterHealthy(NO_FAILURES, 0)
  run = afterFailure(run, 70_000, rule, true)
  t.equal(relaunchDelayMs(run, rule), 250, 'healthy for 70 s before: a fresh run')
  t.equal(run.healthySince, 70_000, 'the others are healthy from now')
  run = afterFailure(run, 80_000, rule, true)
  t.equal(relaunchDelayMs(run, rule), 500, 'another failure 10 s later continues it')
  run = afterFailure(run, 150_000, rule, false)
  t.equal(relaunchDelayMs(run, rule), 250, 'the others stayed healthy 70 s since: afresh')
  t.equal(run.healthySince, undefined, 'and nothing is healthy now')
  t.equal(relaunchDelayMs(afterFailure(run, 10_000_000, rule, false), rule), 500, 'time alone with nothing healthy does not end a run')
})

t.test('an instance that passes one check and hangs (killed after its liveness failures, past the window) does not end the run: the stretch ended when it stopped being healthy', async (t) => {
  let run = NO_FAILURES
  let now = 0
  const waits: number[] = []
  for (let i = 0; i < 4; i++) {
    now += relaunchDelayMs(run, rule) + 200
    run = afterHealthy(run, now) // one passing check…
    now += 1000
    run = afterNoneHealthy(run) // …then it hangs: no instance healthy
    now += 100_000 // killed 100 s later, more than the 60 s window
    run = afterFailure(run, now, rule, false)
    waits.push(relaunchDelayMs(run, rule))
  }
  t.same(waits, [250, 500, 1000, 2000])
  t.equal(afterNoneHealthy(NO_FAILURES), NO_FAILURES, 'nothing to end: the same run')
})
