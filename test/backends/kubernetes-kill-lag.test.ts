/**
 * The Kubernetes backend's kill of an idle pod, against the simulator's ReplicaSet controller
 * whose pod cache lags: however late it sees the chosen pod go, and however kills follow each
 * other, the pod serving a request is never the one that goes. (The kill's other cases are in
 * kubernetes-kill-replacements.test.ts and kubernetes-kill-races.test.ts: three files, so that tap
 * runs them side by side.)
 */
import t from 'tap'
import { request as undiciRequest, Agent } from 'undici'
import type { Instance } from '../../src/backends/backend.ts'
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
