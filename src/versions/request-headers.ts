/**
 * Waiter's x-waiter-* request headers: which are per-request settings, which describe a service
 * on the fly (and how their values are parsed), and which are refused.
 */
import { MaitreError } from '../errors.ts'
import { jsonDepth, MAX_JSON_DEPTH } from '../limits.ts'
import { PARAMETERS } from './parameters.ts'

export const WAITER_PREFIX = 'x-waiter-'

/** Headers that tune one request and never describe a service. */
export const PER_REQUEST_HEADERS = new Set([
  'token',
  'timeout',
  'queue-timeout',
  'streaming-timeout',
  'debug',
  'fallback-period-secs',
  'service-id',
  'async-check-interval',
  'async-request-timeout',
])
const UNSUPPORTED = new Set(['maintenance'])

export interface WaiterHeaders {
  /** Service parameters given on the fly (env-*, metadata-* and param-* folded into maps). */
  readonly onTheFly: Record<string, unknown>
  /** `x-waiter-param-*` values, applied to env only for names in allowed-params. */
  readonly params: Record<string, string>
  /** Per-request settings, by name without the prefix. */
  readonly perRequest: Record<string, string>
}

function parseValue(header: string, name: string, raw: string): unknown {
  if (PARAMETERS.get(name)?.rawHeader === true) {
    return name === 'allowed-params' ? raw.split(',').map((s) => s.trim()).filter((s) => s !== '') : raw
  }
  let value: unknown
  try {
    value = JSON.parse(raw)
  } catch {
    return raw // the schema then reports the type error with the parameter's own message
  }
  if (jsonDepth(value) > MAX_JSON_DEPTH) {
    throw new MaitreError('MAITRE_BAD_REQUEST', `${header} nests deeper than ${MAX_JSON_DEPTH} levels`, { details: { field: header, limit: 'json-depth', max: MAX_JSON_DEPTH } })
  }
  return value
}

/** A key a caller names (env-*, metadata-*, param-*): never one that would reach an object's prototype. */
function safeKey(header: string, key: string): string {
  if (key === '__proto__' || key === 'constructor' || key === 'prototype' || key === '') {
    throw new MaitreError('MAITRE_BAD_REQUEST', `${header} names no valid key`, { details: { field: header } })
  }
  return key
}

/** The on-the-fly env or metadata map the headers of its family fill (safeKey keeps their keys off its prototype). */
function mapOf(onTheFly: Record<string, unknown>, name: 'env' | 'metadata'): Record<string, unknown> {
  return (onTheFly[name] ??= {}) as Record<string, unknown>
}

export function parseWaiterHeaders(headers: Readonly<Record<string, string | string[] | undefined>>): WaiterHeaders {
  const onTheFly: Record<string, unknown> = {}
  const params: Record<string, string> = {}
  const perRequest: Record<string, string> = {}
  const unsupported: string[] = []
  for (const header in headers) {
    const value = headers[header]
    if (!header.startsWith(WAITER_PREFIX) || value === undefined) continue
    const raw = Array.isArray(value) ? value.join(',') : value
    const name = header.slice(WAITER_PREFIX.length)
    if (PER_REQUEST_HEADERS.has(name)) perRequest[name] = raw
    else if (UNSUPPORTED.has(name)) unsupported.push(header)
    else if (name === 'authentication') {
      throw new MaitreError('MAITRE_BAD_REQUEST', 'An authentication parameter is not supported for on-the-fly headers', { details: { field: header } })
    } else if (name.startsWith('env-')) {
      mapOf(onTheFly, 'env')[safeKey(header, name.slice(4).toUpperCase())] = raw
    } else if (name.startsWith('metadata-')) {
      mapOf(onTheFly, 'metadata')[safeKey(header, name.slice(9).toLowerCase())] = raw
    } else if (name === 'env' || name === 'metadata') {
      // The whole map as JSON, merged with the one-key headers of its family whatever their order.
      const map = parseValue(header, name, raw)
      if (typeof map !== 'object' || map === null || Array.isArray(map)) {
        throw new MaitreError('MAITRE_BAD_REQUEST', `${header} must be a JSON object of names to string values`, { details: { field: header } })
      }
      const into = mapOf(onTheFly, name)
      for (const [key, value] of Object.entries(map)) into[safeKey(header, key)] = value
    } else if (name.startsWith('param-')) {
      params[safeKey(header, name.slice(6).toUpperCase())] = raw
    } else if (PARAMETERS.has(name)) {
      onTheFly[name] = parseValue(header, name, raw)
    }
    // Other x-waiter-* headers (token-only names such as https-redirect) are ignored, as Waiter does.
  }
  if (unsupported.length > 0) {
    throw new MaitreError('MAITRE_BAD_REQUEST', 'Unsupported waiter headers found', { details: { 'unsupported-headers': unsupported } })
  }
  return { onTheFly, params, perRequest }
}
