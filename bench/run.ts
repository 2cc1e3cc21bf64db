/**
 * maitre's benchmark, one command: `npm run bench`. In one run, interleaving the targets, it
 * measures a fixed test backend (a) directly, (b) through nginx as a keep-alive reverse proxy,
 * (c) through maitre with a warm service, and (d) through the floor of any Node.js proxy (node:http
 * + undici, nothing else: bench/bare-proxy.mjs), once in one process and once in two processes
 * sharing the port (what spreading a Node proxy over both cores buys), and once more with the
 * headers Waiter's protocol adds to every request and answer (what the protocol itself costs), (e) Go's
 * httputil.ReverseProxy at GOMAXPROCS=1 (bench/go-proxy, built here when Go is installed; the
 * data plane of the KEDA HTTP add-on and of Knative's activator); then cold starts and a
 * 0 → 50 client burst. It prints markdown tables of absolute figures and of the ratios that matter.
 *
 *   BENCH_SECONDS=5 BENCH_ROUNDS=2 npm run bench
 *   BENCH_ACCESS_LOG=1 (maitre writes its per-request log line; nginx's access_log stays off)
 *   BENCH_SKIP_SCALING=1 (data path only); BENCH_GO=0 (no Go anchor)
 */
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { spawnSync, type ChildProcess } from 'node:child_process'
import { childPids, cpuSeconds, ensureTools, freePort, median, peakRssMb, rssMb, start, waitForHttp, wrk, writeNginxConf, type WrkResult, MAITRE_ENV, MAITRE_NODE_FLAGS } from './tools.ts'
import { coldStarts, burst } from './scaling.ts'

const SECONDS = Number(process.env['BENCH_SECONDS'] ?? 5)
const ROUNDS = Number(process.env['BENCH_ROUNDS'] ?? 2)
/** How long after the last run the RSS is read again: past server.memoryRelease.quietMs (60 s by default) and two of its read intervals (5 s). */
const QUIET_READ_MS = 72_000
const ROOT = fileURLToPath(new URL('..', import.meta.url))
const BACKEND = join(ROOT, 'bench', 'backend.mjs')
const BARE_PROXY = join(ROOT, 'bench', 'bare-proxy.mjs')
const GO_PROXY = join(ROOT, 'bench', 'go-proxy')

/**
 * Builds the Go anchor (httputil.ReverseProxy, stdlib only) when Go is installed (Debian's
 * golang-go; BENCH_GO=0 skips it). Returns the binary, or undefined without Go.
 */
function buildGoProxy(dir: string): string | undefined {
  if (process.env['BENCH_GO'] === '0') return undefined
  if (spawnSync('which', ['go']).status !== 0) {
    console.error('go not found: the Go anchor is left out (apt-get install golang-go to add it)')
    return undefined
  }
  const binary = join(dir, 'go-proxy')
  const built = spawnSync('go', ['build', '-o', binary, '.'], { cwd: GO_PROXY, env: { ...process.env, GOCACHE: join(dir, 'gocache'), GOPATH: join(dir, 'gopath'), GOFLAGS: '-mod=mod' }, stdio: ['ignore', 'inherit', 'inherit'] })
  if (built.status !== 0) throw new Error('building bench/go-proxy failed')
  return binary
}

interface Target {
  readonly name: 'direct' | 'nginx' | 'node floor' | 'node floor ×2' | 'node floor + Waiter headers' | 'go' | 'maitre'
  readonly url: string
  readonly headers: readonly string[]
  /** Processes whose CPU counts as the proxy's. */
  readonly proxyPids: () => number[]
}

interface Sample extends WrkResult {
  readonly cpuMsPerRequest: number | undefined
}

const children: ChildProcess[] = []
function cleanup(): void {
  for (const child of children) child.kill('SIGTERM')
}
process.on('exit', cleanup)

async function startNginx(dir: string, backendPort: number): Promise<{ port: number; pid: () => number[] }> {
  const port = await freePort()
  const conf = writeNginxConf(dir, `  upstream backend { server 127.0.0.1:${backendPort}; keepalive 256; }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering on;
    }
  }`)
  const nginx = start('nginx', ['-c', conf, '-p', dir])
  children.push(nginx)
  await waitForHttp(`http://127.0.0.1:${port}/tiny`)
  return { port, pid: () => childPids(nginx.pid as number) }
}

async function startMaitre(dir: string): Promise<{ port: number; pid: number; url: string }> {
  const port = await freePort()
  const config = join(dir, 'maitre.yaml')
  // nginx runs with access_log off; so does maitre unless BENCH_ACCESS_LOG=1 (its cost is then in the figures).
  const accessLog = process.env['BENCH_ACCESS_LOG'] === '1' ? '' : '  access: false\n'
  writeFileSync(config, `server:\n  port: ${port}\ndataDir: ${join(dir, 'maitre-data')}\nlog:\n  level: ${process.env['BENCH_LOG_LEVEL'] ?? 'info'}\n${accessLog}`)
  // Launched as it ships: the shebang's environment (MAITRE_ENV) and Node flags.
  const maitre = start(process.execPath, [...MAITRE_NODE_FLAGS, join(ROOT, 'src', 'main.ts'), 'serve', '--config', config], { ...MAITRE_ENV, ...process.env })
  children.push(maitre)
  const url = `http://127.0.0.1:${port}`
  await waitForHttp(`${url}/status`)
  return { port, pid: maitre.pid as number, url }
}

async function createToken(url: string, token: string, descriptor: Record<string, unknown>): Promise<void> {
  const res = await fetch(`${url}/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token, ...descriptor }) })
  if (!res.ok) throw new Error(`token ${token}: ${res.status} ${await res.text()}`)
}

async function measure(target: Target, path: string, connections: number): Promise<Sample> {
  const pids = target.proxyPids()
  const cpuBefore = cpuSeconds(pids)
  const result = await wrk(`${target.url}${path}`, connections, SECONDS, target.headers)
  const cpu = cpuSeconds(pids) - cpuBefore
  return { ...result, cpuMsPerRequest: pids.length === 0 || result.requests === 0 ? undefined : (cpu * 1000) / result.requests }
}

const fmt = (n: number | undefined, digits = 2): string => (n === undefined || !Number.isFinite(n) ? '-' : n.toFixed(digits))

async function main(): Promise<void> {
  ensureTools({ wrk: 'wrk', nginx: 'nginx' })
  const dir = mkdtempSync(join(tmpdir(), 'maitre-bench-'))
  const backendPort = await freePort()
  const backend = start(process.execPath, [BACKEND, String(backendPort)])
  children.push(backend)
  await waitForHttp(`http://127.0.0.1:${backendPort}/tiny`)
  const nginx = await startNginx(dir, backendPort)
  const barePort = await freePort()
  const bare = start(process.execPath, [BARE_PROXY, String(barePort), String(backendPort)])
  children.push(bare)
  await waitForHttp(`http://127.0.0.1:${barePort}/tiny`)
  const pairPort = await freePort()
  const pair = [0, 1].map(() => start(process.execPath, [BARE_PROXY, String(pairPort), String(backendPort)]))
  children.push(...pair)
  // This only shows one of the two listening; maitre's start and the warm-up below give the other time.
  await waitForHttp(`http://127.0.0.1:${pairPort}/tiny`)
  const waiterFloorPort = await freePort()
  const waiterFloor = start(process.execPath, [BARE_PROXY, String(waiterFloorPort), String(backendPort), '--waiter-headers'])
  children.push(waiterFloor)
  await waitForHttp(`http://127.0.0.1:${waiterFloorPort}/tiny`)
  const goBinary = buildGoProxy(dir)
  const goPort = goBinary === undefined ? undefined : await freePort()
  // One OS thread running Go code, as maitre has one event loop.
  const goProxy = goBinary === undefined ? undefined : start(goBinary, [String(goPort), String(backendPort)], { ...process.env, GOMAXPROCS: '1' })
  if (goProxy !== undefined) {
    children.push(goProxy)
    await waitForHttp(`http://127.0.0.1:${goPort}/tiny`)
  }
  const maitre = await startMaitre(dir)
  // One warm instance with room for every connection, like the direct target.
  await createToken(maitre.url, 'bench', { cmd: `${process.execPath} ${BACKEND} $PORT0`, cpus: 1, mem: 512, version: 'bench', 'concurrency-level': 1000, 'min-instances': 1, 'max-instances': 1, 'health-check-url': '/tiny' })
  const warm = await fetch(`${maitre.url}/tiny`, { headers: { 'x-waiter-token': 'bench' } })
  if (!warm.ok) throw new Error(`maitre warm-up failed: ${warm.status}`)

  const targets: Target[] = [
    { name: 'direct', url: `http://127.0.0.1:${backendPort}`, headers: [], proxyPids: () => [] },
    { name: 'nginx', url: `http://127.0.0.1:${nginx.port}`, headers: [], proxyPids: nginx.pid },
    { name: 'node floor', url: `http://127.0.0.1:${barePort}`, headers: [], proxyPids: () => [bare.pid as number] },
    { name: 'node floor ×2', url: `http://127.0.0.1:${pairPort}`, headers: [], proxyPids: () => pair.map((p) => p.pid as number) },
    // The same request bytes as maitre gets (its x-waiter-* fields are dropped on the way, as maitre drops them).
    { name: 'node floor + Waiter headers', url: `http://127.0.0.1:${waiterFloorPort}`, headers: ['x-waiter-token: bench'], proxyPids: () => [waiterFloor.pid as number] },
    ...(goProxy === undefined ? [] : [{ name: 'go' as const, url: `http://127.0.0.1:${goPort}`, headers: [], proxyPids: () => [goProxy.pid as number] }]),
    { name: 'maitre', url: maitre.url, headers: ['x-waiter-token: bench'], proxyPids: () => [maitre.pid] },
  ]
  // JIT and pools warm before anything is counted, for every proxy alike.
  for (const target of targets) await wrk(`${target.url}/tiny`, 64, 2, target.headers)
  const scenarios = [
    { name: 'tiny', path: '/tiny', connections: 16 },
    { name: 'tiny', path: '/tiny', connections: 64 },
    { name: '10 ms', path: '/slow', connections: 16 },
    { name: '10 ms', path: '/slow', connections: 64 },
  ]
  const results = new Map<string, Sample[]>()
  for (let round = 0; round < ROUNDS; round++) {
    for (const scenario of scenarios) {
      for (const target of targets) {
        const sample = await measure(target, scenario.path, scenario.connections)
        const key = `${scenario.name}|${scenario.connections}|${target.name}`
        results.set(key, [...(results.get(key) ?? []), sample])
        console.error(`round ${round + 1} ${scenario.name} c=${scenario.connections} ${target.name}: ${sample.rps.toFixed(0)} req/s p50 ${fmt(sample.p50Ms)} p99 ${fmt(sample.p99Ms)} ms errors ${sample.errors}`)
      }
    }
  }
  const agg = (key: string) => {
    const samples = results.get(key) ?? []
    const cpu = samples.map((s) => s.cpuMsPerRequest).filter((c): c is number => c !== undefined)
    return {
      rps: median(samples.map((s) => s.rps)),
      p50: median(samples.map((s) => s.p50Ms)),
      p99: median(samples.map((s) => s.p99Ms)),
      cpu: cpu.length === 0 ? undefined : median(cpu),
      errors: samples.reduce((a, s) => a + s.errors, 0),
    }
  }
  // The RSS as the load ends (and its peak), then once the quiet spell has had its release
  // (server.memoryRelease, on by default): what maitre holds between bursts.
  const rssAfterRuns = rssMb(maitre.pid)
  const rssPeak = peakRssMb(maitre.pid)
  await new Promise((r) => setTimeout(r, QUIET_READ_MS))
  const rssQuiet = rssMb(maitre.pid)
  const lines: string[] = []
  lines.push(`Data path: wrk -t2, ${SECONDS} s per run, ${ROUNDS} interleaved rounds, medians. maitre RSS after the runs: ${rssAfterRuns.toFixed(0)} MB (peak ${rssPeak.toFixed(0)} MB); ${QUIET_READ_MS / 1000} s later, with no traffic: ${rssQuiet.toFixed(0)} MB.`, '')
  lines.push('| scenario | conns | target | req/s | p50 ms | p99 ms | proxy CPU µs/req | errors |', '|---|---|---|---|---|---|---|---|')
  for (const s of scenarios) {
    for (const t of targets) {
      const a = agg(`${s.name}|${s.connections}|${t.name}`)
      lines.push(`| ${s.name} | ${s.connections} | ${t.name} | ${a.rps.toFixed(0)} | ${fmt(a.p50)} | ${fmt(a.p99)} | ${a.cpu === undefined ? '-' : (a.cpu * 1000).toFixed(0)} | ${a.errors} |`)
    }
  }
  lines.push('', '| scenario | conns | maitre ÷ direct | maitre ÷ nginx | node floor ÷ nginx | node floor ×2 ÷ nginx | maitre ÷ node floor | nginx ÷ direct | maitre adds p50 ms | maitre adds p99 ms | node floor adds p99 ms | node floor ×2 adds p99 ms |', '|---|---|---|---|---|---|---|---|---|---|---|---|')
  for (const s of scenarios) {
    const d = agg(`${s.name}|${s.connections}|direct`)
    const n = agg(`${s.name}|${s.connections}|nginx`)
    const f = agg(`${s.name}|${s.connections}|node floor`)
    const f2 = agg(`${s.name}|${s.connections}|node floor ×2`)
    const m = agg(`${s.name}|${s.connections}|maitre`)
    lines.push(`| ${s.name} | ${s.connections} | ${(m.rps / d.rps).toFixed(2)} | ${(m.rps / n.rps).toFixed(2)} | ${(f.rps / n.rps).toFixed(2)} | ${(f2.rps / n.rps).toFixed(2)} | ${(m.rps / f.rps).toFixed(2)} | ${(n.rps / d.rps).toFixed(2)} | ${fmt(m.p50 - d.p50)} | ${fmt(m.p99 - d.p99)} | ${fmt(f.p99 - d.p99)} | ${fmt(f2.p99 - d.p99)} |`)
  }
  // What Waiter's protocol costs a proxy (the floor with the headers maitre adds, ÷ the floor), and maitre beside that floor.
  lines.push('', '| scenario | conns | node floor + Waiter headers ÷ node floor | maitre ÷ node floor + Waiter headers | CPU µs/req: node floor / + Waiter headers / maitre |', '|---|---|---|---|---|')
  for (const s of scenarios) {
    const f = agg(`${s.name}|${s.connections}|node floor`)
    const w = agg(`${s.name}|${s.connections}|node floor + Waiter headers`)
    const m = agg(`${s.name}|${s.connections}|maitre`)
    const us = (v: number | undefined): string => (v === undefined ? '-' : (v * 1000).toFixed(0))
    lines.push(`| ${s.name} | ${s.connections} | ${(w.rps / f.rps).toFixed(2)} | ${(m.rps / w.rps).toFixed(2)} | ${us(f.cpu)} / ${us(w.cpu)} / ${us(m.cpu)} |`)
  }
  if (targets.some((t) => t.name === 'go')) {
    // The Go anchor: httputil.ReverseProxy at GOMAXPROCS=1 (the KEDA add-on's and Knative's data plane).
    lines.push('', '| scenario | conns | maitre ÷ Go | node floor ÷ Go | Go ÷ nginx | Go CPU µs/req | maitre CPU µs/req | Go adds p99 ms | maitre adds p99 ms |', '|---|---|---|---|---|---|---|---|---|')
    for (const s of scenarios) {
      const d = agg(`${s.name}|${s.connections}|direct`)
      const n = agg(`${s.name}|${s.connections}|nginx`)
      const f = agg(`${s.name}|${s.connections}|node floor`)
      const g = agg(`${s.name}|${s.connections}|go`)
      const m = agg(`${s.name}|${s.connections}|maitre`)
      const us = (v: number | undefined): string => (v === undefined ? '-' : (v * 1000).toFixed(0))
      lines.push(`| ${s.name} | ${s.connections} | ${(m.rps / g.rps).toFixed(2)} | ${(f.rps / g.rps).toFixed(2)} | ${(g.rps / n.rps).toFixed(2)} | ${us(g.cpu)} | ${us(m.cpu)} | ${fmt(g.p99 - d.p99)} | ${fmt(m.p99 - d.p99)} |`)
    }
  }
  console.log(lines.join('\n'))

  if (process.env['BENCH_SKIP_SCALING'] !== '1') {
    console.log('')
    console.log(await coldStarts(maitre.url, BACKEND, 20))
    console.log('')
    console.log(await burst(maitre.url, BACKEND, 50))
  }
  cleanup()
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err)
    cleanup()
    process.exit(1)
  },
)
