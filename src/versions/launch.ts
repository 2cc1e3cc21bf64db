/** Descriptor → LaunchSpec: the environment and limits Waiter gives an instance (reference §7.1). */
import { createHash } from 'node:crypto'
import type { HealthCheckSpec, LaunchSpec, Proto } from '../launch-spec.ts'

export interface LaunchContext {
  readonly cluster: string
  /** The router secret instance passwords derive from. */
  readonly secret: string
}

export function instancePassword(serviceId: string, secret: string): string {
  return createHash('md5').update(serviceId + secret).digest('hex')
}

export function launchSpecOf(serviceId: string, effective: Readonly<Record<string, unknown>>, context: LaunchContext): LaunchSpec {
  const str = (key: string): string => effective[key] as string
  const num = (key: string): number => effective[key] as number
  const password = instancePassword(serviceId, context.secret)
  const env: Record<string, string> = {
    ...(effective['env'] as Record<string, string>),
    LOGNAME: str('run-as-user'),
    USER: str('run-as-user'),
    WAITER_CLUSTER: context.cluster,
    WAITER_CONCURRENCY_LEVEL: String(effective['concurrency-level']),
    WAITER_CPUS: String(effective['cpus']),
    WAITER_MEM_MB: String(effective['mem']),
    WAITER_PASSWORD: password,
    WAITER_SERVICE_ID: serviceId,
    WAITER_USERNAME: 'waiter',
  }
  if (effective['metric-group'] !== undefined) env['WAITER_METRIC_GROUP'] = str('metric-group')
  const check = (kind: 'health' | 'liveness'): HealthCheckSpec => ({
    url: str(`${kind}-check-url`),
    portIndex: num(`${kind}-check-port-index`),
    proto: str(`${kind}-check-proto`) as Proto,
    intervalMs: num(`${kind}-check-interval-secs`) * 1000,
    maxConsecutiveFailures: num(`${kind}-check-max-consecutive-failures`),
    authenticated: str(`${kind}-check-authentication`) === 'standard',
  })
  return {
    serviceId,
    command: str('cmd'),
    cmdType: (effective['cmd-type'] as 'shell' | 'docker' | undefined) ?? 'shell',
    image: effective['image'] as string | undefined,
    env,
    ports: num('ports'),
    cpus: num('cpus'),
    memMb: num('mem'),
    backendProto: str('backend-proto') as Proto,
    healthCheck: check('health'),
    livenessCheck: check('liveness'),
    gracePeriodMs: num('grace-period-secs') * 1000,
    terminationGraceMs: num('termination-grace-period-secs') * 1000,
    restartBackoffFactor: num('restart-backoff-factor'),
    minInstances: num('min-instances'),
    runAsUser: str('run-as-user'),
    authorization: `Basic ${Buffer.from(`waiter:${password}`).toString('base64')}`,
  }
}
