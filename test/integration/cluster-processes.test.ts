/**
 * Cluster mode with routers as real processes (`node src/main.ts serve`), so that one can be
 * killed as a crash kills it: SIGKILL, no goodbye to etcd.
 */
import t from 'tap'
import { mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { startProcessClusterBase } from '../fixtures/cluster.ts'
import { followLeasedKey } from '../fixtures/etcd.ts'
import { startRouterProcess, type RouterProcess } from '../fixtures/router-process.ts'
import { call, createToken, kitchenToken, SIM_NAMESPACE, waitFor, within } from '../fixtures/router.ts'

interface ClusterState {
  leader: string | null
  'is-leader': boolean
  'router-id': string
  members: unknown[]
}

t.test('leader SIGKILL under steady load: the others fail nothing, one of them leads within the TTL, and scales', async (t) => {
  // One pod port for every router: they all build the same ReplicaSets.
  const { dir, etcd, sim, kubeconfig, podPortLow: low } = await startProcessClusterBase(t, 'cluster-procs')
  const config = `etcd:\n  endpoints: [${etcd.endpoint}]\n  leaseTtlSecs: 2\nscaler:\n  tickMs: 200\n`
  const routers: RouterProcess[] = []
  for (let i = 0; i < 3; i++) {
    mkdirSync(join(dir, `r${i}`))
    routers.push(await startRouterProcess(t, { dataDir: join(dir, `r${i}`, 'data'), kubeconfig, portLow: low, config }))
  }

  const state = async (r: RouterProcess): Promise<ClusterState> => (await call(`${r.url}/state/cluster`)).json<ClusterState>()
  await waitFor('three members, one leader', async () => {
    const states = await Promise.all(routers.map(state))
    return states.every((s) => s.members.length === 3) && states.filter((s) => s['is-leader']).length === 1 ? true : undefined
  })
  await createToken(routers[0] as RouterProcess, 'steady', kitchenToken({ 'concurrency-level': 4, 'max-instances': 10 }))
  const h = { 'x-waiter-token': 'steady' }
  for (const r of routers) t.equal((await call(`${r.url}/request-info`, { headers: h })).status, 200)

  const leaderIndex = (await Promise.all(routers.map(state))).findIndex((s) => s['is-leader'])
  const leader = routers[leaderIndex] as RouterProcess
  const survivors = routers.filter((r) => r !== leader)
  // Steady load: two clients per surviving router, one after another, until told to stop.
  let running = true
  const outcomes = new Map<string, { ok: number; failed: string[] }>(survivors.map((r) => [r.url, { ok: 0, failed: [] }]))
  const clients = survivors.flatMap((r) => [0, 1].map(async () => {
    const tally = outcomes.get(r.url) as { ok: number; failed: string[] }
    while (running) {
      try {
        const reply = await call(`${r.url}/sleep?sleep-ms=20`, { headers: h })
        if (reply.status === 200) tally.ok++
        else tally.failed.push(`${reply.status} ${reply.text.slice(0, 200)}`)
      } catch (err) {
        tally.failed.push((err as Error).message)
      }
    }
  }))
  await waitFor('load flows', () => ([...outcomes.values()].every((o) => o.ok >= 5) ? true : undefined))

  // When etcd lets the dead leader's lease go is etcd's doing (late on a loaded machine): watched
  // apart from the survivors' taking over, which is the routers' own.
  const leaderKey = await followLeasedKey(etcd, '/maitre/maitre/leader')
  t.equal(leaderKey.grantedTtlSecs, 2, 'the leader holds its key on a lease of the configured 2 s TTL')
  const killedAt = Date.now()
  process.kill(-(leader.child.pid as number), 'SIGKILL')
  await leader.exited
  const newLeader = await waitFor('a survivor leads', async () => {
    const states = await Promise.all(survivors.map(state))
    const leading = states.filter((s) => s['is-leader'])
    return leading.length === 1 ? leading[0] : undefined
  }, 10_000)
  // Once the key is gone: the watch's delete event and one transaction; the slack is for a loaded machine.
  const tookMs = Date.now() - killedAt
  const lapsedMs = (await within('etcd to delete the dead leader’s key', leaderKey.gone, 5000)) - killedAt
  t.ok(tookMs - lapsedMs < 3000, `${newLeader?.['router-id']} leads ${tookMs - lapsedMs} ms after etcd let the dead leader's lease go (${lapsedMs} ms after the SIGKILL; ${tookMs} ms in all)`)
  await waitFor('the dead router leaves the member list', async () => ((await state(survivors[0] as RouterProcess)).members.length === 2 ? true : undefined), 5000)

  // Scaling resumes under the new leader: a burst of long requests asks for more replicas.
  const replicas = (): number => sim.list('replicasets', SIM_NAMESPACE).map((rs) => (rs.spec as { replicas: number }).replicas)[0] ?? 0
  const before = replicas()
  const burst = Array.from({ length: 16 }, (_, i) => call(`${(survivors[i % 2] as RouterProcess).url}/sleep?sleep-ms=3000`, { headers: h }))
  const scaled = await waitFor('the new leader scales the ReplicaSet up', () => (replicas() > before ? replicas() : undefined), 5000)
  t.ok(scaled > before, `requested instances ${before} → ${scaled}`)
  t.same((await Promise.all(burst)).map((r) => r.status).filter((s) => s !== 200), [], 'the burst is served')
  for (const [url, tally] of outcomes) {
    t.same(tally.failed, [], `no request through the surviving router ${url} failed (${tally.ok} served)`)
  }

  // Now a router that does not lead dies the same way, under the same load: only requests sent
  // to it can fail; the last router serves on, and still leads.
  const states = await Promise.all(survivors.map(state))
  const follower = survivors[states.findIndex((s) => !s['is-leader'])] as RouterProcess
  const last = survivors.find((r) => r !== follower) as RouterProcess
  const lastTally = outcomes.get(last.url) as { ok: number; failed: string[] }
  const servedBefore = lastTally.ok
  process.kill(-(follower.child.pid as number), 'SIGKILL')
  await follower.exited
  await waitFor('the last router serves on', () => (lastTally.ok >= servedBefore + 20 ? true : undefined), 10_000)
  running = false
  await Promise.all(clients)
  t.same(lastTally.failed, [], `no request through the last router failed across the follower's death (${lastTally.ok - servedBefore} served since)`)
  t.ok((await state(last))['is-leader'], 'and it still leads')
})
