/** The local backend's health checks, against real sockets on 127.0.0.1. */
import t, { type Test } from 'tap'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { HealthProber } from '../../src/backends/local/health-probe.ts'

async function listen(t: Test, server: Server): Promise<string> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    server.closeAllConnections()
    server.close()
  })
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`
}

t.test('checks of one instance made at once share one connection: health checks never open more than one to an instance', async (t) => {
  let connections = 0
  const server = createServer((_req, res) => setTimeout(() => res.end('ok'), 20))
  server.on('connection', () => (connections += 1))
  const url = await listen(t, server)
  const prober = new HealthProber(4000)
  t.teardown(() => prober.close())
  const results = await Promise.all(Array.from({ length: 5 }, () => prober.probe({ url: `${url}/status`, authorization: undefined })))
  t.same(results.map((r) => r.ok), [true, true, true, true, true], 'every check answered')
  t.equal(connections, 1, 'over one connection')
  await prober.probe({ url: `${url}/status`, authorization: undefined })
  t.equal(connections, 1, 'kept for the next check')
})

t.test('an instance that closes the connection after each answer is checked again on a new one', async (t) => {
  let connections = 0
  const server = createServer((_req, res) => res.writeHead(200, { connection: 'close' }).end('ok'))
  server.on('connection', () => (connections += 1))
  const url = await listen(t, server)
  const prober = new HealthProber(4000)
  t.teardown(() => prober.close())
  for (let i = 0; i < 3; i += 1) t.equal((await prober.probe({ url: `${url}/status`, authorization: undefined })).ok, true, `check ${i + 1} passed`)
  t.equal(connections, 3, 'one connection per check')
})

t.test('a check reports what Waiter’s deployment errors need: refused, non-2xx with its status, sent authorization', async (t) => {
  let authorization: string | undefined
  const server = createServer((req, res) => {
    authorization = req.headers.authorization
    res.writeHead(401).end()
  })
  const url = await listen(t, server)
  const prober = new HealthProber(1000)
  t.teardown(() => prober.close())
  const unauthorized = await prober.probe({ url: `${url}/status`, authorization: 'Basic eDp5' })
  t.match(unauthorized, { ok: false, status: 401, connected: true, responded: true, timedOut: false, inconclusive: false })
  t.equal(authorization, 'Basic eDp5')
  const closed = createServer()
  const gone = await listen(t, closed)
  await new Promise<void>((resolve) => closed.close(() => resolve()))
  t.match(await prober.probe({ url: `${gone}/status`, authorization: undefined }), { ok: false, status: undefined, connected: false, responded: false })
})

t.test('an instance whose check hangs holds up no other instance’s check', async (t) => {
  const hung = createServer(() => undefined)
  const hungUrl = await listen(t, hung)
  const healthy = await listen(t, createServer((_req, res) => res.end('ok')))
  const prober = new HealthProber(2000)
  t.teardown(() => prober.close())
  const stuck = prober.probe({ url: `${hungUrl}/status`, authorization: undefined })
  const startedAt = Date.now()
  const answered = await prober.probe({ url: `${healthy}/status`, authorization: undefined })
  t.equal(answered.ok, true, 'the other instance checked')
  t.ok(Date.now() - startedAt < 1000, 'without waiting on the hung one')
  t.match(await stuck, { ok: false, timedOut: true }, 'the hung check times out by itself')
})
