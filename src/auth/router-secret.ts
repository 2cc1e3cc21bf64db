/**
 * The router secret instance passwords derive from (Waiter's Basic credentials for instances):
 * the configured one, or one generated once per data directory and kept there (mode 0600), so
 * instance passwords survive restarts.
 */
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { writeFileAtomic } from '../storage/json-dir.ts'

export async function loadRouterSecret(configured: string | null, dataDir: string): Promise<string> {
  if (configured !== null) return configured
  const path = join(dataDir, 'router-secret')
  if (existsSync(path)) return readFileSync(path, 'utf8').trim()
  const secret = randomBytes(24).toString('hex')
  await writeFileAtomic(path, `${secret}\n`)
  return secret
}
