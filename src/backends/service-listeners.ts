/**
 * What every backend shares besides the contract: telling subscribers a service changed (one
 * failing subscriber must not starve the others), and refusing what the data path cannot carry.
 */
import type { LaunchSpec, Proto } from '../launch-spec.ts'
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

/**
 * A backend-proto or health-check-proto this backend cannot carry is refused when the version is
 * created, in Waiter's words, rather than failing obscurely at the first request.
 */
export function refuseUnsupportedProtos(spec: LaunchSpec, supported: { readonly backend: readonly Proto[]; readonly healthCheck: readonly Proto[]; readonly why?: string }): void {
  const checks = [['backend-proto', spec.backendProto, supported.backend], ['health-check-proto', spec.healthCheck.proto, supported.healthCheck]] as const
  for (const [field, proto, allowed] of checks) {
    if (!allowed.includes(proto)) {
      throw misconfigured([{ field, message: `${field} ${proto} is not supported by this backend; use ${allowed.join(', ')}${supported.why === undefined ? '' : ` (${supported.why})`}.` }])
    }
  }
}
