/**
 * WebSockets through the router, end to end: the `ws` client against real kitchen instances
 * (which echo, close on request, die on request and report what they were sent).
 */
import t from 'tap'
import type { IncomingMessage } from 'node:http'
import { connect as connectTcp } from 'node:net'
import { WebSocket, type RawData } from 'ws'
import { capturedLog } from '../fixtures/captured-log.ts'
import { call, createToken, kitchenToken, startRouter, waitFor, type Router } from '../fixtures/router.ts'
import { h2cToken } from '../fixtures/protocols.ts'
import { whileOutOfFileDescriptors } from '../fixtures/fd-starved.ts'

interface Opened {
  readonly ws: WebSocket
  readonly response: IncomingMessage
}

interface Refused {
  readonly status: number
  readonly headers: IncomingMessage['headers']
  readonly body: string
}

/** Opens a WebSocket through the router; resolves with the socket, or with the HTTP answer that refused it. */
function open(router: Router, path: string, headers: Record<string, string>, protocols: string[] = []): Promise<Opened | Refused> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${router.url.replace('http://', 'ws://')}${path}`, protocols, { headers })
    ws.once('upgrade', (response) => ws.once('open', () => resolve({ ws, response })))
    ws.once('unexpected-response', (_req, res) => {
      let body = ''
      res.on('data', (c: Buffer) => (body += c.toString()))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }))
    })
    ws.once('error', reject)
  })
}

async function opened(router: Router, path: string, headers: Record<string, string>, protocols: string[] = []): Promise<Opened> {
  const result = await open(router, path, headers, protocols)
  if (!('ws' in result)) throw new Error(`refused: ${result.status} ${result.body}`)
  return result
}

/** The next message; a close before it fails the wait (rather than hanging the test). */
function next(ws: WebSocket): Promise<{ data: Buffer; isBinary: boolean }> {
  return new Promise((resolve, reject) => {
    const onClose = (code: number): void => reject(new Error(`closed (${code}) before a message came`))
    ws.once('close', onClose)
    ws.once('message', (data: RawData, isBinary: boolean) => {
      ws.off('close', onClose)
      resolve({ data: data as Buffer, isBinary })
    })
  })
}

function closed(ws: WebSocket): Promise<{ code: number; reason: string; at: number }> {
  return new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString(), at: Date.now() })))
}

async function ask(ws: WebSocket, text: string): Promise<string> {
  const reply = next(ws)
  ws.send(text)
  return (await reply).data.toString()
}

const h = { 'x-waiter-token': 'chat' }

/** Sends bytes on a fresh connection and collects everything until the router closes it. */
function rawExchange(router: Router, request: string): Promise<string> {
  return new Promise((resolve) => {
    const socket = connectTcp(Number(new URL(router.url).port), '127.0.0.1', () => socket.write(request))
    let text = ''
    socket.on('data', (c) => (text += c.toString()))
    socket.on('close', () => resolve(text))
  })
}

t.test('a WebSocket through a token: echoes text and binary, the 101 carries x-cid, the instance gets Waiter’s headers and none of the router’s, the subprotocol is the instance’s choice', async (t) => {
  const router = await startRouter(t, { 'auth.user': 'alice' })
  await createToken(router, 'chat', kitchenToken())
  const { ws, response } = await opened(router, '/chat?room=1', { ...h, 'x-cid': 'ws-cid-1', 'x-waiter-debug': 'true' }, ['chat.v1', 'chat.v2'])
  t.equal(response.headers['x-cid'], 'ws-cid-1', 'x-cid on the upgrade response')
  t.match(response.headers['x-waiter-service-id'], /^maitre-/, 'debug headers too, when asked')
  t.equal(ws.protocol, 'chat.v2', 'the instance chose chat.v2 of the two offered, and the client was told so')
  t.equal(await ask(ws, 'hello'), 'hello')
  const binary = next(ws)
  ws.send(Buffer.from([0, 1, 2, 255]))
  const got = await binary
  t.ok(got.isBinary, 'binary stays binary')
  t.same([...got.data], [0, 1, 2, 255])
  const seen = JSON.parse(await ask(ws, 'headers')) as Record<string, string>
  t.match(seen, { 'x-cid': 'ws-cid-1', 'x-waiter-auth-principal': 'alice', 'sec-websocket-protocol': 'chat.v1,chat.v2' })
  t.match(seen['authorization'], /^Basic /, 'the instance’s own credentials')
  t.notOk(Object.keys(seen).some((k) => k.startsWith('x-waiter-') && !['x-waiter-auth-principal', 'x-waiter-auth-user', 'x-waiter-authenticated-principal'].includes(k)), 'no x-waiter-* of the client reaches the instance')
  const done = closed(ws)
  ws.close(1000, 'bye')
  t.equal((await done).code, 1000)
  t.equal(await ask((await opened(router, '/', h)).ws, 'last-close'), JSON.stringify({ code: 1000, reason: 'bye' }), 'the instance saw the client’s close code and reason')
})

t.test('close codes are relayed both ways; the instance’s death reaches the client at once as 1011', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'chat', kitchenToken())
  const first = await opened(router, '/', h)
  const byInstance = closed(first.ws)
  first.ws.send('close:4001:done here')
  t.same(await byInstance.then(({ code, reason }) => ({ code, reason })), { code: 4001, reason: 'done here' }, 'the instance’s close code and reason, as sent')

  const second = await opened(router, '/', h)
  const byClient = closed(second.ws)
  second.ws.close(4000, 'leaving')
  await byClient
  const third = await opened(router, '/', h)
  t.equal(await ask(third.ws, 'last-close'), JSON.stringify({ code: 4000, reason: 'leaving' }), 'the client’s close code and reason reached the instance')

  const gone = closed(third.ws)
  const diedAt = Date.now()
  third.ws.send('die')
  const ended = await gone
  t.equal(ended.code, 1011, 'the instance died: 1011, not a hang')
  t.equal(ended.reason, 'The instance closed the connection')
  t.ok(ended.at - diedAt < 2000, `within ${ended.at - diedAt} ms`)
})

t.test('a WebSocket holds its slot for its whole life: it counts in flight, a request queues behind it, and scale-down never kills its instance', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'chat', kitchenToken({ 'concurrency-level': 1, 'max-instances': 1 }))
  const { ws } = await opened(router, '/', h)
  const id = (await call(`${router.url}/service-id`, { headers: h })).text
  const app = (await call(`${router.url}/apps/${id}`)).json<{ 'request-metrics': { 'in-flight': number } }>()
  t.equal(app['request-metrics']['in-flight'], 1, 'in flight while open')
  t.match((await call(`${router.url}/metrics`)).text, /^maitre_websockets_open 1$/m, 'and counted open in /metrics')
  const queued = await call(`${router.url}/request-info`, { headers: { ...h, 'x-waiter-queue-timeout': '300' } })
  t.equal(queued.status, 503, 'the only slot is the WebSocket’s: a request waits, and times out')
  t.match(queued.json(), { 'waiter-error': { code: 'MAITRE_QUEUE_TIMEOUT' } })
  const done = closed(ws)
  ws.close()
  await done
  await waitFor('the slot is free', async () => ((await call(`${router.url}/apps/${id}`)).json<{ 'request-metrics': { 'in-flight': number } }>()['request-metrics']['in-flight'] === 0 ? true : undefined))
  t.equal((await call(`${router.url}/request-info`, { headers: h })).status, 200, 'and then a request is served at once')

  // Two instances, each carrying a WebSocket; then the version may only have one: the scaler
  // wants one gone, and neither may go while its WebSocket lives.
  await createToken(router, 'pair', kitchenToken({ version: 'pair', 'concurrency-level': 1, 'min-instances': 2, 'max-instances': 2 }))
  const pair = { 'x-waiter-token': 'pair' }
  const sockets = [(await opened(router, '/', pair)).ws, (await opened(router, '/', pair)).ws]
  const pairId = (await call(`${router.url}/service-id`, { headers: pair })).text
  t.equal((await call(`${router.url}/apps/${pairId}/override`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ 'min-instances': 1, 'max-instances': 1 }) })).status, 200)
  type Scaling = { scaling: { 'last-decision'?: { direction: string; killed?: string } } | null; instances: { 'active-instances': unknown[] } }
  const decided = await waitFor('the scaler wants one instance gone', async () => {
    const now = (await call(`${router.url}/apps/${pairId}`)).json<Scaling>()
    return now.scaling?.['last-decision']?.direction === 'down' ? now : undefined
  }, 15_000)
  t.equal(decided.scaling?.['last-decision']?.killed, undefined, 'it killed nothing')
  t.equal(decided.instances['active-instances'].length, 2, 'both instances run')
  for (const ws of sockets) t.equal(await ask(ws, 'still'), 'still', 'and both WebSockets still work')
  for (const ws of sockets) ws.close()
})

t.test('pings and pongs go end to end: an instance’s heartbeat reaches the client (and a client that does not answer is not answered for), a client’s ping reaches the instance', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'beat', kitchenToken())
  const ws = new WebSocket(`${router.url.replace('http://', 'ws://')}/`, { headers: { 'x-waiter-token': 'beat' }, autoPong: false })
  await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject))
  t.teardown(() => ws.terminate())
  const pingsSeen: string[] = []
  ws.on('ping', (data: Buffer) => void pingsSeen.push(data.toString()))
  const next = (): Promise<string> => new Promise((resolve) => ws.once('message', (data: RawData) => resolve(data.toString())))
  ws.send('ping:heartbeat-1')
  await waitFor('the instance’s ping at the client', () => (pingsSeen.length > 0 ? true : undefined), 5000)
  t.same(pingsSeen, ['heartbeat-1'], 'the instance’s ping, with its data, reached the client')
  const pongs: string[] = []
  ws.on('pong', (data: Buffer) => void pongs.push(data.toString()))
  ws.ping('from-client')
  await waitFor('the pong', () => (pongs.length > 0 ? true : undefined), 5000)
  t.same(pongs, ['from-client'], 'the client’s ping was answered')
  const counted = next()
  ws.send('pings')
  t.equal(await counted, '1', 'by the instance, which saw it')
})

t.test('limits: a message over proxy.websocket.maxMessageBytes closes with 1009 whichever side sent it; an idle WebSocket is closed with 1001', async (t) => {
  // 1.5 s of idleness: short for a test, long enough that a loaded machine's round trip is not idleness.
  const router = await startRouter(t, { 'proxy.websocket.maxMessageBytes': 1024, 'proxy.websocket.idleTimeoutMs': 1500 })
  // A slot for each of the three WebSockets: each opens without waiting for the one before to
  // finish its closing handshake (a loaded machine once held the third in the queue past the
  // file's timeout). That the slots all come back is checked at the end.
  await createToken(router, 'chat', kitchenToken({ 'concurrency-level': 3 }))
  const fromClient = await opened(router, '/', h)
  t.equal(await ask(fromClient.ws, 'x'.repeat(1024)), 'x'.repeat(1024), 'a message at the bound passes')
  const tooBig = closed(fromClient.ws)
  fromClient.ws.send('x'.repeat(1025))
  t.equal((await tooBig).code, 1009, 'the client’s message over the bound: 1009')

  const fromInstance = await opened(router, '/', h)
  const tooBigBack = closed(fromInstance.ws)
  fromInstance.ws.send('big:5000')
  t.equal((await tooBigBack).code, 1009, 'the instance’s message over the bound: 1009 to the client')
  // The bound is the router's rule, not the instance failing: it stays in rotation. (It used to
  // be ejected for 10 s, since ws stops reading a side whose message broke the bound and its
  // close reply then looks like a dead connection; the next WebSocket queued behind that.)
  const overBound = await waitFor('both sides of the oversized exchange closed', async () => {
    const metrics = (await call(`${router.url}/metrics`)).text
    return /^maitre_websockets_open 0$/m.test(metrics) ? metrics : undefined
  }, 40_000)
  t.notMatch(overBound, /^maitre_ejections_total\{[^}]*\} [1-9]/m, 'the instance was not ejected')

  const idle = await opened(router, '/', h)
  const openedAt = Date.now()
  t.equal(await ask(idle.ws, 'one'), 'one')
  const idled = await closed(idle.ws)
  t.equal(idled.code, 1001)
  t.equal(idled.reason, 'Idle timeout')
  t.ok(idled.at - openedAt >= 1500, `closed after ${idled.at - openedAt} ms without a message, not before 1500`)
  // Every slot back, the closing handshakes over (ws gives an unanswered one 30 s).
  const id = (await call(`${router.url}/service-id`, { headers: h })).text
  const free = await waitFor('every slot back', async () => {
    const n = (await call(`${router.url}/state/instance-tracker`)).json<{ state: Record<string, { load: { slotsAvailable: number } }> }>().state[id]?.load.slotsAvailable
    return n === 3 ? n : undefined
  }, 40_000)
  t.equal(free, 3, 'the three WebSockets gave their slots back')
})

t.test('refusals before the upgrade are Waiter’s JSON errors with x-cid; an instance’s refusal reaches the client as it came', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'chat', kitchenToken())
  const unknown = await open(router, '/', { 'x-waiter-token': 'nope', 'x-cid': 'ws-cid-2', accept: 'application/json' })
  t.ok(!('ws' in unknown))
  const u = unknown as Refused
  t.equal(u.status, 404)
  t.equal(u.headers['x-cid'], 'ws-cid-2')
  t.match(JSON.parse(u.body), { 'waiter-error': { 'waiter-token': 'nope' } })

  const refused = (await open(router, '/ws-refuse', h)) as Refused
  t.equal(refused.status, 403, 'the instance’s 403')
  t.equal(refused.headers['x-kitchen-refused'], 'yes')
  t.same(JSON.parse(refused.body), { refused: true, path: '/ws-refuse' })
  const id = (await call(`${router.url}/service-id`, { headers: h })).text
  await waitFor('the slot of the refused upgrade is free', async () => ((await call(`${router.url}/apps/${id}`)).json<{ 'request-metrics': { 'in-flight': number } }>()['request-metrics']['in-flight'] === 0 ? true : undefined))

  const broken = (await open(router, '/ws-broken', { ...h, accept: 'application/json' })) as Refused
  t.equal(broken.status, 502, 'an instance whose refusal breaks off: 502')
  t.match(JSON.parse(broken.body), { 'waiter-error': { message: /broke off/ } })
  await waitFor('the slot of the broken refusal is free', async () => ((await call(`${router.url}/apps/${id}`)).json<{ 'request-metrics': { 'in-flight': number } }>()['request-metrics']['in-flight'] === 0 ? true : undefined))

  const api = (await open(router, '/apps', { accept: 'application/json' })) as Refused
  t.equal(api.status, 400, 'an upgrade to the API is refused')
  t.match(JSON.parse(api.body), { 'waiter-error': { details: { field: 'upgrade' } } })

  // A raw upgrade with a malformed key: refused before anything is started.
  const raw = await rawExchange(router, 'GET / HTTP/1.1\r\nHost: x\r\nx-waiter-token: chat\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n')
  t.match(raw, /^HTTP\/1\.1 400 /, 'a malformed handshake is a 400')
  t.match(raw, /sec-websocket-key/)
})

t.test('a WebSocket refused for want of an instance is counted and logged against its version, as a request is', async (t) => {
  const { log, lines } = capturedLog()
  const router = await startRouter(t, {}, { log })
  // Never healthy (it never listens), so every wait for it times out.
  await createToken(router, 'never', kitchenToken({ cmd: 'sleep 3600', 'queue-timeout-ms': 500 }))
  const refused = (await open(router, '/', { 'x-waiter-token': 'never', 'x-cid': 'ws-never', accept: 'application/json' })) as Refused
  t.equal(refused.status, 503)
  t.match(JSON.parse(refused.body), { 'waiter-error': { message: /no instance available/ } })
  const id = (await call(`${router.url}/service-id`, { headers: { 'x-waiter-token': 'never' } })).text
  const metrics = (await call(`${router.url}/metrics`)).text
  t.match(metrics, `maitre_requests_total{service="${id}",code="5xx"} 1`, 'counted as a request of its version')
  t.match(metrics, `maitre_queue_rejections_total{service="${id}",reason="timeout"} 1`, 'and as a queue rejection')
  t.match(metrics, `maitre_cold_starts_total{service="${id}"} 1`, 'it waited on a cold start')
  const completed = lines.find((l) => l['cid'] === 'ws-never' && l['msg'] === 'request completed')
  t.match(completed, { token: 'never', service: id, status: 503, websocket: true }, 'its log line names the token and the version')
})

t.test('a WebSocket to an HTTP/2-only service (backend-proto h2c or h2) is refused with a 400 before anything is dialled, and its instance stays in rotation', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'twos', h2cToken())
  const twos = { 'x-waiter-token': 'twos', 'x-waiter-debug': 'true' }
  const warm = await call(`${router.url}/request-info`, { headers: twos })
  t.equal(warm.status, 200, 'the h2c service runs')
  const instance = warm.headers['x-waiter-backend-id']
  const refused = await open(router, '/', { 'x-waiter-token': 'twos', 'x-cid': 'ws-h2c', accept: 'application/json' })
  t.ok(!('ws' in refused), 'not upgraded')
  const r = refused as Refused
  t.equal(r.status, 400, 'a 400')
  t.equal(r.headers['x-cid'], 'ws-h2c')
  t.equal(r.headers['x-maitre-error'], 'MAITRE_BAD_REQUEST')
  t.match(JSON.parse(r.body), { 'waiter-error': { message: /backend-proto is h2c/, details: { rule: 'websocket-backend-proto', 'backend-proto': 'h2c' } } }, 'naming the rule')
  // Served at once by the same instance: not ejected (which would queue this for 10 s).
  const started = Date.now()
  const next = await call(`${router.url}/request-info`, { headers: { ...twos, 'x-waiter-queue-timeout': '2000' } })
  t.equal(next.status, 200, `a request right after is served (${Date.now() - started} ms)`)
  t.equal(next.headers['x-waiter-backend-id'], instance, 'by the same instance')

  // h2: refused as such before a version is even started.
  await createToken(router, 'tls-twos', kitchenToken({ 'backend-proto': 'h2', 'health-check-proto': 'h2', version: 'h2' }, '--h2'))
  const h2 = (await open(router, '/', { 'x-waiter-token': 'tls-twos', accept: 'application/json' })) as Refused
  t.equal(h2.status, 400)
  t.match(JSON.parse(h2.body), { 'waiter-error': { details: { rule: 'websocket-backend-proto', 'backend-proto': 'h2' } } })
})

t.test('subprotocols: a malformed or repeated offer is a 400 before a slot is taken; one the instance does not choose is a 502 that leaves the instance in rotation', async (t) => {
  const router = await startRouter(t)
  // One instance with one slot: a slot held for good would leave the next request nowhere to go.
  await createToken(router, 'chat', kitchenToken({ 'concurrency-level': 1, 'max-instances': 1 }))
  const debug = { ...h, 'x-waiter-debug': 'true' }
  const warm = await call(`${router.url}/request-info`, { headers: debug })
  t.equal(warm.status, 200)
  const instance = warm.headers['x-waiter-backend-id']
  const upgrade = (offer: string): string => `GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nx-waiter-token: chat\r\nAccept: application/json\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: ${offer}\r\n\r\n`
  for (const [offer, rule] of [['chat.v2, chat.v2', 'distinct'], ['chat v2', 'token']] as const) {
    const answer = await rawExchange(router, upgrade(offer))
    t.match(answer, /^HTTP\/1\.1 400 /, `"${offer}": a 400`)
    t.match(answer, new RegExp(`"field":\\s*"sec-websocket-protocol"[\\s\\S]*"rule":\\s*"${rule}"`), `naming the field and the rule (${rule})`)
  }
  // HTTP's list syntax allows empty elements: such an offer is the list it means.
  for (const offer of ['chat.v2,', ', chat.v2', 'chat,, chat.v2']) {
    const head = await new Promise<string>((resolve, reject) => {
      const socket = connectTcp(Number(new URL(router.url).port), '127.0.0.1', () => socket.write(upgrade(offer)))
      let text = ''
      socket.on('data', (c: Buffer) => {
        text += c.toString('latin1')
        if (!text.includes('\r\n\r\n')) return
        socket.destroy()
        resolve(text)
      })
      socket.on('error', reject)
      socket.on('close', () => resolve(text))
    })
    t.match(head, /^HTTP\/1\.1 101 /, `"${offer}": upgraded`)
    t.match(head, /\r\nsec-websocket-protocol: chat\.v2\r\n/i, `"${offer}": the instance chose chat.v2 of it`)
  }
  // The instance speaks chat.v2 only. Offered "chat", it accepts choosing none, which the
  // router's client refuses as a browser does: a 502, and no fault of the instance's.
  const refused = await open(router, '/', { ...h, accept: 'application/json' }, ['chat'])
  t.ok(!('ws' in refused), 'not upgraded')
  t.equal((refused as Refused).status, 502)
  t.match(JSON.parse((refused as Refused).body), { 'waiter-error': { message: /none of the offered subprotocols/ } })
  const started = Date.now()
  const next = await call(`${router.url}/request-info`, { headers: { ...debug, 'x-waiter-queue-timeout': '3000' } })
  t.equal(next.status, 200, `the one slot came back and the instance stayed in rotation: served at once (${Date.now() - started} ms; an ejection queues it for 10 s)`)
  t.equal(next.headers['x-waiter-backend-id'], instance, 'by the same instance')
  const spoken = await opened(router, '/', h, ['chat', 'chat.v2'])
  t.equal(spoken.ws.protocol, 'chat.v2', 'offered one it speaks, the instance chooses it')
  const done = closed(spoken.ws)
  spoken.ws.close(1000)
  await done
})

t.test('a WebSocket target the instance could only be dialled with changed (a fragment, dot segments, a backslash) is a 400 before a slot is taken, not a 500', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'chat', kitchenToken({ 'concurrency-level': 1, 'max-instances': 1 }))
  const upgrade = (target: string): string => `GET ${target} HTTP/1.1\r\nHost: 127.0.0.1\r\nx-waiter-token: chat\r\nAccept: application/json\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`
  for (const target of ['/chat#frag', '/a/../chat', '/a/%2e%2e/chat', '/a\\b']) {
    const answer = await rawExchange(router, upgrade(target))
    t.match(answer, /^HTTP\/1\.1 400 /, `${target}: a 400`)
    t.match(answer, /must read the same as a URL path/, 'saying why')
  }
  const metrics = (await call(`${router.url}/metrics`)).text
  t.notMatch(metrics, /maitre_cold_starts_total\{[^}]*\} [1-9]/, 'nothing was started for them')
  // A path that starts with two slashes is a path (a base URL with a trailing slash makes it).
  ;(await opened(router, '//socket', h)).ws.close(1000)
  const ok = await opened(router, '/chat?room=1', h)
  t.equal(await new Promise<string>((resolve) => {
    ok.ws.once('message', (data: RawData) => resolve(data.toString()))
    ok.ws.send('hello')
  }), 'hello', 'a plain path with a query is relayed')
  ok.ws.close(1000)
})

t.test('an upgrade to a protocol maitre does not speak is served as HTTP/1.1; a draining router closes its WebSockets with 1001', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'chat', kitchenToken())
  const other = await rawExchange(router, 'GET /request-info HTTP/1.1\r\nHost: x\r\nx-waiter-token: chat\r\nConnection: Upgrade, close\r\nUpgrade: IRC/6.9\r\n\r\n')
  t.match(other, /^HTTP\/1\.1 200 /, 'answered over HTTP/1.1')
  const seen = JSON.parse(other.slice(other.indexOf('\r\n\r\n') + 4)) as { headers: Record<string, string> }
  t.notOk('upgrade' in seen.headers, 'the upgrade header is not passed on')
  const { ws } = await opened(router, '/', h)
  // A second WebSocket waits behind it for the one slot of another version.
  await createToken(router, 'single', kitchenToken({ version: 'single', 'concurrency-level': 1, 'max-instances': 1 }))
  const single = { 'x-waiter-token': 'single' }
  const holder = (await opened(router, '/', single)).ws
  const serviceId = (await call(`${router.url}/service-id`, { headers: single })).text
  const waiting = open(router, '/', { ...single, accept: 'application/json' })
  await waitFor('the second WebSocket to queue', async () => ((await call(`${router.url}/apps/${serviceId}`)).json<{ 'request-metrics': { queued: number } }>()['request-metrics'].queued === 1 ? true : undefined))
  const going = closed(ws)
  const holderGoing = closed(holder)
  const started = Date.now()
  const stopping = router.app.stop()
  const ended = await going
  t.equal(ended.code, 1001, 'going away')
  t.equal(ended.reason, 'The router is shutting down')
  t.equal((await holderGoing).code, 1001, 'the one holding the slot too')
  // Its slot freed, the queued one is admitted while the router drains: not opened only to be
  // cut when the drain gives up (1006 after server.shutdownTimeoutMs), but refused, so its
  // client reconnects elsewhere at once.
  const refused = await waiting
  t.notOk('ws' in refused, 'not upgraded')
  t.equal((refused as Refused).status, 503)
  t.match(JSON.parse((refused as Refused).body), { 'waiter-error': { code: 'MAITRE_ROUTER_OVERLOADED', details: { draining: true } } })
  t.equal((refused as Refused).headers['retry-after'], '1')
  await stopping
  t.ok(Date.now() - started < 5000, `the router stopped without waiting out its drain (${Date.now() - started} ms)`)
})

t.test('an upgrade pipelined behind requests still being answered: their answers go out whole first, in turn, then the 101 (h2c and WebSocket alike)', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'kitchen', kitchenToken())
  t.equal((await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'kitchen' } })).status, 200, 'warm')
  const slow = 'GET /sleep?sleep-ms=300 HTTP/1.1\r\nHost: x\r\nx-waiter-token: kitchen\r\n\r\nGET /sleep?sleep-ms=200 HTTP/1.1\r\nHost: x\r\nx-waiter-token: kitchen\r\n\r\n'
  const upgrades = {
    h2c: 'GET /request-info HTTP/1.1\r\nHost: x\r\nx-waiter-token: kitchen\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n',
    websocket: `GET /ws HTTP/1.1\r\nHost: x\r\nx-waiter-token: kitchen\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: ${Buffer.alloc(16, 1).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
  }
  for (const [kind, upgrade] of Object.entries(upgrades)) {
    const socket = connectTcp(Number(new URL(router.url).port), '127.0.0.1', () => socket.write(slow + upgrade))
    t.teardown(() => socket.destroy())
    let received = ''
    socket.on('data', (chunk: Buffer) => (received += chunk.toString('latin1')))
    await waitFor(`${kind}: both answers and the 101`, () => (received.includes(' 101 Switching Protocols') && received.includes('"slept":300') && received.includes('"slept":200') ? true : undefined), 10_000)
    t.match(received, /^HTTP\/1\.1 200 OK\r\n/, `${kind}: the first answer comes first`)
    const [first, second, upgraded] = ['"slept":300', '"slept":200', ' 101 Switching Protocols'].map((text) => received.indexOf(text))
    t.ok((first as number) < (second as number) && (second as number) < (upgraded as number), `${kind}: both answers whole, in turn, before the 101`)
    socket.destroy()
  }
})

t.test('a WebSocket upgrade the router cannot carry because it is out of file descriptors is its own 503 to retry, and takes no instance out of rotation', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'echo', kitchenToken())
  const h = { 'x-waiter-token': 'echo' }
  t.equal((await call(`${router.url}/request-info`, { headers: h })).status, 200, 'warm')
  const id = (await call(`${router.url}/service-id`, { headers: h })).text
  // The client's connection is made first; then this process (the router too) runs out of descriptors.
  const { port } = new URL(router.url)
  const client = connectTcp(Number(port), '127.0.0.1')
  await new Promise<void>((resolve, reject) => client.once('connect', () => resolve()).once('error', reject))
  let answer = ''
  client.on('data', (chunk: Buffer) => (answer += chunk.toString('latin1')))
  await whileOutOfFileDescriptors(t, async () => {
    client.write(`GET / HTTP/1.1\r\nhost: 127.0.0.1\r\nx-waiter-token: echo\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`)
    await waitFor('the answer', () => (/\r\n\r\n/.test(answer) ? true : undefined), 10_000)
  })
  client.destroy()
  t.match(answer, /^HTTP\/1\.1 503 /, `a 503 (${answer.split('\r\n')[0]})`)
  t.match(answer, /retry-after: 1/i)
  const slots = (await call(`${router.url}/apps/${id}`)).json<{ slots: { ejectedUntil: number }[] }>().slots
  t.ok(slots.every((s) => s.ejectedUntil === 0), 'no instance was ejected')
})
