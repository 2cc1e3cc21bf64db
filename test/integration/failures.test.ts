import t from 'tap'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { createServer } from 'node:net'
import { get as httpGet } from 'node:http'
import { Agent, request } from 'undici'
import { call, createToken, kitchenToken, startRouter, waitFor } from '../fixtures/router.ts'
import { raw } from '../fixtures/raw-http.ts'

type WaiterError = { 'waiter-error': { message: string; status: number; details: Record<string, unknown> } }
const message = (r: { json<T>(): T }): string => r.json<WaiterError>()['waiter-error'].message

t.test('a malformed descriptor is a 400 naming every field', async (t) => {
  const router = await startRouter(t)
  const reply = await call(`${router.url}/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ token: 'bad', cmd: '', cpus: 'many', mem: 64, 'max-instances': 0, 'min-instances': 3 }),
  })
  t.equal(reply.status, 400)
  const err = reply.json<WaiterError>()['waiter-error']
  t.match(err.message, /^Service description using waiter headers\/token improperly configured\n/)
  t.match(err.message, 'cpus must be a positive number.')
  t.match(err.message, 'cmd must be a non-empty string.')
  t.match(err.message, 'max-instances must be an integer in the range [1, 2000].')
  t.same((err.details['fields'] as string[]).sort(), ['cmd', 'cpus', 'max-instances'])
  t.notMatch(reply.text, /\bat .*\.ts:\d+/, 'no stack trace')
  const badJson = await call(`${router.url}/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"token": ' })
  t.equal(badJson.status, 400)
  t.match(message(badJson), 'Invalid JSON in request body')
  const partial = await call(`${router.url}/token`, { method: 'POST', body: JSON.stringify({ token: 'partial', cpus: 1 }) })
  t.equal(partial.status, 200, 'a token may hold a partial description')
  const run = await call(`${router.url}/x`, { headers: { 'x-waiter-token': 'partial' } })
  t.equal(run.status, 400, 'but it cannot run until complete')
  t.match(message(run), 'cmd must be provided.')
  t.equal((await call(`${router.url}/status`)).status, 200, 'the router is unharmed')
})

t.test('queue bounds: length and time give Waiter’s 503s', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'slow', kitchenToken({ 'max-queue-length': 1, 'max-instances': 1 }))
  const h = { 'x-waiter-token': 'slow' }
  const warm = await call(`${router.url}/status`, { headers: { ...h, 'x-waiter-debug': 'true' } })
  t.equal(warm.status, 200, 'warm')
  // The busy request lasts until the test creates its file in the sandbox.
  const sandbox = warm.headers['x-waiter-backend-directory'] as string
  const busy = call(`${router.url}/wait-file?name=release-busy`, { headers: h })
  await waitFor('the slot to be taken', async () => ((await call(`${router.url}/apps`)).json<{ 'request-metrics': { 'in-flight': number } }[]>()[0]?.['request-metrics']['in-flight'] === 1 ? true : undefined))
  const queued = call(`${router.url}/request-info`, { headers: { ...h, 'x-waiter-queue-timeout': '400' } })
  await waitFor('the queue to fill', async () => ((await call(`${router.url}/apps`)).json<{ 'request-metrics': { queued: number } }[]>()[0]?.['request-metrics'].queued === 1 ? true : undefined))
  const full = await call(`${router.url}/request-info`, { headers: h })
  t.equal(full.status, 503)
  t.equal(message(full), 'Max queue length exceeded')
  t.equal(full.headers['x-maitre-error'], 'MAITRE_QUEUE_FULL')
  const timedOut = await queued
  t.equal(timedOut.status, 503)
  t.equal(message(timedOut), 'After 0.4 seconds, no instance available to handle request. Check that your service is able to scale properly!')
  writeFileSync(join(sandbox, 'release-busy'), '')
  t.equal((await busy).status, 200, 'the request holding the slot was not disturbed')
})

t.test('a version the router cannot launch at all (every port of its range taken) fails with the launch’s own reason, not a health-check message', async (t) => {
  // The range's one port is held by another process, as a stranger on the host would.
  const stranger = createServer()
  await new Promise<void>((resolve) => stranger.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => stranger.close(() => resolve())))
  const port = (stranger.address() as { port: number }).port
  const router = await startRouter(t, { 'backend.local.portRange': [port, port] })
  await createToken(router, 'portless', kitchenToken())
  const reply = await call(`${router.url}/x`, { headers: { 'x-waiter-token': 'portless', 'x-waiter-queue-timeout': '20000' } })
  t.equal(reply.status, 503)
  t.equal(message(reply), `Deployment error: Launch failed: No free ports left in the range ${port}-${port} (EADDRINUSE: 1)`, 'the reason, and why the port was passed over')
  const id = (await call(`${router.url}/service-id`, { headers: { 'x-waiter-token': 'portless' } })).text
  const app = (await call(`${router.url}/apps/${id}`)).json<{ status: string; 'deployment-error-message': string }>()
  t.equal(app.status, 'Failing')
  t.match(app['deployment-error-message'], /^Deployment error: Launch failed: No free ports/)
})

t.test('a bad command is a deployment error within seconds, and the service is Failing', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'broken', { cmd: 'asdf-no-such-command --port $PORT0', cpus: 0.1, mem: 64, version: 'v1' })
  const started = Date.now()
  const reply = await call(`${router.url}/x`, { headers: { 'x-waiter-token': 'broken' } })
  const took = Date.now() - started
  t.equal(reply.status, 503)
  t.equal(message(reply), 'Deployment error: Invalid startup command')
  t.ok(took < 5000, `answered in ${took} ms, not after the queue timeout`)
  const id = (await call(`${router.url}/service-id`, { headers: { 'x-waiter-token': 'broken' } })).text
  const app = (await call(`${router.url}/apps/${id}`)).json<{ status: string; 'deployment-error-message': string; instances: { 'failed-instances': { 'exit-code': number }[] } }>()
  t.equal(app.status, 'Failing')
  t.equal(app['deployment-error-message'], 'Deployment error: Invalid startup command', 'Waiter’s wording')
  t.equal(app.instances['failed-instances'][0]?.['exit-code'], 127)
  const again = await call(`${router.url}/x`, { headers: { 'x-waiter-token': 'broken' } })
  t.equal(again.status, 503, 'later requests fail at once too')
})

t.test('an instance killed by a signal has the shell\'s exit code 128 + its number, and a failed instance links its kept logs', async (t) => {
  const router = await startRouter(t)
  // The instance's own shell dies of SIGBUS (7): 135, as a shell would report it.
  await createToken(router, 'bus', { cmd: 'echo about to die >&2; kill -BUS $$', cpus: 0.1, mem: 64, version: 'v1' })
  const reply = await call(`${router.url}/x`, { headers: { 'x-waiter-token': 'bus' } })
  t.equal(reply.status, 503)
  const id = (await call(`${router.url}/service-id`, { headers: { 'x-waiter-token': 'bus' } })).text
  const app = (await call(`${router.url}/apps/${id}`)).json<{ instances: { 'failed-instances': { 'exit-code': number; message: string; 'log-url'?: string }[] } }>()
  const failed = app.instances['failed-instances'][0]
  t.equal(failed?.['exit-code'], 135, 'SIGBUS: 128 + 7')
  t.equal(failed?.message, 'Exited with code 135')
  t.match(failed?.['log-url'], `/apps/${id}/logs?instance-id=`, 'a link to its kept logs')
  const stderr = await call(`${router.url}${failed?.['log-url'] ?? ''}&file=stderr`)
  t.equal(stderr.status, 200)
  t.match(stderr.text, 'about to die', 'which serve what it wrote')
})

t.test('a health check that never passes, and an instance over its memory, are deployment errors', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'sick', kitchenToken({ 'grace-period-secs': 1 }, '--health-status 402'))
  const sick = await call(`${router.url}/x`, { headers: { 'x-waiter-token': 'sick' } })
  t.equal(message(sick), 'Deployment error: Health check returned an invalid response')
  await createToken(router, 'hog', kitchenToken({ mem: 100 }, '--hold-mb 200 --start-up-sleep-ms 15000'))
  const hog = await call(`${router.url}/x`, { headers: { 'x-waiter-token': 'hog', 'x-waiter-queue-timeout': '20000' } })
  t.equal(hog.status, 503, hog.text)
  t.equal(message(hog), 'Deployment error: Not enough memory allocated')
})

t.test('an instance killed mid-request: 502, then the next request succeeds on a fresh instance', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'kitchen', kitchenToken())
  const h = { 'x-waiter-token': 'kitchen' }
  const first = await call(`${router.url}/request-info`, { headers: { ...h, 'x-waiter-debug': 'true' } })
  const { pid } = first.json<{ pid: number }>()
  const sandbox = first.headers['x-waiter-backend-directory'] as string
  const pending = call(`${router.url}/sleep?sleep-ms=5000`, { headers: h })
  // Kill only once the app itself has the request, as its own log shows.
  await waitFor('the app to start the slow request', () => (readFileSync(join(sandbox, 'requests.log'), 'utf8').includes('/sleep') ? true : undefined))
  process.kill(pid, 'SIGKILL')
  const cut = await pending
  t.equal(cut.status, 502)
  t.equal(message(cut), 'Request to service backend failed')
  const next = await call(`${router.url}/request-info`, { headers: h })
  t.equal(next.status, 200)
  t.not(next.json<{ pid: number }>().pid, pid, 'a fresh instance')
})

t.test('a backend slower than x-waiter-timeout is a 504', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'kitchen', kitchenToken())
  const reply = await call(`${router.url}/sleep?sleep-ms=3000`, { headers: { 'x-waiter-token': 'kitchen', 'x-waiter-timeout': '300' } })
  t.equal(reply.status, 504)
  t.equal(message(reply), 'Request to service backend timed out')
})

t.test('a body that stalls past the streaming timeout is cut off', async (t) => {
  // The cut counts against the instance, which is ejected for proxy.ejectBaseMs (10 s by default):
  // a short ejection lets the second request reach the same, only instance without waiting it out.
  const router = await startRouter(t, { 'proxy.ejectBaseMs': 100 })
  await createToken(router, 'kitchen', kitchenToken())
  const h = { 'x-waiter-token': 'kitchen' }
  // 1.5 s between chunks against a 300 ms streaming timeout: cut after the first chunk. With the
  // default (20 s) the whole 3 s body would arrive and the call would not reject.
  await t.rejects(call(`${router.url}/chunked?chunks=3&delay-ms=1500`, { headers: { ...h, 'x-waiter-streaming-timeout': '300' } }))
  const ok = await call(`${router.url}/chunked?chunks=3&delay-ms=100`, { headers: { ...h, 'x-waiter-streaming-timeout': '1000' } })
  t.equal(ok.text, 'chunk-0\nchunk-1\nchunk-2\n')
})

t.test('short timeouts are kept to the millisecond scale, not a second late: a 100 ms x-waiter-timeout beats a 400 ms answer; a 150 ms streaming timeout cuts a 400 ms silence', async (t) => {
  const router = await startRouter(t, { 'proxy.ejectBaseMs': 100 })
  await createToken(router, 'kitchen', kitchenToken())
  const h = { 'x-waiter-token': 'kitchen' }
  t.equal((await call(`${router.url}/status`, { headers: h })).status, 200)
  // (undici's own timers, which never fire before ~500 ms, let the answer come first: 200.)
  const late = await call(`${router.url}/sleep?sleep-ms=400`, { headers: { ...h, 'x-waiter-timeout': '100' } })
  t.equal(late.status, 504, 'the 400 ms answer is past the 100 ms timeout')
  // What arrives of a body whose chunks come 400 ms apart, against a 150 ms streaming timeout.
  const received = await new Promise<string>((resolve) => {
    const url = new URL(`${router.url}/chunked?chunks=4&delay-ms=400`)
    let body = ''
    const req = httpGet({ host: url.hostname, port: url.port, path: `${url.pathname}${url.search}`, headers: { ...h, 'x-waiter-streaming-timeout': '150' } }, (res) => {
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => (body += chunk))
      res.on('error', () => undefined)
      res.on('close', () => resolve(body))
    })
    req.on('error', () => resolve(body))
  })
  t.equal(received, 'chunk-0\n', 'cut in the first silence, not after more chunks')
})

t.test('an answer head past undici’s and Node’s 16 KiB is relayed up to 64 KiB; past that it is a 502 naming the limit, and the instance stays in rotation', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'kitchen', kitchenToken())
  const h = { 'x-waiter-token': 'kitchen' }
  // A client that reads heads this big itself.
  const client = new Agent({ maxHeaderSize: 256 * 1024 })
  t.teardown(() => client.close())
  const ask = async (path: string, method: string, headers: Record<string, string>): Promise<{ status: number; headers: Record<string, unknown>; text: string }> => {
    const res = await request(`${router.url}${path}`, { dispatcher: client, method: method as 'GET', headers, body: method === 'POST' ? 'x' : null })
    return { status: res.statusCode, headers: res.headers, text: await res.body.text() }
  }
  for (const method of ['GET', 'POST']) {
    // (A POST has a body, which goes through Node's client; a GET through undici.)
    const big = await ask('/big-head?bytes=40000', method, h)
    t.equal(big.status, 200, `${method}: a 40 KB head is relayed`)
    t.equal(String(big.headers['x-big']).length, 40000)
    const huge = await ask('/big-head?bytes=70000', method, { ...h, accept: 'application/json' })
    t.equal(huge.status, 502, `${method}: a 70 KB head is refused`)
    t.match(JSON.parse(huge.text), { 'waiter-error': { message: /answer head .* is over 64 KiB/, details: { limit: 'answer-head-bytes', max: 65536 } } })
    const next = await call(`${router.url}/request-info`, { headers: { ...h, 'x-waiter-queue-timeout': '2000' } })
    t.equal(next.status, 200, `${method}: the only instance was not ejected for it`)
  }
  t.notMatch((await call(`${router.url}/metrics`)).text, /^maitre_ejections_total\{/m, 'no ejection counted')
})

t.test('an instance that sends 100 Continue nobody asked for (RFC 9110 has a client accept it) is served: a safe request is sent again through Node’s client, an unsafe one is a 502 that ejects nothing, and every later request goes through Node’s client', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'kitchen', kitchenToken())
  const h = { 'x-waiter-token': 'kitchen', accept: 'application/json' }
  t.equal((await call(`${router.url}/request-info`, { headers: h })).status, 200, 'the instance is up')
  const unsafe = await call(`${router.url}/continue-anyway`, { method: 'DELETE', headers: h })
  t.equal(unsafe.status, 502, 'a bodiless DELETE that met it is not sent twice')
  t.match(message(unsafe), /100 Continue .* did not ask for it/)
  for (const method of ['DELETE', 'GET', 'HEAD']) {
    const after = await call(`${router.url}/continue-anyway`, { method, headers: h })
    t.equal(after.status, 200, `${method} afterwards: through Node's client, which accepts the 100`)
    if (method !== 'HEAD') t.match(after.json(), { method, continued: true })
  }
  t.notMatch((await call(`${router.url}/metrics`)).text, /^maitre_ejections_total\{/m, 'the instance was never ejected')
})

t.test('a safe request that meets an unsolicited 100 first is sent again at once, not failed', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'kitchen', kitchenToken())
  const h = { 'x-waiter-token': 'kitchen', accept: 'application/json' }
  const first = await call(`${router.url}/continue-anyway`, { headers: h })
  t.equal(first.status, 200, first.text)
  t.match(first.json(), { method: 'GET', continued: true })
})

t.test('an answer with Content-Length among its trailers (which HTTP/1.1 parsers refuse): a bodiless request gets the whole body without them, a request with a body is cut; the instance stays in rotation either way', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'kitchen', kitchenToken())
  const h = { 'x-waiter-token': 'kitchen' }
  const got = await call(`${router.url}/trailers?content-length=20&x-ok=1`, { headers: h })
  t.equal(got.status, 200)
  t.equal(got.text, 'body before trailers', 'the whole body, ended as a message')
  const posted = request(`${router.url}/trailers?content-length=20`, { method: 'POST', headers: h, body: 'x' }).then((r) => r.body.text())
  await t.rejects(posted, 'through Node’s client (a body), the answer is cut: part of it may be unread')
  const next = await call(`${router.url}/request-info`, { headers: { ...h, 'x-waiter-queue-timeout': '2000' } })
  t.equal(next.status, 200, 'the only instance was not ejected')
  t.notMatch((await call(`${router.url}/metrics`)).text, /^maitre_ejections_total\{/m, 'no ejection counted')
})

t.test('an answer in a transfer coding besides chunked (gzip, chunked) is a 502 naming it, not a body relayed still encoded; the instance stays in rotation', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'kitchen', kitchenToken())
  const h = { 'x-waiter-token': 'kitchen', accept: 'application/json' }
  for (const method of ['GET', 'POST']) {
    // (A POST has a body, which goes through Node's client; a GET through undici.)
    const reply = await call(`${router.url}/te-gzip`, { method, headers: h, body: method === 'POST' ? 'x' : null })
    t.equal(reply.status, 502, `${method}: refused`)
    t.match(reply.json(), { 'waiter-error': { message: /transfer coding "gzip, chunked"/, details: { field: 'transfer-encoding', rule: 'chunked only' } } })
  }
  const next = await call(`${router.url}/request-info`, { headers: { ...h, 'x-waiter-queue-timeout': '2000' } })
  t.equal(next.status, 200, 'the only instance was not ejected')
})

t.test('an answer head is relayed byte for byte: a UTF-8 file name in a Content-Disposition after the Content-Length is neither refused nor rewritten, and a field named in a Connection field sent on two lines stays hop-by-hop', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'kitchen', kitchenToken())
  const h = { 'x-waiter-token': 'kitchen' }
  for (const method of ['GET', 'POST']) {
    // (A POST has a body, which goes through Node's client; a GET through undici.)
    const res = await request(`${router.url}/raw-answer?kind=disposition`, { method: method as 'GET', headers: h, body: method === 'POST' ? 'x' : null })
    t.equal(res.statusCode, 200, `${method}: relayed`)
    await res.body.text()
    // (undici reads header bytes as latin1: the bytes the instance sent are the string's.)
    t.equal(Buffer.from(String(res.headers['content-disposition']), 'latin1').toString('utf8'), 'attachment; filename="文件-résumé.pdf"', `${method}: the file name's bytes as the instance sent them`)
  }
  const conn = await request(`${router.url}/raw-answer?kind=connection`, { headers: h })
  await conn.body.text()
  t.equal(conn.headers['x-secret'], undefined, 'x-secret, named in the second Connection line, does not reach the client')
  // The other way: a client's upload with the same order of fields reaches the instance as sent.
  const upload = await (await raw(router.url, 'POST /request-info HTTP/1.1\r\nhost: 127.0.0.1\r\nx-waiter-token: kitchen\r\ncontent-length: 1\r\ncontent-disposition: attachment; filename="文件.pdf"\r\nconnection: close\r\n\r\nx')).closed
  const seen = JSON.parse(Buffer.from(upload.slice(upload.indexOf('\r\n\r\n') + 4), 'latin1').toString('utf8')) as { headers: Record<string, string> }
  t.equal(Buffer.from(seen.headers['content-disposition'] ?? '', 'latin1').toString('utf8'), 'attachment; filename="文件.pdf"', 'the upload’s file name reaches the instance byte for byte')
})

t.test('an instance answering 503 is ejected: the next request goes elsewhere', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'pair', kitchenToken({ 'min-instances': 2 }))
  const h = { 'x-waiter-token': 'pair', 'x-waiter-debug': 'true' }
  await call(`${router.url}/status`, { headers: h })
  const id = (await call(`${router.url}/service-id`, { headers: { 'x-waiter-token': 'pair' } })).text
  await waitFor('two healthy instances', async () => ((await call(`${router.url}/apps/${id}`)).json<{ 'instance-counts': { 'healthy-instances': number } }>()['instance-counts']['healthy-instances'] === 2 ? true : undefined))
  const busy = await call(`${router.url}/request-info`, { headers: { ...h, 'x-kitchen-act-busy': 'true' } })
  t.equal(busy.status, 503, 'the backend’s 503 reaches the client')
  const next = await call(`${router.url}/request-info`, { headers: h })
  t.equal(next.status, 200)
  t.not(next.headers['x-waiter-backend-id'], busy.headers['x-waiter-backend-id'], 'the busy instance is skipped')
})

t.test('a client that aborts frees its slot at once', async (t) => {
  const router = await startRouter(t)
  // One instance with one slot: the next request can only be served in the slot the aborted one held.
  await createToken(router, 'kitchen', kitchenToken({ 'max-instances': 1 }))
  const h = { 'x-waiter-token': 'kitchen' }
  const warm = await call(`${router.url}/request-info`, { headers: { ...h, 'x-waiter-debug': 'true' } })
  const sandbox = warm.headers['x-waiter-backend-directory'] as string
  const controller = new AbortController()
  const aborted = call(`${router.url}/sleep?sleep-ms=10000`, { headers: { ...h, 'x-cid': 'leaver' }, signal: controller.signal })
  // Abort only once the app itself has the request, as its own log shows.
  await waitFor('the app to start the slow request', () => (readFileSync(join(sandbox, 'requests.log'), 'utf8').includes('start leaver /sleep') ? true : undefined))
  controller.abort()
  await t.rejects(aborted)
  const started = Date.now()
  // Had the slot stayed taken, this would wait for the app's 10 s sleep, and get a 503 at its 5 s queue timeout.
  const next = await call(`${router.url}/request-info`, { headers: { ...h, 'x-waiter-queue-timeout': '5000' } })
  t.equal(next.status, 200, next.text)
  t.ok(Date.now() - started < 2000, 'the next request did not wait for the aborted one')
  await waitFor('the app to see the aborted request cut', () => (readFileSync(join(sandbox, 'requests.log'), 'utf8').includes('cut leaver /sleep') ? true : undefined))
  const apps = (await call(`${router.url}/apps`)).json<{ 'request-metrics': { outstanding: number } }[]>()
  t.equal(apps[0]?.['request-metrics'].outstanding, 0)
})


t.test('an instance that refuses connections is a 502 and is ejected', async (t) => {
  const router = await startRouter(t)
  // Healthy on its second port, deaf on the first: every request's connection is refused.
  await createToken(router, 'deaf', kitchenToken({ ports: 2, 'health-check-port-index': 1 }, '--port $PORT1'))
  // The queue timeout only has to cover the cold start, however slow the machine is.
  const reply = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'deaf', 'x-waiter-queue-timeout': '10000' } })
  t.equal(reply.status, 502)
  t.equal(message(reply), 'Request failed to connect to service backend')
  const id = (await call(`${router.url}/service-id`, { headers: { 'x-waiter-token': 'deaf' } })).text
  const slots = (await call(`${router.url}/apps/${id}`)).json<{ slots: { ejectedUntil: number }[] }>().slots
  t.ok((slots[0]?.ejectedUntil ?? 0) > Date.now(), 'the instance is ejected')
  const next = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'deaf', 'x-waiter-queue-timeout': '300' } })
  t.equal(next.status, 503, 'while ejected it gets no requests: they wait, then time out')
})

t.test('a token’s queue-timeout-ms applies when the request says nothing', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'slow', kitchenToken({ 'queue-timeout-ms': 300, 'max-instances': 1 }))
  const h = { 'x-waiter-token': 'slow' }
  // The warm-up's own cold start may take longer than the token's 300 ms on a busy machine.
  const warm = await call(`${router.url}/status`, { headers: { ...h, 'x-waiter-queue-timeout': '20000', 'x-waiter-debug': 'true' } })
  t.equal(warm.status, 200)
  // The busy request lasts until the test creates its file in the sandbox.
  const sandbox = warm.headers['x-waiter-backend-directory'] as string
  const busy = call(`${router.url}/wait-file?name=release-busy`, { headers: h })
  await waitFor('the slot to be taken', async () => ((await call(`${router.url}/apps`)).json<{ 'request-metrics': { 'in-flight': number } }[]>()[0]?.['request-metrics']['in-flight'] === 1 ? true : undefined))
  const waited = await call(`${router.url}/request-info`, { headers: h })
  t.equal(message(waited), 'After 0.3 seconds, no instance available to handle request. Check that your service is able to scale properly!')
  const header = await call(`${router.url}/request-info`, { headers: { ...h, 'x-waiter-queue-timeout': '200' } })
  t.match(message(header), /^After 0\.2 seconds/, 'the header wins over the token')
  writeFileSync(join(sandbox, 'release-busy'), '')
  t.equal((await busy).status, 200)
})
