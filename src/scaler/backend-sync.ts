/**
 * Carries what the backend reports into routing and metrics, and forgets a version everywhere
 * the moment the backend stops running it, whatever stopped it (GC, DELETE /apps/{id}, the
 * backend itself): its routing entry, its metric series and every per-version map listed in
 * `onGone`. One place, so no path that ends a version can leave state behind.
 */
import type { Backend } from '../backends/backend.ts'
import { deploymentErrorClass } from '../backends/deployment-error.ts'
import type { InstanceTracker, Routing } from '../backends/tracker.ts'
import type { Logger } from '../log.ts'
import type { Metrics } from '../metrics.ts'

export interface BackendSyncDeps {
  readonly backend: Backend
  readonly tracker: InstanceTracker
  readonly metrics: Metrics
  /**
   * A version's routing knobs (concurrency-level, queue bound, load balancing), from its record;
   * undefined if this router has no record of it (yet). Versions this router did not start
   * (another router did, or this one before a restart) are routed by them from the first report.
   */
  readonly routingOf: (serviceId: string) => Routing | undefined
  /** Other per-version state to drop when the backend no longer runs a version. */
  readonly onGone: (serviceId: string) => void
  /** Whether requests wait on the version's start (they too record how they ended, later). */
  readonly starting?: (serviceId: string) => boolean
  readonly log: Logger
}

export function followBackend(deps: BackendSyncDeps): () => void {
  /** The deployment error last counted per version, so each new error counts once. */
  const counted = new Map<string, string>()
  /** The newest failed instance counted per version (its id and end: a launch failure's id repeats). */
  const newestFailed = new Map<string, string>()
  return deps.backend.subscribe((serviceId) => {
    const state = deps.backend.state(serviceId)
    if (state === undefined) {
      const load = deps.tracker.load(serviceId)
      const underWay = load.inFlight + load.queued > 0 || deps.starting?.(serviceId) === true
      deps.tracker.forget(serviceId)
      counted.delete(serviceId)
      newestFailed.delete(serviceId)
      deps.onGone(serviceId)
      deps.metrics.removeService(serviceId, underWay).catch((err: unknown) => deps.log.warn({ err, service: serviceId }, 'removing metric series failed'))
      return
    }
    deps.metrics.revive(serviceId)
    if (!deps.tracker.isConfigured(serviceId)) {
      const routing = deps.routingOf(serviceId)
      if (routing !== undefined) deps.tracker.configure(serviceId, routing)
    }
    deps.tracker.sync(serviceId, state.instances, state.deploymentError)
    // Every instance that failed, healthy before or not: a version whose instances crash in a
    // loop after passing their health checks has no deployment error, and this is its signal.
    const newest = state.failed[0]
    const newestKey = newest === undefined ? undefined : `${newest.id}@${newest.endedAt}`
    const seen = newestFailed.get(serviceId)
    if (newestKey !== undefined && newestKey !== seen) {
      let fresh = 0
      for (const failed of state.failed) {
        if (`${failed.id}@${failed.endedAt}` === seen) break
        fresh += 1
      }
      newestFailed.set(serviceId, newestKey)
      deps.metrics.instanceFailures.inc({ service: serviceId }, fresh)
    }
    const error = state.deploymentError
    if (error === undefined) counted.delete(serviceId)
    else if (counted.get(serviceId) !== error) {
      counted.set(serviceId, error)
      deps.metrics.deploymentErrors.inc({ service: serviceId, reason: deploymentErrorClass(error) })
    }
  })
}
