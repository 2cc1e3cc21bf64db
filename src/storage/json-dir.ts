/**
 * A directory of JSON documents, one file per key, written atomically (temp file, fsync, rename,
 * fsync of the directory) so that a crash leaves either the old or the new document, never half
 * of one. Opening refuses a directory holding a document it cannot parse, and touches nothing:
 * a corrupt store stops startup instead of being silently overwritten.
 */
import { mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { open, rename, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { MaitreError } from '../errors.ts'

const SUFFIX = '.json'
const TEMP_MARK = '.tmp-'

export async function writeFileAtomic(path: string, text: string): Promise<void> {
  const dir = path.slice(0, path.lastIndexOf('/')) || '.'
  const temp = `${path}${TEMP_MARK}${process.pid}-${randomBytes(4).toString('hex')}`
  const handle = await open(temp, 'w', 0o600)
  try {
    await handle.writeFile(text)
    await handle.sync()
  } finally {
    await handle.close()
  }
  try {
    await rename(temp, path)
  } catch (err) {
    await rm(temp, { force: true })
    throw err
  }
  const dirHandle = await open(dir, 'r')
  try {
    await dirHandle.sync()
  } finally {
    await dirHandle.close()
  }
}

export class JsonDirectory<T> {
  readonly #dir: string
  readonly #docs = new Map<string, T>()
  /** Writes to one key are chained so that the last write wins on disk as in memory. */
  readonly #pending = new Map<string, Promise<void>>()

  private constructor(dir: string) {
    this.#dir = dir
  }

  /**
   * Loads every document. `check` may reject a parsed document by returning a reason; any
   * unreadable document makes opening fail with MAITRE_STORE_CORRUPT naming the file.
   */
  static open<T>(dir: string, what: string, check: (doc: unknown) => string | undefined = () => undefined): JsonDirectory<T> {
    mkdirSync(dir, { recursive: true })
    const store = new JsonDirectory<T>(dir)
    for (const file of readdirSync(dir).sort()) {
      const path = join(dir, file)
      if (file.includes(TEMP_MARK)) {
        // An interrupted write: the rename never happened, so the document it was replacing is intact.
        rmSync(path, { force: true })
        continue
      }
      if (!file.endsWith(SUFFIX)) continue
      let doc: unknown
      try {
        doc = JSON.parse(readFileSync(path, 'utf8'))
      } catch (err) {
        throw new MaitreError('MAITRE_STORE_CORRUPT', `The ${what} store is corrupt: ${path} is not valid JSON (${(err as Error).message}). Nothing was changed; repair or move the file and start again.`)
      }
      const reason = check(doc)
      if (reason !== undefined) {
        throw new MaitreError('MAITRE_STORE_CORRUPT', `The ${what} store is corrupt: ${path} ${reason}. Nothing was changed; repair or move the file and start again.`)
      }
      store.#docs.set(decodeURIComponent(file.slice(0, -SUFFIX.length)), doc as T)
    }
    return store
  }

  get(key: string): T | undefined {
    return this.#docs.get(key)
  }

  has(key: string): boolean {
    return this.#docs.has(key)
  }

  entries(): IterableIterator<[string, T]> {
    return this.#docs.entries()
  }

  get size(): number {
    return this.#docs.size
  }

  /** Updates memory at once (readers see the new value) and resolves once the file is durable. */
  put(key: string, doc: T): Promise<void> {
    this.#docs.set(key, doc)
    return this.#chain(key, () => writeFileAtomic(this.#path(key), `${JSON.stringify(doc, null, 1)}\n`))
  }

  delete(key: string): Promise<void> {
    this.#docs.delete(key)
    return this.#chain(key, () => rm(this.#path(key), { force: true }))
  }

  /** Resolves when every write issued so far is on disk. */
  async flush(): Promise<void> {
    await Promise.allSettled([...this.#pending.values()])
  }

  #path(key: string): string {
    return join(this.#dir, `${encodeURIComponent(key)}${SUFFIX}`)
  }

  #chain(key: string, write: () => Promise<void>): Promise<void> {
    const previous = this.#pending.get(key) ?? Promise.resolve()
    const next = previous.catch(() => undefined).then(write)
    this.#pending.set(key, next)
    const cleanup = (): void => {
      if (this.#pending.get(key) === next) this.#pending.delete(key)
    }
    next.then(cleanup, cleanup)
    return next
  }
}
