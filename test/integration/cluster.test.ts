/**
 * Cluster mode end to end: three routers sharing a real etcd, on the Kubernetes backend against
 * the in-repo API simulator (pods are local processes).
 */
import t from 'tap'
import { startCluster } from '../fixtures/cluster.ts'
import { call, createToken, kitchenToken, SIM_NAMESPACE, waitFor, type Router } from '../fixtures/router.ts'

interface ClusterState {
  'router-id': string
  mode: string
  leader: string | null
  'is-leader': boolean
  members: { routerId: string; url: string }[]
  'etcd-endpoints': string[]
}

const clusterState = async (router: Router): Promise<ClusterState> => (await call(`${router.url}/state/cluster`)).json<ClusterState>()

t.test('three routers act as one: shared tokens within a second, atomic If-Match, one leader', async (t) => {
  const cluster = await startCluster(t, 3)
  const [a, b, c] = cluster.routers as [Router, Router, Router]

  await waitFor('every router sees three members and one leader', async () => {
    const states = await Promise.all(cluster.routers.map(clusterState))
    const leaders = new Set(states.map((s) => s.leader))
    return states.every((s) => s.members.length === 3) && leaders.size === 1 && !leaders.has(null) ? states : undefined
  })
  const states = await Promise.all(cluster.routers.map(clusterState))
  t.equal(states.filter((s) => s['is-leader']).length, 1, 'exactly one router acts as leader')
  t.same(states[0]?.['etcd-endpoints'], [cluster.etcd.endpoint], '/state/cluster names the etcd endpoints')
  t.same(new Set(states.map((s) => s['router-id'])).size, 3, 'each router has its own id')
  t.match((await call(`${b.url}/state`)).json(), { routers: Object.fromEntries(states[0]!.members.map((m) => [m.routerId, m.url])) }, '/state lists the members')

  // A token written through A is served by C within a second.
  const written = Date.now()
  t.equal((await createToken(a, 'shared', kitchenToken())).status, 200)
  await waitFor('C knows the token', async () => ((await call(`${c.url}/token`, { headers: { 'x-waiter-token': 'shared' } })).status === 200 ? true : undefined), 1000)
  t.ok(Date.now() - written < 1000, `C served it ${Date.now() - written} ms after A wrote it`)
  const viaC = await call(`${c.url}/request-info`, { headers: { 'x-waiter-token': 'shared' } })
  t.equal(viaC.status, 200, 'and C starts and routes the version')

  // Two routers update the same version of the token at once: exactly one wins.
  const current = await call(`${a.url}/token`, { headers: { 'x-waiter-token': 'shared' } })
  const etag = current.headers['etag'] as string
  const updates = await Promise.all([
    call(`${a.url}/token`, { method: 'POST', headers: { 'x-waiter-token': 'shared', 'if-match': etag, 'content-type': 'application/json' }, body: JSON.stringify({ token: 'shared', ...kitchenToken({ version: 'from-a' }) }) }),
    call(`${b.url}/token`, { method: 'POST', headers: { 'x-waiter-token': 'shared', 'if-match': etag, 'content-type': 'application/json' }, body: JSON.stringify({ token: 'shared', ...kitchenToken({ version: 'from-b' }) }) }),
  ])
  t.same(updates.map((u) => u.status).sort(), [200, 412], `one wins, the other is told its version is stale (${updates.map((u) => u.status).join(', ')})`)
  const winner = updates[0]?.status === 200 ? 'from-a' : 'from-b'
  await waitFor('every router serves the winner', async () => {
    const seen = await Promise.all(cluster.routers.map(async (r) => ((await call(`${r.url}/token`, { headers: { 'x-waiter-token': 'shared' } })).json<{ version?: string }>()).version))
    return seen.every((v) => v === winner) ? true : undefined
  }, 2000)
})

t.test('a router that starts later sees everything, and a restart of every router loses nothing', async (t) => {
  const cluster = await startCluster(t, 2)
  const [a, b] = cluster.routers as [Router, Router]
  for (const name of ['one', 'two', 'three']) t.equal((await createToken(a, name, kitchenToken({ version: name }))).status, 200)
  t.equal((await call(`${b.url}/request-info`, { headers: { 'x-waiter-token': 'two' } })).status, 200)
  const late = await cluster.addRouter()
  const tokens = (await call(`${late.url}/tokens`)).json<{ token: string }[]>()
  t.same(tokens.map((x) => x.token).sort(), ['one', 'three', 'two'], 'the late router lists every token at once')
  const apps = (await call(`${late.url}/apps`)).json<{ 'service-id': string }[]>()
  t.equal(apps.length, 1, 'and knows the version B started')

  for (const router of cluster.routers) await router.app.stop()
  const again = await cluster.addRouter()
  t.same(((await call(`${again.url}/tokens`)).json<{ token: string }[]>()).map((x) => x.token).sort(), ['one', 'three', 'two'], 'after every router stopped, a new one finds every token')
  t.equal((await call(`${again.url}/request-info`, { headers: { 'x-waiter-token': 'three' } })).status, 200)
})

t.test('load spread over three routers scales the version to the fleet-wide ideal, wherever it was started', async (t) => {
  const cluster = await startCluster(t, 3, { 'scaler.tickMs': 200 })
  const states = await waitFor('one leader', async () => {
    const all = await Promise.all(cluster.routers.map(clusterState))
    return all.filter((s) => s['is-leader']).length === 1 ? all : undefined
  })
  // Started through a follower: the leader learns of it from the ReplicaSet watch alone.
  const follower = cluster.routers[states.findIndex((s) => !s['is-leader'])] as Router
  await createToken(follower, 'spread', kitchenToken({ 'concurrency-level': 1, 'max-instances': 20 }))
  const h = { 'x-waiter-token': 'spread' }
  t.equal((await call(`${follower.url}/request-info`, { headers: h })).status, 200)
  const replicas = (): number => cluster.sim.list('replicasets', SIM_NAMESPACE).map((rs) => (rs.spec as { replicas: number }).replicas)[0] ?? 0
  // Two long requests through each router: six outstanding over the fleet, on concurrency-level 1.
  const long = cluster.routers.flatMap((r) => [0, 1].map(() => call(`${r.url}/sleep?sleep-ms=2500`, { headers: h })))
  const requested = await waitFor('the leader scales the ReplicaSet up', () => (replicas() >= 6 ? replicas() : undefined), 4000)
  t.equal(requested, 6, 'six replicas: the sum of what the three routers carry, not a third of it nor three times')
  const replies = await Promise.all(long)
  t.same(replies.map((r) => r.status), [200, 200, 200, 200, 200, 200])
  await waitFor('every router knows the replica count the leader wrote', async () => {
    const counts = await Promise.all(cluster.routers.map(async (r) => (await call(`${r.url}/apps`)).json<{ 'instance-counts': { 'requested-instances': number } }[]>()[0]?.['instance-counts']['requested-instances']))
    return counts.every((n) => n === replicas()) ? true : undefined
  }, 3000)
})

t.test('etcd away for 10 s: every router keeps serving warm versions, and all recover when it returns', async (t) => {
  const cluster = await startCluster(t, 2)
  const [a, b] = cluster.routers as [Router, Router]
  await createToken(a, 'warm', kitchenToken())
  const h = { 'x-waiter-token': 'warm' }
  for (const r of [a, b]) t.equal((await call(`${r.url}/request-info`, { headers: h })).status, 200)
  await cluster.etcd.stop()
  const deadline = Date.now() + 10_000
  let served = 0
  let failed = 0
  while (Date.now() < deadline) {
    for (const r of [a, b]) {
      const reply = await call(`${r.url}/request-info`, { headers: h })
      if (reply.status === 200) served++
      else failed++
    }
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  t.equal(failed, 0, `no request failed while etcd was away (${served} served)`)
  const refused = await call(`${a.url}/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: 'during', ...kitchenToken() }) })
  t.equal(refused.status, 503, 'a token write is refused clearly meanwhile')
  t.ok(refused.headers['retry-after'], 'with Retry-After')
  const states = await Promise.all([a, b].map(async (r) => (await call(`${r.url}/state/cluster`)).json<{ 'is-leader': boolean }>()))
  t.same(states.map((s) => s['is-leader']), [false, false], 'nobody acts as leader while etcd is away')

  await cluster.etcd.start()
  const back = Date.now()
  await waitFor('a write goes through again', async () => ((await call(`${a.url}/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: 'after', ...kitchenToken() }) })).status === 200 ? true : undefined), 20_000)
  await waitFor('b sees it', async () => ((await call(`${b.url}/token`, { headers: { 'x-waiter-token': 'after' } })).status === 200 ? true : undefined), 10_000)
  await waitFor('a leader again', async () => {
    const now = await Promise.all([a, b].map(async (r) => (await call(`${r.url}/state/cluster`)).json<{ 'is-leader': boolean; members: unknown[] }>()))
    return now.filter((s) => s['is-leader']).length === 1 && now.every((s) => s.members.length === 2) ? true : undefined
  }, 20_000)
  t.comment(`recovered ${Date.now() - back} ms after etcd came back`)
})

t.test('a version deleted through one router is gone from the others, and a request there starts it afresh', async (t) => {
  const cluster = await startCluster(t, 2)
  const [a, b] = cluster.routers as [Router, Router]
  await createToken(a, 'brief', kitchenToken())
  const h = { 'x-waiter-token': 'brief' }
  t.equal((await call(`${a.url}/request-info`, { headers: h })).status, 200)
  const id = (await call(`${a.url}/service-id`, { headers: h })).text
  const runs = async (r: Router): Promise<boolean> => (await call(`${r.url}/state/scheduler`)).json<{ state: { services: { id: string }[] } }>().state.services.some((s) => s.id === id)
  await waitFor('b knows the version a started (its ReplicaSet appeared)', async () => ((await runs(b)) ? true : undefined), 3000)
  t.equal((await call(`${a.url}/apps/${id}`, { method: 'DELETE' })).status, 200)
  await waitFor('b forgets it (its ReplicaSet is gone)', async () => ((await runs(b)) ? undefined : true), 3000)
  t.equal((await call(`${b.url}/request-info`, { headers: h })).status, 200, 'a request through b starts it again, instead of waiting on a ghost')
  t.equal(cluster.sim.list('replicasets', SIM_NAMESPACE).length, 1)
})
