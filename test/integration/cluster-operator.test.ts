/**
 * An operator's calls through whichever router the load balancer picks: in cluster mode they
 * must do what they do on a single router, whether or not that router leads.
 */
import t from 'tap'
import { startCluster } from '../fixtures/cluster.ts'
import { call, createToken, kitchenToken, SIM_NAMESPACE, waitFor, type Router } from '../fixtures/router.ts'

interface ClusterState {
  'is-leader': boolean
  members: unknown[]
}
const clusterState = async (r: Router): Promise<ClusterState> => (await call(`${r.url}/state/cluster`)).json<ClusterState>()

t.test('an instance expired through a router that does not lead is replaced, as through the leader', async (t) => {
  const cluster = await startCluster(t, 2, { 'scaler.tickMs': 200 })
  await waitFor('two members, one leader', async () => {
    const states = await Promise.all(cluster.routers.map(clusterState))
    return states.every((s) => s.members.length === 2) && states.filter((s) => s['is-leader']).length === 1 ? true : undefined
  })
  const states = await Promise.all(cluster.routers.map(clusterState))
  const leader = cluster.routers[states.findIndex((s) => s['is-leader'])] as Router
  const follower = cluster.routers[states.findIndex((s) => !s['is-leader'])] as Router
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
