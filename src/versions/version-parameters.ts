/**
 * The parameters a version runs with (its description over the defaults, then its overrides)
 * and the LaunchSpec derived from them, cached per version and dropped when its overrides
 * change or the version goes.
 */
import { LRUCache } from 'lru-cache'
import type { LaunchSpec } from '../launch-spec.ts'
import { launchSpecOf, type LaunchContext } from './launch.ts'
import type { Overrides } from './overrides.ts'
import type { ServiceRecord } from './registry.ts'
import type { Resolution } from './resolve.ts'

export type Parameters = Readonly<Record<string, unknown>>

export class VersionParameters {
  readonly #overrides: Overrides
  readonly #context: LaunchContext
  readonly #specs: LRUCache<string, LaunchSpec>

  constructor(overrides: Overrides, context: LaunchContext, cacheSize: number) {
    this.#overrides = overrides
    this.#context = context
    this.#specs = new LRUCache({ max: cacheSize })
    overrides.onChange((serviceId) => this.#specs.delete(serviceId))
  }

  /** For a request: its resolution's effective parameters (run-as-user filled in), then overrides. */
  ofResolution(resolution: Resolution): Parameters {
    const record = this.#overrides.get(resolution.serviceId)
    return record === undefined ? resolution.effective : { ...resolution.effective, ...record.overrides }
  }

  /** For a recorded version (scaling, GC): its core over the defaults, then overrides. */
  ofRecord(record: ServiceRecord): Parameters {
    return this.#overrides.parameters(record.id, record.core)
  }

  launchSpec(resolution: Resolution): LaunchSpec {
    let spec = this.#specs.get(resolution.serviceId)
    if (spec === undefined) {
      spec = launchSpecOf(resolution.serviceId, this.ofResolution(resolution), this.#context)
      this.#specs.set(resolution.serviceId, spec)
    }
    return spec
  }

  /** A recorded version's LaunchSpec, as a request for it would make it (no request at hand: a backend changing hands). */
  launchSpecOfRecord(record: ServiceRecord): LaunchSpec {
    return this.#specs.get(record.id) ?? launchSpecOf(record.id, this.ofRecord(record), this.#context)
  }

  /** The version is gone: its cached LaunchSpec goes too. */
  forget(serviceId: string): void {
    this.#specs.delete(serviceId)
  }
}
