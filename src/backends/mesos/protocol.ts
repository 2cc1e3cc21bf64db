/**
 * The Mesos v1 scheduler HTTP API's JSON, as far as maitre speaks it (../shared/reference/
 * mesos-scheduler-api.md): snake_case proto field names, enums as strings, ids as `{value}`
 * objects, `bytes` fields (a status's uuid) base64. Types only: the framework (src/backends/mesos)
 * and the in-repo master simulator (test/fixtures/mesos-sim) share them.
 */

export interface Id {
  readonly value: string
}

export interface Range {
  readonly begin: number
  readonly end: number
}

/** A resource as offered; a task's resources copy the offered object and change only the amount. */
export interface Resource {
  readonly name: string
  readonly type: 'SCALAR' | 'RANGES' | 'SET'
  readonly scalar?: { readonly value: number }
  readonly ranges?: { readonly range: readonly Range[] }
  readonly role?: string
  readonly allocation_info?: { readonly role: string }
  readonly reservations?: readonly unknown[]
}

export interface Attribute {
  readonly name: string
  readonly type: 'SCALAR' | 'RANGES' | 'SET' | 'TEXT'
  readonly text?: { readonly value: string }
  readonly scalar?: { readonly value: number }
}

export interface Offer {
  readonly id: Id
  readonly framework_id: Id
  readonly agent_id: Id
  readonly hostname: string
  readonly allocation_info?: { readonly role: string }
  readonly attributes?: readonly Attribute[]
  readonly resources: readonly Resource[]
}

export interface EnvironmentVariable {
  readonly name: string
  readonly type?: 'VALUE' | 'SECRET'
  readonly value: string
}

export interface CommandInfo {
  readonly shell?: boolean
  readonly value: string
  readonly arguments?: readonly string[]
  readonly user?: string
  readonly environment?: { readonly variables: readonly EnvironmentVariable[] }
}

export interface HealthCheck {
  readonly type: 'HTTP' | 'TCP' | 'COMMAND'
  readonly http?: { readonly scheme?: string; readonly port: number; readonly path?: string }
  readonly delay_seconds?: number
  readonly interval_seconds?: number
  readonly timeout_seconds?: number
  readonly consecutive_failures?: number
  readonly grace_period_seconds?: number
}

export interface KillPolicy {
  readonly grace_period?: { readonly nanoseconds: number }
}

export interface Label {
  readonly key: string
  readonly value?: string
}

export interface TaskInfo {
  readonly name: string
  readonly task_id: Id
  readonly agent_id: Id
  readonly resources: readonly Resource[]
  readonly command: CommandInfo
  readonly health_check?: HealthCheck
  readonly kill_policy?: KillPolicy
  readonly labels?: { readonly labels: readonly Label[] }
}

export type TaskState =
  | 'TASK_STAGING'
  | 'TASK_STARTING'
  | 'TASK_RUNNING'
  | 'TASK_KILLING'
  | 'TASK_FINISHED'
  | 'TASK_FAILED'
  | 'TASK_KILLED'
  | 'TASK_ERROR'
  | 'TASK_LOST'
  | 'TASK_DROPPED'
  | 'TASK_UNREACHABLE'
  | 'TASK_GONE'
  | 'TASK_GONE_BY_OPERATOR'
  | 'TASK_UNKNOWN'

export const TERMINAL_STATES: ReadonlySet<TaskState> = new Set(['TASK_FINISHED', 'TASK_FAILED', 'TASK_KILLED', 'TASK_ERROR', 'TASK_LOST', 'TASK_DROPPED', 'TASK_GONE', 'TASK_GONE_BY_OPERATOR'])

export interface TaskStatus {
  readonly task_id: Id
  readonly state: TaskState
  readonly source?: 'SOURCE_MASTER' | 'SOURCE_AGENT' | 'SOURCE_EXECUTOR'
  /** e.g. REASON_COMMAND_EXECUTOR_FAILED, REASON_CONTAINER_LIMITATION_MEMORY, REASON_INVALID_OFFERS, REASON_RECONCILIATION, REASON_AGENT_REMOVED. */
  readonly reason?: string
  /** The command executor reports a failed command's exit as "Command exited with status N". */
  readonly message?: string
  readonly agent_id?: Id
  /** Seconds since the epoch. */
  readonly timestamp?: number
  /** Base64; present on updates that must be acknowledged (echoed byte-exact). */
  readonly uuid?: string
  readonly healthy?: boolean
  readonly container_status?: { readonly executor_pid?: number }
}

export type EventType = 'SUBSCRIBED' | 'OFFERS' | 'INVERSE_OFFERS' | 'RESCIND' | 'RESCIND_INVERSE_OFFER' | 'UPDATE' | 'UPDATE_OPERATION_STATUS' | 'MESSAGE' | 'FAILURE' | 'ERROR' | 'HEARTBEAT'

export interface Event {
  readonly type: EventType
  readonly subscribed?: { readonly framework_id: Id; readonly heartbeat_interval_seconds?: number; readonly master_info?: Record<string, unknown> }
  readonly offers?: { readonly offers: readonly Offer[] }
  readonly rescind?: { readonly offer_id: Id }
  readonly update?: { readonly status: TaskStatus }
  readonly failure?: { readonly agent_id?: Id; readonly executor_id?: Id; readonly status?: number }
  readonly error?: { readonly message: string }
}

export interface FrameworkInfo {
  readonly user: string
  readonly name: string
  readonly id?: Id
  readonly roles?: readonly string[]
  readonly role?: string
  readonly capabilities?: readonly { readonly type: string }[]
  readonly failover_timeout?: number
  readonly checkpoint?: boolean
  readonly hostname?: string
  readonly principal?: string
}

export interface Filters {
  readonly refuse_seconds?: number
}

export type CallType = 'SUBSCRIBE' | 'TEARDOWN' | 'ACCEPT' | 'DECLINE' | 'REVIVE' | 'SUPPRESS' | 'KILL' | 'SHUTDOWN' | 'ACKNOWLEDGE' | 'RECONCILE' | 'MESSAGE' | 'REQUEST'

export interface Call {
  readonly type: CallType
  readonly framework_id?: Id
  readonly subscribe?: { readonly framework_info: FrameworkInfo }
  readonly accept?: { readonly offer_ids: readonly Id[]; readonly operations: readonly { readonly type: 'LAUNCH'; readonly launch: { readonly task_infos: readonly TaskInfo[] } }[]; readonly filters?: Filters }
  readonly decline?: { readonly offer_ids: readonly Id[]; readonly filters?: Filters }
  readonly revive?: { readonly roles?: readonly string[] }
  readonly suppress?: { readonly roles?: readonly string[] }
  readonly kill?: { readonly task_id: Id; readonly agent_id?: Id; readonly kill_policy?: KillPolicy }
  readonly acknowledge?: { readonly agent_id: Id; readonly task_id: Id; readonly uuid: string }
  readonly reconcile?: { readonly tasks: readonly { readonly task_id: Id; readonly agent_id?: Id }[] }
}
