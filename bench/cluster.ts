/**
 * Cluster mode's throughput: `npm run bench:cluster`. One fixed backend instance (bench/backend.mjs
 * as a pod of the in-repo Kubernetes simulator, concurrency-level 1000) behind
 *   - one router without etcd (the embedded default, on the same Kubernetes backend),
 *   - one router with etcd configured (cluster mode with a cluster of one),
 *   - two and three routers in cluster mode, each on its own port (the N-ports case),
 * all started at once and measured interleaved, in rounds. Load: the same 64 connections in all,
 * split evenly over the routers of a case, one wrk per router run at the same time; aggregate
 * throughput is the sum, CPU per request is the routers' CPU over every request they served.
 * The machine's 2 cores also carry wrk, the backend and etcd: read the ratios within one run.
 *
 *   BENCH_SECONDS=5 BENCH_ROUNDS=3 npm run bench:cluster
 *   BENCH_ROUTER_CPU=0.25 npm run bench:cluster   (as root: each router in its own cgroup, capped
 *     at that share of one core, so that the routers, not the machine, are the bottleneck: how
 *     throughput grows with routers when each has its own CPU, on a machine too small to give
 *     each router a core)
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { ChildProcess } from 'node:child_process'
import { cpuSeconds, ensureTools, freePort, median, start, waitForHttp, wrk, type WrkResult, MAITRE_ENV, MAITRE_NODE_FLAGS } from './tools.ts'
import { startKubeSimulator } from '../test/fixtures/k8s-sim/simulator.ts'
import { startEtcd } from '../test/fixtures/etcd.ts'
import { SIM_TOKEN, writeKubeconfig } from '../test/fixtures/router.ts'

const SECONDS = Number(process.env['BENCH_SECONDS'] ?? 5)
const ROUNDS = Number(process.env['BENCH_ROUNDS'] ?? 3)
const CONNECTIONS = Number(process.env['BENCH_CONNECTIONS'] ?? 64)
const ROUTER_CPU = process.env['BENCH_ROUTER_CPU'] === undefined ? undefined : Number(process.env['BENCH_ROUTER_CPU'])
const ROOT = fileURLToPath(new URL('..', import.meta.url))
const BACKEND = join(ROOT, 'bench', 'backend.mjs')

interface Router {
  readonly url: string
  readonly pid: number
}

interface Case {
  readonly name: string
  readonly routers: Router[]
}

const children: ChildProcess[] = []
const cleanups: (() => unknown)[] = []
function cleanup(): void {
  for (const child of children) child.kill('SIGTERM')
}
process.on('exit', cleanup)

/** cgroup v1's cpu controller (as on this VM) or v2's unified hierarchy. */
const CGROUP_V1 = '/sys/fs/cgroup/cpu'
const CGROUP_V2 = '/sys/fs/cgroup'

/** Puts a process in a cgroup of its own capped at `share` of one core (100 ms periods). */
function capCpu(pid: number, name: string, share: number): void {
  const quota = Math.round(share * 100_000)
  // cgroup v1's cpu controller writes period and quota apart; v2 writes both in cpu.max.
  const v1 = existsSync(join(CGROUP_V1, 'cpu.cfs_quota_us'))
  if (!v1 && !existsSync(join(CGROUP_V2, 'cgroup.controllers'))) throw new Error('BENCH_ROUTER_CPU needs a cgroup cpu controller (run as root)')
  const dir = join(v1 ? CGROUP_V1 : CGROUP_V2, `maitre-bench-${name}`)
  mkdirSync(dir, { recursive: true })
  if (v1) {
    writeFileSync(join(dir, 'cpu.cfs_period_us'), '100000')
    writeFileSync(join(dir, 'cpu.cfs_quota_us'), String(quota))
  } else {
    writeFileSync(join(dir, 'cpu.max'), `${quota} 100000`)
  }
  writeFileSync(join(dir, 'cgroup.procs'), String(pid))
  cleanups.push(() => {
    try {
      rmdirSync(dir)
    } catch {}
  })
}

async function startRouter(dir: string, name: string, kubeconfig: string, podBasePort: number, etcd: string | undefined, prefix: string): Promise<Router> {
  const port = await freePort()
  const config = join(dir, `${name}.yaml`)
  writeFileSync(config, [
    'server:', `  port: ${port}`, `dataDir: ${join(dir, name)}`,
    'log:', '  level: warn', '  access: false',
    'backend:', '  kind: kubernetes', '  kubernetes:', `    kubeconfig: ${kubeconfig}`, `    podBasePort: ${podBasePort}`,
    ...(etcd === undefined ? [] : ['etcd:', `  endpoints: [${etcd}]`, `  prefix: ${prefix}`]),
    '',
  ].join('\n'))
  const child = start(process.execPath, [...MAITRE_NODE_FLAGS, join(ROOT, 'src', 'main.ts'), 'serve', '--config', config], { ...MAITRE_ENV, ...process.env })
  children.push(child)
  if (ROUTER_CPU !== undefined) capCpu(child.pid as number, name, ROUTER_CPU)
  const url = `http://127.0.0.1:${port}`
  await waitForHttp(`${url}/status`, 30_000)
  return { url, pid: child.pid as number }
}

async function createToken(url: string, token: string): Promise<void> {
  const descriptor = { token, cmd: `${process.execPath} ${BACKEND} $PORT0`, cpus: 0.1, mem: 128, version: token, 'concurrency-level': 1000, 'min-instances': 1, 'max-instances': 1, 'health-check-url': '/tiny' }
  const res = await fetch(`${url}/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(descriptor) })
  if (!res.ok) throw new Error(`token ${token}: ${res.status} ${await res.text()}`)
}

async function warm(router: Router, token: string): Promise<void> {
  for (const deadline = Date.now() + 60_000; Date.now() < deadline;) {
    const res = await fetch(`${router.url}/tiny`, { headers: { 'x-waiter-token': token } }).catch(() => undefined)
    if (res?.ok === true) return
    await res?.text()
    await new Promise((r) => setTimeout(r, 200))
  }
  throw new Error(`${router.url}: ${token} never answered`)
}

/** Busy and total jiffies of the whole machine so far (all cores), from /proc/stat. */
function machineTicks(): { busy: number; total: number } {
  const fields = (readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '').trim().split(/\s+/).slice(1).map(Number)
  const total = fields.reduce((a, b) => a + b, 0)
  const idle = (fields[3] ?? 0) + (fields[4] ?? 0)
  return { busy: total - idle, total }
}

interface Sample {
  readonly machineBusy: number
  readonly rps: number
  readonly cpuUsPerRequest: number
  readonly p99Ms: number
  readonly errors: number
}

async function measure(c: Case, token: string): Promise<Sample> {
  const pids = c.routers.map((r) => r.pid)
  const before = cpuSeconds(pids)
  const machineBefore = machineTicks()
  const per = Math.max(1, Math.floor(CONNECTIONS / c.routers.length))
  const threads = c.routers.length === 1 ? 2 : 1
  const results: WrkResult[] = await Promise.all(c.routers.map((r) => wrk(`${r.url}/tiny`, per, SECONDS, [`x-waiter-token: ${token}`], threads)))
  const cpu = cpuSeconds(pids) - before
  const machineAfter = machineTicks()
  const requests = results.reduce((a, r) => a + r.requests, 0)
  return {
    machineBusy: (machineAfter.busy - machineBefore.busy) / Math.max(1, machineAfter.total - machineBefore.total),
    rps: results.reduce((a, r) => a + r.rps, 0),
    cpuUsPerRequest: requests === 0 ? Number.NaN : (cpu * 1e6) / requests,
    p99Ms: Math.max(...results.map((r) => r.p99Ms)),
    errors: results.reduce((a, r) => a + r.errors, 0),
  }
}

async function main(): Promise<void> {
  ensureTools({ wrk: 'wrk', etcd: 'etcd-server' })
  const dir = mkdtempSync(join(tmpdir(), 'maitre-bench-cluster-'))
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }))
  const etcd = await startEtcd({ teardown: (fn) => void cleanups.unshift(fn), testdir: () => join(dir, 'etcd') })
  const sim = await startKubeSimulator({ token: SIM_TOKEN, workDir: join(dir, 'sim') })
  cleanups.unshift(() => sim.close())
  const kubeconfig = writeKubeconfig(dir, sim.url, sim.ca)

  // Each case is its own cluster (its own etcd prefix and pod ports), so the cases run side by side.
  const cases: Case[] = []
  const layout: [string, number, boolean][] = [['1 router, no etcd', 1, false], ['1 router, etcd', 1, true], ['2 routers', 2, true], ['3 routers', 3, true]]
  for (const [index, [name, size, withEtcd]] of layout.entries()) {
    const routers: Router[] = []
    for (let i = 0; i < size; i++) routers.push(await startRouter(dir, `case${index}-r${i}`, kubeconfig, 30000 + index * 100, withEtcd ? etcd.endpoint : undefined, `/bench/case${index}`))
    cases.push({ name, routers })
  }
  // A token per case: each case's routers serve their own instance.
  for (const [index, c] of cases.entries()) {
    const token = `bench-${index}`
    await createToken((c.routers[0] as Router).url, token)
    // Through every router: each knows the token (through etcd) and routes to the instance.
    for (const r of c.routers) await warm(r, token)
  }
  for (const [index, c] of cases.entries()) await measure(c, `bench-${index}`) // warm-up: JIT and pools

  const samples = new Map<string, Sample[]>()
  for (let round = 0; round < ROUNDS; round++) {
    for (const [index, c] of cases.entries()) {
      const s = await measure(c, `bench-${index}`)
      samples.set(c.name, [...(samples.get(c.name) ?? []), s])
      console.error(`round ${round + 1} ${c.name}: ${s.rps.toFixed(0)} req/s, ${s.cpuUsPerRequest.toFixed(0)} µs CPU/request, p99 ${s.p99Ms.toFixed(1)} ms, machine ${(s.machineBusy * 100).toFixed(0)} % busy, errors ${s.errors}`)
    }
  }
  const base = median((samples.get('1 router, no etcd') ?? []).map((s) => s.rps))
  const lines = [
    `Cluster mode, tiny responses${ROUTER_CPU === undefined ? '' : `, each router capped at ${ROUTER_CPU} of a core`}: ${CONNECTIONS} connections split over the routers of each case, wrk ${SECONDS} s per run, ${ROUNDS} interleaved rounds, medians.`,
    '',
    '| case | aggregate req/s | ÷ 1 router without etcd | router CPU µs/request | p99 ms (worst router) | machine busy (all cores) | errors |',
    '|---|---|---|---|---|---|---|',
  ]
  for (const c of cases) {
    const list = samples.get(c.name) ?? []
    const rps = median(list.map((s) => s.rps))
    lines.push(`| ${c.name} | ${rps.toFixed(0)} | ${(rps / base).toFixed(2)} | ${median(list.map((s) => s.cpuUsPerRequest)).toFixed(0)} | ${median(list.map((s) => s.p99Ms)).toFixed(1)} | ${(median(list.map((s) => s.machineBusy)) * 100).toFixed(0)} % | ${list.reduce((a, s) => a + s.errors, 0)} |`)
  }
  console.log(lines.join('\n'))
}

main()
  .then(
    () => 0,
    (err: unknown) => {
      console.error(err)
      return 1
    },
  )
  .then(async (code) => {
    cleanup()
    // The routers leave their cgroups only by exiting: wait for that before removing them.
    await Promise.all(children.map((c) => (c.exitCode !== null || c.signalCode !== null ? undefined : new Promise((r) => c.once('exit', r)))))
    for (const fn of cleanups) await fn()
    process.exit(code)
  })
