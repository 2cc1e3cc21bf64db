/**
 * One router per data directory. Two routers sharing one would overwrite each other's stores,
 * and the second one's start-up sweep would kill the first one's instances: the directory holds
 * a lock file with its router's pid, taken at start-up and removed at stop. A lock whose router
 * is gone (a crash, SIGKILL) is taken over.
 */
import { randomBytes } from 'node:crypto'
import { linkSync, mkdirSync, readFileSync, rmdirSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { MaitreError } from '../errors.ts'

/** The lock file's name, and its takeover guard's (`.takeover` appended). */
export const LOCK_FILE = 'router.lock'
/** Directories locked by routers of this very process (tests run several). */
const heldHere = new Set<string>()

function routerAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false
  try {
    process.kill(pid, 0)
  } catch {
    return false
  }
  // A pid reused by some other program since is no router.
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('node')
  } catch {
    return true // no /proc: trust the pid
  }
}

/**
 * Takes the data directory for this router; returns the release. The lock file appears whole,
 * pid and nonce included (written aside, then linked into place: a link fails if the name
 * exists), so a reader never sees it empty. A stale one is removed only under a takeover guard
 * (a directory only one router can make), so of several routers starting at once on it, one
 * removes it and the rest find the new holder alive. The release removes the file only while
 * it is still this router's.
 */
export function lockDataDir(dataDir: string, what = 'data directory'): () => void {
  const path = join(dataDir, LOCK_FILE)
  if (heldHere.has(path)) throw inUse(dataDir, process.pid, what)
  const mine = `${process.pid} ${randomBytes(8).toString('hex')}\n`
  for (let attempt = 0; attempt < LOCK_ATTEMPTS; attempt++) {
    if (linkWhole(path, mine)) {
      heldHere.add(path)
      return () => {
        heldHere.delete(path)
        try {
          if (readText(path) === mine) rmSync(path, { force: true })
        } catch {
          // Unreadable now: left as it is; a later start takes it over once this router is gone.
        }
      }
    }
    const holder = holderOf(readText(path))
    if (holder === undefined) continue // released meanwhile: try again
    if (routerAlive(holder) && holder !== process.pid) throw inUse(dataDir, holder, what)
    // Left by a router that is gone. Another router may be taking it over right now: wait a
    // moment for its lock to appear (then it is alive, and this one refuses).
    if (!removeStale(path)) Atomics.wait(PAUSE, 0, 0, 10)
  }
  throw inUse(dataDir, holderOf(readText(path)) ?? 0, what)
}

/** Rounds of trying, 10 ms apart while another router takes a stale lock over: about a second. */
const LOCK_ATTEMPTS = 100
const PAUSE = new Int32Array(new SharedArrayBuffer(4))
/** A takeover guard older than this was left by a router that died taking over (a takeover lasts milliseconds). */
const GUARD_STALE_MS = 10_000

/**
 * Removes a stale lock under the takeover guard: only the router that made the guard removes
 * it, after reading again that its holder is gone. False if another router holds the guard.
 */
function removeStale(path: string): boolean {
  const guard = `${path}.takeover`
  try {
    mkdirSync(guard)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
    try {
      if (Date.now() - statSync(guard).mtimeMs > GUARD_STALE_MS) rmdirSync(guard)
    } catch {
      // Gone meanwhile: its router finished.
    }
    return false
  }
  try {
    const holder = holderOf(readText(path))
    // Under the guard nobody else removes the lock, and none can be made while it exists.
    if (holder !== undefined && !(routerAlive(holder) && holder !== process.pid)) rmSync(path, { force: true })
    return true
  } finally {
    rmdirSync(guard)
  }
}

/** Creates the lock file with `text` in it, at once and whole; false if one exists. */
function linkWhole(path: string, text: string): boolean {
  const draft = `${path}.${process.pid}-${randomBytes(4).toString('hex')}`
  writeFileSync(draft, text, { mode: 0o600 })
  try {
    linkSync(draft, path)
    return true
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false
    throw err
  } finally {
    rmSync(draft, { force: true })
  }
}

function readText(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw err
  }
}

/** The pid a lock file names (its first field); a file of an older maitre holds the pid alone. */
function holderOf(text: string | undefined): number | undefined {
  return text === undefined ? undefined : Number(text.trim().split(/\s+/)[0])
}

function inUse(dataDir: string, pid: number, what: string): MaitreError {
  return new MaitreError('MAITRE_DATA_DIR_IN_USE', `The ${what} ${dataDir} is in use by another router (pid ${pid}); give each router its own`, { details: { dataDir, pid } })
}
