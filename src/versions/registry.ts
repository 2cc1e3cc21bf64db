/**
 * The service versions this router knows: id → core description and the token versions that
 * led to it. Records persist under the data directory, so a version stays addressable by id
 * across restarts until it is deleted.
 */
import { join } from 'node:path'
import { JsonDirectory } from '../storage/json-dir.ts'
import type { Clock } from '../clock.ts'

export interface TokenReference {
  readonly token: string
  readonly etag: string
}

export interface ServiceRecord {
  readonly id: string
  /** The explicitly given parameters the id was computed from. */
  readonly core: Readonly<Record<string, unknown>>
  /** The latest version of each token that resolved to this service (empty for on-the-fly access). */
  readonly sources: readonly TokenReference[]
  readonly createdAt: number
}

export class ServiceRegistry {
  readonly #records: JsonDirectory<ServiceRecord>
  readonly #clock: Clock
  readonly #changing = new Map<string, Promise<ServiceRecord>>()

  constructor(dataDir: string, clock: Clock) {
    this.#records = JsonDirectory.open<ServiceRecord>(join(dataDir, 'services'), 'service', (doc) => {
      const r = doc as Partial<ServiceRecord> | null
      return r !== null && typeof r === 'object' && typeof r.id === 'string' && typeof r.core === 'object' ? undefined : 'is not a service record'
    })
    this.#clock = clock
  }

  get(id: string): ServiceRecord | undefined {
    return this.#records.get(id)
  }

  all(): ServiceRecord[] {
    return [...this.#records.entries()].map(([, record]) => record)
  }

  /**
   * Records that `core` runs as `id`, adding the token reference if it is new. Resolves at once
   * when nothing changes, which is the common case on the request path.
   */
  remember(id: string, core: Readonly<Record<string, unknown>>, source: TokenReference | undefined): Promise<ServiceRecord> {
    const existing = this.#records.get(id)
    const known = existing?.sources.some((s) => s.token === source?.token && s.etag === source.etag) ?? false
    if (existing !== undefined && (source === undefined || known)) return Promise.resolve(existing)
    // One change to a record at a time, each reading what the one before wrote: two tokens
    // remembered at once must both end up in its sources.
    const previous = this.#changing.get(id) ?? Promise.resolve()
    const next = previous.catch(() => undefined).then(() => this.#write(id, core, source))
    this.#changing.set(id, next)
    const cleanup = (): void => {
      if (this.#changing.get(id) === next) this.#changing.delete(id)
    }
    next.then(cleanup, cleanup)
    return next
  }

  async #write(id: string, core: Readonly<Record<string, unknown>>, source: TokenReference | undefined): Promise<ServiceRecord> {
    const existing = this.#records.get(id)
    const known = existing?.sources.some((s) => s.token === source?.token && s.etag === source.etag) ?? false
    if (existing !== undefined && (source === undefined || known)) return existing
    // One reference per token, its latest version: a token edited a thousand times without
    // changing what runs (timeouts, owner) still leaves one entry, not a thousand.
    const others = (existing?.sources ?? []).filter((s) => s.token !== source?.token)
    const record: ServiceRecord = {
      id,
      core,
      sources: source === undefined ? others : [...others, source],
      createdAt: existing?.createdAt ?? this.#clock.now(),
    }
    await this.#records.put(id, record)
    return record
  }

  async forget(id: string): Promise<void> {
    if (this.#records.has(id)) await this.#records.delete(id)
  }

  flush(): Promise<void> {
    return this.#records.flush()
  }
}
