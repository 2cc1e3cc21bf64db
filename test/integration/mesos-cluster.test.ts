/**
 * The Mesos backend in cluster mode: a real etcd, the master simulator and routers in this
 * process. Only the leader subscribes (a framework has one scheduler); the others show the
 * leader's view and ask it for what they want done. A new leader subscribes with the framework id
 * the cluster keeps in etcd and adopts what runs instead of launching it again.
 */
import t from 'tap'
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { call, createToken, kitchenToken, waitFor, within, type Router } from '../fixtures/router.ts'
import { startMesosCluster, startMesosSimulatorFor, type MesosCluster } from '../fixtures/mesos-router.ts'
import { startEtcd, followLeasedKey } from '../fixtures/etcd.ts'
import { startRouterProcess, type RouterProcess } from '../fixtures/router-process.ts'

const LIVE = ['TASK_STAGING', 'TASK_STARTING', 'TASK_RUNNING']

interface ClusterState {
  'router-id': string
  leader: string | null
  'is-leader': boolean
  members: unknown[]
}

const clusterState = async (router: Router): Promise<ClusterState> => (await call(`${router.url}/state/cluster`)).json<ClusterState>()

/** The routers, once they agree on one leader: [leader, ...followers]. */
async function byLeadership(cluster: MesosCluster, routers = cluster.routers): Promise<Router[]> {
  const states = await waitFor('one leader every router agrees on', async () => {
    const all = await Promise.all(routers.map(clusterState))
    const leaders = new Set(all.map((s) => s.leader))
    return all.filter((s) => s['is-leader']).length === 1 && leaders.size === 1 && all.every((s) => s.members.length === routers.length) ? all : undefined
  }, 15_000)
  const leader = routers[states.findIndex((s) => s['is-leader'])] as Router
  return [leader, ...routers.filter((r) => r !== leader)]
}

function liveTasks(cluster: MesosCluster, serviceId: string): ReturnType<MesosCluster['sim']['tasks']> {
  return cluster.sim.tasks().filter((task) => task.id.startsWith(`${serviceId}.`) && LIVE.includes(task.state))
}

async function serve(router: Router, token: string): Promise<{ status: number; instance: string; body: string }> {
  const reply = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': token, 'x-waiter-queue-timeout': '20000', 'x-waiter-debug': 'true' } })
  return { status: reply.status, instance: String(reply.headers['x-waiter-backend-id']), body: reply.text }
}

interface AppView {
  'instance-counts': { 'healthy-instances': number; 'requested-instances': number }
  instances: { 'active-instances': { id: string }[] }
}

const appView = async (router: Router, id: string): Promise<AppView> => (await call(`${router.url}/apps/${id}`)).json<AppView>()

/** A token written through one router reaches another by its etcd watch, within a second: wait for it there. */
async function knownTo(router: Router, token: string): Promise<void> {
  await waitFor(`${token} known to ${router.url}`, async () => ((await call(`${router.url}/token?token=${token}`)).status === 200 ? true : undefined), 10_000)
}

t.test('two routers on one master: only the leader subscribes; a cold start asked through the follower runs one task, which both serve', async (t) => {
  // A lease long enough that no stall of a loaded machine ends the first leader's term here (with
  // the fleet's 2 s, a 1.6 s stall during its SUBSCRIBE did: it stepped down, led again and
  // subscribed anew, its first framework never told its id). This test is about who subscribes,
  // not about handing leadership over (the next one is).
  const cluster = await startMesosCluster(t, 2, { 'etcd.leaseTtlSecs': 10 })
  const [leader, follower] = (await byLeadership(cluster)) as [Router, Router]
  await waitFor('the leader subscribed', () => (cluster.sim.frameworks().some((f) => f.connected) ? true : undefined), 10_000)
  t.equal(cluster.sim.frameworks().length, 1, 'one framework for the whole cluster')
  t.equal(cluster.sim.calls().filter((c) => c.type === 'SUBSCRIBE').length, 1, 'one subscription: the follower never subscribed')

  await createToken(follower, 'shared', kitchenToken())
  const first = await serve(follower, 'shared')
  t.equal(first.status, 200, `the follower's cold start went through the leader (${first.body.slice(0, 200)})`)
  const id = (await call(`${follower.url}/service-id`, { headers: { 'x-waiter-token': 'shared' } })).text
  t.equal(liveTasks(cluster, id).length, 1, 'one task runs')
  t.equal(first.instance, liveTasks(cluster, id)[0]?.id, 'the follower routed to it')
  const second = await serve(leader, 'shared')
  t.same([second.status, second.instance], [200, first.instance], 'the leader serves the same instance')
  // Both show the instance, and the same count: the leader's autoscaler may have started a second
  // one on the two requests (the follower's load report lags its request by up to 500 ms).
  const views = await waitFor('both routers show the same healthy instances', async () => {
    const both = await Promise.all([leader, follower].map((r) => appView(r, id)))
    const counts = both.map((v) => v['instance-counts']['healthy-instances'])
    return counts[0] === counts[1] && both.every((v) => v.instances['active-instances'].some((i) => i.id === first.instance)) ? both : undefined
  }, 10_000)
  const healthy = views[0]?.['instance-counts']['healthy-instances'] ?? 0
  t.ok(healthy >= 1 && healthy <= 2, `both routers show the instance it served, and agree on the count (${healthy})`)

  // A kill asked through the follower: carried out by the leader, seen by both.
  const killed = await call(`${follower.url}/apps/${id}/instance/${first.instance}/kill`, { method: 'POST' })
  t.equal(killed.status, 200, `the follower's kill went through the leader (${killed.text.slice(0, 200)})`)
  // (The autoscaler may start another meanwhile: its burst hold keeps what the two requests asked for.)
  await waitFor('the task killed at the master', () => (cluster.sim.tasks().some((task) => task.id === first.instance && task.state === 'TASK_KILLED') ? true : undefined), 10_000)
  await waitFor('both routers see it gone', async () => ((await Promise.all([leader, follower].map((r) => appView(r, id)))).every((v) => !v.instances['active-instances'].some((i) => i.id === first.instance)) ? true : undefined), 5000)
  t.pass('the killed instance is gone from both views')
})

t.test('the leader goes: the other router takes the framework over with its id, adopts the running task instead of launching another, and drives it from then on', async (t) => {
  // A drain bound far above what a stop takes: one that waited out the follower's long poll
  // (up to 20 s parked at the leader) would show.
  const cluster = await startMesosCluster(t, 2, { 'server.shutdownTimeoutMs': 30_000 })
  const [leader, follower] = (await byLeadership(cluster)) as [Router, Router]
  await createToken(leader, 'kept', kitchenToken())
  await knownTo(follower, 'kept')
  const before = await serve(follower, 'kept')
  t.equal(before.status, 200)
  const id = (await call(`${follower.url}/service-id`, { headers: { 'x-waiter-token': 'kept' } })).text
  const frameworkId = cluster.sim.frameworks()[0]?.id
  const launched = cluster.sim.calls().filter((c) => c.type === 'ACCEPT').length

  // (This /state call is one of the leader's requests in flight; the follower's long poll the other.)
  await waitFor('the follower’s long poll to be parked at the leader', async () => ((await call(`${leader.url}/state`)).json<{ 'in-flight-requests': number }>()['in-flight-requests'] >= 2 ? true : undefined), 10_000)
  const stopping = Date.now()
  await leader.app.stop()
  const stopMs = Date.now() - stopping
  t.ok(stopMs < 10_000, `the leader stopped without waiting for the follower's long poll to end by itself (${stopMs} ms)`)
  const [successor] = (await byLeadership(cluster, [follower])) as [Router]
  t.equal(successor, follower, 'the follower leads')
  await waitFor('the framework subscribed again', () => (cluster.sim.frameworks()[0]?.connected === true ? true : undefined), 10_000)
  t.same(cluster.sim.frameworks().map((f) => f.id), [frameworkId], 'with the same framework id, kept in etcd')
  const after = await serve(follower, 'kept')
  t.same([after.status, after.instance], [200, before.instance], 'the running task is served on, adopted')
  t.equal(liveTasks(cluster, id).length, 1, 'no second task of it')
  t.equal(cluster.sim.calls().filter((c) => c.type === 'ACCEPT').length, launched, 'nothing launched again')

  await createToken(follower, 'fresh', kitchenToken({ version: 'v2' }))
  t.equal((await serve(follower, 'fresh')).status, 200, 'the new leader launches what is asked of it')
})

t.test('with no leader to ask, a follower serves what it knows and a cold start fails with a clear 503', async (t) => {
  const cluster = await startMesosCluster(t, 2)
  const [leader, follower] = (await byLeadership(cluster)) as [Router, Router]
  await createToken(leader, 'known', kitchenToken())
  await createToken(leader, 'unborn', kitchenToken({ version: 'v3' }))
  await knownTo(follower, 'known')
  await knownTo(follower, 'unborn')
  const known = await serve(follower, 'known')
  t.equal(known.status, 200, `the follower's cold start served (${known.body.slice(0, 300)})`)
  // etcd goes: nobody leads, nobody can be asked; the follower still has its view.
  await cluster.etcd.stop()
  await waitFor('no router leads', async () => ((await Promise.all([leader, follower].map(clusterState))).every((s) => !s['is-leader']) ? true : undefined), 10_000)
  const warm = await serve(follower, 'known')
  t.same([warm.status, warm.instance], [200, known.instance], 'the follower serves the instance it knew')
  const cold = await call(`${follower.url}/request-info`, { headers: { 'x-waiter-token': 'unborn', 'x-waiter-queue-timeout': '3000' } })
  t.equal(cold.status, 503, 'a cold start nobody can carry out is refused')
  // (It cannot even be recorded: the version's record goes to etcd before anything is asked of the leader.)
  t.match(cold.text, /MAITRE_STORE_WRITE|leader|no instance available/, `with a reason (${cold.text.slice(0, 300)})`)
  await cluster.etcd.start()
  await byLeadership(cluster)
  // (Its client's first writes may still meet the circuit breaker of the outage: a 503 with
  // Retry-After, as a client is told to try again.)
  const back = Date.now()
  const served = await waitFor('the cold start served', async () => {
    const reply = await serve(follower, 'unborn')
    return reply.status === 200 ? reply : undefined
  }, 15_000)
  t.equal(served.status, 200, `once a leader is back, the cold start goes through (${Date.now() - back} ms after)`)
})

t.test('leader SIGKILL under steady load (routers as processes): the survivor fails nothing, takes the framework over within the TTL, adopts, and launches', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'maitre-mesos-procs-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const etcd = await startEtcd({ teardown: (fn) => t.teardown(fn), testdir: () => join(dir, 'etcd') })
  const sim = await startMesosSimulatorFor(t)
  const config = `etcd:\n  endpoints: [${etcd.endpoint}]\n  leaseTtlSecs: 2\nscaler:\n  tickMs: 200\n`
  const routers: RouterProcess[] = []
  for (let i = 0; i < 2; i++) {
    mkdirSync(join(dir, `r${i}`))
    routers.push(await startRouterProcess(t, { dataDir: join(dir, `r${i}`, 'data'), mesosMaster: sim.url, config }))
  }
  const state = async (r: RouterProcess): Promise<ClusterState> => (await call(`${r.url}/state/cluster`)).json<ClusterState>()
  const states = await waitFor('two members, one leader', async () => {
    const all = await Promise.all(routers.map(state))
    return all.every((s) => s.members.length === 2) && all.filter((s) => s['is-leader']).length === 1 ? all : undefined
  }, 15_000)
  const leader = routers[states.findIndex((s) => s['is-leader'])] as RouterProcess
  const survivor = routers.find((r) => r !== leader) as RouterProcess
  await createToken(survivor, 'steady', kitchenToken({ 'concurrency-level': 4 }))
  const h = { 'x-waiter-token': 'steady', 'x-waiter-queue-timeout': '20000' }
  t.equal((await call(`${survivor.url}/request-info`, { headers: h })).status, 200, 'started through the follower')
  const id = (await call(`${survivor.url}/service-id`, { headers: { 'x-waiter-token': 'steady' } })).text
  const tasksBefore = sim.tasks().filter((task) => task.id.startsWith(`${id}.`) && LIVE.includes(task.state)).map((task) => task.id).sort()

  let running = true
  const tally = { ok: 0, failed: [] as string[] }
  const clients = [0, 1].map(async () => {
    while (running) {
      const reply = await call(`${survivor.url}/sleep?sleep-ms=20`, { headers: h }).catch((err: unknown) => ({ status: 0, text: String(err) }))
      if (reply.status === 200) tally.ok++
      else tally.failed.push(`${reply.status} ${reply.text.slice(0, 200)}`)
    }
  })
  await waitFor('load flows', () => (tally.ok >= 10 ? true : undefined))
  // When etcd lets the dead leader's lease go is etcd's doing (late on a loaded machine): watched
  // apart from the survivor's taking over, which is the router's own.
  const leaderKey = await followLeasedKey(etcd, '/maitre/maitre/leader')
  t.equal(leaderKey.grantedTtlSecs, 2, 'the leader holds its key on a lease of the configured 2 s TTL')
  const killedAt = Date.now()
  process.kill(-(leader.child.pid as number), 'SIGKILL')
  await leader.exited
  await waitFor('the survivor leads', async () => ((await state(survivor))['is-leader'] ? true : undefined), 10_000)
  const tookMs = Date.now() - killedAt
  const lapsedMs = (await within('etcd to delete the dead leader’s key', leaderKey.gone, 5000)) - killedAt
  t.ok(tookMs - lapsedMs < 3000, `it leads ${tookMs - lapsedMs} ms after etcd let the dead leader's lease go (${lapsedMs} ms after the SIGKILL; ${tookMs} ms in all)`)
  await waitFor('the framework subscribed again', () => (sim.frameworks()[0]?.connected === true ? true : undefined), 10_000)
  t.equal(sim.frameworks().length, 1, 'as the same framework')
  const served = tally.ok
  await waitFor('load flows on', () => (tally.ok >= served + 20 ? true : undefined), 10_000)
  running = false
  await Promise.all(clients)
  t.same(tally.failed, [], `no request through the survivor failed (${tally.ok} served)`)
  t.same(sim.tasks().filter((task) => task.id.startsWith(`${id}.`) && LIVE.includes(task.state)).map((task) => task.id).sort(), tasksBefore, 'the tasks that ran are the tasks that run: adopted, none launched again')
  await createToken(survivor, 'after', kitchenToken({ version: 'v9' }))
  t.equal((await call(`${survivor.url}/request-info`, { headers: { 'x-waiter-token': 'after', 'x-waiter-queue-timeout': '20000' } })).status, 200, 'the new leader launches a new version')
})
