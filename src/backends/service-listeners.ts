/**
 * What every backend shares besides the contract: telling subscribers a service changed (one
 * failing subscriber must not starve the others), and refusing what the data path cannot carry.
 */
import type { LaunchSpec } from '../launch-spec.ts'
import type { Logger } from '../log.ts'
import { misconfigured } from '../errors.ts'

export class ServiceListeners {
  readonly #listeners = new Set<(serviceId: string) => void>()
  readonly #log: Logger

  constructor(log: Logger) {
    this.#log = log
  }

  subscribe(listener: (serviceId: string) => void): () => void {
    this.#listeners.add(listener)
    return () => this.#listeners.delete(listener)
  }

  emit(serviceId: string): void {
    for (const listener of this.#listeners) {
      try {
        listener(serviceId)
      } catch (err) {
        this.#log.error({ err, service: serviceId }, 'backend listener failed')
      }
    }
  }
}

/** The forwarder speaks HTTP/1.1 to instances; sending that to an HTTP/2 app would fail obscurely. */
export function refuseHttp2(spec: LaunchSpec): void {
  if (spec.backendProto === 'h2c' || spec.backendProto === 'h2') {
    throw misconfigured([{ field: 'backend-proto', message: `backend-proto ${spec.backendProto} is not supported by maitre yet; use http or https.` }])
  }
}
