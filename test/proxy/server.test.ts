/** The listener's safety net: a handler that fails unexpectedly answers 500 once, is logged with its cid, and the router stays up. */
import t from 'tap'
import { request } from 'undici'
import { connect } from 'node:http2'
import { connect as netConnect } from 'node:net'
import { capturedLog } from '../fixtures/captured-log.ts'
import { waitFor } from '../fixtures/router.ts'
import { createRouterServer } from '../../src/proxy/server.ts'

/** The listener's limits both tests use. */
const LISTENER = {
  maxHeaderBytes: 16384,
  keepAliveTimeoutMs: 5000,
  headersTimeoutMs: 5000,
  bodyIdleTimeoutMs: 30_000,
  maxHeaders: 128,
  maxConnections: 0,
  maxConnectionsPerClient: 0,
  maxRequestsPerConnection: 16,
  routerHostnames: new Set(['127.0.0.1']),
}

t.test('a handler that rejects: one 500 with its cid, an error line with the same cid, and the router serves on', async (t) => {
  const { log, lines } = capturedLog()
  let calls = 0
  const server = createRouterServer({
    ...LISTENER,
    api: async (_req, res) => void res.end('api'),
    proxy: async (req, res) => {
      calls += 1
      if (req.url === '/late') {
        res.writeHead(200)
        res.write('half')
      }
      if (req.url !== '/fine') {
        const err = new TypeError('Cannot read properties of undefined (reading "x") at /srv/maitre/src/secret.ts:12') as TypeError & { code: string }
        err.code = 'ERR_INVALID_ARG_TYPE' // a Node-style code: must not be taken for one of ours
        throw err
      }
      res.end('fine')
    },
    log,
  })
  const port = await server.listen(0, '127.0.0.1')
  t.teardown(() => server.drain(0))
  const url = `http://127.0.0.1:${port}`
  const failed = await request(`${url}/boom`, { headers: { 'x-waiter-token': 'x', 'x-cid': 'net-1', accept: 'application/json' } })
  const body = (await failed.body.json()) as { 'waiter-error': { code: string; message: string; cid: string } }
  t.equal(failed.statusCode, 500)
  t.equal(body['waiter-error'].code, 'MAITRE_INTERNAL', 'classified by type, not by its code property')
  t.equal(body['waiter-error'].cid, 'net-1')
  t.notMatch(body['waiter-error'].message, /secret\.ts|reading/, 'the cause is not told to the caller')
  const line = lines.find((l) => l['cid'] === 'net-1')
  t.match(line, { level: 50, msg: 'request handler failed unexpectedly' }, 'an error line with the same cid')
  t.match((line?.['err'] as { message: string }).message, /reading "x"/, 'which holds the cause')

  await t.rejects(request(`${url}/late`, { headers: { 'x-waiter-token': 'x' } }).then((r) => r.body.text()), 'a failure after the answer started cuts it, never a second answer')
  const fine = await request(`${url}/fine`, { headers: { 'x-waiter-token': 'x' } })
  t.equal(await fine.body.text(), 'fine', 'the router serves on')
  t.equal(calls, 3)
})

t.test("proxiedRequests counts the data path's requests and WebSockets, over HTTP/1.1 and HTTP/2, never the router's own API", async (t) => {
  const { log } = capturedLog()
  let upgrades = 0
  const server = createRouterServer({
    ...LISTENER,
    api: async (_req, res) => void res.end('api'),
    proxy: async (_req, res) => void res.end('proxied'),
    websocket: {
      handle(_req, socket) {
        upgrades += 1
        socket.end('HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n')
      },
      closeAll() {},
    },
    log,
  })
  const port = await server.listen(0, '127.0.0.1')
  t.teardown(() => server.drain(0))
  const url = `http://127.0.0.1:${port}`
  t.equal(server.proxiedRequests(), 0)
  for (const path of ['/status', '/metrics', '/token?token=x']) await (await request(`${url}${path}`)).body.text()
  t.equal(server.proxiedRequests(), 0, 'probes, scrapes and API calls are not traffic')
  t.equal(await (await request(`${url}/any`, { headers: { 'x-waiter-token': 'x' } })).body.text(), 'proxied')
  t.equal(server.proxiedRequests(), 1, 'an HTTP/1.1 request to a service')

  const session = connect(url)
  t.teardown(() => session.close())
  const h2Body = await new Promise<string>((resolve, reject) => {
    const stream = session.request({ ':path': '/any', 'x-waiter-token': 'x' })
    let body = ''
    stream.on('data', (chunk: Buffer) => (body += chunk.toString()))
    stream.on('end', () => resolve(body))
    stream.on('error', reject)
    stream.end()
  })
  t.equal(h2Body, 'proxied')
  t.equal(server.proxiedRequests(), 2, 'an HTTP/2 stream to a service')

  const answer = await new Promise<string>((resolve, reject) => {
    const socket = netConnect(port, '127.0.0.1', () => {
      socket.write('GET /socket HTTP/1.1\r\nhost: 127.0.0.1\r\nx-waiter-token: x\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n')
    })
    let got = ''
    socket.on('data', (chunk: Buffer) => (got += chunk.toString()))
    socket.on('end', () => resolve(got))
    socket.on('error', reject)
  })
  t.match(answer, /^HTTP\/1.1 400/, "the relay's answer")
  t.equal(upgrades, 1, 'the WebSocket upgrade reached the relay')
  t.equal(server.proxiedRequests(), 3, 'and counts as traffic')
})

t.test('refusals at a connection limit held back within the warning interval are told at its end, even with no refusal after them, and at a drain', async (t) => {
  const { log, lines } = capturedLog()
  const server = createRouterServer({ ...LISTENER, maxConnections: 1, refusalLogMs: 1000, api: async (_req, res) => void res.end('api'), proxy: async (_req, res) => void res.end('ok'), log })
  const port = await server.listen(0, '127.0.0.1')
  let drained = false
  t.teardown(() => (drained ? undefined : server.drain(0)))
  const open = (): Promise<{ closed: Promise<void> }> =>
    new Promise((resolve, reject) => {
      const socket = netConnect(port, '127.0.0.1', () => resolve({ closed: new Promise<void>((done) => socket.on('close', () => done())) }))
      socket.on('error', reject)
      socket.on('data', () => undefined)
      t.teardown(() => socket.destroy())
    })
  await open() // holds the one connection allowed
  const refused = async (n: number): Promise<void> => {
    for (let i = 0; i < n; i++) await (await open()).closed
  }
  const warnings = (): Record<string, unknown>[] => lines.filter((l) => l['msg'] === 'connections refused at a connection limit')
  await refused(4)
  t.match(warnings(), [{ refused: { connections: 1 }, limit: 'connections', max: 1 }], 'the first refusal is told at once, the next three held back')
  const trailing = await waitFor('the warning for the refusals held back', () => warnings()[1], 5000)
  t.match(trailing, { refused: { connections: 3 } }, 'the three held back are told when the interval ends, with no fourth refusal to carry them')
  await refused(2)
  t.equal(warnings().length, 2, 'two more within the interval of that warning are held back')
  drained = true
  await server.drain(0)
  t.match(warnings()[2], { refused: { connections: 2 } }, 'and told at the drain rather than lost with the process')
  t.equal(warnings().length, 3)
})

t.test('the largest header limits the configuration allows are ones HTTP/2 takes as its settings: a router at them serves HTTP/2 as HTTP/1.1', async (t) => {
  const { log } = capturedLog()
  const server = createRouterServer({ ...LISTENER, maxHeaderBytes: 1024 * 1024, maxHeaders: 4096, api: async (_req, res) => void res.end('api'), proxy: async (_req, res) => void res.end('ok'), log })
  const port = await server.listen(0, '127.0.0.1')
  t.teardown(() => server.drain(0))
  const session = connect(`http://127.0.0.1:${port}`)
  t.teardown(() => session.close())
  const status = await new Promise<number>((resolve, reject) => {
    const stream = session.request({ ':path': '/x', 'x-waiter-token': 'x' })
    stream.on('response', (h) => resolve(Number(h[':status'])))
    stream.on('error', reject)
    stream.resume()
  })
  t.equal(status, 200)
})

t.test('a drain closes a connection that has sent nothing yet (a preconnect, a load balancer’s warm pool) at once, rather than wait its whole bound for it', async (t) => {
  const { log, lines } = capturedLog()
  const server = createRouterServer({ ...LISTENER, headersTimeoutMs: 60_000, api: async (_req, res) => void res.end('api'), proxy: async (_req, res) => void res.end('ok'), log })
  const port = await server.listen(0, '127.0.0.1')
  const silent = netConnect(port, '127.0.0.1')
  silent.on('error', () => undefined)
  t.teardown(() => silent.destroy())
  await new Promise<void>((resolve) => silent.once('connect', () => resolve()))
  const closed = new Promise<void>((resolve) => silent.once('close', () => resolve()))
  const began = Date.now()
  await server.drain(10_000)
  const took = Date.now() - began
  await closed
  t.ok(took < 5000, `the drain took ${took} ms, not its 10 s bound`)
  t.notOk(lines.some((l) => l['msg'] === 'drain timed out; cutting the requests left'), 'and says nothing of requests it cut: there were none')
})
