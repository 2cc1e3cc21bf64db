/**
 * Upgrade: h2c (RFC 7540 §3.2) on the router's cleartext port: curl's --http2 and nghttp's -u
 * get their first request answered over HTTP/2 after a 101, and the connection carries on in
 * HTTP/2; a request that cannot be upgraded is served as HTTP/1.1; a client that breaks the
 * preface after the 101 loses only its connection.
 */
import t from 'tap'
import { execFile } from 'node:child_process'
import { connect } from 'node:net'
import { promisify } from 'node:util'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { call, createToken, kitchenToken, startRouter, type Router } from '../fixtures/router.ts'
import { h2cToken } from '../fixtures/protocols.ts'

const run = promisify(execFile)

/** curl --http2 (which asks with Upgrade: h2c): the protocol each answer came in, and the bodies. */
async function curlH2(dir: string, urls: string[], extra: string[] = []): Promise<{ versions: string[]; connects: string[]; bodies: string[] }> {
  const files = urls.map((_, i) => join(dir, `answer-${i}`))
  const { stdout } = await run('curl', ['-s', '--http2', ...extra, ...files.flatMap((f) => ['-o', f]), '-w', '##%{http_version} %{http_code} %{num_connects}##\n', ...urls], { maxBuffer: 1 << 20 })
  const marks = [...stdout.matchAll(/##(\S+) (\d+) (\d+)##/g)]
  return { versions: marks.map((m) => `${m[1]} ${m[2]}`), connects: marks.map((m) => m[3] ?? ''), bodies: files.map((f) => readFileSync(f, 'utf8')) }
}

t.test('curl --http2: the upgraded request and the next ones on its connection are answered over HTTP/2 — Waiter’s API and the data path to HTTP/1.1 and h2c instances', async (t) => {
  const router = await startRouter(t)
  const dir = t.testdir()
  await createToken(router, 'ones', kitchenToken())
  await createToken(router, 'twos', h2cToken())
  const api = await curlH2(dir, [`${router.url}/status`, `${router.url}/token?token=ones`])
  t.same(api.versions, ['2 200', '2 200'], 'both answers over HTTP/2')
  t.same(api.connects, ['1', '0'], 'on one connection: the second request rode the upgraded one')
  t.match(api.bodies[0], /"status"/)
  t.match(api.bodies[1], /"cmd"/, 'the token, as over HTTP/1.1')
  for (const token of ['ones', 'twos']) {
    const served = await curlH2(dir, [`${router.url}/protocol`], ['-H', `x-waiter-token: ${token}`])
    t.same(served.versions, ['2 200'], `${token}: the upgraded request reached the service`)
    const seen = JSON.parse(served.bodies[0] ?? '') as { httpVersion: string; headers: Record<string, string> }
    t.equal(seen.httpVersion, token === 'ones' ? '1.1' : '2.0', `${token}: spoken to in its own protocol`)
    t.notOk('upgrade' in seen.headers || 'http2-settings' in seen.headers, `${token}: the upgrade’s own fields stay on the client’s hop`)
    t.match(seen.headers, { 'x-waiter-token': undefined, 'x-cid': String }, `${token}: headers as for any request`)
  }
  // A header block past one frame (16 KiB) goes as HEADERS and CONTINUATION frames.
  const big = await curlH2(dir, [`${router.url}/request-info`], ['-H', 'x-waiter-token: ones', '-H', `x-big: ${'b'.repeat(20_000)}`])
  t.same(big.versions, ['2 200'])
  t.equal((JSON.parse(big.bodies[0] ?? '') as { headers: Record<string, string> }).headers['x-big']?.length, 20_000, 'a 20 kB field arrives whole')
})

t.test('nghttp -u: the upgrade and several streams after it', async (t) => {
  const router = await startRouter(t)
  const { stdout } = await run('nghttp', ['-u', '-n', '-s', `${router.url}/status`, `${router.url}/settings`, `${router.url}/apps`])
  const codes = [...stdout.matchAll(/^\s+(\d+)\s+\+\S+\s+\+\S+\s+\S+\s+(\d{3})\s/gm)].map((m) => `${m[1]}:${m[2]}`)
  t.same(codes.sort(), ['1:200', '13:200', '15:200'].sort(), 'stream 1 (the upgraded request) and two more, all 200')
})

/** Raw bytes on a connection: what came back, by the time it closed (or after `waitMs`). */
function raw(router: Router, chunks: readonly (string | Buffer)[], waitMs = 2000): Promise<{ text: Buffer; closed: boolean }> {
  return new Promise((resolve) => {
    const socket = connect(Number(new URL(router.url).port), '127.0.0.1')
    const got: Buffer[] = []
    let closed = false
    socket.on('data', (c: Buffer) => got.push(c))
    socket.on('error', () => undefined)
    socket.on('close', () => {
      closed = true
      resolve({ text: Buffer.concat(got), closed })
    })
    socket.on('connect', async () => {
      for (const chunk of chunks) {
        socket.write(chunk)
        await new Promise((r) => setTimeout(r, 20))
      }
    })
    setTimeout(() => {
      resolve({ text: Buffer.concat(got), closed })
      socket.destroy()
    }, waitMs).unref()
  })
}

/** The HTTP/2 frames in bytes after a 101: [type, stream] of each. */
function frames(bytes: Buffer): Array<[number, number]> {
  const out: Array<[number, number]> = []
  let at = bytes.indexOf('\r\n\r\n') + 4
  while (at + 9 <= bytes.length) {
    const length = bytes.readUIntBE(at, 3)
    out.push([bytes.readUInt8(at + 3), bytes.readUInt32BE(at + 5) & 0x7fffffff])
    at += 9 + length
  }
  return out
}

const UPGRADE = 'GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n'
const PREFACE = 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'
const EMPTY_SETTINGS = Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0])

t.test('a preface that arrives in pieces is awaited; one that is not a preface loses the connection; malformed upgrades are served as HTTP/1.1', async (t) => {
  const router = await startRouter(t)
  const pieces = await raw(router, [UPGRADE, PREFACE.slice(0, 7), PREFACE.slice(7), EMPTY_SETTINGS.subarray(0, 4), EMPTY_SETTINGS.subarray(4)], 1000)
  t.match(pieces.text.toString('latin1'), /^HTTP\/1\.1 101 Switching Protocols\r\n/)
  t.ok(frames(pieces.text).some(([type, stream]) => type === 1 && stream === 1), 'the answer to the upgraded request: HEADERS on stream 1')
  const garbage = await raw(router, [UPGRADE, 'GET / HTTP/1.1\r\nHost: localhost\r\n\r\n'])
  t.ok(garbage.closed, 'not a preface after the 101: the connection closes')
  t.notMatch(garbage.text.toString('latin1'), /HTTP\/1\.1 [2-5]\d\d/, 'and nothing more is answered on it')
  for (const [what, head] of [
    ['no HTTP2-Settings', 'GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nconnection: close\r\n\r\n'],
    ['two HTTP2-Settings', 'GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\nHTTP2-Settings: AAMAAABk\r\n\r\n'],
    ['HTTP2-Settings not in Connection', 'GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\n\r\n'],
    ['settings not base64url', 'GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: !!!\r\n\r\n'],
    ['an absolute-form target', 'GET http://localhost/status HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\n\r\n'],
    ['a body', 'POST /status HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\ncontent-length: 2\r\n\r\nhi'],
  ] as const) {
    const answer = await raw(router, [head])
    t.match(answer.text.toString('latin1'), /^HTTP\/1\.1 200 OK\r\n/, `${what}: served as HTTP/1.1`)
  }
  t.equal((await call(`${router.url}/status`)).status, 200, 'and the router carries on')
})

/** Sends `head`, waits for the answer's first line, then resets the connection (RST). */
function resetAfterAnswer(router: Router, head: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(Number(new URL(router.url).port), '127.0.0.1', () => socket.write(head))
    socket.on('error', reject)
    socket.once('data', (c: Buffer) => {
      socket.resetAndDestroy()
      resolve(c.toString('latin1').slice(0, c.indexOf('\r\n')))
    })
  })
}

t.test('a client that resets its connection after the 101, or after an upgrade is refused, takes down its own connection only', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'ones', kitchenToken())
  for (let i = 0; i < 3; i++) {
    t.equal(await resetAfterAnswer(router, UPGRADE), 'HTTP/1.1 101 Switching Protocols', 'reset right after the 101, before any preface')
    const refusal = await resetAfterAnswer(router, 'GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n')
    t.match(refusal, /^HTTP\/1\.1 400 /, 'reset as a WebSocket upgrade to the API is refused')
  }
  await new Promise((resolve) => setImmediate(resolve))
  t.equal((await call(`${router.url}/status`)).status, 200, 'the router still answers')
  const served = await curlH2(t.testdir(), [`${router.url}/protocol`], ['-H', 'x-waiter-token: ones'])
  t.same(served.versions, ['2 200'], 'and upgrades the next client')
})

t.test('an upgrade answered 101 just before a drain began still gets its answer on stream 1, then the connection goes', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'ones', kitchenToken())
  t.equal((await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'ones' } })).status, 200, 'the version runs')
  const socket = connect(Number(new URL(router.url).port), '127.0.0.1')
  t.teardown(() => socket.destroy())
  let got = Buffer.alloc(0)
  const arrived: (() => void)[] = []
  socket.on('data', (chunk: Buffer) => {
    got = Buffer.concat([got, chunk])
    for (const wake of arrived.splice(0)) wake()
  })
  const closed = new Promise<void>((resolve) => socket.on('close', () => resolve()))
  socket.on('error', () => undefined)
  socket.write('GET /request-info HTTP/1.1\r\nHost: x\r\nx-waiter-token: ones\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n')
  while (!got.toString('latin1').includes('\r\n\r\n')) await new Promise<void>((resolve) => arrived.push(resolve))
  t.match(got.toString('latin1'), /^HTTP\/1\.1 101 /, 'switched')
  got = Buffer.alloc(0)
  // The drain begins (synchronously, as stop() is called) before the client's preface arrives.
  const stopping = router.app.stop()
  socket.write(Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1'), Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0])]))
  await closed
  await stopping
  const frames: { type: number; flags: number; stream: number; payload: Buffer }[] = []
  for (let at = 0; at + 9 <= got.length; ) {
    const length = got.readUIntBE(at, 3)
    frames.push({ type: got[at + 3] as number, flags: got[at + 4] as number, stream: got.readUInt32BE(at + 5) & 0x7fffffff, payload: got.subarray(at + 9, at + 9 + length) })
    at += 9 + length
  }
  t.ok(frames.some((f) => f.type === 1 && f.stream === 1), 'HEADERS of the answer on stream 1')
  t.ok(frames.some((f) => f.type === 0 && f.stream === 1 && (f.flags & 1) === 1), 'its body, ended')
  const goaway = frames.find((f) => f.type === 7)
  t.equal(goaway?.payload.readUInt32BE(0), 1, 'GOAWAY names stream 1 as the last one served')
})
