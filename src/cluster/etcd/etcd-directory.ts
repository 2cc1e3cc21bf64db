/**
 * A DocumentStore kept in etcd, one key per document under `<prefix>/<store>/<encoded key>`,
 * mirrored in memory so that reads on the request path never leave the process.
 *
 * Opening loads every document (one range read) and then watches the prefix from the revision
 * after it, so no change can fall between the two. A write shows in memory once etcd has
 * committed it; another router's write arrives through the watch and is announced with
 * `onChange`. Each document remembers the revision it was written at, and only a newer one
 * replaces it (our own write and its echo through the watch arrive in either order).
 *
 * Compare-and-set is an etcd transaction on the key's mod revision (or "absent"): a write
 * computed from a document another router has replaced meanwhile is refused, and the newer
 * document read in the same transaction replaces ours in memory at once, so a retry works on
 * what is current. A document that fails the store's check (written by hand, or by a newer
 * maitre) is logged and left out rather than taking the router down.
 *
 * Read-your-writes across routers: a watch brings another router's write within milliseconds as
 * a rule, but not before that router's caller may ask a third router for it. So a write of ours
 * resolves only once `afterCommit` (cluster mode: the peers are told, peer-sync.ts) is done, and
 * a peer told of a key reads it from etcd at once (`refresh`) rather than wait for its watch.
 */
import { Range, type Etcd3, type IKeyValue, type IRangeResponse, type Watcher } from 'etcd3'
import { MaitreError } from '../../errors.ts'
import type { Logger } from '../../log.ts'
import { matchesExpected, storeConflict, type DocumentCheck, type DocumentStore } from '../../storage/document-store.ts'
import { PerKeyQueue } from '../../storage/per-key-queue.ts'
import { dropWatcher, pause, RETRY_MAX_MS, startWatch } from './calls.ts'

/** Keys per page of a store's load: 256 tokens of a few MB each stay well under the client's 512 MiB answer cap. */
const LOAD_PAGE_KEYS = 256

interface Entry<T> {
  readonly doc: T
  /** etcd's mod_revision of the key when this document was written (an int64, as etcd3 gives it). */
  readonly revision: bigint
}

export class EtcdDirectory<T> implements DocumentStore<T> {
  readonly #client: Etcd3
  readonly #prefix: string
  readonly #what: string
  readonly #check: DocumentCheck
  readonly #log: Logger
  readonly #docs = new Map<string, Entry<T>>()
  /** Revisions of deletions seen, so that a late echo of an older put cannot bring a document back. */
  readonly #deletedAt = new Map<string, bigint>()
  readonly #writes = new PerKeyQueue()
  readonly #listeners = new Set<(key: string) => void>()
  #watcher: Watcher | undefined
  /** A watch asked for and not yet accepted by etcd. */
  #starting: Watcher | undefined
  /** The highest etcd revision this store has applied: an etcd that answers with a lower one lost data. */
  #highest = 0n
  #closed = false
  /** Ends the retry pauses when the store or coordinator closes, so nothing outlives it. */
  readonly #closing = new AbortController()
  /** Awaited after each write of ours is committed, before the write resolves (it never rejects). */
  #afterCommit: ((key: string) => Promise<void>) | undefined

  /** Keys read per page when the store loads (see #load). */
  readonly #pageKeys: number

  private constructor(client: Etcd3, prefix: string, what: string, check: DocumentCheck, log: Logger, pageKeys: number) {
    this.#client = client
    this.#prefix = prefix
    this.#what = what
    this.#check = check
    this.#log = log
    this.#pageKeys = pageKeys
  }

  /** `prefix` is the store's own, ending in `/` (e.g. `/maitre/cluster-a/tokens/`). */
  static async open<T>(client: Etcd3, prefix: string, what: string, check: DocumentCheck, log: Logger, pageKeys = LOAD_PAGE_KEYS): Promise<EtcdDirectory<T>> {
    const store = new EtcdDirectory<T>(client, prefix, what, check, log, pageKeys)
    await store.#load()
    return store
  }

  get(key: string): T | undefined {
    return this.#docs.get(key)?.doc
  }

  has(key: string): boolean {
    return this.#docs.has(key)
  }

  *entries(): IterableIterator<[string, T]> {
    for (const [key, entry] of this.#docs) yield [key, entry.doc]
  }

  get size(): number {
    return this.#docs.size
  }

  onChange(listener: (key: string) => void): () => void {
    this.#listeners.add(listener)
    return () => this.#listeners.delete(listener)
  }

  /** Sets what every later write of ours waits for once etcd committed it (see the header). */
  afterCommit(hook: (key: string) => Promise<void>): void {
    this.#afterCommit = hook
  }

  /**
   * Reads one key from etcd now (a linearizable read) and takes what it holds, or its absence,
   * into memory, announcing a change as the watch would: what another router just wrote is then
   * served here without waiting for the watch to bring it.
   */
  async refresh(key: string): Promise<void> {
    const etcdKey = this.#prefix + encodeURIComponent(key)
    let response: IRangeResponse
    try {
      response = await this.#client.get(etcdKey).exec()
    } catch (err) {
      throw new MaitreError('MAITRE_CLUSTER_UNAVAILABLE', `etcd did not answer for the ${this.#what} ${JSON.stringify(key)}: ${(err as Error).message}`, { details: { store: this.#what, key }, headers: { 'retry-after': '1' }, cause: err })
    }
    this.#absorbRange(key, response.kvs, BigInt(response.header.revision))
  }

  async put(key: string, doc: T, expected?: T | null): Promise<void> {
    await this.#put(key, doc, expected)
    await this.#committed(key)
  }

  async delete(key: string, expected?: T | null): Promise<void> {
    // A delete that found nothing in etcd changed nothing the peers could have read: no one to tell.
    if (await this.#delete(key, expected)) await this.#committed(key)
  }

  /**
   * With peers to tell, this router's own caches of the key are told first, at commit: else
   * they would serve the old document here for as long as the peers take (up to a second),
   * while the peers already serve the new one.
   */
  async #committed(key: string): Promise<void> {
    if (this.#afterCommit === undefined) return
    this.#emit(key)
    await this.#afterCommit(key)
  }

  #put(key: string, doc: T, expected?: T | null): Promise<void> {
    return this.#writes.run(key, async () => {
      const etcdKey = this.#prefix + encodeURIComponent(key)
      const value = JSON.stringify(doc)
      const response = await this.#guard(key, 'written', () => {
        const txn = this.#condition(key, etcdKey, expected)
        return txn.then(this.#client.put(etcdKey).value(value)).else(this.#client.get(etcdKey)).commit()
      })
      if (!response.succeeded) {
        const kvs = response.responses[0]?.response_range?.kvs ?? []
        // The client sends a transaction again when its answer comes late: if an earlier send
        // committed, its compare now fails against this very write. Holding what this write
        // put, the key is this write's, not a conflict.
        const mine = kvs.find((kv) => kv.value.toString() === value)
        if (mine !== undefined) {
          this.#apply(key, doc, BigInt(mine.mod_revision))
          return
        }
        this.#absorbRange(key, kvs, BigInt(response.header.revision))
        throw storeConflict(this.#what, key)
      }
      this.#apply(key, doc, BigInt(response.header.revision))
    })
  }

  /** Resolves with whether etcd held the key (and deleted it) or may have (an answer sent again). */
  #delete(key: string, expected?: T | null): Promise<boolean> {
    return this.#writes.run(key, async () => {
      const etcdKey = this.#prefix + encodeURIComponent(key)
      const response = await this.#guard(key, 'deleted', () => {
        const txn = this.#condition(key, etcdKey, expected)
        return txn.then(this.#client.delete().key(etcdKey)).else(this.#client.get(etcdKey)).commit()
      })
      if (!response.succeeded) {
        const kvs = response.responses[0]?.response_range?.kvs ?? []
        // (Sent again after a late answer, as for a put: the key gone is what this delete did,
        // or another writer's change then delete; either way what the caller asked holds.)
        if (kvs.length === 0 && expected !== null) {
          this.#applyDelete(key, BigInt(response.header.revision))
          return true
        }
        this.#absorbRange(key, kvs, BigInt(response.header.revision))
        throw storeConflict(this.#what, key)
      }
      // (One held here that etcd no longer had, another router's delete not yet seen: a change here all the same.)
      const removedHere = this.#applyDelete(key, BigInt(response.header.revision))
      return removedHere || response.responses[0]?.response_delete_range?.deleted !== '0'
    })
  }

  async flush(): Promise<void> {
    await this.#writes.settled()
  }

  async close(): Promise<void> {
    this.#closed = true
    this.#closing.abort()
    await Promise.all([this.#watcher, this.#starting].filter((watcher) => watcher !== undefined).map((watcher) => dropWatcher(watcher, false)))
    this.#watcher = undefined
    this.#starting = undefined
  }

  /**
   * The transaction's guard: the key still holds the document `expected` names (its revision),
   * or is still absent. Without `expected` the guard always holds (an unconditional write).
   */
  #condition(key: string, etcdKey: string, expected: T | null | undefined): ReturnType<Etcd3['if']> {
    const current = this.#docs.get(key)
    if (!matchesExpected(current?.doc, expected)) throw storeConflict(this.#what, key)
    if (expected === undefined) return this.#client.if(etcdKey, 'Version', '>', -1)
    if (current === undefined) return this.#client.if(etcdKey, 'Version', '==', 0)
    return this.#client.if(etcdKey, 'Mod', '==', current.revision.toString())
  }

  async #load(): Promise<void> {
    const { revision, kvs } = await this.#readAll()
    for (const kv of kvs) this.#absorb(kv, false)
    this.#highest = revision
    await this.#watch(revision + 1n)
  }

  /**
   * Reads the whole store, a page of keys at a time, every page at the revision of the first (one
   * consistent view): in one read, a store the stated bounds allow (100,000 tokens of up to a few
   * MB with their history) passed the client's 512 MiB cap on an answer, and no router could
   * start, nor reload a store after its watch was lost.
   */
  async #readAll(): Promise<{ readonly revision: bigint; readonly kvs: IKeyValue[] }> {
    const end = Range.prefix(this.#prefix).end
    let start = Buffer.from(this.#prefix)
    let revision: bigint | undefined
    const kvs: IKeyValue[] = []
    for (;;) {
      const page = this.#client.getAll().inRange({ start, end }).sort('Key', 'Ascend').limit(this.#pageKeys)
      const range = await (revision === undefined ? page : page.revision(revision.toString())).exec()
      revision ??= BigInt(range.header.revision)
      for (const kv of range.kvs) kvs.push(kv)
      const last = range.kvs.at(-1)
      if (range.more !== true || last === undefined) return { revision, kvs }
      // (The next key after the last one read: the same bytes and a zero byte.)
      start = Buffer.concat([Buffer.from(last.key), Buffer.from([0])])
    }
  }

  async #watch(fromRevision: bigint): Promise<void> {
    // A reload whose read was answered after close() must start nothing: a watch of a closed
    // client is retried by the library for as long as the process lives, and holds it open.
    if (this.#closed) return
    const watcher = await startWatch(this.#client.watch().prefix(this.#prefix).startRevision(fromRevision.toString()), (w) => (this.#starting = w))
    this.#starting = undefined
    if (this.#closed) {
      await dropWatcher(watcher, false)
      return
    }
    this.#watcher = watcher
    watcher.on('put', (kv) => this.#absorb(kv, true))
    watcher.on('delete', (kv) => {
      const key = this.#keyOf(kv.key)
      if (key !== undefined && this.#applyDelete(key, BigInt(kv.mod_revision))) this.#emit(key)
    })
    // Unrecoverable for this watcher (e.g. its revision was compacted away): read everything
    // again and watch from there; what changed meanwhile is announced like any other change.
    watcher.on('error', (err) => {
      void dropWatcher(watcher, true)
      if (this.#watcher === watcher) this.#watcher = undefined
      if (this.#closed) return
      this.#log.warn({ err, store: this.#what }, 'etcd watch failed: reloading the store')
      void this.#reload()
    })
    // The connection dropped. The etcd3 library would resume the watch by itself, but from the
    // revision etcd reported when it last answered (its current one), not from the last change
    // delivered: changes made while this router was away and not yet streamed when the
    // connection drops again would never arrive. So the watch is dropped here and the store read
    // again, in full, once etcd answers.
    watcher.on('disconnected', () => {
      if (this.#watcher !== watcher) return
      this.#watcher = undefined
      void dropWatcher(watcher, false)
      if (this.#closed) return
      this.#log.warn({ store: this.#what }, 'etcd watch disconnected: reloading the store once etcd answers')
      void this.#reload()
    })
  }

  async #reload(): Promise<void> {
    for (let delayMs = 250; !this.#closed; delayMs = Math.min(delayMs * 2, RETRY_MAX_MS)) {
      try {
        const range = await this.#readAll()
        // Closed while the read was out: nothing more is taken in or announced.
        if (this.#closed) return
        const revision = range.revision
        // etcd is behind what this store has seen: its data was lost or restored from an older
        // backup. Its revisions mean nothing against ours any more: what it holds now is taken
        // whole, and the deletions remembered are forgotten.
        if (revision < this.#highest) {
          this.#log.error({ store: this.#what, revision: String(revision), seen: String(this.#highest) }, 'etcd is behind what this router saw (data lost or restored): taking what it holds now')
          for (const [key, entry] of this.#docs) this.#docs.set(key, { doc: entry.doc, revision: -1n })
          this.#deletedAt.clear()
          this.#highest = revision
        }
        const seen = new Set<string>()
        for (const kv of range.kvs) {
          // The range is what etcd holds now: a key it holds at an older revision than ours was
          // restored from a backup (restores may bump the revision past ours, so the check above
          // does not catch every one), and what it holds is taken.
          const cachedKey = this.#keyOf(kv.key)
          const cached = cachedKey === undefined ? undefined : this.#docs.get(cachedKey)
          // (Only what the range could have seen: a write of ours committed after its snapshot,
          // above its revision, is newer than the range, not lost.)
          const restored = (at: bigint | undefined): boolean => at !== undefined && at > BigInt(kv.mod_revision) && at <= revision
          if (cachedKey !== undefined && cached !== undefined && restored(cached.revision)) this.#docs.set(cachedKey, { doc: cached.doc, revision: -1n })
          if (cachedKey !== undefined && restored(this.#deletedAt.get(cachedKey))) this.#deletedAt.delete(cachedKey)
          const key = this.#absorb(kv, true)
          if (key !== undefined) seen.add(key)
        }
        for (const key of [...this.#docs.keys()]) {
          if (!seen.has(key) && this.#applyDelete(key, revision)) this.#emit(key)
        }
        await this.#watch(revision + 1n)
        return
      } catch (err) {
        this.#log.warn({ err, store: this.#what, retryInMs: delayMs }, 'etcd store reload failed')
        await pause(delayMs, this.#closing.signal)
      }
    }
  }

  /** Takes a key-value pair read from etcd into memory if it is newer; returns its key when valid. */
  #absorb(kv: IKeyValue, announce: boolean): string | undefined {
    const key = this.#keyOf(kv.key)
    if (key === undefined) return undefined
    let doc: unknown
    try {
      doc = JSON.parse(kv.value.toString('utf8'))
    } catch {
      this.#log.error({ store: this.#what, key }, 'etcd holds a document that is not JSON: ignored')
      return undefined
    }
    const reason = this.#check(doc)
    if (reason !== undefined) {
      this.#log.error({ store: this.#what, key, reason }, 'etcd holds a document this store does not read: ignored')
      return undefined
    }
    if (this.#apply(key, doc as T, BigInt(kv.mod_revision)) && announce) this.#emit(key)
    return key
  }

  /** What a refused transaction read instead: the key's current document, or none (deleted by then). */
  #absorbRange(key: string, kvs: readonly IKeyValue[], revision: bigint): void {
    const kv = kvs[0]
    if (kv !== undefined) this.#absorb(kv, true)
    else if (this.#applyDelete(key, revision)) this.#emit(key)
  }

  #apply(key: string, doc: T, revision: bigint): boolean {
    if (revision > this.#highest) this.#highest = revision
    const current = this.#docs.get(key)
    if (current !== undefined && current.revision >= revision) return false
    const deletedAt = this.#deletedAt.get(key)
    if (deletedAt !== undefined && deletedAt >= revision) return false
    this.#deletedAt.delete(key)
    this.#docs.set(key, { doc, revision })
    return true
  }

  #applyDelete(key: string, revision: bigint): boolean {
    if (revision > this.#highest) this.#highest = revision
    const current = this.#docs.get(key)
    if (current !== undefined && current.revision > revision) return false
    this.#docs.delete(key)
    // Remembered only while a put older than it could still echo; bounded by the keys deleted
    // recently, forgotten at the next put of the key.
    if (this.#deletedAt.size < 10_000) this.#deletedAt.set(key, revision)
    return current !== undefined
  }

  #keyOf(raw: Buffer): string | undefined {
    const text = raw.toString('utf8')
    if (!text.startsWith(this.#prefix)) return undefined
    try {
      return decodeURIComponent(text.slice(this.#prefix.length))
    } catch {
      return undefined
    }
  }

  #emit(key: string): void {
    for (const listener of this.#listeners) {
      try {
        listener(key)
      } catch (err) {
        this.#log.error({ err, store: this.#what, key }, 'a store change listener failed')
      }
    }
  }

  /** etcd unreachable or too slow: one typed error of ours, retryable by the caller. */
  async #guard<R>(key: string, verb: string, io: () => Promise<R>): Promise<R> {
    try {
      return await io()
    } catch (err) {
      if (err instanceof MaitreError) throw err
      throw new MaitreError('MAITRE_STORE_WRITE', `The ${this.#what} ${JSON.stringify(key)} could not be ${verb}: etcd did not confirm it (${(err as Error).message})`, {
        details: { store: this.#what, key },
        headers: { 'retry-after': '5' },
        cause: err,
      })
    }
  }

}
