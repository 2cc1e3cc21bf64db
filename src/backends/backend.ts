/**
 * The cluster-backend contract. A backend runs LaunchSpecs as instances and reports what runs;
 * every call is idempotent. Routing (slots, queues) lives in the tracker, not here.
 */
import type { LaunchSpec, Proto } from '../launch-spec.ts'

export type InstanceFlag =
  | 'expired'
  | 'has-connected'
  | 'has-responded'
  | 'timeout-exception'
  | 'never-passed-health-checks'
  | 'memory-limit-exceeded'
  | 'health-check-401'

export interface Instance {
  /** `<service-id>.<unique suffix>`, as Waiter names instances. */
  readonly id: string
  readonly serviceId: string
  readonly host: string
  readonly port: number
  readonly extraPorts: readonly number[]
  readonly proto: Proto
  readonly startedAt: number
  /** Passed its health check and not failing since. Only healthy instances receive requests. */
  readonly healthy: boolean
  readonly logDirectory: string | undefined
  readonly flags: ReadonlySet<InstanceFlag>
}

export interface EndedInstance {
  readonly id: string
  readonly serviceId: string
  readonly host: string
  readonly port: number
  readonly startedAt: number
  readonly endedAt: number
  /** The process's own exit code; undefined when maitre killed it. */
  readonly exitCode: number | undefined
  readonly flags: ReadonlySet<InstanceFlag>
  readonly message: string
  readonly logDirectory: string | undefined
}

export interface ServiceState {
  readonly id: string
  /** Instances asked for. */
  readonly requested: number
  /** Live instances, healthy or not yet. */
  readonly instances: readonly Instance[]
  /** Recent instances that failed (newest first, bounded). */
  readonly failed: readonly EndedInstance[]
  /** Recent instances that were killed on purpose (newest first, bounded). */
  readonly killed: readonly EndedInstance[]
  /** Waiter's deployment-error message when the service cannot start, e.g. "Invalid startup command". */
  readonly deploymentError: string | undefined
  /**
   * Kills asked for and not finished (on Kubernetes, the wait for the controller's replacement and
   * the lower count go on after the delete is answered): a scale-down waits for them before it kills again,
   * since kills of a version go one at a time. Absent: none.
   */
  readonly killsUnderWay?: number
}

export interface Backend {
  readonly kind: 'local' | 'kubernetes' | 'mesos'
  /** Creates the service with its minimum instances unless it exists already. */
  ensureService(spec: LaunchSpec): Promise<void>
  /** Asks for `instances` instances of an existing service; going down, the backend picks which stop. */
  scale(serviceId: string, instances: number): Promise<void>
  /**
   * Stops one instance (callers pick an idle one) and lowers the requested count by one.
   * `force`: at once (SIGKILL, a pod deleted with no grace) rather than after its grace period.
   */
  killInstance(serviceId: string, instanceId: string, options?: { readonly force?: boolean }): Promise<boolean>
  /** Stops every instance and forgets the service. */
  deleteService(serviceId: string): Promise<void>
  state(serviceId: string): ServiceState | undefined
  /**
   * The instance count asked for, or undefined when the backend does not know the version: what
   * `state(serviceId)?.requested` says, without building the state (every request asks it).
   */
  requested(serviceId: string): number | undefined
  services(): readonly ServiceState[]
  /**
   * Why the backend cannot serve yet, until its first view of the cluster is in (a Kubernetes
   * backend's first list of pods); undefined from then on, since what it knows keeps serving
   * through later outages. Absent: always ready.
   */
  notReadyBecause?(): string | undefined
  /** Called with a service id whenever that service's instances or errors change. */
  subscribe(listener: (serviceId: string) => void): () => void
  /**
   * Stops watching and managing. A backend that owns its instances (local) stops every one; a
   * cluster backend (Kubernetes) leaves them to the cluster, for the next router to adopt.
   */
  close(): Promise<void>
}
