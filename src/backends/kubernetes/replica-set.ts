/**
 * One bare ReplicaSet per service version (Waiter's layout, reference §7.3): versions are
 * immutable, so a Deployment's rollouts would only get in the way. Pure: LaunchSpec in, object out.
 */
import { createHash } from 'node:crypto'
import type { LaunchSpec } from '../../launch-spec.ts'
import type { Container, EnvVar, HttpGetProbe, ReplicaSet } from './objects.ts'

export const LABELS = {
  app: 'app',
  cluster: 'maitre/cluster',
  serviceId: 'maitre/service-id',
} as const

export const ANNOTATIONS = {
  serviceId: 'maitre/service-id',
  backendProto: 'maitre/backend-proto',
  portCount: 'maitre/port-count',
  /** The port the pods' first port is (PORT0): a router configured with another podBasePort still reaches them. */
  podBasePort: 'maitre/pod-base-port',
  deletionCost: 'controller.kubernetes.io/pod-deletion-cost',
  /**
   * On a pod the ReplicaSet controller made in place of one being killed, which the lower count
   * takes next: every router leaves it out of its instances (it is about to go).
   */
  replacement: 'maitre/replacement',
} as const

export const CONTAINER = 'maitre-app'
/** The pod's working directory and $HOME: an emptyDir, as Waiter gives each instance a sandbox. */
export const SANDBOX = '/srv/maitre'
/** Pod names are `<replicaset>-<5 chars>` and must stay a DNS label (63). */
const MAX_REPLICASET_NAME = 57

export interface ReplicaSetOptions {
  readonly cluster: string
  readonly defaultImage: string
  readonly podBasePort: number
  readonly minTerminationGraceSecs: number
}

/** Service ids are DNS labels of at most 63; long ones keep a hash so distinct ids stay distinct. */
export function replicaSetName(serviceId: string): string {
  if (serviceId.length <= MAX_REPLICASET_NAME) return serviceId
  const hash = createHash('md5').update(serviceId).digest('hex').slice(0, 8)
  return `${serviceId.slice(0, MAX_REPLICASET_NAME - 9)}-${hash}`
}

export function clusterSelector(cluster: string): string {
  return `${LABELS.cluster}=${cluster}`
}

function probe(spec: LaunchSpec, check: LaunchSpec['healthCheck'], basePort: number): HttpGetProbe['httpGet'] {
  const headers = [{ name: 'x-waiter-request-type', value: 'health-check' }]
  if (check.authenticated) headers.push({ name: 'authorization', value: spec.authorization })
  return {
    path: check.url,
    port: basePort + check.portIndex,
    scheme: check.proto === 'https' || check.proto === 'h2' ? 'HTTPS' : 'HTTP',
    httpHeaders: headers,
  }
}

export function replicaSetOf(spec: LaunchSpec, options: ReplicaSetOptions): ReplicaSet {
  const name = replicaSetName(spec.serviceId)
  const labels = { [LABELS.app]: name, [LABELS.cluster]: options.cluster, [LABELS.serviceId]: spec.serviceId }
  const annotations = {
    [ANNOTATIONS.serviceId]: spec.serviceId,
    [ANNOTATIONS.backendProto]: spec.backendProto,
    [ANNOTATIONS.portCount]: String(spec.ports),
    [ANNOTATIONS.podBasePort]: String(options.podBasePort),
  }
  const base = options.podBasePort
  const env: EnvVar[] = [
    ...Object.entries(spec.env).map(([k, v]) => ({ name: k, value: v })),
    { name: 'HOME', value: SANDBOX },
    { name: 'MESOS_SANDBOX', value: SANDBOX },
    { name: 'WAITER_SANDBOX', value: SANDBOX },
    { name: 'PORT', value: String(base) },
    ...Array.from({ length: spec.ports }, (_, i) => ({ name: `PORT${i}`, value: String(base + i) })),
    // Apps that must bind one address (rather than 0.0.0.0) find their pod's here.
    { name: 'POD_IP', valueFrom: { fieldRef: { fieldPath: 'status.podIP' } } },
  ]
  const container: Container = {
    name: CONTAINER,
    image: spec.image ?? options.defaultImage,
    command: ['/bin/sh', '-c', FORWARDING_TERM, 'maitre-app', spec.command],
    workingDir: SANDBOX,
    env,
    ports: Array.from({ length: spec.ports }, (_, i) => ({ containerPort: base + i })),
    // Like Waiter: memory is a hard limit (OOMKilled past it), CPU only a request (no throttling).
    resources: { requests: { cpu: String(spec.cpus), memory: `${spec.memMb}Mi` }, limits: { memory: `${spec.memMb}Mi` } },
    // Readiness every second (the API's minimum), whatever the health-check interval: a cold
    // start then costs at most a second more than the app's own start.
    readinessProbe: { httpGet: probe(spec, spec.healthCheck, base), periodSeconds: 1, timeoutSeconds: 1, failureThreshold: 1 },
    volumeMounts: [{ name: 'sandbox', mountPath: SANDBOX }],
  }
  if (spec.gracePeriodMs > 0) {
    container.livenessProbe = {
      httpGet: probe(spec, spec.livenessCheck, base),
      initialDelaySeconds: Math.ceil(spec.gracePeriodMs / 1000),
      periodSeconds: Math.max(1, Math.round(spec.livenessCheck.intervalMs / 1000)),
      timeoutSeconds: 1,
      failureThreshold: spec.livenessCheck.maxConsecutiveFailures,
    }
  }
  return {
    apiVersion: 'apps/v1',
    kind: 'ReplicaSet',
    metadata: { name, labels, annotations },
    spec: {
      replicas: spec.minInstances,
      selector: { matchLabels: { [LABELS.app]: name, [LABELS.cluster]: options.cluster } },
      template: {
        metadata: { labels, annotations },
        spec: {
          containers: [container],
          terminationGracePeriodSeconds: Math.max(Math.ceil(spec.terminationGraceMs / 1000), options.minTerminationGraceSecs),
          // Service code must not act with maitre's own API credentials.
          automountServiceAccountToken: false,
          volumes: [{ name: 'sandbox', emptyDir: {} }],
        },
      },
    },
  }
}

/**
 * The script the container's PID 1 runs, with the service's command as its $1. The kubelet
 * sends SIGTERM to PID 1 only, and a shell there neither passes it on nor (as PID 1) dies of
 * it: an app that is a child of the shell would run on, unwarned, until the SIGKILL at the end
 * of the grace period. So PID 1 runs the command in a shell of its own (as `/bin/sh -c` would:
 * the command is passed as an argument, never spliced into the script), and on SIGTERM ignores
 * it itself and sends it to its whole process group. The command's shell then runs nothing
 * more (a `sleep 5; app` does not start the app during shutdown), waits for every job it
 * started, and exits 143; PID 1 waits for it and exits 143 too, which is how a kubelet's
 * SIGTERM (a liveness failure, a delete) reads in the container's last state. Otherwise PID 1
 * exits with the command's own status. What the app must do: on SIGTERM, finish its requests
 * and exit within termination-grace-period-secs.
 */
export const FORWARDING_TERM = [
  `trap 'trap "" TERM; term=1; kill -TERM 0' TERM`,
  `/bin/sh -c 'trap "wait; exit 143" TERM; eval "$1"' maitre-app "$1" &`,
  'pid=$!',
  'wait $pid; status=$?',
  'while kill -0 $pid 2>/dev/null; do wait $pid; status=$?; done',
  'if [ -n "${term:-}" ]; then exit 143; fi',
  'exit $status',
].join('\n')

/** The pods' first port, as the ReplicaSet was made with it; undefined for one made before the annotation (or not by maitre). */
export function basePortOf(rs: { metadata: { annotations?: Record<string, string> | undefined } }): number | undefined {
  const value = Number(rs.metadata.annotations?.[ANNOTATIONS.podBasePort])
  return Number.isInteger(value) && value > 0 && value < 65536 ? value : undefined
}
