/**
 * One router per data directory. Two routers sharing one would overwrite each other's stores,
 * and the second one's start-up sweep would kill the first one's instances: the directory holds
 * a lock file with its router's pid, taken at start-up and removed at stop. A lock whose router
 * is gone (a crash, SIGKILL) is taken over.
 */
import { randomBytes } from 'node:crypto'
import { linkSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { MaitreError } from '../errors.ts'

const LOCK_FILE = 'router.lock'
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
 * pid included (written aside, then linked into place: a link fails if the name exists), so a
 * reader never sees it empty; a stale one is moved aside by rename, which only one of several
 * routers starting at once can do, and the one that moved it checks it moved the dead router's.
 */
export function lockDataDir(dataDir: string): () => void {
  const path = join(dataDir, LOCK_FILE)
  if (heldHere.has(path)) throw inUse(dataDir, process.pid)
  for (let attempt = 0; attempt < TAKEOVER_ATTEMPTS; attempt++) {
    if (linkWhole(path)) {
      heldHere.add(path)
      return () => {
        heldHere.delete(path)
        rmSync(path, { force: true })
      }
    }
    const holder = readHolder(path)
    if (holder === undefined) continue // released (or moved aside) meanwhile: try again
    if (routerAlive(holder) && holder !== process.pid) throw inUse(dataDir, holder)
    // Left by a router that is gone: moved aside, by one router only.
    const aside = `${path}.stale-${process.pid}-${randomBytes(4).toString('hex')}`
    try {
      renameSync(path, aside)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue // another router moved it first
      throw err
    }
    const moved = readHolder(aside)
    if (moved !== undefined && moved !== holder && moved !== process.pid && routerAlive(moved)) {
      // Between reading it and moving it, a live router took the lock over: its lock goes back.
      try {
        linkSync(aside, path)
      } catch {
        // Taken by yet another meanwhile: it holds it now.
      }
      rmSync(aside, { force: true })
      throw inUse(dataDir, moved)
    }
    rmSync(aside, { force: true })
  }
  throw inUse(dataDir, readHolder(path) ?? 0)
}

/** Rounds of trying to take a stale lock while other routers start on the same directory. */
const TAKEOVER_ATTEMPTS = 5

/** Creates the lock file with this router's pid in it, at once and whole; false if one exists. */
function linkWhole(path: string): boolean {
  const draft = `${path}.${process.pid}-${randomBytes(4).toString('hex')}`
  writeFileSync(draft, `${process.pid}\n`, { mode: 0o600 })
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

function readHolder(path: string): number | undefined {
  try {
    return Number(readFileSync(path, 'utf8').trim())
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw err
  }
}

function inUse(dataDir: string, pid: number): MaitreError {
  return new MaitreError('MAITRE_DATA_DIR_IN_USE', `The data directory ${dataDir} is in use by another router (pid ${pid}); give each router its own`, { details: { dataDir, pid } })
}
