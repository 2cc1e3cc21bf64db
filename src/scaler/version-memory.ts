/**
 * Everything the router keeps about a version outside its record, in one place, and what each
 * way of ending lets go of: so that no path that ends a version (GC, DELETE /apps/{id}, the
 * backend itself) can leave state behind, and a new per-version map has one place to be added.
 */
export interface VersionMemoryDeps {
  /** Cached resolutions of requests to the version. */
  readonly resolver: { forget(serviceId: string): void }
  /** Its effective parameters and launch spec, cached. */
  readonly parameters: { forget(serviceId: string): void }
  /** Its scaling state and expiry requests. */
  readonly autoscaler: { forget(serviceId: string): void }
  /** Scaling knobs an operator overrode on it. */
  readonly overrides: { clear(serviceId: string): Promise<void> }
  /** Its suspension, if it was suspended. */
  readonly suspensions: { resume(serviceId: string): Promise<void> }
}

export class VersionMemory {
  readonly #deps: VersionMemoryDeps

  constructor(deps: VersionMemoryDeps) {
    this.#deps = deps
  }

  /** The backend no longer runs it: what scaling kept and the cached parameters go (its record stays: a request starts it again). */
  stoppedRunning(serviceId: string): void {
    this.#deps.autoscaler.forget(serviceId)
    this.#deps.parameters.forget(serviceId)
  }

  /** It was collected (its record is gone): every setting and cache of it goes too. */
  async collected(serviceId: string): Promise<void> {
    this.#deps.resolver.forget(serviceId)
    this.stoppedRunning(serviceId)
    await this.#deps.overrides.clear(serviceId)
    await this.#deps.suspensions.resume(serviceId)
  }
}
