/**
 * An operator's calls through whichever router the load balancer picks: in cluster mode they
 * must do what they do on a single router, whether or not that router leads.
 */
import t from 'tap'
import { startCluster } from '../fixtures/cluster.ts'
import { OffsetClock } from '../fixtures/offset-clock.ts'
import { call, createToken, kitchenToken, SIM_NAMESPACE, waitFor, type Router } from '../fixtures/router.ts'

interface ClusterState {
  'is-leader': boolean
  members: unknown[]
}
const clusterState = async (r: Router): Promise<ClusterState> => (await call(`${r.url}/state/cluster`)).json<ClusterState>()

/** Two routers, once both see both as members and one leads: which is which. */
async function leaderAndFollower(routers: readonly Router[]): Promise<{ leader: Router; follower: Router }> {
  const states = await waitFor('two members, one leader', async () => {
    const states = await Promise.all(routers.map(clusterState))
    return states.every((s) => s.members.length === 2) && states.filter((s) => s['is-leader']).length === 1 ? states : undefined
  })
  return { leader: routers[states.findIndex((s) => s['is-leader'])] as Router, follower: routers[states.findIndex((s) => !s['is-leader'])] as Router }
}

t.test('an instance expired through a router that does not lead is replaced, as through the leader', async (t) => {
  const cluster = await startCluster(t, 2, { 'scaler.tickMs': 200 })
  const { leader, follower } = await leaderAndFollower(cluster.routers)
  await createToken(leader, 'exp', kitchenToken({ 'min-instances': 1 }))
  const h = { 'x-waiter-token': 'exp' }
  t.equal((await call(`${follower.url}/request-info`, { headers: h })).status, 200)
  const serviceId = (await call(`${follower.url}/service-id`, { headers: h })).text
  const active = (r: Router): Promise<{ id: string; flags?: string[] }[]> =>
    call(`${r.url}/apps/${serviceId}`).then((res) => res.json<{ instances: { 'active-instances': { id: string; flags?: string[] }[] } }>().instances['active-instances'])
  const instanceId = (await active(follower))[0]?.id as string
  const replicas = (): number => (cluster.sim.list('replicasets', SIM_NAMESPACE)[0]?.spec as { replicas?: number } | undefined)?.replicas ?? 0
  t.equal(replicas(), 1)

  const expired = await call(`${follower.url}/apps/${serviceId}/instance/${instanceId}/expire`, { method: 'POST' })
  t.equal(expired.status, 200)
  t.match(expired.json(), { 'signal-response': { success: true } })
  await waitFor('a replacement to be asked for', () => (replicas() > 1 ? true : undefined), 5000).catch(() => undefined)
  t.ok(replicas() > 1, `the leader asked for a replacement (replicas ${replicas()})`)
  for (const [name, router] of [['leader', leader], ['follower', follower]] as const) {
    t.ok((await active(router)).find((i) => i.id === instanceId)?.flags?.includes('expired') ?? !(await active(router)).some((i) => i.id === instanceId), `the ${name} shows the instance expired (or already gone)`)
  }
  const unknown = await call(`${follower.url}/apps/${serviceId}/instance/nope/expire`, { method: 'POST' })
  t.equal(unknown.status, 404, 'an instance nobody knows is a 404, as on one router')
})

t.test('an instance expired through the leader is known as expired by the other routers too, so one that leads next replaces it (and not the replacement it asked for)', async (t) => {
  const cluster = await startCluster(t, 2, { 'scaler.tickMs': 200 })
  const { leader, follower } = await leaderAndFollower(cluster.routers)
  await createToken(leader, 'exp2', kitchenToken({ 'min-instances': 1 }))
  const h = { 'x-waiter-token': 'exp2' }
  t.equal((await call(`${leader.url}/request-info`, { headers: h })).status, 200)
  const serviceId = (await call(`${leader.url}/service-id`, { headers: h })).text
  const active = (r: Router): Promise<{ id: string; flags?: string[] }[]> =>
    call(`${r.url}/apps/${serviceId}`).then((res) => res.json<{ instances: { 'active-instances': { id: string; flags?: string[] }[] } }>().instances['active-instances'])
  const instanceId = await waitFor('the follower to see the instance', async () => (await active(follower))[0]?.id)
  t.equal((await call(`${leader.url}/apps/${serviceId}/instance/${instanceId}/expire`, { method: 'POST' })).status, 200)
  await waitFor('the follower to know it expired', async () => ((await active(follower)).find((i) => i.id === instanceId)?.flags?.includes('expired') === true ? true : undefined), 5000)
  t.pass('the follower records the leader’s expiry')
})

t.test('/apps shows the same requests under way through every router', async (t) => {
  const cluster = await startCluster(t, 2)
  const [a, b] = cluster.routers as [Router, Router]
  await createToken(a, 'busy', kitchenToken({ 'concurrency-level': 4 }))
  const h = { 'x-waiter-token': 'busy' }
  t.equal((await call(`${a.url}/request-info`, { headers: h })).status, 200)
  const serviceId = (await call(`${a.url}/service-id`, { headers: h })).text
  const metricsOn = async (r: Router): Promise<{ metrics: Record<string, number> } | undefined> => {
    const app = (await call(`${r.url}/apps`)).json<Record<string, unknown>[]>().find((x) => x['service-id'] === serviceId)
    return app === undefined ? undefined : { metrics: app['request-metrics'] as Record<string, number> }
  }
  const slow = Array.from({ length: 3 }, () => call(`${a.url}/sleep?sleep-ms=3000`, { headers: h }))
  await waitFor('A to carry the three requests', async () => ((await metricsOn(a))?.metrics['in-flight'] === 3 ? true : undefined), 5000)
  const seenOnB = await waitFor('B to show them', async () => {
    const m = await metricsOn(b)
    return m?.metrics['in-flight'] === 3 ? m : undefined
  }, 2000).catch(() => metricsOn(b))
  t.match(seenOnB?.metrics, { 'in-flight': 3, outstanding: 3, queued: 0 }, 'B counts the requests A carries (from A’s load report)')
  await Promise.all(slow)
})

t.test('an adaptive version’s keep-alive learns from the requests every router serves, not only the leader’s', async (t) => {
  const cluster = await startCluster(t, 2)
  const { leader, follower } = await leaderAndFollower(cluster.routers)
  await createToken(leader, 'learns', kitchenToken({ 'keep-alive': 'adaptive' }))
  const h = { 'x-waiter-token': 'learns' }
  const serviceId = (await call(`${leader.url}/service-id`, { headers: h })).text
  const idleTimesOn = async (r: Router): Promise<number | undefined> => {
    const res = await call(`${r.url}/apps/${serviceId}`)
    return res.status === 200 ? res.json<{ 'keep-alive'?: { 'idle-times-seen': number } }>()['keep-alive']?.['idle-times-seen'] : undefined
  }
  // The first request starts the version (no idle time before it); the second, through the
  // follower, ends the version's first idle time. Only the follower served it.
  t.equal((await call(`${leader.url}/request-info`, { headers: h })).status, 200)
  t.equal((await call(`${follower.url}/request-info`, { headers: h })).status, 200)
  t.equal(await idleTimesOn(follower), 1, 'the follower counts the idle time its request ended')
  const onLeader = await waitFor('the leader to learn of it', async () => ((await idleTimesOn(leader)) === 1 ? 1 : undefined), 5000).catch(() => idleTimesOn(leader))
  t.equal(onLeader, 1, 'so does the leader, which lets versions go and pre-warms them, though the request never reached it')
  const sent = (await call(`${follower.url}/metrics`)).text.match(/^maitre_keep_alive_notes_total\{outcome="sent"\} (\d+)/m)?.[1]
  t.ok(Number(sent) >= 1, `the follower told it (maitre_keep_alive_notes_total sent ${sent})`)
})

t.test('a version the leader collects is known as let go on every router, with when it was last used (so any router that leads next can pre-warm it); an operator who deletes its history through any router has it forgotten by all', async (t) => {
  const clock = new OffsetClock()
  const cluster = await startCluster(t, 2, { 'scaler.tickMs': 250, 'scaler.gcIntervalMs': 100 }, { clock })
  const { leader, follower } = await leaderAndFollower(cluster.routers)
  await createToken(leader, 'letgo', kitchenToken({ 'keep-alive': 'adaptive', 'idle-timeout-mins': 1 }))
  const h = { 'x-waiter-token': 'letgo' }
  const serviceId = (await call(`${follower.url}/service-id`, { headers: h })).text
  await waitFor('the token on the follower', async () => ((await call(`${follower.url}/request-info`, { headers: h })).status === 200 ? true : undefined))
  const keepAliveOn = async (r: Router): Promise<{ status?: string; 'keep-alive'?: { 'idle-since': string | null } } | undefined> => {
    const res = await call(`${r.url}/apps/${serviceId}`)
    return res.status === 200 ? res.json() : undefined
  }
  t.equal((await keepAliveOn(follower))?.['keep-alive']?.['idle-since'] !== undefined, true, 'the follower shows the version’s keep-alive')
  // Idle past its fixed minute (three idle times are not yet seen): the leader collects it.
  clock.jump(61_000)
  // The follower may see the version at zero (through the backend's watch) before the leader's
  // collect-done reaches it, so wait for both.
  const dormant = await waitFor('the follower to show the version at zero, idle since its last use', async () => {
    const app = await keepAliveOn(follower)
    return app?.status === 'Inactive' && app['keep-alive']?.['idle-since'] != null ? app : undefined
  }, 10_000).catch(() => keepAliveOn(follower))
  t.equal(dormant?.status, 'Inactive', 'the leader collected the version')
  t.not(dormant?.['keep-alive']?.['idle-since'] ?? null, null, 'and the follower knows since when it has been idle: the leader told it of the collection')

  // An operator deletes its history through the follower: the leader forgets it too (it would pre-warm it).
  t.equal((await keepAliveOn(leader))?.status, 'Inactive', 'the leader remembers it')
  const deleted = await call(`${follower.url}/apps/${serviceId}`, { method: 'DELETE' })
  t.match(deleted.json(), { result: 'no-such-service-exists', message: /history is forgotten/ })
  await waitFor('the leader to forget it too', async () => ((await call(`${leader.url}/apps/${serviceId}`)).status === 404 ? true : undefined), 5000)
  t.pass('no router remembers the version')
})

t.test('a version collected while suspended is forgotten on every router, not only the leader: none that leads next pre-warms it', async (t) => {
  const clock = new OffsetClock()
  const cluster = await startCluster(t, 2, { 'scaler.tickMs': 250, 'scaler.gcIntervalMs': 100 }, { clock })
  const { leader, follower } = await leaderAndFollower(cluster.routers)
  await createToken(leader, 'susp', kitchenToken({ 'keep-alive': 'adaptive', 'idle-timeout-mins': 1 }))
  const h = { 'x-waiter-token': 'susp' }
  const serviceId = (await call(`${follower.url}/service-id`, { headers: h })).text
  await waitFor('the token on the follower', async () => ((await call(`${follower.url}/request-info`, { headers: h })).status === 200 ? true : undefined))
  t.equal((await call(`${leader.url}/request-info`, { headers: h })).status, 200)
  t.equal((await call(`${leader.url}/apps/${serviceId}/suspend`, { method: 'POST' })).status, 200, 'suspended')
  await waitFor('the follower to see the suspension', async () => ((await call(`${follower.url}/request-info`, { headers: h })).status === 503 ? true : undefined))
  clock.jump(61_000)
  await waitFor('the leader to collect it', async () => ((await call(`${leader.url}/apps/${serviceId}`)).status === 404 ? true : undefined), 10_000)
  await waitFor('the follower to forget it too', async () => ((await call(`${follower.url}/apps/${serviceId}`)).status === 404 ? true : undefined), 5000)
  t.pass('neither router remembers it (a follower that kept its history would pre-warm it once it leads)')
})
