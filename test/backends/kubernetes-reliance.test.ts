/**
 * What the Kubernetes backend relies on from a real API server, call by call (every entry of
 * PERMISSIONS), each with the test that shows the simulator behaves so. The test holds the list
 * complete (every call the backend makes has its entry) and true to the suite (every test it
 * names exists), so a new call or a renamed test cannot leave a reliance unproven.
 */
import t from 'tap'
import { readFileSync } from 'node:fs'
import { PERMISSIONS } from '../../src/backends/kubernetes/api.ts'

const K8S = 'test/backends/kubernetes.test.ts'
const KILL_LAG = 'test/backends/kubernetes-kill-lag.test.ts'
const KILL_REPLACEMENTS = 'test/backends/kubernetes-kill-replacements.test.ts'
const KILL_RACES = 'test/backends/kubernetes-kill-races.test.ts'
const KUBECTL = 'test/integration/kubectl.test.ts'
const ENDED = 'test/backends/kubernetes-ended-pods.test.ts'
const PARITY = 'test/integration/backend-parity.test.ts'

interface Reliance {
  /** The API server's behaviour the backend depends on. */
  readonly behaviour: string
  /** The test (file, and the start of its name) that shows the simulator behaves so. */
  readonly shownBy: readonly [file: string, test: string]
}

const RELIES_ON: Readonly<Record<string, readonly Reliance[]>> = {
  'replicasets create': [
    { behaviour: '201 with the stored object; the ReplicaSet controller then creates its pods', shownBy: [PARITY, 'a cold start holds the first request until an instance is ready'] },
    { behaviour: 'a ReplicaSet already there (another router, a restart) is found by label and adopted, not created twice', shownBy: [K8S, 'a router that starts later adopts the ReplicaSets already in the cluster'] },
  ],
  'replicasets delete': [
    { behaviour: 'Background propagation: the ReplicaSet goes at once, the garbage collector deletes its pods after', shownBy: [PARITY, 'garbage collection deletes a stale version and everything it ran'] },
    { behaviour: 'a failed delete changes nothing (a 5xx Status), so a later one can finish it', shownBy: [K8S, 'a ReplicaSet delete that fails leaves the service known'] },
    { behaviour: '--cascade=orphan (propagationPolicy Orphan) leaves the pods, owned by nothing', shownBy: [KUBECTL, 'kubectl works against the simulator unchanged'] },
  ],
  'replicasets list': [
    { behaviour: 'a List carries the resourceVersion a watch resumes from', shownBy: [K8S, 'after its history is compacted and its watch dropped'] },
  ],
  'replicasets watch': [
    { behaviour: 'NDJSON events resumed from a resourceVersion; 410 Expired once compacted, then list again', shownBy: [K8S, 'after its history is compacted and its watch dropped'] },
    { behaviour: 'the answer’s head comes at once; its bytes may split a character anywhere', shownBy: [K8S, 'the watch decodes characters whose bytes arrive in different chunks'] },
    { behaviour: 'the controller writes status.replicas (the active pods its cache shows) with observedGeneration once it has acted on a generation: a kill that gave up on its replacement owes one only until then', shownBy: [KILL_REPLACEMENTS, 'a kill that gave up on its replacement owes one only until'] },
  ],
  'replicasets/scale get': [
    { behaviour: 'a Scale (autoscaling/v1) with the ReplicaSet’s resourceVersion', shownBy: [K8S, 'the API server enforces resourceVersion on /scale'] },
  ],
  'replicasets/scale update': [
    { behaviour: 'an update with a stale resourceVersion is a 409 Conflict Status (read again, write again)', shownBy: [K8S, 'the API server enforces resourceVersion on /scale'] },
  ],
  'pods delete': [
    { behaviour: 'a delete of the named pod with its uid as a precondition: another uid is a 409 Conflict and the pod stays', shownBy: [K8S, 'the simulator behaves as an API server where clients are easily fooled'] },
    { behaviour: 'a pod already gone is a 404: the kill chose nothing, so the count stays', shownBy: [KILL_REPLACEMENTS, 'a pod gone before its kill could delete it (404)'] },
    { behaviour: 'scale-down by deletion cost and delete: the pod chosen (idle) goes, never one serving a request', shownBy: [PARITY, 'load scales up; scale-down kills only idle instances, never one serving a request'] },
    { behaviour: 'the same when the controller’s pod cache lags its ReplicaSet cache', shownBy: [KILL_LAG, 'killing an idle pod is safe against a ReplicaSet controller whose pod cache lags'] },
    { behaviour: 'a deleted pod leaves the count at once and the controller replaces it; lowered then, it deletes the replacement (unscheduled or Pending first), even when a busy pod is unready', shownBy: [KILL_RACES, 'a busy single-threaded app fails its readiness probe'] },
    { behaviour: 'the same for kills one right after the other, the controller’s caches lagging', shownBy: [KILL_LAG, 'two kills back to back, the controller’s pod cache lagging'] },
    { behaviour: 'the same for two kills at once', shownBy: [KILL_RACES, 'two kills at once (an operator’s and the autoscaler’s)'] },
    { behaviour: 'a replacement already ready when the count could drop: deleted in turn, its own replacement (Pending) is what the count takes', shownBy: [KILL_RACES, 'a scale write held back until the replacement is ready'] },
    { behaviour: 'the replacement comes once the controller’s pod cache saw the delete and its expectations are met, a multiple of its lag: the count waits for it', shownBy: [KILL_LAG, 'a controller whose pod cache lags 2 s'] },
    { behaviour: 'the answer is the pod as marked for deletion, with the resourceVersion of that write (integers that grow across resources, as etcd revisions do)', shownBy: [K8S, 'the simulator behaves as an API server where clients are easily fooled'] },
    { behaviour: 'the kubelet sends SIGTERM to the container’s PID 1 only, SIGKILL after the grace period', shownBy: [K8S, 'SIGTERM reaches the app when the kubelet signals only the container’s PID 1'] },
  ],
  'pods patch': [
    { behaviour: 'a merge patch of the pod-deletion-cost annotation; a value that is not a 32-bit integer is a 422', shownBy: [KUBECTL, 'kubectl works against the simulator unchanged'] },
    { behaviour: 'a patch that changes nothing bumps no resourceVersion and sends no event', shownBy: [K8S, 'the simulator behaves as an API server where clients are easily fooled'] },
    { behaviour: 'the controller ranks victims by what its cache last saw', shownBy: [KILL_LAG, 'the simulator’s ReplicaSet controller can act from a lagging pod cache'] },
    { behaviour: 'a merge patch of annotations (the replacement mark and cost) on a pod the controller just made', shownBy: [KILL_RACES, 'a scale write held back until the replacement is ready'] },
  ],
  'pods list': [
    { behaviour: 'label selectors; only the selectable fields (else 400); whole-second timestamps', shownBy: [K8S, 'the simulator behaves as an API server where clients are easily fooled'] },
  ],
  'pods watch': [
    { behaviour: 'a pod that comes to match the selector is ADDED, one that stops is DELETED', shownBy: [K8S, 'the simulator behaves as an API server where clients are easily fooled'] },
    { behaviour: 'a crash shows at once in the container’s state; restartCount rises at the restart after the back-off', shownBy: [K8S, 'a crash is recorded as soon as the pod shows it'] },
    { behaviour: 'a liveness failure ends the container with SIGTERM first (reason Error, 143 or 137)', shownBy: [K8S, 'a container that fails its liveness probe is stopped as a kubelet does it'] },
    { behaviour: 'OOMKilled, liveness kills and the scheduler’s own reasons as the kubelet reports them', shownBy: [K8S, 'reading pods: failed runs, OOMKilled, liveness kills'] },
    { behaviour: 'an evicted pod stays, phase Failed with reason Evicted and no deletionTimestamp; the controller no longer counts it and makes another', shownBy: [ENDED, 'an evicted pod is no instance'] },
  ],
  'events list': [
    { behaviour: 'FailedCreate events of the ReplicaSet, selected by involvedObject.kind and .name', shownBy: [K8S, 'every call the backend makes is in PERMISSIONS'] },
    { behaviour: 'a FailedCreate the controller records (or counts again) after a pod delete has a greater resourceVersion than that delete’s answer', shownBy: [KILL_REPLACEMENTS, 'a controller that cannot replace the chosen pod (its quota is full)'] },
    { behaviour: 'a FailedCreate from before the delete keeps its older resourceVersion, so it does not end the wait for a replacement', shownBy: [KILL_REPLACEMENTS, 'a FailedCreate from before the kill does not end its wait'] },
    { behaviour: 'a FailedCreate recorded before a scale write has a smaller resourceVersion than that write’s answer (Events outlive the quota that caused them)', shownBy: [ENDED, 'a FailedCreate from an earlier scale-up does not fail a later cold start'] },
    { behaviour: 'lastTimestamp in whole seconds (ties broken by eventTime, then count)', shownBy: [K8S, 'reading pods: failed runs, OOMKilled, liveness kills'] },
  ],
  'any call': [
    { behaviour: '5xx and a call never answered are transient: retried with backoff, never a deployment error', shownBy: [K8S, 'an API call never answered is retried like a 5xx'] },
    { behaviour: 'TLS with the cluster’s CA and a bearer token (401 without it)', shownBy: [K8S, 'the simulator speaks the API faithfully where the backend relies on it'] },
  ],
}

t.test('every call the backend makes has the API behaviour it relies on written down, each with the test that shows it', async (t) => {
  const calls = Object.entries(PERMISSIONS).flatMap(([resource, verbs]) => verbs.map((verb) => `${resource} ${verb}`))
  t.same(calls.filter((call) => (RELIES_ON[call] ?? []).length === 0), [], 'no call without a reliance')
  t.same(Object.keys(RELIES_ON).filter((call) => call !== 'any call' && !calls.includes(call)), [], 'no reliance on a call the backend does not make')
  const texts = new Map<string, string>()
  const missing: string[] = []
  for (const [call, reliances] of Object.entries(RELIES_ON)) {
    for (const { shownBy: [file, name] } of reliances) {
      if (!texts.has(file)) texts.set(file, readFileSync(file, 'utf8'))
      // A test's title, or the fixed part of a templated one (`${kind}: …`).
      const titled = (texts.get(file) as string).split('\n').some((line) => line.includes('t.test(') && line.includes(name))
      if (name.length < 20 || !titled) missing.push(`${call}: ${file} “${name}”`)
    }
  }
  t.same(missing, [], 'every test named exists')
})
