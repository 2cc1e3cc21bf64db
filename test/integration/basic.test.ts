import t from 'tap'
import { call, createToken, kitchenToken, startRouter } from '../fixtures/router.ts'

t.test('create a token, call it: a cold start, then a warm echo', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'kitchen', kitchenToken())
  const first = await call(`${router.url}/request-info?x=1&y=%20z`, {
    headers: { 'x-waiter-token': 'kitchen', 'x-cid': 'cid-123', 'x-waiter-debug': 'true', 'x-secret': 's' },
  })
  t.equal(first.status, 200, first.text)
  t.equal(first.headers['x-maitre-cold-start'], 'true', 'the first request paid a cold start')
  t.equal(first.headers['x-cid'], 'cid-123', 'x-cid is echoed')
  t.match(first.headers['via'], /1\.1 maitre/)
  t.match(first.headers['x-waiter-service-id'], /^maitre-[0-9a-f]{32}$/, 'debug headers on request')
  const seen = first.json<{ headers: Record<string, string>; query: string }>()
  t.equal(seen.query, '?x=1&y=%20z', 'query string passed untouched')
  t.equal(seen.headers['x-cid'], 'cid-123')
  t.equal(seen.headers['x-waiter-token'], undefined, 'x-waiter-* headers are not forwarded')
  t.equal(seen.headers['x-secret'], 's')
  t.equal(seen.headers['x-forwarded-for'], '127.0.0.1')
  t.equal(seen.headers['x-forwarded-proto'], 'http')
  t.match(seen.headers['x-forwarded-host'], /^127\.0\.0\.1:\d+$/)
  t.match(seen.headers['via'], '1.1 maitre')
  t.match(seen.headers['authorization'], /^Basic /, 'the instance gets its Waiter credentials')

  const { request: httpRequest } = await import('node:http')
  const hopByHop = await new Promise<Record<string, string>>((resolve, reject) => {
    const req = httpRequest(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'kitchen', connection: 'keep-alive, x-secret', 'x-secret': 's', 'proxy-authorization': 'p' } }, (res) => {
      let text = ''
      res.on('data', (c: Buffer) => (text += c.toString()))
      res.on('end', () => resolve((JSON.parse(text) as { headers: Record<string, string> }).headers))
    })
    req.on('error', reject)
    req.end()
  })
  t.equal(hopByHop['x-secret'], undefined, 'headers named in Connection are hop-by-hop')
  t.equal(hopByHop['proxy-authorization'], undefined)

  const warm = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'kitchen' } })
  t.equal(warm.status, 200)
  t.equal(warm.headers['x-maitre-cold-start'], undefined, 'a warm request did not')
  t.ok(typeof warm.headers['x-cid'] === 'string' && warm.headers['x-cid'].length > 8, 'a cid is generated when absent')
  t.equal(warm.headers['x-waiter-service-id'], undefined, 'no debug headers without x-waiter-debug')
})

t.test('the Host name is a token; the router host is the API', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'kitchen.example', kitchenToken())
  const viaHost = await call(`${router.url}/request-info`, { headers: { host: 'kitchen.example' } })
  t.equal(viaHost.status, 200)
  t.equal(viaHost.json<{ path: string }>().path, '/request-info')
  const api = await call(`${router.url}/status`)
  t.same(api.json(), { status: 'ok' }, '/status with no x-waiter header is the router’s own')
  const proxied = await call(`${router.url}/status`, { headers: { 'x-waiter-token': 'kitchen.example' } })
  t.equal(proxied.text, 'ok', 'with x-waiter-token the same path goes to the service')
  const unknown = await call(`${router.url}/nothing`, { headers: { 'x-waiter-token': 'nope' } })
  t.equal(unknown.status, 404)
  t.equal(unknown.json<{ 'waiter-error': { message: string } }>()['waiter-error'].message, 'Token not found: nope')
})

t.test('methods, chunked and gzip bodies, large headers pass through', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'kitchen', kitchenToken())
  const h = { 'x-waiter-token': 'kitchen' }
  for (const method of ['POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'PROPFIND', 'MKCOL']) {
    const reply = await call(`${router.url}/request-info`, { method, headers: h, body: method === 'POST' || method === 'PUT' ? 'payload' : null })
    t.equal(reply.json<{ method: string }>().method, method)
  }
  const posted = await call(`${router.url}/request-info`, { method: 'POST', headers: h, body: 'hello body' })
  t.equal(posted.json<{ body: string }>().body, 'hello body')
  const head = await call(`${router.url}/request-info`, { method: 'HEAD', headers: h })
  t.equal(head.status, 200)
  t.equal(head.text, '')

  const chunked = await call(`${router.url}/chunked?chunks=4`, { headers: h })
  t.equal(chunked.text, 'chunk-0\nchunk-1\nchunk-2\nchunk-3\n')
  t.equal(chunked.headers['content-length'], undefined)

  const { request } = await import('undici')
  const { gunzipSync } = await import('node:zlib')
  const gz = await request(`${router.url}/gzip`, { headers: { ...h, 'accept-encoding': 'gzip' } })
  t.equal(gz.headers['content-encoding'], 'gzip', 'compressed bodies are not decoded')
  const raw = Buffer.from(await gz.body.arrayBuffer())
  t.match(gunzipSync(raw).toString(), /^hello from a gzipped kitchen/)

  const big = await call(`${router.url}/request-info`, { headers: { ...h, 'x-big': 'b'.repeat(24 * 1024 - 200) } })
  t.equal(big.status, 200, '24 KB of request headers are accepted')
  t.equal(big.json<{ headers: Record<string, string> }>().headers['x-big']?.length, 24 * 1024 - 200)

  // An interim 103 from the instance is the hop's business: the client gets the final answer whole.
  const hinted = await call(`${router.url}/early-hints`, { headers: h })
  t.equal(hinted.status, 200, 'a 103 Early Hints before the answer does not break the response')
  t.same(hinted.json(), { hinted: true })
})

t.test('a streamed answer’s first chunk reaches the client as it comes, not with the next one', async (t) => {
  // The router holds an answer's first chunk until the read it came in is parsed, so a whole
  // answer leaves with its head in one write: a stream must not wait for its next chunk.
  const router = await startRouter(t)
  await createToken(router, 'kitchen', kitchenToken())
  const h = { 'x-waiter-token': 'kitchen' }
  t.equal((await call(`${router.url}/request-info`, { headers: h })).status, 200)
  const { request } = await import('undici')
  const stream = new AbortController()
  t.teardown(() => stream.abort())
  // The second chunk comes 60 s after the first.
  const res = await request(`${router.url}/chunked?chunks=2&delay-ms=60000`, { headers: h, signal: stream.signal })
  t.equal(res.statusCode, 200)
  const first = await new Promise<string>((resolve, reject) => {
    const bound = setTimeout(() => reject(new Error('no chunk within 20 s')), 20_000)
    res.body.once('data', (chunk: Buffer) => {
      clearTimeout(bound)
      resolve(chunk.toString())
    })
    res.body.once('error', reject)
  })
  t.equal(first, 'chunk-0\n', 'the first chunk alone, long before the second')
  stream.abort()
  res.body.on('error', () => undefined)
})

t.test('errors are negotiated by Accept and carry x-cid', async (t) => {
  const router = await startRouter(t)
  const json = await call(`${router.url}/x`, { headers: { 'x-waiter-token': 'missing', 'x-cid': 'abc' } })
  t.equal(json.status, 404)
  t.equal(json.headers['x-cid'], 'abc')
  const body = json.json<{ 'waiter-error': Record<string, unknown> }>()['waiter-error']
  t.equal(body['cid'], 'abc')
  t.equal(body['status'], 404)
  t.equal(body['uri'], '/x')
  const html = await call(`${router.url}/x`, { headers: { 'x-waiter-token': 'missing', accept: 'text/html' } })
  t.match(html.headers['content-type'], 'text/html')
  t.match(html.text, '<h1>Waiter Error 404</h1>')
  const text = await call(`${router.url}/x`, { headers: { 'x-waiter-token': 'missing', accept: 'text/plain' } })
  t.match(text.text, /^Waiter Error 404\n=+\n\nToken not found: missing/)
})

t.test('on-the-fly parameters are off by default and work when enabled', async (t) => {
  const off = await startRouter(t)
  const refused = await call(`${off.url}/request-info`, { headers: { 'x-waiter-cmd': 'rm -rf /', 'x-waiter-cpus': '1', 'x-waiter-mem': '64', 'x-waiter-version': 'x' } })
  t.equal(refused.status, 403)
  t.match(refused.json<{ 'waiter-error': { message: string } }>()['waiter-error'].message, 'On-the-fly service parameters are disabled')

  const on = await startRouter(t, { 'proxy.allowOnTheFly': true })
  const headers = { 'x-waiter-cmd': `${process.execPath} ${(await import('../fixtures/router.ts')).KITCHEN}`, 'x-waiter-cpus': '0.1', 'x-waiter-mem': '256', 'x-waiter-version': 'otf', 'x-waiter-env-greeting': 'hi' }
  const env = await call(`${on.url}/environment`, { headers })
  t.equal(env.status, 200, env.text)
  const vars = env.json<Record<string, string>>()
  t.equal(vars['GREETING'], 'hi', 'x-waiter-env-* becomes env')
  t.match(vars['WAITER_SERVICE_ID'], /^maitre-/)
  t.equal(vars['WAITER_CONCURRENCY_LEVEL'], '1')
  t.match(vars['PORT0'], /^\d+$/)
  t.ok(vars['WAITER_SANDBOX']?.includes(vars['WAITER_SERVICE_ID'] ?? '-'), 'the sandbox is per service')
  const bad = await call(`${on.url}/x`, { headers: { ...headers, 'x-waiter-cpus': 'bad-cpus' } })
  t.equal(bad.status, 400)
  t.match(bad.json<{ 'waiter-error': { message: string } }>()['waiter-error'].message, 'cpus must be a positive number.')
  // The refused request harmed nothing: the version's instance is still up and serves warm.
  const again = await call(`${on.url}/environment`, { headers })
  t.equal(again.status, 200, again.text)
  t.equal(again.headers['x-maitre-cold-start'], undefined, 'the instance stayed up: no second cold start')
  t.equal(again.json<Record<string, string>>()['PORT0'], vars['PORT0'], 'the same instance answers')
  const app = (await call(`${on.url}/apps/${vars['WAITER_SERVICE_ID'] ?? ''}?include=references`)).json<{ references: unknown[] }>()
  t.same(app.references, [{}], 'reached on the fly: Waiter’s empty reference')
})
