/**
 * The API and the names it answers to: a browser must address the router by one of its own
 * host names (DNS rebinding), and a request target that is no path is a 400.
 */
import t from 'tap'
import { connect } from 'node:net'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { call, kitchenToken, startRouter } from '../fixtures/router.ts'
import { AUDIENCE, ISSUER, mint, signingKey, writeJwks } from '../fixtures/jwt.ts'

t.test('DNS rebinding: a page of another site whose name points at the router cannot register a command, nor read the API, through the browser', async (t) => {
  const router = await startRouter(t)
  const port = new URL(router.url).port
  const marker = join(t.testdir(), 'pwned')
  const attacker = `rebind.attacker.example:${port}`
  t.equal((await call(`${router.url}/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: 'mine', ...kitchenToken() }) })).status, 200)
  // What the browser sends for the page's own (same-origin) fetch: the page's host, its origin.
  const write = await call(`${router.url}/token`, {
    method: 'POST',
    headers: { host: attacker, origin: `http://${attacker}`, 'sec-fetch-site': 'same-origin', 'content-type': 'application/json' },
    body: JSON.stringify({ token: 'rb', ...kitchenToken(), cmd: `touch ${marker}` }),
  })
  t.equal(write.status, 403, 'the token write is refused')
  t.match(write.json(), { 'waiter-error': { code: 'MAITRE_CORS_REQUEST_FORBIDDEN', message: /one of its own host names/ } })
  const read = await call(`${router.url}/token?token=mine`, { headers: { host: attacker, 'sec-fetch-site': 'same-origin' } })
  t.equal(read.status, 403, 'a read without Origin (a same-origin GET) is refused too')
  const other = await call(`${router.url}/tokens`, { headers: { host: attacker, 'sec-fetch-site': 'same-origin' } })
  t.not(other.status, 200, 'and a path that is the API only on the router’s own names is no API call here (Waiter: a request for the token the Host names)')
  t.equal((await call(`${router.url}/token?token=rb`)).status, 404, 'nothing was registered')
  t.notOk(existsSync(marker), 'and nothing ran')

  // The router's own names still serve browsers, and clients outside a browser are as before.
  const own = await call(`${router.url}/token`, {
    method: 'POST',
    headers: { origin: `http://127.0.0.1:${port}`, 'sec-fetch-site': 'same-origin', 'content-type': 'application/json' },
    body: JSON.stringify({ token: 'ours', ...kitchenToken() }),
  })
  t.equal(own.status, 200, 'a page of the router’s own origin writes a token')
  const byHost = await call(`${router.url}/token`, { headers: { host: 'mine' } })
  t.equal(byHost.status, 200, 'curl naming the token by Host (Waiter’s GET /token) still reads it')
  const nodeFetch = await call(`${router.url}/token?token=mine`, { headers: { host: attacker, 'sec-fetch-mode': 'cors' } })
  t.equal(nodeFetch.status, 200, 'a client outside a browser that sends Sec-Fetch-Mode (undici’s fetch does) is no browser')

  // The data path: the page cannot call a service it names in headers, as the one-user admin.
  const proxied = await call(`${router.url}/request-info`, { headers: { host: attacker, 'sec-fetch-site': 'same-origin', 'x-waiter-token': 'mine' } })
  t.equal(proxied.status, 403, 'a browser under a foreign Host naming a token in x-waiter-token is refused')
  const onTheFly = await call(`${router.url}/request-info`, { headers: { host: attacker, origin: `http://${attacker}`, 'x-waiter-cmd': `touch ${marker}`, 'x-waiter-cpus': '1', 'x-waiter-mem': '64', 'x-waiter-version': '1' } })
  t.equal(onTheFly.status, 403, 'as is one naming a command on the fly')
  t.notOk(existsSync(marker), 'and nothing ran')
  const ownHost = await call(`${router.url}/request-info`, { headers: { host: `mine:${port}`, 'sec-fetch-site': 'same-origin' } })
  t.equal(ownHost.status, 200, 'a page of a token’s own host calling that token is served')
  const viaRouter = await call(`${router.url}/request-info`, { headers: { 'sec-fetch-site': 'same-origin', 'x-waiter-token': 'mine' } })
  t.equal(viaRouter.status, 200, 'and a page of the router’s own origin may name a token in headers')
})

t.test('a router that does not trust callers by their address (JWT) has nothing for a rebinding page to borrow: no Host rule for browsers', async (t) => {
  const key = await signingKey('ES256', 'k')
  const file = join(t.testdir(), 'jwks.json')
  writeJwks(file, [key])
  const router = await startRouter(t, { 'auth.kind': 'jwt', 'auth.admins': ['root'], 'auth.jwt.jwksFile': file, 'auth.jwt.issuer': ISSUER, 'auth.jwt.audience': AUDIENCE })
  const reply = await call(`${router.url}/token?token=none`, { headers: { host: 'elsewhere.example', 'sec-fetch-site': 'same-origin', authorization: `Bearer ${await mint(key, { sub: 'root' })}` } })
  t.equal(reply.status, 404, 'answered (the token does not exist), not refused')
})

t.test('a router bound to every interface still answers to the host 0.0.0.0 it logs', async (t) => {
  const key = await signingKey('ES256', 'k')
  const file = join(t.testdir(), 'jwks.json')
  writeJwks(file, [key])
  const router = await startRouter(t, { 'server.host': '0.0.0.0', 'auth.kind': 'jwt', 'auth.admins': ['root'], 'auth.jwt.jwksFile': file, 'auth.jwt.issuer': ISSUER, 'auth.jwt.audience': AUDIENCE })
  const port = new URL(router.url).port
  t.same((await call(`${router.url}/status`, { headers: { host: `0.0.0.0:${port}` } })).json(), { status: 'ok' })
})

t.test('a request target that is no path gets a 400 from the API, not a 500', async (t) => {
  const router = await startRouter(t)
  const port = Number(new URL(router.url).port)
  for (const target of ['http://[', '//[/token', 'http://x:99999/token']) {
    const head = await new Promise<string>((resolve, reject) => {
      const socket = connect(port, '127.0.0.1', () => socket.write(`GET ${target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n`))
      let text = ''
      socket.on('data', (chunk) => (text += chunk.toString()))
      socket.on('end', () => resolve(text))
      socket.on('error', reject)
    })
    t.match(head, /^HTTP\/1\.1 400 /, `${target}: ${head.split('\r\n')[0] ?? ''}`)
    t.match(head, /request target must be a path/)
  }
})
