import t from 'tap'
import { ManualClock } from '../fixtures/manual-clock.ts'
import { MemoryBackend } from '../fixtures/memory-backend.ts'
import { InstanceTracker } from '../../src/backends/tracker.ts'
import { Metrics } from '../../src/metrics.ts'
import { serviceGauges } from '../../src/scaler/service-gauges.ts'

t.test('only the router that decides exports the target: a cluster of three shows one target per version, not three echoes of the count', async (t) => {
  const clock = new ManualClock()
  const backend = new MemoryBackend(clock)
  const tracker = new InstanceTracker({ clock, ejectBaseMs: 1000, maxEjectMs: 8000 })
  backend.add('v1', [1, 2])
  const autoscaler = { snapshot: () => ({ 'scaling-state': 'stable' as const, target: 2.5, bursting: false, 'last-decision': undefined }) }
  let leading = true
  const metrics = new Metrics({ services: () => serviceGauges({ backend, tracker, autoscaler, decides: () => leading, maxInstancesOf: (id) => (id === 'v1' ? 7 : undefined) }), tokens: () => 0, versions: () => 1 }, { version: 'test' })
  const leader = await metrics.render()
  t.match(leader, 'maitre_target_instances{service="v1"} 2.5')
  t.match(leader, 'maitre_max_instances{service="v1"} 7')
  leading = false
  const follower = await metrics.render()
  t.notMatch(follower, 'maitre_target_instances{service="v1"}', 'a follower exports no target')
  t.match(follower, 'maitre_instances{service="v1",state="healthy"} 2', 'but the instances it sees')
  t.match(follower, 'maitre_max_instances{service="v1"} 7')
})

t.test('a deployment error is a gauge while it lasts, and gone once the version recovers', async (t) => {
  const clock = new ManualClock()
  const backend = new MemoryBackend(clock)
  const tracker = new InstanceTracker({ clock, ejectBaseMs: 1000, maxEjectMs: 8000 })
  backend.add('broken', [])
  const metrics = new Metrics({ services: () => serviceGauges({ backend, tracker, autoscaler: { snapshot: () => undefined }, decides: () => true, maxInstancesOf: () => undefined }), tokens: () => 0, versions: () => 1 }, { version: 'test' })
  backend.setDeploymentError('broken', 'Invalid startup command')
  t.match(await metrics.render(), 'maitre_deployment_error{service="broken",reason="invalid-startup-command"} 1')
  backend.setDeploymentError('broken', undefined)
  t.notMatch(await metrics.render(), 'maitre_deployment_error{', 'gone once it recovers')
})
