/**
 * Where tokens live. Single-router mode keeps them on disk under the data directory; cluster
 * mode will put them in etcd behind the same interface.
 */
import { join } from 'node:path'
import { JsonDirectory } from '../storage/json-dir.ts'

/** A token as stored: service parameters, user metadata and system metadata in one flat map, as Waiter keeps it. */
export type TokenData = Readonly<Record<string, unknown>>

export interface TokenStore {
  get(name: string): TokenData | undefined
  entries(): Iterable<readonly [string, TokenData]>
  /** Tokens stored, soft-deleted ones included. */
  size(): number
  /** Replaces the token; resolves once the write is durable. */
  put(name: string, data: TokenData): Promise<void>
  /** Removes the token for good (hard delete). */
  remove(name: string): Promise<void>
}

export function openFileTokenStore(dataDir: string): TokenStore {
  const dir = JsonDirectory.open<TokenData>(join(dataDir, 'tokens'), 'token', (doc) =>
    typeof doc === 'object' && doc !== null && !Array.isArray(doc) ? undefined : 'does not hold a JSON object',
  )
  return {
    get: (name) => dir.get(name),
    entries: () => dir.entries(),
    size: () => dir.size,
    put: (name, data) => dir.put(name, data),
    remove: (name) => dir.delete(name),
  }
}
