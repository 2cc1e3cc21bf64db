/** The per-version values /metrics reads at scrape time: load from the tracker, instances from the backend, target from the autoscaler. */
import type { Backend } from '../backends/backend.ts'
import type { InstanceTracker } from '../backends/tracker.ts'
import type { ServiceGauges } from '../metrics.ts'
import type { Autoscaler } from './autoscaler.ts'

export function* serviceGauges(backend: Backend, tracker: InstanceTracker, autoscaler: Pick<Autoscaler, 'snapshot'>): Iterable<ServiceGauges> {
  for (const state of backend.services()) {
    const load = tracker.load(state.id)
    const healthy = state.instances.filter((i) => i.healthy).length
    yield { service: state.id, inFlight: load.inFlight, queued: load.queued, healthy, starting: state.instances.length - healthy, target: autoscaler.snapshot(state.id)?.target }
  }
}
