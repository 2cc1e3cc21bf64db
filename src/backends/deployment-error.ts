/**
 * Waiter's deployment-error rules (reference §8), as a pure function of the instances that
 * failed since the service last had a healthy one. First matching rule wins.
 */
import type { EndedInstance, Instance } from './backend.ts'

export const DEPLOYMENT_ERRORS = {
  notEnoughMemory: 'Not enough memory allocated',
  badStartupCommand: 'Invalid startup command',
  cannotConnect: 'Unable to connect to run health checks',
  healthCheckTimedOut: 'Health check timed out',
  badSocket: 'Backend is closing socket without responding (ensure backend-proto is correctly configured)',
  invalidHealthCheckResponse: 'Health check returned an invalid response',
  healthCheckRequiresAuthentication: 'Health check requires authentication',
} as const

export interface DeploymentErrorInput {
  readonly healthy: number
  readonly failedSinceHealthy: readonly EndedInstance[]
  readonly unhealthy: readonly Instance[]
  readonly minFailedInstances: number
}

export function deploymentError(input: DeploymentErrorInput): string | undefined {
  if (input.healthy > 0) return undefined
  const failed = input.failedSinceHealthy
  if (failed.length >= input.minFailedInstances) {
    const all = (test: (f: EndedInstance) => boolean): boolean => failed.every(test)
    const none = (flag: Parameters<EndedInstance['flags']['has']>[0]): boolean => failed.every((f) => !f.flags.has(flag))
    if (all((f) => f.flags.has('memory-limit-exceeded'))) return DEPLOYMENT_ERRORS.notEnoughMemory
    const first = failed[0]?.exitCode
    if (first !== undefined && all((f) => f.exitCode === first)) return DEPLOYMENT_ERRORS.badStartupCommand
    if (none('has-connected')) return DEPLOYMENT_ERRORS.cannotConnect
    if (none('has-responded') && all((f) => f.flags.has('timeout-exception'))) return DEPLOYMENT_ERRORS.healthCheckTimedOut
    if (none('has-responded')) return DEPLOYMENT_ERRORS.badSocket
    if (all((f) => f.flags.has('never-passed-health-checks'))) return DEPLOYMENT_ERRORS.invalidHealthCheckResponse
  }
  if (input.unhealthy[0]?.flags.has('health-check-401') === true) return DEPLOYMENT_ERRORS.healthCheckRequiresAuthentication
  return undefined
}

/** Waiter's messages by the short class a metric label carries. */
const CLASSES: readonly (readonly [string, string])[] = [
  [DEPLOYMENT_ERRORS.notEnoughMemory, 'not-enough-memory'],
  [DEPLOYMENT_ERRORS.badStartupCommand, 'invalid-startup-command'],
  [DEPLOYMENT_ERRORS.cannotConnect, 'cannot-connect'],
  [DEPLOYMENT_ERRORS.healthCheckTimedOut, 'health-check-timed-out'],
  [DEPLOYMENT_ERRORS.badSocket, 'bad-socket'],
  [DEPLOYMENT_ERRORS.invalidHealthCheckResponse, 'invalid-health-check-response'],
  [DEPLOYMENT_ERRORS.healthCheckRequiresAuthentication, 'health-check-requires-authentication'],
]

/** The cluster's own reasons (Kubernetes), which prefix their message as `Reason: …`. */
const CLUSTER_REASONS = new Set(['ImagePullBackOff', 'ErrImagePull', 'InvalidImageName', 'CreateContainerConfigError', 'CreateContainerError', 'Unschedulable', 'FailedCreate'])

/**
 * A deployment error's class: one of a fixed set, so a metric label stays bounded whatever
 * free text (pod names, image names, quota figures) the message carries.
 */
export function deploymentErrorClass(message: string): string {
  for (const [text, name] of CLASSES) if (message === text) return name
  const reason = /^([A-Za-z]+):/.exec(message)?.[1]
  if (reason !== undefined && CLUSTER_REASONS.has(reason)) return reason.replace(/([a-z])([A-Z])/g, '$1-$2').toLowerCase()
  if (message.startsWith('The cluster refused to create')) return 'replicaset-rejected'
  return 'other'
}
