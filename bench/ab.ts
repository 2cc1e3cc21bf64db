/**
 * Interleaved A/B of maitre's data path between two commits: `npm run bench:ab -- --a X --b Y`.
 *
 * On this shared 2-core machine two bench runs an hour apart can differ by 30 % with no code
 * change (bench/RESULTS.md), so a data-path claim needs both commits measured in one run: both
 * routers up at the same time, each from its own git worktree, each with the bench backend as its
 * service's one warm instance, and `wrk -t2 -c64` on the tiny response alternating between them
 * (A B, B A, A B, …, so neither always runs first), reading req/s and the router's own CPU time
 * per request. The worktrees share this checkout's node_modules (a symlink): dependencies are the
 * same for both, so only maitre's own code differs.
 *
 * Launch variants of one commit (or of two): `--a-flags` / `--b-flags` replace the Node flags that
 * side's shebang declares, `--a-env` / `--b-env` add to the environment it declares (`env -S
 * NAME=value node …`); both as space-separated lists. Each side's RSS right after its last run is
 * reported too.
 *
 *   node bench/ab.ts --a <commit-ish> --b <commit-ish> [--rounds 6] [--secs 5] [--gap 0] [--access-log] [--out file.json]
 *                    [--a-flags='--max-semi-space-size=8 …'] [--a-env='MALLOC_ARENA_MAX=2 …'] [--b-flags=…] [--b-env=…]
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { spawnSync, type ChildProcess } from 'node:child_process'
import { cpuSeconds, ensureTools, freePort, median, rssMb, start, waitForHttp, wrk } from './tools.ts'

const { values: opts } = parseArgs({
  options: {
    a: { type: 'string' },
    b: { type: 'string' },
    rounds: { type: 'string', default: '6' },
    secs: { type: 'string', default: '5' },
    gap: { type: 'string', default: '0' },
    out: { type: 'string' },
    'a-flags': { type: 'string' },
    'b-flags': { type: 'string' },
    'a-env': { type: 'string' },
    'b-env': { type: 'string' },
    'access-log': { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  },
})
const USAGE = "usage: node bench/ab.ts --a <commit-ish> --b <commit-ish> [--rounds 6] [--secs 5] [--access-log] [--out file.json] [--a-flags='--flag …'] [--a-env='NAME=value …'] [--b-flags=…] [--b-env=…] (with '=': a value that starts with a dash)"
if (opts.help === true) {
  console.log(USAGE)
  process.exit(0)
}
if (opts.a === undefined || opts.b === undefined) {
  console.error(USAGE)
  process.exit(2)
}
const ROUNDS = Number(opts.rounds)
const SECONDS = Number(opts.secs)
/** Seconds with no traffic at all before each run: past the routers' server.memoryRelease.quietMs (60 s by default) plus a reading (5 s), each run starts after a release. */
const GAP_SECONDS = Number(opts.gap)
const CONNECTIONS = 64
const ROOT = fileURLToPath(new URL('..', import.meta.url))
// This checkout's backend for both routers: the instance must not be one of the differences.
const BACKEND = join(ROOT, 'bench', 'backend.mjs')

interface Router {
  readonly label: 'A' | 'B'
  readonly ref: string
  readonly commit: string
  readonly nodeFlags: readonly string[]
  readonly env: Readonly<Record<string, string>>
  readonly url: string
  readonly child: ChildProcess
}

interface Run {
  readonly round: number
  readonly router: 'A' | 'B'
  readonly rps: number
  readonly cpuUsPerRequest: number
  readonly p99Ms: number
  readonly errors: number
  readonly rssMb: number
}

const dir = mkdtempSync(join(tmpdir(), 'maitre-ab-'))
const worktrees: string[] = []
const routers: ChildProcess[] = []

function git(...args: string[]): string {
  const res = spawnSync('git', args, { cwd: ROOT, encoding: 'utf8' })
  if (res.status !== 0) throw new Error(`git ${args.join(' ')}: ${res.stderr.trim()}`)
  return res.stdout.trim()
}

/** SIGTERM (maitre drains and stops its instance), SIGKILL if it has not exited in 10 s. */
async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  child.kill('SIGTERM')
  const timer = setTimeout(() => child.kill('SIGKILL'), 10_000)
  await exited
  clearTimeout(timer)
}

let cleaning: Promise<void> | undefined
function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    await Promise.all(routers.map(stop))
    for (const worktree of worktrees) spawnSync('git', ['worktree', 'remove', '--force', worktree], { cwd: ROOT })
    rmSync(dir, { recursive: true, force: true })
  })()
  return cleaning
}
// Ctrl-C reaches the routers and wrk too (same process group); cleanup still removes the worktrees.
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => void cleanup().finally(() => process.exit(130)))
}

/** `NAME=value NAME2=value2` as a record. */
function envList(text: string | undefined): Record<string, string> {
  const pairs = (text ?? '').split(/\s+/).filter((s) => /^[A-Za-z_][A-Za-z0-9_]*=/.test(s))
  return Object.fromEntries(pairs.map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]))
}

/**
 * Checks the commit out and starts its router the way bench/run.ts starts maitre (same config,
 * but log level warn and the access log off), using the entry point, Node flags and environment
 * that commit itself declares (package.json's bin, the entry's shebang: `#!/usr/bin/env -S
 * NAME=value node --flag`), so each runs as it shipped, unless --a-flags/--a-env (--b-…) say
 * otherwise.
 */
async function startRouter(label: 'A' | 'B', ref: string, flagsOverride: string | undefined, extraEnv: string | undefined): Promise<Router> {
  const commit = git('rev-parse', '--short', `${ref}^{commit}`)
  const worktree = join(dir, label)
  git('worktree', 'add', '--detach', worktree, commit)
  worktrees.push(worktree)
  symlinkSync(join(ROOT, 'node_modules'), join(worktree, 'node_modules'))
  const pkg = JSON.parse(readFileSync(join(worktree, 'package.json'), 'utf8')) as { bin?: Record<string, string> }
  const entry = join(worktree, pkg.bin?.['maitre'] ?? 'src/main.ts')
  if (!existsSync(entry)) throw new Error(`${ref}: no entry point ${entry}`)
  const shebang = readFileSync(entry, 'utf8').split('\n', 1)[0] ?? ''
  const declared = shebang.startsWith('#!') ? shebang.split(/\s+/) : []
  const nodeFlags = flagsOverride === undefined ? declared.filter((arg) => arg.startsWith('--')) : flagsOverride.split(/\s+/).filter((s) => s !== '')
  // env -S assignments come before the command (`node`); after it they would be arguments.
  const nodeAt = declared.findIndex((arg) => arg === 'node' || arg.endsWith('/node'))
  const env = { ...envList(declared.slice(0, nodeAt < 0 ? 0 : nodeAt).join(' ')), ...envList(extraEnv) }

  const port = await freePort()
  const config = join(dir, `${label}.yaml`)
  // --access-log: both write their per-request line (to /dev/null), as a router with default settings does.
  const log = opts['access-log'] === true ? 'log:\n  level: info\n' : 'log:\n  level: warn\n  access: false\n'
  writeFileSync(config, `server:\n  port: ${port}\ndataDir: ${join(dir, `${label}-data`)}\n${log}`)
  const child = start(process.execPath, [...nodeFlags, entry, 'serve', '--config', config], { ...process.env, ...env })
  routers.push(child)
  const url = `http://127.0.0.1:${port}`
  await waitForHttp(`${url}/status`)
  // The same service as bench/run.ts: one warm instance with room for every connection.
  const descriptor = { token: 'bench', cmd: `${process.execPath} ${BACKEND} $PORT0`, cpus: 1, mem: 512, version: 'bench', 'concurrency-level': 1000, 'min-instances': 1, 'max-instances': 1, 'health-check-url': '/tiny' }
  const created = await fetch(`${url}/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(descriptor) })
  if (!created.ok) throw new Error(`${label} (${commit}) token: ${created.status} ${await created.text()}`)
  // The first request waits for the instance to be healthy.
  const warm = await fetch(`${url}/tiny`, { headers: { 'x-waiter-token': 'bench' } })
  if (!warm.ok) throw new Error(`${label} (${commit}) warm-up: ${warm.status}`)
  return { label, ref, commit, nodeFlags, env, url, child }
}

async function measure(router: Router, round: number): Promise<Run> {
  const pid = router.child.pid as number
  const before = cpuSeconds([pid])
  const result = await wrk(`${router.url}/tiny`, CONNECTIONS, SECONDS, ['x-waiter-token: bench'])
  const cpu = cpuSeconds([pid]) - before
  // A router that died would otherwise show up only as a run full of socket errors.
  if (router.child.exitCode !== null || router.child.signalCode !== null) throw new Error(`router ${router.label} (${router.commit}) exited`)
  return { round, router: router.label, rps: result.rps, cpuUsPerRequest: result.requests === 0 ? Number.NaN : (cpu * 1e6) / result.requests, p99Ms: result.p99Ms, errors: result.errors, rssMb: rssMb(pid) }
}

async function main(): Promise<void> {
  ensureTools({ wrk: 'wrk' })
  const a = await startRouter('A', opts.a as string, opts['a-flags'], opts['a-env'])
  const b = await startRouter('B', opts.b as string, opts['b-flags'], opts['b-env'])
  // JIT and connection pools warm before anything is counted, for both alike.
  for (const router of [a, b]) await wrk(`${router.url}/tiny`, CONNECTIONS, 2, ['x-waiter-token: bench'])

  const runs: Run[] = []
  console.log(`A = ${a.ref} (${a.commit}), B = ${b.ref} (${b.commit}); node ${process.version}, flags A [${a.nodeFlags.join(' ')}] B [${b.nodeFlags.join(' ')}], env A [${Object.entries(a.env).map(([k, v]) => `${k}=${v}`).join(' ')}] B [${Object.entries(b.env).map(([k, v]) => `${k}=${v}`).join(' ')}]; node_modules shared from ${ROOT}`)
  console.log(`wrk -t2 -c${CONNECTIONS} -d${SECONDS}s /tiny, ${ROUNDS} rounds, the order flipped each round${GAP_SECONDS > 0 ? `, ${GAP_SECONDS} s without traffic before each run` : ''}`)
  console.log('| round | router | req/s | CPU µs/req | p99 ms | errors | RSS MB |\n|---|---|---|---|---|---|---|')
  for (let round = 1; round <= ROUNDS; round++) {
    for (const router of round % 2 === 1 ? [a, b] : [b, a]) {
      if (GAP_SECONDS > 0) await new Promise((r) => setTimeout(r, GAP_SECONDS * 1000))
      const run = await measure(router, round)
      runs.push(run)
      console.log(`| ${round} | ${run.router} ${router.commit} | ${run.rps.toFixed(0)} | ${run.cpuUsPerRequest.toFixed(1)} | ${run.p99Ms.toFixed(2)} | ${run.errors} | ${run.rssMb.toFixed(0)} |`)
    }
  }
  const summary = (router: Router) => {
    const own = runs.filter((r) => r.router === router.label)
    return { ref: router.ref, commit: router.commit, nodeFlags: router.nodeFlags, env: router.env, rssAfterMb: own[own.length - 1]?.rssMb ?? Number.NaN, rps: median(own.map((r) => r.rps)), cpuUsPerRequest: median(own.map((r) => r.cpuUsPerRequest)), p99Ms: median(own.map((r) => r.p99Ms)), errors: own.reduce((n, r) => n + r.errors, 0) }
  }
  const medians = { A: summary(a), B: summary(b) }
  console.log('\n| medians | req/s | CPU µs/req | p99 ms | errors | RSS after the last run MB |\n|---|---|---|---|---|---|')
  for (const [label, m] of Object.entries(medians)) console.log(`| ${label} ${m.commit} | ${m.rps.toFixed(0)} | ${m.cpuUsPerRequest.toFixed(1)} | ${m.p99Ms.toFixed(2)} | ${m.errors} | ${m.rssAfterMb.toFixed(0)} |`)
  console.log(`B ÷ A: req/s ${(medians.B.rps / medians.A.rps).toFixed(3)}, CPU/req ${(medians.B.cpuUsPerRequest / medians.A.cpuUsPerRequest).toFixed(3)}`)
  // Each round's two runs are back to back, so their ratio is less exposed to the machine's drift
  // over the whole run than the ratio of the two medians.
  const paired = Array.from({ length: ROUNDS }, (_, i) => {
    const ra = runs.find((r) => r.round === i + 1 && r.router === 'A')
    const rb = runs.find((r) => r.round === i + 1 && r.router === 'B')
    return ra === undefined || rb === undefined ? undefined : { rps: rb.rps / ra.rps, cpu: rb.cpuUsPerRequest / ra.cpuUsPerRequest }
  }).filter((p) => p !== undefined)
  const pairedMedians = { rps: median(paired.map((p) => p.rps)), cpu: median(paired.map((p) => p.cpu)) }
  console.log(`B ÷ A within each round, median: req/s ${pairedMedians.rps.toFixed(3)}, CPU/req ${pairedMedians.cpu.toFixed(3)} (CPU/req ratios ${paired.map((p) => p.cpu.toFixed(2)).join(', ')})`)
  if (opts.out !== undefined) {
    const setup = { connections: CONNECTIONS, seconds: SECONDS, rounds: ROUNDS, node: process.version, nodeModules: `shared: both worktrees link ${join(ROOT, 'node_modules')}` }
    writeFileSync(opts.out, `${JSON.stringify({ setup, medians, pairedMedians, runs }, null, 2)}\n`)
    console.log(`written to ${opts.out}`)
  }
}

main().then(
  () => cleanup().then(() => process.exit(0)),
  (err: unknown) => {
    console.error(err)
    void cleanup().then(() => process.exit(1))
  },
)
