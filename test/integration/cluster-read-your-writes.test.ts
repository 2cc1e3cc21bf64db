/**
 * Read-your-writes across routers (src/cluster/peer-sync.ts), end to end: a router whose link to
 * etcd is slow (its watch hears of changes late) still serves, at once, what a client just wrote
 * through another router, because the writer answers only once every peer has read the write;
 * and while the writer waits for its peers, it already serves the write itself.
 */
import t from 'tap'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { Etcd3 } from 'etcd3'
import { startCluster } from '../fixtures/cluster.ts'
import { startRelay } from '../fixtures/tcp-cut.ts'
import { call, createToken, kitchenToken, waitFor, type Router } from '../fixtures/router.ts'

const members = async (router: Router): Promise<number> => (await call(`${router.url}/state/cluster`)).json<{ members: unknown[] }>().members.length

t.test('read-your-writes: what is written through one router is served at once through another, however far behind its watch is', async (t) => {
  const cluster = await startCluster(t, 1)
  const a = cluster.routers[0] as Router
  // C reaches etcd over a slow link (100 ms each way): its watch hears of A's writes 100 ms late.
  const relay = await startRelay(Number(new URL(cluster.etcd.endpoint).port), { delayMs: 100 })
  cluster.etcd.beforeStop(() => relay.close())
  const c = await cluster.addRouter({ 'etcd.endpoints': [relay.url], 'etcd.requestTimeoutMs': 3000 })
  await waitFor('both routers see each other', async () => ((await Promise.all([a, c].map(members))).every((n) => n === 2) ? true : undefined), 10_000)
  const h = { 'x-waiter-token': 'fresh' }

  await createToken(a, 'fresh', kitchenToken({ version: 'one' }))
  const first = await call(`${c.url}/request-info`, { headers: h })
  t.equal(first.status, 200, `a request through C right after A created the token is served (${first.status} ${first.text.slice(0, 120)})`)

  const update = await call(`${a.url}/token`, { method: 'POST', headers: { ...h, 'content-type': 'application/json' }, body: JSON.stringify({ token: 'fresh', ...kitchenToken({ version: 'two' }) }) })
  t.equal(update.status, 200)
  t.match((await call(`${c.url}/token`, { headers: h })).json(), { version: 'two' }, 'C holds the updated token as soon as A answered the update')

  // (Without read-your-writes C would catch up by its watch meanwhile: the deletion is then what it must not miss.)
  await waitFor('C holds the update', async () => ((await call(`${c.url}/token`, { headers: h })).json<{ version?: string }>().version === 'two' ? true : undefined), 2000)
  t.equal((await call(`${a.url}/token`, { method: 'DELETE', headers: h })).status, 200)
  t.equal((await call(`${c.url}/token`, { headers: h })).status, 404, 'and no longer serves it once A answered the delete')

  const metrics = (await call(`${a.url}/metrics`)).text
  const confirmed = Number(/^maitre_peer_syncs_total\{outcome="confirmed"\} (\d+)/m.exec(metrics)?.[1] ?? 0)
  t.ok(confirmed >= 3, `A counted C's confirmations (${confirmed})`)
})

t.test('while a write waits for a slow peer, the writing router already serves what was written', async (t) => {
  const cluster = await startCluster(t, 1)
  const a = cluster.routers[0] as Router
  const h = { 'x-waiter-token': 'gate' }
  await createToken(a, 'gate', kitchenToken())
  t.equal((await call(`${a.url}/request-info`, { headers: h })).status, 200, 'served, and its resolution cached')

  // A peer that takes 800 ms to read each write (a member of the cluster, as etcd lists it).
  const refreshes: string[] = []
  const slow = createServer((req, res) => {
    if (req.url !== '/maitre-peer/refresh') return void res.writeHead(404).end('{}')
    let body = ''
    req.on('data', (chunk: Buffer) => (body += chunk.toString()))
    req.on('end', () => {
      refreshes.push(body)
      setTimeout(() => res.end('{}'), 800)
    })
  })
  await new Promise<void>((resolve) => slow.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    slow.closeAllConnections()
    slow.close()
  })
  const raw = new Etcd3({ hosts: cluster.etcd.endpoint })
  cluster.etcd.beforeStop(() => raw.close())
  await raw.put('/maitre/maitre/routers/slow-peer').value(JSON.stringify({ routerId: 'slow-peer', url: `http://127.0.0.1:${(slow.address() as AddressInfo).port}`, startedAt: Date.now() }))
  await waitFor('A to count the slow peer a member', async () => ((await members(a)) === 2 ? true : undefined), 5000)

  const updating = call(`${a.url}/token`, { method: 'POST', headers: { ...h, 'content-type': 'application/json' }, body: JSON.stringify({ token: 'gate', ...kitchenToken({ maintenance: { message: 'closed for the night' } }) }) })
  await waitFor('the write to wait on the slow peer', () => (refreshes.some((b) => b.includes('gate')) ? true : undefined), 5000)
  const during = await call(`${a.url}/request-info`, { headers: { ...h, 'x-waiter-queue-timeout': '300' } })
  t.equal(during.status, 503)
  t.match(during.json(), { 'waiter-error': { message: 'closed for the night' } }, 'A answers with the maintenance just written, not from the resolution it had cached')
  t.equal((await updating).status, 200, 'and the write is answered once the peer has read it')
})
