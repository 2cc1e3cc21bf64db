/**
 * The local backend's instances, from start to end: one that exits on its own is no longer
 * health-checked (its port may go to another instance), a scale-down that comes while launches
 * are still finding ports leaves the count it asked for, a kill gives the service its
 * termination grace (and a forced one cuts it short), readiness and liveness are checked apart,
 * a failed launch leaves nothing behind, and the work directory is maitre's alone.
 */
import t, { type Test } from 'tap'
import fs from 'node:fs'
import { spawn } from 'node:child_process'
import { Writable } from 'node:stream'
import { syncBuiltinESMExports } from 'node:module'
import { createServer, type Socket } from 'node:net'
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { LocalBackend } from '../../src/backends/local/local-backend.ts'
import { systemClock } from '../../src/clock.ts'
import { DEFAULTS } from '../../src/config.ts'
import { createLogger, silentLogger } from '../../src/log.ts'
import { spec } from '../fixtures/kube-backend.ts'
import { claimPortSlice, kitchenCmd, waitFor } from '../fixtures/router.ts'
import { crashAfterFirstAnswer } from '../fixtures/crashing-app.ts'
import { whileOutOfFileDescriptors } from '../fixtures/fd-starved.ts'

/**
 * A backend with a work directory of its own, removed only once the backend has closed: in the
 * test's fixture directory, tap's removal (which runs first) raced a backend still relaunching
 * instances into it, and its ENOTEMPTY skipped the test's other teardowns.
 */
function localBackend(t: Test, overrides: Partial<ConstructorParameters<typeof LocalBackend>[0]> = {}): { backend: LocalBackend; workDir: string } {
  const { low, release } = claimPortSlice()
  const parent = mkdtempSync(join(tmpdir(), 'maitre-lifecycle-'))
  const workDir = join(parent, 'work')
  const backend = new LocalBackend({ ...DEFAULTS.backend.local, workDir, portRange: [low, low + 99], minSigkillDelayMs: 200, clock: systemClock, log: silentLogger, ...overrides })
  t.teardown(async () => {
    await backend.close()
    rmSync(parent, { recursive: true, force: true })
    release()
  })
  return { backend, workDir }
}

t.test('an instance that exits while a health check is under way is never checked again: its port may belong to another instance by then', async (t) => {
  // The app hands the first connection it gets (a health check) to a process of its own
  // session, outside the instance's group and without its sandbox in its environment (so the
  // sweep for leftovers does not end it at once), and exits: that check is still under way
  // after the instance is gone, and is answered only later.
  const dir = t.testdir()
  const app = join(dir, 'hand-off.mjs')
  writeFileSync(app, `import { createServer } from 'node:net'
import { spawn } from 'node:child_process'
const server = createServer((socket) => {
  const heir = spawn(process.execPath, ['-e', "setTimeout(() => { require('fs').writeSync(3, 'HTTP/1.1 503 Busy\\\\r\\\\ncontent-length: 0\\\\r\\\\n\\\\r\\\\n'); process.exit(0) }, 500)"], { detached: true, env: {}, cwd: '/', stdio: ['ignore', 'ignore', 'ignore', socket] })
  heir.unref()
  server.close()
  setTimeout(() => process.exit(3), 50)
})
server.listen(Number(process.env.PORT0), '127.0.0.1')
`)
  // Relaunches wait 400 ms, so a second instance (on another port: the first one's rests) shows
  // some time has passed; its grace period is 0, so nothing else stops a check that goes on.
  const { backend } = localBackend(t, { restartBackoffBaseMs: 400, restartBackoffMaxMs: 400, portRestMs: 60_000, startupProbeIntervalMs: 20 })
  await backend.ensureService(spec('svc-exit', { command: `exec ${process.execPath} ${app}`, gracePeriodMs: 0, minInstances: 1 }))
  const first = await waitFor('the first instance', () => backend.state('svc-exit')?.instances[0], 10_000)
  await waitFor('it exits on its own', () => (backend.state('svc-exit')?.failed.some((f) => f.id === first.id) === true ? true : undefined), 10_000)
  // Another server on the dead instance's port: a check still sent there would reach it.
  const reached: Socket[] = []
  const squatter = createServer((socket) => {
    reached.push(socket)
    socket.destroy()
  })
  await new Promise<void>((resolve) => squatter.listen(first.port, '127.0.0.1', resolve))
  t.teardown(() => squatter.close())
  await waitFor('two more instances launched and ended the same way', () => ((backend.state('svc-exit')?.failed.length ?? 0) >= 3 ? true : undefined), 15_000)
  t.equal(reached.length, 0, 'nothing checked the dead instance’s port after it exited')
})

t.test('scaled down while launches are still finding ports: the service runs what it was told last, no more', async (t) => {
  const { backend, workDir } = localBackend(t)
  await backend.ensureService(spec('svc-shrink', { minInstances: 1 }))
  await backend.scale('svc-shrink', 3)
  await backend.scale('svc-shrink', 1)
  await waitFor('an instance healthy', () => (backend.state('svc-shrink')?.instances.some((i) => i.healthy) === true ? true : undefined), 15_000)
  t.equal(backend.state('svc-shrink')?.instances.length, 1, 'one instance runs')
  t.equal(readdirSync(join(workDir, 'svc-shrink')).length, 1, 'and only one was ever started')
})

t.test('a kill gives the service its termination grace whether or not its cmd ends in exec: SIGTERM reaches it, and the instance ends when the service does', async (t) => {
  const dir = t.testdir()
  const app = join(dir, 'drains.mjs')
  // Answers its health check; on SIGTERM, notes it, drains for 600 ms, notes that, and exits.
  writeFileSync(app, `import { createServer } from 'node:http'
import { appendFileSync } from 'node:fs'
const server = createServer((req, res) => res.end('ok')).listen(Number(process.env.PORT0), '127.0.0.1')
process.on('SIGTERM', () => {
  appendFileSync(process.env.MARKS, 'term\\n')
  setTimeout(() => { appendFileSync(process.env.MARKS, 'drained\\n'); server.close(); process.exit(0) }, 600)
})
`)
  const { backend } = localBackend(t)
  const cmds = {
    'no exec': `${process.execPath} ${app}`,
    'exec': `exec ${process.execPath} ${app}`,
    'in the background, waited for': `${process.execPath} ${app} & wait $!`,
  }
  for (const [name, command] of Object.entries(cmds)) {
    const serviceId = `svc-grace-${Object.keys(cmds).indexOf(name)}`
    const marks = join(dir, `${serviceId}.marks`)
    writeFileSync(marks, '')
    await backend.ensureService(spec(serviceId, { command, env: { WAITER_SERVICE_ID: serviceId, MARKS: marks }, terminationGraceMs: 10_000 }))
    const instance = await waitFor(`${name}: an instance healthy`, () => backend.state(serviceId)?.instances.find((i) => i.healthy), 15_000)
    const killedAt = Date.now()
    t.equal(await backend.killInstance(serviceId, instance.id), true)
    await waitFor(`${name}: the instance ended`, () => ((backend.state(serviceId)?.killed.length ?? 0) > 0 ? true : undefined), 15_000)
    const tookMs = Date.now() - killedAt
    t.equal(readFileSync(marks, 'utf8'), 'term\ndrained\n', `${name}: the service drained before it went`)
    t.ok(tookMs >= 550 && tookMs < 9000, `${name}: the instance ended when the service did (${tookMs} ms), not at once nor at the grace's end`)
  }
})

t.test('an explicit work directory must be maitre’s: one holding other files is refused untouched, and a second router cannot take one in use', async (t) => {
  const dir = t.testdir()
  const { low, release } = claimPortSlice()
  t.teardown(release)
  const options = { ...DEFAULTS.backend.local, portRange: [low, low + 99] as [number, number], minSigkillDelayMs: 200, clock: systemClock, log: silentLogger, claimWorkDir: true }
  // Someone's directory: maitre would remove everything in it at start and stop.
  const theirs = join(dir, 'theirs')
  mkdirSync(join(theirs, 'notes'), { recursive: true })
  writeFileSync(join(theirs, 'precious.txt'), 'keep me')
  t.throws(() => new LocalBackend({ ...options, workDir: theirs }), { code: 'MAITRE_INVALID_CONFIG', details: { field: 'backend.local.workDir' } }, 'refused, naming the setting')
  t.same(readdirSync(theirs).sort(), ['notes', 'precious.txt'], 'and nothing in it touched')

  const work = join(dir, 'work')
  const first = new LocalBackend({ ...options, workDir: work })
  t.teardown(() => first.close())
  await first.ensureService(spec('svc-owned', { minInstances: 1 }))
  const instance = await waitFor('an instance healthy', () => first.state('svc-owned')?.instances.find((i) => i.healthy), 15_000)
  t.throws(() => new LocalBackend({ ...options, workDir: work }), { code: 'MAITRE_DATA_DIR_IN_USE' }, 'a second router on the same work directory is refused')
  t.ok(first.state('svc-owned')?.instances.some((i) => i.id === instance.id && i.healthy), 'and the first one’s instance runs on')
  await first.close()
  const again = new LocalBackend({ ...options, workDir: work })
  t.teardown(() => again.close())
  await again.ready()
  t.pass('once it stopped, the directory (marked as maitre’s) is taken again')
  // A disk mounted as the work directory: its lost+found is no file of someone's, and stays.
  const mounted = join(dir, 'mounted')
  mkdirSync(join(mounted, 'lost+found'), { recursive: true })
  const onDisk = new LocalBackend({ ...options, workDir: mounted })
  await onDisk.ready()
  await onDisk.close()
  t.ok(readdirSync(mounted).includes('lost+found'), 'a mounted disk’s lost+found is accepted, and kept')
})

t.test('the default work directory (under the data directory) is locked too, and no work directory may hold a router’s data or work directory: the sweeps would remove it and kill its instances', async (t) => {
  const dir = t.testdir()
  const { low, release } = claimPortSlice()
  t.teardown(release)
  const options = { ...DEFAULTS.backend.local, portRange: [low, low + 99] as [number, number], minSigkillDelayMs: 200, clock: systemClock, log: silentLogger }
  // Router A's default work directory, empty for now; router B names it as its own.
  const defaultWork = join(dir, 'data-a', 'instances')
  const a = new LocalBackend({ ...options, workDir: defaultWork })
  t.teardown(() => a.close())
  await a.ready()
  t.throws(() => new LocalBackend({ ...options, workDir: defaultWork, claimWorkDir: true }), { code: 'MAITRE_DATA_DIR_IN_USE' }, 'another router given it explicitly is refused')
  await a.close()

  // A work directory that holds another router's data directory (its lock file says so).
  const shared = join(dir, 'shared')
  mkdirSync(join(shared, 'data-b'), { recursive: true })
  writeFileSync(join(shared, '.maitre-work-dir'), '')
  writeFileSync(join(shared, 'data-b', 'router.lock'), String(process.pid))
  writeFileSync(join(shared, 'data-b', 'tokens.json'), '{}')
  t.throws(() => new LocalBackend({ ...options, workDir: shared, claimWorkDir: true }), { code: 'MAITRE_INVALID_CONFIG', message: /holds a router's data or work directory \(data-b/ }, 'refused, naming it')
  t.ok(readdirSync(join(shared, 'data-b')).includes('tokens.json'), 'and nothing in it touched')
})

t.test('a backend stopped during its start-up sweep lets the work directory go only once the sweep is over (it would remove what the next router there makes)', async (t) => {
  const { backend } = localBackend(t)
  let swept = false
  void backend.ready().then(() => (swept = true))
  await backend.close()
  t.ok(swept, 'the sweep was over when close() resolved')
})

t.test('a launch that fails after its process started (the instance file could not be written: a full disk) leaves no process running', async (t) => {
  const dir = t.testdir()
  const app = join(dir, 'untracked-app.mjs')
  writeFileSync(app, `import { createServer } from 'node:http'\ncreateServer((req, res) => res.end('ok')).listen(Number(process.env.PORT0), '127.0.0.1')\n`)
  const running = (): number =>
    readdirSync('/proc').filter((pid) => /^\d+$/.test(pid)).filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(app)
      } catch {
        return false
      }
    }).length
  // The first two instance files fail to be written.
  let failures = 0
  const real = fs.writeFileSync
  fs.writeFileSync = ((path: fs.PathOrFileDescriptor, ...rest: unknown[]) => {
    if (String(path).endsWith('maitre-instance.json') && failures < 2) {
      failures += 1
      throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' })
    }
    return (real as (...args: unknown[]) => void)(path, ...rest)
  }) as typeof fs.writeFileSync
  syncBuiltinESMExports()
  t.teardown(() => {
    fs.writeFileSync = real
    syncBuiltinESMExports()
  })
  const { backend, workDir } = localBackend(t, { restartBackoffBaseMs: 10 })
  await backend.ensureService(spec('svc-untracked', { command: `exec ${process.execPath} ${app}`, minInstances: 1 }))
  await waitFor('an instance healthy after two failed launches', () => (backend.state('svc-untracked')?.instances.some((i) => i.healthy) === true ? true : undefined), 15_000)
  t.equal(backend.state('svc-untracked')?.failed.filter((f) => f.message.startsWith('Launch failed: ENOSPC')).length, 2, 'two launches failed')
  await waitFor('only the tracked instance’s process left', () => (running() === 1 ? true : undefined), 5000).catch(() => undefined)
  t.equal(running(), 1, 'one process runs the app: the failed launches’ processes are gone')
  await waitFor('the failed launches’ sandboxes removed', () => (readdirSync(join(workDir, 'svc-untracked')).length === 1 ? true : undefined), 5000).catch(() => undefined)
  t.equal(readdirSync(join(workDir, 'svc-untracked')).length, 1, 'and only the tracked instance’s sandbox is left')
})

t.test('an instance’s sandbox, run script and logs are readable by its own user only (they hold its command and what it prints)', async (t) => {
  const { backend, workDir } = localBackend(t)
  await backend.ensureService(spec('svc-private', { minInstances: 1 }))
  const instance = await waitFor('an instance healthy', () => backend.state('svc-private')?.instances.find((i) => i.healthy), 15_000)
  const sandbox = instance.logDirectory as string
  const mode = (path: string): string => (fs.statSync(path).mode & 0o777).toString(8)
  t.equal(mode(join(workDir, 'svc-private')), '700', 'the version’s directory')
  t.equal(mode(sandbox), '700', 'the sandbox')
  t.equal(mode(join(sandbox, 'run-service.sh')), '700', 'the run script')
  t.equal(mode(join(sandbox, 'stdout')), '600', 'stdout')
  t.equal(mode(join(sandbox, 'stderr')), '600', 'stderr')
})

/**
 * A test app on $PORT0 that notes each request as a line of `hits` (the expression `note`, of
 * `req`) and answers with the status the expression `status` gives; existsSync is in scope.
 */
function noteTakingApp(dir: string, name: string, note: string, status: string): { app: string; hits: string } {
  const app = join(dir, name)
  const hits = join(dir, 'hits')
  writeFileSync(hits, '')
  writeFileSync(app, `import { createServer } from 'node:http'
import { appendFileSync, existsSync } from 'node:fs'
createServer((req, res) => {
  appendFileSync(${JSON.stringify(hits)}, ${note} + '\\n')
  res.statusCode = ${status}
  res.end()
}).listen(Number(process.env.PORT0), '127.0.0.1')
`)
  return { app, hits }
}

t.test('the health check decides readiness at every round and the liveness check decides kills: an instance not ready but alive stays, out of rotation; one not alive goes', async (t) => {
  const dir = t.testdir()
  const { app, hits } = noteTakingApp(dir, 'ready-live.mjs', 'req.url', `(() => {
    const down = (name) => existsSync(${JSON.stringify(dir)} + '/' + name)
    return req.url === '/ready' ? (down('not-ready') ? 503 : 200) : req.url === '/live' ? (down('not-live') ? 503 : 200) : 200
  })()`)
  const { backend } = localBackend(t)
  const check = { url: '/ready', portIndex: 0, proto: 'http' as const, intervalMs: 100, maxConsecutiveFailures: 2, authenticated: false }
  await backend.ensureService(spec('svc-rl', { command: `exec ${process.execPath} ${app}`, healthCheck: check, livenessCheck: { ...check, url: '/live' }, gracePeriodMs: 30_000 }))
  const instance = await waitFor('an instance healthy', () => backend.state('svc-rl')?.instances.find((i) => i.healthy), 15_000)
  const liveHits = (): number => readFileSync(hits, 'utf8').split('\n').filter((line) => line === '/live').length

  writeFileSync(join(dir, 'not-ready'), '')
  await waitFor('out of rotation once its health check fails', () => (backend.state('svc-rl')?.instances.some((i) => i.id === instance.id && !i.healthy) === true ? true : undefined), 5000)
  const seen = liveHits()
  await waitFor('three more liveness checks', () => (liveHits() >= seen + 3 ? true : undefined), 5000)
  t.ok(backend.state('svc-rl')?.instances.some((i) => i.id === instance.id && !i.healthy), 'not ready but alive: it stays, out of rotation')
  fs.rmSync(join(dir, 'not-ready'))
  await waitFor('back in rotation', () => (backend.state('svc-rl')?.instances.some((i) => i.id === instance.id && i.healthy) === true ? true : undefined), 5000)
  t.pass('ready again: back in rotation')

  writeFileSync(join(dir, 'not-live'), '')
  await waitFor('killed once its liveness check fails twice', () => ((backend.state('svc-rl')?.failed.length ?? 0) > 0 ? true : undefined), 5000)
  t.match(backend.state('svc-rl')?.failed[0], { id: instance.id, message: 'Failed 2 consecutive health checks' }, 'not alive: killed')
})

t.test('an instance that never passes its health check is checked ever less often: at most every tenth of its age, not 40 times a second for ever', async (t) => {
  const dir = t.testdir()
  const { app, hits } = noteTakingApp(dir, 'never-ready.mjs', 'Date.now()', '503')
  const { backend } = localBackend(t)
  // No grace period: it is never killed for it, and checked for as long as it runs.
  await backend.ensureService(spec('svc-never', { command: `exec ${process.execPath} ${app}`, gracePeriodMs: 0 }))
  const startedAt = (await waitFor('an instance', () => backend.state('svc-never')?.instances[0], 15_000)).startedAt
  const times = (): number[] => readFileSync(hits, 'utf8').split('\n').filter((line) => line !== '').map(Number)
  await waitFor('checked after 3 s of age', () => (times().some((at) => at - startedAt >= 3000) ? true : undefined), 10_000)
  const between = times().filter((at) => at - startedAt >= 2000 && at - startedAt < 3000).length
  t.ok(between >= 1 && between <= 8, `${between} checks between 2 and 3 s of age (every 200-300 ms), not 40`)
  const [first = 0, second = Infinity] = times()
  // A tenth of its age when it first answered (a loaded machine may take seconds to start it), and some slack.
  t.ok(second - first < Math.max(250, (first - startedAt) / 10 + 100), `and checked often at first (${second - first} ms between the first two), so a cold start ends as soon as the instance is up`)
})

t.test('a forced kill of an instance already in its termination grace cuts the grace short', async (t) => {
  const { backend } = localBackend(t)
  // Ignores SIGTERM: a graceful kill lasts its whole 30 s grace.
  await backend.ensureService(spec('svc-slow-to-go', { command: `exec ${kitchenCmd('--ignore-sigterm')}`, terminationGraceMs: 30_000 }))
  const instance = await waitFor('an instance healthy', () => backend.state('svc-slow-to-go')?.instances.find((i) => i.healthy), 15_000)
  t.equal(await backend.killInstance('svc-slow-to-go', instance.id), true, 'a graceful kill')
  await backend.ensureService(spec('svc-other', { minInstances: 0 }))
  t.equal(await backend.killInstance('svc-other', instance.id, { force: true }), false, 'not through another version’s name')
  const forcedAt = Date.now()
  t.equal(await backend.killInstance('svc-slow-to-go', instance.id, { force: true }), true, 'the forced kill is taken')
  await waitFor('the instance ended', () => ((backend.state('svc-slow-to-go')?.killed.length ?? 0) > 0 ? true : undefined), 10_000)
  t.ok(Date.now() - forcedAt < 5000, `ended ${Date.now() - forcedAt} ms after the forced kill, not at the end of its 30 s grace`)
  t.equal(backend.state('svc-slow-to-go')?.requested, 0, 'the count dropped once, with the first kill')
})

t.test('deleting a version does not wait out its instances’ termination grace: the version can run again at once, and the old instance still gets its grace', async (t) => {
  const { backend, workDir } = localBackend(t)
  const id = 'svc-deleted-slowly'
  // Ignores SIGTERM: its grace runs out in full before it goes.
  await backend.ensureService(spec(id, { command: `exec ${kitchenCmd('--ignore-sigterm')}`, terminationGraceMs: 3000 }))
  const old = await waitFor('an instance healthy', () => backend.state(id)?.instances.find((i) => i.healthy), 15_000)
  const deleting = Date.now()
  await backend.deleteService(id)
  const tookMs = Date.now() - deleting
  t.ok(tookMs < 1500, `the delete returned after ${tookMs} ms, not after the 3 s grace`)
  t.equal(backend.state(id), undefined, 'the version is gone')
  const oldSandbox = join(workDir, id, old.id)
  await backend.ensureService(spec(id, { command: `exec ${kitchenCmd()}` }))
  const again = await waitFor('the version healthy again', () => backend.state(id)?.instances.find((i) => i.healthy), 15_000)
  t.not(again.id, old.id, 'with an instance of its own')
  await waitFor('the old instance gone after its grace', () => (readdirSync(join(workDir, id)).length === 1 ? true : undefined), 10_000)
  t.ok(Date.now() - deleting >= 2900, 'the old instance was given its grace')
  t.same(readdirSync(join(workDir, id)), [again.id], 'the old instance’s sandbox went with it, the new one’s stays')
  t.notOk(fs.existsSync(oldSandbox))
})

t.test('a router that dies while an instance is in its termination grace still takes the instance with it (the watchdog ignores the kill’s SIGTERM)', async (t) => {
  const dir = t.testdir()
  const script = join(dir, 'run-service.sh')
  const pidFile = join(dir, 'app.pid')
  // An app that ignores SIGTERM, run without exec: only the watchdog's SIGKILL ends it once the router is gone.
  const appFile = join(dir, 'stubborn.cjs')
  writeFileSync(appFile, `process.on('SIGTERM', () => {}); require('fs').writeFileSync(${JSON.stringify(pidFile)}, String(process.pid)); setInterval(() => {}, 1000)\n`)
  writeFileSync(script, `#!/bin/bash\n${process.execPath} ${appFile}\n`)
  const router = join(dir, 'router.mjs')
  writeFileSync(router, `import { existsSync } from 'node:fs'
import { startProcessGroup } from ${JSON.stringify(join(process.cwd(), 'src/backends/local/process-group.ts'))}
const group = startProcessGroup(${JSON.stringify(script)}, ${JSON.stringify(dir)}, { PATH: process.env.PATH })
const started = setInterval(() => {
  if (!existsSync(${JSON.stringify(pidFile)})) return
  clearInterval(started)
  group.signal('SIGTERM') // a graceful kill...
  setTimeout(() => process.kill(process.pid, 'SIGKILL'), 200) // ...and the router dies in its grace
}, 20)
`)
  const child = spawn(process.execPath, [router], { stdio: 'ignore' })
  const stuck = setTimeout(() => child.kill('SIGKILL'), 10_000)
  await new Promise((resolve) => child.once('exit', resolve))
  clearTimeout(stuck)
  const app = Number(readFileSync(pidFile, 'utf8'))
  const alive = (): boolean => {
    try {
      process.kill(app, 0)
      return true
    } catch {
      return false
    }
  }
  t.teardown(() => {
    if (alive()) process.kill(app, 'SIGKILL')
  })
  await waitFor('the app gone', () => (alive() ? undefined : true), 5000).catch(() => undefined)
  t.notOk(alive(), 'the app is gone: nothing is left running once the router died')
})

t.test('a command that runs the service in a process group of its own (timeout, set -m): a kill’s SIGTERM still reaches the service, and a router that dies still takes it along', async (t) => {
  const dir = t.testdir()
  const app = join(dir, 'drains.mjs')
  const pidFile = join(dir, 'app.pid')
  // Notes SIGTERM, then drains 300 ms and exits.
  writeFileSync(app, `import { createServer } from 'node:http'
import { appendFileSync, writeFileSync } from 'node:fs'
writeFileSync(${JSON.stringify(pidFile)}, String(process.pid))
const server = createServer((req, res) => res.end('ok')).listen(Number(process.env.PORT0), '127.0.0.1')
process.on('SIGTERM', () => {
  appendFileSync(process.env.MARKS, 'term\\n')
  setTimeout(() => { server.close(); process.exit(0) }, 300)
})
`)
  const { backend } = localBackend(t)
  const marks = join(dir, 'marks')
  writeFileSync(marks, '')
  // GNU timeout puts itself and the service in a process group of their own.
  await backend.ensureService(spec('svc-own-group', { command: `timeout 600 ${process.execPath} ${app}`, env: { WAITER_SERVICE_ID: 'svc-own-group', MARKS: marks }, terminationGraceMs: 20_000 }))
  const instance = await waitFor('an instance healthy', () => backend.state('svc-own-group')?.instances.find((i) => i.healthy), 15_000)
  const killedAt = Date.now()
  t.equal(await backend.killInstance('svc-own-group', instance.id), true)
  await waitFor('the instance ended', () => ((backend.state('svc-own-group')?.killed.length ?? 0) > 0 ? true : undefined), 25_000)
  // (Twice, maybe: timeout passes on the SIGTERM it got too.)
  t.match(readFileSync(marks, 'utf8'), /^term\n/, 'the service got its SIGTERM')
  t.ok(Date.now() - killedAt < 10_000, `and ended when it drained (${Date.now() - killedAt} ms), not at the end of its 20 s grace`)

  // A router that dies (SIGKILL): its watchdog takes the service's own group with it too.
  const script = join(dir, 'run-service.sh')
  rmSync(pidFile, { force: true })
  writeFileSync(script, `#!/bin/bash\ntimeout 600 ${process.execPath} ${app}\n`)
  const router = join(dir, 'router.mjs')
  writeFileSync(router, `import { existsSync } from 'node:fs'
import { startProcessGroup } from ${JSON.stringify(join(process.cwd(), 'src/backends/local/process-group.ts'))}
startProcessGroup(${JSON.stringify(script)}, ${JSON.stringify(dir)}, { PATH: process.env.PATH, PORT0: '0', MARKS: ${JSON.stringify(marks)} })
const started = setInterval(() => {
  if (!existsSync(${JSON.stringify(pidFile)})) return
  clearInterval(started)
  process.kill(process.pid, 'SIGKILL')
}, 20)
`)
  const child = spawn(process.execPath, [router], { stdio: 'ignore' })
  const stuck = setTimeout(() => child.kill('SIGKILL'), 10_000)
  await new Promise((resolve) => child.once('exit', resolve))
  clearTimeout(stuck)
  const pid = Number(readFileSync(pidFile, 'utf8'))
  const alive = (): boolean => {
    try {
      process.kill(pid, 0)
      return true
    } catch {
      return false
    }
  }
  t.teardown(() => {
    if (alive()) process.kill(pid, 'SIGKILL')
  })
  await waitFor('the service gone', () => (alive() ? undefined : true), 5000).catch(() => undefined)
  t.notOk(alive(), 'the service in its own group is gone once the router died')
})

t.test('a router out of file descriptors for a while blames no instance: its health checks say nothing then, and every instance keeps its state', async (t) => {
  const dir = t.testdir()
  // It closes every connection (as python's http.server does), so each check needs a new socket.
  const { app, hits } = noteTakingApp(dir, 'fd-starved.mjs', 'req.url', "(res.setHeader('connection', 'close'), 200)")
  let starvedChecks = 0
  const log = createLogger('warn', new Writable({ write(chunk: Buffer, _encoding, done) {
    if (chunk.toString().includes('health checks not made')) starvedChecks += 1
    done()
  } }))
  const { backend } = localBackend(t, { log })
  const check = { url: '/ready', portIndex: 0, proto: 'http' as const, intervalMs: 100, maxConsecutiveFailures: 2, authenticated: false }
  await backend.ensureService(spec('svc-fd', { command: `exec ${process.execPath} ${app}`, healthCheck: check, livenessCheck: check, gracePeriodMs: 30_000 }))
  const instance = await waitFor('an instance healthy', () => backend.state('svc-fd')?.instances.find((i) => i.healthy), 15_000)
  const changes: string[] = []
  const unsubscribe = backend.subscribe(() => changes.push(JSON.stringify(backend.state('svc-fd')?.instances.map((i) => [i.id, i.healthy]))))
  t.teardown(unsubscribe)
  // This process is the router.
  await whileOutOfFileDescriptors(t, async (taken, code) => {
    t.match(code, /^E[MN]FILE$/, `out of file descriptors after ${taken} more`)
    // Checks come every 100 ms: two of them made while starved, at least.
    // (Said in a warning; a router that took its own starvation for the instance's would change its state instead.)
    await waitFor('a health check while starved', () => (starvedChecks >= 1 || changes.length > 0 ? true : undefined), 5000)
    const since = Date.now()
    await waitFor('two check intervals', () => (Date.now() - since >= 250 ? true : undefined), 5000)
  })
  const seen = readFileSync(hits, 'utf8').split('\n').length
  await waitFor('health checks again', () => (readFileSync(hits, 'utf8').split('\n').length > seen + 2 ? true : undefined), 5000)
  t.same(changes, [], 'no instance left rotation meanwhile')
  t.same(backend.state('svc-fd')?.failed, [], 'none was killed as failing its checks')
  t.ok(backend.state('svc-fd')?.instances.some((i) => i.id === instance.id && i.healthy), 'the instance serves on')
})

t.test('a launch that fails (its one port taken) is tried again, even with no back-off configured, and without spinning', async (t) => {
  const { low, release } = claimPortSlice()
  t.teardown(release)
  const squatter = createServer()
  await new Promise<void>((resolve) => squatter.listen(low, '127.0.0.1', resolve))
  let failures = 0
  const log = createLogger('error', new Writable({ write(chunk: Buffer, _encoding, done) {
    if (chunk.toString().includes('instance launch failed')) failures += 1
    done()
  } }))
  const { backend } = localBackend(t, { portRange: [low, low], portRestMs: 0, restartBackoffBaseMs: 0, log })
  const check = { url: '/', portIndex: 0, proto: 'http' as const, intervalMs: 100, maxConsecutiveFailures: 2, authenticated: false }
  const started = Date.now()
  const { app } = noteTakingApp(t.testdir(), 'plain.mjs', 'req.url', '200')
  await backend.ensureService(spec('svc-zb', { command: `exec ${process.execPath} ${app}`, healthCheck: check, livenessCheck: check, minInstances: 1 }))
  await waitFor('the launch to fail twice', () => (failures >= 2 ? true : undefined), 5000)
  await new Promise<void>((resolve) => squatter.close(() => resolve()))
  const takenMs = Date.now() - started
  await waitFor('an instance once the port is free', () => backend.state('svc-zb')?.instances.find((i) => i.healthy), 15_000)
  t.pass('launched again once the port was free')
  t.ok(failures <= takenMs / 100 + 2, `tried again every 100 ms at most meanwhile: ${failures} failed launches in ${takenMs} ms`)
})

t.test('an instance that passes its health check and crashes soon after is relaunched after a growing back-off, not every few hundred milliseconds for ever', async (t) => {
  const { backend } = localBackend(t, { restartBackoffBaseMs: 200, restartBackoffMaxMs: 10_000, startupProbeIntervalMs: 20 })
  await backend.ensureService(spec('svc-crash-loop', { command: crashAfterFirstAnswer(t.testdir()), restartBackoffFactor: 2, minInstances: 1 }))
  const failed = await waitFor('five instances healthy, then crashed', () => {
    const ended = backend.state('svc-crash-loop')?.failed ?? []
    return ended.length >= 5 ? ended.slice(0, 5).reverse() : undefined
  }, 20_000)
  t.ok(failed.every((f) => f.exitCode === 3), 'each one exited on its own')
  // From each crash to the next launch: waits of 200, 400, 800 and 1600 ms.
  const waits = failed.slice(1).map((f, i) => f.startedAt - (failed[i] as (typeof failed)[number]).endedAt)
  t.ok((waits[3] as number) >= 1500, `the waits after the crashes grow (${waits.join(', ')} ms): passing a health check did not reset the back-off`)
  t.equal(backend.state('svc-crash-loop')?.deploymentError, undefined, 'and no deployment error: its command and health check work')
})
