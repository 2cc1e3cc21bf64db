/**
 * The local backend's work directory is its own: at start-up it kills what a router that died
 * left running there and removes every sandbox, and at stop it removes them again. A directory
 * given explicitly (`backend.local.workDir`) must therefore be maitre's: empty, or marked as
 * maitre's by an earlier start; and held by one router at a time, with the data directory's lock
 * (a second router there would kill the first one's instances). The default, under the data
 * directory, is maitre's by construction, and locked all the same.
 */
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { MaitreError } from '../../errors.ts'
import { LOCK_FILE, lockDataDir } from '../../storage/lock.ts'

export const WORK_DIR_MARK = '.maitre-work-dir'
/** What the work directory holds besides sandboxes: never removed with them (lost+found: a disk mounted there). */
export const WORK_DIR_OWN = new Set([WORK_DIR_MARK, LOCK_FILE, `${LOCK_FILE}.takeover`, 'lost+found'])

/**
 * Takes the work directory for this router; returns the release. The default one (under the
 * data directory) is locked too: another router given it as its explicit work directory, while
 * it was empty, would otherwise take it and kill this one's instances at its next start.
 */
export function claimWorkDir(workDir: string, explicit: boolean): () => void {
  mkdirSync(workDir, { recursive: true })
  const unlock = lockDataDir(workDir, 'local backend work directory')
  try {
    const entries = readdirSync(workDir).filter((entry) => !WORK_DIR_OWN.has(entry))
    // A data or work directory of a router (its lock file says so) inside this one would be
    // removed with the sandboxes, and its instances killed as leftovers.
    const locked = entries.filter((entry) => existsSync(join(workDir, entry, LOCK_FILE)))
    if (locked.length > 0) {
      throw new MaitreError(
        'MAITRE_INVALID_CONFIG',
        `backend.local.workDir ${workDir} holds a router's data or work directory (${locked.slice(0, 3).join(', ')}: it has a ${LOCK_FILE}), and maitre removes everything in its work directory: move that directory out, or give this router another work directory`,
        { details: { field: 'backend.local.workDir', workDir } },
      )
    }
    if (explicit && entries.length > 0 && !existsSync(join(workDir, WORK_DIR_MARK))) {
      const shown = entries.slice(0, 3).join(', ') + (entries.length > 3 ? ', …' : '')
      throw new MaitreError(
        'MAITRE_INVALID_CONFIG',
        `backend.local.workDir ${workDir} holds files maitre did not make (${shown}), and maitre removes everything in it: give it an empty directory of its own (or, if those are an earlier maitre's sandboxes, create ${join(workDir, WORK_DIR_MARK)})`,
        { details: { field: 'backend.local.workDir', workDir } },
      )
    }
    writeFileSync(join(workDir, WORK_DIR_MARK), 'This directory is the work directory of a maitre router (backend.local.workDir): everything else in it is removed at its start and stop.\n')
    return unlock
  } catch (err) {
    unlock()
    throw err
  }
}
