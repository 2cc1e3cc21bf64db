/**
 * Removes a sandbox whatever its instance left in it. An instance may leave directories it
 * cannot write (Go's module cache under $HOME is read-only by design): `rm` then stops at
 * EACCES for any router not running as root. Those directories are made writable (never
 * following a link out of the tree) and the removal is tried again.
 */
import { chmod, lstat, readdir, rm } from 'node:fs/promises'
import { join } from 'node:path'

export async function removeTree(path: string): Promise<void> {
  try {
    await rm(path, { recursive: true, force: true, maxRetries: 2 })
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code !== 'EACCES' && code !== 'EPERM') throw err
    await makeWritable(path)
    await rm(path, { recursive: true, force: true, maxRetries: 2 })
  }
}

/** Owner rwx on every directory of the tree (files need none: removing one is its directory's business). */
async function makeWritable(dir: string): Promise<void> {
  const stat = await lstat(dir).catch(() => undefined)
  if (stat === undefined || !stat.isDirectory()) return
  await chmod(dir, (stat.mode & 0o7777) | 0o700).catch(() => undefined)
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => [])
  for (const entry of entries) if (entry.isDirectory()) await makeWritable(join(dir, entry.name))
}
