/**
 * A real router hands back the memory a burst left behind once the traffic is over: never while
 * requests keep coming, once after they stop, and it says so in its log and its metrics.
 */
import t from 'tap'
import { Agent, request } from 'undici'
import { createToken, kitchenToken, waitFor } from '../fixtures/router.ts'
import { startRouterProcess } from '../fixtures/router-process.ts'

const QUIET_MS = 1500

t.test('after a burst, one collection hands memory back; none during the burst', async (t) => {
  const router = await startRouterProcess(t, { server: { memoryRelease: { quietMs: QUIET_MS, growthMb: 1 } } })
  await createToken(router, 'kitchen', kitchenToken({ 'concurrency-level': 50 }))
  const headers = { 'x-waiter-token': 'kitchen' }
  const releases = () => router.lines.filter((l) => l['msg'] === 'traffic quiet: memory handed back to the system')

  // The burst: 20 connections back to back for 3 000 requests, none of them ever QUIET_MS apart,
  // on a warm instance (a cold start longer than QUIET_MS is a quiet spell of its own).
  const agent = new Agent({ connections: 20 })
  t.teardown(() => agent.close())
  const warm = await request(`${router.url}/request-info`, { dispatcher: agent, headers })
  await warm.body.text()
  t.equal(warm.statusCode, 200, 'the instance is up')
  let sent = 0
  let ok = 0
  const startedAt = Date.now()
  await Promise.all(Array.from({ length: 20 }, async () => {
    while (sent < 3000) {
      sent++
      const res = await request(`${router.url}/request-info?pad=${'x'.repeat(2000)}`, { dispatcher: agent, headers })
      await res.body.text()
      if (res.statusCode === 200) ok++
    }
  }))
  const endedAt = Date.now()
  t.equal(ok, 3000, 'every request of the burst answered')
  // A log line's time is the collection's end: one that began after the burst's start.
  const during = releases().filter((l) => (l['time'] as number) - (l['pauseMs'] as number) >= startedAt && (l['time'] as number) < endedAt)
  t.same(during, [], 'no collection while the burst ran')

  const after = await waitFor('a release after the burst', () => releases().find((l) => (l['time'] as number) >= endedAt), 10_000)
  t.ok((after['rssAfterMb'] as number) < (after['rssBeforeMb'] as number), `the RSS fell from ${String(after['rssBeforeMb'])} to ${String(after['rssAfterMb'])} MB`)
  t.ok((after['time'] as number) - endedAt >= QUIET_MS, 'not before the quiet spell was over')

  const metrics = await (await fetch(`${router.url}/metrics`)).text()
  const count = Number(/^maitre_memory_releases_total (\d+)/m.exec(metrics)?.[1])
  t.equal(count, releases().length, 'maitre_memory_releases_total counts them')
  t.ok(Number(/^maitre_memory_released_bytes_total (\d+)/m.exec(metrics)?.[1]) > 0, 'and the bytes handed back')
})
