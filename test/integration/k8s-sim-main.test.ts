/** The Kubernetes simulator run on its own, as the README tells people trying cluster mode by hand. */
import t from 'tap'
import { execFile, spawn } from 'node:child_process'
import { readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs'
import { promisify } from 'node:util'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { REPO } from '../fixtures/router-process.ts'
import { freePort } from '../../bench/tools.ts'
import { call, createToken, kitchenToken, startRouter, waitFor } from '../fixtures/router.ts'

const run = promisify(execFile)

t.test('node test/fixtures/k8s-sim/main.ts --port P --kubeconfig FILE: a kubeconfig maitre accepts, until SIGTERM (here in realistic timing)', async (t) => {
  const dir = t.testdir()
  const port = await freePort()
  const kubeconfig = join(dir, 'sim.kubeconfig')
  const child = spawn(process.execPath, [join(REPO, 'test/fixtures/k8s-sim/main.ts'), '--port', String(port), '--kubeconfig', kubeconfig, '--work-dir', join(dir, 'pods'), '--clock-factor', '0.1'], { stdio: ['ignore', 'pipe', 'inherit'] })
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL')
  })
  const line = await new Promise<Record<string, unknown>>((resolve) => createInterface({ input: child.stdout as NodeJS.ReadableStream }).once('line', (l) => resolve(JSON.parse(l) as Record<string, unknown>)))
  t.equal(line['url'], `https://127.0.0.1:${port}`, 'it prints its URL, on the port asked for')
  t.equal(line['kubeconfig'], kubeconfig)
  const { stdout, stderr } = await run('kubectl', ['--kubeconfig', kubeconfig, 'get', 'pods'], { timeout: 20_000 })
  t.match(stdout + stderr, /No resources found in maitre-test namespace/, 'kubectl reads the kubeconfig as written (CA, token, namespace)')

  const router = await startRouter(t, { 'backend.kind': 'kubernetes', 'backend.kubernetes.kubeconfig': kubeconfig })
  await createToken(router, 'by-hand', kitchenToken())
  const reply = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'by-hand' } })
  t.equal(reply.status, 200, 'maitre runs a service on it through that kubeconfig')
  await router.app.stop()

  child.kill('SIGTERM')
  t.equal(await exited, 0, 'SIGTERM stops it cleanly')
})

t.test('a clock factor out of (0, 1] is refused with the rule', async (t) => {
  const refused = await run(process.execPath, [join(REPO, 'test/fixtures/k8s-sim/main.ts'), '--port', '0', '--kubeconfig', join(t.testdir(), 'k'), '--clock-factor', '0'], { timeout: 20_000 }).catch((err: unknown) => err as { code: number; stderr: string })
  t.match(refused, { code: 64, stderr: /--clock-factor must be a number in \(0, 1\]/ })
})

/** Processes whose working directory is under `dir`: the pods of a simulator working there. */
function processesUnder(dir: string): number[] {
  return readdirSync('/proc').flatMap((entry) => {
    if (!/^\d+$/.test(entry)) return []
    try {
      return readlinkSync(`/proc/${entry}/cwd`).startsWith(dir) ? [Number(entry)] : []
    } catch {
      return [] // gone meanwhile, or not ours to read
    }
  })
}

/** The process groups the simulator's container watchdogs guard (the last argument of each). */
function watchdogTargets(): number[] {
  return readdirSync('/proc').flatMap((entry) => {
    if (!/^\d+$/.test(entry)) return []
    try {
      const args = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0').filter((a) => a !== '')
      return args.includes('k8s-sim-watchdog') ? [Number(args[args.length - 1])] : []
    } catch {
      return []
    }
  })
}

t.test('a simulator killed with SIGKILL (a test runner’s timeout) takes its pods with it', async (t) => {
  const dir = t.testdir()
  const port = await freePort()
  const kubeconfig = join(dir, 'sim.kubeconfig')
  const pods = join(dir, 'pods')
  const child = spawn(process.execPath, [join(REPO, 'test/fixtures/k8s-sim/main.ts'), '--port', String(port), '--kubeconfig', kubeconfig, '--work-dir', pods], { stdio: ['ignore', 'pipe', 'inherit'] })
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL')
    for (const pid of processesUnder(pods)) process.kill(pid, 'SIGKILL')
  })
  await new Promise<void>((resolve) => createInterface({ input: child.stdout as NodeJS.ReadableStream }).once('line', () => resolve()))
  const manifest = join(dir, 'rs.json')
  writeFileSync(manifest, JSON.stringify({ apiVersion: 'apps/v1', kind: 'ReplicaSet', metadata: { name: 'sleepers' }, spec: { replicas: 2, selector: { matchLabels: { app: 'sleepers' } }, template: { metadata: { labels: { app: 'sleepers' } }, spec: { containers: [{ name: 'app', image: 'maitre-app', command: ['/bin/sh', '-c', 'sleep 300 & wait'] }] } } } }))
  await run('kubectl', ['--kubeconfig', kubeconfig, 'create', '--validate=false', '-f', manifest], { timeout: 20_000 })
  // Each pod: its shell and the sleep it started, in the container's process group.
  const running = await waitFor('both pods’ processes', () => (processesUnder(pods).length >= 4 ? processesUnder(pods) : undefined), 15_000)
  // And each container's watchdog, which the simulator starts right after the container (the
  // moment between the two is the one a SIGKILL can still miss).
  await waitFor('a watchdog per pod', () => (watchdogTargets().filter((pgid) => running.includes(pgid)).length === 2 ? true : undefined), 15_000)
  child.kill('SIGKILL')
  await exited
  const left = await waitFor('every pod process gone', () => (processesUnder(pods).length === 0 ? true : undefined), 10_000).catch(() => false)
  t.ok(left, `no process of the ${running.length} the pods ran is left (${processesUnder(pods).join(', ')})`)
})
