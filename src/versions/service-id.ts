/**
 * Service ids: a pure function of the explicitly given service parameters. Defaults, token
 * metadata and overrides are left out, so changing a default in config or a token's timeouts
 * never renames a running service. The id is a DNS-1123 label (at most 63 characters of
 * [a-z0-9-], starting with a letter), because the Kubernetes backend names objects after it.
 */
import { createHash } from 'node:crypto'
import { coreParameters } from './descriptor.ts'
import type { Params } from './parameters.ts'
import { isDnsLabel, MAX_DNS_LABEL } from '../dns-label.ts'

export const DEFAULT_SERVICE_ID_PREFIX = 'maitre-'
const HASH_LENGTH = 32
const MAX_ID_LENGTH = MAX_DNS_LABEL

/** JSON with object keys sorted at every depth and set-like lists sorted, so equal meaning gives equal text. */
export function canonicalJson(value: unknown, key?: string): string {
  if (Array.isArray(value)) {
    const items = value.map((v) => canonicalJson(v))
    return `[${(key === 'allowed-params' ? items.sort() : items).join(',')}]`
  }
  if (typeof value === 'object' && value !== null) {
    const entries = Object.keys(value)
      .sort()
      .filter((k) => (value as Record<string, unknown>)[k] !== undefined)
      .map((k) => `${JSON.stringify(k)}:${canonicalJson((value as Record<string, unknown>)[k], k)}`)
    return `{${entries.join(',')}}`
  }
  return JSON.stringify(value)
}

export function serviceIdOf(params: Params, prefix: string = DEFAULT_SERVICE_ID_PREFIX): string {
  const core = coreParameters(params)
  const hash = createHash('md5').update(canonicalJson(core)).digest('hex')
  const rawName = typeof core['name'] === 'string' ? core['name'].toLowerCase().replace(/[^a-z0-9]/g, '') : ''
  const room = MAX_ID_LENGTH - prefix.length - HASH_LENGTH - 1
  const name = rawName.slice(0, Math.max(0, room))
  return `${prefix}${name === '' ? '' : `${name}-`}${hash}`
}

export { isDnsLabel }
