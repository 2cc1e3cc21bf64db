/** The per-version values /metrics reads at scrape time: load from the tracker, instances from the backend, target from the autoscaler. */
import type { Backend } from '../backends/backend.ts'
import { deploymentErrorClass } from '../backends/deployment-error.ts'
import type { InstanceTracker } from '../backends/tracker.ts'
import type { ServiceGauges } from '../metrics.ts'
import type { Autoscaler } from './autoscaler.ts'

export interface GaugeContext {
  readonly backend: Backend
  readonly tracker: InstanceTracker
  readonly autoscaler: Pick<Autoscaler, 'snapshot'>
  /** Whether this router makes the scaling decisions (the single router, or the cluster's leader). */
  readonly decides: () => boolean
  readonly maxInstancesOf: (serviceId: string) => number | undefined
}

export function* serviceGauges(c: GaugeContext): Iterable<ServiceGauges> {
  const decides = c.decides()
  for (const state of c.backend.services()) {
    const load = c.tracker.load(state.id)
    const healthy = state.instances.filter((i) => i.healthy).length
    yield {
      service: state.id,
      inFlight: load.inFlight,
      queued: load.queued,
      healthy,
      starting: state.instances.length - healthy,
      target: decides ? c.autoscaler.snapshot(state.id)?.target : undefined,
      maxInstances: c.maxInstancesOf(state.id),
      deploymentErrorClass: state.deploymentError === undefined ? undefined : deploymentErrorClass(state.deploymentError),
    }
  }
}
