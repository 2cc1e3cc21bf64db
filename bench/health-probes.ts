#!/usr/bin/env node
/**
 * CPU per health check against instances that close the connection after each answer (busybox
 * httpd, like the control-plane bench's instances), through the local backend's HealthProber as
 * shipped. `N=50 ROUNDS=40 node bench/health-probes.ts` (needs busybox): N instances checked all
 * at once, ROUNDS times; prints CPU µs per check (user, system) and the GCs seen.
 */
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { PerformanceObserver } from 'node:perf_hooks'
import { HealthProber } from '../src/backends/local/health-probe.ts'

const N = Number(process.env.N ?? 50)
const ROUNDS = Number(process.env.ROUNDS ?? 40)

async function freePort(): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as { port: number }
  await new Promise<void>((resolve) => server.close(() => resolve()))
  return port
}

const www = mkdtempSync(join(tmpdir(), 'maitre-probes-'))
writeFileSync(join(www, 'status'), 'ok\n')
const ports: number[] = []
for (let i = 0; i < N; i += 1) ports.push(await freePort())
const instances = ports.map((port) => spawn('busybox', ['httpd', '-f', '-p', `127.0.0.1:${port}`, '-h', www], { stdio: 'ignore' }))
const prober = new HealthProber(4000)
const round = (): Promise<{ ok: boolean }[]> => Promise.all(ports.map((port) => prober.probe({ url: `http://127.0.0.1:${port}/status`, authorization: undefined })))
try {
  // Until every instance answers, then a few rounds to warm up.
  for (let i = 0; (await round()).some((r) => !r.ok); i += 1) {
    if (i > 100) throw new Error('busybox httpd did not answer (is busybox installed?)')
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  for (let i = 0; i < 5; i += 1) await round()
  let gcs = 0
  let gcMs = 0
  const observer = new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      gcs += 1
      gcMs += entry.duration
    }
  })
  observer.observe({ entryTypes: ['gc'] })
  const before = process.cpuUsage()
  const startedAt = performance.now()
  let ok = 0
  for (let i = 0; i < ROUNDS; i += 1) for (const result of await round()) ok += result.ok ? 1 : 0
  const cpu = process.cpuUsage(before)
  const wallMs = performance.now() - startedAt
  observer.disconnect()
  const checks = N * ROUNDS
  console.log(JSON.stringify({ checks, ok, cpuUsPerCheck: Math.round((cpu.user + cpu.system) / checks), userUs: Math.round(cpu.user / checks), systemUs: Math.round(cpu.system / checks), wallMs: Math.round(wallMs), gcs, gcMs: Math.round(gcMs) }))
} finally {
  await prober.close()
  for (const instance of instances) instance.kill()
  rmSync(www, { recursive: true, force: true })
}
