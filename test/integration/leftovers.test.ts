/**
 * Nothing is left behind: not by an instance that daemonises, not by a router killed with
 * SIGKILL, not in the sandboxes on disk, not in ever-growing log files.
 */
import t from 'tap'
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { call, createToken, kitchenCmd, kitchenToken, processAlive, startRouter, waitFor } from '../fixtures/router.ts'
import { startRouterProcess } from '../fixtures/router-process.ts'

/** Pids of live processes whose environment says they belong to this service and whose command line contains `marker`. */
function processesOf(serviceId: string, marker: string): number[] {
  const out: number[] = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const environ = readFileSync(`/proc/${entry}/environ`, 'utf8').split('\0')
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8').replaceAll('\0', ' ')
      if (environ.includes(`WAITER_SERVICE_ID=${serviceId}`) && cmdline.includes(marker) && processAlive(Number(entry))) out.push(Number(entry))
    } catch {
      // gone, or not ours to read
    }
  }
  return out
}

/** A service that leaves a daemon running outside its process group, then serves. */
const daemonising = (pidFile: string): Record<string, unknown> => ({
  cmd: `(setsid sleep 1001 & echo $! > ${pidFile}) ; ${kitchenCmd()}`,
  cpus: 0.1,
  mem: 256,
  version: 'v1',
})

t.test('a router killed with SIGKILL and restarted on the same data directory leaves no old process and runs no duplicate', async (t) => {
  const first = await startRouterProcess(t)
  const pidFile = join(first.dataDir, 'daemon.pid')
  await createToken(first, 'daemon', daemonising(pidFile))
  const h = { 'x-waiter-token': 'daemon' }
  const reply = await call(`${first.url}/request-info`, { headers: { ...h, 'x-waiter-debug': 'true' } })
  t.equal(reply.status, 200)
  const serviceId = reply.headers['x-waiter-service-id'] as string
  const sandbox = reply.headers['x-waiter-backend-directory'] as string
  const app = reply.json<{ pid: number }>().pid
  const daemon = Number(readFileSync(pidFile, 'utf8'))
  t.ok(processAlive(daemon), 'the daemon escaped into its own session')

  first.child.kill('SIGKILL')
  await first.exited
  await waitFor('the instance group to die with its router (its watchdog)', () => (processAlive(app) ? undefined : true), 5000)
  t.ok(processAlive(daemon), 'what escaped the group survives the router: the leftover a restart must deal with')
  t.ok(existsSync(sandbox), 'and so does the sandbox')

  const second = await startRouterProcess(t, { dataDir: first.dataDir, portLow: first.portLow })
  await waitFor('the start-up sweep to kill the leftover', () => (processAlive(daemon) ? undefined : true), 5000)
  await waitFor('the old sandbox to be removed', () => (existsSync(sandbox) ? undefined : true), 5000)
  t.notOk(existsSync(sandbox), 'the old sandbox is gone')
  const again = await call(`${second.url}/request-info`, { headers: h })
  t.equal(again.status, 200, 'the token and its version survived the crash')
  t.equal(processesOf(serviceId, 'kitchen.mjs').length, 1, 'exactly one instance of the version runs: none survived, none is duplicated')
  const daemons = processesOf(serviceId, 'sleep 1001')
  t.equal(daemons.length, 1, 'and one daemon: the new instance’s own')
  t.ok(second.lines.some((l) => l['msg'] === 'killed processes a previous router left running'), 'the sweep is logged')

  // A router stopped the ordinary way takes its instances' escaped processes with it (were it
  // SIGKILLed at teardown, this daemon would outlive the test by 17 minutes).
  second.child.kill('SIGTERM')
  t.equal(await second.exited, 0, 'the second router stops cleanly on SIGTERM')
  await waitFor('the new daemon to go with its router', () => (daemons.some(processAlive) ? undefined : true), 5000)
  t.same(processesOf(serviceId, 'sleep 1001'), [], 'no daemon of the version is left running')
})

t.test('an instance that ends takes its escaped processes with it, and its sandbox goes', async (t) => {
  const router = await startRouter(t)
  const pidFile = join(router.dataDir, 'daemon.pid')
  await createToken(router, 'daemon', daemonising(pidFile))
  const reply = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'daemon', 'x-waiter-debug': 'true' } })
  const serviceId = reply.headers['x-waiter-service-id'] as string
  const instanceId = reply.headers['x-waiter-backend-id'] as string
  const sandbox = reply.headers['x-waiter-backend-directory'] as string
  const daemon = Number(readFileSync(pidFile, 'utf8'))
  t.ok(processAlive(daemon))
  t.ok(existsSync(join(sandbox, 'maitre-instance.json')), 'the sandbox records the instance’s process group')
  const killed = await call(`${router.url}/apps/${serviceId}/instance/${instanceId}/kill`, { method: 'POST' })
  t.equal(killed.status, 200)
  await waitFor('the daemon to be killed with its instance', () => (processAlive(daemon) ? undefined : true), 5000)
  await waitFor('the sandbox to be removed', () => (existsSync(sandbox) ? undefined : true), 5000)
  t.notOk(existsSync(sandbox), 'an instance killed on purpose keeps no sandbox')
})

t.test('failed instances keep their sandboxes for their logs, only the last few', async (t) => {
  const router = await startRouter(t, { 'backend.local.failedSandboxesKept': 2, 'backend.local.restartBackoffBaseMs': 10, 'backend.local.restartBackoffMaxMs': 20 })
  // Fails five times (a counter outside the sandboxes), then runs: a stable state to count in.
  const counter = join(router.dataDir, 'attempts')
  const cmd = `n=$(cat ${counter} 2>/dev/null || echo 0); echo $((n+1)) > ${counter}; if [ $n -lt 5 ]; then echo "attempt $n fails"; exit 3; fi; exec ${kitchenCmd()}`
  await createToken(router, 'crashing', { cmd, cpus: 0.1, mem: 256, version: 'v1', 'restart-backoff-factor': 1 })
  const h = { 'x-waiter-token': 'crashing' }
  const serviceId = (await call(`${router.url}/service-id`, { headers: h })).text
  t.equal((await call(`${router.url}/request-info`, { headers: h })).status, 503, 'the crashes are a deployment error at first')
  await waitFor('the sixth instance to run', async () => ((await call(`${router.url}/request-info`, { headers: h })).status === 200 ? true : undefined), 10_000)
  type Failed = { id: string; 'log-directory': string | null }
  const failed = await waitFor('five failed instances, the older ones pruned', async () => {
    const list = (await call(`${router.url}/apps/${serviceId}`)).json<{ instances: { 'failed-instances': Failed[] } }>().instances['failed-instances']
    return list.length === 5 && list.slice(2).every((f) => f['log-directory'] === null) ? list : undefined
  }, 10_000)
  const serviceDir = join(router.dataDir, 'instances', serviceId)
  const sandboxes = await waitFor('the pruned sandboxes to be gone from disk', () => {
    const dirs = readdirSync(serviceDir).filter((e) => e.startsWith(serviceId))
    return dirs.length === 3 ? dirs : undefined
  })
  t.same(sandboxes.sort(), [failed[0]?.id, failed[1]?.id, ...readdirSync(serviceDir).filter((e) => e.startsWith(serviceId) && e !== failed[0]?.id && e !== failed[1]?.id)].sort(), 'on disk: the two newest failed sandboxes and the running instance')
  const logs = await call(`${router.url}/apps/${serviceId}/logs?instance-id=${failed[0]?.id}&file=stdout`)
  t.equal(logs.text, 'attempt 4 fails\n', 'the newest failed instance’s logs can still be read')
  const gone = await call(`${router.url}/apps/${serviceId}/logs?instance-id=${failed[4]?.id}`)
  t.equal(gone.status, 404, 'the oldest one’s sandbox is gone, and the API says so')
})

t.test('stdout and stderr are rotated past backend.local.maxLogBytes', async (t) => {
  const router = await startRouter(t, { 'backend.local.maxLogBytes': 8192, 'backend.local.memoryCheckIntervalMs': 100 })
  // Writes about 1 KiB to stdout every 10 ms, for as long as it runs.
  const chatty = `node -e "setInterval(() => process.stdout.write('x'.repeat(1023) + '\\\\n'), 10)" & exec ${kitchenCmd()}`
  await createToken(router, 'chatty', { cmd: chatty, cpus: 0.1, mem: 256, version: 'v1' })
  const reply = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'chatty', 'x-waiter-debug': 'true' } })
  const sandbox = reply.headers['x-waiter-backend-directory'] as string
  await waitFor('a rotation', () => (existsSync(join(sandbox, 'stdout.1')) ? true : undefined), 10_000)
  // Watch stdout over several rotations: it must keep shrinking back, never growing past the
  // limit by more than what the app writes between two checks (about 10 KiB per 100 ms here,
  // with room for a busy machine).
  const sizes: number[] = []
  let rotations = 0
  let lastRotated = statSync(join(sandbox, 'stdout.1')).mtimeMs
  await waitFor('three more rotations', () => {
    sizes.push(statSync(join(sandbox, 'stdout')).size)
    const rotated = statSync(join(sandbox, 'stdout.1')).mtimeMs
    if (rotated !== lastRotated) {
      rotations += 1
      lastRotated = rotated
    }
    return rotations >= 3 ? true : undefined
  }, 10_000)
  t.ok(Math.max(...sizes) < 8192 + 64 * 1024, `stdout stays bounded over ${sizes.length} samples (largest seen: ${Math.max(...sizes)} bytes)`)
  t.ok(sizes.some((size, i) => i > 0 && size < (sizes[i - 1] as number)), 'and it was emptied, not only copied')
  // (Written as the rotation copies it: looked at until a copy is whole.)
  const kept = await waitFor('a whole rotated part', () => (statSync(join(sandbox, 'stdout.1')).size === 8192 ? 8192 : undefined), 5000)
  t.equal(kept, 8192, 'the rotated part holds the last maxLogBytes of the previous output, no more')
})

t.test('a second router on a data directory in use refuses to start, and the first one’s instances live on', async (t) => {
  const first = await startRouterProcess(t)
  await createToken(first, 'kept', kitchenToken())
  const { pid } = (await call(`${first.url}/request-info`, { headers: { 'x-waiter-token': 'kept' } })).json<{ pid: number }>()
  await t.rejects(startRouterProcess(t, { dataDir: first.dataDir, portLow: first.portLow }), /exited early with 78/, 'the second router exits with a configuration error')
  t.ok(processAlive(pid), 'the first router’s instance was not swept away')
  t.equal((await call(`${first.url}/request-info`, { headers: { 'x-waiter-token': 'kept' } })).status, 200, 'and serves on')
})

t.test('a deleted version leaves no directory behind', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'gone', kitchenToken({ 'min-instances': 2 }))
  const reply = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'gone', 'x-waiter-debug': 'true' } })
  const serviceId = reply.headers['x-waiter-service-id'] as string
  const serviceDir = join(router.dataDir, 'instances', serviceId)
  t.ok(existsSync(join(reply.headers['x-waiter-backend-directory'] as string, 'run-service.sh')), 'each sandbox holds its own run script')
  t.equal((await call(`${router.url}/apps/${serviceId}`, { method: 'DELETE' })).status, 200)
  await waitFor('the version’s directory to be gone', () => (existsSync(serviceDir) ? undefined : true), 5000)
  t.notOk(existsSync(serviceDir))
})
