/** Helpers the benchmark shares: processes, ports, wrk, /proc readings. */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer()
    probe.once('error', reject)
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as { port: number }
      probe.close(() => resolve(port))
    })
  })
}

export async function waitForHttp(url: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    try {
      const res = await fetch(url)
      await res.arrayBuffer()
      if (res.ok) return
    } catch {
      // not up yet
    }
    if (Date.now() > deadline) throw new Error(`${url} did not come up in ${timeoutMs} ms`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

/**
 * The V8 flags maitre runs with wherever it is launched (src/main.ts's shebang, `npm start`, the
 * Dockerfile): 16 MB semi-spaces instead of the up to 64 MB V8 picks on a large machine, which
 * keep the router's RSS ~75–100 MB lower under load at the same throughput (RESULTS.md).
 */
export const MAITRE_NODE_FLAGS = ['--max-semi-space-size=16'] as const

/**
 * The environment maitre runs with wherever it is launched with glibc's malloc (the `env -S`
 * assignments of src/main.ts's shebang, `npm start`), for the router only, under the caller's
 * (who can set another MALLOC_ARENA_MAX to measure glibc's default); the benchmarks launch
 * maitre with it so they measure it as it ships. Two malloc arenas
 * instead of glibc's eight per core: the freed memory each thread's arena keeps dropped from
 * 34–38 to 10–16 MB, the quiet RSS after the bench from 150–152 to 134–135 MB, for no change in
 * throughput or CPU per request (RESULTS.md, "Memory: two malloc arenas"). The image uses
 * jemalloc, which this does not touch. Instances never inherit it (they get their own env).
 */
export const MAITRE_ENV: Readonly<Record<string, string>> = { MALLOC_ARENA_MAX: '2' }

export function start(command: string, args: readonly string[], env: NodeJS.ProcessEnv = process.env): ChildProcess {
  return spawn(command, args, { stdio: ['ignore', 'ignore', 'inherit'], env })
}

/** Installs Debian packages when a tool is missing (the benchmark runs as root on the project machines). */
export function ensureTools(tools: Readonly<Record<string, string>>): void {
  const missing = Object.entries(tools).filter(([bin]) => spawnSync('which', [bin]).status !== 0)
  if (missing.length === 0) return
  const packages = missing.map(([, pkg]) => pkg)
  console.error(`installing ${packages.join(', ')} from Debian's packages…`)
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }
  if (spawnSync('apt-get', ['install', '-y', '-qq', ...packages], { stdio: 'inherit', env }).status !== 0) {
    spawnSync('apt-get', ['update', '-qq'], { stdio: 'inherit', env })
    if (spawnSync('apt-get', ['install', '-y', '-qq', ...packages], { stdio: 'inherit', env }).status !== 0) {
      throw new Error(`could not install ${packages.join(', ')}`)
    }
  }
}

/** CPU seconds (user + system) used so far by the given processes. */
export function cpuSeconds(pids: readonly number[]): number {
  let ticks = 0
  for (const pid of pids) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      ticks += Number(fields[11]) + Number(fields[12])
    } catch {
      // gone
    }
  }
  return ticks / 100 // USER_HZ
}

export function rssMb(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024
}

/** The process's peak RSS (VmHWM), in MB. */
export function peakRssMb(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  return Number(/VmHWM:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024
}

export function childPids(pid: number): number[] {
  const out = spawnSync('pgrep', ['-P', String(pid)], { encoding: 'utf8' }).stdout
  return out.split('\n').filter((s) => s !== '').map(Number)
}

export interface WrkResult {
  readonly rps: number
  readonly p50Ms: number
  readonly p99Ms: number
  readonly requests: number
  readonly errors: number
}

function toMs(text: string): number {
  const m = /^([\d.]+)(us|ms|s)$/.exec(text.trim())
  if (m === null) return Number.NaN
  const v = Number(m[1])
  return m[2] === 'us' ? v / 1000 : m[2] === 's' ? v * 1000 : v
}

export function wrk(url: string, connections: number, seconds: number, headers: readonly string[] = [], threads = 2): Promise<WrkResult> {
  const args = [`-t${threads}`, `-c${connections}`, `-d${seconds}s`, '--latency', ...headers.flatMap((h) => ['-H', h]), url]
  return new Promise((resolve, reject) => {
    const child = spawn('wrk', args, { stdio: ['ignore', 'pipe', 'inherit'] })
    let text = ''
    child.stdout.on('data', (c: Buffer) => (text += c.toString()))
    child.once('error', reject)
    child.once('exit', () => {
      const requests = Number(/(\d+) requests in/.exec(text)?.[1] ?? 0)
      const non2xx = Number(/Non-2xx or 3xx responses: (\d+)/.exec(text)?.[1] ?? 0)
      const socketErrors = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(text)
      const errors = non2xx + (socketErrors === null ? 0 : socketErrors.slice(1).reduce((a, b) => a + Number(b), 0))
      resolve({
        rps: Number(/Requests\/sec:\s+([\d.]+)/.exec(text)?.[1] ?? 0),
        p50Ms: toMs(/\s50%\s+(\S+)/.exec(text)?.[1] ?? ''),
        p99Ms: toMs(/\s99%\s+(\S+)/.exec(text)?.[1] ?? ''),
        requests,
        errors,
      })
    })
  })
}

export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 0 ? ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2 : (sorted[mid] as number)
}

/**
 * Writes an nginx.conf into `dir` and returns its path: one worker (like-for-like with one Node
 * event loop on this 2-core machine), no daemon, no access log, and `http` holding `httpBlock`.
 */
export function writeNginxConf(dir: string, httpBlock: string): string {
  const conf = `${dir}/nginx.conf`
  writeFileSync(conf, `worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/nginx-error.log warn;
daemon off;
events { worker_connections 4096; }
http {
  access_log off;
${httpBlock}
}
`)
  return conf
}
