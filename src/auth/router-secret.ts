/**
 * The router secret instance passwords derive from (Waiter's Basic credentials for instances):
 * the configured one, or one generated once per data directory and kept there (mode 0600), so
 * instance passwords survive restarts.
 */
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { writeFileAtomic } from '../storage/json-dir.ts'
import { MIN_SECRET_LENGTH } from '../config.ts'
import { MaitreError } from '../errors.ts'

export async function loadRouterSecret(configured: string | null, dataDir: string): Promise<string> {
  if (configured !== null) return configured
  const path = join(dataDir, 'router-secret')
  if (existsSync(path)) return usableSecret(readFileSync(path, 'utf8').trim(), path)
  const secret = randomBytes(24).toString('hex')
  await writeFileAtomic(path, `${secret}\n`)
  return secret
}

/**
 * A kept secret read back, refused when empty or short (a truncated file, an empty etcd value):
 * everything derived from it would be guessable, an admin's login cookie included.
 */
export function usableSecret(stored: string | undefined, where: string): string {
  if (stored === undefined || stored.length < MIN_SECRET_LENGTH) {
    throw new MaitreError('MAITRE_STORE_CORRUPT', `${where} holds no router secret of at least ${MIN_SECRET_LENGTH} characters; set \`secret\` in the config, or delete it to have one generated`)
  }
  return stored
}
