/** Suspended versions (Waiter's /apps/{id}/suspend): requests get 503 until resumed. Kept on disk. */
import type { Clock } from '../clock.ts'
import type { DocumentStore, StoreOpener } from '../storage/document-store.ts'

export interface SuspendedState {
  readonly suspended: true
  readonly 'last-updated-by': string
  readonly time: string
}

export class Suspensions {
  readonly #records: DocumentStore<SuspendedState>
  readonly #clock: Clock

  static async open(stores: StoreOpener, clock: Clock): Promise<Suspensions> {
    return new Suspensions(await stores.open<SuspendedState>('suspended', 'suspension'), clock)
  }

  constructor(records: DocumentStore<SuspendedState>, clock: Clock) {
    this.#records = records
    this.#clock = clock
  }

  get(serviceId: string): SuspendedState | undefined {
    return this.#records.get(serviceId)
  }

  /** Every suspended version's id. */
  ids(): string[] {
    return [...this.#records.entries()].map(([id]) => id)
  }

  suspend(serviceId: string, user: string): Promise<void> {
    return this.#records.put(serviceId, { suspended: true, 'last-updated-by': user, time: new Date(this.#clock.now()).toISOString() })
  }

  /**
   * Queued behind any write of the key under way: a resume sent while a suspend is still being
   * written undoes it (the later request wins) instead of finding nothing yet and doing nothing.
   */
  resume(serviceId: string): Promise<void> {
    return this.#records.delete(serviceId)
  }
}
