/**
 * Hostile clients and bad input against a real router: every refusal a clear 4xx aimed at the
 * caller who earned it, every resource bounded, and nobody else hurt.
 */
import t from 'tap'
import { existsSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { PassThrough } from 'node:stream'
import { createLogger } from '../../src/log.ts'
import { call, createToken, kitchenToken, startRouter, waitFor, type Router } from '../fixtures/router.ts'
import { raw, statusOf } from '../fixtures/raw-http.ts'

type WaiterError = { 'waiter-error': { code: string; message: string; details: Record<string, unknown> } }

interface Slots {
  readonly slots: { id: string; used: number; ejectedUntil: number }[]
  readonly 'request-metrics': { outstanding: number; queued: number; 'in-flight': number }
}

async function warm(router: Router, token: string, extra: Record<string, unknown> = {}): Promise<string> {
  await createToken(router, token, kitchenToken(extra))
  const h = { 'x-waiter-token': token }
  t.equal((await call(`${router.url}/request-info`, { headers: h })).status, 200)
  return (await call(`${router.url}/service-id`, { headers: h })).text
}

async function appOf(router: Router, id: string): Promise<Slots> {
  return (await call(`${router.url}/apps/${id}`)).json<Slots>()
}

t.test('requests the forwarder cannot carry are the client’s 400, and eject nobody', async (t) => {
  const router = await startRouter(t)
  const id = await warm(router, 'web')
  const { port } = new URL(router.url)
  for (const [what, line] of [
    ['OPTIONS *', 'OPTIONS * HTTP/1.1'],
    ['an absolute-form target', `GET http://127.0.0.1:${port}/request-info HTTP/1.1`],
    ['CONNECT', `CONNECT 127.0.0.1:${port} HTTP/1.1`],
  ] as const) {
    const exchange = await raw(router.url, `${line}\r\nhost: 127.0.0.1\r\nx-waiter-token: web\r\nconnection: close\r\n\r\n`)
    const answer = await exchange.closed
    t.equal(statusOf(answer), 400, `${what}: 400`)
  }
  t.ok((await appOf(router, id)).slots.every((s) => s.ejectedUntil === 0), 'no instance was ejected')
  t.equal((await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'web' } })).status, 200, 'and the service serves on')
})

t.test('a client that makes the only instance answer 503 cannot take it out of rotation', async (t) => {
  const router = await startRouter(t)
  const id = await warm(router, 'solo')
  for (let i = 0; i < 5; i++) {
    const busy = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'solo', 'x-kitchen-act-busy': 'true' } })
    t.equal(busy.status, 503, 'the app’s own 503 reaches its caller')
  }
  t.ok((await appOf(router, id)).slots.every((s) => s.ejectedUntil === 0), 'the only instance stays in rotation')
  const other = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'solo', 'x-waiter-queue-timeout': '1000' } })
  t.equal(other.status, 200, 'another client is served at once')
})

t.test('the token store takes only what it can always read back', async (t) => {
  const router = await startRouter(t)
  let deep: unknown = 'bottom'
  for (let i = 0; i < 4000; i++) deep = { m: deep }
  const nested = await call(`${router.url}/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: 'deep', ...kitchenToken(), maintenance: deep }) })
  t.equal(nested.status, 400, 'a token nested 4,000 levels deep is refused')
  t.match(nested.json<WaiterError>()['waiter-error'], { details: { limit: 'json-depth', max: 32 } }, 'naming the limit')
  t.equal((await call(`${router.url}/token?token=deep`)).status, 404, 'and nothing was stored')
  t.notOk(existsSync(join(router.dataDir, 'tokens', 'deep.json')))

  const big = await call(`${router.url}/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: 'big', ...kitchenToken(), metadata: { x: 'y'.repeat(300 * 1024) } }) })
  t.equal(big.status, 413, 'a body over 256 KiB is refused')
  t.equal(big.headers['connection'], 'close', 'and the connection closes: the rest of it is not read')

  const long = await call(`${router.url}/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: `t${'x'.repeat(200)}`, ...kitchenToken() }) })
  t.equal(long.status, 400, 'a name longer than the file system takes is refused')
  t.match(long.json<WaiterError>()['waiter-error'].message, /at most 200 characters/)

  await createToken(router, 'web.json.tmp-1-abcdef12', kitchenToken())
  const restarted = await startRouter(t, {}, { dataDir: router.dataDir })
  const back = await call(`${restarted.url}/token?token=web.json.tmp-1-abcdef12`)
  t.equal(back.status, 200, 'a token whose name looks like a temporary file survives a restart')
})

t.test('two updates racing with the same If-Match: one wins, the other is told it is stale', async (t) => {
  const router = await startRouter(t)
  const created = await createToken(router, 'contended', kitchenToken())
  const etag = created.headers['etag'] as string
  const update = (version: string) => call(`${router.url}/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'if-match': etag },
    body: JSON.stringify({ token: 'contended', ...kitchenToken({ version }) }),
  })
  const replies = await Promise.all([update('a'), update('b'), update('c')])
  t.same(replies.map((r) => r.status).sort(), [200, 412, 412])
})

t.test('malformed requests get a 4xx, never a 500, and never a second answer', async (t) => {
  const router = await startRouter(t, { 'server.maxHeaders': 20 })
  t.equal((await call(`${router.url}/apps/%E0%A4%A`)).status, 400, 'a malformed percent-escape')
  const headers: Record<string, string> = {}
  for (let i = 0; i < 25; i++) headers[`x-filler-${i}`] = 'x'
  const many = await call(`${router.url}/status`, { headers })
  t.equal(many.status, 431, 'more headers than server.maxHeaders')
  t.match(many.json<WaiterError>()['waiter-error'], { details: { limit: 'headers', 'max-headers': 20 } }, 'naming the limit')
  const nine = await raw(router.url, 'GET /status\r\n\r\n')
  t.equal(await nine.closed, '', 'HTTP/0.9 (no version, no status line to answer with) gets a close at once')
  // A valid request and, pipelined behind it, garbage: one answer, then the connection goes.
  await warm(router, 'piped')
  const piped = await raw(router.url, 'GET /sleep?sleep-ms=200 HTTP/1.1\r\nhost: 127.0.0.1\r\nx-waiter-token: piped\r\n\r\nBLAH\x00\x01 nonsense\r\n\r\n')
  const both = await piped.closed
  t.equal((both.match(/^HTTP\/1\.1 \d{3}/gm) ?? []).length <= 2, true, 'at most one answer per request')
  t.notMatch(both, /HTTP\/1\.1 200[\s\S]*HTTP\/1\.1 200/, 'no request is answered twice')
})

t.test('a body that stops sending gets 408 and frees its slot; so do headers that never end', async (t) => {
  const router = await startRouter(t, { 'server.bodyIdleTimeoutMs': 500, 'server.headersTimeoutMs': 1000 })
  const id = await warm(router, 'upload', { 'max-instances': 1 })
  const stalled = await raw(router.url, 'POST /request-info HTTP/1.1\r\nhost: 127.0.0.1\r\nx-waiter-token: upload\r\ncontent-length: 100\r\n\r\nonly some')
  await waitFor('the request to hold a slot', async () => ((await appOf(router, id))['request-metrics']['in-flight'] === 1 ? true : undefined))
  const answer = await stalled.closed
  t.equal(statusOf(answer), 408, 'the idle body is answered 408')
  t.match(answer, /The request body sent nothing for 500 ms/)
  await waitFor('its slot to be free', async () => ((await appOf(router, id))['request-metrics']['in-flight'] === 0 ? true : undefined))
  t.equal((await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'upload', 'x-waiter-queue-timeout': '1000' } })).status, 200, 'the next request gets the slot')

  const started = Date.now()
  const slow = await raw(router.url, 'GET /status HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow: ')
  const timedOut = await slow.closed
  t.equal(statusOf(timedOut), 408, 'headers that never end get 408')
  t.ok(Date.now() - started < 2500, `within a second of the 1 s deadline (${Date.now() - started} ms)`)
})

t.test('an aborted /waiter-ping leaves the queue at once', async (t) => {
  const router = await startRouter(t)
  const id = await warm(router, 'pinged', { 'max-instances': 1 })
  const sandbox = (await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'pinged', 'x-waiter-debug': 'true' } })).headers['x-waiter-backend-directory'] as string
  const busy = call(`${router.url}/wait-file?name=go`, { headers: { 'x-waiter-token': 'pinged' } })
  await waitFor('the only slot to be taken', async () => ((await appOf(router, id))['request-metrics']['in-flight'] === 1 ? true : undefined))
  const aborter = new AbortController()
  const ping = call(`${router.url}/waiter-ping`, { headers: { 'x-waiter-token': 'pinged' }, signal: aborter.signal }).catch(() => undefined)
  await waitFor('the ping to queue', async () => ((await appOf(router, id))['request-metrics'].queued === 1 ? true : undefined))
  aborter.abort()
  await ping
  await waitFor('the queue to empty', async () => ((await appOf(router, id))['request-metrics'].queued === 0 ? true : undefined), 2000)
  const { writeFileSync } = await import('node:fs')
  writeFileSync(join(sandbox, 'go'), '')
  t.equal((await busy).status, 200)
})

t.test('one client cannot take every connection: past its cap it is told so, and others are served', async (t) => {
  const router = await startRouter(t, { 'server.maxConnectionsPerClient': 50 })
  await warm(router, 'shared')
  // From an address of their own, so that only these count against the cap.
  const hogs = await Promise.all(Array.from({ length: 60 }, () => raw(router.url, undefined, '127.0.0.3')))
  t.teardown(() => hogs.forEach((h) => h.socket.destroy()))
  const refused = await waitFor('the connections past the cap to be refused', () => {
    const answered = hogs.filter((h) => statusOf(h.received()) === 503)
    return answered.length >= 10 ? answered : undefined
  })
  t.equal(refused.length, 10, 'exactly those past the cap of 50')
  t.match(refused[0]?.received(), /retry-after: 1[\s\S]*Too many connections: this client has 50 connections open/)
  const other = await raw(router.url, 'GET /request-info HTTP/1.1\r\nhost: 127.0.0.1\r\nx-waiter-token: shared\r\nconnection: close\r\n\r\n', '127.0.0.2')
  t.equal(statusOf(await other.closed), 200, 'a client from another address is served')
})

t.test('the data directory holds no stray temporaries after refused writes', async (t) => {
  const router = await startRouter(t)
  for (let i = 0; i < 5; i++) await call(`${router.url}/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: `t${'y'.repeat(250)}`, ...kitchenToken() }) })
  t.same(readdirSync(join(router.dataDir, 'tokens', '.tmp')), [])
})

t.test('a client that hangs up mid-body on the API costs no error line', async (t) => {
  const lines: Record<string, unknown>[] = []
  const out = new PassThrough()
  out.on('data', (chunk: Buffer) => {
    for (const line of chunk.toString().split('\n')) if (line !== '') lines.push(JSON.parse(line) as Record<string, unknown>)
  })
  const router = await startRouter(t, {}, { log: createLogger('info', out) })
  for (let i = 0; i < 20; i++) {
    const leaver = await raw(router.url, `POST /token HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\nx-cid: leaver-${i}\r\ncontent-length: 1000\r\n\r\n{"token": "half`)
    leaver.socket.destroy()
  }
  // Done with them when only the asking request is in flight and no leaver's connection is left.
  const state = await waitFor('the router to be done with every hang-up', async () => {
    const s = (await call(`${router.url}/state`)).json<{ 'in-flight-requests': number; 'open-connections': number }>()
    return s['in-flight-requests'] === 1 && s['open-connections'] <= 2 ? s : undefined
  })
  t.ok(state, 'every hung-up request is over')
  t.same(lines.filter((l) => (l['level'] as number) >= 50), [], 'no error line, for one hang-up or twenty')
})
