/**
 * Service descriptors: validation with Waiter's messages, defaults, and the LaunchSpec that a
 * backend runs. A descriptor here is the *core* description (what the owner gave explicitly);
 * `effectiveParameters` adds the defaults.
 */
import { MaitreError, MISCONFIGURED, misconfigured, type Issue } from '../errors.ts'
import {
  LIMITS,
  LIVENESS_FALLBACK,
  PARAMETERS,
  REQUIRED_PARAMETERS,
  defaultParameters,
  type Params,
} from './parameters.ts'

export { MISCONFIGURED, misconfigured, type Issue }

export interface ValidateOptions {
  /** Tokens may hold a partial description; a service to run needs every required parameter. */
  readonly requireComplete: boolean
}

/** Every rule the parameters break, in a stable order (per field, then cross-field rules). */
export function validateParameters(params: Params, options: ValidateOptions): Issue[] {
  const issues: Issue[] = []
  for (const [name, value] of Object.entries(params)) {
    const spec = PARAMETERS.get(name)
    if (spec === undefined) continue
    const message = spec.check(name, value)
    if (message !== undefined) issues.push({ field: name, message })
  }
  if (options.requireComplete) {
    for (const name of REQUIRED_PARAMETERS) {
      if (params[name] === undefined) issues.push({ field: name, message: `${name} must be provided.` })
    }
  }
  if (issues.length > 0) return issues // cross-field rules assume well-typed values

  const over = Object.entries(LIMITS).filter(([name, max]) => {
    const value = params[name]
    return (typeof value === 'number' && value > max) || (typeof value === 'string' && value.length > max)
  })
  if (over.length > 0) {
    const parts = over.map(([name, max]) => {
      const value = params[name]
      return typeof value === 'string' ? `${name} must be at most ${max} characters` : `${name} is ${String(value)} but the max allowed is ${max}`
    })
    for (const [name] of over) {
      issues.push({ field: name, message: `The following fields exceed their allowed limits: ${parts.join(', ')}` })
    }
  }

  const effective = { ...defaultParameters(), ...params } as Record<string, unknown>
  const min = effective['min-instances'] as number
  const max = effective['max-instances'] as number
  if (min > max) {
    issues.push({ field: 'min-instances', message: `min-instances (${min}) must be less than or equal to max-instances (${max})` })
  }
  const ports = effective['ports'] as number
  for (const kind of ['health', 'liveness'] as const) {
    const indexKey = `${kind}-check-port-index`
    const protoKey = `${kind}-check-proto`
    const index = (effective[indexKey] ?? effective['health-check-port-index']) as number
    // A token may name the port index while another token (or a header) names the ports, as
    // Waiter allows: a part is checked only when it gives both; the whole description always is.
    const portsKnown = options.requireComplete || params['ports'] !== undefined
    if (params[indexKey] !== undefined && portsKnown && index >= ports) {
      const label = kind === 'health' ? 'health check' : 'liveness check'
      issues.push({ field: indexKey, message: `The ${label} port index (${index}) must be smaller than ports (${ports})` })
    }
    const proto = params[protoKey]
    if (typeof proto === 'string' && index === 0 && proto !== effective['backend-proto']) {
      const label = kind === 'health' ? 'health check' : 'liveness check'
      issues.push({
        field: protoKey,
        message: `The backend-proto (${String(effective['backend-proto'])}) and ${label} proto (${proto}) must match when ${indexKey} is zero`,
      })
    }
  }
  if (effective['health-check-authentication'] === 'standard' && effective['authentication'] === 'disabled') {
    issues.push({
      field: 'health-check-authentication',
      message: 'health-check-authentication can only be standard when authentication is standard',
    })
  }
  const namespace = params['namespace']
  if (namespace !== undefined && namespace !== '*' && namespace !== params['run-as-user']) {
    issues.push({ field: 'namespace', message: 'Service namespace must either be omitted or match the run-as-user.' })
  }
  return issues
}

/** Throws a 400 naming every offending field unless `params` is a complete, valid description. */
export function assertRunnable(params: Params): void {
  const issues = validateParameters(params, { requireComplete: true })
  if (issues.length > 0) throw misconfigured(issues)
}

/** Only the service-description parameters, in sorted key order (what the service id covers). */
export function coreParameters(params: Params): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  for (const key of Object.keys(params).sort()) {
    if (PARAMETERS.has(key) && params[key] !== undefined) out[key] = params[key]
  }
  return out
}

/** The description as it runs: explicit parameters over Waiter's defaults. */
export function effectiveParameters(core: Params): Record<string, unknown> {
  const out: Record<string, unknown> = { ...defaultParameters(), ...core }
  for (const [liveness, health] of Object.entries(LIVENESS_FALLBACK)) {
    if (out[liveness] === undefined && out[health] !== undefined) out[liveness] = out[health]
  }
  if (out['health-check-proto'] === undefined) out['health-check-proto'] = out['backend-proto']
  if (out['liveness-check-proto'] === undefined) out['liveness-check-proto'] = out['health-check-proto']
  return out
}
