/**
 * Overrides: scaling knobs changed on a running version without a new id (Waiter's
 * /apps/{id}/override). Only the override-able parameters may be set; the result must still be
 * a valid description. Kept on disk beside the service records.
 */
import { MaitreError } from '../errors.ts'
import type { Clock } from '../clock.ts'
import type { DocumentStore, StoreOpener } from '../storage/document-store.ts'
import { effectiveParameters, misconfigured, validateParameters } from './descriptor.ts'
import { PARAMETERS } from './parameters.ts'

export interface OverrideRecord {
  readonly overrides: Readonly<Record<string, unknown>>
  readonly 'last-updated-by': string
  readonly time: string
}

export class Overrides {
  readonly #records: DocumentStore<OverrideRecord>
  readonly #clock: Clock
  readonly #listeners = new Set<(serviceId: string) => void>()
  /** The last parameters built from a description (a record's core lives as long as its version). */
  readonly #parameters = new WeakMap<object, { readonly serviceId: string; readonly record: OverrideRecord | undefined; readonly parameters: Readonly<Record<string, unknown>> }>()

  static async open(stores: StoreOpener, clock: Clock): Promise<Overrides> {
    const records = await stores.open<OverrideRecord>('overrides', 'override', (doc) =>
      typeof doc === 'object' && doc !== null && typeof (doc as OverrideRecord).overrides === 'object' ? undefined : 'is not an override record',
    )
    return new Overrides(records, clock)
  }

  constructor(records: DocumentStore<OverrideRecord>, clock: Clock) {
    this.#records = records
    this.#clock = clock
    // Another router's override applies here as soon as it is seen.
    records.onChange((serviceId) => this.#emit(serviceId))
  }

  onChange(listener: (serviceId: string) => void): void {
    this.#listeners.add(listener)
  }

  get(serviceId: string): OverrideRecord | undefined {
    return this.#records.get(serviceId)
  }

  /**
   * The parameters a version runs with: core over defaults, then overrides. Kept per version
   * description until its overrides change: the autoscaler, the GC, the keep-alive runner and
   * every scrape ask for each version's, every round (rebuilding them was half of an autoscaler
   * tick: ~100 ms of every second at 10,000 versions). Frozen, as every caller shares it.
   */
  parameters(serviceId: string, core: Readonly<Record<string, unknown>>): Readonly<Record<string, unknown>> {
    const record = this.#records.get(serviceId)
    const known = this.#parameters.get(core)
    if (known !== undefined && known.serviceId === serviceId && known.record === record) return known.parameters
    const parameters = Object.freeze({ ...effectiveParameters(core), ...(record?.overrides ?? {}) })
    this.#parameters.set(core, { serviceId, record, parameters })
    return parameters
  }

  async set(serviceId: string, core: Readonly<Record<string, unknown>>, overrides: Record<string, unknown>, user: string): Promise<OverrideRecord> {
    const refused = Object.keys(overrides).filter((k) => PARAMETERS.get(k)?.overridable !== true)
    if (refused.length > 0) {
      throw new MaitreError('MAITRE_BAD_REQUEST', `Cannot override the following parameter(s): ${refused.join(', ')}`, { details: { fields: refused } })
    }
    const issues = validateParameters({ ...core, ...overrides }, { requireComplete: true })
    if (issues.length > 0) throw misconfigured(issues, { 'service-id': serviceId })
    const record: OverrideRecord = { overrides, 'last-updated-by': user, time: new Date(this.#clock.now()).toISOString() }
    try {
      await this.#records.put(serviceId, record)
    } finally {
      // Listeners drop what they derived from the overrides whatever the write reported: at worst one recomputation.
      this.#emit(serviceId)
    }
    return record
  }

  /** Every overridden version's id. */
  ids(): string[] {
    return [...this.#records.entries()].map(([id]) => id)
  }

  /** Queued behind any write of the key under way (a set not yet answered): the later request wins. */
  async clear(serviceId: string): Promise<void> {
    try {
      await this.#records.delete(serviceId)
    } finally {
      this.#emit(serviceId)
    }
  }

  #emit(serviceId: string): void {
    for (const listener of this.#listeners) listener(serviceId)
  }
}
