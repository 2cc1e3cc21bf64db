/**
 * An operator's kill (POST /apps/{id}/instance/{iid}/kill) locks the instance out of rotation
 * before it asks the backend: a kill that does not happen must give it back.
 */
import t from 'tap'
import { ManualClock } from '../fixtures/manual-clock.ts'
import { InstanceTracker } from '../../src/backends/tracker.ts'
import { handleInstanceSignal, type InstanceApiDeps } from '../../src/admin/instances.ts'
import { MaitreError } from '../../src/errors.ts'
import type { Backend, Instance } from '../../src/backends/backend.ts'
import type { AdminRequest } from '../../src/admin/http.ts'

const SERVICE = 's'
const INSTANCE: Instance = { id: 's.a', serviceId: SERVICE, host: '127.0.0.1', port: 1, extraPorts: [], proto: 'http', startedAt: 1, healthy: true, logDirectory: undefined, flags: new Set() }

function setup(killInstance: Backend['killInstance']): { tracker: InstanceTracker; deps: InstanceApiDeps } {
  const tracker = new InstanceTracker({ clock: new ManualClock(), ejectBaseMs: 1000, maxEjectMs: 8000 })
  tracker.configure(SERVICE, { concurrencyLevel: 1, loadBalancing: 'oldest', maxQueueLength: 10 })
  tracker.sync(SERVICE, [INSTANCE], undefined)
  const deps = { backend: { killInstance } as unknown as Backend, tracker } as unknown as InstanceApiDeps
  return { tracker, deps }
}

function killRequest(): AdminRequest {
  const written: unknown[] = []
  return { req: { method: 'POST' }, res: { writeHead: () => undefined, end: (body: unknown) => void written.push(body) }, url: new URL('http://router/apps/s/instance/s.a/kill'), cid: 'cid' } as unknown as AdminRequest
}

t.test('a kill the backend fails (a Mesos follower whose leader is away) answers its error and leaves the instance serving', async (t) => {
  const { tracker, deps } = setup(async () => {
    throw new MaitreError('MAITRE_BACKEND', "The cluster's leader did not answer; try again", { status: 503 })
  })
  await t.rejects(handleInstanceSignal(killRequest(), SERVICE, INSTANCE.id, 'kill', deps), { code: 'MAITRE_BACKEND' })
  t.same(tracker.instanceSlots(SERVICE).map((s) => s.locked), [false], 'not locked out of rotation')
  t.ok(tracker.tryAcquire(SERVICE), 'the next request is served by it')
})

t.test('a kill of an instance the backend does not know answers 404 and unlocks it', async (t) => {
  const { tracker, deps } = setup(async () => false)
  await t.rejects(handleInstanceSignal(killRequest(), SERVICE, INSTANCE.id, 'kill', deps), { code: 'MAITRE_NOT_FOUND' })
  t.ok(tracker.tryAcquire(SERVICE))
})

t.test('a kill that happens keeps the instance locked: no new request reaches it', async (t) => {
  const { tracker, deps } = setup(async () => true)
  await handleInstanceSignal(killRequest(), SERVICE, INSTANCE.id, 'kill', deps)
  t.same(tracker.instanceSlots(SERVICE).map((s) => s.locked), [true])
  t.equal(tracker.tryAcquire(SERVICE), undefined)
})
