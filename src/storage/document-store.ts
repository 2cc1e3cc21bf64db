/**
 * The seam every piece of shared state goes through (tokens, service records, overrides,
 * suspensions): a map of JSON documents held in memory, written through to durable storage.
 * Single-router mode keeps it in a directory of files; cluster mode in etcd, where another
 * router's writes arrive through a watch and are announced with `onChange`.
 */
import { MaitreError } from '../errors.ts'

/** Rejects a document read back from storage by naming what is wrong with it (undefined: fine). */
export type DocumentCheck = (doc: unknown) => string | undefined

export interface DocumentStore<T> {
  get(key: string): T | undefined
  has(key: string): boolean
  entries(): IterableIterator<[string, T]>
  readonly size: number
  /**
   * Resolves once the document is stored (durable, or, in a directory that could not then be
   * synced, reported to the operator as not), and only then shows it in memory. With `expected`
   * (the document this write replaces, as read from this store, or null for "none"), the write
   * is a compare-and-set: if the stored document is another one by then, nothing is written and
   * it rejects with MAITRE_STORE_CONFLICT.
   */
  put(key: string, doc: T, expected?: T | null): Promise<void>
  /** Resolves once the document is gone from storage, and only then from memory; `expected` as for put. */
  delete(key: string, expected?: T | null): Promise<void>
  /** Resolves when every write issued so far is stored. */
  flush(): Promise<void>
  /**
   * Told of every change this store did not make itself (another router's write), and, where a
   * write waits for other routers to read it (etcd's `afterCommit`), of its own writes once
   * committed, before that wait. Returns an unsubscribe.
   */
  onChange(listener: (key: string) => void): () => void
}

/** Opens (loads) one named store: `tokens`, `services`, `overrides`, `suspended`. */
export interface StoreOpener {
  readonly kind: 'file' | 'etcd'
  open<T>(name: string, what: string, check?: DocumentCheck): Promise<DocumentStore<T>>
}

export function storeConflict(what: string, key: string): MaitreError {
  return new MaitreError('MAITRE_STORE_CONFLICT', `The ${what} ${JSON.stringify(key)} was changed by someone else meanwhile; nothing was written`, {
    details: { store: what, key },
  })
}

/** Whether `current` is what a compare-and-set expected (identity: the very document read from the store). */
export function matchesExpected<T>(current: T | undefined, expected: T | null | undefined): boolean {
  return expected === undefined || (expected === null ? current === undefined : current === expected)
}
