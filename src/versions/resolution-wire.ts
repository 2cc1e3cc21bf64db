/**
 * A Resolution as routers of one cluster send it to each other (a request's resolved version,
 * for the keep-alive of the routers it did not reach): plain JSON both ways. What comes in is
 * checked field by field, and a field that breaks its rule is named in the error.
 */
import { MaitreError } from '../errors.ts'
import type { TokenReference } from './registry.ts'
import type { Resolution } from './resolve.ts'

const ID = /^[\x21-\x7e]{1,253}$/
/** Far beyond what a request names (tokens per request, earlier versions to fall back to). */
const MAX_LIST = 1000

function bad(field: string, rule: string): MaitreError {
  return new MaitreError('MAITRE_BAD_REQUEST', `${field} must be ${rule}`, { details: { field } })
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

function objectField(body: Record<string, unknown>, name: string, field: string): Readonly<Record<string, unknown>> {
  const value = body[name]
  if (!isObject(value)) throw bad(`${field}.${name}`, 'an object')
  return value
}

function tokenReference(value: unknown, field: string): TokenReference {
  if (!isObject(value) || typeof value['token'] !== 'string' || value['token'] === '' || typeof value['etag'] !== 'string') {
    throw bad(field, 'a token reference: {"token": a name, "etag": a string}')
  }
  return { token: value['token'], etag: value['etag'] }
}

function numberField(body: Record<string, unknown>, name: string, field: string): number {
  const value = body[name]
  if (typeof value !== 'number' || !Number.isFinite(value)) throw bad(`${field}.${name}`, 'a time in milliseconds')
  return value
}

/** The Resolution a peer sent under `field`; a MaitreError (400) naming the first field that breaks its rule. */
export function resolutionFromWire(value: unknown, field: string): Resolution {
  if (!isObject(value)) throw bad(field, 'an object: a resolved version')
  const serviceId = value['serviceId']
  if (typeof serviceId !== 'string' || !ID.test(serviceId)) throw bad(`${field}.serviceId`, 'a string of 1 to 253 printable characters')
  const sources = value['sources']
  if (!Array.isArray(sources) || sources.length > MAX_LIST) throw bad(`${field}.sources`, `a list of at most ${MAX_LIST} token references`)
  const source = value['source']
  const direct = value['direct']
  if (direct !== undefined && typeof direct !== 'boolean') throw bad(`${field}.direct`, 'true or false')
  const authenticationDisabled = value['authenticationDisabled']
  if (typeof authenticationDisabled !== 'boolean') throw bad(`${field}.authenticationDisabled`, 'true or false')
  const fallbackValue = value['fallback']
  let fallback: Resolution['fallback']
  if (fallbackValue !== undefined && fallbackValue !== null) {
    if (!isObject(fallbackValue)) throw bad(`${field}.fallback`, 'an object: {"since", "until", "serviceIds"}')
    const serviceIds = fallbackValue['serviceIds']
    if (!Array.isArray(serviceIds) || serviceIds.length > MAX_LIST || !serviceIds.every((id) => typeof id === 'string' && ID.test(id))) {
      throw bad(`${field}.fallback.serviceIds`, `a list of at most ${MAX_LIST} version ids`)
    }
    fallback = { since: numberField(fallbackValue, 'since', `${field}.fallback`), until: numberField(fallbackValue, 'until', `${field}.fallback`), serviceIds: serviceIds as string[] }
  }
  return {
    serviceId,
    core: objectField(value, 'core', field),
    effective: objectField(value, 'effective', field),
    source: source === undefined || source === null ? undefined : tokenReference(source, `${field}.source`),
    sources: sources.map((s, i) => tokenReference(s, `${field}.sources[${i}]`)),
    ...(direct === true ? { direct } : {}),
    tokenMetadata: objectField(value, 'tokenMetadata', field),
    fallback,
    authenticationDisabled,
  }
}
