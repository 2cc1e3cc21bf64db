/**
 * Control-plane scale: one router holding 10,000 tokens and 1,000 live versions (each a real
 * instance: busybox httpd, a megabyte apiece, so a thousand fit on one machine). Reports maitre's
 * RSS and the routing latency to one warm version, alone and then among all the others.
 * Run: `npm run bench:control-plane` (installs busybox from Debian's packages if missing).
 * maitre is launched as it ships (MAITRE_ENV, MAITRE_NODE_FLAGS); BENCH_NODE_FLAGS='--flag …'
 * replaces the flags and BENCH_MAITRE_ENV='NAME=value …' adds to the environment, to measure a
 * launch variant. The RSS is read again after 10 s without requests (BENCH_IDLE_SECONDS).
 * BENCH_HEAP=1 loads bench/memory-probe.mjs into maitre and, after the last RSS reading, reports
 * its live heap after a full collection (what the tokens and versions hold) and V8's sizes;
 * BENCH_HEAP_SNAPSHOT=FILE (with BENCH_HEAP=1) also writes a heap snapshot of it there.
 * Also reported: maitre's CPU while idle with every version live (its per-instance loops: health
 * checks, the memory and log checks, the autoscaler's ticks), and how long SIGTERM takes to stop
 * it and its thousand instances.
 */
import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Agent, request } from 'undici'
import { ensureTools, freePort, rssMb, MAITRE_ENV, MAITRE_NODE_FLAGS } from './tools.ts'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const TOKENS = Number(process.env['BENCH_TOKENS'] ?? 10_000)
const VERSIONS = Number(process.env['BENCH_VERSIONS'] ?? 1_000)
const SAMPLES = 3000
const IDLE_SECONDS = Number(process.env['BENCH_IDLE_SECONDS'] ?? 10)
const NODE_FLAGS = process.env['BENCH_NODE_FLAGS'] === undefined ? MAITRE_NODE_FLAGS : process.env['BENCH_NODE_FLAGS'].split(/\s+/).filter((s) => s !== '')
const MAITRE_LAUNCH_ENV: Record<string, string> = {
  ...MAITRE_ENV,
  ...Object.fromEntries((process.env['BENCH_MAITRE_ENV'] ?? '').split(/\s+/).filter((s) => s.includes('=')).map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)])),
}
const HEAP = process.env['BENCH_HEAP'] === '1'
const MEMORY_CHECK_MS = Number(process.env['BENCH_MEMORY_CHECK_MS'] ?? 5000)
const PROBE_OUT = join(tmpdir(), `maitre-cp-probe-${process.pid}.json`)
const SNAPSHOT = process.env['BENCH_HEAP_SNAPSHOT']
const CMD = 'mkdir -p www && echo ok > www/status && exec busybox httpd -f -p 127.0.0.1:$PORT0 -h www'
const agent = new Agent({ connections: 64, keepAliveTimeout: 30_000 })

async function post(url: string, token: string, version: number): Promise<void> {
  const res = await request(`${url}/token`, { method: 'POST', dispatcher: agent, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token, cmd: CMD, cpus: 0.01, mem: 32, version: `v${version}` }) })
  await res.body.dump()
  if (res.statusCode !== 200) throw new Error(`token ${token}: ${res.statusCode}`)
}

async function call(url: string, token: string): Promise<void> {
  const res = await request(`${url}/status`, { dispatcher: agent, headers: { 'x-waiter-token': token } })
  await res.body.dump()
  if (res.statusCode !== 200) throw new Error(`${token}: ${res.statusCode}`)
}

async function inParallel(count: number, width: number, job: (i: number) => Promise<void>): Promise<void> {
  let next = 0
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < count) await job(next++)
  }))
}

/** p50 and p99 of sequential requests over one kept-alive connection, in ms. */
async function latency(url: string, tokens: readonly string[]): Promise<[number, number]> {
  const one = new Agent({ connections: 1, keepAliveTimeout: 30_000 })
  const samples: number[] = []
  for (let i = 0; i < SAMPLES + 200; i++) {
    const started = performance.now()
    const res = await request(`${url}/status`, { dispatcher: one, headers: { 'x-waiter-token': tokens[i % tokens.length] as string } })
    await res.body.dump()
    if (i >= 200) samples.push(performance.now() - started) // the first 200 warm the JIT and pools
  }
  await one.close()
  samples.sort((a, b) => a - b)
  return [samples[Math.floor(samples.length * 0.5)] as number, samples[Math.floor(samples.length * 0.99)] as number]
}

/** CPU seconds (user + system) a process has used, from /proc (clock ticks of 1/100 s). */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'latin1')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(fields[11]) + Number(fields[12])) / 100
}

async function main(): Promise<void> {
  ensureTools({ busybox: 'busybox' })
  const dir = mkdtempSync(join(tmpdir(), 'maitre-cp-'))
  const port = await freePort()
  const config = join(dir, 'maitre.yaml')
  writeFileSync(config, [
    `server:\n  port: ${port}`,
    `dataDir: ${join(dir, 'data')}`,
    // Every token has the one owner: Waiter's per-owner limit (1,000) would refuse the rest.
    `maxTokensPerOwner: ${TOKENS + 1}`,
    // Room for a thousand instances; memory checks every 5 s rather than every second
    // (BENCH_MEMORY_CHECK_MS: another interval, e.g. the default 1000).
    `backend:\n  local:\n    portRange: [30000, 32999]\n    memoryCheckIntervalMs: ${MEMORY_CHECK_MS}`,
    'log:\n  level: warn', '',
  ].join('\n'))
  const probeArgs = HEAP ? ['--expose-gc', '--import', join(ROOT, 'bench', 'memory-probe.mjs')] : []
  const probeEnv = HEAP ? { MEM_PROBE_OUT: PROBE_OUT, MEM_PROBE_GC: '1', ...(SNAPSHOT === undefined ? {} : { MEM_PROBE_SNAPSHOT: SNAPSHOT }) } : {}
  const maitre = spawn(process.execPath, [...NODE_FLAGS, ...probeArgs, join(ROOT, 'src', 'main.ts'), 'serve', '--config', config], { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, ...MAITRE_LAUNCH_ENV, ...probeEnv } })
  const url = `http://127.0.0.1:${port}`
  try {
    for (;;) {
      try {
        await request(`${url}/livez`, { dispatcher: agent }).then((r) => r.body.dump())
        break
      } catch {
        await new Promise((r) => setTimeout(r, 50))
      }
    }
    const pid = maitre.pid as number
    await post(url, 'probe', 0)
    await call(url, 'probe')
    const rssEmpty = rssMb(pid)
    const [alone50, alone99] = await latency(url, ['probe'])
    // The instance itself, without maitre: busybox httpd forks a child per connection and closes
    // it after each answer, so its own latency is most of the figures below on some machines.
    const [probeApp] = (await (await request(`${url}/apps`, { dispatcher: agent })).body.json()) as { 'service-id': string }[]
    if (probeApp === undefined) throw new Error('/apps lists no version after the probe was called')
    const probeDetail = (await (await request(`${url}/apps/${probeApp['service-id']}`, { dispatcher: agent })).body.json()) as { instances: { 'active-instances': { host: string; port: number }[] } }
    const probeInstance = probeDetail.instances['active-instances'][0]
    if (probeInstance === undefined) throw new Error('the probe version has no live instance')
    const probeHost = probeInstance.host.includes(':') ? `[${probeInstance.host}]` : probeInstance.host
    const [direct50, direct99] = await latency(`http://${probeHost}:${probeInstance.port}`, [''])

    let started = performance.now()
    await inParallel(TOKENS - 1, 32, (i) => post(url, `tok-${i}`, i))
    const tokensSecs = (performance.now() - started) / 1000
    const rssTokens = rssMb(pid)
    started = performance.now()
    await inParallel(VERSIONS, 16, (i) => call(url, `tok-${i}`))
    const versionsSecs = (performance.now() - started) / 1000
    const apps = (await (await request(`${url}/apps`, { dispatcher: agent })).body.json()) as unknown[]
    const rssLoaded = rssMb(pid)
    const [crowd50, crowd99] = await latency(url, ['probe'])
    const spread = Array.from({ length: VERSIONS }, (_, i) => `tok-${i}`)
    const [spread50, spread99] = await latency(url, spread)
    const rssAfter = rssMb(pid)
    const cpuBefore = cpuSeconds(pid)
    await new Promise((r) => setTimeout(r, IDLE_SECONDS * 1000))
    const idleCpuPct = ((cpuSeconds(pid) - cpuBefore) / IDLE_SECONDS) * 100
    const rssIdle = rssMb(pid)
    let heap = ''
    if (HEAP) {
      rmSync(PROBE_OUT, { force: true })
      if (SNAPSHOT !== undefined) rmSync(SNAPSHOT, { force: true }) // an earlier run's would end the wait at once
      maitre.kill('SIGUSR2')
      for (let i = 0; i < 100 && !existsSync(PROBE_OUT); i++) await new Promise((r) => setTimeout(r, 50))
      await new Promise((r) => setTimeout(r, 50))
      const p = JSON.parse(readFileSync(PROBE_OUT, 'utf8')) as { heapUsed: number; heapCommitted: number; rss: number; external: number; spaces: Record<string, { committed: number; used: number }>; gcs: Record<string, { count: number; ms: number; maxMs: number }>; resident?: { mallocHeap: number; files: number; anonymous: number } }
      rmSync(PROBE_OUT, { force: true })
      if (SNAPSHOT !== undefined) {
        for (let i = 0; i < 1200 && !existsSync(SNAPSHOT); i++) await new Promise((r) => setTimeout(r, 100))
        if (!existsSync(SNAPSHOT)) throw new Error(`no heap snapshot at ${SNAPSHOT} after 120 s`)
      }
      heap = `\nAfter a full collection (BENCH_HEAP=1): live heap ${p.heapUsed.toFixed(1)} MB, V8 committed ${p.heapCommitted.toFixed(1)} MB, external ${p.external.toFixed(1)} MB, RSS ${p.rss.toFixed(0)} MB.` +
        `\nGC pauses over the run, by kind (count, total ms, longest ms): ${Object.entries(p.gcs).map(([kind, g]) => `${kind} ${g.count} / ${g.ms} / ${g.maxMs}`).join(', ')}.` +
        `\nV8 spaces, committed / used MB: ${Object.entries(p.spaces).map(([name, s]) => `${name} ${s.committed} / ${s.used}`).join(', ')}.` +
        (p.resident === undefined ? '' : `\nResident by mapping: malloc's main heap ${p.resident.mallocHeap} MB, files (code) ${p.resident.files} MB, anonymous (V8 pages, other malloc arenas, stacks) ${p.resident.anonymous} MB.`)
    }

    console.log([
      `Control plane: ${TOKENS} tokens (created in ${tokensSecs.toFixed(1)} s), ${apps.length} live versions (each one busybox httpd instance, started in ${versionsSecs.toFixed(1)} s); maitre launched with [${Object.entries(MAITRE_LAUNCH_ENV).map(([k, v]) => `${k}=${v}`).join(' ')}] node [${NODE_FLAGS.join(' ')}].`,
      '',
      '| | maitre RSS MB | routing latency p50 ms | p99 ms |',
      '|---|---|---|---|',
      `| the probe's instance directly (no maitre) | | ${direct50.toFixed(3)} | ${direct99.toFixed(3)} |`,
      `| 1 token, 1 version | ${rssEmpty.toFixed(0)} | ${alone50.toFixed(3)} | ${alone99.toFixed(3)} |`,
      `| ${TOKENS} tokens, 1 version | ${rssTokens.toFixed(0)} | | |`,
      `| ${TOKENS} tokens, ${apps.length} versions: the same warm version | ${rssLoaded.toFixed(0)} | ${crowd50.toFixed(3)} | ${crowd99.toFixed(3)} |`,
      `| ${TOKENS} tokens, ${apps.length} versions: each request to the next version | ${rssAfter.toFixed(0)} | ${spread50.toFixed(3)} | ${spread99.toFixed(3)} |`,
      `| the same, after ${IDLE_SECONDS} s without requests | ${rssIdle.toFixed(0)} | | |`,
      '',
      `Idle with ${apps.length} live versions (memory checks every ${MEMORY_CHECK_MS} ms): maitre used ${idleCpuPct.toFixed(1)} % of a core over ${IDLE_SECONDS} s.`,
    ].join('\n') + heap)
    const stopping = performance.now()
    maitre.kill('SIGTERM')
    await new Promise((r) => maitre.once('exit', r))
    console.log(`SIGTERM to exit, its ${apps.length} instances stopped: ${((performance.now() - stopping) / 1000).toFixed(1)} s.`)
  } finally {
    if (maitre.exitCode === null && maitre.signalCode === null) {
      maitre.kill('SIGTERM')
      await new Promise((r) => maitre.once('exit', r))
    }
    await agent.close()
  }
}

await main()
