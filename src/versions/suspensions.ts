/** Suspended versions (Waiter's /apps/{id}/suspend): requests get 503 until resumed. Kept on disk. */
import { join } from 'node:path'
import type { Clock } from '../clock.ts'
import { JsonDirectory } from '../storage/json-dir.ts'

export interface SuspendedState {
  readonly suspended: true
  readonly 'last-updated-by': string
  readonly time: string
}

export class Suspensions {
  readonly #records: JsonDirectory<SuspendedState>
  readonly #clock: Clock

  constructor(dataDir: string, clock: Clock) {
    this.#records = JsonDirectory.open<SuspendedState>(join(dataDir, 'suspended'), 'suspension')
    this.#clock = clock
  }

  get(serviceId: string): SuspendedState | undefined {
    return this.#records.get(serviceId)
  }

  suspend(serviceId: string, user: string): Promise<void> {
    return this.#records.put(serviceId, { suspended: true, 'last-updated-by': user, time: new Date(this.#clock.now()).toISOString() })
  }

  async resume(serviceId: string): Promise<void> {
    if (this.#records.has(serviceId)) await this.#records.delete(serviceId)
  }
}
