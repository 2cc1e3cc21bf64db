/**
 * HTTP/2 end to end: clients on h2c (prior knowledge) and instances that speak h2c, in every
 * pairing with HTTP/1.1, trailers included.
 */
import t from 'tap'
import { request } from 'undici'
import { join } from 'node:path'
import { readFileSync, writeFileSync } from 'node:fs'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { connect as connectH2, constants as h2constants } from 'node:http2'
import { h2Request } from '../fixtures/h2.ts'
import { h2cToken, selfSigned } from '../fixtures/protocols.ts'
import { call, createToken, kitchenToken, startRouter, waitFor, within } from '../fixtures/router.ts'

const run = promisify(execFile)

t.test('an HTTP/1.1 client reaches an h2c instance; its response trailers arrive as it sent them', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'twos', h2cToken())
  const res = await request(`${router.url}/protocol`, { headers: { 'x-waiter-token': 'twos' } })
  t.equal(res.statusCode, 200)
  const seen = (await res.body.json()) as { httpVersion: string; headers: Record<string, string> }
  t.equal(seen.httpVersion, '2.0', 'the instance was spoken to in HTTP/2')
  t.match(seen.headers, { 'x-cid': String, authorization: /^Basic / })
  const withTrailers = await request(`${router.url}/trailers?grpc-status=0&x-custom=yes`, { headers: { 'x-waiter-token': 'twos' } })
  t.equal(await withTrailers.body.text(), 'body before trailers')
  t.same(withTrailers.trailers, { 'grpc-status': '0', 'x-custom': 'yes' }, 'trailers relayed to an HTTP/1.1 client (chunked)')
  // Waiter's ping checks the instance in its health check's protocol (h2c here), as the backend does.
  const ping = await call(`${router.url}/waiter-ping`, { headers: { 'x-waiter-token': 'twos' } })
  t.equal(ping.status, 200)
  t.match(ping.json(), { 'ping-response': { result: 'received-response', status: 200 }, 'service-state': { 'healthy?': true } }, 'the ping reaches the h2c instance')
})

t.test('HTTP/1.1 instance: response trailers reach an HTTP/1.1 client', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'ones', kitchenToken())
  const res = await request(`${router.url}/trailers?x-checksum=abc`, { headers: { 'x-waiter-token': 'ones' } })
  t.equal(await res.body.text(), 'body before trailers')
  t.same(res.trailers, { 'x-checksum': 'abc' })
  // A response that cannot be chunked (here: to an HTTP/1.0 client) cannot carry trailers: it
  // comes whole, without the Trailer announcement, rather than as a 502.
  const { connect } = await import('node:net')
  const http10 = await new Promise<string>((resolve) => {
    const socket = connect(Number(new URL(router.url).port), '127.0.0.1', () => socket.write('GET /trailers?x-checksum=abc HTTP/1.0\r\nHost: 127.0.0.1\r\nx-waiter-token: ones\r\n\r\n'))
    let text = ''
    socket.on('data', (chunk: Buffer) => (text += chunk.toString()))
    socket.on('close', () => resolve(text))
  })
  t.match(http10, /^HTTP\/1\.1 200 OK\r\n/, 'an HTTP/1.0 client: answered')
  t.match(http10, /\r\n\r\nbody before trailers$/, 'the body whole, unchunked')
  t.notMatch(http10.toLowerCase(), /\r\ntrailer:/, 'no Trailer field')
})

t.test('an h2c client (prior knowledge) on the router’s one port: the data path to HTTP/1.1 and h2c instances, trailers both ways, and Waiter’s API', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'ones', kitchenToken())
  await createToken(router, 'twos', h2cToken())
  const session = connectH2(router.url)
  t.teardown(() => session.close())
  const toOnes = await h2Request(session, { ':path': '/protocol', 'x-waiter-token': 'ones' })
  t.equal(toOnes.status, 200)
  t.equal(JSON.parse(toOnes.body).httpVersion, '1.1', 'an HTTP/2 client reaches an HTTP/1.1 instance')
  t.match(toOnes.headers, { 'x-cid': String })
  const toTwos = await h2Request(session, { ':path': '/protocol', 'x-waiter-token': 'twos' })
  t.equal(JSON.parse(toTwos.body).httpVersion, '2.0', 'and an h2c instance')
  const posted = await h2Request(session, { ':method': 'POST', ':path': '/request-info', 'x-waiter-token': 'ones', 'content-type': 'text/plain' }, 'a body over h2')
  t.equal(JSON.parse(posted.body).body, 'a body over h2', 'a request body arrives whole')
  const trailed = await h2Request(session, { ':path': '/trailers?grpc-status=0&grpc-message=fine', 'x-waiter-token': 'twos' })
  t.equal(trailed.body, 'body before trailers')
  t.match(trailed.trailers, { 'grpc-status': '0', 'grpc-message': 'fine' }, 'an h2c instance’s trailers reach the HTTP/2 client')
  const trailedFromOnes = await h2Request(session, { ':path': '/trailers?x-checksum=abc', 'x-waiter-token': 'ones' })
  t.match(trailedFromOnes.trailers, { 'x-checksum': 'abc' }, 'and an HTTP/1.1 instance’s')

  // Waiter's API over HTTP/2.
  const created = await h2Request(session, { ':method': 'POST', ':path': '/token', 'content-type': 'application/json' }, JSON.stringify({ token: 'via-h2', ...kitchenToken({ version: 'h2-made' }) }))
  t.equal(created.status, 200, 'a token written over HTTP/2')
  const read = await h2Request(session, { ':path': '/token?token=via-h2', accept: 'application/json' })
  t.equal(JSON.parse(read.body).version, 'h2-made')
  const unknown = await h2Request(session, { ':path': '/x', 'x-waiter-token': 'nope', accept: 'application/json' })
  t.equal(unknown.status, 404)
  t.match(JSON.parse(unknown.body), { 'waiter-error': { status: 404 } }, 'maitre’s errors as over HTTP/1.1')
  // Many streams at once on one connection.
  const many = await Promise.all(Array.from({ length: 20 }, (_, i) => h2Request(session, { ':path': `/request-info?i=${i}`, 'x-waiter-token': 'twos' })))
  t.same(many.map((r) => JSON.parse(r.body).query), Array.from({ length: 20 }, (_, i) => `?i=${i}`), 'twenty concurrent streams, each answered')
})

t.test('TLS instances: backend-proto https (HTTP/1.1) and h2 (HTTP/2 only), self-signed, health-checked over their own protocol, reached from HTTP/1.1 and HTTP/2 clients', async (t) => {
  const { cert, key } = selfSigned(t.testdir())
  const router = await startRouter(t)
  const tlsArgs = `--tls-cert ${cert} --tls-key ${key}`
  await createToken(router, 'secure1', kitchenToken({ 'backend-proto': 'https', 'health-check-proto': 'https', version: 'https' }, tlsArgs))
  await createToken(router, 'secure2', kitchenToken({ 'backend-proto': 'h2', 'health-check-proto': 'h2', version: 'h2' }, `${tlsArgs} --h2`))
  const one = await request(`${router.url}/protocol`, { headers: { 'x-waiter-token': 'secure1' } })
  t.equal(one.statusCode, 200)
  t.match(await one.body.json(), { httpVersion: '1.1', encrypted: true }, 'an https instance, its self-signed certificate taken')
  const two = await request(`${router.url}/protocol`, { headers: { 'x-waiter-token': 'secure2' } })
  t.equal(two.statusCode, 200)
  t.match(await two.body.json(), { httpVersion: '2.0', encrypted: true }, 'an h2 instance that speaks nothing but HTTP/2, over TLS')
  const trailed = await request(`${router.url}/trailers?grpc-status=0`, { headers: { 'x-waiter-token': 'secure2' } })
  await trailed.body.text()
  t.same(trailed.trailers, { 'grpc-status': '0' }, 'its trailers too')
  const session = connectH2(router.url)
  t.teardown(() => session.close())
  const viaH2 = await h2Request(session, { ':path': '/protocol', 'x-waiter-token': 'secure2' })
  t.equal(JSON.parse(viaH2.body).httpVersion, '2.0', 'from an HTTP/2 client too')
})

t.test('an HTTP/2 client is safe from an HTTP/1.1 instance’s odd fields: connection-specific headers and trailers are dropped, a doubled single-value field sent once', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'ones', kitchenToken())
  const session = connectH2(router.url)
  t.teardown(() => session.close())
  const odd = await h2Request(session, { ':path': '/odd-fields', 'x-waiter-token': 'ones' })
  t.equal(odd.status, 200, 'answered, not a broken stream (nor a crashed router)')
  t.equal(odd.body, 'odd')
  t.equal(odd.headers['content-type'], 'text/plain', 'the first content-type')
  t.notOk('http2-settings' in odd.headers)
  t.equal(odd.trailers['x-ok'], 'yes', 'the end-to-end trailer')
  t.notOk('connection' in odd.trailers || 'transfer-encoding' in odd.trailers, 'and none of the connection’s')
  // A 204 with a Content-Length (the instance's HTTP/1.1 server sends one): the length goes.
  const noContent = await h2Request(session, { ':path': '/sleep?status=204', 'x-waiter-token': 'ones' })
  t.equal(noContent.status, 204, 'a 204 with a length reaches an HTTP/2 client as a 204')
  t.notOk('content-length' in noContent.headers)
  const again = await h2Request(session, { ':path': '/protocol', 'x-waiter-token': 'ones' })
  t.equal(again.status, 200, 'the router is still there')
})

t.test('an HTTP/2 client that resets its stream (or drops its connection) gives its slot back at once; idle HTTP/2 connections and stalled bodies are bounded', async (t) => {
  const router = await startRouter(t, { 'server.keepAliveTimeoutMs': 400, 'server.bodyIdleTimeoutMs': 300 })
  await createToken(router, 'narrow', kitchenToken({ 'concurrency-level': 1, 'max-instances': 1 }))
  const session = connectH2(router.url)
  t.teardown(() => session.close())
  t.equal((await h2Request(session, { ':path': '/protocol', 'x-waiter-token': 'narrow' })).status, 200, 'warm')
  const narrowId = (await call(`${router.url}/service-id`, { headers: { 'x-waiter-token': 'narrow' } })).text
  const inFlight = async (): Promise<number> => (await call(`${router.url}/apps/${narrowId}`)).json<{ 'request-metrics': { 'in-flight': number } }>()['request-metrics']['in-flight']
  const slow = session.request({ ':path': '/sleep?sleep-ms=3000', 'x-waiter-token': 'narrow' })
  slow.on('error', () => undefined)
  slow.end()
  await waitFor('the slow request holds the one slot', async () => ((await inFlight()) === 1 ? true : undefined))
  slow.close(h2constants.NGHTTP2_CANCEL)
  const next = await h2Request(session, { ':path': '/protocol', 'x-waiter-token': 'narrow', 'x-waiter-queue-timeout': '1500' })
  t.equal(next.status, 200, 'the reset stream’s slot served the next request (one slot in all)')

  const dropped = connectH2(router.url)
  const held = dropped.request({ ':path': '/sleep?sleep-ms=3000', 'x-waiter-token': 'narrow' })
  held.on('error', () => undefined)
  held.end()
  await waitFor('the held request holds the one slot', async () => ((await inFlight()) === 1 ? true : undefined))
  dropped.destroy()
  t.equal((await h2Request(session, { ':path': '/protocol', 'x-waiter-token': 'narrow', 'x-waiter-queue-timeout': '1500' })).status, 200, 'a dropped connection’s slot too')

  const stalled = await h2Request(session, { ':method': 'POST', ':path': '/request-info', 'x-waiter-token': 'narrow', accept: 'application/json' }, 'part of a body that never ends', { open: true })
  t.equal(stalled.status, 408, 'a body that stops moving: 408')
  t.match(JSON.parse(stalled.body), { 'waiter-error': { details: { limit: 'body-idle-ms' } } })
  const after = await h2Request(session, { ':path': '/protocol', 'x-waiter-token': 'narrow', 'x-waiter-queue-timeout': '1500', accept: 'application/json' })
  t.equal(after.status, 200, 'and its slot came back; the connection serves on')

  const quiet = connectH2(router.url)
  const goaway = await new Promise<number>((resolve) => {
    const openedAt = Date.now()
    quiet.once('goaway', () => resolve(Date.now() - openedAt))
    quiet.once('close', () => resolve(Date.now() - openedAt))
  })
  quiet.destroy()
  t.ok(goaway >= 300 && goaway < 5000, `a connection with no stream is told to go after keepAliveTimeoutMs (${goaway} ms)`)
})

t.test('a stream the instance refuses unprocessed (REFUSED_STREAM) counts as never delivered: tried on another instance, then told as a connection failure', async (t) => {
  // Ejections short, so the last of the three attempts (back on the first instance) comes soon.
  const router = await startRouter(t, { 'proxy.ejectBaseMs': 300 })
  await createToken(router, 'twos', h2cToken({ 'min-instances': 2 }))
  t.equal((await call(`${router.url}/protocol`, { headers: { 'x-waiter-token': 'twos' } })).status, 200, 'started')
  const id = (await call(`${router.url}/service-id`, { headers: { 'x-waiter-token': 'twos' } })).text
  type Listed = { instances: { 'active-instances': Array<{ 'log-directory': string | null; 'healthy?': boolean }> } }
  const dirs = await waitFor('two healthy instances, both in rotation', async () => {
    const listed = (await call(`${router.url}/apps/${id}`)).json<Listed>().instances['active-instances'].filter((i) => i['healthy?'])
    const tracker = (await call(`${router.url}/state/${id}`)).json<{ state: { tracker: { load: { healthy: number } } } }>().state.tracker
    return listed.length === 2 && tracker.load.healthy === 2 ? listed.map((i) => i['log-directory']) : undefined
  })
  const refused = await request(`${router.url}/refuse-stream`, { headers: { 'x-waiter-token': 'twos' } })
  const body = await refused.body.text()
  t.equal(refused.statusCode, 502)
  t.equal(refused.headers['x-maitre-error'], 'MAITRE_UPSTREAM_CONNECT', 'a connection failure, not a failed request')
  t.match(body, /failed to connect/)
  const cid = String(refused.headers['x-cid'])
  const logOf = (dir: string | null): string => {
    try {
      return readFileSync(join(String(dir), 'requests.log'), 'utf8')
    } catch {
      return '' // an instance that never had a request has no log yet
    }
  }
  const tried = dirs.filter((dir) => logOf(dir).includes(`start ${cid} /refuse-stream`))
  t.equal(tried.length, 2, 'both instances were asked: the refused stream went to the other one')
})

t.test('an HTTP/2 instance that dies mid-answer: the client’s answer is cut, never passed off as complete', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'twos', h2cToken())
  const res = await request(`${router.url}/die-mid-answer`, { headers: { 'x-waiter-token': 'twos' } })
  t.equal(res.statusCode, 200, 'the answer had begun')
  await t.rejects(res.body.text(), 'the body ends in an error, not as a whole answer')
})

t.test('a body still moving to an instance that reads it slowly is not cut by the socket timeout, from an HTTP/1.1 client and from an HTTP/2 one', async (t) => {
  const router = await startRouter(t)
  // An h2c instance: HTTP/2's flow control (64 KB windows) shows the router each chunk the
  // instance takes. (To an HTTP/1.1 instance progress shows only as the kernel's socket buffers,
  // megabytes on loopback, drain: the same rule, seen at a coarser grain.)
  await createToken(router, 'twos', h2cToken({ 'socket-timeout-ms': 800 }))
  // 2 MB, its first 100 chunks read 20 ms apart (2 s of slow, steady progress, past the 800 ms
  // socket timeout), then the rest at once. (The timeout leaves a loaded machine room to
  // schedule the instance: CI once saw 300 ms pass without a chunk read.)
  const body = Buffer.alloc(2 * 1024 * 1024, 97)
  const path = '/consume-slowly?pace-ms=20&slow-chunks=100'
  const sized = await request(`${router.url}${path}`, { method: 'POST', headers: { 'x-waiter-token': 'twos', 'content-type': 'application/octet-stream' }, body })
  t.equal(sized.statusCode, 200, 'from an HTTP/1.1 client, with a length: answered')
  t.same(await sized.body.json(), { bytes: body.length }, 'every byte read')
  const session = connectH2(router.url)
  const viaH2 = await h2Request(session, { ':method': 'POST', ':path': path, 'x-waiter-token': 'twos' }, body.toString())
  session.close()
  t.equal(viaH2.status, 200, 'from an HTTP/2 client: answered')
  t.same(JSON.parse(viaH2.body), { bytes: body.length }, 'every byte read')
})

t.test('an upload the instance refuses early (413, body unread) ends for an HTTP/2 client: its body is dropped or stopped, its stream and slot come back, its connection serves on', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'ones', kitchenToken())
  await createToken(router, 'twos', h2cToken())
  // Bigger than every flow-control window on the way (64 KB streams, the instance's sockets):
  // the client is still sending when the answer is complete.
  const upload = Buffer.alloc(4 * 1024 * 1024, 97)
  const file = join(t.testdir({}), 'upload.bin')
  writeFileSync(file, upload)
  const underWay = async (): Promise<number> => (await call(`${router.url}/state`)).json<{ 'in-flight-requests': number }>()['in-flight-requests']
  /** A POST whose body is `upload`, or never ends: its status, how its upload ended, its stream's reset code. */
  const post = (session: ReturnType<typeof connectH2>, path: string, token: string, body: Buffer | 'endless'): Promise<{ status: unknown; sent: string; rstCode: number | undefined }> =>
    new Promise((resolve, reject) => {
      const stream = session.request({ ':method': 'POST', ':path': path, 'x-waiter-token': token })
      let status: unknown
      let sent = 'not yet'
      let feed: NodeJS.Timeout | undefined
      const bound = setTimeout(() => reject(new Error(`${token} ${path}: the stream did not end within 5 s (status ${String(status)}, upload ${sent})`)), 5000)
      stream.on('response', (h) => (status = h[':status']))
      stream.on('error', () => undefined)
      stream.resume()
      stream.on('close', () => {
        clearTimeout(bound)
        clearInterval(feed)
        // (The upload's last write may be acknowledged in the same turn as the close.)
        setImmediate(() => resolve({ status, sent, rstCode: stream.rstCode }))
      })
      if (body === 'endless') {
        const chunk = Buffer.alloc(16 * 1024, 98)
        feed = setInterval(() => stream.write(chunk), 5)
      } else stream.end(body, () => (sent = 'whole'))
    })
  for (const token of ['ones', 'twos']) {
    const session = connectH2(router.url)
    const refused = await post(session, '/early', token, upload)
    t.same(refused, { status: 413, sent: 'whole', rstCode: h2constants.NGHTTP2_NO_ERROR }, `${token}: the early 413 is relayed, and the rest of the upload is taken and dropped`)
    // A body that never ends: read and dropped for a while, then stopped (RST_STREAM NO_ERROR).
    const endless = await post(session, '/early', token, 'endless')
    t.same(endless, { status: 413, sent: 'not yet', rstCode: h2constants.NGHTTP2_NO_ERROR }, `${token}: a body that keeps coming is stopped without error once answered`)
    await waitFor(`${token}: no request left under way but the one asking`, async () => ((await underWay()) === 1 ? true : undefined))
    const next = await h2Request(session, { ':method': 'POST', ':path': '/request-info', 'x-waiter-token': token, 'content-type': 'text/plain' }, 'after the refusal')
    t.equal(JSON.parse(next.body).body, 'after the refusal', `${token}: the same connection carries the next upload (its window is open)`)
    session.close()
    // curl reports the answer and finishes.
    const { stdout } = await run('curl', ['-sS', '--http2-prior-knowledge', '-H', `x-waiter-token: ${token}`, '--data-binary', `@${file}`, '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '20', `${router.url}/early`])
    t.equal(stdout, '413', `${token}: curl is told 413 and finishes`)
  }
  // An answer that ends on its headers (a 304) ends the stream the same way.
  const session = connectH2(router.url)
  t.teardown(() => session.close())
  for (const token of ['ones', 'twos']) {
    const headersOnly = await post(session, '/sleep?status=304', token, 'endless')
    t.same(headersOnly, { status: 304, sent: 'not yet', rstCode: h2constants.NGHTTP2_NO_ERROR }, `${token}: a 304 to a body that keeps coming: stopped once answered`)
    await waitFor(`${token}: and it is no longer under way`, async () => ((await underWay()) === 1 ? true : undefined))
  }
})

t.test('the gRPC content-type alone lets no request out of the body-idle bound: a silent gRPC-typed POST to an HTTP/1.1 service is cut as any other', async (t) => {
  const router = await startRouter(t, { 'server.bodyIdleTimeoutMs': 300 })
  await createToken(router, 'plain', kitchenToken())
  t.equal((await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'plain' } })).status, 200, 'warm')
  const session = connectH2(router.url)
  t.teardown(() => session.destroy())
  const started = Date.now()
  // /request-info waits for the whole body; an hour of streaming timeout is the caller's own.
  const stalled = await within('the silent POST to be cut', h2Request(session, { ':method': 'POST', ':path': '/request-info', 'x-waiter-token': 'plain', 'content-type': 'application/grpc', 'x-waiter-streaming-timeout': '3600000' }, 'x', { open: true }), 5000)
  const ms = Date.now() - started
  t.equal(stalled.headers['x-maitre-error'], 'MAITRE_CLIENT_TIMEOUT', 'the router cut it')
  t.match(stalled.trailers['grpc-message'], /The request body sent nothing for 300 ms/, 'as a body gone idle (told as a gRPC status, the client having asked in gRPC)')
  t.ok(ms < 3000, `after the 300 ms body-idle bound, not the hour of streaming timeout (${ms} ms)`)
})

t.test('a gRPC content-type on a request is no gRPC answer: an HTTP/2 instance’s ordinary answer to it is relayed whole, and the instance stays in rotation', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'twos', h2cToken())
  t.equal((await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'twos' } })).status, 200, 'warm')
  const id = (await call(`${router.url}/service-id`, { headers: { 'x-waiter-token': 'twos' } })).text
  const viaH1 = await request(`${router.url}/request-info`, { method: 'POST', headers: { 'x-waiter-token': 'twos', 'content-type': 'application/grpc' }, body: 'x' })
  t.equal(viaH1.statusCode, 200)
  t.match(await viaH1.body.json(), { body: 'x' }, 'an HTTP/1.1 client gets the answer whole')
  const session = connectH2(router.url)
  t.teardown(() => session.destroy())
  const viaH2 = await h2Request(session, { ':method': 'POST', ':path': '/request-info', 'x-waiter-token': 'twos', 'content-type': 'application/grpc' }, 'x')
  t.equal(viaH2.status, 200)
  t.equal(viaH2.trailers['grpc-status'], undefined, 'an HTTP/2 client gets no gRPC failure tacked on')
  const slots = (await call(`${router.url}/apps/${id}`)).json<{ slots: { ejectedUntil: number }[] }>().slots
  t.ok(slots.every((s) => s.ejectedUntil <= Date.now()), 'nothing was ejected')
  t.equal((await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'twos', 'x-waiter-queue-timeout': '2000' } })).status, 200, 'the next request is served')
})

t.test('an HTTP/2 instance that takes fewer streams per connection than its concurrency-level: requests beyond go on another connection, none waits out its socket timeout in a queue, nothing is ejected', async (t) => {
  const router = await startRouter(t)
  // Each request takes 2 s at the instance; one queued behind another connection's two streams
  // would take 4 s, past the 3 s socket timeout (1 s of margin both ways on a loaded machine).
  await createToken(router, 'narrow', h2cToken({ 'concurrency-level': 4, 'max-instances': 1, 'socket-timeout-ms': 3000 }, '--h2-max-streams 2'))
  const id = (await call(`${router.url}/service-id`, { headers: { 'x-waiter-token': 'narrow' } })).text
  const burst = (): Promise<number[]> => Promise.all([0, 1, 2, 3].map(async () => (await call(`${router.url}/sleep?sleep-ms=2000`, { headers: { 'x-waiter-token': 'narrow' } })).status))
  // Cold: the four reach the instance at once, before any connection to it knows its allowance.
  t.same(await burst(), [200, 200, 200, 200], 'four at once, cold, on an instance that takes two streams a connection: all served')
  t.same(await burst(), [200, 200, 200, 200], 'and again, warm')
  const slots = (await call(`${router.url}/apps/${id}`)).json<{ slots: { ejectedUntil: number }[] }>().slots
  t.ok(slots.every((s) => s.ejectedUntil <= Date.now()), 'nothing was ejected')
})

t.test('a gRPC trailers-only answer: its status and metadata reach the client as trailers, and what a trailer section may not carry (set-cookie, cache-control) stays in the head', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'twos', h2cToken())
  const session = connectH2(router.url)
  t.teardown(() => session.destroy())
  const answer = await h2Request(session, { ':method': 'POST', ':path': '/grpc-trailers-only', 'x-waiter-token': 'twos', 'content-type': 'application/grpc', te: 'trailers' }, '')
  t.equal(answer.status, 200)
  t.match(answer.headers, { 'content-type': 'application/grpc', 'set-cookie': ['jar=1'], 'cache-control': 'no-store' }, 'the head keeps what belongs in a head')
  t.match(answer.trailers, { 'grpc-status': '5', 'grpc-message': 'not found', 'x-kitchen-meta': 'kept' }, 'the status and the metadata come as trailers')
  t.equal(answer.trailers['set-cookie'], undefined, 'no cookie among the trailers, where a client would ignore it')
  t.equal(answer.trailers['cache-control'], undefined)
})

t.test('gRPC-Web is HTTP a browser reads: an instance’s status in the head stays in the head, over HTTP/2 and HTTP/1.1, and the router’s own refusals are ordinary HTTP errors', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'twos', h2cToken())
  const session = connectH2(router.url)
  t.teardown(() => session.destroy())
  const grpcWeb = { 'content-type': 'application/grpc-web+proto', 'x-grpc-web': '1', 'x-waiter-token': 'twos' }
  const overH2 = await h2Request(session, { ':method': 'POST', ':path': '/grpc-web-trailers-only', ...grpcWeb }, '')
  t.match(overH2.headers, { 'grpc-status': '5', 'grpc-message': 'no such thing', 'access-control-expose-headers': 'grpc-status,grpc-message' }, 'HTTP/2: status and CORS headers in the head')
  t.same(overH2.trailers, {}, 'and no trailers a browser could not read')
  const overH1 = await call(`${router.url}/grpc-web-trailers-only`, { method: 'POST', headers: grpcWeb, body: '' })
  t.match(overH1.headers, { 'grpc-status': '5', 'grpc-message': 'no such thing', 'access-control-expose-headers': 'grpc-status,grpc-message' }, 'HTTP/1.1: the same')
  const refused = await h2Request(session, { ':method': 'POST', ':path': '/x', ...grpcWeb, 'x-waiter-token': 'nope', accept: 'application/json' }, '')
  t.equal(refused.status, 404, 'an unknown token: a 404 a browser sees')
  t.notMatch(String(refused.headers['content-type']), /^application\/grpc/, 'not dressed as native gRPC')
})

t.test('a request with more header fields than an h2c instance’s HTTP/2 server takes (Node’s: 128, the router’s own included) is the client’s 431, and ejects nobody', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'twos', h2cToken())
  const h = { 'x-waiter-token': 'twos', accept: 'application/json' }
  t.equal((await call(`${router.url}/request-info`, { headers: h })).status, 200, 'the instance is up')
  const many = Object.fromEntries(Array.from({ length: 120 }, (_, i) => [`x-field-${i}`, 'v']))
  const refused = await call(`${router.url}/request-info`, { headers: { ...h, ...many } })
  t.equal(refused.status, 431, refused.text.slice(0, 300))
  t.match(refused.json(), { 'waiter-error': { message: /refused the request's header block/, details: { field: 'headers' } } })
  const next = await within('the next request', call(`${router.url}/request-info`, { headers: { ...h, 'x-waiter-queue-timeout': '2000' } }), 3000)
  t.equal(next.status, 200, 'the only instance was not ejected for it')
})
