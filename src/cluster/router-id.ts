/**
 * This router's id among its peers: the configured one, or one generated once per data
 * directory and kept there, so a router that restarts is the same member (its metrics, logs and
 * membership key keep their name) rather than a stranger that left a ghost behind.
 */
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { ROUTER_ID } from '../config.ts'
import { MaitreError } from '../errors.ts'
import { writeFileAtomic } from '../storage/json-dir.ts'

export async function loadRouterId(configured: string | null, dataDir: string): Promise<string> {
  if (configured !== null) return configured
  const path = join(dataDir, 'router-id')
  if (existsSync(path)) {
    const id = readFileSync(path, 'utf8').trim()
    if (!ROUTER_ID.test(id)) throw new MaitreError('MAITRE_STORE_CORRUPT', `${path} does not hold a router id (1-63 letters, digits, ".", "_" or "-"). Nothing was changed; fix or remove the file and start again.`)
    return id
  }
  const id = `router-${randomBytes(6).toString('hex')}`
  await writeFileAtomic(path, `${id}\n`)
  return id
}
