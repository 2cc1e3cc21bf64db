/**
 * Read-your-writes across routers (src/cluster/peer-sync.ts), end to end: a router whose link to
 * etcd is slow (its watch hears of changes late) still serves, at once, what a client just wrote
 * through another router, because the writer answers only once every peer has read the write.
 */
import t from 'tap'
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
