/** A Backend that counts and times every call it makes (maitre_backend_operations_total and _duration_seconds). */
import type { Metrics } from '../metrics.ts'
import type { Backend } from './backend.ts'

type Operation = 'ensureService' | 'scale' | 'killInstance' | 'deleteService'

export function instrumented(backend: Backend, metrics: Metrics): Backend {
  const timed = <A extends unknown[], R>(operation: Operation, call: (...args: A) => Promise<R>) => async (...args: A): Promise<R> => {
    const end = metrics.backendOperationDuration.startTimer({ backend: backend.kind, operation })
    try {
      const result = await call(...args)
      metrics.backendOperations.inc({ backend: backend.kind, operation, result: 'ok' })
      return result
    } catch (err) {
      metrics.backendOperations.inc({ backend: backend.kind, operation, result: 'error' })
      throw err
    } finally {
      end()
    }
  }
  return {
    kind: backend.kind,
    ensureService: timed('ensureService', (spec) => backend.ensureService(spec)),
    scale: timed('scale', (id, n) => backend.scale(id, n)),
    killInstance: timed('killInstance', (id, instance) => backend.killInstance(id, instance)),
    deleteService: timed('deleteService', (id) => backend.deleteService(id)),
    state: (id) => backend.state(id),
    services: () => backend.services(),
    subscribe: (listener) => backend.subscribe(listener),
    close: () => backend.close(),
  }
}
