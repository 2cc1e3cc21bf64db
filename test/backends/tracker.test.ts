import t from 'tap'
import { ManualClock } from '../fixtures/manual-clock.ts'
import { InstanceTracker } from '../../src/backends/tracker.ts'
import { chooseInstance } from '../../src/backends/instance-choice.ts'
import type { Instance } from '../../src/backends/backend.ts'

function instance(id: string, startedAt: number, healthy = true): Instance {
  return { id, serviceId: 's', host: '127.0.0.1', port: 1, extraPorts: [], proto: 'http', startedAt, healthy, logDirectory: undefined, flags: new Set() }
}

function setup(concurrencyLevel = 1, maxQueueLength = 10) {
  const clock = new ManualClock()
  const tracker = new InstanceTracker({ clock, ejectBaseMs: 1000, maxEjectMs: 8000 })
  tracker.configure('s', { concurrencyLevel, loadBalancing: 'oldest', maxQueueLength })
  return { clock, tracker }
}

t.test('each healthy instance offers concurrency-level slots', async (t) => {
  const { tracker } = setup(2)
  tracker.sync('s', [instance('a', 1), instance('b', 2, false)], undefined)
  const l1 = tracker.tryAcquire('s')
  const l2 = tracker.tryAcquire('s')
  t.equal(l1?.instance.id, 'a')
  t.equal(l2?.instance.id, 'a')
  t.equal(tracker.tryAcquire('s'), undefined, 'an unhealthy instance offers no slot')
  t.match(tracker.load('s'), { inFlight: 2, queued: 0, healthy: 1, slotsAvailable: 0 })
  l1?.release('success')
  l1?.release('success')
  t.equal(tracker.load('s').inFlight, 1, 'a double release counts once')
})

t.test('a lease taken before a sync releases its slot after it', async (t) => {
  const { tracker } = setup()
  tracker.sync('s', [instance('a', 1)], undefined)
  const lease = tracker.tryAcquire('s')
  tracker.sync('s', [instance('a', 1), instance('b', 2)], undefined)
  lease?.release('success')
  t.same(tracker.instanceSlots('s').map((s) => s.used), [0, 0], 'no slot leaks across syncs')
  t.equal(tracker.load('s').slotsAvailable, 2)
})

t.test('queued requests are served first come, first served when a slot frees', async (t) => {
  const { tracker } = setup()
  tracker.sync('s', [instance('a', 1)], undefined)
  const held = tracker.tryAcquire('s')
  const order: string[] = []
  const first = tracker.acquire('s', { timeoutMs: 1000 }).then((l) => { order.push('first'); return l })
  const second = tracker.acquire('s', { timeoutMs: 1000 }).then((l) => { order.push('second'); return l })
  t.equal(tracker.load('s').queued, 2)
  held?.release('success')
  ;(await first).release('success')
  await second
  t.same(order, ['first', 'second'])
})

t.test('a queue beyond max-queue-length is refused with 503', async (t) => {
  const { tracker } = setup(1, 1)
  tracker.sync('s', [], undefined)
  const waiting = tracker.acquire('s', { timeoutMs: 1000 })
  await t.rejects(tracker.acquire('s', { timeoutMs: 1000 }), { code: 'MAITRE_QUEUE_FULL', status: 503, message: 'Max queue length exceeded' })
  tracker.sync('s', [instance('a', 1)], undefined)
  t.equal((await waiting).instance.id, 'a')
})

t.test('the queue timeout fires on the injected clock with Waiter\'s message', async (t) => {
  const { clock, tracker } = setup()
  tracker.sync('s', [], undefined)
  const waiting = tracker.acquire('s', { timeoutMs: 2500 })
  clock.advance(2499)
  t.equal(tracker.load('s').queued, 1)
  clock.advance(1)
  await t.rejects(waiting, { code: 'MAITRE_QUEUE_TIMEOUT', message: 'After 2.5 seconds, no instance available to handle request. Check that your service is able to start properly!' })
  t.equal(tracker.load('s').queued, 0)
})

t.test('a client that goes away leaves the queue', async (t) => {
  const { tracker } = setup()
  tracker.sync('s', [], undefined)
  const controller = new AbortController()
  const waiting = tracker.acquire('s', { timeoutMs: 1000, signal: controller.signal })
  controller.abort()
  await t.rejects(waiting, { code: 'MAITRE_CLIENT_CLOSED' })
  t.equal(tracker.load('s').queued, 0)
})

t.test('a deployment error fails queued and new requests at once', async (t) => {
  const { tracker } = setup()
  tracker.sync('s', [], undefined)
  const waiting = tracker.acquire('s', { timeoutMs: 100000 })
  tracker.sync('s', [], 'Invalid startup command')
  await t.rejects(waiting, { code: 'MAITRE_DEPLOYMENT', message: 'Deployment error: Invalid startup command' })
  await t.rejects(tracker.acquire('s', { timeoutMs: 100000 }), { code: 'MAITRE_DEPLOYMENT', status: 503 })
})

t.test('failing instances are ejected with exponential backoff', async (t) => {
  const { clock, tracker } = setup()
  tracker.sync('s', [instance('a', 1), instance('b', 2)], undefined)
  tracker.tryAcquire('s')?.release('instance-error') // a: ejected 1 s
  t.equal(tracker.tryAcquire('s')?.instance.id, 'b', 'the ejected instance is skipped')
  const queued = tracker.acquire('s', { timeoutMs: 60000 })
  clock.advance(1000)
  const lease = await queued
  t.equal(lease.instance.id, 'a', 'the ejection ends on time and wakes the queue')
  lease.release('instance-busy') // second failure in a row: 2 s
  clock.advance(1999)
  t.equal(tracker.load('s').slotsAvailable, 0)
  clock.advance(1)
  t.equal(tracker.load('s').slotsAvailable, 1)
  const ok = tracker.tryAcquire('s')
  ok?.release('success')
  t.equal(tracker.instanceSlots('s').find((s) => s.id === 'a')?.ejectedUntil, 0, 'success clears the ejection')
})

t.test('an ejected instance that fails a health check and recovers keeps its ejection (a flapping instance)', async (t) => {
  const { clock, tracker } = setup()
  const t0 = clock.now()
  tracker.sync('s', [instance('a', 1), instance('b', 2)], undefined)
  tracker.tryAcquire('s')?.release('instance-error') // a: ejected 1 s
  clock.advance(500)
  tracker.sync('s', [instance('a', 1, false), instance('b', 2)], undefined) // a fails its health check
  tracker.sync('s', [instance('a', 1), instance('b', 2)], undefined) // and passes the next one
  t.equal(tracker.instanceSlots('s').find((s) => s.id === 'a')?.ejectedUntil, t0 + 1000, 'still ejected until the end of its period')
  const onB = tracker.tryAcquire('s')
  t.equal(onB?.instance.id, 'b', 'the ejected instance is skipped')
  const queued = tracker.acquire('s', { timeoutMs: 60000 })
  clock.advance(500)
  const lease = await queued
  t.equal(lease.instance.id, 'a', 'the resumed ejection ends on time and wakes the queue')
  lease.release('instance-error')
  t.equal(tracker.instanceSlots('s').find((s) => s.id === 'a')?.ejectedUntil, t0 + 3000, 'its failures still count: the next ejection lasts 2 s')
  onB?.release('success')
  // An instance the backend no longer reports leaves nothing behind: a new one under its id starts clean.
  tracker.sync('s', [instance('b', 2)], undefined)
  tracker.sync('s', [instance('a', 4), instance('b', 2)], undefined)
  t.equal(tracker.instanceSlots('s').find((s) => s.id === 'a')?.ejectedUntil, 0)
})

t.test('an operator’s kill takes a busy instance out of rotation, and never lifts the lock of a kill the autoscaler prepares', async (t) => {
  const { tracker } = setup(2)
  tracker.sync('s', [instance('a', 1), instance('b', 2)], undefined)
  const busy = tracker.tryAcquire('s')
  t.equal(busy?.instance.id, 'a')
  t.equal(tracker.lockForOperatorKill('s', 'a'), true, 'busy, yet locked: no new request goes to an instance being killed')
  t.equal(tracker.tryAcquire('s')?.instance.id, 'b', 'new requests go elsewhere')
  t.equal(tracker.lockForKill('s', 'b'), false, 'b is busy now')
  busy?.release('success')
  const lease = tracker.instanceSlots('s').find((s) => s.id === 'b')
  t.equal(lease?.used, 1)
  // The autoscaler locked an idle instance for its own kill; an operator's kill of it fails (the
  // backend no longer has it): the operator's failure must not return it to rotation.
  tracker.sync('s', [instance('c', 3)], undefined)
  t.equal(tracker.lockForKill('s', 'c'), true, 'the autoscaler’s lock')
  t.equal(tracker.lockForOperatorKill('s', 'c'), false, 'already locked: not the operator’s lock')
  t.equal(tracker.instanceSlots('s').find((s) => s.id === 'c')?.locked, true, 'and it stays locked for the autoscaler’s kill')
})

t.test('an instance held for a kill that fails a health check meanwhile comes back without the hold once the kill is vetoed', async (t) => {
  const { tracker } = setup()
  tracker.sync('s', [instance('a', 1), instance('b', 2)], undefined)
  t.equal(tracker.ejectForKill('s', 'a', 10_000), true)
  tracker.sync('s', [instance('a', 1, false), instance('b', 2)], undefined)
  tracker.cancelKillHold('s', 'a')
  tracker.sync('s', [instance('a', 1), instance('b', 2)], undefined)
  t.equal(tracker.instanceSlots('s').find((s) => s.id === 'a')?.ejectedUntil, 0, 'back in rotation at once')
})

t.test('an ejection that ran out long ago does not make the wake-up timer of a later one spin', async (t) => {
  // A spinning timer (due at once, again and again, until the later ejection ends) burns the
  // router's event loop for up to proxy.maxEjectMs; with this clock it would never return.
  class CountingClock extends ManualClock {
    timers = 0
    override setTimeout(fn: () => void, ms: number): () => void {
      if (++this.timers > 50) throw new Error(`${this.timers} timers: the wake-up spins`)
      return super.setTimeout(fn, ms)
    }
  }
  const clock = new CountingClock()
  const tracker = new InstanceTracker({ clock, ejectBaseMs: 1000, maxEjectMs: 8000 })
  tracker.configure('s', { concurrencyLevel: 1, loadBalancing: 'oldest', maxQueueLength: 10 })
  tracker.sync('s', [instance('a', 1), instance('b', 2)], undefined)
  tracker.tryAcquire('s')?.release('instance-error') // a: ejected 1 s, and never succeeds after
  clock.advance(5000)
  t.equal(tracker.load('s').slotsAvailable, 2, 'a is back in rotation')
  const onA = tracker.tryAcquire('s')
  const onB = tracker.tryAcquire('s')
  t.equal(onB?.instance.id, 'b', 'b is the younger: taken second')
  onB?.release('instance-error') // b: ejected 1 s, while a (busy) keeps its old ejection time
  const queued = tracker.acquire('s', { timeoutMs: 60000 })
  const before = clock.timers
  clock.advance(999)
  clock.advance(1)
  t.equal((await queued).instance.id, 'b', 'the queued request is served when b’s ejection ends')
  onA?.release('success')
  t.ok(clock.timers - before <= 3, `${clock.timers - before} timers for one ejection`)
})

t.test('load balancing: oldest, youngest, random; expired instances last', async (t) => {
  const c = [{ id: 'new', startedAt: 30, expired: false }, { id: 'old', startedAt: 10, expired: false }, { id: 'exp', startedAt: 1, expired: true }]
  t.equal(chooseInstance(c, 'oldest', Math.random)?.id, 'old')
  t.equal(chooseInstance(c, 'youngest', Math.random)?.id, 'new')
  t.equal(chooseInstance(c, 'random', () => 0.99)?.id, 'old')
  t.equal(chooseInstance(c, 'random', () => 0)?.id, 'new')
  t.equal(chooseInstance([c[2] as (typeof c)[number]], 'oldest', Math.random)?.id, 'exp')
  // Only expired ones: the youngest, whatever the order (Waiter: expired by started-at descending),
  // so the oldest, killed first, drains first.
  const expired = [{ id: 'exp-old', startedAt: 1, expired: true }, { id: 'exp-young', startedAt: 5, expired: true }]
  t.equal(chooseInstance(expired, 'oldest', Math.random)?.id, 'exp-young', 'oldest-first, all expired: the youngest expired')
  t.equal(chooseInstance(expired, 'youngest', Math.random)?.id, 'exp-young', 'youngest-first, all expired: the youngest expired')
})

t.test('an instance that fails a health check while busy keeps its in-flight slots until they drain', async (t) => {
  const { tracker } = setup(2)
  tracker.sync('s', [instance('a', 1), instance('b', 2)], undefined)
  const onA = [tracker.tryAcquire('s'), tracker.tryAcquire('s')]
  t.same(onA.map((l) => l?.instance.id), ['a', 'a'], 'a (the oldest) is full')

  tracker.sync('s', [instance('a', 1, false), instance('b', 2)], undefined)
  t.match(tracker.load('s'), { inFlight: 2, healthy: 1, slotsAvailable: 2 }, 'its two requests still count; it offers no slot')
  t.match(tracker.instanceSlots('s').find((s) => s.id === 'a'), { used: 2, routable: false })
  t.notOk(tracker.lockForKill('s', 'a'), 'a busy instance out of rotation cannot be locked for a kill')
  const next = tracker.tryAcquire('s')
  t.equal(next?.instance.id, 'b', 'new requests go elsewhere')
  next?.release('success')

  tracker.sync('s', [instance('a', 1), instance('b', 2)], undefined)
  t.match(tracker.instanceSlots('s').find((s) => s.id === 'a'), { used: 2, routable: true }, 'it recovers with the slots it still has in use')
  const third = tracker.tryAcquire('s')
  t.equal(third?.instance.id, 'b', 'concurrency-level 2 is not exceeded on a: the request goes to b')
  third?.release('success')

  tracker.sync('s', [instance('b', 2)], undefined)
  t.equal(tracker.load('s').inFlight, 2, 'even gone from the backend, its requests count until they end')
  onA[0]?.release('success')
  t.equal(tracker.load('s').inFlight, 1)
  onA[1]?.release('success')
  t.same(tracker.instanceSlots('s').map((s) => s.id), ['b'], 'once drained, it is forgotten')
  t.ok(tracker.lockForKill('s', 'a'), 'and is idle by definition')
})

t.test('an instance locked for a kill stays locked through a readiness flap: it takes no request before its kill', async (t) => {
  const { tracker } = setup(1)
  tracker.sync('s', [instance('a', 1), instance('b', 2)], undefined)
  t.ok(tracker.lockForKill('s', 'a'), 'locked while the other routers are asked')
  tracker.sync('s', [instance('a', 1, false), instance('b', 2)], undefined)
  tracker.sync('s', [instance('a', 1), instance('b', 2)], undefined)
  const first = tracker.tryAcquire('s')
  const second = tracker.tryAcquire('s')
  t.same([first?.instance.id, second], ['b', undefined], 'back healthy, a is still locked: only b serves')
  first?.release('success')
  // Locked while out of rotation: it comes back locked too.
  tracker.sync('s', [instance('a', 1, false), instance('b', 2)], undefined)
  tracker.unlock('s', 'a')
  tracker.sync('s', [instance('a', 1, false), instance('b', 2)], undefined)
  t.ok(tracker.lockForKill('s', 'a'), 'an instance out of rotation can be locked')
  t.notOk(tracker.lockForKill('s', 'a'), 'once')
  tracker.sync('s', [instance('a', 1), instance('b', 2)], undefined)
  const held = tracker.tryAcquire('s')
  t.same([held?.instance.id, tracker.tryAcquire('s')], ['b', undefined], 'and comes back locked')
  held?.release('success')
  tracker.unlock('s', 'a')
  t.equal(tracker.tryAcquire('s')?.instance.id, 'a', 'unlocked (its kill did not happen), it serves again')
})

t.test('a deployment error fails the queue when no instance is routable, even if one still drains', async (t) => {
  const { tracker } = setup(1)
  tracker.sync('s', [instance('a', 1)], undefined)
  const busy = tracker.tryAcquire('s')
  const waiting = tracker.acquire('s', { timeoutMs: 10_000 })
  tracker.sync('s', [instance('a', 1, false)], 'Invalid startup command')
  await t.rejects(waiting, { code: 'MAITRE_DEPLOYMENT' })
  busy?.release('success')
  t.equal(tracker.load('s').inFlight, 0)
})

t.test('a 503 never ejects the last instance in rotation; with another one there, it does', async (t) => {
  const { clock, tracker } = setup(1)
  tracker.sync('s', [instance('a', 1)], undefined)
  for (let i = 0; i < 5; i++) tracker.tryAcquire('s')?.release('instance-busy')
  t.equal(tracker.load('s').slotsAvailable, 1, 'a one-instance service stays routable however often it answers 503')
  tracker.sync('s', [instance('a', 1), instance('b', 2)], undefined)
  const lease = tracker.tryAcquire('s')
  t.equal(lease?.instance.id, 'a')
  lease?.release('instance-busy')
  t.match(tracker.instanceSlots('s').find((s) => s.id === 'a'), { ejectedUntil: clock.now() + 1000 }, 'with b there, a is ejected')
  tracker.tryAcquire('s')?.release('instance-busy')
  t.equal(tracker.instanceSlots('s').find((s) => s.id === 'b')?.ejectedUntil, 0, 'but b, now the last one in rotation, is not')
  t.ok(tracker.tryAcquire('s'), 'so there is always an instance to route to')
})

t.test('in a cluster, a router fills only its share of each instance and hears of every queue change and free slot', async (t) => {
  const { clock, tracker } = setup(4)
  const limits = new Map([['a', 1], ['b', 0]])
  const queueChanges: number[] = []
  const free: string[] = []
  tracker.shareSlots({
    limit: (_s, instanceId) => limits.get(instanceId) ?? 0,
    queueChanged: (_s, queued) => queueChanges.push(queued),
    slotFree: (s) => free.push(s),
    rotationGrew: (_s, queued) => added.push(queued),
  })
  const added: number[] = []
  tracker.sync('s', [instance('a', 1), instance('b', 2)], undefined)
  const first = tracker.tryAcquire('s')
  t.equal(first?.instance.id, 'a')
  t.equal(tracker.tryAcquire('s'), undefined, 'concurrency-level 4, but this router holds one slot of a and none of b')
  t.match(tracker.load('s'), { inFlight: 1, slotsAvailable: 0 })
  const waiting = tracker.acquire('s', { timeoutMs: 1000 })
  t.same(queueChanges, [1], 'the queue growing is told')
  t.same(added, [], 'no instance came yet')
  tracker.sync('s', [instance('a', 1), instance('b', 2)], undefined)
  t.same(added, [], 'a sync of instances already known tells nothing')
  tracker.sync('s', [instance('a', 1), instance('b', 2), instance('c', 3)], undefined)
  t.same(added, [1], 'a new instance none of whose slots is this router’s, while one waits: told, with the queue')
  limits.set('b', 2)
  tracker.redispatch()
  t.equal((await waiting).instance.id, 'b', 'a share that grows serves the queue at once')
  t.same(queueChanges, [1, 0], 'and the queue emptying is told')
  free.length = 0
  first?.release('success')
  t.same(free, ['s'], 'a freed slot nobody here waits for is offered to the cluster')
  t.same([...tracker.overLimit()], [], 'nothing carried beyond the share')
  limits.set('b', 0)
  t.same([...tracker.overLimit()], [['s', 'b', 1]], 'a request on a share lost meanwhile is reported')
})

t.test('in a cluster, an instance back from an ejection while requests still wait here is told, so peers lend again', async (t) => {
  const { clock, tracker } = setup(1)
  const grew: number[] = []
  tracker.shareSlots({ limit: () => 1, queueChanged: () => undefined, slotFree: () => undefined, rotationGrew: (_s, queued) => grew.push(queued) })
  tracker.sync('s', [instance('a', 1)], undefined)
  tracker.tryAcquire('s')?.release('instance-error') // a: ejected 1 s
  const first = tracker.acquire('s', { timeoutMs: 60_000 })
  const second = tracker.acquire('s', { timeoutMs: 60_000 })
  clock.advance(1000)
  t.equal((await first).instance.id, 'a', 'the first waiter gets a back')
  t.same(grew, [1], 'and the one still waiting is told to peers again')
  ;(await first).release('success')
  ;(await second).release('success')
})

t.test('a slot lent by another router goes to the request waiting longest; the lender hears the outcome once', async (t) => {
  const { tracker } = setup(1)
  tracker.shareSlots({ limit: () => 0, queueChanged: () => undefined, slotFree: () => undefined, rotationGrew: () => undefined })
  tracker.sync('s', [instance('a', 1)], undefined)
  const outcomes: string[] = []
  t.notOk(tracker.grantBorrowed('s', 'a', (o) => outcomes.push(o)), 'nobody waits: the offer is declined')
  const first = tracker.acquire('s', { timeoutMs: 1000 })
  const second = tracker.acquire('s', { timeoutMs: 1000 })
  t.notOk(tracker.grantBorrowed('s', 'unknown', (o) => outcomes.push(o)), 'an instance this router does not route to is declined')
  t.ok(tracker.grantBorrowed('s', 'a', (o) => outcomes.push(o)))
  const lease = await first
  t.equal(lease.instance.id, 'a', 'the first in the queue takes the borrowed slot')
  t.equal(tracker.load('s').queued, 1, 'the second still waits')
  t.equal(tracker.load('s').inFlight, 1, 'the borrowed request counts in this router’s load (the lender holds the slot but does not count it)')
  t.equal(tracker.instanceSlots('s')[0]?.used, 0, 'while the slot itself is the lender’s, not one of this router’s share')
  t.equal(tracker.idleSince('s'), undefined, 'and the version is not idle here while it runs')
  lease.release('instance-error')
  lease.release('success')
  t.same(outcomes, ['instance-error'], 'the outcome goes back to the lender, once')
  t.equal(tracker.load('s').inFlight, 0, 'and it no longer counts here')
  tracker.forget('s')
  await t.rejects(second)
})

t.test('a router vetoes a kill of an instance it carries a request on, and otherwise takes it out of rotation', async (t) => {
  const { clock, tracker } = setup(2)
  tracker.sync('s', [instance('a', 1), instance('b', 2)], undefined)
  const lease = tracker.tryAcquire('s')
  t.equal(lease?.instance.id, 'a')
  t.notOk(tracker.ejectForKill('s', 'a', 5000), 'busy: veto')
  t.ok(tracker.ejectForKill('s', 'b', 5000), 'idle: agreed')
  t.equal(tracker.tryAcquire('s')?.instance.id, 'a', 'the instance about to be killed takes no request')
  t.equal(tracker.tryAcquire('s'), undefined)
  clock.advance(5000)
  t.equal(tracker.tryAcquire('s')?.instance.id, 'b', 'if the kill never comes, it is back after the period')
  t.ok(tracker.ejectForKill('s', 'gone', 5000), 'an instance this router does not know is no one’s here')
})

t.test('a borrowed request whose lender stops counting it (its offer broke) counts here until it lets go', async (t) => {
  const { tracker } = setup(1)
  tracker.shareSlots({ limit: () => 0, queueChanged: () => undefined, slotFree: () => undefined, rotationGrew: () => undefined })
  tracker.sync('s', [instance('a', 1)], undefined)
  const waiting = tracker.acquire('s', { timeoutMs: 1000 })
  const adopt = tracker.grantBorrowed('s', 'a', () => undefined)
  const lease = await waiting
  t.equal(tracker.load('s').inFlight, 1, 'borrowed: counted here')
  t.equal(tracker.instanceSlots('s')[0]?.used, 0, 'on the lender’s slot')
  adopt?.()
  adopt?.()
  t.equal(tracker.load('s').inFlight, 1, 'adopted once: it still counts once here')
  t.equal(tracker.instanceSlots('s')[0]?.used, 1, 'now on a slot of its own')
  t.same([...tracker.overLimit()], [['s', 'a', 1]], 'and is reported beyond this router’s share, so no peer uses the slot meanwhile')
  lease.release('success')
  t.equal(tracker.load('s').inFlight, 0, 'gone when the request lets go')
})

t.test('a kill hold that another router vetoed is lifted at once; a failure ejection is not', async (t) => {
  const { tracker } = setup(1)
  tracker.sync('s', [instance('a', 1), instance('b', 2)], undefined)
  t.ok(tracker.ejectForKill('s', 'a', 10_000))
  t.equal(tracker.tryAcquire('s')?.instance.id, 'b', 'held for the kill: out of rotation')
  tracker.cancelKillHold('s', 'a')
  const back = tracker.tryAcquire('s')
  t.equal(back?.instance.id, 'a', 'the kill was vetoed: back in rotation before the hold would have ended')
  // Now a failure ejects a, and a later kill hold on it is vetoed: the failure's ejection stays.
  back?.release('instance-error')
  t.ok(tracker.ejectForKill('s', 'a', 10_000))
  tracker.cancelKillHold('s', 'a')
  t.not(tracker.tryAcquire('s')?.instance.id, 'a', 'still ejected for its failure after the veto lifted the hold')
})
