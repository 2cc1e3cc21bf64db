/** Cold-start and burst measurements through a running maitre. */
import { spawn } from 'node:child_process'
import { Agent, request } from 'undici'
import { freePort, median } from './tools.ts'

const agent = new Agent({ connections: 128, keepAliveTimeout: 10_000 })

async function createToken(url: string, token: string, descriptor: Record<string, unknown>): Promise<void> {
  const res = await request(`${url}/token`, { method: 'POST', dispatcher: agent, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token, ...descriptor }) })
  if (res.statusCode !== 200) throw new Error(`token ${token}: ${res.statusCode} ${await res.body.text()}`)
  await res.body.dump()
}

/** Time from spawning the backend to its first answer, polled every 2 ms. */
async function appStartMs(backend: string): Promise<number> {
  const port = await freePort()
  const started = performance.now()
  const child = spawn(process.execPath, [backend, String(port)], { stdio: 'ignore' })
  try {
    for (;;) {
      try {
        const res = await request(`http://127.0.0.1:${port}/tiny`)
        await res.body.dump()
        return performance.now() - started
      } catch {
        await new Promise((r) => setTimeout(r, 2))
      }
    }
  } finally {
    child.kill('SIGKILL')
  }
}

export async function coldStarts(url: string, backend: string, count: number): Promise<string> {
  const own: number[] = []
  for (let i = 0; i < count; i++) own.push(await appStartMs(backend))
  const appMs = median(own)
  const total: number[] = []
  for (let i = 0; i < count; i++) {
    const token = `cold-${i}-${Date.now()}`
    await createToken(url, token, { cmd: `${process.execPath} ${backend} $PORT0`, cpus: 0.1, mem: 256, version: token, 'health-check-url': '/tiny' })
    const started = performance.now()
    const res = await request(`${url}/tiny`, { dispatcher: agent, headers: { 'x-waiter-token': token } })
    await res.body.dump()
    if (res.statusCode !== 200 || res.headers['x-maitre-cold-start'] !== 'true') throw new Error(`cold start ${i}: ${res.statusCode}`)
    total.push(performance.now() - started)
    await request(`${url}/apps/${String(res.headers['x-waiter-service-id'] ?? '')}`, { dispatcher: agent }).then((r) => r.body.dump())
  }
  const overhead = total.map((t) => t - appMs)
  return [
    `Cold start: ${count} first requests to new versions. The backend's own start-to-answer (spawned directly, polled every 2 ms): median ${appMs.toFixed(0)} ms.`,
    '',
    '| | median ms | max ms |',
    '|---|---|---|',
    `| first request through maitre, total | ${median(total).toFixed(0)} | ${Math.max(...total).toFixed(0)} |`,
    `| maitre's cold-start overhead (total − app start) | ${median(overhead).toFixed(0)} | ${Math.max(...overhead).toFixed(0)} |`,
  ].join('\n')
}

interface AppState {
  'instance-counts': { 'healthy-instances': number }
}

export async function burst(url: string, backend: string, clients: number): Promise<string> {
  const token = `burst-${Date.now()}`
  await createToken(url, token, {
    cmd: `${process.execPath} ${backend} $PORT0`, cpus: 0.1, mem: 256, version: token, 'health-check-url': '/tiny',
    'concurrency-level': 1, 'max-instances': clients + 10,
  })
  const headers = { 'x-waiter-token': token }
  const warm = await request(`${url}/tiny`, { dispatcher: agent, headers: { ...headers, 'x-waiter-debug': 'true' } })
  await warm.body.dump()
  const id = String(warm.headers['x-waiter-service-id'])
  const latencies: number[] = []
  let failed = 0
  let stop = false
  const stepAt = performance.now()
  const loops = Array.from({ length: clients }, async () => {
    while (!stop) {
      const t0 = performance.now()
      try {
        const res = await request(`${url}/slow`, { dispatcher: agent, headers })
        await res.body.dump()
        if (res.statusCode !== 200) failed += 1
      } catch {
        failed += 1
      }
      latencies.push(performance.now() - t0)
    }
  })
  let reachedMs: number | undefined
  const deadline = stepAt + 60_000
  while (reachedMs === undefined && performance.now() < deadline) {
    const res = await request(`${url}/apps/${id}`, { dispatcher: agent })
    const app = (await res.body.json()) as AppState
    if (app['instance-counts']['healthy-instances'] >= clients) reachedMs = performance.now() - stepAt
    else await new Promise((r) => setTimeout(r, 50))
  }
  await new Promise((r) => setTimeout(r, 2000))
  stop = true
  await Promise.all(loops)
  const sorted = [...latencies].sort((a, b) => a - b)
  const p99 = sorted[Math.floor(sorted.length * 0.99)] ?? Number.NaN
  return [
    `Burst: ${clients} concurrent clients start at once on a warm version with concurrency-level 1 (backend answers in 10 ms).`,
    '',
    '| time until 50 healthy instances | requests | failed | p99 latency during the step |',
    '|---|---|---|---|',
    `| ${reachedMs === undefined ? 'not within 60 s' : `${(reachedMs / 1000).toFixed(2)} s`} | ${latencies.length} | ${failed} | ${p99.toFixed(0)} ms |`,
  ].join('\n')
}
