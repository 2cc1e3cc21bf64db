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

interface ContainerState {
  readonly at: number
  readonly restartCount: number
  /** running, terminated or waiting */
  readonly state: string
  readonly reason: string | undefined
}

/** Every change of the first pod's container state, timed when the simulator writes it. */
function containerStates(t: Test, sim: Simulator): ContainerState[] {
  const states: ContainerState[] = []
  t.teardown(
    sim.observe((resource, pod) => {
      const cs = resource === 'pods' ? pod.status?.containerStatuses?.[0] : undefined
      if (cs === undefined) return
      const state = Object.keys(cs.state ?? {})[0] ?? ''
      const reason = cs.state?.[state]?.reason as string | undefined
      const last = states[states.length - 1]
      if (last !== undefined && last.restartCount === cs.restartCount && last.state === state && last.reason === reason) return
      states.push({ at: Date.now(), restartCount: cs.restartCount as number, state, reason })
    }),
  )
  return states
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
  // Base 500 ms (10 s at a twentieth), the PLEG's relist 50 ms: a base well above what a
  // container's spawn takes on a loaded machine (up to ~250 ms seen), so "at once" is told
  // from "after the base" by the clock, not only by the states. Each wait is timed from the
  // simulator's own writes (containerStates).
  const { sim, replicaSet, pods } = await cluster(t, realisticTiming(0.05))
  const states = containerStates(t, sim)
  await replicaSet('crasher', ['/bin/sh', '-c', 'exit 3'])
  await waitFor('restart 4', () => (states.some((s) => s.restartCount === 4 && s.state === 'running') ? true : undefined), 15_000)
  const starts = states.filter((s) => s.state === 'running')
  t.same(starts.map((s) => s.restartCount), [0, 1, 2, 3, 4], 'one restart at a time')
  // Each wait runs from the write that shows run k-1 ended to the write that shows run k started:
  // the simulator's own times, so neither the container's run nor this test's sampling is in it.
  const waits = starts.slice(1).map((start) => {
    const ended = states.filter((s) => s.restartCount === start.restartCount - 1 && s.state === 'terminated' && s.at <= start.at).pop()
    return { waitMs: ended === undefined ? Infinity : start.at - ended.at, backedOff: states.some((s) => s.restartCount === start.restartCount - 1 && s.reason === 'CrashLoopBackOff') }
  })
  t.same(waits.map((w) => w.backedOff), [false, true, true, true], 'no CrashLoopBackOff before the first restart, one before each later one')
  // The first waits only for the kubelet's next sync (10 ms), the spawns of the container and its
  // watchdog, and this process's event loop.
  const first = waits[0]?.waitMs as number
  t.ok(first < 500, `the first restart came ${first} ms after the run ended: at once, before the 500 ms base could pass`)
  // After restart k the container crashes at once; restart k+1 waits out 500·2^(k-1) ms, plus
  // the same spawns as the first: so each wait less the first is the back-off alone (a linear
  // 500·k would read 1500 at the third).
  for (const [k, want] of [[1, 500], [2, 1000], [3, 2000]] as const) {
    const wait = waits[k]?.waitMs as number
    t.ok(wait >= want - 5 && wait - first < want + 400, `restart ${k + 1} came ${wait} ms after run ${k} ended (${wait - first} beyond the first's ${first}): the ${want} ms back-off`)
  }
  const waiting = pods()[0]?.status?.containerStatuses?.[0]
  t.match(waiting, { lastState: { terminated: { exitCode: 3 } } }, 'the last run’s end is on record')
})

t.test('a container’s end is seen at the PLEG’s next relist, not at once: until then the pod shows it running', async (t) => {
  // A 1 s relist, relists on the wall clock's whole seconds; restarts at once, then after 50 ms.
  const relistMs = 1000
  const { sim, replicaSet } = await cluster(t, { plegRelistMs: relistMs, crashBackoffMs: 50, maxCrashBackoffMs: 50 })
  const states = containerStates(t, sim)
  await replicaSet('ender', ['/bin/sh', '-c', 'exit 4'])
  await waitFor('three runs ended', () => (states.filter((s) => s.state === 'terminated').length >= 3 ? true : undefined), 10_000)
  const terminations = states.filter((s) => s.state === 'terminated').slice(0, 3)
  t.same(terminations.map((s) => s.restartCount), [0, 1, 2], 'three runs ended, one after the other')
  // A run ends milliseconds after it starts, and the next starts 10 then 50 ms after its end is
  // seen: without the PLEG the three ends would be written within ~300 ms of one another. With
  // it each waits for the next relist, on the next whole second.
  for (const [i, end] of terminations.entries()) {
    const before = terminations[i - 1]
    if (before !== undefined) t.ok(end.at - before.at >= 900, `run ${end.restartCount}'s end written ${end.at - before.at} ms after run ${before.restartCount}'s: a relist apart`)
    // The write's own time, a relist's; a timer may fire a millisecond before the whole second by
    // the wall clock, hence the 5 ms of slack before it.
    const into = ((end.at % relistMs) + 5) % relistMs - 5
    t.ok(into < 350, `run ${end.restartCount}'s end written ${into} ms into a relist period`)
  }
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
    // A 4 s grace: wide enough apart from "at once" (the end is seen at the next relist, ~1 s) for a loaded machine.
    await deletePod(name, 4)
    await waitFor(`${name} gone`, () => (pods().some((p) => p.metadata.name === name) ? undefined : true), 10_000)
    return Date.now() - from
  }
  const [deaf, polite] = await Promise.all([stopTime(nameOf('deaf')), stopTime(nameOf('polite'))])
  t.ok(deaf >= 3900, `sleep as PID 1 ran on to the 4 s grace period’s SIGKILL (${deaf} ms)`)
  t.ok(polite < 3000, `a shell that traps TERM stopped at once (${polite} ms)`)
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
