/**
 * npm run bench:keepalive [-- --trace DIR ...] [--out FILE] [--plot FILE]
 *
 * Replays Azure Functions traces (../shared/traces, Shahrad et al., ATC'20) through maitre's own
 * keep-alive decisions on a simulated clock: the autoscaler's decide(), the GC's pickGarbage()
 * and the keep-alive ledger and policy, exactly as the router calls them. What the simulation
 * adds is only what a backend would do: instances that start in STARTUP_MS, serve one request
 * at a time for the function's measured average duration, and cost the app's measured memory.
 *
 * Each app of a trace is one version (the 1-day sample has one function per app; the 8-hour
 * excerpt's functions of one app are summed). Requests of a minute arrive evenly spread over
 * it. A request is a cold start when no instance of its version is ready on arrival. Reported
 * per policy, on the paper's two axes: the 3rd-quartile (p75 over apps) cold-start %, and the
 * idle memory-time of instances (alive and not serving), normalised to fixed 10 minutes = 100.
 */
import { readFileSync, readdirSync, writeFileSync, existsSync } from 'node:fs'
import { basename, join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { decide, initialScalingState, type ScalingPolicy, type ScalingState } from '../src/scaler/decide.ts'
import { pickGarbage } from '../src/scaler/gc.ts'
import { KeepAliveLedger } from '../src/scaler/keep-alive-ledger.ts'
import { PERCENTILE_ADAPTIVE, type AdaptiveOptions, type KeepAlivePolicy } from '../src/scaler/keep-alive.ts'
import { scalableServiceOf } from '../src/scaler/policy.ts'
import { defaultParameters } from '../src/versions/parameters.ts'
import { plotPolicies } from './plot.ts'

const HERE = dirname(fileURLToPath(import.meta.url))
const TRACES = join(HERE, '..', '..', 'shared', 'traces')
const DEFAULT_TRACES = [join(TRACES, 'azure-functions-2019_invitro-sample-1day'), join(TRACES, 'azure-functions-2019_invitro-excerpt-8h')]
const MINUTE_MS = 60_000
/** An instance takes this long to be ready (the bench app's ~180 ms, rounded up for a real app). */
const STARTUP_MS = 1_000
/** The autoscaler's tick while a version has work; otherwise decide() is asked at each event (it counts the whole ticks elapsed). */
const TICK_MS = 1_000
/** Memory of an app the trace gives none for. */
const DEFAULT_MEM_MB = 150
const FIXED_MINUTES = [5, 10, 20, 30, 60, 120]

export interface App {
  readonly id: string
  /** Requests per minute. */
  readonly perMinute: Int32Array
  readonly durationMs: number
  readonly memMb: number
}

interface Trace {
  readonly name: string
  readonly minutes: number
  readonly apps: readonly App[]
}

function csv(path: string): { header: string[]; rows: string[][] } {
  const lines = readFileSync(path, 'utf8').split('\n').filter((l) => l.trim() !== '')
  return { header: (lines[0] ?? '').split(',').map((h) => h.trim()), rows: lines.slice(1).map((l) => l.split(',')) }
}

function findFile(dir: string, patterns: RegExp[]): string | undefined {
  const files = readdirSync(dir)
  for (const pattern of patterns) {
    const found = files.find((f) => pattern.test(f))
    if (found !== undefined) return join(dir, found)
  }
  return undefined
}

/** A trace folder in the invitro layout: *_inv.csv (or invocations.csv), *_run.csv (durations.csv), *_mem.csv (memory.csv). */
export function loadTrace(dir: string): Trace {
  const invPath = findFile(dir, [/_inv\.csv$/, /^invocations\.csv$/])
  if (invPath === undefined) throw new Error(`${dir}: no *_inv.csv or invocations.csv`)
  const runPath = findFile(dir, [/_run\.csv$/, /^durations\.csv$/])
  const memPath = findFile(dir, [/_mem\.csv$/, /^memory\.csv$/])
  const inv = csv(invPath)
  const col = (header: string[], name: string): number => header.indexOf(name)
  const appCol = col(inv.header, 'HashApp')
  const fnCol = col(inv.header, 'HashFunction')
  const minuteCols = inv.header.map((h, i) => (/^(minute_)?\d+$/.test(h) ? i : -1)).filter((i) => i >= 0)
  const minutes = minuteCols.length
  const durations = new Map<string, number>()
  if (runPath !== undefined) {
    const run = csv(runPath)
    const f = col(run.header, 'HashFunction')
    const avg = col(run.header, 'Average')
    for (const row of run.rows) durations.set(row[f] ?? '', Number(row[avg]))
  }
  const memory = new Map<string, number>()
  if (memPath !== undefined) {
    const mem = csv(memPath)
    const a = col(mem.header, 'HashApp')
    const avg = col(mem.header, 'AverageAllocatedMb')
    for (const row of mem.rows) memory.set(row[a] ?? '', Math.max(memory.get(row[a] ?? '') ?? 0, Number(row[avg])))
  }
  const byApp = new Map<string, { perMinute: Int32Array; busyMs: number; requests: number }>()
  for (const row of inv.rows) {
    const app = row[appCol] ?? ''
    let entry = byApp.get(app)
    if (entry === undefined) {
      entry = { perMinute: new Int32Array(minutes), busyMs: 0, requests: 0 }
      byApp.set(app, entry)
    }
    const duration = durations.get(row[fnCol] ?? '')
    let requests = 0
    minuteCols.forEach((c, m) => {
      const n = Number(row[c]) || 0
      entry.perMinute[m] = (entry.perMinute[m] ?? 0) + n
      requests += n
    })
    entry.requests += requests
    entry.busyMs += requests * (duration !== undefined && Number.isFinite(duration) ? duration : 1000)
  }
  const apps: App[] = []
  for (const [id, entry] of byApp) {
    if (entry.requests === 0) continue
    const mem = memory.get(id)
    apps.push({ id, perMinute: entry.perMinute, durationMs: Math.max(1, entry.busyMs / entry.requests), memMb: mem !== undefined && mem > 0 ? mem : DEFAULT_MEM_MB })
  }
  return { name: basename(dir), minutes, apps }
}

interface Instance {
  readonly createdAt: number
  readonly readyAt: number
  busyUntil: number
}

export interface AppResult {
  readonly requests: number
  readonly cold: number
  /** Memory-time of instances alive and not serving, MB·ms. */
  readonly idleMbMs: number
}

export interface PolicyChoice {
  readonly name: string
  readonly policy: KeepAlivePolicy
  readonly idleTimeoutMins: number
  readonly options?: AdaptiveOptions
}

/** One app through one policy, on a simulated clock. */
function replayApp(app: App, minutes: number, choice: PolicyChoice, ledger: KeepAliveLedger<true>): AppResult {
  const params = { ...defaultParameters(), cpus: 1, mem: app.memMb, 'idle-timeout-mins': choice.idleTimeoutMins }
  const scaling: ScalingPolicy = scalableServiceOf(params).policy
  const fixedMs = choice.idleTimeoutMins * MINUTE_MS
  const end = minutes * MINUTE_MS
  let instances: Instance[] = []
  let state: ScalingState = initialScalingState(0)
  let queued = 0
  let lastActiveAt = 0
  let nextTick = Number.POSITIVE_INFINITY
  let aliveMs = 0
  let busyMs = 0
  let cold = 0
  let requests = 0

  const running = (): boolean => instances.length > 0
  const inFlight = (now: number): number => instances.reduce((n, i) => n + (i.busyUntil > now ? 1 : 0), 0)
  const start = (now: number, count: number): void => {
    for (let k = 0; k < count; k++) instances.push({ createdAt: now, readyAt: now + STARTUP_MS, busyUntil: 0 })
  }
  const retire = (instance: Instance, now: number): void => {
    aliveMs += now - instance.createdAt
  }
  /** Hands queued requests to instances free at `now`. */
  const serve = (now: number): void => {
    for (const instance of instances) {
      if (queued === 0) return
      if (instance.readyAt <= now && instance.busyUntil <= now) {
        instance.busyUntil = now + app.durationMs
        busyMs += app.durationMs
        queued -= 1
        lastActiveAt = now
      }
    }
  }
  const scale = (now: number): void => {
    const outstanding = inFlight(now) + queued
    const healthy = instances.reduce((n, i) => n + (i.readyAt <= now ? 1 : 0), 0)
    const decision = decide(scaling, { outstanding, requested: instances.length, healthy, expiredHealthy: 0, expiredUnhealthy: 0 }, state, now)
    state = decision.state
    if (decision.amount > 0) start(now, decision.amount)
    else if (decision.amount < 0) {
      // As the router's kill choice: never a busy instance; starting ones first, then the youngest.
      let excess = -decision.amount
      const keep: Instance[] = []
      for (let k = instances.length - 1; k >= 0; k--) {
        const instance = instances[k] as Instance
        if (excess > 0 && instance.busyUntil <= now) {
          retire(instance, now)
          excess -= 1
        } else keep.push(instance)
      }
      instances = keep.reverse()
    }
    nextTick = outstanding > 0 || decision.bursting || instances.length > scaling.minInstances ? now + TICK_MS : Number.POSITIVE_INFINITY
  }
  /** The GC's verdict, as the router's GC asks it of an idle version. */
  const collectIfDue = (now: number): boolean => {
    const plan = ledger.plan(app.id, choice.policy, fixedMs)
    const schedule = ledger.scheduleRunning(app.id, plan, lastActiveAt)
    const verdict = pickGarbage([{ id: app.id, outstanding: inFlight(now) + queued, lastActiveAt, idleTimeoutMs: fixedMs, keepUntil: schedule.collectAt, staleSince: undefined, fallbackMs: 0, staleTimeoutMs: 0, brokenSince: undefined, brokenTimeoutMs: 0 }], now)
    if (verdict.length === 0) return false
    for (const instance of instances) retire(instance, now)
    instances = []
    queued = 0
    nextTick = Number.POSITIVE_INFINITY
    ledger.collected(app.id, lastActiveAt)
    return true
  }
  /** The next time something happens to the version on its own (instances, ticks, keep-alive). */
  const nextOwnEvent = (now: number): number => {
    let next = nextTick
    for (const instance of instances) {
      if (instance.readyAt > now) next = Math.min(next, instance.readyAt)
      if (instance.busyUntil > now) next = Math.min(next, instance.busyUntil)
    }
    if (running()) {
      if (inFlight(now) + queued === 0) {
        const plan = ledger.plan(app.id, choice.policy, fixedMs)
        const collectAt = ledger.scheduleRunning(app.id, plan, lastActiveAt).collectAt
        next = Math.min(next, Math.max(collectAt, now))
      }
    } else {
      const plan = ledger.plan(app.id, choice.policy, fixedMs)
      const at = ledger.prewarmAt(app.id, plan)
      if (at !== undefined && at > now - plan.keepAliveMs) next = Math.min(next, Math.max(at, now))
    }
    return next
  }
  /** Runs the version's own events up to (not including) `until`, in time order. */
  let clock = 0
  const advance = (until: number): void => {
    for (;;) {
      const at = Math.max(clock, nextOwnEvent(clock))
      if (!(at < until)) return
      clock = at
      // Instances that finished or came up take queued requests; their end of work is activity.
      for (const instance of instances) if (instance.busyUntil === at) lastActiveAt = at
      serve(at)
      if (at >= nextTick) scale(at)
      if (running()) {
        if (inFlight(at) + queued === 0) collectIfDue(at)
      } else {
        const plan = ledger.plan(app.id, choice.policy, fixedMs)
        if (ledger.prewarmDue(app.id, plan, at) !== undefined) {
          start(at, scaling.minInstances)
          state = initialScalingState(instances.length)
          ledger.prewarmed(app.id, at)
        }
      }
      // Whatever is still due at this very time can wait for the next look (no busy loop).
      if (nextOwnEvent(at) <= at) clock = at + 1
    }
  }

  for (let m = 0; m < minutes; m++) {
    const n = app.perMinute[m] ?? 0
    for (let k = 0; k < n; k++) {
      const t = m * MINUTE_MS + ((k + 0.5) * MINUTE_MS) / n
      advance(t)
      clock = t
      requests += 1
      const wasRunning = running()
      const busy = inFlight(t) + queued > 0
      const warm = wasRunning && instances.some((i) => i.readyAt <= t)
      ledger.arrived(app.id, t, wasRunning, warm, wasRunning && !busy ? lastActiveAt : undefined, true)
      if (!wasRunning) {
        start(t, scaling.minInstances)
        state = initialScalingState(instances.length)
      }
      if (!instances.some((i) => i.readyAt <= t)) cold += 1
      lastActiveAt = t
      queued += 1
      serve(t)
      scale(t)
    }
  }
  advance(end)
  for (const instance of instances) retire(instance, end)
  return { requests, cold, idleMbMs: Math.max(0, aliveMs - busyMs) * app.memMb }
}

export interface PolicyScore {
  readonly coldStartP75Pct: number
  readonly wastedMemoryPct: number
  /** Cold starts among all requests of all apps: what the p75 over apps does not show (a policy can lower it by moving cold starts onto busy apps). */
  readonly coldRequestsPct: number
}

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b)
  if (sorted.length === 0) return 0
  const rank = (p / 100) * (sorted.length - 1)
  const lo = Math.floor(rank)
  const hi = Math.ceil(rank)
  return (sorted[lo] as number) + ((sorted[hi] as number) - (sorted[lo] as number)) * (rank - lo)
}

export function replayTrace(trace: Trace, choices: readonly PolicyChoice[], onApp?: (choice: PolicyChoice, app: App, result: AppResult, basis: string) => void): Record<string, PolicyScore & { idleMbMs: number }> {
  const raw = new Map<string, { p75: number; idleMbMs: number; cold: number; requests: number }>()
  for (const choice of choices) {
    const ledger = new KeepAliveLedger<true>(trace.apps.length + 1, choice.options)
    const coldPcts: number[] = []
    let idleMbMs = 0
    let cold = 0
    let requests = 0
    for (const app of trace.apps) {
      const result = replayApp(app, trace.minutes, choice, ledger)
      onApp?.(choice, app, result, ledger.plan(app.id, choice.policy, choice.idleTimeoutMins * MINUTE_MS).basis)
      coldPcts.push((100 * result.cold) / result.requests)
      idleMbMs += result.idleMbMs
      cold += result.cold
      requests += result.requests
    }
    raw.set(choice.name, { p75: percentile(coldPcts, 75), idleMbMs, cold, requests })
  }
  const anchor = raw.get('fixed-10')?.idleMbMs ?? 1
  const out: Record<string, PolicyScore & { idleMbMs: number }> = {}
  for (const [name, r] of raw) out[name] = { coldStartP75Pct: round(r.p75), wastedMemoryPct: round((100 * r.idleMbMs) / anchor), coldRequestsPct: round((100 * r.cold) / Math.max(1, r.requests)), idleMbMs: r.idleMbMs }
  return out
}

const round = (n: number): number => Math.round(n * 100) / 100

export const CHOICES: readonly PolicyChoice[] = [
  ...FIXED_MINUTES.map((m) => ({ name: `fixed-${m}`, policy: 'fixed' as const, idleTimeoutMins: m })),
  // Adaptive, falling back to the industry's (and the anchor's) 10 minutes where it cannot learn.
  { name: 'adaptive', policy: 'adaptive' as const, idleTimeoutMins: 10 },
  // For comparison: the paper's percentile rule, as maitre shipped it before the cheapest plan.
  { name: 'percentiles', policy: 'adaptive' as const, idleTimeoutMins: 10, options: PERCENTILE_ADAPTIVE },
]

function main(): void {
  const args = process.argv.slice(2)
  const dirs: string[] = []
  let out = join(HERE, 'keepalive.json')
  let plot: string | undefined = join(HERE, 'keepalive.png')
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--trace') dirs.push(String(args[++i]))
    else if (args[i] === '--out') out = String(args[++i])
    else if (args[i] === '--plot') plot = String(args[++i])
    else if (args[i] === '--no-plot') plot = undefined
    else throw new Error(`unknown argument ${args[i]}: use --trace DIR (repeatable), --out FILE, --plot FILE, --no-plot`)
  }
  const traces = dirs.length > 0 ? dirs : DEFAULT_TRACES.filter((d) => existsSync(d))
  const results: Record<string, Record<string, PolicyScore>> = {}
  for (const dir of traces) {
    const startedAt = Date.now()
    const trace = loadTrace(dir)
    const scores = replayTrace(trace, CHOICES)
    results[trace.name] = Object.fromEntries(Object.entries(scores).map(([k, v]) => [k, { coldStartP75Pct: v.coldStartP75Pct, wastedMemoryPct: v.wastedMemoryPct, coldRequestsPct: v.coldRequestsPct }]))
    console.log(`\n${trace.name}: ${trace.apps.length} apps × ${trace.minutes} minutes, replayed in ${((Date.now() - startedAt) / 1000).toFixed(1)} s`)
    console.log('policy       p75 cold-start %   wasted memory-time % (fixed-10 = 100)   cold requests % (all apps)')
    for (const [name, s] of Object.entries(scores)) console.log(`${name.padEnd(12)} ${String(s.coldStartP75Pct).padStart(16)}   ${String(s.wastedMemoryPct).padStart(10)}   ${String(s.coldRequestsPct).padStart(30)}`)
  }
  writeFileSync(out, `${JSON.stringify(results, null, 2)}\n`)
  console.log(`\nwrote ${out}`)
  if (plot !== undefined) {
    writeFileSync(plot, plotPolicies(results))
    console.log(`wrote ${plot}`)
  }
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) main()
