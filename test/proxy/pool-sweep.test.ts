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
  const forwarder = new Forwarder({ connectTimeoutMs: 2000, poolSweepMs: 20 })
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
  const before = queryObjects(Pool, { format: 'count' })
  for (let i = 0; i < instances.length; i++) {
    const res = await fetch(`http://127.0.0.1:${frontPort}/`, { headers: { connection: 'close' } })
    t.equal(await res.text(), 'ok', `instance ${i} answered`)
  }
  // The sweep closes a pool unused for a whole period; the instances stay referenced (above).
  let live = Infinity
  for (let i = 0; i < 200 && live > before; i++) {
    await new Promise((resolve) => setImmediate(resolve))
    await new Promise((resolve) => setTimeout(resolve, 10))
    live = queryObjects(Pool, { format: 'count' })
  }
  t.equal(live, before, 'every idle pool collected, none held through its instance')
  const again = await fetch(`http://127.0.0.1:${frontPort}/`)
  t.equal(await again.text(), 'ok', 'an instance whose pool was let go is reached again through a new one')
  t.equal(instances.length, 3)
})
