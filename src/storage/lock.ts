/**
 * One router per data directory. Two routers sharing one would overwrite each other's stores,
 * and the second one's start-up sweep would kill the first one's instances: the directory holds
 * a lock file with its router's pid, taken at start-up and removed at stop. A lock whose router
 * is gone (a crash, SIGKILL) is taken over.
 */
import { closeSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs'
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

/** Takes the data directory for this router; returns the release. */
export function lockDataDir(dataDir: string): () => void {
  const path = join(dataDir, LOCK_FILE)
  if (heldHere.has(path)) throw inUse(dataDir, process.pid)
  for (let attempt = 0; ; attempt++) {
    let fd: number
    try {
      fd = openSync(path, 'wx', 0o600)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || attempt > 0) throw err
      const holder = Number(readFileSync(path, 'utf8').trim())
      if (routerAlive(holder) && holder !== process.pid) throw inUse(dataDir, holder)
      rmSync(path, { force: true }) // left by a router that is gone
      continue
    }
    writeSync(fd, `${process.pid}\n`)
    closeSync(fd)
    heldHere.add(path)
    return () => {
      heldHere.delete(path)
      rmSync(path, { force: true })
    }
  }
}

function inUse(dataDir: string, pid: number): MaitreError {
  return new MaitreError('MAITRE_DATA_DIR_IN_USE', `The data directory ${dataDir} is in use by another router (pid ${pid}); give each router its own`, { details: { dataDir, pid } })
}
