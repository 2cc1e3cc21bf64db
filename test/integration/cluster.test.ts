/**
 * Cluster mode end to end: three routers sharing a real etcd, on the Kubernetes backend against
 * the in-repo API simulator (pods are local processes).
 */
import t from 'tap'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { startCluster } from '../fixtures/cluster.ts'
import { startRelay } from '../fixtures/tcp-cut.ts'
import { connectEtcd } from '../../src/cluster/etcd/connect.ts'
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
  t.same((await call(`${c.url}/state/maintainer`)).json<{ state: { routers: Record<string, string> } }>().state.routers, Object.fromEntries(states[0]!.members.map((m) => [m.routerId, m.url])), '/state/maintainer lists every member, as Waiter’s tools read it')

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
  // B learns of a token A wrote by its watch, within a second.
  await waitFor('B knows the token', async () => ((await call(`${b.url}/token?token=two`)).status === 200 ? true : undefined), 10_000)
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
  // (Long enough for a leader on a machine loaded by the rest of the suite: its loads arrive
  // every 500 ms through etcd, and it ticks every 200 ms.)
  const long = cluster.routers.flatMap((r) => [0, 1].map(() => call(`${r.url}/sleep?sleep-ms=6000`, { headers: h })))
  const requested = await waitFor('the leader scales the ReplicaSet up', () => (replicas() >= 6 ? replicas() : undefined), 5500)
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
  await waitFor('b knows the token', async () => ((await call(`${b.url}/token?token=warm`)).status === 200 ? true : undefined), 10_000)
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

t.test('etcd that comes back without its data gets the router secret back from the routers: a router started after uses theirs, not one of its own', async (t) => {
  const cluster = await startCluster(t, 1)
  const [a] = cluster.routers as [Router]
  const raw = connectEtcd({ endpoints: [cluster.etcd.endpoint], requestTimeoutMs: 1000 })
  cluster.etcd.beforeStop(() => raw.close())
  const key = '/maitre/maitre/router-secret'
  const before = await raw.get(key).string()
  t.ok(before !== null && before.length >= 32, 'the cluster’s secret is in etcd')
  await cluster.etcd.wipe()
  const restored = await waitFor('the secret back in etcd', async () => (await raw.get(key).string().catch(() => null)) ?? undefined, 20_000)
  t.equal(restored, before, 'put back as the running router knows it')
  const b = await cluster.addRouter()
  await waitFor('both members', async () => ((await clusterState(b)).members.length === 2 && (await clusterState(a)).members.length === 2 ? true : undefined), 10_000)
  t.equal(await raw.get(key).string(), before, 'the new router made no secret of its own')
  // Router-to-router calls carry a key derived from the shared secret: the leader's peer sync
  // (a token write announced to the others) is confirmed, not refused.
  await createToken(b, 'after-wipe', kitchenToken())
  await waitFor('a serves the token written through b', async () => ((await call(`${a.url}/token?token=after-wipe`)).status === 200 ? true : undefined), 5000)
  const metrics = (await call(`${b.url}/metrics`, { headers: { accept: 'text/plain' } })).text
  t.notMatch(metrics, /maitre_peer_syncs_total\{[^}]*outcome="unconfirmed"[^}]*\} [1-9]/, 'no peer call refused')
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
  t.equal((await call(`${b.url}/request-info`, { headers: h })).status, 200, 'b routes it too (so b reports load for it)')
  const killed = await call(`${a.url}/apps/${id}?timeout=5000`, { method: 'DELETE' })
  t.equal(killed.status, 200)
  t.match(killed.json(), { result: 'deleted', 'routers-agree': true }, 'answered once every router let the version go (Waiter’s routers-agree)')
  await waitFor('b forgets it (its ReplicaSet is gone)', async () => ((await runs(b)) ? undefined : true), 3000)
  t.equal((await call(`${b.url}/request-info`, { headers: h })).status, 200, 'a request through b starts it again, instead of waiting on a ghost')
  t.equal(cluster.sim.list('replicasets', SIM_NAMESPACE).length, 1)
})

t.test('Waiter’s kill times out honestly: a router cut off from etcd still reports the version, so routers-agree is false at the timeout', async (t) => {
  const cluster = await startCluster(t, 1)
  const [a] = cluster.routers as [Router]
  const relay = await startRelay(Number(new URL(cluster.etcd.endpoint).port))
  cluster.etcd.beforeStop(() => relay.close())
  // b's lease outlives a slow DELETE on a loaded machine (one took 1.8 s with the fixture's 2 s
  // lease, which lapsed first: routers-agree came back true).
  const b = await cluster.addRouter({ 'etcd.endpoints': [relay.url], 'etcd.leaseTtlSecs': 5 })
  await createToken(a, 'held', kitchenToken())
  const h = { 'x-waiter-token': 'held' }
  await waitFor('b sees the token', async () => ((await call(`${b.url}/token?token=held`)).status === 200 ? true : undefined))
  t.equal((await call(`${b.url}/request-info`, { headers: h })).status, 200, 'b carries the version, so b reports load for it')
  const id = (await call(`${a.url}/service-id`, { headers: h })).text
  const etcd = connectEtcd({ endpoints: [cluster.etcd.endpoint], requestTimeoutMs: 1000 })
  cluster.etcd.beforeStop(() => etcd.close())
  const bReports = async (): Promise<boolean> => {
    const loads = await etcd.getAll().prefix('/maitre/maitre/load/').strings()
    return Object.values(loads).some((doc) => id in (JSON.parse(doc) as { versions: Record<string, unknown> }).versions)
  }
  // Seen in etcd twice in a row, so a (watching) has it too.
  let seen = 0
  await waitFor('b’s load report names the version', async () => ((await bReports()) && ++seen >= 2 ? true : undefined))
  relay.cut()
  const asked = Date.now()
  const killed = await call(`${a.url}/apps/${id}?timeout=300`, { method: 'DELETE' })
  t.equal(killed.status, 200)
  t.match(killed.json(), { result: 'deleted', success: true, 'routers-agree': false }, 'b’s report stays until its lease lapses: not every router has let go')
  t.ok(Date.now() - asked >= 290, `answered at the 300 ms timeout, not before (${Date.now() - asked} ms; a timer may fire a millisecond early)`)
  await waitFor('b’s lease lapses and its report goes', async () => ((await bReports()) ? undefined : true), 10_000)
  relay.heal()
  t.equal((await call(`${a.url}/apps/${id}`, { method: 'DELETE' })).status, 404, 'the version was deleted all the same')
})

t.test('slots across routers: concurrency-level is never exceeded fleet-wide, and a slot one router holds serves another router’s queue', async (t) => {
  const cluster = await startCluster(t, 3)
  const [a] = cluster.routers as [Router, Router, Router]
  await waitFor('three members everywhere', async () => ((await Promise.all(cluster.routers.map(clusterState))).every((s) => s.members.length === 3) ? true : undefined))
  await createToken(a, 'slots', kitchenToken({ 'concurrency-level': 1, 'min-instances': 2, 'max-instances': 2 }))
  const h = { 'x-waiter-token': 'slots' }
  t.equal((await call(`${a.url}/request-info`, { headers: h })).status, 200)
  const serviceId = (await call(`${a.url}/apps`)).json<{ 'service-id': string }[]>()[0]?.['service-id'] as string
  const instances = await waitFor('two healthy instances, known to every router', async () => {
    const views = await Promise.all(cluster.routers.map(async (r) => (await call(`${r.url}/apps/${serviceId}`)).json<{ instances: { 'active-instances': { host: string; port: number; healthy: boolean }[] } }>()))
    const healthy = views.map((v) => v.instances['active-instances'].filter((i) => i.healthy))
    return healthy.every((list) => list.length === 2) ? healthy[0] : undefined
  }, 20_000)
  t.equal((await call(`${a.url}/apps/${serviceId}`)).json<{ 'num-routers': number }>()['num-routers'], 3, '/apps/{id} counts the routers')
  const concurrency = async (): Promise<number[]> => Promise.all(instances.map(async (i) => (await call(`http://${i.host}:${i.port}/concurrency`)).json<{ max: number }>().max))

  // Each router alone, two requests at once: they run side by side on the two instances, whether
  // that router holds both slots, one, or none (then it borrows them from the others).
  for (const [index, router] of cluster.routers.entries()) {
    const replies = await Promise.all([0, 1].map(() => call(`${router.url}/sleep?sleep-ms=600`, { headers: h })))
    t.same(replies.map((r) => r.status), [200, 200], `router ${index + 1}: both served`)
    const ran = replies.map((r) => r.json<{ pid: number; startedAt: number; endedAt: number }>())
    t.equal(new Set(ran.map((r) => r.pid)).size, 2, `router ${index + 1}: on both instances`)
    // The instances' own clocks (one host): one after the other, the second would begin after the first ended.
    const [first, second] = ran.sort((x, y) => x.startedAt - y.startedAt) as [(typeof ran)[0], (typeof ran)[0]]
    t.ok(second.startedAt < first.endedAt, `router ${index + 1}: side by side (the second began ${second.startedAt - first.startedAt} ms after the first, which ran ${first.endedAt - first.startedAt} ms)`)
  }

  // Every router at once, more requests than slots: the fleet sends each instance one at a time.
  const burst = cluster.routers.flatMap((r) => [0, 1, 2, 3].map(() => call(`${r.url}/sleep?sleep-ms=150`, { headers: h })))
  const statuses = (await Promise.all(burst)).map((r) => r.status)
  t.same(statuses, statuses.map(() => 200), `all ${statuses.length} requests served`)
  t.same(await concurrency(), [1, 1], 'neither instance ever had more than one request at once (its own count)')

  // One instance: exactly one router holds its slot. While the holder carries a request, the
  // others queue theirs; the moment the slot frees, the holder lends it, one request after the
  // other: the slot idles for no more than the hop between two routers.
  await createToken(a, 'single', kitchenToken({ 'concurrency-level': 1, 'min-instances': 1, 'max-instances': 1 }))
  const one = { 'x-waiter-token': 'single' }
  t.equal((await call(`${a.url}/request-info`, { headers: one })).status, 200)
  const singleId = (await call(`${a.url}/apps`)).json<{ 'service-id': string; token?: string }[]>().map((x) => x['service-id']).find((id) => id !== serviceId) as string
  const available = async (r: Router): Promise<number> => (await call(`${r.url}/state/instance-tracker`)).json<{ state: Record<string, { load: { slotsAvailable: number } }> }>().state[singleId]?.load.slotsAvailable ?? -1
  const holder = await waitFor('its one slot held by one router, and known to all', async () => {
    const slots = await Promise.all(cluster.routers.map(available))
    return slots.filter((n) => n === 1).length === 1 && slots.filter((n) => n === 0).length === 2 ? (cluster.routers[slots.indexOf(1)] as Router) : undefined
  }, 20_000)
  const others = cluster.routers.filter((r) => r !== holder)
  // The routers run in this process: a stall of its event loop (a loaded machine, a GC) delays
  // every hop alike and is no slot idling, so the longest one seen is measured and allowed for.
  const stalls = monitorEventLoopDelay({ resolution: 10 })
  stalls.enable()
  const held = call(`${holder.url}/sleep?sleep-ms=500`, { headers: one }).then((r) => ({ status: r.status, at: Date.now() }))
  await waitFor('the holder carries its request', async () => ((await available(holder)) === 0 ? true : undefined))
  const queued = others.map((r) => call(`${r.url}/sleep?sleep-ms=0`, { headers: one }).then((reply) => ({ status: reply.status, at: Date.now() })))
  const [first, ...rest] = await Promise.all([held, ...queued])
  stalls.disable()
  const stallMs = Math.round(stalls.max / 1e6)
  t.same([first, ...rest].map((x) => x?.status), [200, 200, 200], 'the holder’s request and both queued elsewhere are served')
  const gaps = rest.map((x) => (x?.at ?? 0) - (first?.at ?? 0)).sort((x, y) => x - y)
  t.comment(`after the slot freed, the queued requests elsewhere finished ${gaps.join(' and ')} ms later`)
  t.ok(gaps.every((g) => g >= 0), 'neither ran before the slot freed: the holder’s one slot was never shared')
  t.ok((gaps[0] ?? Infinity) < 100 + stallMs, `the first borrowed the freed slot within 100 ms (${gaps[0]} ms, its whole request included; this process's longest event-loop stall meanwhile: ${stallMs} ms)`)
  t.ok((gaps[1] ?? Infinity) < 200 + stallMs, `and the second right after it (${gaps[1]} ms)`)
})

t.test('a router carrying a request on an instance vetoes the leader’s kill of it; the kill comes once the request is done', async (t) => {
  // A burst (the cold start) holds scale-downs for burstHoldMs: short here, so the test is too.
  const cluster = await startCluster(t, 2, { 'scaler.tickMs': 200, 'scaler.burstHoldMs': 200 })
  const states = await waitFor('one leader, two members', async () => {
    const all = await Promise.all(cluster.routers.map(clusterState))
    return all.filter((s) => s['is-leader']).length === 1 && all.every((s) => s.members.length === 2) ? all : undefined
  })
  const leader = cluster.routers[states.findIndex((s) => s['is-leader'])] as Router
  const follower = cluster.routers[states.findIndex((s) => !s['is-leader'])] as Router
  // concurrency-level 2 over two routers: each holds one slot of every instance.
  await createToken(leader, 'veto', kitchenToken({ 'concurrency-level': 2, 'min-instances': 2, 'max-instances': 2 }))
  const h = { 'x-waiter-token': 'veto' }
  await waitFor('the follower knows the token', async () => ((await call(`${follower.url}/token`, { headers: h })).status === 200 ? true : undefined), 2000)
  t.equal((await call(`${follower.url}/request-info`, { headers: h })).status, 200)
  const serviceId = (await call(`${leader.url}/apps`)).json<{ 'service-id': string }[]>()[0]?.['service-id'] as string
  const healthy = async (r: Router): Promise<number> => (await call(`${r.url}/apps/${serviceId}`)).json<{ instances: { 'active-instances': { healthy: boolean }[] } }>().instances['active-instances'].filter((i) => i.healthy).length
  await waitFor('two healthy instances on both routers', async () => ((await healthy(leader)) === 2 && (await healthy(follower)) === 2 ? true : undefined), 20_000)
  // The leader never routed a request of this version, yet it deals its slots by the version's
  // own concurrency-level: the routers' shares add up to 2 instances × 2 slots.
  const available = async (r: Router): Promise<number> => (await call(`${r.url}/state/instance-tracker`)).json<{ state: Record<string, { load: { slotsAvailable: number } }> }>().state[serviceId]?.load.slotsAvailable ?? 0
  // (Shares are dealt as the instances' health reaches each router: waited for, not read once.)
  const shares = await waitFor('each router to hold its shares', async () => {
    const both = [await available(leader), await available(follower)]
    return both[0] === 2 && both[1] === 2 ? both : undefined
  }, 10_000).catch(async () => [await available(leader), await available(follower)])
  t.same(shares, [2, 2], 'each router holds one slot of each instance')

  // The follower carries one long request on each instance, on its own slots: the leader's
  // tracker sees both instances idle.
  // Long enough for the override to reach the leader and its scale-down to be tried on a loaded machine.
  const long = [0, 1].map(() => call(`${follower.url}/sleep?sleep-ms=6000`, { headers: h }))
  await waitFor('both requests under way at the follower', async () => ((await call(`${follower.url}/state/instance-tracker`)).json<{ state: Record<string, { load: { inFlight: number } }> }>().state[serviceId]?.load.inFlight === 2 ? true : undefined))
  // One instance is enough now (min 1, and two requests fit one instance of concurrency-level 2),
  // and the scaler comes down fast.
  t.equal((await call(`${leader.url}/apps/${serviceId}/override`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ 'min-instances': 1, 'scale-down-factor': 0.9 }) })).status, 200)
  const vetoes = async (): Promise<number> => {
    const text = (await call(`${leader.url}/metrics`)).text
    return Number(new RegExp(`maitre_kill_vetoes_total\\{service="${serviceId}"\\} (\\d+)`).exec(text)?.[1] ?? '0')
  }
  await waitFor('the leader tried to kill and was vetoed', async () => ((await vetoes()) > 0 ? true : undefined), 5500)
  const replies = await Promise.all(long)
  t.same(replies.map((r) => r.status), [200, 200], 'both long requests completed: no busy instance was killed')
  t.ok((await vetoes()) >= 1, `vetoes counted (${await vetoes()})`)
  await waitFor('with the requests done, the scale-down goes ahead', async () => ((await healthy(leader)) === 1 ? true : undefined), 10_000)
})
