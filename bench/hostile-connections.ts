/**
 * One client opens 20,000 slow connections (headers that never end, bodies that trickle) while
 * another client, from another address, sends ordinary requests: the other client must be
 * served, about as fast as without the attack. Run: `npm run bench:hostile`
 * (HOSTILE_CONNECTIONS, HOSTILE_SECONDS to change the attack).
 *
 * The attack comes from one address (127.0.0.1) but several processes, 10,000 connections each:
 * one process may not hold 20,000 sockets under the machines' 20,000-descriptor limit.
 */
import { spawn } from 'node:child_process'
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { Agent, request } from 'undici'
import { freePort, rssMb, waitForHttp, MAITRE_ENV, MAITRE_NODE_FLAGS } from './tools.ts'

const REPO = fileURLToPath(new URL('..', import.meta.url))
const KITCHEN = join(REPO, 'test/fixtures/kitchen.mjs')
const CONNECTIONS = Number(process.env['HOSTILE_CONNECTIONS'] ?? 20_000)
const SECONDS = Number(process.env['HOSTILE_SECONDS'] ?? 30)

interface LoadResult {
  readonly ok: number
  readonly failed: Record<string, number>
  readonly p50Ms: number
  readonly p99Ms: number
}

/** `workers` loops of GET /request-info on `token` from `address` for `seconds`. */
async function load(url: string, token: string, address: string, seconds: number, workers = 8): Promise<LoadResult> {
  const agent = new Agent({ localAddress: address, connections: workers })
  const latencies: number[] = []
  const failed: Record<string, number> = {}
  const until = Date.now() + seconds * 1000
  await Promise.all(Array.from({ length: workers }, async () => {
    while (Date.now() < until) {
      const started = performance.now()
      try {
        const res = await request(`${url}/request-info`, { dispatcher: agent, headers: { 'x-waiter-token': token } })
        await res.body.text()
        if (res.statusCode === 200) latencies.push(performance.now() - started)
        else {
          const why = `${res.statusCode} ${String(res.headers['x-maitre-error'] ?? '')}`
          failed[why] = (failed[why] ?? 0) + 1
        }
      } catch (err) {
        const code = (err as { code?: string }).code ?? 'error'
        failed[code] = (failed[code] ?? 0) + 1
      }
    }
  }))
  await agent.close()
  latencies.sort((a, b) => a - b)
  const at = (q: number): number => Number((latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] ?? NaN).toFixed(1))
  return { ok: latencies.length, failed, p50Ms: at(0.5), p99Ms: at(0.99) }
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'maitre-hostile-'))
  const port = await freePort()
  const config = join(dir, 'maitre.yaml')
  writeFileSync(config, [
    'server:', `  port: ${port}`, `dataDir: ${join(dir, 'data')}`, 'log:', '  level: warn', '  access: false',
    'backend:', '  local:', '    portRange: [31000, 31099]', '',
  ].join('\n'))
  const router = spawn(process.execPath, [...MAITRE_NODE_FLAGS, join(REPO, 'src/main.ts'), 'serve', '--config', config], { stdio: ['ignore', 'ignore', 'inherit'], env: { ...MAITRE_ENV, ...process.env } })
  const url = `http://127.0.0.1:${port}`
  try {
    await waitForHttp(`${url}/status`)
    const token = async (name: string, extra: Record<string, unknown>): Promise<void> => {
      const res = await request(`${url}/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: name, cmd: `${process.execPath} ${KITCHEN}`, cpus: 0.1, mem: 256, version: 'v1', ...extra }) })
      await res.body.text()
    }
    await token('victim', { 'concurrency-level': 8 })
    await token('bait', { 'max-instances': 2 })
    for (const name of ['victim', 'bait']) await (await request(`${url}/request-info`, { headers: { 'x-waiter-token': name } })).body.text()

    const fds = (): number => readdirSync(`/proc/${router.pid}/fd`).length
    console.log(`router pid ${router.pid}: RSS ${rssMb(router.pid as number).toFixed(0)} MB, ${fds()} fds before the attack`)
    const baseline = await load(url, 'victim', '127.0.0.2', 10)
    console.log(`baseline (127.0.0.2, no attack, 10 s): ${baseline.ok} ok, failed ${JSON.stringify(baseline.failed)}, p50 ${baseline.p50Ms} ms, p99 ${baseline.p99Ms} ms`)

    const PER_PROCESS = 10_000
    const attackers = Array.from({ length: Math.ceil(CONNECTIONS / PER_PROCESS) }, (_, i) => {
      const count = Math.min(PER_PROCESS, CONNECTIONS - i * PER_PROCESS)
      const child = spawn(process.execPath, [join(REPO, 'bench/hostile-client.mjs'), String(port), String(count), '127.0.0.1', 'bait'], { stdio: ['ignore', 'pipe', 'inherit'] })
      const reports: Record<string, unknown>[] = []
      createInterface({ input: child.stdout }).on('line', (line) => reports.push(JSON.parse(line) as Record<string, unknown>))
      return { child, reports }
    })
    const opened = Date.now()
    while (attackers.some((a) => a.reports.length === 0)) {
      if (attackers.some((a) => a.child.exitCode !== null)) throw new Error('an attacker process exited early')
      await new Promise((r) => setTimeout(r, 100))
    }
    const sum = (phase: number, key: string): number => attackers.reduce((n, a) => n + Number(a.reports[phase]?.[key] ?? 0), 0)
    console.log(`attacker (127.0.0.1, ${attackers.length} processes): ${sum(0, 'opened')} connections opened, ${sum(0, 'refused503')} refused with 503 Too many connections, ${sum(0, 'open')} still open, in ${((Date.now() - opened) / 1000).toFixed(1)} s; ${JSON.stringify(attackers.map((a) => a.reports[0]))}`)
    console.log(`router during the attack: RSS ${rssMb(router.pid as number).toFixed(0)} MB, ${fds()} fds`)
    const during = await load(url, 'victim', '127.0.0.2', SECONDS)
    console.log(`other client (127.0.0.2) during the attack, ${SECONDS} s: ${during.ok} ok, failed ${JSON.stringify(during.failed)}, p50 ${during.p50Ms} ms, p99 ${during.p99Ms} ms`)
    console.log(`router after ${SECONDS} s of attack: RSS ${rssMb(router.pid as number).toFixed(0)} MB, ${fds()} fds`)
    for (const a of attackers) a.child.kill('SIGTERM')
    await Promise.all(attackers.map((a) => new Promise((r) => a.child.once('exit', r))))
    console.log(`attacker at the end: ${sum(1, 'open')} of its connections still open (the rest refused or closed by the router); ${JSON.stringify(attackers.map((a) => a.reports[1]))}`)
    const served = Object.keys(during.failed).length === 0 && during.ok > 0
    console.log(served ? 'RESULT: the other client was served throughout the attack' : 'RESULT: the other client saw failures')
    process.exitCode = served ? 0 : 1
  } finally {
    router.kill('SIGTERM')
    await new Promise((r) => router.once('exit', r))
    rmSync(dir, { recursive: true, force: true })
  }
}

await main()
