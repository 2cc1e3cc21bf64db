/**
 * The Kubernetes backend and pods that ended without being deleted (evicted, or stopped by their
 * node's shutdown: phase Failed, left in the API until the pod GC takes them), and Events older
 * than what they are read for.
 */
import t from 'tap'
import { Agent, request as undiciRequest } from 'undici'
import { SIM_NAMESPACE, SIM_TOKEN, waitFor } from '../fixtures/router.ts'
import { healthy, setup, spec } from '../fixtures/kube-backend.ts'

t.test('an evicted pod is no instance: the controller has made another, and the eviction shows as a failed instance with its reason', { timeout: 60_000 }, async (t) => {
  const { sim, backend } = await setup(t)
  await backend.ready()
  await backend.ensureService(spec('svc-ev'))
  await waitFor('one ready pod', () => (healthy(backend, 'svc-ev') === 1 ? true : undefined), 15_000)
  const evicted = sim.list('pods', SIM_NAMESPACE)[0]?.metadata.name as string
  // What node-pressure eviction leaves: phase Failed, no deletionTimestamp.
  await sim.evictPod(SIM_NAMESPACE, evicted, 'The node was low on resource: memory.')
  await waitFor('the replacement ready', () => (backend.state('svc-ev')?.instances.some((i) => i.healthy && !i.id.includes(evicted)) === true ? true : undefined), 15_000)
  const state = backend.state('svc-ev')
  t.equal(state?.instances.length, 1, `only the pod the controller counts is an instance (${JSON.stringify(state?.instances.map((i) => [i.id, i.healthy]))})`)
  t.notOk(state?.instances.some((i) => i.id.includes(evicted)), 'the evicted pod is not one')
  t.match(state?.failed[0], { message: 'Evicted: The node was low on resource: memory.' }, 'its eviction is recorded as a failure, with the reason')
  t.equal(state?.failed.filter((f) => f.message.startsWith('Evicted')).length, 1, 'once')
  t.equal(await backend.killInstance('svc-ev', state?.failed[0]?.id ?? ''), false, 'it cannot be killed as an instance (the count would drop for a pod the controller no longer counts)')
  t.equal(sim.list('replicasets', SIM_NAMESPACE)[0]?.spec.replicas, 1, 'the count stays 1')
})

t.test('a FailedCreate from an earlier scale-up does not fail a later cold start', { timeout: 60_000 }, async (t) => {
  // The controller sees ReplicaSet changes 800 ms late (a loaded cluster's informer lag), so a
  // cold start is short of pods for a while: long enough for the Events to be read.
  const { sim, backend } = await setup(t, { sim: { podQuota: 0, controllerLagMs: { pods: 50, replicasets: 800 } } })
  await backend.ready()
  await backend.ensureService(spec('svc-q'))
  await waitFor('the quota shows as a deployment error', () => (/FailedCreate/.test(backend.state('svc-q')?.deploymentError ?? '') ? true : undefined), 10_000)
  sim.setPodQuota(undefined)
  await waitFor('healthy once the quota is lifted', () => (healthy(backend, 'svc-q') === 1 ? true : undefined), 15_000)
  await waitFor('the error cleared', () => (backend.state('svc-q')?.deploymentError === undefined ? true : undefined), 5_000)
  await backend.scale('svc-q', 0)
  await waitFor('scaled to zero', () => (backend.state('svc-q')?.instances.length === 0 ? true : undefined), 15_000)
  const seen: string[] = []
  const unsubscribe = backend.subscribe((id) => {
    const error = backend.state(id)?.deploymentError
    if (error !== undefined) seen.push(error)
  })
  t.teardown(unsubscribe)
  // A request comes: up from zero, the quota long lifted, its Event still there.
  await backend.scale('svc-q', 1)
  await waitFor('healthy again', () => (healthy(backend, 'svc-q') === 1 ? true : undefined), 15_000)
  t.same(seen, [], 'no deployment error during the cold start (it would fail every request waiting for it)')
})

t.test('a pod with the version’s labels that another ReplicaSet controls (the one before, deleted and made again, its pods not yet collected) is no instance', { timeout: 60_000 }, async (t) => {
  const { sim, backend } = await setup(t)
  await backend.ready()
  await backend.ensureService(spec('svc-own'))
  await waitFor('one ready pod', () => (healthy(backend, 'svc-own') === 1 ? true : undefined), 15_000)
  const rs = sim.list('replicasets', SIM_NAMESPACE)[0] as { metadata: { name: string }; spec: { template: { metadata: { labels: Record<string, string> }; spec: unknown } } }
  // Pods of another ReplicaSet with the version's labels (as those of the one before, deleted
  // and made again under the same name, until the garbage collector deletes them): their
  // controller is that one, not the version's.
  const trusting = new Agent({ connect: { ca: sim.ca } })
  t.teardown(() => trusting.close())
  const labels = rs.spec.template.metadata.labels
  const made = await undiciRequest(`${sim.url}/apis/apps/v1/namespaces/${SIM_NAMESPACE}/replicasets`, {
    dispatcher: trusting,
    method: 'POST',
    headers: { authorization: `Bearer ${SIM_TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ apiVersion: 'apps/v1', kind: 'ReplicaSet', metadata: { name: 'svc-own-before' }, spec: { replicas: 1, selector: { matchLabels: labels }, template: { metadata: { labels }, spec: rs.spec.template.spec } } }),
  })
  const answer = await made.body.text()
  t.equal(made.statusCode, 201, `another ReplicaSet with the version's labels made (${made.statusCode === 201 ? 'created' : answer.slice(0, 200)})`)
  await waitFor('its pod made', () => (sim.list('pods', SIM_NAMESPACE).some((p) => String(p.metadata.name).startsWith('svc-own-before-')) ? true : undefined), 10_000)
  // A pod of its own made after it: once the backend shows that one, it has seen the stray too
  // (one watch, in order).
  await backend.scale('svc-own', 2)
  await waitFor('its second pod shown', () => ((backend.state('svc-own')?.instances.length ?? 0) >= 2 ? true : undefined), 15_000)
  const instances = (backend.state('svc-own')?.instances ?? []).map((i) => i.id)
  t.same(instances.filter((id) => id.includes('svc-own-before-')), [], `the other ReplicaSet's pod is not an instance (${JSON.stringify(instances)})`)
  t.equal(instances.length, 2, 'its own two pods are')
})

t.test('evictions are no deployment error: two at once (a node under memory pressure) leave the version healthy, not Failing', { timeout: 60_000 }, async (t) => {
  const { sim, backend } = await setup(t)
  await backend.ready()
  await backend.ensureService(spec('svc-ev2', { minInstances: 2 }))
  await waitFor('two ready pods', () => (healthy(backend, 'svc-ev2') === 2 ? true : undefined), 15_000)
  const errors: string[] = []
  const unsubscribe = backend.subscribe((id) => {
    const error = backend.state(id)?.deploymentError
    if (error !== undefined) errors.push(error)
  })
  t.teardown(unsubscribe)
  const evicted = sim.list('pods', SIM_NAMESPACE).map((p) => String(p.metadata.name))
  await Promise.all(evicted.map((name) => sim.evictPod(SIM_NAMESPACE, name)))
  await waitFor('both evictions recorded', () => ((backend.state('svc-ev2')?.failed.filter((f) => f.message.startsWith('Evicted')).length ?? 0) === 2 ? true : undefined), 15_000)
  await waitFor('two ready replacements', () => (healthy(backend, 'svc-ev2') === 2 ? true : undefined), 15_000)
  t.same(errors, [], 'no deployment error on the way (Waiter’s rules would read two exits with code 137 as an invalid startup command)')
})
