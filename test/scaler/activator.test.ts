/** On-demand activation on a manual clock: shared creations, bounded waits, failures that leave nothing behind. */
import t from 'tap'
import { ManualClock } from '../fixtures/manual-clock.ts'
import { MemoryBackend } from '../fixtures/memory-backend.ts'
import { InstanceTracker } from '../../src/backends/tracker.ts'
import { Activator, type ActivationRequest } from '../../src/scaler/activator.ts'
import { agreeToCollect } from '../../src/scaler/fleet.ts'
import { effectiveParameters } from '../../src/versions/descriptor.ts'
import { launchSpecOf } from '../../src/versions/launch.ts'
import { silentLogger } from '../../src/log.ts'

const CORE = { cmd: 'run', cpus: 1, mem: 64, version: 'v1', 'min-instances': 2 }

function setup() {
  const clock = new ManualClock()
  const backend = new MemoryBackend(clock)
  const tracker = new InstanceTracker({ clock, ejectBaseMs: 1000, maxEjectMs: 8000 })
  backend.subscribe((id) => {
    const state = backend.state(id)
    if (state === undefined) tracker.forget(id)
    else tracker.sync(id, state.instances, undefined)
  })
  const activator = new Activator(backend, tracker, clock, silentLogger)
  const remembered: string[] = []
  const effective = { ...effectiveParameters(CORE), 'run-as-user': 'me' }
  const request = (id: string): ActivationRequest => ({
    serviceId: id,
    effective: () => effective,
    launchSpec: () => launchSpecOf(id, effective, { cluster: 'test', secret: 's' }),
    remember: async () => void remembered.push(id),
  })
  return { clock, backend, tracker, activator, request, remembered }
}

t.test('concurrent first requests share one creation, recorded before it is made', async (t) => {
  const { backend, activator, request, remembered } = setup()
  const first = activator.ensure(request('a'))
  const second = activator.ensure(request('a'))
  t.ok(first)
  t.equal(first, second, 'one creation')
  await first
  t.same(backend.calls, ['ensure a', 'scale a 2'])
  t.same(remembered, ['a'])
  t.equal(activator.ensure(request('a')), undefined, 'once it runs, nothing to wait for')
})

t.test('requests that come while a creation is under way wait for it, behind the first, even when the backend already reports the version requested (as the Kubernetes backend does from the start of its create)', async (t) => {
  const { backend, activator, request } = setup()
  backend.reportsRequestedEarly = true
  let open!: () => void
  backend.ensureGate = new Promise((resolve) => (open = resolve))
  const first = activator.ensure(request('a'))
  t.ok(first, 'the first request waits for the creation')
  // (The version is recorded before it is created: one turn of the loop, and the creation is under way.)
  await new Promise((resolve) => setImmediate(resolve))
  t.same(backend.calls, ['ensure a'])
  t.equal(backend.requested('a'), 2, 'which the backend already counts as requested')
  t.equal(activator.ensure(request('a')), first, 'a request meanwhile waits for the same creation, not straight in the queue ahead of the first')
  open()
  await first
  t.equal(activator.ensure(request('a')), undefined, 'once it runs, nothing to wait for')

  // A creation that fails fails them all at once, rather than leaving the later ones queued.
  backend.ensureGate = new Promise((resolve) => (open = resolve))
  backend.failEnsures = 1
  const failing = activator.ensure(request('b'))
  await new Promise((resolve) => setImmediate(resolve))
  const meanwhile = activator.ensure(request('b'))
  t.equal(meanwhile, failing, 'the later request shares its fate')
  open()
  await t.rejects(failing as Promise<void>)
})

t.test('a version asked down to zero instances is scaled back to its minimum', async (t) => {
  const { backend, activator, request } = setup()
  await activator.ensure(request('a'))
  await backend.scale('a', 0)
  await activator.ensure(request('a'))
  t.equal(backend.state('a')?.requested, 2)
})

t.test('a cold start is bounded by the queue timeout, however long the backend hangs', async (t) => {
  const { clock, backend, activator, request } = setup()
  backend.ensureGate = new Promise(() => {})
  const waiting = activator.ensure(request('a')) as Promise<void>
  const bounded = activator.bounded('a', waiting, { deadline: clock.now() + 5000, queueTimeoutMs: 5000 })
  clock.advance(4999)
  let settled = false
  bounded.catch(() => undefined).finally(() => (settled = true))
  await new Promise((r) => setImmediate(r))
  t.notOk(settled, 'still waiting at 4.999 s')
  clock.advance(1)
  await t.rejects(bounded, {
    code: 'MAITRE_QUEUE_TIMEOUT',
    status: 503,
    message: 'After 5 seconds, no instance available to handle request. Check that your service is able to start properly!',
  })
})

t.test('a client that leaves stops waiting at once', async (t) => {
  const { clock, backend, activator, request } = setup()
  backend.ensureGate = new Promise(() => {})
  const aborter = new AbortController()
  const bounded = activator.bounded('a', activator.ensure(request('a')) as Promise<void>, { deadline: clock.now() + 60_000, queueTimeoutMs: 60_000, signal: aborter.signal })
  aborter.abort()
  await t.rejects(bounded, { code: 'MAITRE_CLIENT_CLOSED' })
})

t.test('a failed creation reaches the request and leaves no routing entry behind; the next request tries again', async (t) => {
  const { backend, tracker, activator, request } = setup()
  backend.failEnsures = 1
  await t.rejects(activator.ensure(request('a')) as Promise<void>, /the cluster API is down/)
  t.same(tracker.serviceIds(), [], 'nothing kept for a version that never ran')
  await activator.ensure(request('a'))
  t.equal(backend.state('a')?.requested, 2, 'the next request started it')
})

t.test('while a version is being collected, activation waits for the collection and then creates it afresh', async (t) => {
  const { backend, activator, request, remembered } = setup()
  await activator.ensure(request('a'))
  let finish!: () => void
  const gate = new Promise<void>((resolve) => (finish = resolve))
  let deleted!: () => void
  const backendDeleted = new Promise<void>((resolve) => (deleted = resolve))
  const collection = activator.collect('a', async () => {
    await backend.deleteService('a')
    deleted()
    await gate
  })
  // The backend no longer runs the version, but its collection is not over (record and resolver
  // entries are still being dropped): a request now must not create it under the collection.
  await backendDeleted
  t.equal(backend.state('a'), undefined, 'the backend has let the version go')
  const waiting = activator.ensure(request('a'))
  t.ok(waiting, 'the version is being collected: wait')
  // An activation records the version before it creates it, synchronously: none has begun.
  t.same(remembered, ['a'], 'no activation began under the collection')
  t.same(backend.calls.filter((c) => c.startsWith('ensure')), ['ensure a'], 'nothing is created under the collection')
  finish()
  await collection
  await waiting
  await activator.ensure(request('a'))
  t.same(backend.calls.filter((c) => c.startsWith('ensure') || c.startsWith('delete')), ['ensure a', 'delete a', 'ensure a'], 'then it is created afresh')
  t.same(remembered, ['a', 'a'])
  t.equal(activator.collecting('a'), false)
})

t.test('a backend that leaves a version at zero instances fails the request with a 503, instead of having it ask forever', async (t) => {
  const { backend, activator, request } = setup()
  await activator.ensure(request('a'))
  await backend.scale('a', 0)
  backend.ignoreScales = true
  await t.rejects(activator.ensure(request('a')) as Promise<void>, { code: 'MAITRE_BACKEND', status: 503 })
})

t.test('a creation that fails after every waiter left is no unhandled rejection', async (t) => {
  const { backend, activator, request, clock } = setup()
  const unhandled: unknown[] = []
  const onUnhandled = (reason: unknown): void => void unhandled.push(reason)
  process.on('unhandledRejection', onUnhandled)
  t.teardown(() => process.off('unhandledRejection', onUnhandled))
  let fail!: () => void
  backend.ensureGate = new Promise<void>((resolve) => (fail = resolve))
  backend.failEnsures = 1
  const aborter = new AbortController()
  aborter.abort() // the client is gone before it even starts to wait
  await t.rejects(activator.bounded('a', activator.ensure(request('a')) as Promise<void>, { deadline: clock.now() + 1000, queueTimeoutMs: 1000, signal: aborter.signal }), { code: 'MAITRE_CLIENT_CLOSED' })
  fail()
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r))
  t.same(unhandled, [], 'the failure reached nobody, and that is fine')
})

t.test('a version running before this router saw a request for it (another router started it, or this one before a restart) is routed by its own parameters', async (t) => {
  const { backend, tracker, activator } = setup()
  backend.add('a', [1])
  t.equal(tracker.isConfigured('a'), false, 'known from the backend alone')
  const effective = { ...effectiveParameters({ ...CORE, 'concurrency-level': 3, 'max-queue-length': 7 }), 'run-as-user': 'me' }
  const request: ActivationRequest = { serviceId: 'a', effective: () => effective, launchSpec: () => launchSpecOf('a', effective, { cluster: 'test', secret: 's' }), remember: async () => undefined }
  t.equal(activator.ensure(request), undefined, 'it runs: the request may take a slot at once')
  const leases = [tracker.tryAcquire('a'), tracker.tryAcquire('a'), tracker.tryAcquire('a')]
  t.ok(leases.every((l) => l !== undefined), 'three requests at once on its one instance: concurrency-level 3, not the default 1')
  t.equal(tracker.tryAcquire('a'), undefined)
  t.equal(backend.calls.filter((c) => c.startsWith('ensure') || c.startsWith('scale')).length, 0, 'and nothing was started for it')
})

t.test('the cluster leader’s collection: requests here wait while it holds the version, and go on when released or when the hold lapses; a start under way refuses the hold', async (t) => {
  const { clock, backend, tracker, activator, request } = setup()
  await activator.ensure(request('a'))
  t.equal(activator.ensure(request('a')), undefined, 'running: a request takes a slot at once')
  t.equal(agreeToCollect(tracker, activator, 'a', clock.now(), 30_000), true, 'idle here: agreed')
  const waiting = activator.ensure(request('a'))
  t.ok(waiting, 'a request now waits for the collection')
  let done = false
  void waiting?.then(() => (done = true))
  await new Promise((r) => setImmediate(r))
  t.notOk(done)
  activator.releaseHold('a')
  await waiting
  t.equal(activator.ensure(request('a')), undefined, 'released: requests go on')

  t.equal(activator.holdForCollection('a', 5000), true)
  const lapsing = activator.ensure(request('a'))
  clock.advance(5000)
  await lapsing
  t.equal(activator.ensure(request('a')), undefined, 'a hold nobody released lapses')

  // The leader that asked stopped (or died) before it said its collection was over: a new
  // leader releases every hold at once, rather than let requests wait out the bound.
  t.equal(activator.holdForCollection('a', 30_000), true)
  const orphaned = activator.ensure(request('a'))
  let released = false
  void orphaned?.then(() => (released = true))
  await new Promise((r) => setImmediate(r))
  t.notOk(released, 'held')
  activator.releaseAllHolds()
  await orphaned
  t.ok(released, 'released at the leader change, with no time gone by')

  // The leader deleted it: held requests go on once this router's backend shows it gone, not
  // before (they would take a slot on an instance being deleted).
  t.equal(activator.holdForCollection('a', 30_000), true)
  const heldForDelete = activator.ensure(request('a'))
  let goneOn = false
  void heldForDelete?.then(() => (goneOn = true))
  activator.releaseHold('a', true)
  await new Promise((r) => setImmediate(r))
  t.notOk(goneOn, 'still held while the backend shows the version')
  await backend.deleteService('a')
  await heldForDelete
  t.ok(goneOn, 'released when the backend shows it gone')
  t.ok(activator.ensure(request('a')), 'and the next request starts it afresh')
  await activator.ensure(request('a'))

  const lease = tracker.tryAcquire('a')
  t.equal(agreeToCollect(tracker, activator, 'a', clock.now(), 30_000), false, 'a request in flight here: a veto')
  lease?.release('success')
  t.equal(agreeToCollect(tracker, activator, 'a', clock.now() - 1, 30_000), false, 'used here since the activity the leader judged by: a veto')
  backend.ensureGate = new Promise<void>(() => undefined)
  void activator.ensure(request('b'))
  t.equal(agreeToCollect(tracker, activator, 'b', clock.now(), 30_000), false, 'a start under way here: a veto')
})
