/**
 * maitre's memory under the bench's data-path load, for launch variants of this checkout side by side:
 * `node bench/memory.ts --variant 'label|ENV=V …|--v8-flag …' …`.
 *
 * Each variant is one router (this checkout's src/main.ts) launched with its own environment and
 * Node flags, with the bench backend as its service's one warm instance, all up at once. The load
 * is bench/run.ts's data path (wrk -t2 on the tiny and the 10 ms response, 16 and 64 connections,
 * `--rounds` rounds of `--secs` s), each run going to every variant in turn, the order rotated
 * between runs so none is always first on this shared machine. Read per variant: the RSS right
 * after its last run (what bench/run.ts prints as "maitre RSS after the runs"), its peak (VmHWM),
 * the RSS after each `--idle` mark once all load has stopped (V8's memory reducer and the
 * allocator's trimming act only then), V8's heap spaces at those points (bench/memory-probe.mjs),
 * and req/s and the router's own CPU µs per request per scenario (medians of the rounds).
 *
 *   node bench/memory.ts [--variant 'label|ENV=V|--flag'] … [--rounds 2] [--secs 5] [--idle 10,30]
 *                        [--load bench|tiny] [--copies 1] [--logs dir] [--out file.json]
 *
 * Without --variant, one router launched as maitre ships (MAITRE_ENV and MAITRE_NODE_FLAGS).
 * A variant's flags replace the shipped ones (write them all); its env is added to this process's.
 */
import { mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { spawn, type ChildProcess } from 'node:child_process'
import { cpuSeconds, ensureTools, freePort, median, rssMb, start, waitForHttp, wrk, MAITRE_ENV, MAITRE_NODE_FLAGS } from './tools.ts'

const { values: opts } = parseArgs({
  options: {
    variant: { type: 'string', multiple: true },
    rounds: { type: 'string', default: '2' },
    secs: { type: 'string', default: '5' },
    idle: { type: 'string', default: '10,30' },
    load: { type: 'string', default: 'bench' },
    copies: { type: 'string', default: '1' },
    logs: { type: 'string' },
    out: { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  },
})
if (opts.help === true) {
  console.log("usage: node bench/memory.ts [--variant 'label|ENV=V …|--flag …'] … [--rounds 2] [--secs 5] [--idle 10,30] [--load bench|tiny] [--copies 1] [--logs dir] [--out file.json]")
  process.exit(0)
}

const ROUNDS = Number(opts.rounds)
const SECONDS = Number(opts.secs)
const IDLE_MARKS = (opts.idle ?? '').split(',').filter((s) => s !== '').map(Number)
const ROOT = fileURLToPath(new URL('..', import.meta.url))
const BACKEND = join(ROOT, 'bench', 'backend.mjs')
const PROBE = join(ROOT, 'bench', 'memory-probe.mjs')
const ENTRY = join(ROOT, 'src', 'main.ts')
const SCENARIOS = opts.load === 'tiny'
  ? [{ name: 'tiny c64', path: '/tiny', connections: 64 }]
  : [
      { name: 'tiny c16', path: '/tiny', connections: 16 },
      { name: 'tiny c64', path: '/tiny', connections: 64 },
      { name: '10 ms c16', path: '/slow', connections: 16 },
      { name: '10 ms c64', path: '/slow', connections: 64 },
    ]

interface VariantSpec {
  readonly label: string
  readonly env: Readonly<Record<string, string>>
  readonly flags: readonly string[]
}

function parseVariant(spec: string): VariantSpec {
  const [label = '', env = '', flags = ''] = spec.split('|')
  return {
    label,
    env: Object.fromEntries(env.split(/\s+/).filter((s) => s !== '').map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)])),
    flags: flags.split(/\s+/).filter((s) => s !== ''),
  }
}

const COPIES = Number(opts.copies)
const baseSpecs: VariantSpec[] = opts.variant === undefined || opts.variant.length === 0
  ? [{ label: 'shipped', env: MAITRE_ENV, flags: MAITRE_NODE_FLAGS }]
  : opts.variant.map(parseVariant)
// Copies of one variant run side by side, for the spread of a variant against itself.
const specs: VariantSpec[] = COPIES <= 1 ? baseSpecs : baseSpecs.flatMap((spec) => Array.from({ length: COPIES }, (_, i) => ({ ...spec, label: `${spec.label} #${i + 1}` })))

interface Probe {
  readonly rss: number
  readonly heapCommitted: number
  readonly heapUsed: number
  readonly external: number
  readonly malloced: number
  readonly spaces: Record<string, { committed: number; used: number }>
  readonly gcs?: Record<'minor' | 'major' | 'incremental', { count: number; ms: number }>
}

interface Router {
  readonly spec: VariantSpec
  readonly url: string
  readonly child: ChildProcess
  readonly probeFile: string
}

interface Run {
  readonly scenario: string
  readonly rps: number
  readonly cpuUs: number
  readonly p99Ms: number
  readonly errors: number
  readonly rssAfter: number
}

const dir = mkdtempSync(join(tmpdir(), 'maitre-memory-'))
const children: ChildProcess[] = []
function cleanup(): void {
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM')
}
process.on('exit', () => {
  cleanup()
  rmSync(dir, { recursive: true, force: true })
})
for (const signal of ['SIGINT', 'SIGTERM'] as const) process.on(signal, () => process.exit(130))

/**
 * The RSS split by who mapped it, from /proc/PID/smaps: V8's heap pages (anonymous mappings
 * below 0x400000000000, where V8 places its random-hinted page reservations on x64 Linux), glibc's
 * malloc (the main arena's brk heap, and the 64 MB-aligned anonymous mappings of its per-thread
 * arenas), file-backed pages (mostly the node binary's code and read-only data), and the other
 * anonymous mappings (thread stacks, V8's code range, malloc's large mmapped chunks, and jemalloc's
 * extents when it is preloaded).
 */
function rssSplit(pid: number): Record<'v8' | 'brk' | 'arenas' | 'file' | 'otherAnon', number> {
  const out = { v8: 0, brk: 0, arenas: 0, file: 0, otherAnon: 0 }
  let kind: keyof typeof out = 'otherAnon'
  for (const line of readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const head = /^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$/.exec(line)
    if (head !== null) {
      const start = BigInt(`0x${head[1]}`)
      const name = head[4] ?? ''
      kind = name.startsWith('/') ? 'file'
        : name === '[heap]' ? 'brk'
        : name !== '' ? 'otherAnon'
        : start < 0x400000000000n ? 'v8'
        : start % (64n << 20n) === 0n && head[3] === 'rw-p' ? 'arenas'
        : 'otherAnon'
      continue
    }
    if (line.startsWith('Rss:')) out[kind] += Number(line.split(/\s+/)[1]) / 1024
  }
  return out
}

const hwmMb = (pid: number): number => Number(/VmHWM:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0) / 1024
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

async function probe(router: Router): Promise<Probe | undefined> {
  rmSync(router.probeFile, { force: true })
  router.child.kill('SIGUSR2')
  for (let i = 0; i < 50; i++) {
    await sleep(20)
    try {
      return JSON.parse(readFileSync(router.probeFile, 'utf8')) as Probe
    } catch {
      // not written yet
    }
  }
  return undefined
}

async function startRouter(spec: VariantSpec, index: number): Promise<Router> {
  const port = await freePort()
  const config = join(dir, `${index}.yaml`)
  // bench/run.ts's config: access log off, as nginx's; log level warn as bench/ab.ts.
  writeFileSync(config, `server:\n  port: ${port}\ndataDir: ${join(dir, `${index}-data`)}\nlog:\n  level: warn\n  access: false\n`)
  const probeFile = join(dir, `${index}.probe.json`)
  const args = [...spec.flags, '--import', PROBE, ENTRY, 'serve', '--config', config]
  const env = { ...process.env, ...spec.env, MEM_PROBE_OUT: probeFile }
  // --logs DIR keeps each router's stdout (e.g. a variant's --trace-gc-nvp) as DIR/<index>.log.
  const child = opts.logs === undefined
    ? start(process.execPath, args, env)
    : spawn(process.execPath, args, { stdio: ['ignore', openSync(join(opts.logs, `${index}.log`), 'w'), 'inherit'], env })
  children.push(child)
  const url = `http://127.0.0.1:${port}`
  await waitForHttp(`${url}/status`)
  const descriptor = { token: 'bench', cmd: `${process.execPath} ${BACKEND} $PORT0`, cpus: 1, mem: 512, version: 'bench', 'concurrency-level': 1000, 'min-instances': 1, 'max-instances': 1, 'health-check-url': '/tiny' }
  const created = await fetch(`${url}/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(descriptor) })
  if (!created.ok) throw new Error(`${spec.label} token: ${created.status} ${await created.text()}`)
  const warm = await fetch(`${url}/tiny`, { headers: { 'x-waiter-token': 'bench' } })
  if (!warm.ok) throw new Error(`${spec.label} warm-up: ${warm.status}`)
  return { spec, url, child, probeFile }
}

async function measure(router: Router, scenario: (typeof SCENARIOS)[number]): Promise<Run> {
  const pid = router.child.pid as number
  const before = cpuSeconds([pid])
  const result = await wrk(`${router.url}${scenario.path}`, scenario.connections, SECONDS, ['x-waiter-token: bench'])
  const cpu = cpuSeconds([pid]) - before
  if (router.child.exitCode !== null || router.child.signalCode !== null) throw new Error(`router ${router.spec.label} exited`)
  return { scenario: scenario.name, rps: result.rps, cpuUs: result.requests === 0 ? Number.NaN : (cpu * 1e6) / result.requests, p99Ms: result.p99Ms, errors: result.errors, rssAfter: rssMb(pid) }
}

const f0 = (n: number | undefined): string => (n === undefined || !Number.isFinite(n) ? '-' : n.toFixed(0))
const f1 = (n: number | undefined): string => (n === undefined || !Number.isFinite(n) ? '-' : n.toFixed(1))

async function main(): Promise<void> {
  ensureTools({ wrk: 'wrk' })
  if (opts.logs !== undefined) mkdirSync(opts.logs, { recursive: true })
  const routers: Router[] = []
  for (const [i, spec] of specs.entries()) routers.push(await startRouter(spec, i))
  const startRss = routers.map((r) => rssMb(r.child.pid as number))
  const cpuStart = routers.map((r) => cpuSeconds([r.child.pid as number]))
  for (const router of routers) await wrk(`${router.url}/tiny`, 64, 2, ['x-waiter-token: bench'])

  const runs = new Map<Router, Run[]>(routers.map((r) => [r, []]))
  type Point = { rss: number; split: ReturnType<typeof rssSplit>; probe: Probe | undefined }
  const loadEnd = new Map<Router, Point & { at: number }>()
  let turn = 0
  for (let round = 0; round < ROUNDS; round++) {
    for (const scenario of SCENARIOS) {
      const order = routers.map((_, i) => routers[(i + turn) % routers.length] as Router)
      turn++
      for (const router of order) {
        const run = await measure(router, scenario)
        runs.get(router)?.push(run)
        console.error(`round ${round + 1} ${scenario.name} ${router.spec.label}: ${run.rps.toFixed(0)} req/s, ${run.cpuUs.toFixed(1)} µs/req, p99 ${run.p99Ms.toFixed(2)} ms, RSS ${run.rssAfter.toFixed(0)} MB`)
        if (round === ROUNDS - 1 && scenario === SCENARIOS[SCENARIOS.length - 1]) {
          loadEnd.set(router, { rss: run.rssAfter, split: rssSplit(router.child.pid as number), probe: await probe(router), at: Date.now() })
        }
      }
    }
  }
  const loadStopped = Date.now()
  const cpuLoadEnd = routers.map((r) => cpuSeconds([r.child.pid as number]))
  const idle = new Map<Router, (Point & { mark: number })[]>(routers.map((r) => [r, []]))
  for (const mark of IDLE_MARKS) {
    await sleep(Math.max(0, loadStopped + mark * 1000 - Date.now()))
    for (const router of routers) idle.get(router)?.push({ mark, rss: rssMb(router.child.pid as number), split: rssSplit(router.child.pid as number), probe: await probe(router) })
  }
  const cpuIdle = routers.map((r, i) => cpuSeconds([r.child.pid as number]) - (cpuLoadEnd[i] as number))

  const lines: string[] = []
  lines.push(`Data-path load: ${SCENARIOS.map((s) => s.name).join(', ')}; wrk -t2, ${SECONDS} s per run, ${ROUNDS} rounds, every run to each variant in turn (order rotated); node ${process.version}.`, '')
  lines.push(`| variant | env | node flags | RSS idle before MB | RSS after load MB | peak MB | ${IDLE_MARKS.map((m) => `RSS after ${m} s idle MB`).join(' | ')} | ${SCENARIOS.map((s) => `${s.name} req/s | ${s.name} CPU µs/req`).join(' | ')} | errors |`)
  lines.push(`|${'---|'.repeat(6 + IDLE_MARKS.length + 2 * SCENARIOS.length + 1)}`)
  for (const [i, router] of routers.entries()) {
    const own = runs.get(router) ?? []
    const cells = SCENARIOS.map((s) => {
      const mine = own.filter((r) => r.scenario === s.name)
      return `${f0(median(mine.map((r) => r.rps)))} | ${f1(median(mine.map((r) => r.cpuUs)))}`
    })
    const env = Object.entries(router.spec.env).map(([k, v]) => `${k}=${v}`).join(' ')
    lines.push(`| ${router.spec.label} | ${env || '-'} | ${router.spec.flags.join(' ') || '-'} | ${f0(startRss[i])} | ${f0(loadEnd.get(router)?.rss)} | ${f0(hwmMb(router.child.pid as number))} | ${(idle.get(router) ?? []).map((m) => f0(m.rss)).join(' | ')} | ${cells.join(' | ')} | ${own.reduce((n, r) => n + r.errors, 0)} |`)
  }
  // The n-th run of every variant is the same round and scenario, run within seconds of each other:
  // their ratio to the first variant is less exposed to the machine's drift than medians are.
  if (routers.length > 1) {
    const first = runs.get(routers[0] as Router) ?? []
    lines.push('', `Against ${routers[0]?.spec.label}, the median of the ratios within each round (req/s ÷, CPU µs/req ÷):`, '')
    lines.push(`| variant | ${SCENARIOS.map((s) => `${s.name} req/s ÷ | ${s.name} CPU/req ÷`).join(' | ')} |`, `|---|${'---|'.repeat(2 * SCENARIOS.length)}`)
    for (const router of routers.slice(1)) {
      const own = runs.get(router) ?? []
      const cells = SCENARIOS.map((s) => {
        const pairs = own.map((r, i) => [r, first[i]] as const).filter(([r, f]) => r.scenario === s.name && f !== undefined)
        return `${median(pairs.map(([r, f]) => r.rps / (f as Run).rps)).toFixed(3)} | ${median(pairs.map(([r, f]) => r.cpuUs / (f as Run).cpuUs)).toFixed(3)}`
      })
      lines.push(`| ${router.spec.label} | ${cells.join(' | ')} |`)
    }
  }
  lines.push('', 'Where the RSS is (MB; rssSplit above: V8 pages, glibc malloc brk heap and thread arenas, file-backed, other anonymous), and V8\'s own view (committed / used; new = young generation, old = old space):', '')
  lines.push('| variant | point | RSS | V8 pages | malloc brk | malloc arenas | file | other anon | V8 committed | V8 used | new | old | large objects | external | GCs since start: minor / major (pause ms) |', '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|')
  const heapRow = (label: string, point: string, at: Point | undefined) => {
    const p = at?.probe
    const sp = (name: string) => (p?.spaces[name] === undefined ? '-' : `${f0(p.spaces[name].committed)} / ${f0(p.spaces[name].used)}`)
    const x = at?.split
    return `| ${label} | ${point} | ${f0(at?.rss)} | ${f0(x?.v8)} | ${f0(x?.brk)} | ${f0(x?.arenas)} | ${f0(x?.file)} | ${f0(x?.otherAnon)} | ${f0(p?.heapCommitted)} | ${f0(p?.heapUsed)} | ${sp('new')} | ${sp('old')} | ${sp('large_object')} | ${f1(p?.external)} | ${p?.gcs === undefined ? '-' : `${p.gcs.minor.count} / ${p.gcs.major.count} (${p.gcs.minor.ms} / ${p.gcs.major.ms})`} |`
  }
  for (const router of routers) {
    lines.push(heapRow(router.spec.label, 'after load', loadEnd.get(router)))
    for (const m of idle.get(router) ?? []) lines.push(heapRow(router.spec.label, `after ${m.mark} s idle`, m))
  }
  lines.push('', `Router CPU while idle after the load (memory reducer, timers): ${routers.map((r, i) => `${r.spec.label} ${(cpuIdle[i] as number).toFixed(2)} s`).join(', ')}; CPU over the whole run: ${routers.map((r, i) => `${r.spec.label} ${((cpuLoadEnd[i] as number) - (cpuStart[i] as number)).toFixed(1)} s`).join(', ')}.`)
  console.log(lines.join('\n'))
  if (opts.out !== undefined) {
    const data = routers.map((r, i) => ({ variant: r.spec, rssIdleBefore: startRss[i], loadEnd: loadEnd.get(r), peak: hwmMb(r.child.pid as number), idle: idle.get(r), runs: runs.get(r), cpuIdle: cpuIdle[i] }))
    writeFileSync(opts.out, `${JSON.stringify({ setup: { scenarios: SCENARIOS, seconds: SECONDS, rounds: ROUNDS, node: process.version }, variants: data }, null, 1)}\n`)
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err)
    process.exit(1)
  },
)
