/**
 * What a pod means to maitre, as pure functions: the instance it is, the container runs that
 * failed, and the scheduler's own reason when nothing can start (reference §7.3 and §8).
 */
import type { Proto } from '../../launch-spec.ts'
import type { EndedInstance, Instance, InstanceFlag } from '../backend.ts'
import type { ContainerStatus, KubeEvent, Pod } from './objects.ts'
import { CONTAINER } from './replica-set.ts'

export function appStatus(pod: Pod): ContainerStatus | undefined {
  return pod.status?.containerStatuses?.find((c) => c.name === CONTAINER)
}

/**
 * Whether the container has ended and the kubelet has not started it again yet: the run that
 * ended is then run `restartCount` (a kubelet counts a restart when it starts the container
 * again, after its back-off), and the next one will be `restartCount + 1`. A container being
 * created again (`waiting` for another reason) has its restart counted already.
 */
function awaitingRestart(status: ContainerStatus): boolean {
  return status.state?.terminated !== undefined || status.state?.waiting?.reason === 'CrashLoopBackOff'
}

/** Waiter's instance id: one per container run, so a restarted container is a new instance (the one to come, while it waits to restart). */
export function instanceId(serviceId: string, pod: Pod): string {
  const status = appStatus(pod)
  const run = status === undefined ? 0 : awaitingRestart(status) ? status.restartCount + 1 : status.restartCount
  return `${serviceId}.${pod.metadata.name ?? ''}-${run}`
}

/**
 * What identifies one ended container run of a pod, however often the pod's status shows it
 * (back-off, re-creation, restart): its container id, else its times and exit code.
 */
export function failureKey(pod: Pod): string | undefined {
  if (hasEnded(pod)) return `pod-${pod.status?.phase ?? ''}`
  const status = appStatus(pod)
  const terminated = status?.state?.terminated ?? status?.lastState?.terminated
  if (terminated === undefined) return undefined
  return terminated.containerID ?? `${terminated.startedAt ?? ''}|${terminated.finishedAt ?? ''}|${terminated.exitCode}`
}

export function isTerminating(pod: Pod): boolean {
  return pod.metadata.deletionTimestamp !== undefined
}

/**
 * A pod that ended for good without being deleted: evicted (node pressure) or stopped by its
 * node's shutdown. It stays in the API until the pod GC takes it (by default only past 12,500
 * ended pods), but the ReplicaSet controller no longer counts it and makes another.
 */
export function hasEnded(pod: Pod): boolean {
  return pod.status?.phase === 'Failed' || pod.status?.phase === 'Succeeded'
}

/** A pod the ReplicaSet controller counts (its IsPodActive): neither being deleted nor ended for good. */
export function isActive(pod: Pod): boolean {
  return !isTerminating(pod) && !hasEnded(pod)
}

/** Ready per the API: not terminating, Running, condition Ready=True, and an IP to send to. */
export function isReady(pod: Pod): boolean {
  return (
    !isTerminating(pod) &&
    pod.status?.phase === 'Running' &&
    pod.status.podIP !== undefined &&
    pod.status.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') === true
  )
}

function time(value: string | undefined, fallback: number): number {
  const parsed = value === undefined ? NaN : Date.parse(value)
  return Number.isNaN(parsed) ? fallback : parsed
}

export interface PodInstanceOptions {
  readonly serviceId: string
  readonly proto: Proto
  readonly basePort: number
  readonly portCount: number
  readonly now: number
}

export function instanceOf(pod: Pod, o: PodInstanceOptions): Instance {
  const status = appStatus(pod)
  return {
    id: instanceId(o.serviceId, pod),
    serviceId: o.serviceId,
    host: pod.status?.podIP ?? '',
    port: o.basePort,
    extraPorts: Array.from({ length: Math.max(0, o.portCount - 1) }, (_, i) => o.basePort + 1 + i),
    proto: o.proto,
    startedAt: time(status?.state?.running?.startedAt ?? pod.metadata.creationTimestamp, o.now),
    healthy: isReady(pod),
    logDirectory: undefined,
    flags: new Set<InstanceFlag>(),
  }
}

/**
 * The container run that ended last, as soon as the pod shows it. A kubelet counts a restart
 * when it starts the container again, after its back-off, not when it crashes: while the
 * container is down (`state.terminated`, then `waiting: CrashLoopBackOff` with the crash in
 * `lastState`) the run that ended is run `restartCount`; once its restart is counted,
 * `lastState` holds run `restartCount - 1`. A pod being deleted ended on purpose. OOMKilled is a memory
 * failure; 137/143 with reason Error is a liveness (or grace-period) kill, which says nothing
 * about the command's own exit code.
 */
export function lastFailure(pod: Pod, serviceId: string, now: number): EndedInstance | undefined {
  const status = appStatus(pod)
  if (isTerminating(pod)) return undefined
  if (hasEnded(pod)) {
    // The pod's own reason: its container may show no run that ended (an eviction stops it).
    const terminated = status?.state?.terminated
    const why = [pod.status?.reason ?? `Pod ${pod.status?.phase ?? ''}`, pod.status?.message].filter((part) => part !== undefined && part !== '').join(': ')
    return {
      id: instanceId(serviceId, pod),
      serviceId,
      host: pod.status?.podIP ?? '',
      port: 0,
      startedAt: time(terminated?.startedAt ?? status?.state?.running?.startedAt ?? pod.metadata.creationTimestamp, now),
      endedAt: time(terminated?.finishedAt, now),
      exitCode: terminated?.exitCode,
      flags: new Set<InstanceFlag>(),
      message: why,
      logDirectory: undefined,
    }
  }
  if (status === undefined) return undefined
  const terminated = status.state?.terminated ?? status.lastState?.terminated
  const run = awaitingRestart(status) ? status.restartCount : status.restartCount - 1
  if (terminated === undefined || run < 0) return undefined
  const flags = new Set<InstanceFlag>()
  let exitCode: number | undefined = terminated.exitCode
  let message = `Exited with code ${terminated.exitCode}`
  if (terminated.reason === 'OOMKilled') {
    flags.add('memory-limit-exceeded')
    message = 'Exceeded allocated memory usage (OOMKilled)'
  } else if ((terminated.exitCode === 137 || terminated.exitCode === 143) && terminated.reason === 'Error') {
    exitCode = undefined
    flags.add('has-connected').add('has-responded').add('never-passed-health-checks')
    message = 'Killed by its liveness probe'
  }
  return {
    id: `${serviceId}.${pod.metadata.name ?? ''}-${run}`,
    serviceId,
    host: pod.status?.podIP ?? '',
    port: 0,
    startedAt: time(terminated.startedAt, now),
    endedAt: time(terminated.finishedAt, now),
    exitCode,
    flags,
    message,
    logDirectory: undefined,
  }
}

const SCHEDULER_WAITING = new Set(['ImagePullBackOff', 'ErrImagePull', 'InvalidImageName', 'CreateContainerConfigError', 'CreateContainerError'])

/** The cluster's own reason a pod cannot run at all (image, config, scheduling), if any. */
export function schedulerProblem(pod: Pod): string | undefined {
  if (isTerminating(pod)) return undefined
  const waiting = appStatus(pod)?.state?.waiting
  if (waiting?.reason !== undefined && SCHEDULER_WAITING.has(waiting.reason)) {
    return waiting.message === undefined ? waiting.reason : `${waiting.reason}: ${waiting.message}`
  }
  const unschedulable = pod.status?.conditions?.find((c) => c.type === 'PodScheduled' && c.status === 'False' && c.reason === 'Unschedulable')
  if (unschedulable !== undefined) return `Unschedulable: ${unschedulable.message ?? 'no node fits the pod'}`
  return undefined
}

/**
 * The cluster's reason none of these pods can run, as a deployment error, and when to look
 * again. A pod the scheduler cannot place yet counts only once it has waited `unschedulableGraceMs`
 * (from its condition's lastTransitionTime): a cluster autoscaler adds a node for it within a minute
 * or two, and until then a deployment error would refuse every request that the node would have
 * served. Image and configuration problems count at once.
 */
export function clusterProblem(pods: readonly Pod[], now: number, unschedulableGraceMs: number): { readonly problem: string | undefined; readonly recheckAt: number | undefined } {
  let recheckAt: number | undefined
  for (const pod of pods) {
    const problem = schedulerProblem(pod)
    if (problem === undefined) continue
    const unschedulable = pod.status?.conditions?.find((c) => c.type === 'PodScheduled' && c.status === 'False' && c.reason === 'Unschedulable')
    if (unschedulable === undefined || !problem.startsWith('Unschedulable:')) return { problem, recheckAt: undefined }
    const due = time(unschedulable.lastTransitionTime, now) + unschedulableGraceMs
    if (now >= due) return { problem, recheckAt: undefined }
    recheckAt = Math.min(recheckAt ?? due, due)
  }
  return { problem: undefined, recheckAt }
}

/**
 * The newest FailedCreate event of a ReplicaSet (by uid). lastTimestamp has whole seconds only,
 * so events of one second tie: the finer eventTime decides when the reporter set it, then the
 * higher count (the one still recurring).
 */
export function latestFailedCreate(events: readonly KubeEvent[], uid: string): KubeEvent | undefined {
  const at = (value: string | null | undefined): number => {
    const parsed = value === undefined || value === null ? Number.NaN : Date.parse(value)
    return Number.isNaN(parsed) ? 0 : parsed
  }
  return events
    .filter((e) => e.reason === 'FailedCreate' && e.involvedObject.uid === uid)
    .sort((a, b) => at(b.lastTimestamp) - at(a.lastTimestamp) || at(b.eventTime) - at(a.eventTime) || (b.count ?? 1) - (a.count ?? 1))[0]
}
