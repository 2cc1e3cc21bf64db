/**
 * The Kubernetes backend's kill of an idle pod, against the simulator's ReplicaSet controller:
 * whatever its caches lag, however kills race, and even when a busy single-threaded app fails its
 * readiness probe (which the controller ranks before any deletion cost), the pod serving a
 * request is never the one that goes.
 */
import t from 'tap'
import { request as undiciRequest, Agent } from 'undici'
import type { Instance } from '../../src/backends/backend.ts'
import { replicaSetName } from '../../src/backends/kubernetes/replica-set.ts'
import { KubeApiError } from '../../src/backends/kubernetes/api.ts'
import { SIM_NAMESPACE, SIM_TOKEN, waitFor } from '../fixtures/router.ts'
import { healthy, readyPods, requestTo, setup, spec } from '../fixtures/kube-backend.ts'

t.test('the simulator’s ReplicaSet controller can act from a lagging pod cache: a scale-down right after a deletion-cost patch goes by the rank it last saw; its expectations keep it from creating twice', { timeout: 30_000 }, async (t) => {
  const run = async (lagMs: number): Promise<{ kept: string; created: number }> => {
    const { sim } = await setup(t, { sim: { controllerLagMs: { pods: lagMs, replicasets: 0 } } })
    const trusting = new Agent({ connect: { ca: sim.ca } })
    const h = { authorization: `Bearer ${SIM_TOKEN}`, 'content-type': 'application/json' }
    const apps = `${sim.url}/apis/apps/v1/namespaces/${SIM_NAMESPACE}`
    const core = `${sim.url}/api/v1/namespaces/${SIM_NAMESPACE}`
    const call = async (url: string, method: string, body?: unknown, type = 'application/json'): Promise<Record<string, any>> => {
      const res = await undiciRequest(url, { dispatcher: trusting, method: method as 'GET', headers: { ...h, 'content-type': type }, ...(body === undefined ? {} : { body: JSON.stringify(body) }) })
      return (await res.body.json()) as Record<string, any>
    }
    const pods = async (): Promise<Record<string, any>[]> => ((await call(`${core}/pods`, 'GET')).items as Record<string, any>[]).filter((p) => p.metadata.deletionTimestamp === undefined)
    await call(`${apps}/replicasets`, 'POST', { apiVersion: 'apps/v1', kind: 'ReplicaSet', metadata: { name: 'lag' }, spec: { replicas: 1, selector: { matchLabels: { app: 'lag' } }, template: { metadata: { labels: { app: 'lag' } }, spec: { terminationGracePeriodSeconds: 1, containers: [{ name: 'app', image: 'maitre-app', command: ['/bin/sh', '-c', 'exec sleep 60'] }] } } } })
    await waitFor('one pod', async () => ((await pods()).length === 1 ? true : undefined), 10_000)
    // A second pod a second younger (timestamps have whole seconds): without a cost, the younger goes first.
    await new Promise((resolve) => setTimeout(resolve, 1100))
    await call(`${apps}/replicasets/lag/scale`, 'PATCH', { spec: { replicas: 2 } }, 'application/merge-patch+json')
    await waitFor('two pods', async () => ((await pods()).length === 2 ? true : undefined), 10_000)
    await new Promise((resolve) => setTimeout(resolve, lagMs + 200))
    const [older, younger] = (await pods()).sort((a, b) => Date.parse(a.metadata.creationTimestamp) - Date.parse(b.metadata.creationTimestamp))
    // The older is marked to go first, and the count lowered at once.
    await call(`${core}/pods/${String(older?.metadata.name)}`, 'PATCH', { metadata: { annotations: { 'controller.kubernetes.io/pod-deletion-cost': '-2147483648' } } }, 'application/merge-patch+json')
    await call(`${apps}/replicasets/lag/scale`, 'PATCH', { spec: { replicas: 1 } }, 'application/merge-patch+json')
    const left = await waitFor('one pod left', async () => {
      const now = await pods()
      return now.length === 1 ? now : undefined
    }, 10_000)
    // Up again by two: a lagging cache must not make it create more.
    await call(`${apps}/replicasets/lag/scale`, 'PATCH', { spec: { replicas: 3 } }, 'application/merge-patch+json')
    await new Promise((resolve) => setTimeout(resolve, lagMs * 3 + 500))
    const created = (await pods()).length
    await trusting.close()
    return { kept: left[0]?.metadata.name === younger?.metadata.name ? 'younger' : 'older', created }
  }
  t.same(await run(0), { kept: 'younger', created: 3 }, 'a controller that sees everything at once takes the pod marked to go')
  t.same(await run(700), { kept: 'older', created: 3 }, 'one whose pod cache lags takes the one its stale rank puts first, and still creates exactly what is missing')
})

t.test('killing an idle pod is safe against a ReplicaSet controller whose pod cache lags: the pod serving a request is never the one that goes', { timeout: 30_000 }, async (t) => {
  // The controller sees a new replica count at once, pod changes 600 ms late.
  const { sim, backend } = await setup(t, { sim: { controllerLagMs: { pods: 600, replicasets: 0 } } })
  await backend.ensureService(spec('svc-lag'))
  await waitFor('one ready pod', () => (healthy(backend, 'svc-lag') === 1 ? true : undefined), 10_000)
  // A second pod, a second or more younger (timestamps have whole seconds): with no deletion
  // cost seen, the controller's rank takes the younger one first.
  await new Promise((resolve) => setTimeout(resolve, 1100))
  await backend.scale('svc-lag', 2)
  await waitFor('two ready pods', () => (healthy(backend, 'svc-lag') === 2 ? true : undefined), 10_000)
  const [older, younger] = [...(backend.state('svc-lag')?.instances ?? [])].sort((a, b) => a.startedAt - b.startedAt)
  if (older === undefined || younger === undefined) throw new Error('two instances expected')
  // The younger one serves a long request; the older one, idle, is chosen to go.
  const serving = undiciRequest(`http://${younger.host}:${younger.port}/sleep?sleep-ms=2500`).then(async (res) => ({ status: res.statusCode, body: await res.body.text() }), (err: unknown) => ({ status: 0, body: String(err) }))
  await new Promise((resolve) => setTimeout(resolve, 200))
  const seen = new Set<string>()
  const everHealthy = new Set<string>()
  backend.subscribe((id) => {
    for (const i of id === 'svc-lag' ? (backend.state('svc-lag')?.instances ?? []) : []) {
      seen.add(i.id)
      if (i.healthy) everHealthy.add(i.id)
    }
  })
  t.equal(await backend.killInstance('svc-lag', older.id), true)
  const answer = await serving
  t.equal(answer.status, 200, 'the request on the busy pod finished')
  await waitFor('one pod left', () => (backend.state('svc-lag')?.instances.length === 1 ? true : undefined), 10_000)
  t.same(backend.state('svc-lag')?.instances.map((i) => i.id), [younger.id], 'the busy pod is the one that stays')
  // The controller's replacement for the deleted pod is what the lower count takes: it never shows as an instance.
  t.same([...seen].filter((id) => id !== older.id && id !== younger.id), [], 'no other instance ever showed meanwhile')
  t.same([...everHealthy].filter((id) => id !== older.id && id !== younger.id), [], 'nor took requests')
  // The last pod: nothing busy can be taken in its place, so the count drops first and the pod
  // goes, with no wait for a replacement.
  const startedAt = Date.now()
  t.equal(await backend.killInstance('svc-lag', younger.id), true)
  await waitFor('no pod left', () => (sim.list('pods', SIM_NAMESPACE).length === 0 ? true : undefined), 40_000)
  const tookMs = Date.now() - startedAt
  t.equal(sim.list('replicasets', SIM_NAMESPACE)[0]?.spec.replicas, 0, 'replicas 0')
  t.ok(tookMs < 10_000, `the last pod went ${tookMs} ms after its kill (no wait for a replacement, which may take 30 s)`)
})

t.test('two kills back to back, the controller’s pod cache lagging: the pod serving a request stays, and its request ends whole', { timeout: 45_000 }, async (t) => {
  const { sim, backend } = await setup(t, { sim: { controllerLagMs: { pods: 300, replicasets: 100 } } })
  await backend.ensureService(spec('svc-twice'))
  const [oldest, middle, busy] = (await readyPods(t, backend, 'svc-twice', 3)) as [Instance, Instance, Instance]
  // The youngest serves a request longer than its grace period (3 s): were it deleted, SIGKILL would cut it.
  const serving = requestTo(busy, '/sleep?sleep-ms=4000')
  await new Promise((resolve) => setTimeout(resolve, 200))
  const goneEarly: string[] = []
  const watch = setInterval(() => {
    for (const p of sim.list('pods', SIM_NAMESPACE)) if (p.metadata.deletionTimestamp !== undefined && busy.id.includes(p.metadata.name as string) && !goneEarly.includes(p.metadata.name as string)) goneEarly.push(p.metadata.name as string)
  }, 20)
  t.teardown(() => clearInterval(watch))
  // One right after the other, as the autoscaler or an operator may.
  t.equal(await backend.killInstance('svc-twice', oldest.id), true)
  t.equal(await backend.killInstance('svc-twice', middle.id), true)
  const answer = await serving
  t.equal(answer.status, 200, `the busy pod's request ended whole (${answer.body.slice(0, 100)})`)
  await waitFor('one pod left', () => (sim.list('pods', SIM_NAMESPACE).length === 1 ? true : undefined), 15_000)
  t.same(backend.state('svc-twice')?.instances.map((i) => i.id), [busy.id], 'the busy pod is the one left')
  t.same(goneEarly, [], 'it was never marked for deletion')
  t.equal(sim.list('replicasets', SIM_NAMESPACE)[0]?.spec.replicas, 1)
})

t.test('a controller whose pod cache lags 2 s: a second kill’s replacement comes twice the lag after its delete, past any fixed 3 s bound; the count drops only once each chosen pod is replaced, and only pods maitre chose (or their replacements) go', { timeout: 60_000 }, async (t) => {
  // The controller waits on its expectations of the first kill's scale-down (its delete of the
  // replacement, seen a lag later) before it sees the second delete: its replacement takes ~2 lags.
  // Its expectations last longer than the lag, as the real one's 5 minutes do.
  const { sim, backend } = await setup(t, { sim: { controllerLagMs: { pods: 2000, replicasets: 0 }, expectationsTimeoutMs: 60_000 } })
  await backend.ensureService(spec('svc-slow'))
  const [first, second, busy] = (await readyPods(t, backend, 'svc-slow', 3, { together: true })) as [Instance, Instance, Instance]
  const instances = new Set<string>()
  backend.subscribe((id) => {
    for (const i of id === 'svc-slow' ? (backend.state('svc-slow')?.instances ?? []) : []) instances.add(i.id)
  })
  // What the cluster does, in order, as a 20 ms poll sees it: pods created and marked for
  // deletion, and the replica count.
  const history: { kind: 'created' | 'deleted' | 'replicas'; what: string }[] = []
  const known = new Set(sim.list('pods', SIM_NAMESPACE).map((p) => p.metadata.name as string))
  const deleted = new Set<string>()
  let replicas = sim.list('replicasets', SIM_NAMESPACE)[0]?.spec.replicas as number
  const watch = setInterval(() => {
    const pods = sim.list('pods', SIM_NAMESPACE)
    // An idle app exits at its SIGTERM at once, so its pod may be gone by the next poll (this
    // process stalls on a loaded machine): a pod gone without being seen terminating was
    // deleted too. Recorded before the pods this poll finds new, as the loop below records a
    // terminating pod before the younger ones listed after it.
    const listed = new Set(pods.map((p) => p.metadata.name as string))
    for (const name of known) {
      if (!listed.has(name) && !deleted.has(name)) {
        history.push({ kind: 'deleted', what: name })
        deleted.add(name)
      }
    }
    for (const p of pods) {
      const name = p.metadata.name as string
      if (!known.has(name)) history.push({ kind: 'created', what: name })
      known.add(name)
      if (p.metadata.deletionTimestamp !== undefined && !deleted.has(name)) history.push({ kind: 'deleted', what: name })
      if (p.metadata.deletionTimestamp !== undefined) deleted.add(name)
    }
    const now = sim.list('replicasets', SIM_NAMESPACE)[0]?.spec.replicas as number
    if (now !== replicas) history.push({ kind: 'replicas', what: String(now) })
    replicas = now
  }, 20)
  t.teardown(() => clearInterval(watch))
  // Longer than both kills and the pods' grace period: a SIGTERM while it runs would cut it at SIGKILL.
  const serving = requestTo(busy, '/sleep?sleep-ms=9000')
  await new Promise((resolve) => setTimeout(resolve, 200))
  t.equal(await backend.killInstance('svc-slow', first.id), true)
  t.equal(backend.state('svc-slow')?.killsUnderWay, 1, 'answered once its pod is deleted, the kill is still under way (its replacement awaited)')
  t.equal(await backend.killInstance('svc-slow', second.id), true)
  await waitFor('one pod left, nothing terminating', () => (sim.list('pods', SIM_NAMESPACE).length === 1 ? true : undefined), 30_000)
  const answer = await serving
  t.equal(answer.status, 200, `the busy pod's request ended whole (${answer.body.slice(0, 100)})`)
  const podOf = (i: Instance): string => [...known].find((name) => i.id.includes(name)) ?? i.id
  const chosen = [first, second].map(podOf)
  // Each drop of the count comes after the controller created a pod in place of the chosen one.
  const drops = history.flatMap((e, at) => (e.kind === 'replicas' ? [at] : []))
  t.equal(drops.length, 2, `two drops of the count (${JSON.stringify(history)})`)
  for (const [k, at] of drops.entries()) {
    const deletedAt = history.findIndex((e) => e.kind === 'deleted' && e.what === chosen[k])
    t.ok(deletedAt >= 0 && deletedAt < at && history.slice(deletedAt, at).some((e) => e.kind === 'created'), `kill ${k + 1}: the count dropped once the controller had replaced the chosen pod (${JSON.stringify(history)})`)
  }
  const shown = new Set([...instances].map((id) => [...known].find((name) => id.includes(name))))
  t.same([...deleted].filter((name) => !chosen.includes(name) && shown.has(name)), [], 'no pod that ever was an instance went unless maitre chose it')
  t.notOk(deleted.has(podOf(busy)), 'the busy pod was never marked for deletion')
  t.same(backend.state('svc-slow')?.instances.map((i) => i.id), [busy.id], 'the busy pod is the one left')
  t.equal(sim.list('replicasets', SIM_NAMESPACE)[0]?.spec.replicas, 1, 'replicas 1')
})

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
  await waitFor('the late replacement deleted', () => (deleted.has(late) ? true : undefined), 10_000)
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

t.test('a router that closes while a kill waits for the controller leaves the count as it is (the next router decides again), never lowered blind', { timeout: 60_000 }, async (t) => {
  // The pod cache lags 3 s: no replacement yet when the router closes. A scale write of another
  // service hangs, so the close waits (up to its bound) with the API client still open.
  const { sim, backend } = await setup(t, { api: { requestTimeoutMs: 3000 }, sim: { controllerLagMs: { pods: 3000, replicasets: 0 }, expectationsTimeoutMs: 60_000 } })
  await backend.ensureService(spec('svc-a'))
  await backend.ensureService(spec('svc-b'))
  const [chosen] = (await readyPods(t, backend, 'svc-a', 2, { together: true })) as [Instance, Instance]
  const replicasOfA = (): unknown => sim.list('replicasets', SIM_NAMESPACE).find((r) => r.metadata.name === replicaSetName('svc-a'))?.spec.replicas
  t.equal(await backend.killInstance('svc-a', chosen.id), true)
  const scaleReads = (): number => sim.requests.filter(([resource, verb]) => resource === 'replicasets/scale' && verb === 'get').length
  const readsBefore = scaleReads()
  sim.hangNext(1, ['replicasets/scale', 'get'])
  const hung = backend.scale('svc-b', 2)
  await waitFor('the hung write under way', () => (scaleReads() > readsBefore ? true : undefined), 5000)
  await backend.close()
  await hung
  t.equal(replicasOfA(), 2, 'the count was not lowered without a replacement')
})

t.test('a busy single-threaded app fails its readiness probe, which the controller ranks before any deletion cost: it still stays, and the idle one goes', { timeout: 45_000 }, async (t) => {
  const { sim, backend } = await setup(t)
  await backend.ensureService(spec('svc-unready'))
  const [idle, busy] = (await readyPods(t, backend, 'svc-unready', 2)) as [Instance, Instance]
  // It blocks for 4 s: no health check is answered meanwhile (the probe's timeout is 1 s).
  const serving = requestTo(busy, '/block?block-ms=4000')
  await waitFor('the busy pod unready', () => (backend.state('svc-unready')?.instances.find((i) => i.id === busy.id)?.healthy === false ? true : undefined), 5000)
  t.equal(await backend.killInstance('svc-unready', idle.id), true)
  const answer = await serving
  t.equal(answer.status, 200, `the busy pod's request ended whole (${answer.body.slice(0, 100)})`)
  await waitFor('one pod left', () => (sim.list('pods', SIM_NAMESPACE).length === 1 ? true : undefined), 15_000)
  t.same(sim.list('pods', SIM_NAMESPACE).map((p) => busy.id.includes(p.metadata.name as string)), [true], 'the busy pod is the one left')
  t.equal(sim.list('replicasets', SIM_NAMESPACE)[0]?.spec.replicas, 1)
})

t.test('two kills at once (an operator’s and the autoscaler’s): the pod serving a request stays, and its request ends whole', { timeout: 45_000 }, async (t) => {
  const { sim, backend } = await setup(t)
  await backend.ensureService(spec('svc-both'))
  const [oldest, middle, busy] = (await readyPods(t, backend, 'svc-both', 3)) as [Instance, Instance, Instance]
  const serving = requestTo(busy, '/sleep?sleep-ms=4000')
  await new Promise((resolve) => setTimeout(resolve, 200))
  t.same(await Promise.all([backend.killInstance('svc-both', oldest.id), backend.killInstance('svc-both', middle.id)]), [true, true])
  const answer = await serving
  t.equal(answer.status, 200, `the busy pod's request ended whole (${answer.body.slice(0, 100)})`)
  await waitFor('one pod left', () => (sim.list('pods', SIM_NAMESPACE).length === 1 ? true : undefined), 15_000)
  t.same(backend.state('svc-both')?.instances.map((i) => i.id), [busy.id], 'the busy pod is the one left')
  t.equal(sim.list('replicasets', SIM_NAMESPACE)[0]?.spec.replicas, 1)
})

t.test('a scale write held back until the replacement is ready, while a busy pod is unready: the replacement is replaced again, and the busy pod stays', { timeout: 45_000 }, async (t) => {
  // The API server never answers the kill's first read of /scale (1.5 s to its timeout): by the
  // time the count could drop, the replacement is ready, and the controller would rank the
  // unready busy pod before it.
  const { sim, backend } = await setup(t, { api: { requestTimeoutMs: 1500 } })
  await backend.ensureService(spec('svc-late'))
  const [idle, busy] = (await readyPods(t, backend, 'svc-late', 2)) as [Instance, Instance]
  const serving = requestTo(busy, '/block?block-ms=6000')
  await waitFor('the busy pod unready', () => (backend.state('svc-late')?.instances.find((i) => i.id === busy.id)?.healthy === false ? true : undefined), 5000)
  sim.hangNext(1, ['replicasets/scale', 'get'])
  t.equal(await backend.killInstance('svc-late', idle.id), true)
  const answer = await serving
  t.equal(answer.status, 200, `the busy pod's request ended whole (${answer.body.slice(0, 100)})`)
  await waitFor('one pod left', () => (sim.list('pods', SIM_NAMESPACE).length === 1 ? true : undefined), 15_000)
  t.same(sim.list('pods', SIM_NAMESPACE).map((p) => busy.id.includes(p.metadata.name as string)), [true], 'the busy pod is the one left')
})

t.test('another router’s GC deletes the ReplicaSet while a kill waits on the controller: the service goes here too', { timeout: 30_000 }, async (t) => {
  // With a pod quota the controller cannot replace the pod at once, so the kill waits on it.
  const { sim, api, backend } = await setup(t, { sim: { podQuota: 2 } })
  await backend.ensureService(spec('svc-gone'))
  const [first] = (await readyPods(t, backend, 'svc-gone', 2)) as [Instance, Instance]
  const killing = backend.killInstance('svc-gone', first.id)
  await new Promise((resolve) => setTimeout(resolve, 100))
  await api.deleteReplicaSet(replicaSetName('svc-gone'))
  await waitFor('the ReplicaSet gone', () => (sim.list('replicasets', SIM_NAMESPACE).length === 0 ? true : undefined), 10_000)
  await waitFor('the service forgotten here', () => (backend.state('svc-gone') === undefined ? true : undefined), 2000)
  t.same(backend.services().map((s) => s.id), [], 'no service is left without its ReplicaSet, though a kill was under way')
  await killing
})
