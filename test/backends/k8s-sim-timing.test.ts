/**
 * The Kubernetes simulator's realistic-timing mode: a real cluster's kubelet and controller
 * intervals, scaled by a clock factor. What the backend-parity tests run against, shown here
 * against the raw API: the CrashLoopBackOff schedule, a container's end seen only at the PLEG's
 * relist, a PID 1 deaf to a SIGTERM it has no handler for.
 */
import t, { type Test } from 'tap'
import { spawn } from 'node:child_process'
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Agent, request } from 'undici'
import { catches } from '../fixtures/k8s-sim/kubelet.ts'
import { realisticTiming, startKubeSimulator, type Simulator, type SimulatorOptions } from '../fixtures/k8s-sim/simulator.ts'
import { SIM_NAMESPACE, SIM_TOKEN, waitFor } from '../fixtures/router.ts'
import type { KObject } from '../fixtures/k8s-sim/store.ts'

interface Cluster {
  readonly sim: Simulator
  /** Creates a one-pod ReplicaSet running `command` (no shell unless it names one). */
  replicaSet(name: string, command: string[], graceSeconds?: number): Promise<void>
  deletePod(name: string, graceSeconds: number): Promise<void>
  pods(): KObject[]
}

async function cluster(t: Test, options: Partial<SimulatorOptions>): Promise<Cluster> {
  // Removed only once every pod has stopped (see kubernetes.test.ts's setup).
  const dir = mkdtempSync(join(tmpdir(), 'maitre-k8s-timing-'))
  const sim = await startKubeSimulator({ token: SIM_TOKEN, workDir: join(dir, 'sim'), ...options })
  const trusting = new Agent({ connect: { ca: sim.ca } })
  t.teardown(async () => {
    await trusting.close()
    await sim.close()
    rmSync(dir, { recursive: true, force: true })
  })
  const h = { authorization: `Bearer ${SIM_TOKEN}`, 'content-type': 'application/json' }
  const send = async (url: string, method: 'POST' | 'DELETE', body: unknown): Promise<void> => {
    const res = await request(url, { dispatcher: trusting, method, headers: h, body: JSON.stringify(body) })
    await res.body.dump()
    if (res.statusCode >= 300) throw new Error(`${method} ${url}: ${res.statusCode}`)
  }
  return {
    sim,
    replicaSet: (name, command, graceSeconds = 30) =>
      send(`${sim.url}/apis/apps/v1/namespaces/${SIM_NAMESPACE}/replicasets`, 'POST', {
        apiVersion: 'apps/v1',
        kind: 'ReplicaSet',
        metadata: { name },
        spec: { replicas: 1, selector: { matchLabels: { app: name } }, template: { metadata: { labels: { app: name } }, spec: { terminationGracePeriodSeconds: graceSeconds, containers: [{ name: 'app', image: 'maitre-app', command }] } } },
      }),
    deletePod: (name, graceSeconds) => send(`${sim.url}/api/v1/namespaces/${SIM_NAMESPACE}/pods/${name}`, 'DELETE', { kind: 'DeleteOptions', apiVersion: 'v1', gracePeriodSeconds: graceSeconds }),
    pods: () => sim.list('pods', SIM_NAMESPACE),
  }
}

/** Samples `read` every few milliseconds until `done`, keeping each change with when it was seen. */
async function changes<T>(read: () => T, done: (value: T) => boolean, timeoutMs: number): Promise<{ at: number; value: T }[]> {
  const seen: { at: number; value: T }[] = []
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = read()
    if (seen.length === 0 || JSON.stringify(seen[seen.length - 1]?.value) !== JSON.stringify(value)) seen.push({ at: Date.now(), value })
    if (done(value)) return seen
    if (Date.now() > deadline) throw new Error(`timed out; seen: ${JSON.stringify(seen)}`)
    await new Promise((resolve) => setTimeout(resolve, 3))
  }
}

t.test('realistic timing is a real cluster’s intervals times the clock factor; what the pod spec sets and the informer lag are not scaled', async (t) => {
  t.same(realisticTiming(0.1), {
    crashBackoffMs: 1000,
    maxCrashBackoffMs: 30_000,
    containerStartMs: 100,
    imagePullMs: 100,
    plegRelistMs: 100,
    expectationsTimeoutMs: 30_000,
    controllerLagMs: { pods: 300, replicasets: 100 },
    pid1SignalImmunity: true,
  })
  t.same(realisticTiming(1).crashBackoffMs, 10_000, 'factor 1 is real time: CrashLoopBackOff starts at 10 s')
  t.same(realisticTiming(1).maxCrashBackoffMs, 300_000, 'and caps at 5 minutes')
  t.same(realisticTiming(0.5, { pods: 50, replicasets: 0 }).controllerLagMs, { pods: 50, replicasets: 0 })
  t.throws(() => realisticTiming(0), /clockFactor must be in \(0, 1\]/)
  t.throws(() => realisticTiming(2), /clockFactor must be in \(0, 1\]/)
})

t.test('CrashLoopBackOff at a real cluster’s proportions: the first restart at once, then the base doubling; restartCount rises at each restart', async (t) => {
  // Base 200 ms (10 s at a fiftieth), the PLEG's relist 20 ms.
  const { replicaSet, pods } = await cluster(t, realisticTiming(0.02))
  await replicaSet('crasher', ['/bin/sh', '-c', 'exit 3'])
  const restarts = await changes(() => (pods()[0]?.status?.containerStatuses?.[0]?.restartCount as number | undefined) ?? 0, (n) => n >= 4, 15_000)
  t.same(restarts.map((r) => r.value), [0, 1, 2, 3, 4], 'one restart at a time')
  const gaps = restarts.slice(1).map((r, i) => r.at - (restarts[i]?.at ?? 0))
  // After restart k the container crashes at once; restart k+1 waits out 200·2^(k-1) ms.
  for (const [k, want] of [[1, 200], [2, 400], [3, 800]] as const) {
    const gap = gaps[k] as number
    t.ok(gap >= want - 5 && gap < want + 600, `restart ${k + 1} came ${gap} ms after restart ${k}: the ${want} ms back-off`)
  }
  t.ok((gaps[0] as number) < 400, `the first restart came ${gaps[0] as number} ms after the container started: at once`)
  const waiting = pods()[0]?.status?.containerStatuses?.[0]
  t.match(waiting, { lastState: { terminated: { exitCode: 3 } } }, 'the last run’s end is on record')
})

t.test('a container’s end is seen at the PLEG’s next relist, not at once: until then the pod shows it running', async (t) => {
  // A 1 s relist, relists on the wall clock's whole seconds; restarts at once, then after 50 ms.
  const relistMs = 1000
  const { replicaSet, pods } = await cluster(t, { plegRelistMs: relistMs, crashBackoffMs: 50, maxCrashBackoffMs: 50 })
  await replicaSet('ender', ['/bin/sh', '-c', 'exit 4'])
  const terminations = (await changes(() => {
    const cs = pods()[0]?.status?.containerStatuses?.[0]
    return cs?.state?.terminated === undefined ? undefined : (cs.restartCount as number)
  }, (n) => n !== undefined && n >= 2, 10_000)).filter((c) => c.value !== undefined)
  t.equal(terminations.length, 3, 'three runs ended')
  // A run ends milliseconds after it starts, anywhere in a relist period; each is seen at a
  // relist. Without the PLEG, three ends seen within 350 ms after a whole second is a 1-in-80 chance.
  for (const end of terminations) t.ok(end.at % relistMs < 350, `run ${end.value as number}'s end seen ${end.at % relistMs} ms into a relist period`)
})

t.test('a PID 1 with no SIGTERM handler ignores SIGTERM and runs until the grace period’s SIGKILL; one with a handler stops at once', async (t) => {
  const { replicaSet, deletePod, pods } = await cluster(t, { pid1SignalImmunity: true })
  await replicaSet('deaf', ['sleep', '60'], 2)
  await replicaSet('polite', ['/bin/sh', '-c', 'trap "exit 0" TERM; while :; do sleep 0.05; done'], 2)
  const running = await waitFor('two running pods', () => {
    const live = pods().filter((p) => p.status?.containerStatuses?.[0]?.state?.running !== undefined)
    return live.length === 2 ? live : undefined
  }, 10_000)
  const nameOf = (app: string): string => running.find((p) => p.metadata.labels.app === app)?.metadata.name as string
  // The shell's trap is in place (its SigCgt shows it) before the delete: else a real PID 1 would drop the SIGTERM too.
  const trapped = readdirSync('/proc').filter((d) => /^\d+$/.test(d)).map(Number).filter((pid) => {
    try {
      return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('trap "exit 0" TERM; while')
    } catch {
      return false
    }
  })
  await waitFor('the polite pod’s trap installed', () => (trapped.some((pid) => catches(pid, 'SIGTERM')) ? true : undefined), 5000)
  const stopTime = async (name: string): Promise<number> => {
    const from = Date.now()
    await deletePod(name, 2)
    await waitFor(`${name} gone`, () => (pods().some((p) => p.metadata.name === name) ? undefined : true), 10_000)
    return Date.now() - from
  }
  const [deaf, polite] = await Promise.all([stopTime(nameOf('deaf')), stopTime(nameOf('polite'))])
  t.ok(deaf >= 1900, `sleep as PID 1 ran on to the 2 s grace period’s SIGKILL (${deaf} ms)`)
  t.ok(polite < 1500, `a shell that traps TERM stopped at once (${polite} ms)`)
})

t.test('catches() reads whether a process handles a signal', async (t) => {
  const deaf = spawn('sleep', ['30'])
  const polite = spawn('/bin/sh', ['-c', 'trap "exit 0" TERM; while :; do sleep 0.05; done'])
  t.teardown(() => {
    deaf.kill('SIGKILL')
    polite.kill('SIGKILL')
  })
  await waitFor('the trap installed', () => (catches(polite.pid as number, 'SIGTERM') ? true : undefined), 5000)
  t.equal(catches(deaf.pid as number, 'SIGTERM'), false, 'sleep has no SIGTERM handler')
  t.equal(catches(polite.pid as number, 'SIGUSR1'), false, 'the shell handles only what it traps')
  t.equal(catches(2 ** 22 + 1, 'SIGTERM'), false, 'a process that is not there handles nothing')
})
