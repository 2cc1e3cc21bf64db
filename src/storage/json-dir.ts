/**
 * A directory of JSON documents, one file per key, written atomically (temp file, fsync, rename,
 * fsync of the directory) so that a crash leaves either the old or the new document, never half
 * of one. Opening refuses a directory holding a document it cannot parse, and touches nothing:
 * a corrupt store stops startup instead of being silently overwritten.
 *
 * Memory follows the disk: a write or delete shows in memory once it is on disk, so a write
 * that fails (disk full, read-only, a name the file system refuses) leaves memory and disk both
 * on the previous version, and its partial temporary file is removed; one made whose directory
 * could not then be synced shows, and is reported to the operator as not durable. Temporary files live
 * in their own subdirectory, so no key can ever collide with one, and the start-up sweep removes
 * only them.
 */
import { mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { mkdir, open, rename, rm } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { MaitreError } from '../errors.ts'
import { PerKeyQueue } from './per-key-queue.ts'
import { matchesExpected, storeConflict, type DocumentCheck, type DocumentStore, type StoreOpener } from './document-store.ts'

const SUFFIX = '.json'
const TEMP_DIR = '.tmp'
/** Temporaries of maitre versions before TEMP_DIR: `<key>.json.tmp-<pid>-<8 hex>` (a key's own file ends in .json). */
const LEGACY_TEMP = /\.json\.tmp-\d+-[0-9a-f]{8}$/
/** Longest file name the common file systems (ext4, xfs, btrfs, tmpfs) accept, in bytes. */
export const MAX_FILE_NAME_BYTES = 255

/**
 * Writes `text` to `path` atomically; the temporary file goes in `tempDir` (same file system),
 * under a short name of its own (so that any name `path` may have fits), and is removed if
 * anything fails.
 */
export async function writeFileAtomic(path: string, text: string, tempDir = dirname(path)): Promise<void> {
  await replaceFile(path, text, tempDir)
  await syncDirectory(dirname(path))
}

/** The first step of writeFileAtomic: the file replaced whole, its entry not yet durable. */
async function replaceFile(path: string, text: string, tempDir: string): Promise<void> {
  const temp = join(tempDir, `.${process.pid}-${randomBytes(8).toString('hex')}.tmp`)
  try {
    const handle = await open(temp, 'w', 0o600)
    try {
      await handle.writeFile(text)
      await handle.sync()
    } finally {
      await handle.close()
    }
    await rename(temp, path)
  } catch (err) {
    await rm(temp, { force: true })
    throw err
  }
}

/** Makes a directory's entries (a rename, a removal) durable: until then a power loss may undo them. */
async function syncDirectory(dir: string): Promise<void> {
  const dirHandle = await open(dir, 'r')
  try {
    await dirHandle.sync()
  } finally {
    await dirHandle.close()
  }
}

/** The file name a key is stored under. */
export function fileNameOf(key: string): string {
  return `${encodeURIComponent(key)}${SUFFIX}`
}

/** A change made whose directory could not then be synced: a power loss may undo it. */
export interface NotDurable {
  readonly store: string
  readonly key: string
  readonly verb: string
  readonly err: unknown
}

export interface JsonDirectoryOptions {
  /** How a store makes its directory's entries durable (tests inject a failing one). */
  readonly syncDirectory?: (dir: string) => Promise<void>
  /** Told of each change that could not be made durable (default: a process warning). */
  readonly onNotDurable?: (what: NotDurable) => void
}

function warnNotDurable({ store, key, verb, err }: NotDurable): void {
  process.emitWarning(`The ${store} ${JSON.stringify(key)} was ${verb}, but its directory could not be synced (${(err as NodeJS.ErrnoException).code ?? String(err)}): a power loss may undo it`)
}

export class JsonDirectory<T> implements DocumentStore<T> {
  readonly #dir: string
  readonly #what: string
  readonly #docs = new Map<string, T>()
  /** Writes to one key are chained so that the last write wins on disk as in memory. */
  readonly #writes = new PerKeyQueue()
  readonly #syncDirectory: (dir: string) => Promise<void>
  readonly #onNotDurable: (what: NotDurable) => void

  private constructor(dir: string, what: string, options: JsonDirectoryOptions) {
    this.#dir = dir
    this.#what = what
    this.#syncDirectory = options.syncDirectory ?? syncDirectory
    this.#onNotDurable = options.onNotDurable ?? warnNotDurable
  }

  /**
   * Loads every document. `check` may reject a parsed document by returning a reason; any
   * unreadable document makes opening fail with MAITRE_STORE_CORRUPT naming the file.
   */
  static open<T>(dir: string, what: string, check: DocumentCheck = () => undefined, options: JsonDirectoryOptions = {}): JsonDirectory<T> {
    mkdirSync(dir, { recursive: true })
    // Interrupted writes: the rename never happened, so the documents they were replacing are intact.
    rmSync(join(dir, TEMP_DIR), { recursive: true, force: true })
    mkdirSync(join(dir, TEMP_DIR))
    const store = new JsonDirectory<T>(dir, what, options)
    for (const file of readdirSync(dir).sort()) {
      const path = join(dir, file)
      if (LEGACY_TEMP.test(file)) {
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
      let key: string
      try {
        key = decodeURIComponent(file.slice(0, -SUFFIX.length))
      } catch {
        throw new MaitreError('MAITRE_STORE_CORRUPT', `The ${what} store is corrupt: ${path} is not a name this store writes. Nothing was changed; move the file and start again.`)
      }
      store.#docs.set(key, doc as T)
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

  /** Resolves once the document is durable, and only then shows it in memory. */
  put(key: string, doc: T, expected?: T | null): Promise<void> {
    return this.#writes.run(key, async () => {
      // One process owns the directory (the data-dir lock), so what memory holds is what is stored.
      if (!matchesExpected(this.#docs.get(key), expected)) throw storeConflict(this.#what, key)
      await this.#guard(key, 'written', () => replaceFile(this.#path(key), `${JSON.stringify(doc, null, 1)}\n`, join(this.#dir, TEMP_DIR)))
      this.#docs.set(key, doc)
      await this.#durable(key, 'written')
    })
  }

  /** Resolves once the document is gone from disk, and only then from memory. */
  delete(key: string, expected?: T | null): Promise<void> {
    return this.#writes.run(key, async () => {
      if (!matchesExpected(this.#docs.get(key), expected)) throw storeConflict(this.#what, key)
      // Nothing there once the writes queued before it are done (memory follows the directory,
      // which only this router writes): no file to remove, no directory to sync.
      if (!this.#docs.has(key)) return
      await this.#guard(key, 'deleted', () => rm(this.#path(key), { force: true }))
      this.#docs.delete(key)
      await this.#durable(key, 'deleted')
    })
  }

  /**
   * The change is made (what a reader of the directory, or this router after a restart, sees),
   * memory follows it; only its entry is not yet safe from a power loss. A failure to make it so
   * (a failing disk) is reported to the operator, not to the caller as a failed write: that would
   * no longer be true, and every caller (a GC half done, a client retrying a write already made)
   * would act on a falsehood.
   */
  async #durable(key: string, verb: string): Promise<void> {
    try {
      await this.#syncDirectory(this.#dir)
    } catch (err) {
      this.#onNotDurable({ store: this.#what, key, verb, err })
    }
  }

  /** Nobody else writes this directory while the router holds its data-dir lock. */
  onChange(): () => void {
    return () => undefined
  }

  /** Resolves when every write issued so far is on disk. */
  async flush(): Promise<void> {
    await this.#writes.settled()
  }

  #path(key: string): string {
    return join(this.#dir, fileNameOf(key))
  }

  /** A file-system failure becomes one typed error, of ours, that says nothing changed. */
  async #guard(key: string, verb: string, io: () => Promise<void>): Promise<void> {
    try {
      await mkdir(join(this.#dir, TEMP_DIR), { recursive: true })
      await io()
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      throw new MaitreError('MAITRE_STORE_WRITE', `The ${this.#what} ${JSON.stringify(key)} could not be ${verb} (${code ?? 'I/O error'}); nothing was changed`, {
        details: { store: this.#what, key },
        headers: { 'retry-after': '5' },
        cause: err,
      })
    }
  }

}

/** Single-router mode: each store is a directory under the data directory. */
export function fileStores(dataDir: string, onNotDurable?: (what: NotDurable) => void): StoreOpener {
  return {
    kind: 'file',
    open: <T>(name: string, what: string, check?: DocumentCheck) => Promise.resolve(JsonDirectory.open<T>(join(dataDir, name), what, check, onNotDurable === undefined ? {} : { onNotDurable })),
  }
}
