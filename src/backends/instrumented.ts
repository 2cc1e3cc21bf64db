/**
 * A Backend that counts and times every call it makes (maitre_backend_operations_total and
 * _duration_seconds), and turns its failures into one typed error: a caller (and through it a
 * client) sees MAITRE_BACKEND, 503, with a message of ours, never the cluster API's own text;
 * the original stays the error's cause, for the logs.
 */
import { MaitreError } from '../errors.ts'
import type { Metrics } from '../metrics.ts'
import type { Backend } from './backend.ts'

type Operation = 'ensureService' | 'scale' | 'killInstance' | 'deleteService'

const DOING: Readonly<Record<Operation, string>> = {
  ensureService: 'create the service',
  scale: 'scale the service',
  killInstance: 'stop the instance',
  deleteService: 'delete the service',
}

export function instrumented(backend: Backend, metrics: Metrics): Backend {
  const timed = <A extends unknown[], R>(operation: Operation, call: (...args: A) => Promise<R>) => async (...args: A): Promise<R> => {
    const end = metrics.backendOperationDuration.startTimer({ backend: backend.kind, operation })
    try {
      const result = await call(...args)
      metrics.backendOperations.inc({ backend: backend.kind, operation, result: 'ok' })
      return result
    } catch (err) {
      metrics.backendOperations.inc({ backend: backend.kind, operation, result: 'error' })
      if (err instanceof MaitreError) throw err // already ours: a misconfigured service, say
      throw new MaitreError('MAITRE_BACKEND', `The ${backend.kind} backend could not ${DOING[operation]}; try again`, {
        headers: { 'retry-after': '1' },
        details: { operation },
        cause: err,
      })
    } finally {
      end()
    }
  }
  return {
    kind: backend.kind,
    ensureService: timed('ensureService', (spec) => backend.ensureService(spec)),
    scale: timed('scale', (id, n) => backend.scale(id, n)),
    killInstance: timed('killInstance', (id, instance, options) => backend.killInstance(id, instance, options)),
    deleteService: timed('deleteService', (id) => backend.deleteService(id)),
    state: (id) => backend.state(id),
    requested: (id) => backend.requested(id),
    services: () => backend.services(),
    notReadyBecause: () => backend.notReadyBecause?.(),
    subscribe: (listener) => backend.subscribe(listener),
    close: () => backend.close(),
  }
}
