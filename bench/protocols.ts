/**
 * HTTP/2 and gRPC through maitre, measured in one run: `npm run bench:protocols`.
 *
 * Two cases, each against three targets started side by side and interleaved round by round:
 *   h2c  — tiny responses over HTTP/2 cleartext (prior knowledge) from bench/backend-h2c.mjs;
 *   gRPC — unary Echo calls to test/fixtures/grpc-kitchen.mjs (@grpc/grpc-js, h2c).
 * Targets: the backend directly; nginx (one worker, `listen … http2`, `grpc_pass` to the
 * backend: nginx's only HTTP/2 upstream); maitre (one router, the backend as its instance).
 * Load: h2load (Debian's nghttp2-client), C connections × M streams each, for S seconds; every
 * request's latency is read from h2load's log file for the p99. Medians over R rounds.
 *
 *   PROTO_SECONDS=5 PROTO_ROUNDS=3 PROTO_CONNS=16 PROTO_STREAMS=8 npm run bench:protocols
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { spawnSync, type ChildProcess } from 'node:child_process'
import { childPids, cpuSeconds, ensureTools, freePort, median, start, writeNginxConf, MAITRE_ENV, MAITRE_NODE_FLAGS } from './tools.ts'

const SECONDS = Number(process.env['PROTO_SECONDS'] ?? 5)
const ROUNDS = Number(process.env['PROTO_ROUNDS'] ?? 3)
const CONNS = Number(process.env['PROTO_CONNS'] ?? 16)
const STREAMS = Number(process.env['PROTO_STREAMS'] ?? 8)
const ROOT = fileURLToPath(new URL('..', import.meta.url))
const H2C_BACKEND = join(ROOT, 'bench', 'backend-h2c.mjs')
const GRPC_BACKEND = join(ROOT, 'test', 'fixtures', 'grpc-kitchen.mjs')

const children: ChildProcess[] = []
process.on('exit', () => {
  for (const child of children) child.kill('SIGTERM')
})
function run(command: string, args: readonly string[], env: NodeJS.ProcessEnv = process.env): ChildProcess {
  const child = start(command, args, env)
  children.push(child)
  return child
}

/** Polls until an HTTP/2 request (h2load, one request) to `url` answers 200. */
async function waitForH2(url: string, headers: readonly string[], dataFile: string | undefined): Promise<void> {
  const deadline = Date.now() + 20_000
  for (;;) {
    const probe = spawnSync('h2load', ['-n', '1', '-c', '1', ...headers.flatMap((h) => ['-H', h]), ...(dataFile === undefined ? [] : ['-d', dataFile]), url], { encoding: 'utf8' })
    if (/1 succeeded/.test(probe.stdout) && /status codes: 1 2xx/.test(probe.stdout)) return
    if (Date.now() > deadline) throw new Error(`${url} did not answer over h2c: ${probe.stdout.slice(-300)}`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

interface Sample {
  readonly rps: number
  readonly p99Ms: number
  readonly failed: number
  readonly cpuUsPerRequest: number | undefined
}

/** One h2load run: requests per second, p99 latency from the per-request log, failures, the proxy's CPU per request. */
function h2load(url: string, headers: readonly string[], dataFile: string | undefined, proxyPids: number[], dir: string): Sample {
  const log = join(dir, `h2load-${Date.now()}.log`)
  const cpuBefore = proxyPids.length === 0 ? 0 : cpuSeconds(proxyPids)
  const args = ['-D', String(SECONDS), '--warm-up-time', '1', '-c', String(CONNS), '-m', String(STREAMS), '-t', '1', '--log-file', log, ...headers.flatMap((h) => ['-H', h]), ...(dataFile === undefined ? [] : ['-d', dataFile]), url]
  const result = spawnSync('h2load', args, { encoding: 'utf8' })
  const cpu = proxyPids.length === 0 ? 0 : cpuSeconds(proxyPids) - cpuBefore
  const out = result.stdout
  const done = /requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout/.exec(out)
  const rps = Number(/finished in [\d.]+m?s, ([\d.]+) req\/s/.exec(out)?.[1] ?? Number.NaN)
  const requests = Number(done?.[1] ?? 0)
  // Log lines: start time (µs since epoch), status, duration (µs).
  const durations = readFileSync(log, 'utf8').trim().split('\n').map((line) => Number(line.split('\t')[2])).filter((d) => Number.isFinite(d)).sort((a, b) => a - b)
  const p99 = (durations[Math.floor(durations.length * 0.99)] ?? Number.NaN) / 1000
  // Answers that were not 2xx, and connection errors. (h2load's own "failed" also counts the
  // requests a timed run leaves in flight when it stops, up to connections × streams.)
  const bad = /status codes: \d+ 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx/.exec(out)
  const errored = Number(done?.[4] ?? 0)
  return { rps, p99Ms: p99, failed: Number(bad?.[1] ?? 0) + Number(bad?.[2] ?? 0) + Number(bad?.[3] ?? 0) + errored, cpuUsPerRequest: proxyPids.length === 0 || requests === 0 ? undefined : (cpu * 1e6) / requests }
}

async function main(): Promise<void> {
  ensureTools({ h2load: 'nghttp2-client', nginx: 'nginx' })
  const dir = mkdtempSync(join(tmpdir(), 'maitre-proto-'))
  // The backends the direct and nginx targets use (maitre runs its own instances of the same apps).
  const h2cPort = await freePort()
  run(process.execPath, [H2C_BACKEND, String(h2cPort)])
  const grpcPort = await freePort()
  const grpcStatusPort = await freePort()
  run(process.execPath, [GRPC_BACKEND], { ...process.env, PORT0: String(grpcPort), PORT1: String(grpcStatusPort) })

  const nginxH2c = await freePort()
  const nginxGrpc = await freePort()
  const conf = writeNginxConf(dir, `  # nginx closes a client connection after 1000 requests by default; h2load does not reconnect.
  keepalive_requests 100000000;
  upstream h2c { server 127.0.0.1:${h2cPort}; keepalive 64; }
  upstream grpc { server 127.0.0.1:${grpcPort}; keepalive 64; }
  server { listen 127.0.0.1:${nginxH2c} http2; http2_max_concurrent_streams 1000; location / { grpc_pass grpc://h2c; } }
  server { listen 127.0.0.1:${nginxGrpc} http2; http2_max_concurrent_streams 1000; location / { grpc_pass grpc://grpc; } }`)
  const nginx = run('nginx', ['-c', conf, '-p', dir])

  const maitrePort = await freePort()
  const config = join(dir, 'maitre.yaml')
  writeFileSync(config, `server:\n  port: ${maitrePort}\ndataDir: ${join(dir, 'maitre-data')}\nlog:\n  level: warn\n  access: false\n`)
  const maitre = run(process.execPath, [...MAITRE_NODE_FLAGS, join(ROOT, 'src', 'main.ts'), 'serve', '--config', config], { ...MAITRE_ENV, ...process.env })
  const maitreUrl = `http://127.0.0.1:${maitrePort}`
  for (let i = 0; ; i++) {
    try {
      if ((await fetch(`${maitreUrl}/status`)).ok) break
    } catch {
      if (i > 300) throw new Error('maitre did not start')
      await new Promise((r) => setTimeout(r, 50))
    }
  }
  const token = async (name: string, descriptor: Record<string, unknown>): Promise<void> => {
    const res = await fetch(`${maitreUrl}/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: name, ...descriptor }) })
    if (!res.ok) throw new Error(`token ${name}: ${await res.text()}`)
  }
  const fixed = { cpus: 1, mem: 512, 'concurrency-level': 10000, 'min-instances': 1, 'max-instances': 1, 'max-queue-length': 100000 }
  await token('h2c', { ...fixed, cmd: `${process.execPath} ${H2C_BACKEND} $PORT0`, version: 'h2c', 'backend-proto': 'h2c', 'health-check-proto': 'h2c', 'health-check-url': '/tiny' })
  await token('grpc', { ...fixed, cmd: `${process.execPath} ${GRPC_BACKEND}`, version: 'grpc', ports: 2, 'backend-proto': 'h2c', 'health-check-proto': 'http', 'health-check-port-index': 1, 'health-check-url': '/status' })

  // One gRPC message: flag 0 (uncompressed), 4-byte length, the JSON the app's codec reads.
  const message = Buffer.from(JSON.stringify({ text: 'hello' }))
  const frame = Buffer.alloc(5 + message.length)
  frame.writeUInt32BE(message.length, 1)
  message.copy(frame, 5)
  const grpcData = join(dir, 'echo.grpc')
  writeFileSync(grpcData, frame)
  const grpcHeaders = ['content-type: application/grpc', 'te: trailers']

  const cases = [
    { name: 'h2c tiny', data: undefined, targets: [
      { name: 'direct', url: `http://127.0.0.1:${h2cPort}/tiny`, headers: [] as string[], pids: () => [] as number[] },
      { name: 'nginx', url: `http://127.0.0.1:${nginxH2c}/tiny`, headers: [], pids: () => childPids(nginx.pid as number) },
      { name: 'maitre', url: `${maitreUrl}/tiny`, headers: ['x-waiter-token: h2c'], pids: () => [maitre.pid as number] },
    ] },
    { name: 'gRPC unary', data: grpcData, targets: [
      { name: 'direct', url: `http://127.0.0.1:${grpcPort}/kitchen.Kitchen/Echo`, headers: grpcHeaders, pids: () => [] },
      { name: 'nginx', url: `http://127.0.0.1:${nginxGrpc}/kitchen.Kitchen/Echo`, headers: grpcHeaders, pids: () => childPids(nginx.pid as number) },
      { name: 'maitre', url: `${maitreUrl}/kitchen.Kitchen/Echo`, headers: [...grpcHeaders, 'x-waiter-token: grpc'], pids: () => [maitre.pid as number] },
    ] },
  ]
  // Every target answers before any measuring (maitre starts its instances on the first request).
  for (const c of cases) for (const target of c.targets) await waitForH2(target.url, target.headers, c.data)

  const lines = [`HTTP/2 through maitre: h2load -c ${CONNS} -m ${STREAMS} (streams per connection), ${SECONDS} s per run, ${ROUNDS} interleaved rounds, medians.`, '']
  lines.push('| case | target | req/s | p99 ms | failed | proxy CPU µs/request | ÷ direct | ÷ nginx |', '|---|---|---|---|---|---|---|---|')
  for (const c of cases) {
    const samples = new Map<string, Sample[]>()
    for (let round = 0; round < ROUNDS; round++) {
      for (const target of c.targets) {
        const s = h2load(target.url, target.headers, c.data, target.pids(), dir)
        samples.set(target.name, [...(samples.get(target.name) ?? []), s])
        console.error(`${c.name} ${target.name} round ${round + 1}: ${s.rps.toFixed(0)} req/s, p99 ${s.p99Ms.toFixed(1)} ms, failed ${s.failed}`)
      }
    }
    const agg = (name: string): Sample => {
      const list = samples.get(name) ?? []
      const cpu = list.map((s) => s.cpuUsPerRequest).filter((v): v is number => v !== undefined)
      return { rps: median(list.map((s) => s.rps)), p99Ms: median(list.map((s) => s.p99Ms)), failed: list.reduce((n, s) => n + s.failed, 0), cpuUsPerRequest: cpu.length === 0 ? undefined : median(cpu) }
    }
    const direct = agg('direct')
    const nginxAgg = agg('nginx')
    for (const target of c.targets) {
      const a = agg(target.name)
      lines.push(`| ${c.name} | ${target.name} | ${a.rps.toFixed(0)} | ${a.p99Ms.toFixed(1)} | ${a.failed} | ${a.cpuUsPerRequest === undefined ? '-' : a.cpuUsPerRequest.toFixed(0)} | ${(a.rps / direct.rps).toFixed(2)} | ${(a.rps / nginxAgg.rps).toFixed(2)} |`)
    }
  }
  console.log(lines.join('\n'))
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err)
    process.exit(1)
  },
)
