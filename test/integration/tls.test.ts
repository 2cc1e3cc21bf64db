/**
 * TLS on the router's port (server.tls): ALPN h2 and http/1.1, the data path and Waiter's API
 * over each, WebSockets over wss, and the configuration refusing what cannot work.
 */
import t from 'tap'
import { mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { connect as connectH2 } from 'node:http2'
import { Agent, request } from 'undici'
import { WebSocket } from 'ws'
import * as grpc from '@grpc/grpc-js'
import { echoOnce, grpcToken } from '../fixtures/grpc-service.ts'
import { kitchenToken, startRouter } from '../fixtures/router.ts'
import { createApp } from '../../src/app.ts'
import { selfSigned } from '../fixtures/protocols.ts'
import { DEFAULTS, withOverrides } from '../../src/config.ts'

t.test('over TLS: HTTP/1.1 and HTTP/2 (ALPN) reach the data path and the API; requests count as https; WebSockets as wss', async (t) => {
  const pem = selfSigned(t.testdir())
  const router = await startRouter(t, { 'server.tls.cert': pem.cert, 'server.tls.key': pem.key })
  const url = router.url.replace('http://', 'https://')
  const agent = new Agent({ connect: { ca: pem.ca }, allowH2: false })
  t.teardown(() => agent.close())
  const created = await request(`${url}/token`, { dispatcher: agent, method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: 'secure', ...kitchenToken({ 'https-redirect': true }) }) })
  t.equal(created.statusCode, 200, 'a token written over TLS')
  await created.body.dump()
  const one = await request(`${url}/request-info`, { dispatcher: agent, headers: { 'x-waiter-token': 'secure' } })
  t.equal(one.statusCode, 200, 'HTTP/1.1 over TLS; an https-redirect token serves it (it is https)')
  const seen = (await one.body.json()) as { headers: Record<string, string> }
  t.equal(seen.headers['x-forwarded-proto'], 'https', 'the instance hears it was https')

  const session = connectH2(url, { ca: pem.ca })
  t.teardown(() => session.close())
  const answer = await new Promise<{ status: number; body: string; protocol: string | undefined }>((resolve, reject) => {
    const stream = session.request({ ':path': '/request-info', 'x-waiter-token': 'secure' })
    let status = 0
    let body = ''
    stream.on('response', (h) => (status = Number(h[':status'])))
    stream.on('data', (c: Buffer) => (body += c.toString()))
    stream.on('end', () => resolve({ status, body, protocol: session.alpnProtocol }))
    stream.on('error', reject)
    stream.end()
  })
  t.equal(answer.status, 200)
  t.equal(answer.protocol, 'h2', 'ALPN agreed on h2')
  t.equal(JSON.parse(answer.body).headers['x-forwarded-proto'], 'https')
  const api = await new Promise<number>((resolve, reject) => {
    const stream = session.request({ ':path': '/token?token=secure', accept: 'application/json' })
    stream.on('response', (h) => resolve(Number(h[':status'])))
    stream.on('error', reject)
    stream.resume()
    stream.end()
  })
  t.equal(api, 200, 'Waiter’s API over h2 with TLS')
  const connectStatus = await new Promise<number>((resolve, reject) => {
    const stream = session.request({ ':method': 'CONNECT', ':authority': 'example.com:443' })
    stream.on('response', (h) => resolve(Number(h[':status'])))
    stream.on('error', reject)
    stream.resume()
  })
  t.equal(connectStatus, 400, 'CONNECT over h2 with TLS: a 400, and the router lives on')

  const ws = new WebSocket(`${url.replace('https://', 'wss://')}/`, { headers: { 'x-waiter-token': 'secure' }, ca: pem.ca })
  await new Promise((resolve, reject) => {
    ws.once('open', resolve)
    ws.once('error', reject)
  })
  const echoed = new Promise<string>((resolve) => ws.once('message', (d) => resolve(d.toString())))
  ws.send('over wss')
  t.equal(await echoed, 'over wss', 'a WebSocket over TLS')
  ws.close()

  // gRPC over TLS (h2 by ALPN), to an h2c instance.
  const grpcCreated = await request(`${url}/token`, { dispatcher: agent, method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: 'grpc', ...grpcToken() }) })
  t.equal(grpcCreated.statusCode, 200)
  await grpcCreated.body.dump()
  const echoedOverTls = await echoOnce(new URL(url).host, grpc.credentials.createSsl(pem.ca), 'grpc', 'secure call')
  t.equal(echoedOverTls, 'secure call', 'a gRPC call over TLS')

  const plain = await request(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'secure' } }).catch((err: Error) => err)
  t.ok(plain instanceof Error, 'cleartext is not spoken on a TLS port')
})

t.test('server.tls: both files or neither; unreadable or mismatched files stop the router at start', async (t) => {
  const dir = t.testdir()
  const pem = selfSigned(dir)
  t.throws(() => withOverrides(DEFAULTS, { 'server.tls.cert': pem.cert }), { code: 'MAITRE_INVALID_CONFIG', message: /server\.tls\.key is required with the other/ })
  const otherDir = join(dir, 'other')
  mkdirSync(otherDir)
  const other = selfSigned(otherDir)
  const missing = withOverrides(DEFAULTS, { 'server.tls.cert': join(dir, 'nope.pem'), 'server.tls.key': pem.key, dataDir: join(dir, 'data'), 'server.port': 0, 'log.level': 'silent' })
  await t.rejects(createApp(missing), { code: 'MAITRE_INVALID_CONFIG', message: /Cannot read server\.tls\.cert/ })
  const mismatched = withOverrides(DEFAULTS, { 'server.tls.cert': pem.cert, 'server.tls.key': other.key, dataDir: join(dir, 'data2'), 'server.port': 0, 'log.level': 'silent' })
  await t.rejects(createApp(mismatched), { code: 'MAITRE_INVALID_CONFIG', message: /not a usable certificate and key/ })
})
