/**
 * A backend's state and launch specs as they travel between routers (leader-backend.ts): plain
 * JSON both ways, read back with every field checked, so a malformed message is refused with the
 * field it got wrong rather than becoming a half-built instance.
 */
import type { EndedInstance, Instance, InstanceFlag, ServiceState } from '../backends/backend.ts'
import type { HealthCheckSpec, LaunchSpec, Proto } from '../launch-spec.ts'

export class WireError extends Error {
  readonly field: string
  constructor(field: string, rule: string) {
    super(`${field} ${rule}`)
    this.field = field
  }
}

const FLAGS = new Set<InstanceFlag>(['expired', 'has-connected', 'has-responded', 'timeout-exception', 'never-passed-health-checks', 'memory-limit-exceeded', 'health-check-401'])
const PROTOS = new Set<Proto>(['http', 'https', 'h2c', 'h2'])
/** Bounds on what one message may carry: far beyond any real service, short of a memory problem. */
const MAX_ITEMS = 10_000
const MAX_STRING = 64 * 1024

export function toWire(state: ServiceState): unknown {
  const ended = (e: EndedInstance): unknown => ({ ...e, flags: [...e.flags], exitCode: e.exitCode ?? null, logDirectory: e.logDirectory ?? null })
  return {
    id: state.id,
    requested: state.requested,
    instances: state.instances.map((i) => ({ ...i, flags: [...i.flags], logDirectory: i.logDirectory ?? null })),
    failed: state.failed.map(ended),
    killed: state.killed.map(ended),
    deploymentError: state.deploymentError ?? null,
  }
}

function object(value: unknown, field: string): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new WireError(field, 'must be an object')
  return value as Record<string, unknown>
}

function string(o: Record<string, unknown>, key: string, field: string): string {
  const value = o[key]
  if (typeof value !== 'string' || value.length > MAX_STRING) throw new WireError(`${field}.${key}`, `must be a string of at most ${MAX_STRING} characters`)
  return value
}

function optionalString(o: Record<string, unknown>, key: string, field: string): string | undefined {
  return o[key] === null || o[key] === undefined ? undefined : string(o, key, field)
}

function number(o: Record<string, unknown>, key: string, field: string, min = 0): number {
  const value = o[key]
  if (typeof value !== 'number' || !Number.isFinite(value) || value < min) throw new WireError(`${field}.${key}`, `must be a number of at least ${min}`)
  return value
}

function integer(o: Record<string, unknown>, key: string, field: string, min = 0): number {
  const value = number(o, key, field, min)
  if (!Number.isSafeInteger(value)) throw new WireError(`${field}.${key}`, 'must be a whole number')
  return value
}

function boolean(o: Record<string, unknown>, key: string, field: string): boolean {
  if (typeof o[key] !== 'boolean') throw new WireError(`${field}.${key}`, 'must be true or false')
  return o[key]
}

function list(o: Record<string, unknown>, key: string, field: string): unknown[] {
  const value = o[key]
  if (!Array.isArray(value) || value.length > MAX_ITEMS) throw new WireError(`${field}.${key}`, `must be a list of at most ${MAX_ITEMS}`)
  return value
}

function proto(o: Record<string, unknown>, key: string, field: string): Proto {
  const value = o[key]
  if (!PROTOS.has(value as Proto)) throw new WireError(`${field}.${key}`, 'must be http, https, h2c or h2')
  return value as Proto
}

/** Flags this router does not know (a newer router's, in a rolling upgrade) are left out, not refused. */
function flags(o: Record<string, unknown>, field: string): ReadonlySet<InstanceFlag> {
  return new Set(list(o, 'flags', field).filter((flag): flag is InstanceFlag => FLAGS.has(flag as InstanceFlag)))
}

function instanceOf(value: unknown, field: string): Instance {
  const o = object(value, field)
  return {
    id: string(o, 'id', field),
    serviceId: string(o, 'serviceId', field),
    host: string(o, 'host', field),
    port: integer(o, 'port', field, 1),
    extraPorts: list(o, 'extraPorts', field).map((p, i) => integer({ p }, 'p', `${field}.extraPorts[${i}]`, 1)),
    proto: proto(o, 'proto', field),
    startedAt: number(o, 'startedAt', field),
    healthy: boolean(o, 'healthy', field),
    logDirectory: optionalString(o, 'logDirectory', field),
    flags: flags(o, field),
  }
}

function endedOf(value: unknown, field: string): EndedInstance {
  const o = object(value, field)
  return {
    id: string(o, 'id', field),
    serviceId: string(o, 'serviceId', field),
    host: string(o, 'host', field),
    port: integer(o, 'port', field),
    startedAt: number(o, 'startedAt', field),
    endedAt: number(o, 'endedAt', field),
    exitCode: o['exitCode'] === null ? undefined : integer(o, 'exitCode', field, -(2 ** 31)),
    flags: flags(o, field),
    message: string(o, 'message', field),
    logDirectory: optionalString(o, 'logDirectory', field),
  }
}

export function serviceStateOf(value: unknown, field = 'service'): ServiceState {
  const o = object(value, field)
  return {
    id: string(o, 'id', field),
    requested: integer(o, 'requested', field),
    instances: list(o, 'instances', field).map((v, i) => instanceOf(v, `${field}.instances[${i}]`)),
    failed: list(o, 'failed', field).map((v, i) => endedOf(v, `${field}.failed[${i}]`)),
    killed: list(o, 'killed', field).map((v, i) => endedOf(v, `${field}.killed[${i}]`)),
    deploymentError: optionalString(o, 'deploymentError', field),
  }
}

function healthCheckOf(value: unknown, field: string): HealthCheckSpec {
  const o = object(value, field)
  return {
    url: string(o, 'url', field),
    portIndex: integer(o, 'portIndex', field),
    proto: proto(o, 'proto', field),
    intervalMs: number(o, 'intervalMs', field),
    maxConsecutiveFailures: integer(o, 'maxConsecutiveFailures', field),
    authenticated: boolean(o, 'authenticated', field),
  }
}

/** A LaunchSpec sent by another router, every field checked (a spec is plain JSON: toWire is JSON.stringify). */
export function launchSpecOf(value: unknown, field = 'spec'): LaunchSpec {
  const o = object(value, field)
  const env = object(o['env'], `${field}.env`)
  if (Object.keys(env).length > MAX_ITEMS) throw new WireError(`${field}.env`, `must have at most ${MAX_ITEMS} entries`)
  for (const key of Object.keys(env)) string(env, key, `${field}.env`)
  const cmdType = o['cmdType']
  if (cmdType !== 'shell' && cmdType !== 'docker') throw new WireError(`${field}.cmdType`, 'must be shell or docker')
  return {
    serviceId: string(o, 'serviceId', field),
    command: string(o, 'command', field),
    cmdType,
    image: optionalString(o, 'image', field),
    env: env as Record<string, string>,
    ports: integer(o, 'ports', field, 1),
    cpus: number(o, 'cpus', field),
    memMb: number(o, 'memMb', field),
    backendProto: proto(o, 'backendProto', field),
    healthCheck: healthCheckOf(o['healthCheck'], `${field}.healthCheck`),
    livenessCheck: healthCheckOf(o['livenessCheck'], `${field}.livenessCheck`),
    gracePeriodMs: number(o, 'gracePeriodMs', field),
    terminationGraceMs: number(o, 'terminationGraceMs', field),
    restartBackoffFactor: number(o, 'restartBackoffFactor', field),
    minInstances: integer(o, 'minInstances', field),
    runAsUser: string(o, 'runAsUser', field),
    authorization: string(o, 'authorization', field),
  }
}
