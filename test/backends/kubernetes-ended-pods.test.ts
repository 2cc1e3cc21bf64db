/**
 * The Kubernetes backend and pods that ended without being deleted (evicted, or stopped by their
 * node's shutdown: phase Failed, left in the API until the pod GC takes them), and Events older
 * than what they are read for.
 */
import t from 'tap'
import { SIM_NAMESPACE, waitFor } from '../fixtures/router.ts'
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
