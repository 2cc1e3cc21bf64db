/**
 * Garbage collection driven by a manual clock: what is collected and when, and the races with
 * traffic it must never lose (a request mid-collection, a request between verdict and delete,
 * a delete that fails).
 */
import t from 'tap'
import { ManualClock } from '../fixtures/manual-clock.ts'
import { MemoryBackend } from '../fixtures/memory-backend.ts'
import { InstanceTracker, type Lease } from '../../src/backends/tracker.ts'
import { Activator, type ActivationRequest } from '../../src/scaler/activator.ts'
import { GcRunner } from '../../src/scaler/gc-runner.ts'
import { ServiceRegistry } from '../../src/versions/registry.ts'
import { Tokens } from '../../src/versions/tokens.ts'
import { tokenStoreOf } from '../../src/versions/token-store.ts'
import { JsonDirectory } from '../../src/storage/json-dir.ts'
import { join } from 'node:path'
import { effectiveParameters } from '../../src/versions/descriptor.ts'
import { launchSpecOf } from '../../src/versions/launch.ts'
import { silentLogger } from '../../src/log.ts'
import type { Fleet } from '../../src/scaler/fleet.ts'
import { NO_LOAD, type VersionLoad } from '../../src/cluster/coordination.ts'
import type { LaunchSpec } from '../../src/launch-spec.ts'

const CORE = { cmd: 'run', cpus: 1, mem: 64, version: 'v1', 'idle-timeout-mins': 1 }

function setup(dir: string, core: Readonly<Record<string, unknown>> = CORE, fleet?: Fleet) {
  const clock = new ManualClock()
  const backend = new MemoryBackend(clock)
  const tracker = new InstanceTracker({ clock, ejectBaseMs: 1000, maxEjectMs: 8000 })
  backend.subscribe((id) => {
    const state = backend.state(id)
    if (state === undefined) tracker.forget(id)
    else tracker.sync(id, state.instances, undefined)
  })
  const registry = new ServiceRegistry(JsonDirectory.open(join(dir, 'services'), 'service'), clock)
  const tokens = new Tokens(tokenStoreOf(JsonDirectory.open(join(dir, 'tokens'), 'token')), clock, 'test')
  const activator = new Activator(backend, tracker, clock, silentLogger)
  const forgotten: string[] = []
  const collected: string[] = []
  /** What the keep-alive is told as each collection begins: version, reason, last activity. */
  const collecting: [string, string, number][] = []
  const deps: ConstructorParameters<typeof GcRunner>[0] = {
      backend,
      tracker,
      registry,
      tokens,
      activator,
      parametersOf: (record) => ({ ...effectiveParameters(record.core), 'run-as-user': 'me' }),
      // In these tests version 'a' is what tokens whose merged version is v1 run (the last to name one wins).
      serviceIdOfTokens: (list) => {
        const version = list.reduce<unknown>((named, data) => data['version'] ?? named, undefined)
        return version === 'v1' ? 'a' : `other-${String(version)}`
      },
      forgetVersion: (id) => void forgotten.push(id),
      onCollected: (id, reason) => void collected.push(`${id}:${reason}`),
      onCollecting: (id, reason, lastActiveAt) => void collecting.push([id, reason, lastActiveAt]),
      clock,
      log: silentLogger,
      ...(fleet === undefined ? {} : { fleet }),
    }
  const gcOptions = { intervalMs: 10_000, brokenTimeoutMs: 60_000, fallbackMs: 0, staleTimeoutMs: 0 }
  const gc = new GcRunner(deps, gcOptions)
  /** A GC runner of a router started now (after a restart): it knows nothing of what came before. */
  const restartedGc = (): GcRunner => new GcRunner(deps, gcOptions)
  const activation = (id: string): ActivationRequest => {
    const effective = { ...effectiveParameters(core), 'run-as-user': 'me' }
    const spec: LaunchSpec = launchSpecOf(id, effective, { cluster: 'test', secret: 's' })
    return { serviceId: id, effective: () => effective, launchSpec: () => spec, remember: () => registry.remember(id, core, undefined) }
  }
  /** What a request does: activate until the version runs, then take a slot in the same turn. */
  const request = async (id: string): Promise<Lease> => {
    for (let waiting = activator.ensure(activation(id)); waiting !== undefined; waiting = activator.ensure(activation(id))) await waiting
    return tracker.acquire(id, { timeoutMs: 60_000 })
  }
  return { clock, backend, tracker, registry, tokens, activator, gc, restartedGc, forgotten, collected, collecting, request }
}

t.test('an idle version is collected once idle-timeout-mins pass with nothing outstanding, and the next request brings it back', async (t) => {
  const { clock, backend, registry, gc, collected, forgotten, request, tracker } = setup(t.testdir())
  const lease = await request('a')
  t.ok(registry.get('a'), 'the first request recorded the version')
  t.equal(backend.state('a')?.requested, 1)
  clock.advance(120_000)
  t.same(await gc.tick(), [], 'a request in flight keeps it, however long')
  lease.release('success')
  clock.advance(59_000)
  t.same(await gc.tick(), [], 'idle for 59 s: kept')
  clock.advance(1_000)
  t.same(await gc.tick(), [{ id: 'a', reason: 'idle' }], 'idle for 60 s: collected')
  t.equal(backend.state('a'), undefined, 'the backend no longer runs it')
  t.equal(registry.get('a'), undefined, 'nor does the registry know it')
  t.same(forgotten, ['a'])
  t.same(collected, ['a:idle'])
  t.same(tracker.serviceIds(), [], 'no routing entry is left')
  t.same(gc.trackedIds(), [], 'nor any GC bookkeeping')

  const again = await request('a')
  t.ok(registry.get('a'), 'the next request records it again')
  t.equal(backend.state('a')?.requested, 1, 'and starts it again')
  again.release('success')
})

t.test('a request that arrives mid-collection waits, then starts the version afresh, recorded and managed', async (t) => {
  const { clock, backend, registry, gc, activator, request } = setup(t.testdir())
  ;(await request('a')).release('success')
  clock.advance(60_000)
  let finishDelete!: () => void
  const deleting = new Promise<void>((resolve) => (finishDelete = resolve))
  backend.deleteGate = deleting
  const collecting = gc.tick()
  t.ok(activator.collecting('a'), 'the collection is under way')
  while (!backend.calls.includes('delete a')) await new Promise((r) => setImmediate(r))
  t.equal(registry.get('a'), undefined, 'the record went before the backend delete')
  let served = false
  const late = request('a').then((lease) => {
    served = true
    return lease
  })
  await new Promise((r) => setImmediate(r))
  t.notOk(served, 'the request waits while the collection runs')
  finishDelete()
  t.same(await collecting, [{ id: 'a', reason: 'idle' }])
  const lease = await late
  t.ok(served)
  t.ok(registry.get('a'), 'the version it started is recorded (so the autoscaler, GC and /apps know it)')
  t.equal(backend.state('a')?.requested, 1, 'and runs')
  t.same(backend.calls.filter((c) => c.startsWith('delete') || c.startsWith('ensure')), ['ensure a', 'delete a', 'ensure a'], 'created, collected, created afresh: never re-created under the collection')
  lease.release('success')
})

t.test('a request that lands between the verdict and the delete saves the version', async (t) => {
  const { clock, backend, registry, gc, request } = setup(t.testdir())
  ;(await request('a')).release('success')
  ;(await request('b')).release('success')
  clock.advance(60_000)
  let finishDelete!: () => void
  backend.deleteGate = new Promise<void>((resolve) => (finishDelete = resolve))
  const collecting = gc.tick()
  // Both were verdicts; 'a' is being deleted, 'b' waits its turn. A request takes a slot in 'b'.
  const lease = await request('b')
  finishDelete()
  t.same(await collecting, [{ id: 'a', reason: 'idle' }], 'only a was collected: b was re-checked right before its delete')
  t.ok(registry.get('b'))
  t.ok(backend.state('b'))
  lease.release('success')
})

t.test('a version whose backend delete fails is not lost: it is collected at a later round as unrecorded, still for its idleness', async (t) => {
  const { clock, backend, registry, gc, request, collected, collecting } = setup(t.testdir())
  ;(await request('a')).release('success')
  const idleSince = clock.now()
  clock.advance(60_000)
  backend.failDeletes = 1
  t.same(await gc.tick(), [], 'the delete failed')
  t.equal(registry.get('a'), undefined, 'the record went first')
  t.ok(backend.state('a'), 'the backend still runs it')
  clock.advance(10_000)
  t.same(await gc.tick(), [], 'seen running unrecorded: a request may still record it within one interval')
  clock.advance(9_000)
  t.same(await gc.tick(), [])
  clock.advance(1_000)
  t.same(await gc.tick(), [{ id: 'a', reason: 'idle' }], 'one interval later it is collected, as the idle collection it was')
  t.equal(backend.state('a'), undefined)
  t.same(collected, ['a:idle'])
  // (An adaptive keep-alive forgets what it learned of a version collected for any other reason.)
  t.same(collecting, [['a', 'idle', idleSince], ['a', 'idle', idleSince]], 'the keep-alive hears of an idle collection both times, idle since the last request')
})

t.test('a broken version is collected after its grace period plus the broken timeout', async (t) => {
  const { clock, backend, gc, request } = setup(t.testdir(), { ...CORE, 'idle-timeout-mins': 0 })
  ;(await request('a')).release('success')
  backend.setDeploymentError('a', 'Invalid startup command')
  t.same(await gc.tick(), [])
  clock.advance(30_000 + 59_000)
  t.same(await gc.tick(), [], 'grace 30 s + broken timeout 60 s not yet over')
  clock.advance(1_000)
  t.same(await gc.tick(), [{ id: 'a', reason: 'broken' }])
})

t.test('a version whose token was edited without changing what runs stays current; a real change makes it stale', async (t) => {
  const { clock, gc, registry, tokens, request } = setup(t.testdir(), { ...CORE, 'idle-timeout-mins': 0 })
  const admin = { user: 'me', admin: true }
  const fields = { ...CORE, 'idle-timeout-mins': 0, 'stale-timeout-mins': 0, 'fallback-period-secs': 0 }
  const first = await tokens.upsert('web', fields, { principal: admin })
  const lease = await request('a')
  await registry.remember('a', { ...CORE, 'run-as-user': 'me' }, { token: 'web', etag: first.etag })
  lease.release('success')
  clock.advance(1000)
  const edited = await tokens.upsert('web', { ...fields, 'queue-timeout-ms': 5000 }, { principal: admin })
  t.not(edited.etag, first.etag, 'a new token version')
  clock.advance(1000)
  t.same(await gc.tick(), [], 'no request since, yet its token still runs it: not stale')
  await tokens.upsert('web', { ...fields, version: 'v2' }, { principal: admin })
  clock.advance(1000)
  t.same(await gc.tick(), [{ id: 'a', reason: 'stale' }], 'the token moved to another version: stale')
})

t.test('a version reached through two tokens (x-waiter-token: web,base) is stale once web moves on, though base, the last named, is unchanged', async (t) => {
  const { clock, gc, registry, tokens, request } = setup(t.testdir(), { ...CORE, 'idle-timeout-mins': 0 })
  const admin = { user: 'me', admin: true }
  const fields = { ...CORE, 'idle-timeout-mins': 0, 'stale-timeout-mins': 0, 'fallback-period-secs': 0 }
  const web = await tokens.upsert('web', fields, { principal: admin })
  const base = await tokens.upsert('base', { 'queue-timeout-ms': 5000 }, { principal: admin })
  const lease = await request('a')
  // What a request naming both records: the last token as its source, the pair as its combination.
  const pair = [{ token: 'web', etag: web.etag }, { token: 'base', etag: base.etag }]
  await registry.remember('a', { ...CORE, 'run-as-user': 'me' }, pair[1], pair)
  lease.release('success')
  clock.advance(1000)
  await tokens.upsert('web', { ...fields, 'queue-timeout-ms': 7000 }, { principal: admin })
  clock.advance(1000)
  t.same(await gc.tick(), [], 'web edited without changing what the pair runs: still current')
  await tokens.upsert('web', { ...fields, version: 'v2' }, { principal: admin })
  clock.advance(1000)
  t.same(await gc.tick(), [{ id: 'a', reason: 'stale' }], 'web,base now runs v2: the pair moved on')
})

t.test('edits that change nothing after a token moved on do not put off its old version’s collection', async (t) => {
  const { clock, gc, registry, tokens, request } = setup(t.testdir(), { ...CORE, 'idle-timeout-mins': 0 })
  const admin = { user: 'me', admin: true }
  const fields = { ...CORE, 'idle-timeout-mins': 0, 'stale-timeout-mins': 0, 'fallback-period-secs': 3 }
  const first = await tokens.upsert('web', fields, { principal: admin })
  const lease = await request('a')
  await registry.remember('a', { ...CORE, 'run-as-user': 'me' }, { token: 'web', etag: first.etag })
  lease.release('success')
  clock.advance(1000)
  await tokens.upsert('web', { ...fields, version: 'v2' }, { principal: admin })
  const movedAt = clock.now()
  // A timeout edited every second from then on: what runs stays v2.
  const collectedAt: number[] = []
  for (let i = 1; i <= 6 && collectedAt.length === 0; i++) {
    clock.advance(1000)
    await tokens.upsert('web', { ...fields, version: 'v2', 'queue-timeout-ms': 1000 + i }, { principal: admin })
    if ((await gc.tick()).some((v) => v.id === 'a')) collectedAt.push(clock.now())
  }
  t.same(collectedAt.map((at) => at - movedAt), [3000], 'collected as its fallback period (3 s) after the move ends, the edits since notwithstanding')
})

t.test('a version recorded before versions named their run-as-user is stale, though its token is unchanged: requests now go to the requester’s own', async (t) => {
  const { clock, gc, registry, tokens } = setup(t.testdir(), { ...CORE, 'idle-timeout-mins': 0 })
  const fields = { ...CORE, 'idle-timeout-mins': 0, 'stale-timeout-mins': 0, 'fallback-period-secs': 0 }
  const { etag } = await tokens.upsert('web', fields, { principal: { user: 'me', admin: true } })
  await registry.remember('legacy', CORE, { token: 'web', etag })
  clock.advance(1000)
  t.same(await gc.tick(), [{ id: 'legacy', reason: 'stale' }])
})

t.test('a version remembers the latest version of each token, one entry per token', async (t) => {
  const { registry } = setup(t.testdir())
  for (let i = 0; i < 50; i++) await registry.remember('a', CORE, { token: 'web', etag: `E-${i}` })
  await registry.remember('a', CORE, { token: 'api', etag: 'E-x' })
  t.same(registry.get('a')?.sources, [{ token: 'web', etag: 'E-49' }, { token: 'api', etag: 'E-x' }])
})

t.test('two tokens remembered at once for one version both end up in its sources', async (t) => {
  const { registry } = setup(t.testdir())
  await Promise.all([registry.remember('a', CORE, { token: 'web', etag: 'E-1' }), registry.remember('a', CORE, { token: 'api', etag: 'E-2' })])
  t.same(registry.get('a')?.sources.map((s) => s.token).sort(), ['api', 'web'])
})

t.test('between forgetting the record and the backend delete, a request gets no slot: it waits for the collection', async (t) => {
  const dir = t.testdir()
  const setupWithGate = setup(dir)
  const { clock, backend, registry, gc, request, tracker } = setupWithGate
  ;(await request('a')).release('success')
  clock.advance(60_000)
  // The collection stops right after forgetting the record, before the backend delete.
  let letDelete!: () => void
  backend.deleteGate = undefined
  const gate = new Promise<void>((resolve) => (letDelete = resolve))
  const realDelete = backend.deleteService.bind(backend)
  backend.deleteService = async (id: string) => {
    await gate
    return realDelete(id)
  }
  const collecting = gc.tick()
  while (registry.get('a') !== undefined) await new Promise((r) => setImmediate(r))
  let leased = false
  const late = request('a').then((lease) => {
    leased = true
    return lease
  })
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r))
  t.notOk(leased, 'the request holds no slot while the version is being collected')
  t.equal(tracker.load('a').inFlight, 0, 'so nothing is in flight on what is about to be deleted')
  letDelete()
  t.same(await collecting, [{ id: 'a', reason: 'idle' }])
  const lease = await late
  t.ok(registry.get('a'), 'afterwards the request started it afresh, recorded')
  lease.release('success')
})

t.test('a version being started for a request is not collected under it', async (t) => {
  const { clock, backend, registry, tokens, gc, request } = setup(t.testdir())
  // 'a' is what the token ran before an edit: stale (fallback and stale timeouts are 0 here).
  await registry.remember('a', CORE, { token: 'web', etag: 'E-before' })
  await tokens.upsert('web', { ...CORE, version: 'v2' }, { principal: { user: 'me', admin: true } })
  clock.advance(1000)
  let create!: () => void
  backend.ensureGate = new Promise<void>((resolve) => (create = resolve))
  const starting = request('a')
  while (!backend.calls.includes('ensure a')) await new Promise((r) => setImmediate(r))
  t.same(await gc.tick(), [], 'GC leaves a version alone while a request is starting it')
  create()
  const lease = await starting
  t.ok(registry.get('a'), 'the version runs recorded')
  t.ok(backend.state('a'), 'and the backend runs it')
  lease.release('success')
})

t.test('in a cluster only the leader collects, and a version another router serves is not idle', async (t) => {
  let leader = false
  const peers = new Map<string, VersionLoad>()
  const fleet: Fleet = { isLeader: () => leader, peerLoad: (id) => peers.get(id) ?? NO_LOAD }
  const { clock, backend, gc, request } = setup(t.testdir(), CORE, fleet)
  ;(await request('a')).release('success')
  clock.advance(120_000)
  t.same(await gc.tick(), [], 'a follower collects nothing')
  t.ok(backend.state('a'))

  leader = true
  peers.set('a', { inFlight: 1, queued: 0, lastRequestAt: clock.now() - 120_000 })
  t.same(await gc.tick(), [], 'a request in flight on another router keeps it')
  peers.set('a', { inFlight: 0, queued: 0, lastRequestAt: clock.now() - 30_000 })
  t.same(await gc.tick(), [], 'as does a request another router finished 30 s ago (idle timeout 60 s)')
  clock.advance(30_000)
  t.same(await gc.tick(), [{ id: 'a', reason: 'idle' }], 'idle on every router for 60 s: collected')
})

t.test('in a cluster the leader asks the other routers before it collects: one that uses the version keeps it; those that agreed hear when the collection is over', async (t) => {
  let allowed = false
  const asked: [string, number][] = []
  const done: string[] = []
  const fleet: Fleet = {
    isLeader: () => true,
    peerLoad: () => NO_LOAD,
    allowCollect: async (id, lastActiveAt) => {
      asked.push([id, lastActiveAt])
      return allowed
    },
    collectDone: async (id, collected) => void done.push(`${id} ${collected === undefined ? 'kept' : `${collected.reason} since ${collected.lastActiveAt}`}`),
  }
  const { clock, backend, gc, request } = setup(t.testdir(), CORE, fleet)
  ;(await request('a')).release('success')
  clock.advance(120_000)
  t.same(await gc.tick(), [], 'a router using it vetoes: kept')
  t.ok(backend.state('a'))
  t.equal(asked[0]?.[0], 'a', 'asked, with the activity it judged by')
  t.same(done, [], '(a veto releases those that agreed within the asking)')
  allowed = true
  t.same(await gc.tick(), [{ id: 'a', reason: 'idle' }], 'every router agrees: collected')
  await new Promise((r) => setImmediate(r))
  t.same(done, [`a idle since ${asked[0]?.[1]}`], 'and the routers that held their requests hear it is over, that it took the version, why, and its last activity')
})

t.test('in a cluster, an idle collection whose delete failed is told to the other routers as one for idleness when it ends', async (t) => {
  const done: string[] = []
  const fleet: Fleet = {
    isLeader: () => true,
    peerLoad: () => NO_LOAD,
    allowCollect: async () => true,
    collectDone: async (id, collected) => void done.push(`${id} ${collected === undefined ? 'kept' : `${collected.reason} since ${collected.lastActiveAt}`}`),
  }
  const { clock, backend, gc, request } = setup(t.testdir(), CORE, fleet)
  ;(await request('a')).release('success')
  const idleSince = clock.now()
  clock.advance(60_000)
  backend.failDeletes = 1
  t.same(await gc.tick(), [], 'the delete failed')
  clock.advance(10_000)
  t.same(await gc.tick(), [], 'seen running unrecorded')
  clock.advance(10_000)
  t.same(await gc.tick(), [{ id: 'a', reason: 'idle' }], 'collected one interval later, as the idle collection it was')
  await new Promise((r) => setImmediate(r))
  // (Their keep-alives forget a version collected for any other reason.)
  t.same(done.filter((line) => line !== 'a kept'), [`a idle since ${idleSince}`], 'the routers hear it was for idleness, idle since the last request')
})

t.test('a router that starts again knows no request from before: a version recorded long ago is given its idle timeout from the start, not collected at the first round', async (t) => {
  const { clock, registry, restartedGc } = setup(t.testdir())
  await registry.remember('a', CORE, undefined)
  // Used until a moment ago by the router's previous life; recorded two hours back.
  clock.advance(2 * 3_600_000)
  const gc = restartedGc()
  t.same(await gc.tick(), [], 'kept at the first round')
  clock.advance(59_000)
  t.same(await gc.tick(), [], 'and for its idle timeout')
  clock.advance(1_000)
  t.same(await gc.tick(), [{ id: 'a', reason: 'idle' }], 'then collected, if nothing came')
})
