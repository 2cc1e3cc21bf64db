/**
 * Where tokens live: a DocumentStore, kept in files under the data directory by a single router
 * and in etcd by a cluster. Writes are compare-and-set so that If-Match stays atomic across
 * routers and two routers editing one token never lose an update.
 */
import type { DocumentStore, StoreOpener } from '../storage/document-store.ts'

/** A token as stored: service parameters, user metadata and system metadata in one flat map, as Waiter keeps it. */
export type TokenData = Readonly<Record<string, unknown>>

export interface TokenStore {
  get(name: string): TokenData | undefined
  entries(): Iterable<readonly [string, TokenData]>
  /** Tokens stored, soft-deleted ones included. */
  size(): number
  /**
   * Replaces the token; resolves once the write is durable. `expected` is the version the write
   * was computed from (as `get` returned it; null when there was none): if another write got in
   * first, nothing is written and it rejects with MAITRE_STORE_CONFLICT.
   */
  put(name: string, data: TokenData, expected: TokenData | null): Promise<void>
  /** Removes the token for good (hard delete), under the same compare-and-set rule. */
  remove(name: string, expected: TokenData): Promise<void>
  /** Told of changes another router made. */
  onChange(listener: (name: string) => void): () => void
}

const isTokenDocument = (doc: unknown): string | undefined =>
  typeof doc === 'object' && doc !== null && !Array.isArray(doc) ? undefined : 'does not hold a JSON object'

export function tokenStoreOf(docs: DocumentStore<TokenData>): TokenStore {
  return {
    get: (name) => docs.get(name),
    entries: () => docs.entries(),
    size: () => docs.size,
    put: (name, data, expected) => docs.put(name, data, expected),
    remove: (name, expected) => docs.delete(name, expected),
    onChange: (listener) => docs.onChange(listener),
  }
}

export async function openTokenStore(stores: StoreOpener): Promise<TokenStore> {
  return tokenStoreOf(await stores.open<TokenData>('tokens', 'token', isTokenDocument))
}
