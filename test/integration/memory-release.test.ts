/**
 * A real router hands back the memory a burst left behind once the traffic is over: never while
 * requests keep coming, once after they stop, and it says so in its log and its metrics.
 */
import t from 'tap'
import { Agent, request } from 'undici'
import { createToken, kitchenToken, waitFor } from '../fixtures/router.ts'
import { startRouterProcess } from '../fixtures/router-process.ts'
import { readFileSync } from 'node:fs'

const rssMb = (pid: number): number => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]) / 1024

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

  const rssAtEnd = rssMb(router.child.pid as number)
  const after = await waitFor('a release after the burst', () => releases().find((l) => (l['time'] as number) >= endedAt), 10_000)
  const rssAfter = rssMb(router.child.pid as number)
  t.ok(rssAfter < rssAtEnd, `the router's RSS (/proc) fell from ${rssAtEnd.toFixed(0)} MB as the burst ended to ${rssAfter.toFixed(0)} MB`)
  // When the last request began, by the access log (its line's time less its total).
  const lastBegan = Math.max(...router.lines.filter((l) => l['msg'] === 'request completed').map((l) => (l['time'] as number) - (l['totalMs'] as number)))
  t.ok((after['time'] as number) - (after['pauseMs'] as number) - lastBegan >= QUIET_MS - 5, 'the collection began a quiet spell after the last request began')

  const metrics = await (await fetch(`${router.url}/metrics`)).text()
  const count = Number(/^maitre_memory_releases_total (\d+)/m.exec(metrics)?.[1])
  t.equal(count, releases().length, 'maitre_memory_releases_total counts them')
  t.ok(Number(/^maitre_memory_released_bytes_total (\d+)/m.exec(metrics)?.[1]) > 0, 'and the bytes handed back')
})
