/**
 * The Backend contract (src/backends/backend.ts) as a list of cases, each an observable promise,
 * run against every backend built directly (no router): the in-memory fake the scaler's unit tests
 * use, the local backend (real process groups of the kitchen app) and the Kubernetes backend
 * against the in-repo API simulator (pods are local processes on their own loopback IPs).
 *
 * What runs is checked from outside the backend too: the instance processes are found in /proc by
 * the WAITER_* environment their LaunchSpec gives them, and the simulator is asked which
 * ReplicaSets and pods it holds.
 *
 * close() is held to refusing new services everywhere, and to stopping every instance only where
 * the backend owns them: the Kubernetes backend leaves its versions to the cluster for the next
 * router to adopt (backend.ts, README "Backends").
 */
import t, { type Test } from 'tap'
import { join } from 'node:path'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import type { Backend, Instance } from '../../src/backends/backend.ts'
import { DEPLOYMENT_ERRORS } from '../../src/backends/deployment-error.ts'
import { KubernetesBackend } from '../../src/backends/kubernetes.ts'
import { KubeApi } from '../../src/backends/kubernetes/api.ts'
import { kubeConnection } from '../../src/backends/kubernetes/connection.ts'
import { LABELS } from '../../src/backends/kubernetes/replica-set.ts'
import { LocalBackend } from '../../src/backends/local/local-backend.ts'
import { systemClock } from '../../src/clock.ts'
import { DEFAULTS } from '../../src/config.ts'
import type { LaunchSpec } from '../../src/launch-spec.ts'
import { silentLogger } from '../../src/log.ts'
import { effectiveParameters } from '../../src/versions/descriptor.ts'
import { launchSpecOf } from '../../src/versions/launch.ts'
import { processesWithEnv } from '../fixtures/instance-processes.ts'
import { startKubeSimulator } from '../fixtures/k8s-sim/simulator.ts'
import { MemoryBackend } from '../fixtures/memory-backend.ts'
import { call, claimPortSlice, kitchenCmd, processAlive, SIM_NAMESPACE, SIM_TOKEN, waitFor, writeKubeconfig } from '../fixtures/router.ts'

/** WAITER_CLUSTER of every instance this file starts: its processes are told apart from other tests' by it. */
const CLUSTER = `contract-${process.pid}`

function specOf(serviceId: string, core: Readonly<Record<string, unknown>> = {}): LaunchSpec {
  const effective = {
    ...effectiveParameters({ cmd: kitchenCmd(), cpus: 0.1, mem: 128, version: 'v1', 'health-check-url': '/status', ...core }),
    'run-as-user': 'me',
  }
  return launchSpecOf(serviceId, effective, { cluster: CLUSTER, secret: 'contract' })
}

interface Harness {
  readonly backend: Backend
  /** Instances are real processes listening on their host:port (the in-memory fake runs nothing). */
  readonly real: boolean
  /**
   * Whether close() stops the instances. The Kubernetes backend leaves its versions to the cluster
   * on purpose (the next router adopts their ReplicaSets: README "Backends", kubernetes.ts).
   */
  readonly closeStops: boolean
  /** The cluster's objects for a service (`replicasets/<name>`, `pods/<name>`), when there is a cluster. */
  readonly cluster: { objects(serviceId: string): string[] } | undefined
}

const BACKENDS: Record<'memory' | 'local' | 'kubernetes', (t: Test) => Promise<Harness>> = {
  async memory(t) {
    const backend = new MemoryBackend(systemClock)
    t.teardown(() => backend.close())
    return { backend, real: false, closeStops: true, cluster: undefined }
  },

  async local(t) {
    const { low, release } = claimPortSlice()
    // Not t.testdir(): tap removes that before the teardown below has stopped the instances.
    const dir = mkdtempSync(join(tmpdir(), 'maitre-contract-local-'))
    const backend = new LocalBackend({
      ...DEFAULTS.backend.local,
      workDir: join(dir, 'instances'),
      portRange: [low, low + 99],
      minSigkillDelayMs: 200,
      clock: systemClock,
      log: silentLogger,
    })
    t.teardown(async () => {
      try {
        await backend.close()
      } finally {
        release() // only once its instances are gone
        rmSync(dir, { recursive: true, force: true })
      }
    })
    return { backend, real: true, closeStops: true, cluster: undefined }
  },

  async kubernetes(t) {
    // Not t.testdir(): tap removes that before it runs the teardowns, while pods still write in it.
    const dir = mkdtempSync(join(tmpdir(), 'maitre-contract-k8s-'))
    const sim = await startKubeSimulator({ token: SIM_TOKEN, workDir: join(dir, 'sim'), crashBackoffMs: 200, maxCrashBackoffMs: 2000 }).catch((err: unknown) => {
      rmSync(dir, { recursive: true, force: true })
      throw err
    })
    // Pods have their own IPs; a port slice of our own still keeps them off other tests' instances.
    const { low, release } = claimPortSlice()
    const K8S = DEFAULTS.backend.kubernetes
    const api = new KubeApi(kubeConnection({ ...K8S, kubeconfig: writeKubeconfig(dir, sim.url, sim.ca) }, {}))
    const backend = new KubernetesBackend({ ...K8S, api, cluster: 'contract', podBasePort: low, relistBackoffMs: 20, clock: systemClock, log: silentLogger })
    t.teardown(async () => {
      try {
        await backend.close()
      } finally {
        await sim.close() // the cluster under it last: close() leaves the pods running
        release()
        rmSync(dir, { recursive: true, force: true })
      }
    })
    const objects = (serviceId: string): string[] =>
      (['replicasets', 'pods'] as const).flatMap((resource) =>
        sim
          .list(resource, SIM_NAMESPACE)
          .filter((o) => o.metadata.labels?.[LABELS.serviceId] === serviceId)
          .map((o) => `${resource}/${String(o.metadata.name)}`),
      )
    return { backend, real: true, closeStops: false, cluster: { objects } }
  },
}

const live = (backend: Backend, id: string): readonly Instance[] => backend.state(id)?.instances ?? []
const healthy = (backend: Backend, id: string): number => live(backend, id).filter((i) => i.healthy).length
const idsOf = (backend: Backend, id: string): string[] => live(backend, id).map((i) => i.id).sort()
/** `count` instances, every one healthy. */
const exactlyHealthy = (backend: Backend, id: string, count: number): boolean => live(backend, id).length === count && healthy(backend, id) === count
const envOf = (serviceId: string): Record<string, string> => ({ WAITER_CLUSTER: CLUSTER, WAITER_SERVICE_ID: serviceId })

async function until(what: string, condition: () => boolean, timeoutMs = 15_000): Promise<void> {
  await waitFor(what, () => (condition() ? true : undefined), timeoutMs)
}

/** The pid of the kitchen app behind an instance, from the app itself (its /sleep needs no credentials). */
async function pidOf(instance: Instance): Promise<number> {
  return (await call(`http://${instance.host}:${instance.port}/sleep`)).json<{ pid: number }>().pid
}

interface Case {
  readonly name: string
  run(t: Test, harness: Harness): Promise<void>
}

const CASES: readonly Case[] = [
  {
    name: 'ensureService is idempotent: concurrent and repeated calls make one service with min-instances instances, and listeners hear of it',
    async run(t, { backend, cluster }) {
      const id = 'svc-ensure'
      const heard: string[] = []
      const seen = new Set<string>()
      backend.subscribe((serviceId) => {
        heard.push(serviceId)
        if (serviceId === id) for (const i of live(backend, id)) seen.add(i.id)
      })
      const spec = specOf(id, { 'min-instances': 2 })
      await Promise.all([backend.ensureService(spec), backend.ensureService(spec)])
      await backend.ensureService(spec)
      t.equal(backend.services().filter((s) => s.id === id).length, 1, 'one service')
      t.equal(backend.state(id)?.requested, 2, 'requested = min-instances')
      t.equal(backend.requested(id), 2, 'requested() says as much')
      await until('min-instances healthy instances', () => exactlyHealthy(backend, id, 2))
      t.ok(heard.includes(id), 'listeners heard about the service')
      for (const i of live(backend, id)) seen.add(i.id)
      t.same([...seen].sort(), idsOf(backend, id), 'no instance was ever reported besides these (the service was created once)')
      if (cluster !== undefined) t.same(cluster.objects(id).filter((o) => o.startsWith('replicasets/')), [`replicasets/${id}`], 'one ReplicaSet')
    },
  },

  {
    name: 'scale up to N: requested follows, and instances number N, every one healthy',
    async run(t, { backend }) {
      const id = 'svc-scale'
      await backend.ensureService(specOf(id))
      await until('one healthy instance', () => exactlyHealthy(backend, id, 1))
      await backend.scale(id, 2)
      t.equal(backend.state(id)?.requested, 2, 'requested 2')
      t.equal(backend.requested(id), 2, 'requested() says as much')
      await until('two healthy instances', () => exactlyHealthy(backend, id, 2))
      t.equal(backend.state(id)?.requested, 2, 'still requested 2')
      t.equal(backend.requested(id), 2, 'requested() says as much')
    },
  },

  {
    name: 'scale up to N then down to M: requested follows, and instances number N healthy, then M',
    async run(t, { backend, real }) {
      const id = 'svc-scale-down'
      await backend.ensureService(specOf(id, { 'min-instances': 2 }))
      await until('two healthy instances', () => exactlyHealthy(backend, id, 2))
      const pids = real ? await Promise.all(live(backend, id).map(pidOf)) : []
      await backend.scale(id, 1)
      t.equal(backend.state(id)?.requested, 1, 'requested 1')
      t.equal(backend.requested(id), 1, 'requested() says as much')
      await until('one instance left after scaling down', () => exactlyHealthy(backend, id, 1), 10_000)
      if (real) await until('one of the two processes left', () => pids.filter(processAlive).length === 1, 10_000)
    },
  },

  {
    name: 'killInstance removes that very instance and lowers requested by one; an unknown instance id is refused with false',
    async run(t, { backend, real, cluster }) {
      const id = 'svc-kill'
      await backend.ensureService(specOf(id, { 'min-instances': 2 }))
      await until('two healthy instances', () => exactlyHealthy(backend, id, 2))
      const [victim, survivor] = live(backend, id) as [Instance, Instance]
      const [victimPid, survivorPid] = real ? await Promise.all([pidOf(victim), pidOf(survivor)]) : [0, 0]

      t.equal(await backend.killInstance(id, `${id}.no-such-instance`), false, 'an unknown instance id: false')
      t.equal(backend.state(id)?.requested, 2, 'requested unchanged')
      t.equal(backend.requested(id), 2, 'requested() says as much')
      t.same(idsOf(backend, id), [victim.id, survivor.id].sort(), 'instances unchanged')

      const seen = new Set<string>()
      backend.subscribe((serviceId) => {
        if (serviceId === id) for (const i of live(backend, id)) seen.add(i.id)
      })
      t.equal(await backend.killInstance(id, victim.id), true, 'the chosen instance: true')
      t.equal(backend.state(id)?.requested, 1, 'requested lowered by one')
      t.equal(backend.requested(id), 1, 'requested() says as much')
      await until('the killed instance gone', () => !live(backend, id).some((i) => i.id === victim.id) && (!real || !processAlive(victimPid)))
      t.same(idsOf(backend, id), [survivor.id], 'the other instance is the one left')
      t.equal(healthy(backend, id), 1, 'and still healthy')
      if (real) t.ok(processAlive(survivorPid), 'its process still runs')
      if (cluster !== undefined) await until('one pod left in the cluster', () => cluster.objects(id).filter((o) => o.startsWith('pods/')).length === 1)
      t.equal(await backend.killInstance(id, victim.id), false, 'killing it again: false')
      t.equal(backend.state(id)?.requested, 1, 'requested still 1')
      t.equal(backend.requested(id), 1, 'requested() says as much')
      t.same([...seen].filter((i) => i !== victim.id && i !== survivor.id), [], 'no replacement was started')
    },
  },

  {
    name: 'deleteService stops every instance and forgets the service, tells listeners, and is idempotent',
    async run(t, { backend, real, cluster }) {
      const id = 'svc-delete'
      await backend.ensureService(specOf(id, { 'min-instances': 2 }))
      await until('two healthy instances', () => exactlyHealthy(backend, id, 2))
      if (real) t.ok(processesWithEnv(envOf(id)).length >= 2, 'its processes run')
      if (cluster !== undefined) t.ok(cluster.objects(id).length > 0, 'its ReplicaSet and pods exist')
      const toldGone: boolean[] = []
      backend.subscribe((serviceId) => {
        if (serviceId === id) toldGone.push(backend.state(id) === undefined)
      })
      await backend.deleteService(id)
      t.equal(backend.state(id), undefined, 'state() undefined')
      t.equal(backend.requested(id), undefined, 'requested() undefined')
      t.notOk(backend.services().some((s) => s.id === id), 'services() no longer lists it')
      t.ok(toldGone.includes(true), 'listeners were told, once it was gone')
      await t.resolves(backend.deleteService(id), 'a second delete resolves')
      t.equal(backend.state(id), undefined, 'and changes nothing')
      await until('no process of the service left', () => processesWithEnv(envOf(id)).length === 0)
      if (cluster !== undefined) await until('no ReplicaSet or pod left', () => cluster.objects(id).length === 0)
    },
  },

  {
    name: 'every call on an unknown service id is harmless',
    async run(t, { backend, cluster }) {
      const known = 'svc-known'
      await backend.ensureService(specOf(known))
      const id = 'svc-unknown'
      await t.resolves(backend.scale(id, 3), 'scale resolves')
      t.equal(backend.state(id), undefined, 'and creates nothing')
      t.equal(await backend.killInstance(id, `${id}.x`), false, 'killInstance: false')
      await t.resolves(backend.deleteService(id), 'deleteService resolves')
      t.equal(backend.state(id), undefined, 'state() undefined')
      t.equal(backend.requested(id), undefined, 'requested() undefined')
      t.same(backend.services().map((s) => s.id), [known], 'services() lists only the known one')
      t.equal(backend.state(known)?.requested, 1, 'the known service is untouched')
      t.same(processesWithEnv(envOf(id)), [], 'no process for it')
      if (cluster !== undefined) t.same(cluster.objects(id), [], 'no cluster object for it')
    },
  },

  {
    name: 'a service whose instances exit at once gets a deployment error within a bounded time',
    async run(t, { backend }) {
      const id = 'svc-crash'
      await backend.ensureService(specOf(id, { cmd: 'exit 3' }))
      const error = await waitFor('a deployment error', () => backend.state(id)?.deploymentError, 15_000)
      t.equal(error, DEPLOYMENT_ERRORS.badStartupCommand, 'Invalid startup command')
      t.equal(healthy(backend, id), 0, 'no healthy instance')
    },
  },

  {
    name: 'instances carry the fields the data path relies on',
    async run(t, { backend, real }) {
      const id = 'svc-fields'
      const before = Date.now()
      const spec = specOf(id)
      await backend.ensureService(spec)
      await until('one healthy instance', () => exactlyHealthy(backend, id, 1))
      for (const i of live(backend, id)) {
        t.ok(i.id.startsWith(`${id}.`) && i.id.length > id.length + 1, `id ${i.id} is <service-id>.<suffix>`)
        t.equal(i.serviceId, id, 'serviceId')
        t.ok(typeof i.host === 'string' && i.host.length > 0, `host ${i.host}`)
        t.ok(Number.isInteger(i.port) && i.port > 0, `port ${i.port}`)
        t.equal(i.extraPorts.length, spec.ports - 1, 'extraPorts: one per port beyond the first')
        t.equal(i.proto, spec.backendProto, 'proto')
        // A real cluster's timestamps have whole seconds: allow one before the call.
        t.ok(i.startedAt >= before - 1000 && i.startedAt <= Date.now(), 'startedAt is when it started, not in the future')
        t.equal(typeof i.healthy, 'boolean', 'healthy is a boolean')
        t.ok(i.flags instanceof Set, 'flags is a Set')
        if (real) t.equal((await call(`http://${i.host}:${i.port}${spec.healthCheck.url}`)).status, 200, 'host:port reach the instance')
      }
    },
  },

  {
    name: 'close() leaves the backend refusing new services (and, where it stops instances, nothing running)',
    async run(t, { backend, real, closeStops }) {
      const id = 'svc-close'
      await backend.ensureService(specOf(id))
      await until('one healthy instance', () => exactlyHealthy(backend, id, 1))
      if (real) t.ok(processesWithEnv(envOf(id)).length > 0, 'its processes run')
      await backend.close()
      await t.rejects(backend.ensureService(specOf('svc-after-close')), 'ensureService rejects once closed')
      t.same(processesWithEnv(envOf('svc-after-close')), [], 'and started nothing')
      if (closeStops) await until('nothing left running', () => processesWithEnv(envOf(id)).length === 0, 5000)
    },
  },
]

for (const [kind, make] of Object.entries(BACKENDS)) {
  t.test(kind, async (t) => {
    for (const c of CASES) await t.test(c.name, async (t) => c.run(t, await make(t)))
  })
}
