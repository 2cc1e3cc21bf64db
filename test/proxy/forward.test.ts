/** Whose fault a failed forward is decides who pays: the client, the instance (ejection), or the router itself. */
import t from 'tap'
import { errors as undiciErrors } from 'undici'
import { classify } from '../../src/proxy/forward.ts'
import { MaitreError } from '../../src/errors.ts'

const withCode = (code: string, message = code): Error => Object.assign(new Error(message), { code })

t.test('the router out of descriptors or memory: a 503 of its own, the instance not charged', async (t) => {
  for (const code of ['EMFILE', 'ENFILE', 'ENOBUFS', 'ENOMEM']) {
    const { outcome, error } = classify(withCode(code), false)
    t.equal(outcome, 'generic-error', `${code}: no ejection`)
    t.match(error, { code: 'MAITRE_ROUTER_OVERLOADED', status: 503, headers: { 'retry-after': '1' } })
  }
})

t.test('what undici refuses to carry, and a body the client let go idle, are the client’s', async (t) => {
  const invalid = classify(new undiciErrors.InvalidArgumentError('invalid header value'), false)
  t.equal(invalid.outcome, 'client-error')
  t.match(invalid.error, { code: 'MAITRE_BAD_REQUEST', status: 400 })
  const unsupported = classify(new undiciErrors.NotSupportedError('expect header not supported'), false)
  t.equal(unsupported.outcome, 'client-error')
  const idle = new MaitreError('MAITRE_CLIENT_TIMEOUT', 'The request body sent nothing for 30000 ms')
  t.same(classify(idle, false), { outcome: 'client-error', error: idle })
})

t.test('the instance’s own failures are the instance’s', async (t) => {
  t.match(classify(withCode('ECONNREFUSED'), false), { outcome: 'instance-error', error: { code: 'MAITRE_UPSTREAM_CONNECT', status: 502 } })
  t.match(classify(withCode('UND_ERR_HEADERS_TIMEOUT'), false), { outcome: 'instance-error', error: { code: 'MAITRE_UPSTREAM_TIMEOUT', status: 504 } })
  t.match(classify(withCode('ECONNRESET'), false), { outcome: 'instance-error', error: { code: 'MAITRE_UPSTREAM', status: 502 } })
  t.match(classify(withCode('ECONNRESET'), true), { outcome: 'client-error' }, 'unless the client left first')
})

t.test('an instance at an IPv6 address (a pod IP in an IPv6 or dual-stack cluster) is reached over HTTP/1.1 and h2c, not refused as a bad URL', async (t) => {
  const { createServer } = await import('node:http')
  const { createServer: createH2cServer } = await import('node:http2')
  const { Forwarder } = await import('../../src/proxy/forward.ts')
  const listen = (server: import('node:net').Server): Promise<number> => new Promise((resolve) => server.listen(0, '::1', () => resolve((server.address() as import('node:net').AddressInfo).port)))
  const h1 = createServer((_req, res) => res.end('h1 on ::1'))
  const h2c = createH2cServer((_req, res) => res.end('h2c on ::1'))
  const ports = { http: await listen(h1), h2c: await listen(h2c) }
  const forwarder = new Forwarder({ connectTimeoutMs: 2000 })
  // The router's side: each request forwarded to the instance its path names.
  const front = createServer((req, res) => {
    const proto = req.url === '/h2c' ? 'h2c' : 'http'
    const instance = { id: `v6-${proto}`, host: '::1', port: ports[proto], proto, healthy: true, startedAt: 0 } as unknown as import('../../src/backends/backend.ts').Instance
    void forwarder.forward(req, res, { instance, headers: { host: 'v6.example' }, cid: 'c', socketTimeoutMs: 2000, streamingTimeoutMs: 2000, extraHeaders: undefined }).result.then((result) => {
      if (result.error !== undefined && !res.headersSent) res.writeHead(result.error.status).end(result.error.code)
    })
  })
  const frontPort = await new Promise<number>((resolve) => front.listen(0, '127.0.0.1', () => resolve((front.address() as import('node:net').AddressInfo).port)))
  t.teardown(async () => {
    await forwarder.close()
    for (const server of [front, h1, h2c]) server.close()
  })
  for (const path of ['/h1', '/h2c']) {
    const res = await fetch(`http://127.0.0.1:${frontPort}${path}`)
    t.equal(res.status, 200, `${path}: answered`)
    t.equal(await res.text(), `${path.slice(1)} on ::1`)
  }
})
