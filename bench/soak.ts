/**
 * Soak test (issue 12, item 8): one real router (`node src/main.ts serve`, local backend, its own
 * data directory and port range, log level warn) under mixed traffic over 50 tokens of the
 * kitchen test app for SOAK_MINUTES (20), while tokens are edited (~20 s), instances are killed
 * (~30 s; every third one by SIGKILL of its process rather than the API), a share of requests is
 * aborted mid-way by the client, and idle and stale versions are garbage-collected (idle timeout
 * 1 min, GC every 5 s, fallback and stale timeout 0 on every other token). Samples every 10 s.
 * Not part of `npm test`.
 *
 *   npm run soak                   # 20 minutes of traffic, then drain, stop and leftovers check
 *   SOAK_MINUTES=2 npm run soak    # a debugging run (memory slopes are then shown, not judged)
 *
 * Other knobs: SOAK_CLIENTS (32), SOAK_TOKENS (50), SOAK_PORT_LOW (12000: ports PORT_LOW..+999),
 * SOAK_ABORT_SHARE (0.05), SOAK_COOLDOWN_SECS (180: the longest wait for every version to be
 * collected once traffic stops), SOAK_DIR (a directory instead of a fresh one under the system's
 * temp dir), SOAK_LOG_LEVEL (warn), SOAK_MAX_RSS_SLOPE (20 MB/hour) and SOAK_MAX_HEAP_SLOPE (10 MB/hour). Memory is judged
 * right after a full GC forced through the inspector every 30 s (the router runs with --inspect on
 * a loopback port for that): RSS with the garbage gone, and heap used, the live set. RSS as
 * scraped swings by ±50 MB with V8's heap sizing, far more than any leak shows in 10 minutes.
 *
 * After the traffic: every version must be collected (all tokens have idle-timeout-mins 1), leaving
 * no instance process, no sandbox and the router's file descriptors, maps and metric series back at
 * their start; then five versions are started again with a request in flight on each, the router is
 * stopped with SIGTERM (the requests must be drained, the exit code 0) and no process or sandbox may
 * be left. Exit code 1 on any unexpected error: a 5xx other than 503 refusals (queue full, queue
 * timeout, deployment error) and 502s naming an instance this script killed; a 4xx; a wrong body; a
 * client-side error other than an abort of ours or a response cut by a kill of ours; an error-level
 * line in the router's log; no idle or no stale collection; anything left after the drain or the
 * stop; RSS or the live heap growing faster than its limit over the second half of a run of 10
 * minutes or more.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, readlinkSync, statSync, writeFileSync } from 'node:fs'
import { cpus, loadavg, tmpdir } from 'node:os'
import { join, sep } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Agent, request } from 'undici'
import { freePort, MAITRE_ENV, MAITRE_NODE_FLAGS } from './tools.ts'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const KITCHEN = join(ROOT, 'test', 'fixtures', 'kitchen.mjs')

const envNumber = (name: string, fallback: number): number => {
  const raw = process.env[name]
  const value = raw === undefined || raw === '' ? fallback : Number(raw)
  if (!Number.isFinite(value) || value < 0) throw new Error(`${name} must be a non-negative number, not ${String(raw)}`)
  return value
}
const MINUTES = envNumber('SOAK_MINUTES', 20)
const CLIENTS = envNumber('SOAK_CLIENTS', 32)
const TOKENS = Math.max(20, envNumber('SOAK_TOKENS', 50))
// Below Linux's ephemeral range (32768–60999): a port there may be taken by any outgoing connection.
const PORT_LOW = envNumber('SOAK_PORT_LOW', 12000)
const MAX_RSS_SLOPE = envNumber('SOAK_MAX_RSS_SLOPE', 20)
const MAX_HEAP_SLOPE = envNumber('SOAK_MAX_HEAP_SLOPE', 10)
const ABORT_SHARE = envNumber('SOAK_ABORT_SHARE', 0.05)
const COOLDOWN_SECS = envNumber('SOAK_COOLDOWN_SECS', 180)
const SAMPLE_MS = 10_000
const EDIT_MS = 20_000
const KILL_MS = 30_000
/** Mean gap between two requests to a cold token, over all of them (so each waits ~30 × this). */
const COLD_GAP_MS = 2_000
const GC_INTERVAL_MS = 5_000
/** Slopes are judged only on runs this long: on shorter ones a single GC swamps the fit. */
const JUDGED_MINUTES = 10
/** File descriptors the drained router may hold beyond its start (keep-alive sockets in flux). */
const FD_SLACK = 20

// ---------------------------------------------------------------------------------------------
// Tokens

type Tier = 'hot' | 'warm' | 'cold'

interface TokenSpec {
  readonly name: string
  readonly tier: Tier
  /** Share of the hot and warm traffic (cold tokens are called on a timer instead). */
  readonly weight: number
  /** fallback-period-secs and stale-timeout-mins 0: its old versions are stale at once. */
  readonly fastStale: boolean
  readonly descriptor: Record<string, unknown>
  version: number
}

const HOT_WEIGHTS = [25, 18, 12, 9, 6]
const WARM = 15

function makeTokens(): TokenSpec[] {
  return Array.from({ length: TOKENS }, (_, i) => {
    const tier: Tier = i < HOT_WEIGHTS.length ? 'hot' : i < HOT_WEIGHTS.length + WARM ? 'warm' : 'cold'
    const fastStale = i % 2 === 0
    const descriptor: Record<string, unknown> = {
      name: `soak${i}`,
      cmd: `${process.execPath} ${KITCHEN}`,
      'health-check-url': '/status',
      cpus: 0.1,
      mem: i % 3 === 0 ? 256 : 128,
      version: 'v0',
      'concurrency-level': [4, 2, 1, 3][i % 4],
      'max-instances': tier === 'hot' ? 6 : tier === 'warm' ? 3 : 2,
      'idle-timeout-mins': 1,
      'queue-timeout-ms': 30_000,
      ...(i % 5 === 0 ? { 'min-instances': 1 } : {}),
      ...(i === 5 || i === 6 ? { 'min-instances': 2 } : {}),
      ...(fastStale ? { 'fallback-period-secs': 0, 'stale-timeout-mins': 0 } : {}),
    }
    return { name: `soak-${String(i).padStart(2, '0')}`, tier, weight: tier === 'hot' ? (HOT_WEIGHTS[i] as number) : tier === 'warm' ? 2 : 0, fastStale, descriptor, version: 0 }
  })
}

// ---------------------------------------------------------------------------------------------
// Bookkeeping of requests

/** Outcomes that are no error of maitre's. */
const EXPECTED = new Set(['2xx', 'aborted', '502 killed instance', 'cut by kill', '503 MAITRE_QUEUE_FULL', '503 MAITRE_QUEUE_TIMEOUT', '503 MAITRE_DEPLOYMENT'])

class Tally {
  readonly counts = new Map<string, number>()
  readonly latencies: number[] = []
  readonly warmLatencies: number[] = []
  /** Warm requests: time beyond what the app was asked to spend (the sleep, the chunk delays). */
  readonly added: number[] = []
  coldStarts = 0
  add(outcome: string): void {
    this.counts.set(outcome, (this.counts.get(outcome) ?? 0) + 1)
  }
  total(): number {
    let n = 0
    for (const v of this.counts.values()) n += v
    return n
  }
  unexpected(): number {
    let n = 0
    for (const [k, v] of this.counts) if (!EXPECTED.has(k)) n += v
    return n
  }
  get(key: string): number {
    return this.counts.get(key) ?? 0
  }
  fiveXx(): number {
    let n = 0
    for (const [k, v] of this.counts) if (/^5\d\d/.test(k)) n += v
    return n
  }
}

const all = new Tally()
let interval = new Tally()
/** Instances this script killed (API or SIGKILL): a 502 or a cut response naming one is expected. */
const killed = new Map<string, number>()
/** Examples of unexpected outcomes (first few of each kind), for the report. */
const examples = new Map<string, string[]>()

function record(outcome: string, detail?: string): void {
  all.add(outcome)
  interval.add(outcome)
  if (!EXPECTED.has(outcome) && detail !== undefined) {
    const list = examples.get(outcome) ?? []
    if (list.length < 5) list.push(detail)
    examples.set(outcome, list)
  }
}

const PAYLOAD = 'abcdefghijklmnopqrstuvwxyz0123456789'.repeat(1000)
const rand = (lo: number, hi: number): number => lo + Math.floor(Math.random() * (hi - lo + 1))
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))
/** Exponentially distributed gap with the given mean (a Poisson process). */
const expGap = (mean: number): number => -Math.log(1 - Math.random()) * mean

interface Shot {
  readonly method: 'GET' | 'POST' | 'PUT' | 'DELETE'
  readonly path: string
  readonly body: string | undefined
  /** How long the app is asked to take (/sleep, /chunked). */
  readonly appMs: number
  /** Whether the body is what this request must get back. */
  readonly check: (text: string) => boolean
}

function pickShot(): Shot {
  const r = Math.random()
  if (r < 0.35) {
    return { method: 'GET', path: `/request-info?n=${rand(0, 1e6)}`, body: undefined, appMs: 0, check: (t) => echoOk(t, 'GET', 0) }
  }
  if (r < 0.55) {
    const size = rand(100, 32 * 1024)
    return { method: 'POST', path: '/request-info', body: PAYLOAD.slice(0, size), appMs: 0, check: (t) => echoOk(t, 'POST', size) }
  }
  if (r < 0.6) {
    const method = Math.random() < 0.5 ? 'PUT' : 'DELETE'
    const size = method === 'PUT' ? rand(10, 2000) : 0
    return { method, path: '/request-info', body: size === 0 ? undefined : PAYLOAD.slice(0, size), appMs: 0, check: (t) => echoOk(t, method, size) }
  }
  if (r < 0.9) {
    const ms = rand(10, 200)
    return { method: 'GET', path: `/sleep?sleep-ms=${ms}`, body: undefined, appMs: ms, check: (t) => (JSON.parse(t) as { slept?: number }).slept === ms }
  }
  const chunks = rand(3, 20)
  const delay = rand(5, 30)
  const expected = Array.from({ length: chunks }, (_, i) => `chunk-${i}\n`).join('')
  return { method: 'GET', path: `/chunked?chunks=${chunks}&delay-ms=${delay}`, body: undefined, appMs: chunks * delay, check: (t) => t === expected }
}

function echoOk(text: string, method: string, size: number): boolean {
  const info = JSON.parse(text) as { method?: string; body?: string }
  return info.method === method && (info.body ?? '').length === size
}

const header = (v: string | string[] | undefined): string | undefined => (Array.isArray(v) ? v[0] : v)

async function shoot(agent: Agent, url: string, token: TokenSpec): Promise<void> {
  const shot = pickShot()
  const aborter = Math.random() < ABORT_SHARE ? new AbortController() : undefined
  const timer = aborter === undefined ? undefined : setTimeout(() => aborter.abort(), rand(1, 150))
  const started = performance.now()
  let backend: string | undefined
  try {
    const res = await request(`${url}${shot.path}`, {
      dispatcher: agent,
      method: shot.method,
      headers: {
        'x-waiter-token': token.name,
        'x-waiter-debug': 'true',
        accept: 'application/json',
        ...(shot.body === undefined ? {} : { 'content-type': 'text/plain' }),
      },
      body: shot.body ?? null,
      ...(aborter === undefined ? {} : { signal: aborter.signal }),
    })
    backend = header(res.headers['x-waiter-backend-id'])
    const text = await res.body.text()
    const ms = performance.now() - started
    const code = header(res.headers['x-maitre-error'])
    if (res.statusCode >= 200 && res.statusCode < 300) {
      let good = false
      try {
        good = shot.check(text)
      } catch {
        good = false
      }
      if (!good) return record('wrong body', `${token.name} ${shot.method} ${shot.path}: ${text.slice(0, 200)}`)
      record('2xx')
      all.latencies.push(ms)
      interval.latencies.push(ms)
      if (header(res.headers['x-maitre-cold-start']) === 'true') {
        all.coldStarts += 1
        interval.coldStarts += 1
      } else {
        all.warmLatencies.push(ms)
        all.added.push(ms - shot.appMs)
        interval.added.push(ms - shot.appMs)
      }
      return
    }
    if (res.statusCode === 502) {
      let instance: string | null = null
      try {
        instance = ((JSON.parse(text) as { 'waiter-error'?: { 'instance-id'?: string | null } })['waiter-error']?.['instance-id']) ?? null
      } catch {
        instance = null
      }
      if (instance !== null && killed.has(instance)) return record('502 killed instance')
      return record(`502 ${code ?? 'app'}`, `${token.name} ${shot.method} ${shot.path} instance ${String(instance)}: ${text.slice(0, 300)}`)
    }
    record(`${res.statusCode} ${code ?? 'app'}`, `${token.name} ${shot.method} ${shot.path}: ${text.slice(0, 300)}`)
  } catch (err) {
    if (aborter?.signal.aborted === true) return record('aborted')
    if (backend !== undefined && killed.has(backend)) return record('cut by kill')
    const e = err as { code?: string; name?: string; message?: string }
    record(`client error ${e.code ?? e.name ?? 'unknown'}`, `${token.name} ${shot.method} ${shot.path} backend ${String(backend)}: ${e.message ?? String(err)}`)
  } finally {
    if (timer !== undefined) clearTimeout(timer)
  }
}

// ---------------------------------------------------------------------------------------------
// Observing the router and the host

interface Sample {
  t: number
  /** end: right after the traffic stopped (a partial interval). */
  phase: 'start' | 'traffic' | 'end' | 'drain'
  rssMb: number
  heapUsedMb: number
  /** Right after a full GC forced through the inspector (every third sample, so every 30 s): */
  /** heap used (the live set), */
  liveHeapMb: number
  /** of which old space and code space (JIT code), */
  liveOldMb: number
  liveCodeMb: number
  /** and the process's RSS then (the garbage is gone: the steady measure of memory), of which anonymous memory (heap, malloc). */
  liveRssMb: number
  liveRssAnonMb: number
  heapTotalMb: number
  externalMb: number
  lagP99Ms: number
  lagMaxMs: number
  activeHandles: number
  fds: number
  fdSockets: number
  fdPipes: number
  /** Files under /proc open at that instant (the local backend's memory check reads them every second). */
  fdProc: number
  cpuPct: number
  clientCpuPct: number
  sandboxes: number
  processes: number
  liveInstances: number
  versions: number
  healthyInstances: number
  trackerEntries: number
  autoscalerEntries: number
  schedulerServices: number
  metricServices: number
  metricLines: number
  servicesGauge: number
  gcIdle: number
  gcStale: number
  gcBroken: number
  requests: number
  rps: number
  p99Ms: number
  addedP99Ms: number
  coldStarts: number
  unexpected: number
  expected502: number
  refusals503: number
  aborted: number
  load1: number
}

function parseMetrics(text: string): Map<string, number> {
  const out = new Map<string, number>()
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const space = line.lastIndexOf(' ')
    out.set(line.slice(0, space), Number(line.slice(space + 1)))
  }
  return out
}

function within(path: string | undefined, root: string): boolean {
  return path !== undefined && (path === root || path.startsWith(root + sep))
}

function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat[stat.lastIndexOf(')') + 2] !== 'Z'
  } catch {
    return false
  }
}

/** Live processes carrying WAITER_SERVICE_ID whose sandbox or working directory lies under `root`. */
function instanceProcesses(root: string): { pid: number; sandbox: string | undefined; cmdline: string }[] {
  const found: { pid: number; sandbox: string | undefined; cmdline: string }[] = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue
    try {
      const env = readFileSync(`/proc/${entry}/environ`, 'utf8').split('\0')
      if (!env.some((e) => e.startsWith('WAITER_SERVICE_ID='))) continue
      const sandbox = env.find((e) => e.startsWith('WAITER_SANDBOX='))?.slice('WAITER_SANDBOX='.length)
      let cwd: string | undefined
      try {
        cwd = readlinkSync(`/proc/${entry}/cwd`)
      } catch {
        cwd = undefined
      }
      if (!within(sandbox, root) && !within(cwd, root)) continue
      if (!alive(Number(entry))) continue
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0').join(' ')
      found.push({ pid: Number(entry), sandbox, cmdline })
    } catch {
      // gone meanwhile, or not ours to read
    }
  }
  return found
}

/** Sandboxes on disk: directories two levels under <dataDir>/instances. */
function sandboxCount(instancesDir: string): number {
  let n = 0
  let services: string[]
  try {
    services = readdirSync(instancesDir)
  } catch {
    return 0
  }
  for (const s of services) {
    try {
      for (const e of readdirSync(join(instancesDir, s), { withFileTypes: true })) if (e.isDirectory()) n += 1
    } catch {
      // a file, or removed meanwhile
    }
  }
  return n
}

/** The router's open file descriptors: all, and how many are sockets, pipes and files under /proc. */
function fdCount(pid: number): { all: number; sockets: number; pipes: number; proc: number } {
  const out = { all: 0, sockets: 0, pipes: 0, proc: 0 }
  let fds: string[]
  try {
    fds = readdirSync(`/proc/${pid}/fd`)
  } catch {
    return { all: Number.NaN, sockets: Number.NaN, pipes: Number.NaN, proc: Number.NaN }
  }
  for (const fd of fds) {
    out.all += 1
    try {
      const target = readlinkSync(`/proc/${pid}/fd/${fd}`)
      if (target.startsWith('socket:')) out.sockets += 1
      else if (target.startsWith('pipe:')) out.pipes += 1
      else if (target.startsWith('/proc/')) out.proc += 1
    } catch {
      // closed meanwhile
    }
  }
  return out
}

/** RssAnon from /proc/<pid>/status, in MB. */
function rssAnonMb(pid: number): number {
  try {
    return Number(/RssAnon:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? Number.NaN) / 1024
  } catch {
    return Number.NaN
  }
}

function cpuTicks(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return Number(fields[11]) + Number(fields[12])
  } catch {
    return Number.NaN
  }
}

function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN
  const sorted = Float64Array.from(values).sort()
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] as number
}

/** Least-squares slope of y over x, and its standard error. */
function fit(xs: readonly number[], ys: readonly number[]): { slope: number; se: number } {
  const n = xs.length
  if (n < 3) return { slope: Number.NaN, se: Number.NaN }
  const mx = xs.reduce((a, b) => a + b, 0) / n
  const my = ys.reduce((a, b) => a + b, 0) / n
  let num = 0
  let den = 0
  for (let i = 0; i < n; i++) {
    num += ((xs[i] as number) - mx) * ((ys[i] as number) - my)
    den += ((xs[i] as number) - mx) ** 2
  }
  if (den === 0) return { slope: Number.NaN, se: Number.NaN }
  const b = num / den
  let residuals = 0
  for (let i = 0; i < n; i++) residuals += ((ys[i] as number) - my - b * ((xs[i] as number) - mx)) ** 2
  return { slope: b, se: Math.sqrt(residuals / (n - 2) / den) }
}

/** What keeps a process alive: its active resources, and where its sockets go. */
const STOP_DIAGNOSIS = `JSON.stringify({ resources: process.getActiveResourcesInfo(), sockets: process._getActiveHandles().filter((h) => h && h.constructor && h.constructor.name === 'Socket').map((s) => [s.localPort, s.remotePort, s.destroyed]) })`

/** Evaluates an expression in the router through the inspector protocol, after a full GC if asked. */
async function evaluate(inspectPort: number, expression: string, collectGarbage = false): Promise<string> {
  const list = (await (await request(`http://127.0.0.1:${inspectPort}/json/list`)).body.json()) as { webSocketDebuggerUrl: string }[]
  const target = list[0]?.webSocketDebuggerUrl
  if (target === undefined) throw new Error('no inspector target')
  const ws = new WebSocket(target)
  try {
    await new Promise<void>((resolve, reject) => {
      ws.onopen = () => resolve()
      ws.onerror = () => reject(new Error('inspector connection failed'))
    })
    type Reply = { id?: number; result?: { result?: { value?: string } } }
    const pending = new Map<number, (reply: Reply) => void>()
    ws.onmessage = (event) => {
      const reply = JSON.parse(String(event.data)) as Reply
      if (reply.id !== undefined) pending.get(reply.id)?.(reply)
    }
    let next = 0
    const call = (method: string, params: Record<string, unknown> = {}): Promise<Reply> =>
      Promise.race([
        new Promise<Reply>((resolve) => {
          const id = ++next
          pending.set(id, resolve)
          ws.send(JSON.stringify({ id, method, params }))
        }),
        sleep(15_000).then(() => Promise.reject(new Error(`inspector: ${method} timed out`))),
      ])
    if (collectGarbage) await call('HeapProfiler.collectGarbage')
    const reply = await call('Runtime.evaluate', { expression, returnByValue: true })
    return reply.result?.result?.value ?? 'undefined'
  } finally {
    ws.close()
  }
}

interface LiveMemory {
  readonly heapMb: number
  readonly oldMb: number
  readonly codeMb: number
  readonly rssMb: number
}

const NO_LIVE: LiveMemory = { heapMb: Number.NaN, oldMb: Number.NaN, codeMb: Number.NaN, rssMb: Number.NaN }

/**
 * The router's live heap: a full GC through the inspector protocol (the router runs with
 * --inspect on a loopback port), then process.memoryUsage() and the heap spaces. The session is closed at once, so
 * nothing stays attached (an attached session would hold the process at exit).
 */
async function liveMemory(inspectPort: number): Promise<LiveMemory> {
  const expression = "JSON.stringify({ usage: process.memoryUsage(), spaces: process.getBuiltinModule('node:v8').getHeapSpaceStatistics() })"
  const value = await evaluate(inspectPort, expression, true)
  const { usage, spaces } = JSON.parse(value) as { usage?: { heapUsed: number; rss: number }; spaces?: { space_name: string; space_used_size: number }[] }
  const space = (name: string): number => (spaces?.find((x) => x.space_name === name)?.space_used_size ?? Number.NaN) / 1024 / 1024
  return { heapMb: (usage?.heapUsed ?? Number.NaN) / 1024 / 1024, oldMb: space('old_space'), codeMb: space('code_space'), rssMb: (usage?.rss ?? Number.NaN) / 1024 / 1024 }
}

/** The commit the router runs, and whether src/ differs from it (the router loads src/ as it is now). */
function codeVersion(): string {
  const git = (...args: string[]): string => spawnSync('git', args, { cwd: ROOT, encoding: 'utf8' }).stdout?.trim() ?? ''
  const commit = git('rev-parse', '--short', 'HEAD') || 'unknown commit'
  const changed = git('status', '--porcelain', '--', 'src').split('\n').filter((l) => l !== '').length
  return changed === 0 ? commit : `${commit} + uncommitted changes in ${changed} files under src/`
}

// ---------------------------------------------------------------------------------------------
// The run

const admin = new Agent({ connections: 4, keepAliveTimeout: 30_000 })

async function api<T>(url: string, method: 'GET' | 'POST' = 'GET', body?: unknown): Promise<{ status: number; json: T }> {
  const res = await request(url, {
    dispatcher: admin,
    method,
    headers: { accept: 'application/json', ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? null : JSON.stringify(body),
  })
  const text = await res.body.text()
  let json: unknown = undefined
  try {
    json = JSON.parse(text)
  } catch {
    json = text
  }
  return { status: res.statusCode, json: json as T }
}

interface AppSummary {
  'service-id': string
  'instance-counts': { 'healthy-instances': number }
  'request-metrics': { 'in-flight': number }
}

interface AppDetail {
  instances: { 'active-instances': { id: string; healthy: boolean; 'log-directory': string | null }[] }
}

async function main(): Promise<number> {
  const dir = process.env['SOAK_DIR'] ?? mkdtempSync(join(tmpdir(), 'maitre-soak-'))
  mkdirSync(dir, { recursive: true })
  const dataDir = join(dir, 'data')
  const instancesDir = join(dataDir, 'instances')
  const port = await freePort()
  const inspectPort = await freePort()
  const url = `http://127.0.0.1:${port}`
  const configPath = join(dir, 'maitre.yaml')
  writeFileSync(configPath, [
    'server:', `  port: ${port}`, '  shutdownTimeoutMs: 10000',
    `dataDir: ${dataDir}`,
    'backend:', '  local:', `    portRange: [${PORT_LOW}, ${PORT_LOW + 999}]`,
    'scaler:', `  gcIntervalMs: ${GC_INTERVAL_MS}`, '  brokenServiceTimeoutMins: 1',
    'log:', `  level: ${process.env['SOAK_LOG_LEVEL'] ?? 'warn'}`, '  access: false', '',
  ].join('\n'))
  const logPath = join(dir, 'router.log')
  const logFd = openSync(logPath, 'a')
  // Its own process group: a Ctrl-C on this script ends the traffic early and still stops the router in order.
  const router: ChildProcess = spawn(process.execPath, [...MAITRE_NODE_FLAGS, `--inspect=127.0.0.1:${inspectPort}`, join(ROOT, 'src', 'main.ts'), 'serve', '--config', configPath], { cwd: ROOT, env: { ...MAITRE_ENV, ...process.env }, stdio: ['ignore', logFd, logFd], detached: true })
  closeSync(logFd)
  const pid = router.pid as number
  let routerExit: number | string | null | undefined
  const exited = new Promise<number | string | null>((resolve) => router.once('exit', (code, signal) => {
    routerExit = code ?? signal
    resolve(routerExit)
  }))
  process.on('exit', () => {
    if (routerExit === undefined) {
      try {
        process.kill(pid, 'SIGKILL') // its instances' watchdogs take them down with it
      } catch {}
    }
  })

  const machine = `${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, Node ${process.version}, load average at start ${loadavg().map((l) => l.toFixed(2)).join(' ')}; maitre at ${codeVersion()}`
  console.error(`soak: ${MINUTES} min, ${CLIENTS} clients, ${TOKENS} tokens; router pid ${pid} on ${url}; dir ${dir}`)
  console.error(`soak: machine ${machine}`)

  for (let waited = 0; ; waited += 50) {
    try {
      const r = await api(`${url}/status`)
      if (r.status === 200) break
    } catch {}
    if (routerExit !== undefined) throw new Error(`the router exited with ${String(routerExit)} before listening; see ${logPath}`)
    if (waited > 30_000) throw new Error('the router did not come up in 30 s')
    await sleep(50)
  }

  const tokens = makeTokens()
  for (const t of tokens) {
    const r = await api(`${url}/token`, 'POST', { token: t.name, ...t.descriptor })
    if (r.status !== 200) throw new Error(`token ${t.name}: ${r.status} ${JSON.stringify(r.json)}`)
  }

  const samples: Sample[] = []
  const csvPath = join(dir, 'samples.csv')
  /** Rewritten after every sample, so a run that dies still leaves its samples. */
  function writeCsv(): void {
    const first = samples[0]
    if (first === undefined) return
    const keys = Object.keys(first) as (keyof Sample)[]
    const cell = (v: Sample[keyof Sample]): string => (typeof v === 'number' ? (Number.isFinite(v) ? v.toFixed(3) : '') : v)
    writeFileSync(csvPath, [keys.join(','), ...samples.map((s) => keys.map((k) => cell(s[k])).join(','))].join('\n') + '\n')
  }
  const started = Date.now()
  let lastTicks = cpuTicks(pid)
  let lastAt = performance.now()
  let lastClientCpu = process.cpuUsage()

  /**
   * Instances that ended badly without this script killing them (exited on their own, or killed
   * by maitre for memory or health checks), from the router's log, with the tail of their stderr
   * while the sandbox is still kept (failed instances' sandboxes stay until their version goes).
   */
  const unexplainedExits: string[] = []
  let logLinesSeen = 0
  function scanLog(): void {
    const lines = existsSync(logPath) ? readFileSync(logPath, 'utf8').split('\n') : []
    for (const line of lines.slice(logLinesSeen, lines.length - 1)) {
      try {
        const e = JSON.parse(line) as { msg?: string; level?: number; service?: string; instance?: string; reason?: string; exitCode?: number }
        if (e.msg !== 'instance exited' || (e.level ?? 0) < 40 || e.instance === undefined || killed.has(e.instance)) continue
        let stderr = ''
        try {
          stderr = readFileSync(join(instancesDir, e.service ?? '', e.instance, 'stderr'), 'utf8').trim().split('\n').slice(-3).join(' / ')
        } catch {
          stderr = '(sandbox gone)'
        }
        unexplainedExits.push(`${e.instance}: ${e.reason ?? '?'}; stderr: ${stderr.slice(-400)}`)
        console.error(`soak: instance ended unexpectedly: ${unexplainedExits[unexplainedExits.length - 1] ?? ''}`)
      } catch {
        // not JSON (a Node warning): the final report shows it
      }
    }
    logLinesSeen = Math.max(logLinesSeen, lines.length - 1)
  }

  async function takeSample(phase: Sample['phase'], forceGc = samples.length % 3 === 0): Promise<Sample> {
    scanLog()
    const [metricsRes, apps, tracker, autoscaler, scheduler] = await Promise.all([
      request(`${url}/metrics`, { dispatcher: admin }).then((r) => r.body.text()),
      api<AppSummary[]>(`${url}/apps`),
      api<{ state: Record<string, unknown> }>(`${url}/state/instance-tracker`),
      api<{ state: Record<string, unknown> }>(`${url}/state/autoscaler`),
      api<{ state: { services: unknown[] } }>(`${url}/state/scheduler`),
    ])
    const m = parseMetrics(metricsRes)
    const live = forceGc ? await liveMemory(inspectPort).catch((err: unknown) => {
      console.error(`soak: live heap probe failed: ${(err as Error).message}`)
      return NO_LIVE
    }) : NO_LIVE
    const services = new Set<string>()
    for (const match of metricsRes.matchAll(/service="([^"]+)"/g)) services.add(match[1] as string)
    const procs = instanceProcesses(dataDir)
    const fds = fdCount(pid)
    const ticks = cpuTicks(pid)
    const clientCpu = process.cpuUsage()
    const now = performance.now()
    const cpuPct = ((ticks - lastTicks) / 100) / ((now - lastAt) / 1000) * 100
    lastTicks = ticks
    const seconds = (now - lastAt) / 1000
    lastAt = now
    const clientCpuPct = ((clientCpu.user + clientCpu.system - lastClientCpu.user - lastClientCpu.system) / 1e6 / seconds) * 100
    lastClientCpu = clientCpu
    const mb = (name: string): number => (m.get(name) ?? Number.NaN) / 1024 / 1024
    const s: Sample = {
      t: Math.round((Date.now() - started) / 1000),
      phase,
      rssMb: mb('process_resident_memory_bytes'),
      heapUsedMb: mb('nodejs_heap_size_used_bytes'),
      liveHeapMb: live.heapMb,
      liveOldMb: live.oldMb,
      liveCodeMb: live.codeMb,
      liveRssMb: live.rssMb,
      liveRssAnonMb: forceGc ? rssAnonMb(pid) : Number.NaN,
      heapTotalMb: mb('nodejs_heap_size_total_bytes'),
      externalMb: mb('nodejs_external_memory_bytes'),
      lagP99Ms: (m.get('nodejs_eventloop_lag_p99_seconds') ?? Number.NaN) * 1000,
      lagMaxMs: (m.get('nodejs_eventloop_lag_max_seconds') ?? Number.NaN) * 1000,
      activeHandles: m.get('nodejs_active_handles_total') ?? Number.NaN,
      fds: fds.all,
      fdSockets: fds.sockets,
      fdPipes: fds.pipes,
      fdProc: fds.proc,
      cpuPct,
      clientCpuPct,
      sandboxes: sandboxCount(instancesDir),
      processes: procs.length,
      liveInstances: new Set(procs.map((p) => p.sandbox)).size,
      versions: Array.isArray(apps.json) ? apps.json.length : Number.NaN,
      healthyInstances: Array.isArray(apps.json) ? apps.json.reduce((a, app) => a + app['instance-counts']['healthy-instances'], 0) : Number.NaN,
      trackerEntries: Object.keys(tracker.json.state).length,
      autoscalerEntries: Object.keys(autoscaler.json.state).length,
      schedulerServices: scheduler.json.state.services.length,
      metricServices: services.size,
      metricLines: metricsRes.split('\n').filter((l) => l !== '' && !l.startsWith('#')).length,
      servicesGauge: m.get('maitre_services') ?? Number.NaN,
      gcIdle: m.get('maitre_gc_deletions_total{reason="idle"}') ?? 0,
      gcStale: m.get('maitre_gc_deletions_total{reason="stale"}') ?? 0,
      gcBroken: m.get('maitre_gc_deletions_total{reason="broken"}') ?? 0,
      requests: interval.total(),
      rps: interval.total() / seconds,
      p99Ms: percentile(interval.latencies, 0.99),
      addedP99Ms: percentile(interval.added, 0.99),
      coldStarts: interval.coldStarts,
      unexpected: interval.unexpected(),
      expected502: interval.get('502 killed instance'),
      refusals503: interval.get('503 MAITRE_QUEUE_FULL') + interval.get('503 MAITRE_QUEUE_TIMEOUT') + interval.get('503 MAITRE_DEPLOYMENT'),
      aborted: interval.get('aborted'),
      load1: loadavg()[0] as number,
    }
    interval = new Tally()
    samples.push(s)
    writeCsv()
    console.error(`[${String(s.t).padStart(5)} s ${phase}] rss ${s.rssMb.toFixed(0)} MB heap ${s.heapUsedMb.toFixed(1)} MB${Number.isNaN(s.liveHeapMb) ? '' : ` (live ${s.liveHeapMb.toFixed(1)}, code ${s.liveCodeMb.toFixed(1)}; rss ${s.liveRssMb.toFixed(0)})`} lag p99 ${s.lagP99Ms.toFixed(1)} ms fds ${s.fds} (${s.fdSockets} sockets) cpu ${s.cpuPct.toFixed(0)}% (soak ${s.clientCpuPct.toFixed(0)}%) | versions ${s.versions} instances ${s.liveInstances} procs ${s.processes} sandboxes ${s.sandboxes} series ${s.metricServices} | ${s.rps.toFixed(0)} req/s p99 ${s.p99Ms.toFixed(0)} ms (added ${s.addedP99Ms.toFixed(0)}) cold ${s.coldStarts} 502k ${s.expected502} 503 ${s.refusals503} aborted ${s.aborted} unexpected ${s.unexpected} | gc idle ${s.gcIdle} stale ${s.gcStale} | load ${s.load1.toFixed(2)}`)
    return s
  }

  await takeSample('start')

  // --- traffic, edits, kills ---------------------------------------------------------------
  let stopping = false
  let wake: () => void = () => undefined
  const stopped = new Promise<void>((r) => (wake = r))
  const stop = (): void => {
    if (stopping) return
    stopping = true
    wake()
  }
  const pause = (ms: number): Promise<void> => Promise.race([sleep(ms), stopped])
  process.once('SIGINT', () => {
    console.error('soak: SIGINT — ending the traffic now (a second one exits at once)')
    stop()
    process.once('SIGINT', () => process.exit(130))
  })
  void exited.then(stop)

  const agent = new Agent({ keepAliveTimeout: 10_000 })
  const weighted = tokens.filter((t) => t.weight > 0)
  const weightSum = weighted.reduce((a, t) => a + t.weight, 0)
  const cold = tokens.filter((t) => t.tier === 'cold')
  let nextColdAt = Date.now()
  const pickToken = (): TokenSpec => {
    if (Date.now() >= nextColdAt) {
      nextColdAt = Date.now() + expGap(COLD_GAP_MS)
      return cold[rand(0, cold.length - 1)] as TokenSpec
    }
    let x = Math.random() * weightSum
    for (const t of weighted) {
      x -= t.weight
      if (x < 0) return t
    }
    return weighted[weighted.length - 1] as TokenSpec
  }
  const workers = Array.from({ length: CLIENTS }, async () => {
    while (!stopping) await shoot(agent, url, pickToken())
  })

  const edits = { version: 0, metadata: 0, failed: 0 }
  const editor = (async () => {
    for (let n = 0; ; n++) {
      await pause(rand(EDIT_MS * 0.5, EDIT_MS * 1.5))
      if (stopping) return
      // Mostly tokens whose versions run (hot and warm), so edits leave stale versions behind.
      const pool = Math.random() < 0.7 ? weighted : tokens
      const t = pool[rand(0, pool.length - 1)] as TokenSpec
      const newVersion = n % 3 !== 2
      if (newVersion) {
        t.version += 1
        t.descriptor['version'] = `v${t.version}`
      } else {
        // Token-only settings: the token changes, the service id does not.
        t.descriptor['queue-timeout-ms'] = t.descriptor['queue-timeout-ms'] === 30_000 ? 45_000 : 30_000
      }
      try {
        const r = await api(`${url}/token`, 'POST', { token: t.name, ...t.descriptor })
        if (r.status !== 200) throw new Error(`${r.status} ${JSON.stringify(r.json)}`)
        edits[newVersion ? 'version' : 'metadata'] += 1
      } catch (err) {
        edits.failed += 1
        console.error(`soak: edit of ${t.name} failed: ${(err as Error).message}`)
      }
    }
  })()

  const kills = { api: 0, sigkill: 0, failed: 0 }
  const killer = (async () => {
    for (let n = 0; ; n++) {
      await pause(rand(KILL_MS * 0.67, KILL_MS * 1.33))
      if (stopping) return
      try {
        const apps = (await api<AppSummary[]>(`${url}/apps`)).json.filter((a) => a['instance-counts']['healthy-instances'] > 0)
        if (apps.length === 0) continue
        // Busy versions are likelier: a kill under load is the interesting one.
        const weights = apps.map((a) => 1 + a['request-metrics']['in-flight'])
        let x = Math.random() * weights.reduce((a, b) => a + b, 0)
        const app = apps.find((_, i) => (x -= weights[i] as number) < 0) ?? (apps[0] as AppSummary)
        const id = app['service-id']
        const detail = (await api<AppDetail>(`${url}/apps/${encodeURIComponent(id)}`)).json
        const healthy = detail.instances['active-instances'].filter((i) => i.healthy)
        const victim = healthy[rand(0, healthy.length - 1)]
        if (victim === undefined) continue
        killed.set(victim.id, Date.now())
        if (n % 3 === 2) {
          // SIGKILL the app's own process (node kitchen.mjs), as a crash or the OOM killer would.
          const proc = instanceProcesses(dataDir).find((p) => p.sandbox === victim['log-directory'] && p.cmdline.includes('kitchen.mjs'))
          if (proc === undefined) throw new Error(`no process found for ${victim.id}`)
          process.kill(proc.pid, 'SIGKILL')
          kills.sigkill += 1
        } else {
          const r = await api(`${url}/apps/${encodeURIComponent(id)}/instance/${encodeURIComponent(victim.id)}/kill`, 'POST')
          if (r.status !== 200) throw new Error(`kill ${victim.id}: ${r.status} ${JSON.stringify(r.json)}`)
          kills.api += 1
        }
      } catch (err) {
        kills.failed += 1
        console.error(`soak: kill failed: ${(err as Error).message}`)
      }
    }
  })()

  const sampler = (async () => {
    const deadline = started + MINUTES * 60_000
    for (let next = started + SAMPLE_MS; ; next += SAMPLE_MS) {
      await pause(Math.max(0, Math.min(next, deadline) - Date.now()))
      if (stopping) return
      await takeSample('traffic').catch((err: unknown) => console.error(`soak: sample failed: ${(err as Error).message}`))
      if (Date.now() >= deadline - 100) return stop()
    }
  })()

  await sampler
  const crashed = routerExit !== undefined
  stop()
  await Promise.all([...workers, editor, killer])
  const trafficEnd = Date.now()
  if (routerExit === undefined) await takeSample('end')
  await agent.close()
  const trafficSamples = samples.filter((s) => s.phase === 'traffic')

  // --- drain: every version is idle now and must be collected ---------------------------------
  let drained: Sample | undefined
  if (routerExit === undefined) {
    console.error('soak: traffic over; waiting for every version to be collected')
    const deadline = Date.now() + COOLDOWN_SECS * 1000
    while (Date.now() < deadline && routerExit === undefined) {
      await sleep(SAMPLE_MS)
      const s = await takeSample('drain', true)
      if (s.versions === 0 && s.processes === 0 && s.sandboxes === 0 && s.trackerEntries === 0 && s.autoscalerEntries === 0) {
        drained = s
        break
      }
    }
  }

  // --- stop with live instances and requests in flight ----------------------------------------
  const shutdownRequests = { ok: 0, sent: 0 }
  let stopMs = Number.NaN
  let leftoverProcs: { pid: number; cmdline: string }[] = []
  let leftoverSandboxes = Number.NaN
  let exitCode: number | string | null = routerExit ?? null
  let stopDiagnosis: string | undefined
  if (routerExit === undefined) {
    const last = new Agent({ keepAliveTimeout: 1_000 })
    const inflight = tokens.slice(0, 5).map(async (t) => {
      shutdownRequests.sent += 1
      try {
        const res = await request(`${url}/sleep?sleep-ms=3000`, { dispatcher: last, headers: { 'x-waiter-token': t.name } })
        await res.body.text()
        if (res.statusCode === 200) shutdownRequests.ok += 1
      } catch {}
    })
    // Cold starts take ~100–300 ms here; SIGTERM once all five run with a request inside.
    for (let i = 0; i < 100 && instanceProcesses(dataDir).filter((p) => p.cmdline.includes('kitchen.mjs')).length < 5; i++) await sleep(50)
    await sleep(500)
    const liveAtStop = instanceProcesses(dataDir).length
    const t0 = performance.now()
    router.kill('SIGTERM')
    let result = await Promise.race([exited, sleep(20_000).then(() => 'timeout' as const)])
    if (result === 'timeout') {
      // What keeps it alive, asked through the inspector before giving it the rest of a minute.
      stopDiagnosis = await evaluate(inspectPort, STOP_DIAGNOSIS).catch((err: unknown) => `(inspector: ${(err as Error).message})`)
      console.error(`soak: the router is still up 20 s after SIGTERM; active resources: ${stopDiagnosis}`)
      result = await Promise.race([exited, sleep(40_000).then(() => 'timeout' as const)])
    }
    stopMs = performance.now() - t0
    if (result === 'timeout') {
      exitCode = 'did not exit within 60 s'
      router.kill('SIGKILL')
      await exited
    } else {
      exitCode = result
    }
    await Promise.all(inflight)
    await last.close()
    leftoverProcs = instanceProcesses(dataDir)
    leftoverSandboxes = sandboxCount(instancesDir)
    console.error(`soak: SIGTERM with ${liveAtStop} instance processes and ${shutdownRequests.sent} requests in flight; exit ${String(exitCode)} after ${stopMs.toFixed(0)} ms; left: ${leftoverProcs.length} processes, ${leftoverSandboxes} sandboxes`)
    if (leftoverProcs.length > 0) {
      await sleep(2000)
      console.error(`soak: 2 s later: ${instanceProcesses(dataDir).length} processes`)
    }
  } else {
    leftoverProcs = instanceProcesses(dataDir)
    leftoverSandboxes = sandboxCount(instancesDir)
  }
  await admin.close()

  // --- the router's log ------------------------------------------------------------------------
  const logText = existsSync(logPath) ? readFileSync(logPath, 'utf8') : ''
  // Without the inspector's own lines (the live-heap probe connects every minute).
  const logLines = logText.split('\n').filter((l) => l !== '' && !/^(Debugger listening on|For help, see: |Debugger attached\.|Debugger ending on)/.test(l))
  const byMsg = new Map<string, number>()
  const errorLines: string[] = []
  for (const line of logLines) {
    try {
      const entry = JSON.parse(line) as { level?: number; msg?: string; code?: string; reason?: string }
      const key = `${entry.level === 50 ? 'error' : entry.level === 40 ? 'warn' : String(entry.level)} ${entry.msg ?? ''}${entry.code === undefined ? '' : ` ${entry.code}`}${entry.msg === 'instance exited' && entry.reason !== undefined ? ` (${entry.reason})` : ''}`
      byMsg.set(key, (byMsg.get(key) ?? 0) + 1)
      if ((entry.level ?? 0) >= 50) errorLines.push(line)
    } catch {
      byMsg.set('(not JSON)', (byMsg.get('(not JSON)') ?? 0) + 1)
      errorLines.push(line)
    }
  }

  // --- verdict -----------------------------------------------------------------------------------
  const trafficMinutes = (trafficEnd - started) / 60_000
  const judged = trafficMinutes >= JUDGED_MINUTES
  const secondHalf = trafficSamples.filter((s) => s.t >= (trafficEnd - started) / 2000)
  /** Slope per hour (and its standard error) over the second half, of the samples that have the value. */
  const perHour = (pick: (s: Sample) => number): { slope: number; se: number } => {
    const have = secondHalf.filter((s) => Number.isFinite(pick(s)))
    const r = fit(have.map((s) => s.t), have.map(pick))
    return { slope: r.slope * 3600, se: r.se * 3600 }
  }
  const rssFit = perHour((s) => s.liveRssMb)
  const rssSlope = rssFit.slope
  const rawRssFit = perHour((s) => s.rssMb)
  const heapFit = perHour((s) => s.liveHeapMb)
  const heapSlope = heapFit.slope
  const codeFit = perHour((s) => s.liveCodeMb)
  const oldFit = perHour((s) => s.liveOldMb)
  const fdFit = perHour((s) => s.fds)
  const start = samples[0] as Sample
  const final = samples[samples.length - 1] as Sample
  const failures: string[] = []
  if (crashed) failures.push(`the router exited by itself with ${String(routerExit)} during the traffic; see ${logPath}`)
  for (const [k, v] of all.counts) if (!EXPECTED.has(k)) failures.push(`${v} × ${k}${examples.has(k) ? `, e.g. ${(examples.get(k) ?? []).join(' | ')}` : ''}`)
  if (unexplainedExits.length > 0) failures.push(`${unexplainedExits.length} instances ended without being killed by this script: ${unexplainedExits.slice(0, 5).join(' | ')}`)
  if (errorLines.length > 0) failures.push(`${errorLines.length} error lines in the router's log, e.g. ${errorLines.slice(0, 3).join(' | ')}`)
  if (MINUTES >= 2 && final.gcIdle === 0) failures.push('no version was collected as idle')
  if (MINUTES >= 2 && final.gcStale === 0) failures.push('no version was collected as stale')
  if (drained === undefined) failures.push(`not drained ${COOLDOWN_SECS} s after the traffic: ${final.versions} versions, ${final.liveInstances} instances (${final.processes} processes), ${final.sandboxes} sandboxes, ${final.trackerEntries} tracker and ${final.autoscalerEntries} autoscaler entries`)
  else {
    if (drained.metricServices > 0) failures.push(`${drained.metricServices} services still have metric series once every version is gone`)
    if (drained.fds > start.fds + FD_SLACK) failures.push(`the drained router holds ${drained.fds} file descriptors against ${start.fds} at the start`)
  }
  if (exitCode !== 0) failures.push(`the router's exit on SIGTERM: ${String(exitCode)}${stopDiagnosis === undefined ? '' : `; 20 s after SIGTERM its active resources were ${stopDiagnosis}`}`)
  if (shutdownRequests.ok !== shutdownRequests.sent) failures.push(`${shutdownRequests.sent - shutdownRequests.ok} of ${shutdownRequests.sent} requests in flight at SIGTERM were not drained`)
  if (leftoverProcs.length > 0) failures.push(`${leftoverProcs.length} instance processes left after the stop: ${leftoverProcs.map((p) => `${p.pid} ${p.cmdline}`).join('; ')}`)
  if (leftoverSandboxes !== 0) failures.push(`${leftoverSandboxes} sandboxes left after the stop`)
  if (judged && rssSlope > MAX_RSS_SLOPE) failures.push(`RSS (after a full GC) grows ${rssSlope.toFixed(1)} ± ${rssFit.se.toFixed(1)} MB/hour over the second half (limit ${MAX_RSS_SLOPE})`)
  if (judged && heapSlope > MAX_HEAP_SLOPE) failures.push(`the live heap grows ${heapSlope.toFixed(1)} ± ${heapFit.se.toFixed(1)} MB/hour over the second half (limit ${MAX_HEAP_SLOPE})`)

  // --- report ------------------------------------------------------------------------------------
  const f = (n: number, d = 0): string => (Number.isFinite(n) ? n.toFixed(d) : '-')
  const during = samples.filter((s) => s.phase === 'traffic' || s.phase === 'end')
  const max = (pick: (s: Sample) => number): number => during.map(pick).filter(Number.isFinite).reduce((a, b) => (Number.isNaN(a) ? b : Math.max(a, b)), Number.NaN)
  const lastOf = (pick: (s: Sample) => number): number => [...during].reverse().map(pick).find(Number.isFinite) ?? Number.NaN
  const row = (label: string, pick: (s: Sample) => number, d = 0): string =>
    `| ${label} | ${f(pick(start), d)} | ${f(lastOf(pick), d)} | ${f(max(pick), d)} | ${drained === undefined ? `not drained (${f(pick(final), d)})` : f(pick(drained), d)} |`
  const lines: string[] = []
  lines.push(`Soak: ${f(trafficMinutes, 1)} min of traffic from ${CLIENTS} clients over ${TOKENS} tokens, ${all.total()} requests (${f(all.total() / ((trafficEnd - started) / 1000))} req/s); ${edits.version} version edits + ${edits.metadata} token-only edits; ${kills.api} API kills + ${kills.sigkill} SIGKILLs; ${samples.length} samples every ${SAMPLE_MS / 1000} s.`)
  lines.push(`Machine: ${machine}; load average (1 min) during the traffic: mean ${f(trafficSamples.reduce((a, s) => a + s.load1, 0) / Math.max(1, trafficSamples.length), 2)}, max ${f(max((s) => s.load1), 2)}; router CPU mean ${f(trafficSamples.reduce((a, s) => a + s.cpuPct, 0) / Math.max(1, trafficSamples.length))} % of a core, this script's (the clients) ${f(trafficSamples.reduce((a, s) => a + s.clientCpuPct, 0) / Math.max(1, trafficSamples.length))} %.`)
  lines.push('')
  lines.push('| router | start (no traffic) | end of traffic | max during traffic | drained (all versions collected) |', '|---|---|---|---|---|')
  lines.push(row('RSS MB (as scraped)', (s) => s.rssMb), row('RSS MB after a forced full GC (every 30 s)', (s) => s.liveRssMb), row('… of which anonymous MB', (s) => s.liveRssAnonMb), row('heap used MB (as scraped)', (s) => s.heapUsedMb, 1), row('live heap MB (heap used after that GC)', (s) => s.liveHeapMb, 1), row('… of which code space MB', (s) => s.liveCodeMb, 1), row('heap total MB', (s) => s.heapTotalMb), row('event-loop lag p99 ms (10 ms resolution)', (s) => s.lagP99Ms, 1))
  lines.push(row('open file descriptors', (s) => s.fds), row('… of which sockets', (s) => s.fdSockets), row('… of which pipes', (s) => s.fdPipes), row('… of which files under /proc (transient)', (s) => s.fdProc), row('active handles', (s) => s.activeHandles), row('versions (/apps)', (s) => s.versions), row('live instances', (s) => s.liveInstances))
  lines.push(row('instance processes', (s) => s.processes), row('sandboxes on disk', (s) => s.sandboxes), row('instance-tracker entries', (s) => s.trackerEntries), row('autoscaler entries', (s) => s.autoscalerEntries))
  lines.push(row('services with metric series', (s) => s.metricServices), row('metric lines', (s) => s.metricLines))
  lines.push('')
  const pm = (r: { slope: number; se: number }): string => `${f(r.slope, 1)} ± ${f(r.se, 1)}`
  lines.push(`Second half of the traffic (from t = ${f(secondHalf[0]?.t ?? Number.NaN)} s), least-squares slopes per hour (± standard error): RSS after a full GC ${pm(rssFit)} MB, live heap ${pm(heapFit)} MB (old space ${pm(oldFit)}, code space ${pm(codeFit)}); RSS as scraped ${pm(rawRssFit)} MB (garbage included: noise); file descriptors ${pm(fdFit)}${judged ? ` (limits: RSS ${MAX_RSS_SLOPE}, live heap ${MAX_HEAP_SLOPE} MB/hour)` : ` (not judged: runs under ${JUDGED_MINUTES} min)`}.`)
  lines.push(`Stop: SIGTERM with 5 versions running and ${shutdownRequests.sent} requests in flight → exit ${String(exitCode)} in ${f(stopMs)} ms, ${shutdownRequests.ok}/${shutdownRequests.sent} requests completed; left behind: ${leftoverProcs.length} processes, ${f(leftoverSandboxes)} sandboxes.`)
  lines.push('')
  lines.push('| requests by outcome | count | expected |', '|---|---|---|')
  for (const [k, v] of [...all.counts].sort((a, b) => b[1] - a[1])) lines.push(`| ${k} | ${v} | ${EXPECTED.has(k) ? 'yes' : '**no**'} |`)
  lines.push('')
  lines.push(`Latency of completed requests (2xx, /sleep 10–200 ms and /chunked streams included): p50 ${f(percentile(all.latencies, 0.5), 1)} ms, p99 ${f(percentile(all.latencies, 0.99), 1)} ms, max ${f(percentile(all.latencies, 1))} ms; without cold starts p99 ${f(percentile(all.warmLatencies, 0.99), 1)} ms; ${all.coldStarts} cold starts. Time added to what the app was asked to spend (the sleep, the chunk delays), warm requests: p50 ${f(percentile(all.added, 0.5), 1)} ms, p99 ${f(percentile(all.added, 0.99), 1)} ms.`)
  lines.push(`Garbage collections: ${final.gcIdle} idle, ${final.gcStale} stale, ${final.gcBroken} broken.`)
  lines.push(`Router log (level warn): ${logLines.length} lines — ${[...byMsg].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k}: ${v}`).join('; ')}.`)
  lines.push('')
  lines.push(failures.length === 0 ? 'Verdict: PASS — no unexpected error, nothing left behind.' : `Verdict: FAIL\n${failures.map((x) => `- ${x}`).join('\n')}`)

  writeCsv()
  const jsonPath = join(dir, 'soak.json')
  writeFileSync(jsonPath, JSON.stringify({
    settings: { minutes: MINUTES, clients: CLIENTS, tokens: TOKENS, abortShare: ABORT_SHARE, gcIntervalMs: GC_INTERVAL_MS, portLow: PORT_LOW, descriptors: tokens.map((t) => ({ token: t.name, tier: t.tier, weight: t.weight, ...t.descriptor })) },
    machine, outcomes: Object.fromEntries(all.counts), examples: Object.fromEntries(examples), edits, kills,
    slopesPerHour: { rssAfterGcMb: rssFit, liveHeapMb: heapFit, oldSpaceMb: oldFit, codeSpaceMb: codeFit, rssAsScrapedMb: rawRssFit, fds: fdFit }, exitCode, stopMs, shutdownRequests,
    leftovers: { processes: leftoverProcs, sandboxes: leftoverSandboxes }, stopDiagnosis, unexplainedExits, log: Object.fromEntries(byMsg), failures, samples,
  }, null, 2))
  console.log(lines.join('\n'))
  console.log(`\nSamples: ${csvPath} and ${jsonPath}; router log: ${logPath}; config: ${configPath} (${statSync(logPath).size} bytes of log)`)
  return failures.length === 0 ? 0 : 1
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(err)
    process.exit(1)
  },
)
