/** Cold-start and burst measurements through a running maitre. */
import { spawn } from 'node:child_process'
import { Agent, request } from 'undici'
import { freePort, median } from './tools.ts'

// More connections than the largest burst's clients, so the client never caps the step.
const agent = new Agent({ connections: 512, keepAliveTimeout: 10_000 })

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

export interface BurstResult {
  readonly serviceId: string
  readonly clients: number
  /** Date.now() at the step, to line it up with maitre's log. */
  readonly stepAtEpochMs: number
  readonly reachedMs: number | undefined
  readonly requests: number
  readonly failed: number
  readonly p99Ms: number
  /** The longest any request took: none starves while instances come up. */
  readonly maxMs: number
  /** Why requests failed, with counts. */
  readonly failures: ReadonlyMap<string, number>
}

/** A 0 → `clients` step on a warm version with concurrency-level 1; runs until all are healthy, then 2 s more. */
export async function burstRun(url: string, backend: string, clients: number): Promise<BurstResult> {
  const token = `burst-${clients}-${Date.now()}`
  await createToken(url, token, {
    cmd: `${process.execPath} ${backend} $PORT0`, cpus: 0.1, mem: 256, version: token, 'health-check-url': '/tiny',
    'concurrency-level': 1, 'max-instances': clients <= 50 ? clients + 10 : clients,
  })
  const headers = { 'x-waiter-token': token }
  const warm = await request(`${url}/tiny`, { dispatcher: agent, headers: { ...headers, 'x-waiter-debug': 'true' } })
  await warm.body.dump()
  const serviceId = String(warm.headers['x-waiter-service-id'])
  const latencies: number[] = []
  let failed = 0
  const failures = new Map<string, number>()
  const fail = (why: string): void => {
    failed += 1
    failures.set(why, (failures.get(why) ?? 0) + 1)
  }
  let stop = false
  const stepAtEpochMs = Date.now()
  const stepAt = performance.now()
  const loops = Array.from({ length: clients }, async () => {
    while (!stop) {
      const t0 = performance.now()
      try {
        const res = await request(`${url}/slow`, { dispatcher: agent, headers })
        if (res.statusCode !== 200) {
          const body = await res.body.text()
          fail(`${res.statusCode} ${/"message":"([^"]{0,80})/.exec(body)?.[1] ?? body.slice(0, 80)}`)
        } else await res.body.dump()
      } catch (err) {
        fail((err as Error).message.slice(0, 80))
      }
      latencies.push(performance.now() - t0)
    }
  })
  let reachedMs: number | undefined
  const deadline = stepAt + 60_000
  while (reachedMs === undefined && performance.now() < deadline) {
    const res = await request(`${url}/apps/${serviceId}`, { dispatcher: agent })
    const app = (await res.body.json()) as AppState
    if (app['instance-counts']['healthy-instances'] >= clients) reachedMs = performance.now() - stepAt
    else await new Promise((r) => setTimeout(r, 50))
  }
  await new Promise((r) => setTimeout(r, 2000))
  stop = true
  await Promise.all(loops)
  const sorted = [...latencies].sort((a, b) => a - b)
  return {
    serviceId, clients, stepAtEpochMs, reachedMs, requests: latencies.length, failed,
    p99Ms: sorted[Math.floor(sorted.length * 0.99)] ?? Number.NaN,
    maxMs: sorted[sorted.length - 1] ?? Number.NaN,
    failures,
  }
}

export async function burst(url: string, backend: string, clients: number): Promise<string> {
  const r = await burstRun(url, backend, clients)
  return [
    `Burst: ${clients} concurrent clients start at once on a warm version with concurrency-level 1 (backend answers in 10 ms).`,
    '',
    `| time until ${clients} healthy instances | requests | failed | p99 latency during the step |`,
    '|---|---|---|---|',
    `| ${r.reachedMs === undefined ? 'not within 60 s' : `${(r.reachedMs / 1000).toFixed(2)} s`} | ${r.requests} | ${r.failed} | ${r.p99Ms.toFixed(0)} ms |`,
  ].join('\n')
}
