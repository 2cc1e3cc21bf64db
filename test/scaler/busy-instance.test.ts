/**
 * The promise the scaler must never break: it does not kill an instance with a request in
 * flight, even when that instance fails a health check mid-request (the one it would otherwise
 * prefer to kill), and the instance never serves more than concurrency-level requests.
 */
import t from 'tap'
import { ManualClock } from '../fixtures/manual-clock.ts'
import { MemoryBackend } from '../fixtures/memory-backend.ts'
import { InstanceTracker, type Lease } from '../../src/backends/tracker.ts'
import { Autoscaler } from '../../src/scaler/autoscaler.ts'
import type { ScalingPolicy } from '../../src/scaler/decide.ts'
import { silentLogger } from '../../src/log.ts'

const POLICY: ScalingPolicy = {
  minInstances: 1,
  maxInstances: 10,
  concurrencyLevel: 1,
  scaleFactor: 1,
  scaleUpFactor: 0.1,
  scaleDownFactor: 0.9,
  jitterThreshold: 0.5,
  expiredInstanceRestartRate: 0.1,
  maxScaleUpPerDecision: 1000,
}

t.test('a busy instance that turns unhealthy is not killed; an idle healthy one is', async (t) => {
  const clock = new ManualClock()
  const backend = new MemoryBackend(clock)
  const tracker = new InstanceTracker({ clock, ejectBaseMs: 1000, maxEjectMs: 8000 })
  backend.subscribe((id) => {
    const state = backend.state(id)
    if (state === undefined) tracker.forget(id)
    else tracker.sync(id, state.instances, undefined)
  })
  const scaler = new Autoscaler(
    { backend, tracker, serviceOf: () => ({ policy: POLICY, instanceExpiryMs: 0 }), clock, log: silentLogger },
    { tickMs: 1000, burst: { threshold: 2, holdMs: 0, tickMs: 1000 }, interKillMs: 1000 },
  )
  backend.add('s', [1, 2])
  tracker.configure('s', { concurrencyLevel: 1, loadBalancing: 'oldest', maxQueueLength: 10 })
  const long = tracker.tryAcquire('s') as Lease
  t.equal(long.instance.id, 's.1')
  backend.setHealthy('s', 's.1', false)
  t.equal(tracker.load('s').inFlight, 1, 'the request on the unhealthy instance still counts')

  for (let i = 0; i < 10; i++) {
    clock.advance(1000)
    await scaler.tick()
  }
  const kills = backend.calls.filter((c) => c.startsWith('kill'))
  t.equal(kills[0], 'kill s.2', 'the first kill takes the idle healthy instance, not the busy unhealthy one it would prefer')
  t.notOk(kills.includes('kill s.1'), `the busy instance is never killed (kills: ${kills.join(', ')})`)
  t.ok(backend.state('s')?.instances.some((i) => i.id === 's.1'), 'it still runs')

  backend.setHealthy('s', 's.1', true)
  const other = tracker.tryAcquire('s')
  t.not(other?.instance.id, 's.1', 'recovered, it still holds its one request: no second one is routed to it')
  t.equal(tracker.instanceSlots('s').find((s) => s.id === 's.1')?.used, 1, 'concurrency-level 1 is not exceeded')
  other?.release('success')
  long.release('success')
  for (const i of backend.state('s')?.instances ?? []) if (i.id !== 's.1') tracker.lockForKill('s', i.id)
  const next = tracker.tryAcquire('s')
  t.equal(next?.instance.id, 's.1', 'once the request ends its slot is free again')
})
