/**
 * Between maitre's service versions and Mesos tasks: the TaskInfo a LaunchSpec becomes on an
 * agent, and what a task's status updates say about its instance (healthy, failed and why).
 *
 * A task's id is its instance id, `<service-id>.<suffix>` as Waiter names instances, so a status
 * update (which carries nothing but the id) tells which service it belongs to. Its labels carry
 * the service id and the LaunchSpec without its credentials and environment (the master shows
 * labels to all who read its state), so a router that subscribes again (a restart, a new leader)
 * finds in the master's state what it needs to adopt the task; what it runs with comes from the
 * version's record.
 */
import { randomBytes } from 'node:crypto'
import type { LaunchSpec } from '../../launch-spec.ts'
import type { InstanceFlag } from '../backend.ts'
import type { EnvironmentVariable, TaskInfo, TaskStatus } from './protocol.ts'
import type { PlacedTask } from './placement.ts'

export const LABELS = {
  serviceId: 'maitre/service-id',
  cluster: 'maitre/cluster',
  launchSpec: 'maitre/launch-spec',
} as const

export function newTaskId(serviceId: string): string {
  return `${serviceId}.${randomBytes(5).toString('hex')}`
}

/** The service a task id belongs to: everything before its last dot. */
export function serviceIdOfTask(taskId: string): string | undefined {
  const dot = taskId.lastIndexOf('.')
  return dot <= 0 ? undefined : taskId.slice(0, dot)
}

/** The longest wait between two health checks (see taskInfoOf). */
const MAX_CHECK_INTERVAL_MS = 1000

/** A health check's grace of 0 means "forever" in a LaunchSpec; Mesos has no forever, so a year. */
const FOREVER_SECONDS = 365 * 24 * 3600

export function taskInfoOf(spec: LaunchSpec, placed: PlacedTask, taskId: string, cluster: string): TaskInfo {
  const ports = placed.ports
  // Mesos sets no port variables: Marathon's convention, which Waiter's services expect.
  const variables: EnvironmentVariable[] = [
    ...Object.entries(spec.env).map(([name, value]) => ({ name, value })),
    ...ports.map((port, i) => ({ name: `PORT${i}`, value: String(port) })),
    { name: 'PORT', value: String(ports[0]) },
    { name: 'PORTS', value: ports.join(',') },
    { name: 'HOST', value: placed.hostname },
  ]
  const check = spec.healthCheck
  const checkPort = ports[check.portIndex] ?? ports[0] ?? 0
  // Mesos has one check interval for a task's whole life, and a cold start waits on the first
  // check that passes: checks run at least every second, and the failures that kill the task
  // are scaled to take as long as the descriptor's interval × failures would.
  const intervalMs = Math.min(check.intervalMs, MAX_CHECK_INTERVAL_MS)
  const failures = Math.ceil((check.maxConsecutiveFailures * check.intervalMs) / intervalMs)
  return {
    name: taskId,
    task_id: { value: taskId },
    agent_id: { value: placed.agentId },
    resources: placed.resources,
    command: { shell: true, value: spec.command, user: spec.runAsUser, environment: { variables } },
    health_check: {
      type: 'HTTP',
      http: { scheme: check.proto === 'https' ? 'https' : 'http', port: checkPort, path: check.url },
      delay_seconds: 0,
      interval_seconds: intervalMs / 1000,
      timeout_seconds: intervalMs / 1000,
      consecutive_failures: failures,
      grace_period_seconds: spec.gracePeriodMs === 0 ? FOREVER_SECONDS : spec.gracePeriodMs / 1000,
    },
    kill_policy: { grace_period: { nanoseconds: spec.terminationGraceMs * 1_000_000 } },
    labels: {
      labels: [
        { key: LABELS.serviceId, value: spec.serviceId },
        { key: LABELS.cluster, value: cluster },
        // What it runs, for whoever reads the master's state (the master shows labels to all its
        // readers): never its credentials or its environment, which may hold the service's own secrets.
        { key: LABELS.launchSpec, value: JSON.stringify(withoutSecrets(spec)) },
      ],
    },
  }
}

/** A launch spec without the instance's credentials and environment. */
function withoutSecrets(spec: LaunchSpec): Omit<LaunchSpec, 'authorization' | 'env'> {
  const { authorization: _authorization, env: _env, ...shown } = spec
  return shown
}

/** A failed command's exit status, as the command executor words it ("Command exited with status 127"). */
export function exitCodeOf(status: TaskStatus): number | undefined {
  const match = /exited with status (\d+)/.exec(status.message ?? '')
  return match === null ? undefined : Number(match[1])
}

/** What the end of a task maitre did not kill says, in the flags Waiter's deployment-error rules read. */
export function endFlags(status: TaskStatus, everHealthy: boolean): Set<InstanceFlag> {
  const flags = new Set<InstanceFlag>()
  if (status.reason === 'REASON_CONTAINER_LIMITATION_MEMORY') flags.add('memory-limit-exceeded')
  if (!everHealthy) flags.add('never-passed-health-checks')
  // A task that got as far as running answered its health checks' connections; one the
  // checks killed had been reached and answered, just not well.
  if (killedByHealthChecks(status)) {
    flags.add('has-connected')
    flags.add('has-responded')
  }
  return flags
}

/**
 * A task killed that maitre did not kill: the command executor's health checker did (its
 * TASK_KILLED carries no reason of its own), or an operator, which reads the same here.
 */
function killedByHealthChecks(status: TaskStatus): boolean {
  return status.state === 'TASK_KILLED' || status.reason === 'REASON_TASK_HEALTH_CHECK_STATUS_UPDATED'
}

/** Ends that say nothing of the service itself: its agent went, or the offer it was launched on did. */
export function lostWithItsAgent(status: TaskStatus): boolean {
  return ['TASK_LOST', 'TASK_DROPPED', 'TASK_GONE', 'TASK_GONE_BY_OPERATOR', 'TASK_UNREACHABLE'].includes(status.state)
}

/** The message an ended instance shows in /apps/{id}. */
export function endMessage(status: TaskStatus): string {
  const reason = status.reason === undefined ? '' : ` (${status.reason})`
  return `${status.state}${reason}${status.message === undefined || status.message === '' ? '' : `: ${status.message}`}`
}

/** A label's value from the master's state, whichever of its two shapes (v0 list or v1 {labels}) it takes. */
export function labelOf(labels: unknown, key: string): string | undefined {
  const list = Array.isArray(labels) ? labels : (labels as { labels?: unknown } | undefined)?.labels
  if (!Array.isArray(list)) return undefined
  for (const label of list as { key?: unknown; value?: unknown }[]) {
    if (label.key === key && typeof label.value === 'string') return label.value
  }
  return undefined
}

/** Ports as the master's state flattens them: "[31005-31006, 31010-31010]". */
export function portsOfState(ranges: unknown): number[] {
  if (typeof ranges !== 'string') return []
  const ports: number[] = []
  for (const match of ranges.matchAll(/(\d+)-(\d+)/g)) {
    const begin = Number(match[1])
    const end = Number(match[2])
    for (let p = begin; p <= end && ports.length < 100; p += 1) ports.push(p)
  }
  return ports
}
