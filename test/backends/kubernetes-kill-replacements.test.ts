/**
 * The Kubernetes backend's kill of an idle pod when the controller's replacement does not come
 * as asked: a full quota (FailedCreate), a FailedCreate from before the kill, a late replacement
 * after the count dropped, and a pod gone before its kill.
 */
import t from 'tap'
import type { Instance } from '../../src/backends/backend.ts'
import { KubeApiError } from '../../src/backends/kubernetes/api.ts'
import { SIM_NAMESPACE, waitFor } from '../fixtures/router.ts'
import { healthy, readyPods, requestTo, setup, spec } from '../fixtures/kube-backend.ts'

t.test('a controller that cannot replace the chosen pod (its quota is full) says so with a FailedCreate: the kill lowers the count then, not after its bound; a replacement it makes after all, once the count dropped, is claimed and never shows as an instance', { timeout: 60_000 }, async (t) => {
  // The controller sees pods at once and ReplicaSets 1.5 s late: once the quota is lifted it makes
  // a replacement for the count it last saw, after maitre lowered it.
  const { sim, backend } = await setup(t, { sim: { controllerLagMs: { pods: 0, replicasets: 1500 }, expectationsTimeoutMs: 60_000 } })
  await backend.ensureService(spec('svc-quota'))
  const [idle, other, busy] = (await readyPods(t, backend, 'svc-quota', 3, { together: true })) as [Instance, Instance, Instance]
  const serving = requestTo(busy, '/sleep?sleep-ms=5500')
  const instances = new Set<string>()
  backend.subscribe((id) => {
    for (const i of id === 'svc-quota' ? (backend.state('svc-quota')?.instances ?? []) : []) instances.add(i.id)
  })
  const deleted = new Set<string>()
  const watch = setInterval(() => {
    for (const p of sim.list('pods', SIM_NAMESPACE)) if (p.metadata.deletionTimestamp !== undefined) deleted.add(p.metadata.name as string)
  }, 20)
  t.teardown(() => clearInterval(watch))
  const before = new Set(sim.list('pods', SIM_NAMESPACE).map((p) => p.metadata.name as string))
  sim.setPodQuota(2)
  const startedAt = Date.now()
  t.equal(await backend.killInstance('svc-quota', idle.id), true)
  await waitFor('the count dropped by one', () => (sim.list('replicasets', SIM_NAMESPACE)[0]?.spec.replicas === 2 ? true : undefined), 40_000)
  const tookMs = Date.now() - startedAt
  t.ok(tookMs < 15_000, `the count dropped on the FailedCreate after ${tookMs} ms, not at the kill's 30 s bound`)
  sim.setPodQuota(undefined)
  const late = await waitFor('a replacement made after the count dropped', () => sim.list('pods', SIM_NAMESPACE).map((p) => p.metadata.name as string).find((name) => !before.has(name)), 10_000)
  // Deleted: marked, or gone between two looks (a pod the kubelet has not started yet goes at once).
  await waitFor('the late replacement deleted', () => (deleted.has(late) || !sim.list('pods', SIM_NAMESPACE).some((p) => p.metadata.name === late) ? true : undefined), 10_000)
  await waitFor('two pods left, nothing terminating', () => (sim.list('pods', SIM_NAMESPACE).length === 2 ? true : undefined), 15_000)
  t.notOk([...instances].some((id) => id.includes(late)), 'the late replacement never showed as an instance')
  t.same([...backend.state('svc-quota')?.instances.map((i) => i.id) ?? []].sort(), [other.id, busy.id].sort(), 'the pods maitre did not choose stay')
  t.equal((await serving).status, 200, 'the busy pod’s request ended whole')
})

t.test('a kill that gave up on its replacement owes one only until the controller shows it caught up with the lower count: a later scale-up’s pod is an instance as soon as it is ready', { timeout: 60_000 }, async (t) => {
  const { sim, backend } = await setup(t)
  await backend.ensureService(spec('svc-debt'))
  const [chosen] = (await readyPods(t, backend, 'svc-debt', 2, { together: true })) as [Instance, Instance]
  // One pod fewer than run now: no replacement can be made, even once the chosen pod is gone.
  sim.setPodQuota(1)
  t.equal(await backend.killInstance('svc-debt', chosen.id), true)
  await waitFor('the count dropped on the FailedCreate', () => (sim.list('replicasets', SIM_NAMESPACE)[0]?.spec.replicas === 1 ? true : undefined), 40_000)
  await waitFor('the controller caught up with it', () => {
    const rs = sim.list('replicasets', SIM_NAMESPACE)[0]
    return rs?.status?.replicas === 1 && rs.status.observedGeneration === rs.metadata.generation ? true : undefined
  }, 10_000)
  sim.setPodQuota(undefined)
  const before = new Set(sim.list('pods', SIM_NAMESPACE).map((p) => p.metadata.name as string))
  await backend.scale('svc-debt', 2)
  const fresh = await waitFor('the new pod ready in the cluster', () => sim.list('pods', SIM_NAMESPACE).find((p) => !before.has(p.metadata.name as string) && p.status?.conditions?.some((c: { type: string; status: string }) => c.type === 'Ready' && c.status === 'True')), 15_000)
  const readyAt = Date.now()
  await waitFor('it serves', () => (backend.state('svc-debt')?.instances.some((i) => i.healthy && i.id.includes(fresh.metadata.name as string)) ? true : undefined), 10_000)
  const lagMs = Date.now() - readyAt
  t.ok(lagMs < 3000, `it became a healthy instance ${lagMs} ms after it was ready, not hidden as a late replacement (6 s)`)
  t.equal(fresh.metadata.annotations?.['maitre/replacement'], undefined, 'and it was never marked as one')
})

t.test('a FailedCreate from before the kill does not end its wait: the count still drops only once the controller replaced the chosen pod', { timeout: 60_000 }, async (t) => {
  // The pod cache lags 3 s: the replacement comes after the kill's first look at the Events (2 s).
  const { sim, backend } = await setup(t, { sim: { controllerLagMs: { pods: 3000, replicasets: 0 }, expectationsTimeoutMs: 60_000 } })
  await backend.ensureService(spec('svc-old-event'))
  const [chosen] = (await readyPods(t, backend, 'svc-old-event', 2, { together: true })) as [Instance, Instance]
  // A FailedCreate of this ReplicaSet, before the kill: one pod too many for the quota.
  sim.setPodQuota(2)
  await backend.scale('svc-old-event', 3)
  await waitFor('a FailedCreate', () => (sim.list('events', SIM_NAMESPACE).some((e) => e.reason === 'FailedCreate') ? true : undefined), 15_000)
  await backend.scale('svc-old-event', 2)
  sim.setPodQuota(undefined)
  // The controller's status caught up with the count of 2 and the pods its cache shows: no pod is still to come.
  await waitFor('the controller caught up', () => {
    const rs = sim.list('replicasets', SIM_NAMESPACE)[0]
    return rs?.status?.replicas === 2 && rs.status.observedGeneration === rs.metadata.generation && sim.list('pods', SIM_NAMESPACE).length === 2 ? true : undefined
  }, 15_000)
  const known = new Set(sim.list('pods', SIM_NAMESPACE).map((p) => p.metadata.name as string))
  const history: string[] = []
  const watch = setInterval(() => {
    for (const p of sim.list('pods', SIM_NAMESPACE)) if (!known.has(p.metadata.name as string)) {
      known.add(p.metadata.name as string)
      history.push('created')
    }
    const replicas = sim.list('replicasets', SIM_NAMESPACE)[0]?.spec.replicas as number
    if (replicas !== 2 && !history.includes(`replicas ${replicas}`)) history.push(`replicas ${replicas}`)
  }, 20)
  t.teardown(() => clearInterval(watch))
  t.equal(await backend.killInstance('svc-old-event', chosen.id), true)
  await waitFor('the count dropped', () => (history.includes('replicas 1') ? true : undefined), 40_000)
  t.same(history.slice(0, 2), ['created', 'replicas 1'], 'the replacement came first, then the lower count')
})

t.test('a pod gone before its kill could delete it (404): nothing was chosen, so the count stays and its replacement serves', { timeout: 45_000 }, async (t) => {
  const { sim, api, backend } = await setup(t)
  await backend.ensureService(spec('svc-gone-first'))
  const [first] = (await readyPods(t, backend, 'svc-gone-first', 2, { together: true })) as [Instance, Instance]
  // Someone else deletes the pod just before maitre's delete, which then gets a 404.
  const deletePod = api.deletePod.bind(api)
  api.deletePod = async (name, uid, grace) => {
    api.deletePod = deletePod
    await deletePod(name, uid, 0)
    throw new KubeApiError(404, 'NotFound', `pods "${name}" not found`)
  }
  t.equal(await backend.killInstance('svc-gone-first', first.id), true, 'the instance is gone')
  t.equal(backend.requested('svc-gone-first'), 2, 'the count stays: maitre chose nothing')
  await waitFor('two ready pods again', () => (healthy(backend, 'svc-gone-first') === 2 ? true : undefined), 20_000)
  t.equal(sim.list('replicasets', SIM_NAMESPACE)[0]?.spec.replicas, 2, 'replicas 2')
  t.notOk(backend.state('svc-gone-first')?.instances.some((i) => i.id === first.id), 'the instance killed is not among them')
})
