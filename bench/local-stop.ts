/**
 * node bench/local-stop.ts [--instances N] [--host-processes H]
 *
 * How long the local backend takes to stop N running instances (close(), as a router shutting
 * down does; a scale-down to zero ends them the same way) on a host where H other processes run
 * (idle `sleep`s of the same user: a busy machine, or the instances of other routers; another
 * user's processes cost less, their environments cannot be opened). Each ended instance has
 * its escaped processes swept from /proc (leftovers.ts), which reads every process's
 * environment. Prints the wall time and this process's CPU (main thread and thread pool).
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { LocalBackend } from '../src/backends/local/local-backend.ts'
import { systemClock } from '../src/clock.ts'
import { DEFAULTS } from '../src/config.ts'
import { silentLogger } from '../src/log.ts'
import { effectiveParameters } from '../src/versions/descriptor.ts'
import { launchSpecOf } from '../src/versions/launch.ts'

const { values } = parseArgs({ options: { instances: { type: 'string', default: '100' }, 'host-processes': { type: 'string', default: '3000' } } })
const N = Number(values.instances)
const H = Number(values['host-processes'])

const dir = mkdtempSync(join(tmpdir(), 'maitre-local-stop-'))
const others: ChildProcess[] = []
for (let i = 0; i < H; i++) {
  const child = spawn('sleep', ['600'], { stdio: 'ignore' })
  child.on('error', (err) => console.error(`a host process could not start: ${err.message}`))
  others.push(child)
}
const backend = new LocalBackend({ ...DEFAULTS.backend.local, workDir: join(dir, 'instances'), portRange: [40000, 40000 + N + 100], clock: systemClock, log: silentLogger })
try {
  const effective = { ...effectiveParameters({ cmd: 'exec sleep 600', cpus: 0.01, mem: 64, version: 'v1', 'grace-period-secs': 600 }), 'run-as-user': 'me' }
  const spec = launchSpecOf('stop-bench', effective, { cluster: 'bench', secret: 'bench' })
  await backend.ensureService(spec)
  await backend.scale('stop-bench', N)
  for (const deadline = Date.now() + 120_000; (backend.state('stop-bench')?.instances.length ?? 0) < N; ) {
    if (Date.now() > deadline) throw new Error('the instances did not start within 120 s')
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  await new Promise((resolve) => setTimeout(resolve, 1000))
  const cpu = process.cpuUsage()
  const started = performance.now()
  await backend.close()
  const spent = process.cpuUsage(cpu)
  console.log(`stopped ${N} instances with ${H} other processes on the host: ${((performance.now() - started) / 1000).toFixed(2)} s, ${((spent.user + spent.system) / 1e6).toFixed(2)} s of CPU`)
} finally {
  await backend.close()
  for (const child of others) {
    try {
      process.kill(child.pid as number, 'SIGKILL')
    } catch {
      // gone
    }
  }
  rmSync(dir, { recursive: true, force: true })
}
