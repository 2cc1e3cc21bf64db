/**
 * The API and the names it answers to: a browser must address the router by one of its own
 * host names (DNS rebinding), and a request target that is no path is a 400.
 */
import t from 'tap'
import { connect } from 'node:net'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { call, kitchenToken, startRouter } from '../fixtures/router.ts'

t.test('DNS rebinding: a page of another site whose name points at the router cannot register a command, nor read the API, through the browser', async (t) => {
  const router = await startRouter(t)
  const port = new URL(router.url).port
  const marker = join(t.testdir(), 'pwned')
  const attacker = `rebind.attacker.example:${port}`
  t.equal((await call(`${router.url}/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: 'mine', ...kitchenToken() }) })).status, 200)
  // What the browser sends for the page's own (same-origin) fetch: the page's host, its origin.
  const write = await call(`${router.url}/token`, {
    method: 'POST',
    headers: { host: attacker, origin: `http://${attacker}`, 'sec-fetch-mode': 'cors', 'content-type': 'application/json' },
    body: JSON.stringify({ token: 'rb', ...kitchenToken(), cmd: `touch ${marker}` }),
  })
  t.equal(write.status, 403, 'the token write is refused')
  t.match(write.json(), { 'waiter-error': { code: 'MAITRE_CORS_REQUEST_FORBIDDEN', message: /one of the router’s own host names/ } })
  const read = await call(`${router.url}/token?token=mine`, { headers: { host: attacker, 'sec-fetch-mode': 'cors' } })
  t.equal(read.status, 403, 'a read without Origin (a same-origin GET) is refused too')
  const other = await call(`${router.url}/tokens`, { headers: { host: attacker, 'sec-fetch-mode': 'cors' } })
  t.not(other.status, 200, 'and a path that is the API only on the router’s own names is no API call here (Waiter: a request for the token the Host names)')
  t.equal((await call(`${router.url}/token?token=rb`)).status, 404, 'nothing was registered')
  t.notOk(existsSync(marker), 'and nothing ran')

  // The router's own names still serve browsers, and clients outside a browser are as before.
  const own = await call(`${router.url}/token`, {
    method: 'POST',
    headers: { origin: `http://127.0.0.1:${port}`, 'sec-fetch-mode': 'cors', 'content-type': 'application/json' },
    body: JSON.stringify({ token: 'ours', ...kitchenToken() }),
  })
  t.equal(own.status, 200, 'a page of the router’s own origin writes a token')
  const byHost = await call(`${router.url}/token`, { headers: { host: 'mine' } })
  t.equal(byHost.status, 200, 'curl naming the token by Host (Waiter’s GET /token) still reads it')
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
