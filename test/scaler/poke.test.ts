/** Requests that queue ask the autoscaler to decide at once; those pokes coalesce, and refused requests poke nothing. */
import t from 'tap'
import { ManualClock } from '../fixtures/manual-clock.ts'
import { MemoryBackend } from '../fixtures/memory-backend.ts'
import { InstanceTracker } from '../../src/backends/tracker.ts'
import { Autoscaler } from '../../src/scaler/autoscaler.ts'
import type { ScalingPolicy } from '../../src/scaler/decide.ts'
import { silentLogger } from '../../src/log.ts'

const POLICY: ScalingPolicy = {
  minInstances: 1, maxInstances: 50, concurrencyLevel: 1, scaleFactor: 1, scaleUpFactor: 0.1,
  scaleDownFactor: 0.9, jitterThreshold: 0.5, expiredInstanceRestartRate: 0.1, maxScaleUpPerDecision: 1000,
}

function setup() {
  const clock = new ManualClock()
  const backend = new MemoryBackend(clock)
  const tracker = new InstanceTracker({ clock, ejectBaseMs: 1000, maxEjectMs: 8000 })
  backend.subscribe((id) => {
    const state = backend.state(id)
    if (state === undefined) tracker.forget(id)
    else tracker.sync(id, state.instances, state.deploymentError)
  })
  let decisions = 0
  const scaler = new Autoscaler(
    { backend, tracker, serviceOf: () => ({ policy: POLICY, instanceExpiryMs: 0 }), clock, log: silentLogger, onDecision: () => void (decisions += 1) },
    { tickMs: 1000, burst: { threshold: 2, holdMs: 3000, tickMs: 1000 }, interKillMs: 1000 },
  )
  return { clock, backend, tracker, scaler, decisions: () => decisions }
}

t.test('a burst of pokes makes one decision, which sees the whole queue', async (t) => {
  const { backend, tracker, scaler, decisions } = setup()
  backend.add('s', [0])
  tracker.configure('s', { concurrencyLevel: 1, loadBalancing: 'oldest', maxQueueLength: 1000 })
  tracker.tryAcquire('s')
  for (let i = 0; i < 200; i++) {
    void tracker.acquire('s', { timeoutMs: 60_000, onQueued: () => scaler.poke('s') })
  }
  await new Promise((r) => setImmediate(r))
  t.equal(decisions(), 1, '200 queued requests, one decision')
  t.equal(backend.state('s')?.requested, 50, 'taken with all 200 in view (capped at max-instances)')
  scaler.poke('s')
  await new Promise((r) => setImmediate(r))
  t.equal(decisions(), 2, 'once it ran, the next poke decides again')
})

t.test('a request refused at once (queue full, deployment error) pokes nothing', async (t) => {
  const { backend, tracker } = setup()
  backend.add('s', [0])
  tracker.configure('s', { concurrencyLevel: 1, loadBalancing: 'oldest', maxQueueLength: 1 })
  tracker.tryAcquire('s')
  let pokes = 0
  const onQueued = (): void => void (pokes += 1)
  void tracker.acquire('s', { timeoutMs: 60_000, onQueued }).catch(() => undefined)
  t.equal(pokes, 1, 'a request that waits pokes')
  await t.rejects(tracker.acquire('s', { timeoutMs: 60_000, onQueued }), { code: 'MAITRE_QUEUE_FULL' })
  t.equal(pokes, 1, 'a request refused for a full queue does not')
  backend.setDeploymentError('s', 'Invalid startup command')
  await t.rejects(tracker.acquire('s', { timeoutMs: 60_000, onQueued }), { code: 'MAITRE_DEPLOYMENT' })
  t.equal(pokes, 1, 'nor one refused for a deployment error')
})
