/** The fields of Kubernetes objects that maitre reads or writes (a subset of the real schemas). */

export interface ObjectMeta {
  name?: string
  namespace?: string
  uid?: string
  resourceVersion?: string
  creationTimestamp?: string
  deletionTimestamp?: string
  /** Bumped by the API server on every change of the spec (a scale included). */
  generation?: number
  labels?: Record<string, string>
  annotations?: Record<string, string>
  ownerReferences?: { apiVersion: string; kind: string; name: string; uid: string; controller?: boolean }[]
}

export interface KubeList<T> {
  kind?: string
  apiVersion?: string
  metadata: { resourceVersion?: string; continue?: string }
  items: T[]
}

export interface KubeStatus {
  kind: 'Status'
  apiVersion?: string
  status: 'Success' | 'Failure'
  message?: string
  reason?: string
  code: number
  details?: Record<string, unknown>
}

export interface HttpGetProbe {
  httpGet: { path: string; port: number; scheme?: 'HTTP' | 'HTTPS'; httpHeaders?: { name: string; value: string }[] }
  initialDelaySeconds?: number
  periodSeconds?: number
  timeoutSeconds?: number
  failureThreshold?: number
}

export interface EnvVar {
  name: string
  value?: string
  valueFrom?: { fieldRef: { fieldPath: string } }
}

export interface Container {
  name: string
  image: string
  command?: string[]
  workingDir?: string
  env?: EnvVar[]
  ports?: { containerPort: number; name?: string }[]
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> }
  readinessProbe?: HttpGetProbe
  livenessProbe?: HttpGetProbe
  volumeMounts?: { name: string; mountPath: string }[]
}

export interface PodSpec {
  containers: Container[]
  restartPolicy?: string
  terminationGracePeriodSeconds?: number
  automountServiceAccountToken?: boolean
  volumes?: { name: string; emptyDir?: Record<string, unknown> }[]
}

export interface PodTemplate {
  metadata: ObjectMeta
  spec: PodSpec
}

export interface ReplicaSet {
  apiVersion: 'apps/v1'
  kind: 'ReplicaSet'
  metadata: ObjectMeta
  spec: { replicas: number; selector: { matchLabels: Record<string, string> }; template: PodTemplate }
  status?: { replicas?: number; fullyLabeledReplicas?: number; readyReplicas?: number; availableReplicas?: number; observedGeneration?: number }
}

export interface Scale {
  kind: 'Scale'
  apiVersion: 'autoscaling/v1'
  metadata: ObjectMeta
  spec: { replicas: number }
  status?: { replicas: number; selector?: string }
}

export interface ContainerState {
  waiting?: { reason?: string; message?: string }
  running?: { startedAt?: string }
  terminated?: { exitCode: number; reason?: string; message?: string; startedAt?: string; finishedAt?: string; containerID?: string }
}

export interface ContainerStatus {
  name: string
  ready: boolean
  restartCount: number
  image?: string
  state?: ContainerState
  lastState?: ContainerState
}

export interface PodCondition {
  type: string
  status: 'True' | 'False' | 'Unknown'
  reason?: string
  message?: string
  lastTransitionTime?: string
}

export interface Pod {
  apiVersion?: 'v1'
  kind?: 'Pod'
  metadata: ObjectMeta
  spec: PodSpec
  status?: {
    phase?: 'Pending' | 'Running' | 'Succeeded' | 'Failed' | 'Unknown'
    /** Why the pod ended for good (phase Failed): Evicted, Shutdown, NodeShutdown… */
    reason?: string
    message?: string
    podIP?: string
    startTime?: string
    conditions?: PodCondition[]
    containerStatuses?: ContainerStatus[]
  }
}

export interface KubeEvent {
  metadata: ObjectMeta
  involvedObject: { kind: string; name: string; namespace?: string; uid?: string }
  reason: string
  message: string
  type: 'Normal' | 'Warning'
  count?: number
  firstTimestamp?: string
  /** Whole seconds (metav1.Time): events of one second tie on it. */
  lastTimestamp?: string
  /** Microseconds (MicroTime), when the reporter sets it. */
  eventTime?: string | null
}
