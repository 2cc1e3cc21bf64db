import t from 'tap'
import { spawn, spawnSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createInterface } from 'node:readline'
import { call, claimPortSlice, createToken, kitchenToken, processAlive, waitFor, type Router } from '../fixtures/router.ts'
import { runCli } from '../../src/cli.ts'
import { DEFAULTS } from '../../src/config.ts'

const alive = processAlive

t.test('maitre serve --config FILE runs a router; SIGTERM stops it and its instances', async (t) => {
  const dir = t.testdir()
  const config = join(dir, 'maitre.yaml')
  const ports = claimPortSlice()
  t.teardown(() => ports.release())
  writeFileSync(config, `server:\n  port: 0\ndataDir: ${join(dir, 'data')}\nbackend:\n  local:\n    portRange: [${ports.low}, ${ports.low + 99}]\n`)
  const child = spawn(process.execPath, ['src/main.ts', 'serve', '--config', config], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL')
  })
  const lines = createInterface({ input: child.stdout })
  const port = await new Promise<number>((resolve, reject) => {
    lines.on('line', (line) => {
      const entry = JSON.parse(line) as { msg: string; port?: number }
      if (entry.msg === 'maitre listening' && entry.port !== undefined) resolve(entry.port)
    })
    child.once('exit', (code) => reject(new Error(`maitre exited early with ${String(code)}`)))
  })
  const router = { url: `http://127.0.0.1:${port}` } as Router
  await createToken(router, 'kitchen', kitchenToken())
  const { pid } = (await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'kitchen' } })).json<{ pid: number }>()
  t.ok(alive(pid), 'the instance runs')
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
  child.kill('SIGTERM')
  t.equal(await exited, 0, 'clean exit')
  await waitFor('the instance to be gone', () => (alive(pid) ? undefined : true), 5000)
  t.notOk(alive(pid), 'nothing orphaned')
})

t.test('command-line errors are clear and exit non-zero', async (t) => {
  const out: string[] = []
  const io = { out: (s: string) => out.push(s), err: (s: string) => out.push(s), stopSignal: () => Promise.resolve() }
  t.equal(await runCli(['--bogus'], {}, io), 64)
  t.match(out.join(''), "Unknown option '--bogus'")
  const bad = join(t.testdir(), 'bad.yaml')
  writeFileSync(bad, 'server:\n  port: high\n')
  out.length = 0
  t.equal(await runCli(['--config', bad], {}, io), 78)
  t.match(out.join(''), /bad\.yaml:2:9: server\.port = "high", must be a number/)
  out.length = 0
  t.equal(await runCli(['--check-config', '--port', '8123'], {}, io), 0)
  t.equal((JSON.parse(out.join('')) as { server: { port: number } }).server.port, 8123)
  out.length = 0
  const kube = join(t.testdir({ 'kube.yaml': 'backend:\n  kind: kubernetes\nsecret: kube-secret-value-0123456789\n' }), 'kube.yaml')
  t.equal(await runCli(['--check-config', '--config', kube, '--etcd', 'http://127.0.0.1:2379', '--etcd', 'http://127.0.0.2:2379'], {}, io), 0, '--etcd repeats')
  t.same((JSON.parse(out.join('')) as { etcd: { endpoints: string[] } }).etcd.endpoints, ['http://127.0.0.1:2379', 'http://127.0.0.2:2379'])
  out.length = 0
  t.equal(await runCli(['--check-config', '--config', kube], { MAITRE_ETCD: 'http://10.1.1.1:2379, http://10.1.1.2:2379' }, io), 0)
  t.same((JSON.parse(out.join('')) as { etcd: { endpoints: string[] } }).etcd.endpoints, ['http://10.1.1.1:2379', 'http://10.1.1.2:2379'], 'and MAITRE_ETCD lists them (a space after a comma is no part of an endpoint)')
  out.length = 0
  t.equal(await runCli(['--check-config'], { MAITRE_PORT: '', MAITRE_LOG_LEVEL: '', MAITRE_DATA_DIR: '' }, io), 0, 'variables set to nothing are unset')
  const unset = JSON.parse(out.join('')) as { server: { port: number }; log: { level: string }; dataDir: string }
  t.same([unset.server.port, unset.log.level, unset.dataDir], [9091, 'info', DEFAULTS.dataDir], 'an empty MAITRE_PORT is not port 0 (a random one)')
  out.length = 0
  for (const port of ['0x10', '1e3', ' 80', '80.5']) {
    t.equal(await runCli(['--check-config'], { MAITRE_PORT: port }, io), 64, `MAITRE_PORT=${JSON.stringify(port)} is refused`)
    t.match(out.join(''), `MAITRE_PORT must be an integer, got ${JSON.stringify(port)}`, 'naming the variable, not --port')
    out.length = 0
  }
  // Kubernetes gives every pod of a namespace with a Service named maitre MAITRE_PORT=tcp://…
  t.equal(await runCli(['--check-config'], { MAITRE_PORT: 'tcp://10.96.0.12:80' }, io), 0, 'a Service link variable in MAITRE_PORT is not a port: the router starts')
  t.equal((JSON.parse(out.join('')) as { server: { port: number } }).server.port, 9091, 'on its configured port')
  out.length = 0
  t.equal(await runCli(['--check-config', '--config', kube], {}, io), 0)
  t.notMatch(out.join(''), /kube-secret-value/, 'the config printed shows no credential')
  out.length = 0
  t.equal(await runCli(['--check-config', '--port', '0x10'], {}, io), 64)
  t.match(out.join(''), '--port must be an integer, got "0x10"')
  out.length = 0
  t.equal(await runCli(['--check-config', '--etcd', 'localhost:2379'], {}, io), 78, 'a bad endpoint is a config error')
  t.match(out.join(''), 'etcd.endpoints')
  out.length = 0
  t.equal(await runCli(['--help'], {}, io), 0)
  t.match(out.join(''), 'Usage: maitre')
  out.length = 0
  // An option another command reads is refused, not taken and ignored.
  t.equal(await runCli(['serve', '-f', 'prod.yaml', '--check-config'], {}, io), 64, 'serve -f (meant: -c) would have served the defaults')
  t.match(out.join(''), '--file is not an option of "serve"')
  out.length = 0
  t.equal(await runCli(['token', 'list', '--port', '9095'], {}, io), 64, 'a client command does not take --port (it would ask the default router)')
  t.match(out.join(''), '--port is not an option of "token"')
})

t.test('a corrupt token store stops startup with a clear message', async (t) => {
  const dir = t.testdir({ tokens: { 'svc.json': '{"cmd": ' } })
  const out: string[] = []
  const io = { out: (s: string) => out.push(s), err: (s: string) => out.push(s), stopSignal: () => Promise.resolve() }
  t.equal(await runCli(['--port', '0', '--data-dir', dir, '--log-level', 'silent'], {}, io), 78)
  t.match(out.join(''), /The token store is corrupt: .*svc\.json is not valid JSON/)
})

t.test('a user with no home (no $HOME, no passwd entry: an arbitrary uid) runs maitre without its compile cache instead of crashing', async (t) => {
  const main = fileURLToPath(new URL('../../src/main.ts', import.meta.url))
  const env = { PATH: process.env['PATH'] ?? '/usr/bin:/bin' }
  // As root the test runs it as a uid no passwd entry names; otherwise as this user without $HOME.
  const run = process.getuid?.() === 0
    ? spawnSync('setpriv', ['--reuid=54321', '--regid=54321', '--clear-groups', process.execPath, main, '--version'], { env, encoding: 'utf8', cwd: '/' })
    : spawnSync(process.execPath, [main, '--version'], { env, encoding: 'utf8', cwd: '/' })
  t.equal(run.status, 0, `exit 0 (stderr: ${run.stderr.slice(0, 300)})`)
  t.match(run.stdout, /^\d+\.\d+\.\d+/, 'and the version printed')
})
