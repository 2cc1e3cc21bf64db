/**
 * Kill-safety soak for the Kubernetes backend (issue 20, item 3): scale-down under load never
 * cuts a request, even when the ReplicaSet controller's pod cache lags, by the app's own request
 * log. backend-parity's `scaleDownKeepsTheBusy` checks the same promise with ~6–17 requests and
 * one or two kills per run; this runs many load cycles against one router to gather hundreds of
 * kills in minutes. Not part of `npm test`.
 *
 *   npm run soak:k8s-kill                                   # 20 cycles, clock factor 0.1, pod cache lag 500 ms
 *   npm run soak:k8s-kill -- --cycles 3                     # a quick check that it works
 *   npm run soak:k8s-kill -- --clock-factor 1               # the kubelet's and controller's real timing
 *   npm run soak:k8s-kill -- --pod-lag-ms 1500              # a heavier lag of the controller's pod cache
 *
 * Options: --cycles N (20), --clock-factor F (0.1: realisticTiming(F) of the simulator),
 * --pod-lag-ms / --rs-lag-ms (500 / 0: the controller's informer lag per resource),
 * --max-instances (5), --clients (8), --seed (random; printed, so a run can be repeated in its
 * load pattern), --out DIR (a fresh directory under the system's temp dir), --keep (keep DIR even
 * when the run passes; it is always kept when it fails), --inject-busy-delete (a check of the
 * checker: in the first cycle the script itself deletes, through the API, a pod serving a long
 * request; that run must fail and name that pod), --shapes (the cycle shapes to take in turn:
 * full,early,rebound,sustained by default).
 *
 * One router runs in this process on the Kubernetes backend against the in-repo API simulator
 * (test/fixtures/k8s-sim), with the scaler settings backend-parity's tests use (tick 250 ms,
 * burst hold 1 s, 100 ms between kills) and its log (debug, pino JSON) in DIR/router.log. One
 * token of the kitchen test app: concurrency-level 1, max-instances 5, scale-down-factor 0.9;
 * every container run logs each request it starts, ends or has cut, and the SIGTERM it gets, to
 * DIR/requests/<pod>/<pid>.log (the pod's name comes from $HOSTNAME, which the kubelet sets).
 *
 * Each cycle: a burst from --clients clients (`/sleep` of 50–2000 ms, log-uniform) until the
 * version runs max-instances healthy, held 0.5–2.5 s; then a ramp-down where the clients leave
 * one at a time (200–900 ms apart), about 40 % of them with one last long request (3–6 s:
 * longer than the pods' 3 s grace period, so a kill of its pod would end in SIGKILL and show as
 * a start without an end), while a trickle client keeps sending short requests for 3–8 s, so that
 * requests arrive while the autoscaler kills; then a wait (on conditions, not a fixed sleep) for
 * the version to be back at one pod, nothing terminating, replicas 1. The cycles take four shapes
 * in turn (see SHAPES): 'full' as above; 'early', whose ramp-down starts once max-instances are
 * requested, pods still starting (as backend-parity's test stops at 3 healthy of 4); 'rebound',
 * where half the clients come back half-way down; 'sustained', where max-instances/2 clients send
 * long requests back to back through the whole scale-down.
 *
 * At the end every container run's log is read. What the script looks for, on any pod that did
 * not fail on its own (liveness, crash: /apps failed-instances and the router's 'instance failed'
 * lines): a `cut`, a `start` without `end` or `cut`, and a SIGTERM that arrived while a request was
 * open (a kill that hit a busy instance; with a request shorter than the grace period the app
 * still answers it, so that is the earlier sign of the same fault). Each is printed with the
 * pod's timeline (as a 50 ms poll of the simulator saw it), its whole request log, the router's
 * log lines about it and what the client got; the exit code is then 1. Also reported: requests
 * started/ended, kills (the router's 'instance killed' lines, the pod DELETEs the simulator
 * served, each deleted pod's role: chosen by maitre, a kill's replacement, or neither: picked by
 * the controller itself), the most requests any instance held at once, every client status
 * other than 200 with its body, and the router's warning and error lines by message.
 */
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, createWriteStream, existsSync } from 'node:fs'
import { Writable } from 'node:stream'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { createLogger } from '../src/log.ts'
import { Agent, request } from 'undici'
import { call, client, createToken, kitchenCmd, kitchenToken, SIM_TOKEN, startKubeRouter, waitFor, type KubeRouter, type Teardown } from '../test/fixtures/router.ts'
import { realisticTiming } from '../test/fixtures/k8s-sim/simulator.ts'
import type { KObject } from '../test/fixtures/k8s-sim/store.ts'

// ---------------------------------------------------------------------------------------------
// Options

const { values: opts } = parseArgs({
  options: {
    cycles: { type: 'string', default: '20' },
    'clock-factor': { type: 'string', default: '0.1' },
    'pod-lag-ms': { type: 'string', default: '500' },
    'rs-lag-ms': { type: 'string', default: '0' },
    'max-instances': { type: 'string', default: '5' },
    clients: { type: 'string', default: '8' },
    seed: { type: 'string' },
    out: { type: 'string' },
    keep: { type: 'boolean', default: false },
    'inject-busy-delete': { type: 'boolean', default: false },
    shapes: { type: 'string', default: 'full,early,rebound,sustained' },
  },
})

function numberOpt(name: keyof typeof opts, min: number, max: number): number {
  const raw = opts[name]
  const value = Number(raw)
  if (typeof raw !== 'string' || !Number.isFinite(value) || value < min || value > max) throw new Error(`--${name} must be a number from ${min} to ${max}, not ${String(raw)}`)
  return value
}

const CYCLES = Math.round(numberOpt('cycles', 1, 100_000))
const CLOCK_FACTOR = numberOpt('clock-factor', 0.001, 1)
const POD_LAG_MS = numberOpt('pod-lag-ms', 0, 60_000)
/** The router's log lines (src/backends/kubernetes.ts) for a kill that lowered the count without its replacement, and for one made after. */
const GAVE_UP = 'no replacement for the deleted pod; lowering replicas anyway (a late one is still claimed)'
const LATE_CLAIMED = 'a replacement came after its kill lowered the count: claimed, never an instance'
const LEFTOVER_TAKEN = "an earlier kill's replacement stayed in place of the deleted pod: the lower count takes it"
const RS_LAG_MS = numberOpt('rs-lag-ms', 0, 60_000)
const MAX_INSTANCES = Math.round(numberOpt('max-instances', 2, 50))
const CLIENTS = Math.round(numberOpt('clients', 2, 200))
const SEED = opts.seed === undefined ? Math.floor(Math.random() * 2 ** 31) : Math.round(numberOpt('seed', 0, 2 ** 31))

/** backend-parity's FAST scaler settings. */
const FAST = { 'scaler.tickMs': 250, 'scaler.burstHoldMs': 1000, 'scaler.interKillMs': 100, 'scaler.gcIntervalMs': 500 }
const TOKEN = 'kill-soak'
/** The pods' termination grace period is the backend's floor (minTerminationGraceSecs, 3 s): long requests outlast it. */
const LONG_MS: readonly [number, number] = [3000, 6000]
const BURST_MS: readonly [number, number] = [50, 2000]
const TRICKLE_MS: readonly [number, number] = [50, 800]
/** Longest waits for the conditions a cycle waits on (scaled up for slow clocks and a loaded machine). */
const SCALE_UP_TIMEOUT_MS = 60_000 + 30_000 * CLOCK_FACTOR
const SETTLE_TIMEOUT_MS = 120_000

// ---------------------------------------------------------------------------------------------
// Seeded randomness (mulberry32), so a run's load pattern can be repeated with --seed

let rngState = SEED >>> 0
function random(): number {
  rngState = (rngState + 0x6d2b79f5) >>> 0
  let x = rngState
  x = Math.imul(x ^ (x >>> 15), x | 1)
  x ^= x + Math.imul(x ^ (x >>> 7), x | 61)
  return ((x ^ (x >>> 14)) >>> 0) / 4294967296
}
const uniform = ([lo, hi]: readonly [number, number]): number => Math.round(lo + random() * (hi - lo))
/** Log-uniform: as many 50–200 ms requests as 500–2000 ms ones. */
const logUniform = ([lo, hi]: readonly [number, number]): number => Math.round(Math.exp(Math.log(lo) + random() * (Math.log(hi) - Math.log(lo))))
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

// ---------------------------------------------------------------------------------------------
// Output, teardowns, the router's log

const OUT = opts.out ?? mkdtempSync(join(tmpdir(), 'maitre-k8s-kill-soak-'))
mkdirSync(OUT, { recursive: true })
const REQUEST_LOGS = join(OUT, 'requests')
mkdirSync(REQUEST_LOGS, { recursive: true })
const ROUTER_LOG = join(OUT, 'router.log')

/** The fixtures take a tap-like test for their teardowns: run here at the end, last-registered first. */
const teardowns: (() => unknown)[] = []
const t: Teardown = {
  teardown: (fn) => void teardowns.push(fn),
  testdir: () => mkdtempSync(join(OUT, 'fixture-')),
}
async function runTeardowns(): Promise<void> {
  while (teardowns.length > 0) {
    const fn = teardowns.pop() as () => unknown
    try {
      await fn()
    } catch (err) {
      console.error('teardown failed:', err)
    }
  }
}

interface LogRecord {
  readonly time: number
  readonly level: number
  readonly msg: string
  readonly [key: string]: unknown
}
/** Every line the router logged, parsed, as well as written to DIR/router.log. */
const routerLog: LogRecord[] = []
const routerLines: string[] = []
const logFile = createWriteStream(ROUTER_LOG)
let partial = ''
const tee = new Writable({
  write(chunk: Buffer | string, _encoding, callback) {
    const text = chunk.toString()
    logFile.write(text)
    const split = (partial + text).split('\n')
    partial = split.pop() ?? ''
    for (const line of split) {
      if (line === '') continue
      routerLines.push(line)
      try {
        routerLog.push(JSON.parse(line) as LogRecord)
      } catch {
        // not JSON: kept in the file only
      }
    }
    callback()
  },
})
const log = createLogger('debug', tee)
const logsOf = (msg: string): LogRecord[] => routerLog.filter((r) => r.msg === msg)

// ---------------------------------------------------------------------------------------------
// What the clients got

interface Outcome {
  readonly cycle: number
  readonly phase: 'burst' | 'last' | 'trickle' | 'rebound' | 'sustained'
  readonly cid: string
  readonly sleepMs: number
  readonly sentAt: number
  readonly ms: number
  readonly status: number | undefined
  readonly instance: string | undefined
  readonly body: string | undefined
  readonly error: string | undefined
}
const outcomes: Outcome[] = []
/** Requests sent and not yet answered: their sleep, by cid. */
const pending = new Map<string, number>()
let requestNumber = 0

async function send(router: KubeRouter, cycle: number, phase: Outcome['phase'], sleepMs: number): Promise<void> {
  const cid = `soak-${cycle}-${++requestNumber}`
  const sentAt = Date.now()
  pending.set(cid, sleepMs)
  try {
    const reply = await call(`${router.url}/sleep?sleep-ms=${sleepMs}`, { headers: { 'x-waiter-token': TOKEN, 'x-waiter-debug': 'true', 'x-cid': cid } })
    const instance = reply.headers['x-waiter-backend-id']
    outcomes.push({ cycle, phase, cid, sleepMs, sentAt, ms: Date.now() - sentAt, status: reply.status, instance: typeof instance === 'string' ? instance : undefined, body: reply.status === 200 ? undefined : reply.text.slice(0, 2000), error: undefined })
  } catch (err) {
    outcomes.push({ cycle, phase, cid, sleepMs, sentAt, ms: Date.now() - sentAt, status: undefined, instance: undefined, body: undefined, error: String(err) })
  } finally {
    pending.delete(cid)
  }
}

// ---------------------------------------------------------------------------------------------
// The pods, as a 50 ms poll of the simulator sees them

interface PodHistory {
  readonly name: string
  readonly firstSeen: number
  readyAt: number | undefined
  deletingAt: number | undefined
  goneAt: number | undefined
  /** Marked maitre/replacement (a kill's replacement, which the lower count takes). */
  replacement: boolean
  /** Given the lowest pod-deletion-cost (a pod maitre chose to go, or a replacement). */
  lowestCost: boolean
  restarts: number
  ready: boolean
  /** When the router first listed it among the version's active instances (routable once healthy); undefined: never (hidden, e.g. as a kill's replacement). */
  instanceAt: number | undefined
  readonly notes: string[]
}
const pods = new Map<string, PodHistory>()

function watchPods(router: KubeRouter, serviceId: () => string | undefined): () => Promise<void> {
  const timer = setInterval(() => {
    const id = serviceId()
    if (id === undefined) return
    const now = Date.now()
    const listed = router.sim.list('pods', router.namespace).filter((p: KObject) => p.metadata.labels?.['maitre/service-id'] === id)
    const names = new Set<string>()
    for (const pod of listed) {
      const name = pod.metadata.name as string
      names.add(name)
      let h = pods.get(name)
      if (h === undefined) pods.set(name, (h = { name, firstSeen: now, readyAt: undefined, deletingAt: undefined, goneAt: undefined, replacement: false, lowestCost: false, restarts: 0, ready: false, instanceAt: undefined, notes: [] }))
      const ready = (pod.status?.conditions ?? []).some((c: KObject) => c.type === 'Ready' && c.status === 'True')
      // Readiness changes after the first (a busy app failing its probe, a restart) go into its notes.
      if (h.readyAt !== undefined && ready !== h.ready) h.notes.push(`${ready ? 'ready' : 'unready'} ${new Date(now).toISOString().slice(11, 23)}`)
      if (ready && h.readyAt === undefined) h.readyAt = now
      h.ready = ready
      if (pod.metadata.deletionTimestamp !== undefined && h.deletingAt === undefined) h.deletingAt = now
      if (pod.metadata.annotations?.['maitre/replacement'] === 'true') h.replacement = true
      if (pod.metadata.annotations?.['controller.kubernetes.io/pod-deletion-cost'] === '-2147483648') h.lowestCost = true
      h.restarts = Math.max(h.restarts, pod.status?.containerStatuses?.[0]?.restartCount ?? 0)
    }
    for (const h of pods.values()) if (h.goneAt === undefined && !names.has(h.name)) h.goneAt = now
  }, 50)
  // And which of them the router lists as instances (every 100 ms): a pod it never listed was never routable.
  let polling = true
  const instancesPoll = (async () => {
    while (polling) {
      const id = serviceId()
      const view = id === undefined ? undefined : await appView(router, id).catch(() => undefined)
      const now = Date.now()
      for (const instance of view?.instances['active-instances'] ?? []) {
        const h = pods.get(podOfInstance(id as string, instance.id))
        if (h !== undefined) h.instanceAt ??= now
      }
      await sleep(100)
    }
  })()
  return async () => {
    clearInterval(timer)
    polling = false
    await instancesPoll
  }
}

/** An instance id is `<service id>.<pod name>-<container run>`. */
function podOfInstance(serviceId: string, instance: string): string {
  return instance.slice(serviceId.length + 1).replace(/-\d+$/, '')
}

// ---------------------------------------------------------------------------------------------
// The router's view

interface AppView {
  'instance-counts': { 'healthy-instances': number; 'requested-instances': number }
  instances: { 'active-instances': { id: string }[]; 'failed-instances': { id: string; 'exit-code'?: number | null; message?: string }[]; 'killed-instances'?: { id: string }[] }
  scaling: unknown
}

async function appView(router: KubeRouter, id: string): Promise<AppView> {
  return (await call(`${router.url}/apps/${id}`)).json<AppView>()
}

/** Settled: one pod, ready and not terminating, nothing else left, replicas 1, and the router agrees. */
async function settled(router: KubeRouter, id: string): Promise<boolean> {
  const view = await appView(router, id)
  if (view['instance-counts']['requested-instances'] !== 1 || view.instances['active-instances'].length !== 1) return false
  const live = router.sim.list('pods', router.namespace).filter((p: KObject) => p.metadata.labels?.['maitre/service-id'] === id)
  if (live.length !== 1 || live[0]?.metadata.deletionTimestamp !== undefined) return false
  const rs = router.sim.list('replicasets', router.namespace).find((r: KObject) => r.metadata.annotations?.['maitre/service-id'] === id)
  return rs?.spec.replicas === 1 && rs.status?.replicas === 1
}

// ---------------------------------------------------------------------------------------------
// One cycle

interface CycleFigures {
  readonly cycle: number
  readonly shape: string
  readonly requests: number
  readonly non200: number
  readonly peakHealthy: number
  readonly kills: number
  readonly seconds: number
  readonly notes: string[]
}
const anomalies: string[] = []

/**
 * The cycles take turns: 'full' ramps down once max-instances are healthy; 'early' as soon as
 * they are requested (pods still starting: kills of unready pods, kills racing the scale-up's
 * pods); 'rebound' brings half the clients back half-way down for 1–2.5 s (scale-ups during kills);
 * 'sustained' keeps max-instances/2 clients sending long requests back to back for 8–14 s from
 * the start of the ramp-down, so the scale-down kills with busy pods all around (a pod the
 * controller takes in place of maitre's choice is then likely a busy one).
 */
const ALL_SHAPES = ['full', 'early', 'rebound', 'sustained'] as const
type Shape = (typeof ALL_SHAPES)[number]
const SHAPES: readonly Shape[] = (opts.shapes ?? '').split(',').map((name) => {
  if (!(ALL_SHAPES as readonly string[]).includes(name)) throw new Error(`--shapes takes a list of ${ALL_SHAPES.join(', ')}, not ${opts.shapes ?? ''}`)
  return name as Shape
})

async function cycle(router: KubeRouter, id: string, n: number): Promise<CycleFigures> {
  const shape: Shape = SHAPES[(n - 1) % SHAPES.length] as Shape
  const began = Date.now()
  const requestsBefore = outcomes.length
  const killsBefore = logsOf('instance killed').length
  const notes: string[] = []
  // Burst: every client loops until told to leave; a leaving client sends one last request, long or short.
  const leave: ('long' | 'short' | undefined)[] = Array.from({ length: CLIENTS }, () => undefined)
  const clients = Array.from({ length: CLIENTS }, async (_, c) => {
    while (leave[c] === undefined) await send(router, n, 'burst', logUniform(BURST_MS))
    await send(router, n, 'last', leave[c] === 'long' ? uniform(LONG_MS) : logUniform(BURST_MS))
  })
  let peakHealthy = 0
  try {
    if (shape === 'early') {
      // The ramp-down starts as soon as the count is up, while pods still start (as in backend-parity, which stops at 3 healthy of 4).
      await waitFor(`${MAX_INSTANCES} instances requested`, async () => {
        const counts = (await appView(router, id))['instance-counts']
        peakHealthy = Math.max(peakHealthy, counts['healthy-instances'])
        return counts['requested-instances'] >= MAX_INSTANCES ? true : undefined
      }, SCALE_UP_TIMEOUT_MS)
    } else {
      await waitFor(`${MAX_INSTANCES} healthy instances`, async () => {
        const healthy = (await appView(router, id))['instance-counts']['healthy-instances']
        peakHealthy = Math.max(peakHealthy, healthy)
        return healthy >= MAX_INSTANCES ? true : undefined
      }, SCALE_UP_TIMEOUT_MS)
    }
  } catch (err) {
    notes.push(`scale-up: ${String(err)} (peak ${peakHealthy} healthy)`)
  }
  await sleep(shape === 'early' ? uniform([0, 300]) : uniform([500, 2500]))
  // Ramp-down: clients leave one at a time, some with a long last request, while one trickles on.
  const trickleUntil = Date.now() + uniform([3000, 8000])
  const trickle = (async () => {
    while (Date.now() < trickleUntil) {
      await send(router, n, 'trickle', logUniform(TRICKLE_MS))
      await sleep(uniform([0, 400]))
    }
  })()
  const order = [...leave.keys()].sort(() => random() - 0.5)
  const injection = INJECT && n === 1 ? injectBusyDelete(router, n).catch((err: unknown) => void notes.push(`injection: ${String(err)}`)) : undefined
  const rebound: Promise<void>[] = []
  if (shape === 'sustained') {
    const until = Date.now() + uniform([8000, 14_000])
    for (let k = 0; k < Math.floor(MAX_INSTANCES / 2); k++) {
      rebound.push((async () => {
        while (Date.now() < until) await send(router, n, 'sustained', uniform(LONG_MS))
      })())
    }
  }
  for (const [i, c] of order.entries()) {
    // The injection needs a long request: the first client to leave sends one.
    leave[c] = (INJECT && n === 1 && i === 0) || random() < 0.4 ? 'long' : 'short'
    await sleep(uniform([200, 900]))
    if (shape === 'rebound' && i === Math.floor(order.length / 2)) {
      // Load comes back half-way down: the autoscaler scales up again while kills are under way.
      const until = Date.now() + uniform([1000, 2500])
      for (let k = 0; k < Math.ceil(CLIENTS / 2); k++) {
        rebound.push((async () => {
          while (Date.now() < until) await send(router, n, 'rebound', logUniform(BURST_MS))
        })())
      }
    }
  }
  await Promise.all(rebound)
  await injection
  await Promise.all([...clients, trickle])
  // Settle: back to one pod, nothing terminating, before the next burst.
  try {
    await waitFor('the scale-down to settle at one pod', async () => ((await settled(router, id)) ? true : undefined), SETTLE_TIMEOUT_MS)
  } catch (err) {
    const view = await appView(router, id).catch(() => undefined)
    notes.push(`settle: ${String(err)}; /apps: ${JSON.stringify(view?.['instance-counts'])} active ${JSON.stringify(view?.instances['active-instances'].map((i) => i.id))}`)
  }
  const mine = outcomes.slice(requestsBefore)
  for (const note of notes) anomalies.push(`cycle ${n}: ${note}`)
  return {
    cycle: n,
    shape,
    requests: mine.length,
    non200: mine.filter((o) => o.status !== 200).length,
    peakHealthy,
    kills: logsOf('instance killed').length - killsBefore,
    seconds: (Date.now() - began) / 1000,
    notes,
  }
}

// ---------------------------------------------------------------------------------------------
// The check of the checker: a busy pod deleted behind maitre's back

const INJECT = opts['inject-busy-delete'] === true
const injected = new Set<string>()

/** Deletes (the pod's own grace period) a pod whose request log shows a long request of this cycle open. */
async function injectBusyDelete(router: KubeRouter, n: number): Promise<void> {
  const pod = await waitFor('a pod serving a long request', () => {
    for (const r of readRunLogs()) {
      // A long request with more to go than the 3 s grace period: the SIGKILL cuts it.
      const open = r.unanswered.filter((cid) => cid.startsWith(`soak-${n}-`) && (pending.get(cid) ?? 0) >= LONG_MS[0])
      const cuttable = (l: string): boolean => {
        const [at, what, cid] = l.split(' ')
        return what === 'start' && open.includes(cid as string) && Date.now() - Number(at) < (pending.get(cid as string) ?? 0) - 3500
      }
      if (r.lines.some(cuttable)) return r.pod
    }
    return undefined
  }, 10_000)
  const dispatcher = new Agent({ connect: { ca: router.sim.ca } })
  try {
    const res = await request(`${router.sim.url}/api/v1/namespaces/${router.namespace}/pods/${pod}`, { method: 'DELETE', dispatcher, headers: { authorization: `Bearer ${SIM_TOKEN}` } })
    await res.body.dump()
    if (res.statusCode !== 200) throw new Error(`DELETE of pod ${pod}: ${res.statusCode}`)
  } finally {
    await dispatcher.close()
  }
  injected.add(pod)
  console.log(`injected: deleted busy pod ${pod}`)
}

// ---------------------------------------------------------------------------------------------
// The instances' own logs

interface RunLog {
  readonly pod: string
  readonly pid: string
  readonly file: string
  readonly lines: string[]
  readonly started: number
  readonly ended: number
  readonly cut: string[]
  readonly unanswered: string[]
  /** Requests open when SIGTERM came (cids). */
  readonly busyAtSigterm: string[]
  readonly sigterm: boolean
  readonly mostAtOnce: number
}

function readRunLogs(): RunLog[] {
  const runs: RunLog[] = []
  for (const pod of readdirSync(REQUEST_LOGS).sort()) {
    const dir = join(REQUEST_LOGS, pod)
    for (const file of readdirSync(dir).sort()) {
      const path = join(dir, file)
      const lines = readFileSync(path, 'utf8').split('\n').filter((l) => l !== '')
      const open = new Set<string>()
      const cut: string[] = []
      const busyAtSigterm: string[] = []
      let started = 0
      let ended = 0
      let sigterm = false
      let mostAtOnce = 0
      for (const line of lines) {
        const [, what, cid] = line.split(' ')
        if (what === 'start') {
          started += 1
          open.add(cid as string)
        } else if (what === 'end') {
          ended += 1
          open.delete(cid as string)
        } else if (what === 'cut') {
          cut.push(line)
          open.delete(cid as string)
        } else if (what === 'sigterm') {
          sigterm = true
          busyAtSigterm.push(...open)
        }
        mostAtOnce = Math.max(mostAtOnce, open.size)
      }
      runs.push({ pod, pid: file.replace(/\.log$/, ''), file: path, lines, started, ended, cut, unanswered: [...open], busyAtSigterm, sigterm, mostAtOnce })
    }
  }
  return runs
}

// ---------------------------------------------------------------------------------------------
// Main

async function main(): Promise<number> {
  const runStarted = Date.now()
  const timing = { ...realisticTiming(CLOCK_FACTOR), controllerLagMs: { pods: POD_LAG_MS, replicasets: RS_LAG_MS } }
  console.log(`k8s kill soak: ${CYCLES} cycles (${SHAPES.join(', ')} in turn), clock factor ${CLOCK_FACTOR}, controller lag pods ${POD_LAG_MS} ms / replicasets ${RS_LAG_MS} ms, max-instances ${MAX_INSTANCES}, ${CLIENTS} clients, seed ${SEED}`)
  console.log(`output: ${OUT} (router.log, requests/<pod>/<pid>.log)`)
  const router = await startKubeRouter(t, FAST, timing, { log })
  // The pod's name is its hostname: each pod logs into a directory of its own.
  const podLogDir = `${REQUEST_LOGS}/$HOSTNAME`
  await createToken(router, TOKEN, kitchenToken({
    'concurrency-level': 1,
    'max-instances': MAX_INSTANCES,
    'scale-down-factor': 0.9,
    cmd: `mkdir -p ${podLogDir} && ${kitchenCmd(`--request-log-dir ${podLogDir}`)}`,
  }))
  const id = (await call(`${router.url}/service-id`, { headers: { 'x-waiter-token': TOKEN } })).text
  const stopWatching = watchPods(router, () => id)
  t.teardown(stopWatching)
  const first = await call(`${router.url}/status`, { headers: { 'x-waiter-token': TOKEN } })
  if (first.status !== 200) throw new Error(`the version did not start: ${first.status} ${first.text}`)
  console.log(`service ${id}`)

  const figures: CycleFigures[] = []
  for (let n = 1; n <= CYCLES; n++) {
    const f = await cycle(router, id, n)
    figures.push(f)
    console.log(`cycle ${n}/${CYCLES} (${f.shape}): ${f.requests} requests (${f.non200} not 200), peak ${f.peakHealthy} healthy, ${f.kills} kills, ${f.seconds.toFixed(1)} s${f.notes.length > 0 ? ` — ${f.notes.join('; ')}` : ''}`)
  }
  const loadSeconds = (Date.now() - runStarted) / 1000

  // Who failed on its own: /apps (its last 10) and every 'instance failed' line of the router.
  const view = await appView(router, id)
  const failedIds = new Set([...view.instances['failed-instances'].map((i) => i.id), ...logsOf('instance failed').map((r) => String(r['instance']))])
  const failedPods = new Set([...failedIds].map((instance) => podOfInstance(id, instance)))
  const chosenPods = new Set(logsOf('instance killed').map((r) => String(r['pod'])))
  const runs = readRunLogs()
  const byCid = new Map(outcomes.map((o) => [o.cid, o]))

  // Each deleted pod's role.
  const deleted = [...pods.values()].filter((h) => h.deletingAt !== undefined || h.goneAt !== undefined)
  const role = (h: PodHistory): string =>
    injected.has(h.name)
      ? "deleted by the soak's injection"
      : chosenPods.has(h.name)
        ? 'chosen by maitre'
        : h.replacement
          ? "a kill's replacement"
          : failedPods.has(h.name)
            ? 'failed on its own'
            : h.instanceAt === undefined
              ? 'never an instance (a late replacement the router hid, unmarked)'
              : 'picked by the controller'
  const roles = new Map<string, number>()
  for (const h of deleted) roles.set(role(h), (roles.get(role(h)) ?? 0) + 1)
  // Deleted neither by maitre's choice nor as a replacement: a pod the router never listed was
  // never routable (shown, not judged); one it listed is the hazard itself.
  const unchosen = deleted.filter((h) => role(h) === 'picked by the controller' || role(h).startsWith('never an instance'))

  // The failures looked for: on pods that did not fail on their own.
  const judged = runs.filter((r) => !failedPods.has(r.pod))
  const bad = judged.filter((r) => r.cut.length > 0 || r.unanswered.length > 0 || r.busyAtSigterm.length > 0)
  const excused = runs.filter((r) => failedPods.has(r.pod) && (r.cut.length > 0 || r.unanswered.length > 0 || r.busyAtSigterm.length > 0))

  const sum = (f: (r: RunLog) => number, of = runs): number => of.reduce((a, r) => a + f(r), 0)
  const non200 = outcomes.filter((o) => o.status !== 200)
  // How hard the kills were tested: requests in flight (anywhere in the version) at each kill.
  const inFlightAt = (at: number): Outcome[] => outcomes.filter((o) => o.sentAt <= at && at <= o.sentAt + o.ms)
  const killTimes = logsOf('instance killed').map((r) => r.time)
  const killsUnderLoad = killTimes.filter((at) => inFlightAt(at).length > 0).length
  const killsUnderLong = killTimes.filter((at) => inFlightAt(at).some((o) => o.sleepMs >= LONG_MS[0])).length
  const podDeletes = router.sim.requests.filter(([resource, verb]) => resource === 'pods' && verb === 'delete').length
  const lines = (pod: string): string[] => routerLines.filter((l) => l.includes(pod))

  const fmt = (ms: number | undefined): string => (ms === undefined ? '-' : new Date(ms).toISOString().slice(11, 23))
  const timeline = (name: string): string => {
    const h = pods.get(name)
    return h === undefined
      ? '(never seen by the poll)'
      : `seen ${fmt(h.firstSeen)}, ready ${fmt(h.readyAt)}, deleting ${fmt(h.deletingAt)}, gone ${fmt(h.goneAt)}, listed as an instance ${fmt(h.instanceAt)}, role ${role(h)}, replacement mark ${h.replacement}, lowest cost ${h.lowestCost}, restarts ${h.restarts}${h.notes.length > 0 ? `, ${h.notes.join(', ')}` : ''}`
  }

  console.log('')
  console.log('=== summary ===')
  console.log(`cycles: ${figures.length}; load phase ${loadSeconds.toFixed(0)} s`)
  console.log(`client requests: ${outcomes.length} (${outcomes.filter((o) => o.status === 200).length} answered 200; ${outcomes.filter((o) => o.sleepMs >= LONG_MS[0]).length} long ones of ${LONG_MS[0]}–${LONG_MS[1]} ms)`)
  console.log(`container runs logged: ${runs.length} in ${new Set(runs.map((r) => r.pod)).size} pods; pods seen ${pods.size}`)
  console.log(`requests started: ${sum((r) => r.started)}, ended: ${sum((r) => r.ended)}, cut: ${sum((r) => r.cut.length)}, started without end: ${sum((r) => r.unanswered.length)}`)
  console.log(`SIGTERMs received: ${runs.filter((r) => r.sigterm).length}; with a request open: ${sum((r) => r.busyAtSigterm.length)}`)
  console.log(`kills: ${logsOf('instance killed').length} ('instance killed' lines); pod DELETEs served by the simulator: ${podDeletes}; 'scaling decision' with a kill: ${logsOf('scaling decision').filter((r) => r['killed'] !== undefined).length}`)
  console.log(`kills with requests in flight: ${killsUnderLoad} of ${killTimes.length}; with a long (≥ ${LONG_MS[0]} ms) request in flight: ${killsUnderLong}`)
  console.log(`pods deleted: ${deleted.length} — ${[...roles].map(([k, v]) => `${v} ${k}`).join(', ') || 'none'}`)
  const unchosenListed = unchosen.filter((h) => h.instanceAt !== undefined)
  console.log(`pods deleted that maitre neither chose nor marked: ${unchosen.length}; of them listed by the router as instances (routable, so picked by the controller among serving pods): ${unchosenListed.length}, having served ${unchosenListed.reduce((a, h) => a + runs.filter((r) => r.pod === h.name).reduce((b, r) => b + r.started, 0), 0)} request(s) in all`)
  console.log(`replacement barrier given up (count lowered without a replacement): ${logsOf(GAVE_UP).length}; late replacements claimed: ${logsOf(LATE_CLAIMED).length}; earlier replacements taken in place of a new one: ${logsOf(LEFTOVER_TAKEN).length}; replacements kept as instances: ${logsOf('pods made during a kill stay: the count asks for them').length}`)
  console.log(`instances failed on their own: ${failedIds.size}${failedIds.size > 0 ? ` (${[...failedIds].join(', ')})` : ''}`)
  console.log(`most concurrent requests any instance held: ${Math.max(0, ...runs.map((r) => r.mostAtOnce))}`)
  console.log(`client statuses other than 200: ${non200.length}`)
  for (const o of non200) console.log(`  cycle ${o.cycle} ${o.phase} ${o.cid} sleep ${o.sleepMs} ms after ${o.ms} ms: ${o.status ?? o.error} ${o.body ?? ''}`)
  const warnings = new Map<string, number>()
  for (const r of routerLog) if (r.level >= 40) warnings.set(`${r.level >= 50 ? 'error' : 'warn'}: ${r.msg}`, (warnings.get(`${r.level >= 50 ? 'error' : 'warn'}: ${r.msg}`) ?? 0) + 1)
  console.log(`router warnings and errors: ${[...warnings].map(([k, v]) => `${v}× ${k}`).join('; ') || 'none'}`)
  if (anomalies.length > 0) {
    console.log(`anomalies (${anomalies.length}):`)
    for (const a of anomalies) console.log(`  ${a}`)
  }
  // A pod the controller took on its own: harmless while it never served, the hazard itself if it did.
  for (const h of unchosen.filter((p) => p.instanceAt === undefined)) console.log(`never-listed pod deleted by the controller: ${h.name}: ${timeline(h.name)}`)
  for (const h of unchosenListed) {
    const served = runs.filter((r) => r.pod === h.name)
    const started = served.reduce((a, r) => a + r.started, 0)
    console.log('')
    console.log(`--- pod deleted that maitre did not choose: ${h.name} (${h.instanceAt === undefined ? 'never listed as an instance' : 'LISTED AS AN INSTANCE'}; it served ${started} request(s)) ---`)
    console.log(`timeline: ${timeline(h.name)}`)
    for (const r of served) for (const line of r.lines) console.log(`  request log: ${fmt(Number(line.split(' ')[0]))} ${line}`)
    const at = h.deletingAt ?? h.goneAt ?? h.firstSeen
    console.log("the router's log lines about it, and its kill and scale lines from 6 s before it was seen to 1 s after it went:")
    const from = h.firstSeen - 6000
    const to = (h.goneAt ?? at) + 1000
    for (const [i, r] of routerLog.entries()) {
      const about = routerLines[i]?.includes(h.name) === true
      const nearby = r.time >= from && r.time <= to && ['instance killed', 'scaled', 'scaling decision', GAVE_UP, LATE_CLAIMED, LEFTOVER_TAKEN, 'pods made during a kill stay: the count asks for them'].includes(r.msg)
      if (about || nearby) console.log(`  ${fmt(r.time)} ${routerLines[i] ?? ''}`)
    }
    for (const other of [...pods.values()].filter((p) => p.name !== h.name && p.firstSeen >= from && p.firstSeen <= to)) console.log(`  other pod ${other.name}: ${timeline(other.name)}`)
  }
  if (unchosenListed.length > 0) console.log('')
  for (const r of excused) console.log(`(pod ${r.pod} failed on its own; its unanswered/cut requests are not a scale-down's: ${[...r.cut, ...r.unanswered, ...r.busyAtSigterm].join(' | ')})`)

  for (const r of bad) {
    console.log('')
    console.log(`=== FAILURE: pod ${r.pod}, pid ${r.pid} ===`)
    if (r.cut.length > 0) console.log(`cut: ${r.cut.join(' | ')}`)
    if (r.unanswered.length > 0) console.log(`started without end: ${r.unanswered.join(', ')}`)
    if (r.busyAtSigterm.length > 0) console.log(`open when SIGTERM came: ${r.busyAtSigterm.join(', ')}`)
    for (const cid of new Set([...r.unanswered, ...r.busyAtSigterm, ...r.cut.map((l) => l.split(' ')[2] as string)])) {
      const o = byCid.get(cid)
      console.log(`client side of ${cid}: ${o === undefined ? 'unknown' : `sent ${fmt(o.sentAt)}, sleep ${o.sleepMs} ms, ${o.status ?? o.error} after ${o.ms} ms from ${o.instance ?? '?'} ${o.body ?? ''}`}`)
    }
    console.log(`pod timeline: ${timeline(r.pod)}`)
    console.log(`its request log (${r.file}):`)
    for (const line of r.lines) console.log(`  ${fmt(Number(line.split(' ')[0]))} ${line}`)
    console.log("the router's log lines about it:")
    for (const line of lines(r.pod)) console.log(`  ${line}`)
  }

  oddities = unchosenListed.length > 0 || logsOf(GAVE_UP).length > 0 || non200.length > 0 || excused.length > 0
  const failed = bad.length > 0
  console.log('')
  console.log(failed ? `FAIL: ${bad.length} container run(s) of pods maitre killed or kept had a request cut, unanswered, or open at SIGTERM` : 'PASS: no request was cut, left unanswered or open at a SIGTERM on any pod that did not fail on its own')
  return failed ? 1 : 0
}

let code = 1
/** Set when the run saw something worth keeping the evidence of (a pod the controller picked, a barrier timeout, a non-200). */
let oddities = false
let stopping = false
const stop = async (signal: string): Promise<void> => {
  if (stopping) return
  stopping = true
  console.error(`${signal}: stopping the router and the simulator`)
  await runTeardowns()
  process.exit(130)
}
process.once('SIGINT', () => void stop('SIGINT'))
process.once('SIGTERM', () => void stop('SIGTERM'))
const began = Date.now()
try {
  code = await main()
} catch (err) {
  console.error('the soak failed to run:', err)
  code = 2
} finally {
  if (!stopping) {
    await runTeardowns()
    await client.close().catch(() => undefined)
    await new Promise<void>((resolve) => logFile.end(resolve))
    console.log(`total ${((Date.now() - began) / 1000).toFixed(0)} s`)
    // Evidence stays when anything was odd, even on a pass.
    if (code === 0 && !opts.keep && anomalies.length === 0 && !oddities && existsSync(OUT)) rmSync(OUT, { recursive: true, force: true })
    else console.log(`kept: ${OUT}`)
  }
}
process.exit(code)
