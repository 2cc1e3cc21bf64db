/**
 * The service versions this router knows: id → core description and the token versions that
 * led to it. Records persist under the data directory, so a version stays addressable by id
 * across restarts until it is deleted.
 */
import { MaitreError } from '../errors.ts'
import type { DocumentStore, StoreOpener } from '../storage/document-store.ts'
import { PerKeyQueue } from '../storage/per-key-queue.ts'
import type { Clock } from '../clock.ts'

/** Token combinations a record keeps (Waiter's source-tokens); the oldest goes first. */
export const MAX_SOURCE_SETS = 20

function knows(sources: readonly TokenReference[], source: TokenReference): boolean {
  return sources.some((s) => s.token === source.token && s.etag === source.etag)
}

const setNames = (set: readonly TokenReference[]): string => JSON.stringify(set.map((s) => s.token))

function knowsSet(record: ServiceRecord, set: readonly TokenReference[]): boolean {
  if (set.length === 0) return true
  const sets = record.sourceSets
  // A record from before source sets knows a one-token set through its sources.
  if (sets === undefined) return set.length === 1 && knows(record.sources, set[0] as TokenReference)
  return sets.some((s) => s.length === set.length && s.every((r, i) => r.token === set[i]?.token && r.etag === set[i]?.etag))
}

/** Whether the record already holds what a request adds: its token, its combination, its on-the-fly access. */
function knowsAll(record: ServiceRecord, source: TokenReference | undefined, sourceSet: readonly TokenReference[], direct: boolean): boolean {
  if (direct && record.direct !== true) return false
  return source === undefined || (knows(record.sources, source) && knowsSet(record, sourceSet))
}

/** Writes of one record computed again after another router's write got in first, before giving up. */
const CONFLICT_ATTEMPTS = 5

const isServiceRecord = (doc: unknown): string | undefined => {
  const r = doc as Partial<ServiceRecord> | null
  return r !== null && typeof r === 'object' && typeof r.id === 'string' && typeof r.core === 'object' ? undefined : 'is not a service record'
}

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
  /**
   * Every combination of tokens requests reached it through (`x-waiter-token: a,b` is one), at
   * its latest versions: Waiter's source-tokens. At most MAX_SOURCE_SETS, the newest kept.
   * Absent in records written before it was kept.
   */
  readonly sourceSets?: readonly (readonly TokenReference[])[]
  /** Reached by on-the-fly headers at least once (Waiter's `{}` reference): never stale, collected only when idle. */
  readonly direct?: true
  readonly createdAt: number
}

export class ServiceRegistry {
  readonly #records: DocumentStore<ServiceRecord>
  readonly #clock: Clock
  readonly #changing = new PerKeyQueue()

  readonly #maxRecords: number

  static async open(stores: StoreOpener, clock: Clock, maxRecords?: number): Promise<ServiceRegistry> {
    return new ServiceRegistry(await stores.open<ServiceRecord>('services', 'service', isServiceRecord), clock, maxRecords)
  }

  /** `maxRecords`: versions recorded at most (each distinct description callers name makes one). */
  constructor(records: DocumentStore<ServiceRecord>, clock: Clock, maxRecords = Number.POSITIVE_INFINITY) {
    this.#records = records
    this.#clock = clock
    this.#maxRecords = maxRecords
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
  remember(id: string, core: Readonly<Record<string, unknown>>, source: TokenReference | undefined, sourceSet: readonly TokenReference[] = source === undefined ? [] : [source], direct = false): Promise<ServiceRecord> {
    const existing = this.#records.get(id)
    if (existing !== undefined && knowsAll(existing, source, sourceSet, direct)) return Promise.resolve(existing)
    // One change to a record at a time, each reading what the one before wrote: two tokens
    // remembered at once must both end up in its sources.
    return this.#changing.run(id, () => this.#writeRetrying(id, core, source, sourceSet, direct))
  }

  /** Another router may add its token to the same record at once: the loser reads theirs and adds again. */
  async #writeRetrying(id: string, core: Readonly<Record<string, unknown>>, source: TokenReference | undefined, sourceSet: readonly TokenReference[], direct: boolean): Promise<ServiceRecord> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.#write(id, core, source, sourceSet, direct)
      } catch (err) {
        if (!(err instanceof MaitreError) || err.code !== 'MAITRE_STORE_CONFLICT' || attempt >= CONFLICT_ATTEMPTS) throw err
      }
    }
  }

  async #write(id: string, core: Readonly<Record<string, unknown>>, source: TokenReference | undefined, sourceSet: readonly TokenReference[], direct: boolean): Promise<ServiceRecord> {
    const existing = this.#records.get(id)
    if (existing !== undefined && knowsAll(existing, source, sourceSet, direct)) return existing
    // Every distinct description a caller names (a parameter value, an on-the-fly header) is a
    // version of its own, and one that never runs is never idle: the count is bounded here.
    if (existing === undefined && this.#records.size >= this.#maxRecords) {
      throw new MaitreError('MAITRE_STORE_FULL', `maitre holds ${this.#maxRecords} service versions, the most it takes; idle and stale ones are collected, or DELETE /apps/{id} some`, { details: { limit: 'versions', max: this.#maxRecords } })
    }
    // One reference per token, its latest version: a token edited a thousand times without
    // changing what runs (timeouts, owner) still leaves one entry, not a thousand.
    const others = (existing?.sources ?? []).filter((s) => s.token !== source?.token)
    // Likewise one set per combination of token names, at its latest versions.
    const names = setNames(sourceSet)
    const otherSets = (existing?.sourceSets ?? (existing?.sources ?? []).map((s) => [s])).filter((set) => setNames(set) !== names)
    const sourceSets = sourceSet.length === 0 ? otherSets : [...otherSets, sourceSet].slice(-MAX_SOURCE_SETS)
    const record: ServiceRecord = {
      id,
      core,
      sources: source === undefined ? others : [...others, source],
      sourceSets,
      ...(direct || existing?.direct === true ? { direct: true as const } : {}),
      createdAt: existing?.createdAt ?? this.#clock.now(),
    }
    await this.#records.put(id, record, existing ?? null)
    return record
  }

  /**
   * Deletes the record, only if it is still `expected` when given (compare-and-set): another
   * router may have just added its token to it, which means a request came. Returns whether the
   * record is gone.
   */
  async forget(id: string, expected?: ServiceRecord): Promise<boolean> {
    const current = this.#records.get(id)
    if (current === undefined) return true
    try {
      await this.#records.delete(id, expected ?? current)
      return true
    } catch (err) {
      if (err instanceof MaitreError && err.code === 'MAITRE_STORE_CONFLICT') return false
      throw err
    }
  }

  flush(): Promise<void> {
    return this.#records.flush()
  }
}
