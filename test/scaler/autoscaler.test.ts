import t from 'tap'
import { ManualClock } from '../fixtures/manual-clock.ts'
import { MemoryBackend } from '../fixtures/memory-backend.ts'
import { InstanceTracker, type Lease } from '../../src/backends/tracker.ts'
import { Autoscaler, type ScalableService } from '../../src/scaler/autoscaler.ts'
import type { ScalingPolicy } from '../../src/scaler/decide.ts'
import { silentLogger } from '../../src/log.ts'
import type { Fleet } from '../../src/scaler/fleet.ts'
import { NO_LOAD, type VersionLoad } from '../../src/cluster/coordination.ts'

const POLICY: ScalingPolicy = {
  minInstances: 1,
  maxInstances: 50,
  concurrencyLevel: 1,
  scaleFactor: 1,
  scaleUpFactor: 0.1,
  scaleDownFactor: 0.9,
  jitterThreshold: 0.5,
  expiredInstanceRestartRate: 0.1,
  maxScaleUpPerDecision: 1000,
}

function setup(service: ScalableService = { policy: POLICY, instanceExpiryMs: 0 }, fleet?: Fleet, onDecision?: (serviceId: string) => void) {
  const clock = new ManualClock()
  const backend = new MemoryBackend(clock)
  const tracker = new InstanceTracker({ clock, ejectBaseMs: 1000, maxEjectMs: 8000 })
  backend.subscribe((id) => {
    const state = backend.state(id)
    if (state === undefined) tracker.forget(id)
    else tracker.sync(id, state.instances, undefined)
  })
  const scaler = new Autoscaler(
    { backend, tracker, serviceOf: () => service, clock, log: silentLogger, ...(fleet === undefined ? {} : { fleet }), ...(onDecision === undefined ? {} : { onDecision }) },
    { tickMs: 1000, burst: { threshold: 2, holdMs: 3000, tickMs: 1000 }, interKillMs: 1000 },
  )
  return { clock, backend, tracker, scaler }
}

async function ticks(clock: ManualClock, scaler: Autoscaler, n: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    clock.advance(1000)
    await scaler.tick()
  }
}

t.test('queued demand scales up at once (burst), then back down to min once idle', async (t) => {
  const { clock, backend, tracker, scaler } = setup()
  backend.add('s', [0])
  tracker.configure('s', { concurrencyLevel: 1, loadBalancing: 'oldest', maxQueueLength: 100 })
  const first = tracker.tryAcquire('s') as Lease
  const waiting = Array.from({ length: 19 }, () => tracker.acquire('s', { timeoutMs: 60000 }))
  await scaler.tick()
  t.equal(backend.state('s')?.requested, 20, '20 outstanding on concurrency 1: 20 instances on the first look')
  const leases = [first, ...(await Promise.all(waiting))]
  t.equal(tracker.load('s').queued, 0, 'the new instances took the queue')
  t.same(scaler.snapshot('s')?.['scaling-state'], 'up')
  for (const lease of leases) lease.release('success')
  await ticks(clock, scaler, 40)
  t.equal(backend.state('s')?.requested, 1, 'back to min-instances')
  t.ok(backend.calls.filter((c) => c.startsWith('kill')).length === 19, 'by killing one instance at a time')
})

t.test('scale-down never kills an instance with a request in flight', async (t) => {
  const { clock, backend, tracker, scaler } = setup()
  backend.add('s', [1, 2, 3])
  tracker.configure('s', { concurrencyLevel: 1, loadBalancing: 'youngest', maxQueueLength: 100 })
  await scaler.tick()
  const busy = tracker.tryAcquire('s') as Lease
  t.equal(busy.instance.id, 's.3', 'the youngest is busy')
  await ticks(clock, scaler, 30)
  const left = backend.state('s')?.instances.map((i) => i.id)
  t.same(left, ['s.3'], 'the idle ones went; the busy one stayed even though it is the youngest')
  busy.release('success')
})

t.test('going down while the backend still owes an instance (a relaunch in its back-off) lowers the count: the running one is not killed', async (t) => {
  const { clock, backend, tracker, scaler } = setup()
  backend.add('s', [1, 2])
  tracker.configure('s', { concurrencyLevel: 1, loadBalancing: 'oldest', maxQueueLength: 100 })
  await scaler.tick()
  backend.lose('s', 's.2')
  t.same([backend.state('s')?.requested, backend.state('s')?.instances.map((i) => i.id)], [2, ['s.1']], 'two asked for, one running')
  await ticks(clock, scaler, 5)
  t.same(backend.calls.filter((c) => c.startsWith('kill')), [], 'nothing killed')
  t.same([backend.state('s')?.requested, backend.state('s')?.instances.map((i) => i.id)], [1, ['s.1']], 'one asked for: the one that runs')
})

t.test('one kill per tick at most, however far the scaler wants to go down', async (t) => {
  const { clock, backend, tracker, scaler } = setup()
  backend.add('s', [1, 2, 3, 4, 5, 6])
  tracker.configure('s', { concurrencyLevel: 1, loadBalancing: 'oldest', maxQueueLength: 100 })
  const kills = (): number => backend.calls.filter((c) => c.startsWith('kill')).length
  await scaler.tick()
  t.equal(kills(), 0, 'the first look records state only')
  // Six idle instances, min 1, scale-down factor 0.9: every tick wants to halve the fleet (6 → 3,
  // 5 → 2, …), more than one instance each time. Ticks and the inter-kill wait are both 1000 ms.
  for (let tick = 1; tick <= 5; tick++) {
    clock.advance(1000)
    await scaler.tick()
    t.equal(kills(), tick, `tick ${tick}: one kill, ${kills()} in all`)
    t.equal(backend.state('s')?.requested, 6 - tick, `tick ${tick}: ${6 - tick} instances left`)
  }
  t.equal(scaler.snapshot('s')?.['last-decision']?.scaleTo, 1, 'the last decision went down to min')
  await ticks(clock, scaler, 3)
  t.equal(kills(), 5, 'no kill below min-instances')
})

t.test('a locked instance takes no new requests, and a busy one cannot be locked', async (t) => {
  const { backend, tracker } = setup()
  backend.add('s', [1, 2, 3])
  tracker.configure('s', { concurrencyLevel: 1, loadBalancing: 'oldest', maxQueueLength: 100 })
  t.ok(tracker.lockForKill('s', 's.1'))
  t.notOk(tracker.lockForKill('s', 's.1'), 'cannot lock twice')
  const lease = tracker.tryAcquire('s') as Lease
  t.equal(lease.instance.id, 's.2', 'a locked instance is skipped: the oldest unlocked one serves')
  t.notOk(tracker.lockForKill('s', lease.instance.id), 'a busy instance cannot be locked')
})

t.test('an expired instance is replaced first, then killed first', async (t) => {
  const { clock, backend, tracker, scaler } = setup({ policy: { ...POLICY, minInstances: 2, scaleDownFactor: 0.001 }, instanceExpiryMs: 10_000 })
  backend.add('s', [clock.now() - 20_000, clock.now()])
  tracker.configure('s', { concurrencyLevel: 1, loadBalancing: 'oldest', maxQueueLength: 100 })
  await scaler.tick()
  t.equal(backend.state('s')?.requested, 3, 'a replacement is started while the expired one still serves')
  const lease = tracker.tryAcquire('s')
  t.not(lease?.instance.id, 's.1', 'requests avoid the expired instance')
  lease?.release('success')
  await ticks(clock, scaler, 5)
  const ids = backend.state('s')?.instances.map((i) => i.id) ?? []
  t.notOk(ids.includes('s.1'), 'the expired instance was the one killed')
  t.equal(ids.length, 2)
})

t.test('an expired instance kept busy by a long request is waited for: its idle replacement is not killed and started again, tick after tick', async (t) => {
  const { clock, backend, tracker, scaler } = setup({ policy: { ...POLICY, scaleDownFactor: 0.001 }, instanceExpiryMs: 60_000 })
  backend.add('s', [clock.now()])
  tracker.configure('s', { concurrencyLevel: 1, loadBalancing: 'oldest', maxQueueLength: 100 })
  await ticks(clock, scaler, 3)
  // A WebSocket, say, holds the only instance past its expiry.
  const long = tracker.tryAcquire('s') as Lease
  clock.advance(61_000)
  await ticks(clock, scaler, 30)
  const kills = backend.calls.filter((c) => c.startsWith('kill'))
  t.same(kills, [], 'nothing killed while the expired one is busy')
  t.equal(backend.calls.filter((c) => c.startsWith('scale s')).length, 1, 'one replacement started, once')
  long.release('success')
  await ticks(clock, scaler, 3)
  t.same(backend.calls.filter((c) => c.startsWith('kill')), ['kill s.1'], 'once free, the expired instance is the one killed')
  t.same(backend.state('s')?.instances.map((i) => i.id), ['s.2'], 'its replacement serves on')
})

t.test('a poke decides at once, without waiting for the tick', async (t) => {
  const { backend, tracker, scaler } = setup()
  backend.add('s', [0])
  tracker.configure('s', { concurrencyLevel: 1, loadBalancing: 'oldest', maxQueueLength: 100 })
  tracker.tryAcquire('s')
  void tracker.acquire('s', { timeoutMs: 1000 })
  void tracker.acquire('s', { timeoutMs: 1000 })
  scaler.poke('s')
  await new Promise((r) => setImmediate(r))
  t.equal(backend.state('s')?.requested, 3)
})

t.test('in a cluster only the leader decides, on the load of every router, and a new leader starts from the backend', async (t) => {
  let leader = false
  const peers = new Map<string, VersionLoad>()
  const fleet: Fleet = { isLeader: () => leader, peerLoad: (id) => peers.get(id) ?? NO_LOAD }
  const { clock, backend, tracker, scaler } = setup(undefined, fleet)
  backend.add('s', [0])
  tracker.configure('s', { concurrencyLevel: 1, loadBalancing: 'oldest', maxQueueLength: 100 })
  // Two other routers carry the version's demand: 6 in flight and 4 queued between them.
  peers.set('s', { inFlight: 6, queued: 4, lastRequestAt: clock.now() })
  await ticks(clock, scaler, 3)
  t.equal(backend.state('s')?.requested, 1, 'a follower scales nothing, whatever the load')
  t.same(backend.calls.filter((c) => c.startsWith('scale')), [])
  t.equal(scaler.snapshot('s')?.['last-decision'], undefined)

  leader = true
  await scaler.tick()
  t.equal(backend.state('s')?.requested, 10, 'the leader scales to the fleet-wide ideal: 10 outstanding on concurrency 1')
  t.equal(scaler.snapshot('s')?.['last-decision']?.outstanding, 10)

  const lease = tracker.tryAcquire('s') as Lease
  await scaler.tick()
  t.equal(scaler.snapshot('s')?.['last-decision']?.outstanding, 11, 'its own requests count too')
  lease.release('success')

  leader = false
  peers.delete('s')
  const before = backend.state('s')?.requested
  await ticks(clock, scaler, 5)
  t.equal(backend.state('s')?.requested, before, 'a router that lost leadership scales nothing down')
  t.equal(backend.calls.filter((c) => c.startsWith('kill')).length, 0)
})

t.test('a scale-down kill asks every other router first; a vetoed instance stays, back in rotation, and the next choice goes', async (t) => {
  const asked: string[] = []
  let vetoed = new Set<string>()
  const fleet: Fleet = { isLeader: () => true, peerLoad: () => NO_LOAD, allowKill: async (_s, instanceId) => (asked.push(instanceId), !vetoed.has(instanceId)) }
  const { clock, backend, tracker, scaler } = setup(undefined, fleet)
  backend.add('s', [1, 2, 3, 4, 5])
  tracker.configure('s', { concurrencyLevel: 1, loadBalancing: 'oldest', maxQueueLength: 100 })
  const kills = (): string[] => backend.calls.filter((c) => c.startsWith('kill'))
  await scaler.tick()
  vetoed = new Set(['s.5', 's.4', 's.3', 's.2'])
  clock.advance(1000)
  await scaler.tick()
  t.same(asked, ['s.5', 's.4', 's.3'], 'the youngest first, then the next, three tries in one tick')
  t.same(kills(), [], 'all vetoed: nothing was killed')
  t.same(tracker.instanceSlots('s').map((s) => s.locked), [false, false, false, false, false], 'every vetoed instance is unlocked, back in rotation')
  vetoed = new Set(['s.5'])
  asked.length = 0
  clock.advance(1000)
  await scaler.tick()
  t.same(asked, ['s.5', 's.4'], 'the vetoed one is passed over')
  t.equal(kills().length, 1, 'and the next choice is killed')
  t.match(kills()[0], /s\.4/)
})

t.test('a kill that does not come after the other routers agreed (the backend failed it, or this router stopped leading meanwhile) puts the instance back in rotation everywhere', async (t) => {
  let leader = true
  let loseLeadershipWhileAsking = false
  const cancelled: string[] = []
  const fleet: Fleet = {
    isLeader: () => leader,
    peerLoad: () => NO_LOAD,
    allowKill: async () => {
      if (loseLeadershipWhileAsking) leader = false
      return true
    },
    cancelKill: async (_s, instanceId) => void cancelled.push(instanceId),
  }
  const { clock, backend, tracker, scaler } = setup(undefined, fleet)
  backend.add('s', [1, 2, 3])
  tracker.configure('s', { concurrencyLevel: 1, loadBalancing: 'oldest', maxQueueLength: 100 })
  const kills = (): string[] => backend.calls.filter((c) => c.startsWith('kill'))
  await scaler.tick()
  // The backend refuses the kill (a pod delete Kubernetes turned down).
  const killInstance = backend.killInstance.bind(backend)
  backend.killInstance = async () => false
  clock.advance(1000)
  await scaler.tick()
  t.same(cancelled, ['s.3'], 'the failed kill is called off at the routers that agreed')
  t.same(tracker.instanceSlots('s').map((s) => s.locked), [false, false, false], 'and the instance is back in rotation here')
  // A kill that throws (a delete that timed out) may have gone through: the peers' hold lapses by itself.
  backend.killInstance = async () => {
    throw new Error('timed out')
  }
  cancelled.length = 0
  clock.advance(1000)
  await scaler.tick()
  t.same(cancelled, [], 'a kill that may have happened is not called off')
  t.same(tracker.instanceSlots('s').map((s) => s.locked), [false, false, false])
  cancelled.length = 0
  backend.killInstance = killInstance
  // Deposed while the peers were being asked: a router that no longer leads kills nothing.
  loseLeadershipWhileAsking = true
  cancelled.length = 0
  clock.advance(1000)
  await scaler.tick()
  t.same(kills(), [], 'no kill from a router deposed during the round')
  t.same(cancelled, ['s.3'], 'the peers put the instance back')
  t.same(tracker.instanceSlots('s').map((s) => s.locked), [false, false, false])
})

t.test('an expiry an operator asked for is forgotten with its version, whether the tick or the backend notices first', async (t) => {
  const { clock, backend, scaler } = setup()
  backend.add('s', [1, 2])
  backend.add('u', [1])
  await scaler.tick()
  t.ok(scaler.expire('s', 's.1'), 'an expiry request for a running instance is kept')
  t.ok(scaler.expire('u', 'u.3'))
  t.notOk(scaler.expire('s', 's.9'), 'one for an unknown instance is not')
  t.same(scaler.serviceIds().sort(), ['s', 'u'])
  await backend.deleteService('s')
  clock.advance(1000)
  await scaler.tick()
  t.same(scaler.serviceIds(), ['u'], 'the next tick drops what was kept for a version that is gone, expiry requests included')
  await backend.deleteService('u')
  scaler.forget('u')
  t.same(scaler.serviceIds(), [], 'as does forget() when the backend reports the version gone')
})

t.test('the running loop never waits on one version’s decision: a kill the backend holds for long (a cluster controller) delays neither another version’s scale-up nor the next ticks', async (t) => {
  const decisions = new Map<string, number>()
  const { clock, backend, tracker, scaler } = setup(undefined, undefined, (id) => decisions.set(id, (decisions.get(id) ?? 0) + 1))
  // 'slow' is idle on three instances: it scales down, and its kill hangs until released.
  backend.add('slow', [1, 2, 3])
  backend.add('fast', [1])
  tracker.configure('slow', { concurrencyLevel: 1, loadBalancing: 'oldest', maxQueueLength: 100 })
  tracker.configure('fast', { concurrencyLevel: 1, loadBalancing: 'oldest', maxQueueLength: 100 })
  let release!: () => void
  const held = new Promise<void>((resolve) => (release = resolve))
  const kill = backend.killInstance.bind(backend)
  let killsAsked = 0
  backend.killInstance = async (serviceId: string, instanceId: string): Promise<boolean> => {
    if (serviceId !== 'slow') return kill(serviceId, instanceId)
    killsAsked += 1
    await held
    return kill(serviceId, instanceId)
  }
  scaler.start()
  t.teardown(() => scaler.stop())
  const settle = async (): Promise<void> => {
    for (let i = 0; i < 20; i++) await new Promise((resolve) => setImmediate(resolve))
  }
  for (let i = 0; i < 40 && killsAsked === 0; i++) {
    clock.advance(1000)
    await settle()
  }
  t.equal(killsAsked, 1, 'the idle version’s kill is asked for, and hangs')
  // Now 'fast' gets a queue: the next ticks scale it up although 'slow' still waits.
  const leases = [tracker.tryAcquire('fast') as Lease]
  const waiting = Array.from({ length: 4 }, () => tracker.acquire('fast', { timeoutMs: 60_000 }))
  for (let i = 0; i < 3; i++) {
    clock.advance(1000)
    await settle()
  }
  t.equal(backend.state('fast')?.requested, 5, 'the busy version scaled to its load meanwhile')
  t.equal(killsAsked, 1, 'and no second kill was asked for meanwhile')
  const decidedBefore = decisions.get('slow') ?? 0
  release()
  await settle()
  t.equal((decisions.get('slow') ?? 0) - decidedBefore, 1, 'once the kill is done, only its own decision completes: none piled up behind it')
  leases.push(...(await Promise.all(waiting)))
  for (const lease of leases) lease.release('success')
  await settle()
})

t.test('a scale-down waits while a kill the backend answered is still under way (kills of a version go one at a time), then goes on', async (t) => {
  const { clock, backend, tracker, scaler } = setup()
  backend.add('s', [1, 2, 3, 4])
  tracker.configure('s', { concurrencyLevel: 1, loadBalancing: 'oldest', maxQueueLength: 100 })
  const kills = (): number => backend.calls.filter((c) => c.startsWith('kill')).length
  backend.killsUnderWay.set('s', 1)
  await ticks(clock, scaler, 20)
  t.equal(kills(), 0, 'no kill while one is under way, however idle the version')
  t.equal(backend.state('s')?.requested, 4)
  backend.killsUnderWay.set('s', 0)
  await ticks(clock, scaler, 20)
  t.ok(kills() >= 1, `the scale-down goes on once it is done (${kills()} kills)`)
})

t.test('on a router that does not lead, expiries the leader noted are dropped once their instances end: they do not pile up', async (t) => {
  const fleet: Fleet = { isLeader: () => false, peerLoad: () => NO_LOAD }
  const { clock, backend, tracker, scaler } = setup(undefined, fleet)
  backend.add('s', [0, 0])
  tracker.configure('s', { concurrencyLevel: 1, loadBalancing: 'oldest', maxQueueLength: 100 })
  const [first, second] = backend.state('s')?.instances ?? []
  t.equal(scaler.expire('s', first?.id as string), true, 'noted here')
  t.equal(scaler.expire('s', second?.id as string), true)
  backend.lose('s', first?.id as string)
  await ticks(clock, scaler, 1)
  t.same([...scaler.expiryRequested('s')], [second?.id], 'the ended one is dropped, the live one kept (should this router lead next)')
})

t.test('a tick over many versions lets requests be served between its decisions, and decides for every version once', async (t) => {
  const decided = new Map<string, number>()
  const { clock, backend, tracker, scaler } = setup(undefined, undefined, (id) => decided.set(id, (decided.get(id) ?? 0) + 1))
  const versions = 1000
  for (let i = 0; i < versions; i++) {
    backend.add(`v${i}`, [0])
    tracker.configure(`v${i}`, { concurrencyLevel: 1, loadBalancing: 'oldest', maxQueueLength: 100 })
  }
  scaler.start()
  t.teardown(() => scaler.stop())
  clock.advance(1000)
  // A request's turn comes after the first few hundred decisions, not after all of them.
  const decidedBeforeARequestRuns = await new Promise<number>((resolve) => setImmediate(() => resolve(decided.size)))
  t.ok(decidedBeforeARequestRuns > 0 && decidedBeforeARequestRuns < versions, `the loop let go after ${decidedBeforeARequestRuns} of ${versions} decisions`)
  for (let i = 0; i < 20 && decided.size < versions; i++) await new Promise((resolve) => setImmediate(resolve))
  t.equal(decided.size, versions, 'every version decided within the tick')
  t.ok([...decided.values()].every((n) => n === 1), 'each once')
})
