/**
 * The burst alone, repeated: `npm run bench:burst`. One maitre (local backend, bench config),
 * then BURST_RUNS (default 3) 0 → 50 steps on fresh versions with concurrency-level 1 and their
 * median, then one 0 → BURST_BIG (default 200) step with max-instances of that size. Each step's
 * timeline (scaling decisions, spawns, healthy instances) is read from maitre's log, so where the
 * time goes is measured rather than guessed.
 *
 *   BURST_RUNS=3 BURST_BIG=200 npm run bench:burst
 *   BURST_MAITRE_YAML=$'backend:\n  local:\n    startupProbeIntervalMs: 100' npm run bench:burst
 */
import { mkdtempSync, readFileSync, writeFileSync, openSync } from 'node:fs'
import { spawn } from 'node:child_process'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { freePort, median, waitForHttp, MAITRE_ENV, MAITRE_NODE_FLAGS } from './tools.ts'
import { burstRun, type BurstResult } from './scaling.ts'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const BACKEND = join(ROOT, 'bench', 'backend.mjs')
const RUNS = Number(process.env['BURST_RUNS'] ?? 3)
const BIG = Number(process.env['BURST_BIG'] ?? 200)

interface LogLine { time: number; msg: string; service?: string; instance?: string; to?: number; startupMs?: number }

/** The step's timeline from maitre's log: when scaling asked for how many, when instances spawned and became healthy. */
function timeline(logFile: string, serviceId: string, stepAtEpochMs: number): string {
  const lines = readFileSync(logFile, 'utf8').split('\n').filter((l) => l.includes(serviceId)).map((l) => JSON.parse(l) as LogLine)
  const rel = (t: number): string => ((t - stepAtEpochMs) / 1000).toFixed(2)
  const decisions = lines.filter((l) => l.msg === 'scaling decision' && l.time >= stepAtEpochMs - 100)
  const spawned = lines.filter((l) => l.msg === 'instance started' && l.time >= stepAtEpochMs - 100)
  const healthy = lines.filter((l) => l.msg === 'instance healthy' && l.time >= stepAtEpochMs - 100)
  const startup = healthy.map((l) => l.startupMs ?? 0)
  const at = (list: LogLine[], fraction: number): string => {
    const i = Math.max(0, Math.ceil(list.length * fraction) - 1)
    return list[i] === undefined ? '-' : rel(list[i].time)
  }
  return [
    `  decisions: ${decisions.map((d) => `${rel(d.time)} s → ${d.to}`).join(', ') || 'none'}`,
    `  spawned: ${spawned.length} (first ${at(spawned, 0)} s, half ${at(spawned, 0.5)} s, last ${at(spawned, 1)} s)`,
    `  healthy: ${healthy.length} (first ${at(healthy, 0)} s, half ${at(healthy, 0.5)} s, last ${at(healthy, 1)} s); spawn → healthy median ${median(startup).toFixed(0)} ms, max ${Math.max(0, ...startup).toFixed(0)} ms`,
  ].join('\n')
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'maitre-burst-'))
  const port = await freePort()
  const config = join(dir, 'maitre.yaml')
  // BURST_MAITRE_YAML: extra top-level config lines, to try a setting (e.g. backend.local knobs).
  writeFileSync(config, `server:\n  port: ${port}\ndataDir: ${join(dir, 'data')}\nlog:\n  level: info\n  access: false\n${process.env['BURST_MAITRE_YAML'] ?? ''}\n`)
  const logFile = join(dir, 'maitre.log')
  const out = openSync(logFile, 'a')
  const maitre = spawn(process.execPath, [...MAITRE_NODE_FLAGS, join(ROOT, 'src', 'main.ts'), 'serve', '--config', config], { stdio: ['ignore', out, 'inherit'], env: { ...MAITRE_ENV, ...process.env } })
  process.on('exit', () => maitre.kill('SIGTERM'))
  const url = `http://127.0.0.1:${port}`
  await waitForHttp(`${url}/status`)
  const row = (r: BurstResult): string => `| ${r.clients} | ${r.reachedMs === undefined ? 'not within 60 s' : `${(r.reachedMs / 1000).toFixed(2)} s`} | ${r.requests} | ${r.failed} | ${r.p99Ms.toFixed(0)} ms | ${r.maxMs.toFixed(0)} ms |`
  const header = ['| clients | all healthy after | requests | failed | p99 during the step | longest wait |', '|---|---|---|---|---|---|']
  const small: BurstResult[] = []
  for (let i = 0; i < RUNS; i++) {
    const r = await burstRun(url, BACKEND, 50)
    small.push(r)
    console.log(`run ${i + 1}: ${row(r)}`)
    for (const [why, n] of r.failures) console.log(`  failed ${n}×: ${why}`)
    console.log(timeline(logFile, r.serviceId, r.stepAtEpochMs))
    await fetch(`${url}/apps/${r.serviceId}`, { method: 'DELETE' })
  }
  const big = BIG > 0 ? await burstRun(url, BACKEND, BIG) : undefined
  if (big !== undefined) {
    console.log(`big: ${row(big)}`)
    for (const [why, n] of big.failures) console.log(`  failed ${n}×: ${why}`)
    console.log(timeline(logFile, big.serviceId, big.stepAtEpochMs))
    await fetch(`${url}/apps/${big.serviceId}`, { method: 'DELETE' })
  }
  const reached = small.map((r) => r.reachedMs ?? Number.POSITIVE_INFINITY)
  console.log('')
  console.log([...header, ...small.map(row), ...(big === undefined ? [] : [row(big)])].join('\n'))
  console.log('')
  console.log(`0 → 50, median of ${RUNS}: ${(median(reached) / 1000).toFixed(2)} s to 50 healthy; p99 during the step median ${median(small.map((r) => r.p99Ms)).toFixed(0)} ms; failed ${small.reduce((n, r) => n + r.failed, 0)}`)
  maitre.kill('SIGTERM')
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err)
    process.exit(1)
  },
)
