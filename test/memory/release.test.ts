// The memory a burst left behind goes back to the system once traffic is quiet: the rule
// (release-decision.ts), its loop on a manual clock (release.ts), and V8's collection for real.
import t from 'tap'
import { released, startWatch, watchRelease, type ReleaseRule } from '../../src/memory/release-decision.ts'
import { collectForRelease, readEveryMs, startMemoryRelease, type Release } from '../../src/memory/release.ts'
import { ManualClock } from '../fixtures/manual-clock.ts'
import { capturedLog } from '../fixtures/captured-log.ts'

const MB = 1024 * 1024

const RULE: ReleaseRule = { quietMs: 10_000, growthBytes: 32 * MB }

t.test('the rule: quiet for quietMs and grown by growthBytes, then once per growth', async (t) => {
  let watch = startWatch({ now: 0, requests: 0, rss: 100 * MB })
  const step = (now: number, requests: number, rssMb: number): boolean => {
    const decided = watchRelease(watch, { now, requests, rss: rssMb * MB }, RULE)
    watch = decided.watch
    return decided.release
  }
  t.equal(step(5_000, 500, 180), false, 'traffic: no release')
  t.equal(step(14_000, 900, 220), false, 'still traffic')
  t.equal(step(20_000, 900, 220), false, 'quiet for 6 s only')
  t.equal(step(23_999, 900, 220), false, 'a millisecond short of the quiet spell')
  t.equal(step(24_000, 900, 220), true, 'quiet 10 s and 120 MB over the baseline: release')
  watch = released(watch, 190 * MB)
  t.equal(step(30_000, 900, 190), false, 'released: the baseline is what was left, so no second release')
  t.equal(step(90_000, 900, 200), false, 'idle and grown by less than growthBytes: none')
  t.equal(step(92_500, 900, 400), false, 'grown back by 210 MB in the same quiet spell (a stream, a WebSocket): still none')
  t.equal(step(95_000, 901, 260), false, 'one new request restarts the quiet spell')
  t.equal(step(104_999, 901, 260), false, 'not yet quiet again')
  t.equal(step(105_000, 901, 260), true, 'quiet again, and grown by 70 MB over what the last release left')
})

t.test('the rule: the baseline follows the RSS down, so growth is measured from the lowest point', async (t) => {
  let watch = startWatch({ now: 0, requests: 0, rss: 150 * MB })
  let decided = watchRelease(watch, { now: 1_000, requests: 0, rss: 110 * MB }, RULE)
  watch = decided.watch
  t.equal(watch.baselineRss, 110 * MB)
  decided = watchRelease(watch, { now: 20_000, requests: 0, rss: 141 * MB }, RULE)
  t.equal(decided.release, false, '31 MB over the lowest reading: under the 32 MB of growth')
  decided = watchRelease(decided.watch, { now: 21_000, requests: 0, rss: 142 * MB }, RULE)
  t.equal(decided.release, true, '32 MB over it: release')
})

t.test('the loop: collects once when traffic stops, never during it, and stops', async (t) => {
  const clock = new ManualClock(0)
  let requests = 0
  let rss = 120 * MB
  const collections: number[] = []
  const releases: Release[] = []
  const release = startMemoryRelease({
    ...RULE,
    requests: () => requests,
    clock,
    log: capturedLog().log,
    rss: () => rss,
    collect: () => {
      collections.push(clock.now())
      rss = 125 * MB
    },
    onRelease: (r) => releases.push(r),
  })
  t.equal(readEveryMs(RULE.quietMs), 2_500, 'read four times per quiet spell')
  // A minute of traffic that grows the RSS to 300 MB.
  for (let s = 1; s <= 60; s++) {
    requests += 1000
    rss = Math.min(300 * MB, rss + 5 * MB)
    clock.advance(1_000)
  }
  t.same(collections, [], 'no collection while requests keep coming')
  clock.advance(9_000)
  t.same(collections, [], 'traffic stopped 9 s ago: not yet')
  clock.advance(3_000)
  t.equal(collections.length, 1, 'one collection within a read interval of the quiet spell')
  t.same(releases, [{ rssBefore: 300 * MB, rssAfter: 125 * MB, pauseMs: releases[0]?.pauseMs }], 'told what it freed')
  clock.advance(600_000)
  t.equal(collections.length, 1, 'ten idle minutes: no second collection')
  rss = 320 * MB
  clock.advance(60_000)
  t.equal(collections.length, 1, 'the RSS grew back while nothing began (a long stream): one pause per quiet spell')
  requests += 1
  clock.advance(12_500)
  t.equal(collections.length, 2, 'a request began, then quiet again: the next spell has its release')
  release.stop()
  requests += 1
  clock.advance(1_000)
  rss = 400 * MB
  clock.advance(600_000)
  t.equal(collections.length, 2, 'stopped: nothing more')
})

t.test("V8's last-resort collection hands freed heap pages back to the system", async (t) => {
  // Garbage the size of a burst's: 60 MB of small objects, dropped. (A plain full collection
  // would free them too but keep their pages resident in V8's pool: the RSS would not fall.)
  let garbage: object[][] = []
  for (let i = 0; i < 30; i++) garbage.push(Array.from({ length: 40_000 }, (_, j) => ({ j, s: `x${j}` })))
  const rssFull = process.memoryUsage.rss()
  garbage = []
  t.equal(garbage.length, 0)
  collectForRelease()
  const rssAfter = process.memoryUsage.rss()
  t.ok(rssAfter < rssFull - 40 * MB, `the RSS fell from ${Math.round(rssFull / MB)} to ${Math.round(rssAfter / MB)} MB`)
  t.equal(typeof (globalThis as { gc?: unknown }).gc, 'undefined', 'gc() stays off the global object')
})

t.test('the loop: a failed RSS reading skips a turn, a failed collection turns it off; neither throws', async (t) => {
  const clock = new ManualClock(0)
  const { log, lines } = capturedLog()
  let rssFails = true
  let rss = 300 * MB
  let collections = 0
  let collectFails = false
  const release = startMemoryRelease({
    quietMs: 1_000,
    growthBytes: MB,
    requests: () => 0,
    clock,
    log,
    rss: () => {
      if (rssFails) throw Object.assign(new Error('EMFILE: too many open files, uv_resident_set_memory'), { code: 'EMFILE' })
      return rss
    },
    collect: () => {
      collections += 1
      if (collectFails) throw new Error('no gc here')
    },
  })
  t.teardown(() => release.stop())
  t.doesNotThrow(() => clock.advance(5_000), 'readings that throw never reach the timer')
  t.equal(collections, 0, 'nothing decided without a reading')
  rssFails = false
  clock.advance(1_000)
  rss = 350 * MB
  clock.advance(1_500)
  t.equal(collections, 1, 'readings back: the first one is the baseline, growth past it is released')
  await new Promise((r) => setImmediate(r))
  t.equal(lines.filter((l) => /reading the RSS failed/.test(String(l['msg']))).length, 1, 'one warning for the failed readings')
  t.ok(lines.some((l) => l['msg'] === 'traffic quiet: memory handed back to the system'), 'and a line for the release')
})

t.test('the loop: a collection that throws turns the release off with one warning', async (t) => {
  const clock = new ManualClock(0)
  const { log, lines } = capturedLog()
  let requests = 0
  let rss = 100 * MB
  let collections = 0
  const release = startMemoryRelease({
    quietMs: 1_000,
    growthBytes: MB,
    requests: () => requests,
    clock,
    log,
    rss: () => rss,
    collect: () => {
      collections += 1
      throw new Error('this runtime gives no V8 gc() to call')
    },
  })
  t.teardown(() => release.stop())
  rss = 200 * MB
  t.doesNotThrow(() => clock.advance(1_500))
  t.equal(collections, 1, 'tried once')
  for (let i = 0; i < 5; i++) {
    requests += 1
    rss += 50 * MB
    clock.advance(2_000)
  }
  t.equal(collections, 1, 'never again')
  await new Promise((r) => setImmediate(r))
  t.equal(lines.filter((l) => l['msg'] === 'memory release turned off: the collection failed').length, 1, 'one warning')
})
