/**
 * Starts versions on demand. The first request for a version the backend does not run creates
 * it (with its minimum instances) and configures its slots; concurrent first requests share one
 * creation. This is where the autoscaler's "first request to a version at zero" hook belongs.
 */
import type { Backend } from '../backends/backend.ts'
import type { InstanceTracker, Routing } from '../backends/tracker.ts'
import type { LoadBalancing } from '../backends/instance-choice.ts'
import type { Logger } from '../log.ts'
import type { LaunchSpec } from '../launch-spec.ts'

export interface ActivationRequest {
  readonly serviceId: string
  readonly effective: Readonly<Record<string, unknown>>
  readonly launchSpec: () => LaunchSpec
}

export function routingOf(effective: Readonly<Record<string, unknown>>): Routing {
  return {
    concurrencyLevel: effective['concurrency-level'] as number,
    loadBalancing: effective['load-balancing'] as LoadBalancing,
    maxQueueLength: effective['max-queue-length'] as number,
  }
}

export class Activator {
  readonly #backend: Backend
  readonly #tracker: InstanceTracker
  readonly #log: Logger
  readonly #pending = new Map<string, Promise<void>>()

  constructor(backend: Backend, tracker: InstanceTracker, log: Logger) {
    this.#backend = backend
    this.#tracker = tracker
    this.#log = log
  }

  /** Resolves once the backend runs (or is starting) the version. */
  ensure(request: ActivationRequest): Promise<void> | undefined {
    const state = this.#backend.state(request.serviceId)
    if (state !== undefined && state.requested > 0) return undefined
    let pending = this.#pending.get(request.serviceId)
    if (pending === undefined) {
      pending = this.#activate(request, state === undefined).finally(() => this.#pending.delete(request.serviceId))
      this.#pending.set(request.serviceId, pending)
    }
    return pending
  }

  async #activate(request: ActivationRequest, create: boolean): Promise<void> {
    const spec = request.launchSpec()
    this.#tracker.configure(request.serviceId, routingOf(request.effective))
    if (create) {
      this.#log.info({ service: request.serviceId }, 'cold start: creating service')
      await this.#backend.ensureService(spec)
    } else {
      await this.#backend.scale(request.serviceId, spec.minInstances)
    }
  }
}
