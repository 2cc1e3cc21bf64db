/**
 * Starts versions on demand, and keeps activation and garbage collection from racing. The first
 * request for a version the backend does not run records it and creates it (with its minimum
 * instances); concurrent first requests share one creation. While a version is being collected,
 * activations wait for the collection to finish and then start the version afresh, so a request
 * holding an old resolution can never leave a version running that nothing manages.
 */
import type { Backend } from '../backends/backend.ts'
import type { InstanceTracker, Routing } from '../backends/tracker.ts'
import type { LoadBalancing } from '../backends/instance-choice.ts'
import type { Clock } from '../clock.ts'
import { MaitreError } from '../errors.ts'
import type { Logger } from '../log.ts'
import type { LaunchSpec } from '../launch-spec.ts'

export interface ActivationRequest {
  readonly serviceId: string
  readonly effective: () => Readonly<Record<string, unknown>>
  readonly launchSpec: () => LaunchSpec
  /** Records the version (its description and token) before it is created, so it is always managed. */
  readonly remember: () => Promise<unknown>
}

export interface ActivationBounds {
  /** Give up at this time (clock ms) with Waiter's queue-timeout error. */
  readonly deadline: number
  /** The queue timeout the deadline came from, for the error message. */
  readonly queueTimeoutMs: number
  /** The client went away: stop waiting (the activation itself goes on). */
  readonly signal?: AbortSignal | undefined
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
  readonly #clock: Clock
  readonly #log: Logger
  readonly #pending = new Map<string, Promise<void>>()
  /** Versions being garbage-collected: settles (never rejects) when the collection is over. */
  readonly #collecting = new Map<string, Promise<void>>()
  /** Collections the cluster's leader makes, which requests here wait out: how to let them go on. */
  readonly #holds = new Map<string, () => void>()

  constructor(backend: Backend, tracker: InstanceTracker, clock: Clock, log: Logger) {
    this.#backend = backend
    this.#tracker = tracker
    this.#clock = clock
    this.#log = log
  }

  /**
   * Undefined when the backend runs the version and nothing is collecting it: the caller may take
   * a slot in the same turn. Otherwise a promise to await before asking again (a collection to
   * wait out, or the version's creation).
   */
  ensure(request: ActivationRequest): Promise<void> | undefined {
    const collecting = this.#collecting.get(request.serviceId)
    if (collecting !== undefined) return collecting
    // A creation (or scale-up from zero) under way: later requests wait for it too, behind the
    // first (a backend may report the version requested before its create call has returned).
    const underWay = this.#pending.get(request.serviceId)
    if (underWay !== undefined) return underWay
    // (Every request asks: the backend's count, not its whole state.)
    const requested = this.#backend.requested(request.serviceId)
    if (requested !== undefined && requested > 0) {
      // Running, but maybe not started here (another router did, or this one before a restart):
      // its slots follow its own concurrency-level and queue bounds, not the tracker's defaults.
      if (!this.#tracker.isConfigured(request.serviceId)) this.#tracker.configure(request.serviceId, routingOf(request.effective()))
      return undefined
    }
    let pending = this.#pending.get(request.serviceId)
    if (pending === undefined) {
      pending = this.#activate(request, requested === undefined)
        .catch((err: unknown) => {
          // A version that never got to run leaves no routing entry behind.
          if (this.#backend.state(request.serviceId) === undefined) this.#tracker.dropIfIdle(request.serviceId)
          throw err
        })
        .finally(() => this.#pending.delete(request.serviceId))
      // Every caller handles its own copy; this one only keeps a failure nobody waits for any
      // more from becoming an unhandled rejection.
      pending.catch(() => undefined)
      this.#pending.set(request.serviceId, pending)
    }
    return pending
  }

  /**
   * A wait from ensure(), bounded: settles when the version is worth asking about again, or
   * rejects with Waiter's queue-timeout error at the deadline (a cold start counts against the
   * request's queue timeout, however long the backend keeps failing) or when the client leaves.
   */
  bounded(serviceId: string, waiting: Promise<void>, bounds: ActivationBounds): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let cancelTimer: (() => void) | undefined
      const finish = (): void => {
        cancelTimer?.()
        bounds.signal?.removeEventListener('abort', onAbort)
      }
      const onAbort = (): void => {
        finish()
        reject(new MaitreError('MAITRE_CLIENT_CLOSED', 'Connection eagerly closed by client'))
      }
      // Handled first, whatever happens next: a wait nobody listens to any more must not
      // become an unhandled rejection when the activation behind it fails.
      waiting.then(
        () => {
          finish()
          resolve()
        },
        (err: unknown) => {
          finish()
          reject(err)
        },
      )
      if (bounds.signal?.aborted === true) return onAbort()
      cancelTimer = this.#clock.setTimeout(() => {
        finish()
        reject(startTimeout(serviceId, bounds.queueTimeoutMs))
      }, Math.max(0, bounds.deadline - this.#clock.now()))
      bounds.signal?.addEventListener('abort', onAbort, { once: true })
    })
  }

  /**
   * Runs a collection of the version. Activations that arrive meanwhile wait for it, then start
   * the version afresh. `collection` is called synchronously, so whatever it checks before its
   * first await (nothing outstanding) still holds when the marker is in place. A version being
   * started right now is not collected at all (undefined): a request is waiting for it.
   */
  collect<T>(serviceId: string, collection: () => Promise<T>): Promise<T | undefined> {
    if (this.#pending.has(serviceId)) return Promise.resolve(undefined)
    const previous = this.#collecting.get(serviceId)
    if (previous !== undefined) return previous.then(() => this.collect(serviceId, collection))
    const running = collection()
    const settled = running.then(
      () => undefined,
      () => undefined,
    )
    this.#collecting.set(serviceId, settled)
    void settled.then(() => {
      if (this.#collecting.get(serviceId) === settled) this.#collecting.delete(serviceId)
    })
    return running
  }

  /**
   * The cluster's leader collects the version: requests for it here wait, as for a collection
   * here, until releaseHold() or `periodMs`, then start it afresh. False if a start of it is under
   * way here (a request waits for it: the collection would cut it).
   */
  holdForCollection(serviceId: string, periodMs: number): boolean {
    if (this.#pending.has(serviceId)) return false
    if (this.#holds.has(serviceId)) return true
    let release = (): void => undefined
    const held = new Promise<void>((resolve) => (release = resolve))
    const cancelTimer = this.#clock.setTimeout(() => this.releaseHold(serviceId), periodMs)
    this.#holds.set(serviceId, () => {
      cancelTimer()
      release()
    })
    const waited = this.#collecting.get(serviceId)
    const marker = waited === undefined ? held : Promise.all([waited, held]).then(() => undefined)
    this.#collecting.set(serviceId, marker)
    void marker.then(() => {
      if (this.#collecting.get(serviceId) === marker) this.#collecting.delete(serviceId)
    })
    return true
  }

  /**
   * The leader changed: collections the one before asked this router to hold for will not be
   * said to be over (it stopped, or died, between asking and telling), so their requests go on
   * now rather than wait out the hold's bound (30 s). (None of them is the new leader's: a router
   * holds only for the leader it knows, and vetoes a collection another asks for.)
   */
  releaseAllHolds(): void {
    for (const serviceId of [...this.#holds.keys()]) this.releaseHold(serviceId)
  }

  /**
   * The leader's collection is over (or will not come): held requests go on. When it deleted the
   * version (`deleted`), they go on once this router's backend view shows it gone too (still
   * within the hold's bound), so they start it afresh rather than take a slot on an instance
   * being deleted.
   */
  releaseHold(serviceId: string, deleted = false): void {
    const release = this.#holds.get(serviceId)
    if (release === undefined) return
    if (deleted && this.#backend.state(serviceId) !== undefined) {
      const unsubscribe = this.#backend.subscribe((id) => {
        if (id === serviceId && this.#backend.state(serviceId) === undefined) this.releaseHold(serviceId)
      })
      this.#holds.set(serviceId, () => {
        unsubscribe()
        release()
      })
      return
    }
    this.#holds.delete(serviceId)
    release()
  }

  /** Whether a collection of the version is under way (for tests and /state). */
  collecting(serviceId: string): boolean {
    return this.#collecting.has(serviceId)
  }

  /** Whether the version is being created (or scaled up from zero) for requests that wait on it. */
  starting(serviceId: string): boolean {
    return this.#pending.has(serviceId)
  }

  async #activate(request: ActivationRequest, create: boolean): Promise<void> {
    const spec = request.launchSpec()
    this.#tracker.configure(request.serviceId, routingOf(request.effective()))
    if (create) {
      await request.remember()
      this.#log.info({ service: request.serviceId }, 'cold start: creating service')
      await this.#backend.ensureService(spec)
    } else {
      await this.#backend.scale(request.serviceId, spec.minInstances)
      // A backend that still asks for no instance would have requests ask again and again.
      if (this.#backend.state(request.serviceId)?.requested === 0) {
        throw new MaitreError('MAITRE_BACKEND', 'The backend did not start the service; try again', { status: 503, details: { 'service-id': request.serviceId }, headers: { 'retry-after': '1' } })
      }
    }
  }
}

function startTimeout(serviceId: string, queueTimeoutMs: number): MaitreError {
  const seconds = Number((queueTimeoutMs / 1000).toFixed(3))
  return new MaitreError('MAITRE_QUEUE_TIMEOUT', `After ${seconds} seconds, no instance available to handle request. Check that your service is able to start properly!`, {
    details: { 'service-id': serviceId, 'waiting-for-available-instance': 1 },
    headers: { 'retry-after': '1' },
  })
}
