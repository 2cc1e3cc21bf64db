/**
 * Waiter's service-description parameters: their types, ranges, defaults (Waiter's code values,
 * except max-queue-length 1000) and the friendly messages a violation produces. This table is the
 * single source for validation, defaults, overrides and the JSON Schema test.
 */
import { corsRulesShapeProblem } from '../http/cors-shape.ts'

export type ParamValue = string | number | boolean | readonly string[] | Readonly<Record<string, string>>
export type Params = Readonly<Record<string, unknown>>

/** Checks one value; returns Waiter's friendly message when the value breaks the rule. */
type Check = (name: string, value: unknown) => string | undefined

export interface ParamSpec {
  readonly name: string
  readonly check: Check
  /** Waiter's code default; undefined when the parameter has none. */
  readonly default?: ParamValue
  /** May be changed on a running version through /apps/{id}/override without a new id. */
  readonly overridable: boolean
  /** x-waiter-<name> values are taken verbatim instead of being parsed as JSON. */
  readonly rawHeader: boolean
}

const isNumber = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v)
const isInt = (v: unknown): v is number => Number.isInteger(v)

/** Longest string any parameter takes (cmd has its own, Waiter's, lower ceiling in LIMITS). */
export const MAX_STRING_LENGTH = 4096
const nonBlank: Check = (n, v) => {
  if (!(typeof v === 'string' && v.trim() !== '')) return `${n} must be a non-empty string.`
  if (v.length > MAX_STRING_LENGTH) return `${n} must be at most ${MAX_STRING_LENGTH} characters.`
  // No process takes one in a command, a user name or an argument: refused here, not at launch.
  return v.includes('\0') ? `${n} must not contain a NUL character.` : undefined
}
/**
 * An absolute path on the instance: what follows the instance's own host and port. Anything else
 * (`@host:port/x`, `evil.example/x`) would send the request, and the instance's credentials, to
 * whatever host it names.
 */
const absolutePath: Check = (n, v) => {
  const blank = nonBlank(n, v)
  if (blank !== undefined) return blank
  return /^\/[\x21-\x7e]*$/.test(v as string) ? undefined : `${n} must be an absolute path: a / followed by printable characters, no spaces.`
}
const positive: Check = (n, v) => (isNumber(v) && v > 0 ? undefined : `${n} must be a positive number.`)
const intRange = (lo: number, hi: number): Check => (n, v) =>
  isInt(v) && v >= lo && v <= hi ? undefined : `${n} must be an integer in the range [${lo}, ${hi}].`
const intAtLeast = (lo: number): Check => (n, v) =>
  isInt(v) && v >= lo ? undefined : `${n} must be an integer greater than or equal to ${lo}.`
/** A double in an interval; `open` marks the ends that are excluded. */
const doubleRange = (lo: number, hi: number, loOpen: boolean, hiOpen: boolean): Check => (n, v) => {
  const ok = isNumber(v) && (loOpen ? v > lo : v >= lo) && (hiOpen ? v < hi : v <= hi)
  return ok ? undefined : `${n} must be a double in the range ${loOpen ? '(' : '['}${lo}, ${hi}${hiOpen ? ')' : ']'}.`
}
const oneOf = (...allowed: string[]): Check => (n, v) =>
  typeof v === 'string' && allowed.includes(v) ? undefined : `${n} must be one of: ${allowed.map((a) => `'${a}'`).join(', ')}.`
const pattern = (re: RegExp, rule: string): Check => (n, v) =>
  typeof v === 'string' && re.test(v) ? undefined : `${n} ${rule}.`

export const ENV_KEY = /^[A-Za-z][A-Za-z0-9_]*$/
const RESERVED_ENV = /^(HOME|LOGNAME|USER|MARATHON_.*|MESOS_.*|PORT\d*)$/

export function reservedEnvKey(key: string): boolean {
  return RESERVED_ENV.test(key) || (key.startsWith('WAITER_') && !key.startsWith('WAITER_CONFIG_'))
}

const envCheck: Check = (n, v) => {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return `${n} must be a map of environment variable names to string values.`
  const entries = Object.entries(v)
  if (entries.length >= 100) return `${n} must have less than 100 entries.`
  const invalid = entries.filter(([k]) => !ENV_KEY.test(k) || k.length > 512).map(([k]) => k)
  if (invalid.length > 0) return `The following environment variable keys are invalid: ${invalid.join(', ')}.`
  const reserved = entries.filter(([k]) => reservedEnvKey(k)).map(([k]) => k)
  if (reserved.length > 0) return `The following environment variable keys are reserved: ${reserved.join(', ')}.`
  const badValues = entries.filter(([, val]) => typeof val !== 'string' || val.length < 1 || val.length > 512).map(([k]) => k)
  if (badValues.length > 0) return `Environment variable values must be strings of 1 to 512 characters: ${badValues.join(', ')}.`
  const withNul = entries.filter(([, val]) => (val as string).includes('\0')).map(([k]) => k)
  if (withNul.length > 0) return `Environment variable values must not contain a NUL character: ${withNul.join(', ')}.`
  return undefined
}

const metadataCheck: Check = (n, v) => {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return `${n} must be a map of string keys to string values.`
  const entries = Object.entries(v)
  if (entries.length >= 100) return `${n} must have less than 100 entries.`
  const invalid = entries.filter(([k]) => !/^[a-z][a-z0-9-]*$/.test(k)).map(([k]) => k)
  if (invalid.length > 0) return `The following metadata keys are invalid: ${invalid.join(', ')}.`
  const badValues = entries.filter(([, val]) => typeof val !== 'string' || val.length < 1 || val.length > 999).map(([k]) => k)
  if (badValues.length > 0) return `Metadata values must be strings of 1 to 999 characters: ${badValues.join(', ')}.`
  return undefined
}

const allowedParamsCheck: Check = (n, v) => {
  if (!Array.isArray(v) || !v.every((k) => typeof k === 'string')) return `${n} must be a list of environment variable names.`
  const invalid = v.filter((k: string) => !ENV_KEY.test(k) || reservedEnvKey(k))
  return invalid.length > 0 ? `${n} contains invalid or reserved environment variable names: ${invalid.join(', ')}.` : undefined
}

const PROTOS = ['http', 'https', 'h2c', 'h2'] as const
const protoOrNull: Check = (n, v) => (v === null ? undefined : oneOf(...PROTOS)(n, v))

interface Row {
  check: Check
  default?: ParamValue
  overridable?: boolean
  rawHeader?: boolean
}

const ROWS: Readonly<Record<string, Row>> = {
  cmd: { check: nonBlank, rawHeader: true },
  // Waiter's own message (service_description.clj validate-schema).
  'cmd-type': { check: (n, v) => (v === 'shell' || v === 'docker' ? undefined : typeof v === 'string' && v.trim() !== '' ? `Command type ${v} is not supported` : `${n} must be a non-empty string.`), rawHeader: true },
  cpus: { check: positive },
  mem: { check: positive },
  version: { check: nonBlank, rawHeader: true },
  'run-as-user': { check: nonBlank, rawHeader: true },
  'permitted-user': { check: nonBlank, default: '*', rawHeader: true },
  name: { check: nonBlank, rawHeader: true },
  'allowed-params': { check: allowedParamsCheck, default: [], rawHeader: true },
  authentication: { check: oneOf('disabled', 'standard'), default: 'standard', overridable: true, rawHeader: true },
  'backend-proto': { check: oneOf(...PROTOS), default: 'http', rawHeader: true },
  'concurrency-level': { check: intRange(1, 10000), default: 1, overridable: true },
  'distribution-scheme': { check: oneOf('balanced', 'simple'), default: 'balanced', overridable: true, rawHeader: true },
  env: { check: envCheck, default: {} },
  'expired-instance-restart-rate': { check: doubleRange(0, 1, true, false), default: 0.1, overridable: true },
  'grace-period-secs': { check: intRange(0, 3600), default: 30, overridable: true },
  'health-check-authentication': { check: oneOf('disabled', 'standard'), default: 'disabled', rawHeader: true },
  'health-check-interval-secs': { check: intRange(5, 600), default: 10, overridable: true },
  'health-check-max-consecutive-failures': { check: intRange(1, 36), default: 5, overridable: true },
  'health-check-port-index': { check: intRange(0, 9), default: 0 },
  'health-check-proto': { check: protoOrNull, rawHeader: true },
  'health-check-url': { check: absolutePath, default: '/status', rawHeader: true },
  'idle-timeout-mins': { check: intRange(0, 43200), default: 30, overridable: true },
  // maitre's own: how idleness ends a version (no default here: the router's scaler.keepAlive).
  // Not overridable: overrides go with a collection, and the policy must outlive those.
  'keep-alive': { check: oneOf('fixed', 'adaptive'), rawHeader: true },
  image: { check: nonBlank, rawHeader: true },
  'instance-expiry-mins': { check: intAtLeast(0), default: 7200, overridable: true },
  'interstitial-secs': { check: intRange(0, 3600), default: 0, overridable: true },
  'jitter-threshold': { check: doubleRange(0, 1, false, true), default: 0.5, overridable: true },
  'liveness-check-authentication': { check: oneOf('disabled', 'standard'), rawHeader: true },
  'liveness-check-interval-secs': { check: intRange(5, 600), overridable: true },
  'liveness-check-max-consecutive-failures': { check: intRange(1, 36), overridable: true },
  'liveness-check-port-index': { check: intRange(0, 9) },
  'liveness-check-proto': { check: protoOrNull, rawHeader: true },
  'liveness-check-url': { check: absolutePath, rawHeader: true },
  'load-balancing': { check: oneOf('oldest', 'youngest', 'random'), default: 'oldest', overridable: true, rawHeader: true },
  'max-instances': { check: intRange(1, 2000), default: 500, overridable: true },
  // Waiter sets no ceiling; maitre does, so one token cannot ask for unbounded memory.
  'max-queue-length': { check: intRange(1, 100000), default: 1000, overridable: true },
  metadata: { check: metadataCheck, default: {} },
  'metric-group': {
    check: pattern(/^(?=.{2,32}$)[a-z][a-z0-9]*(?:[_-][a-z0-9]+)*$/, 'must be 2 to 32 characters of lower-case letters, digits, - and _, starting with a letter'),
    rawHeader: true,
  },
  'min-instances': { check: intRange(1, 2000), default: 1, overridable: true },
  namespace: { check: nonBlank, rawHeader: true },
  ports: { check: intRange(1, 10), default: 1 },
  'restart-backoff-factor': { check: (n, v) => (isNumber(v) && v >= 1 ? undefined : `${n} must be a number greater than or equal to 1.`), default: 2, overridable: true },
  'routing-mode': { check: oneOf('default'), default: 'default', rawHeader: true },
  'scale-down-factor': { check: doubleRange(0, 1, true, true), default: 0.001, overridable: true },
  'scale-factor': { check: doubleRange(0, 2, true, false), default: 1, overridable: true },
  'scale-up-factor': { check: doubleRange(0, 1, true, true), default: 0.1, overridable: true },
  'termination-grace-period-secs': { check: intRange(0, 300), default: 0, overridable: true },
}

export const PARAMETERS: ReadonlyMap<string, ParamSpec> = new Map(
  Object.entries(ROWS).map(([name, row]) => [
    name,
    {
      name,
      check: row.check,
      ...(row.default === undefined ? {} : { default: row.default }),
      overridable: row.overridable ?? false,
      rawHeader: row.rawHeader ?? false,
    },
  ]),
)

export const REQUIRED_PARAMETERS: readonly string[] = ['cmd', 'cpus', 'mem', 'version']

/** Hard ceilings (Waiter's service-description-constraints). */
export const LIMITS: Readonly<Record<string, number>> = { cmd: 1200, cpus: 32, mem: 131072 }

/** The liveness check falls back to the matching health-check parameter. */
export const LIVENESS_FALLBACK: Readonly<Record<string, string>> = {
  'liveness-check-authentication': 'health-check-authentication',
  'liveness-check-interval-secs': 'health-check-interval-secs',
  'liveness-check-max-consecutive-failures': 'health-check-max-consecutive-failures',
  'liveness-check-port-index': 'health-check-port-index',
  'liveness-check-proto': 'health-check-proto',
  'liveness-check-url': 'health-check-url',
}

export function defaultParameters(): Record<string, ParamValue> {
  const out: Record<string, ParamValue> = {}
  for (const spec of PARAMETERS.values()) if (spec.default !== undefined) out[spec.name] = spec.default
  return out
}

/** Token-only user metadata: validated with the token, never part of a service id. */
interface MetadataRow {
  check: Check
  default?: ParamValue
}

/**
 * The shape of cors-rules (a list of up to 100 objects with pattern strings and methods). Their
 * patterns are compiled where a token is written (versions/tokens.ts): this table stays pure.
 */
const corsRulesCheck: Check = (n, v) => corsRulesShapeProblem(n, v)

const TOKEN_METADATA_ROWS: Readonly<Record<string, MetadataRow>> = {
  owner: { check: nonBlank },
  editor: { check: nonBlank },
  'cors-rules': { check: corsRulesCheck },
  'fallback-period-secs': { check: intRange(0, 86400), default: 300 },
  'https-redirect': { check: (n, v) => (typeof v === 'boolean' ? undefined : `${n} must be a boolean.`), default: false },
  maintenance: {
    check: (n, v) => {
      const message = typeof v === 'object' && v !== null ? (v as Record<string, unknown>)['message'] : undefined
      return typeof message === 'string' && message.length >= 1 && message.length <= 512
        ? undefined
        : `${n} must be an object with a message of 1 to 512 characters.`
    },
  },
  'service-mapping': { check: oneOf('default', 'exclusive', 'legacy'), default: 'legacy' },
  'stale-timeout-mins': { check: intRange(0, 240), default: 15 },
  'queue-timeout-ms': { check: intRange(0, 3600000), default: 300000 },
  'socket-timeout-ms': { check: intRange(0, 3600000), default: 900000 },
  'streaming-timeout-ms': { check: intRange(0, 3600000), default: 20000 },
}

export const TOKEN_METADATA: ReadonlyMap<string, { name: string; check: Check; default?: ParamValue }> = new Map(
  Object.entries(TOKEN_METADATA_ROWS).map(([name, row]) => [name, { name, ...row }]),
)

/** Written by maitre; a client that sends them gets "Cannot modify X token metadata". */
export const SYSTEM_METADATA: readonly string[] = ['last-update-time', 'last-update-user', 'root', 'previous', 'cluster', 'deleted']

/** Waiter's defaults for the token settings that GC and fallback use, from the table above. */
export const TOKEN_DEFAULTS = {
  fallbackPeriodSecs: TOKEN_METADATA.get('fallback-period-secs')?.default as number,
  staleTimeoutMins: TOKEN_METADATA.get('stale-timeout-mins')?.default as number,
}
