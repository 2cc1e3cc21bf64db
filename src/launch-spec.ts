/**
 * What a backend runs for one service version. `versions/` derives it from a descriptor;
 * `backends/` runs it and knows nothing of descriptors or tokens.
 */

export type Proto = 'http' | 'https' | 'h2c' | 'h2'

export interface HealthCheckSpec {
  readonly url: string
  readonly portIndex: number
  readonly proto: Proto
  readonly intervalMs: number
  readonly maxConsecutiveFailures: number
  /** Send the instance's Basic credentials with the check. */
  readonly authenticated: boolean
}

export interface LaunchSpec {
  readonly serviceId: string
  readonly command: string
  readonly cmdType: 'shell' | 'docker'
  readonly image: string | undefined
  /** The service's environment including WAITER_*; the backend adds PORT0.., HOME and the sandbox. */
  readonly env: Readonly<Record<string, string>>
  readonly ports: number
  readonly cpus: number
  readonly memMb: number
  readonly backendProto: Proto
  readonly healthCheck: HealthCheckSpec
  readonly livenessCheck: HealthCheckSpec
  /** How long a new instance may take to pass its first health check; 0 = forever. */
  readonly gracePeriodMs: number
  /** Time between SIGTERM and SIGKILL when an instance is stopped. */
  readonly terminationGraceMs: number
  readonly restartBackoffFactor: number
  /** Instances to run as soon as the service exists. */
  readonly minInstances: number
  readonly runAsUser: string
  /** The `Authorization` header the instance expects from the router (Basic `waiter:<password>`). */
  readonly authorization: string
}
