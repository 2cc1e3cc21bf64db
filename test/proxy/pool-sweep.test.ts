/**
 * The forwarder's pools of idle instances: the sweep closes them, and nothing keeps them after.
 * On its own in this file, so that the count of live undici Pools is this test's alone.
 */
import t from 'tap'
t.test('the pool of an instance left idle is let go by the sweep though the instance lives on (16 KB of queue each, ×1,000 idle versions)', async (t) => {
  const { createServer } = await import('node:http')
  const { queryObjects } = await import('node:v8')
  const { Pool } = await import('undici')
  const { Forwarder } = await import('../../src/proxy/forward.ts')
  const upstreams = [0, 1, 2].map(() => createServer((_req, res) => res.end('ok')))
  const ports = await Promise.all(upstreams.map((upstream) => new Promise<number>((resolve) => upstream.listen(0, '127.0.0.1', () => resolve((upstream.address() as import('node:net').AddressInfo).port)))))
  // No sweep of its own: the test runs it, so nothing here waits on a timer.
  const forwarder = new Forwarder({ connectTimeoutMs: 2000, poolSweepMs: 0 })
  // Three instances the tracker would still hold (healthy, idle), each its own origin.
  const instances = ports.map((port, i) => ({ id: `idle-${i}`, host: '127.0.0.1', port, proto: 'http', healthy: true, startedAt: 0 }) as unknown as import('../../src/backends/backend.ts').Instance)
  let next = 0
  const front = createServer((req, res) => {
    const instance = instances[next++ % instances.length] as import('../../src/backends/backend.ts').Instance
    void forwarder.forward(req, res, { instance, headers: { host: 'idle.example' }, cid: 'c', socketTimeoutMs: 2000, streamingTimeoutMs: 2000, extraHeaders: undefined }).result.then((result) => {
      if (result.error !== undefined && !res.headersSent) res.writeHead(result.error.status).end(result.error.code)
    })
  })
  const frontPort = await new Promise<number>((resolve) => front.listen(0, '127.0.0.1', () => resolve((front.address() as import('node:net').AddressInfo).port)))
  t.teardown(async () => {
    await forwarder.close()
    front.close()
    for (const upstream of upstreams) upstream.close()
  })
  // (Node's own fetch has its own copy of undici: its pools are not this Pool.)
  const livePools = (): number => queryObjects(Pool, { format: 'count' })
  const before = livePools()
  for (let i = 0; i < instances.length; i++) {
    const res = await fetch(`http://127.0.0.1:${frontPort}/`, { headers: { connection: 'close' } })
    t.equal(await res.text(), 'ok', `instance ${i} answered`)
  }
  t.equal(livePools(), before + instances.length, 'a pool per instance while in use')
  forwarder.sweepUnusedPools() // each used since the last sweep: kept
  t.equal(livePools(), before + instances.length, 'a pool used in the last period is kept')
  forwarder.sweepUnusedPools() // a whole period unused: closed
  // Closing lets go of the connections' last callbacks over a few turns; then nothing holds them.
  const deadline = Date.now() + 10_000
  let live = livePools()
  while (live > before && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 20))
    live = livePools()
  }
  t.equal(live, before, 'every idle pool collected, none held through its instance (which the tracker still holds)')
  const again = await fetch(`http://127.0.0.1:${frontPort}/`)
  t.equal(await again.text(), 'ok', 'an instance whose pool was let go is reached again through a new one')
  t.equal(livePools(), before + 1, 'through one new pool')
})
