import t from 'tap'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { runCli } from '../../src/cli.ts'
import { RouterClient } from '../../src/cli/client.ts'
import { runCommand } from '../../src/cli/commands.ts'
import { call, createToken, kitchenCmd, kitchenToken, startRouter, waitFor } from '../fixtures/router.ts'

function io() {
  const out: string[] = []
  const err: string[] = []
  return { out, err, io: { out: (s: string) => void out.push(s), err: (s: string) => void err.push(s), stopSignal: () => new Promise<void>(() => undefined) } }
}

t.test('the service owner’s and SRE’s commands against a real router', async (t) => {
  const router = await startRouter(t)
  // Not t.testdir(): a second call would wipe the router's data directory.
  const dir = join(router.dataDir, 'descriptors')
  mkdirSync(dir)
  const yamlFile = join(dir, 'kitchen.yaml')
  writeFileSync(yamlFile, `# a kitchen\ncmd: ${kitchenCmd()}\ncpus: 0.1\nmem: 256\nversion: v1\n`)
  const jsonFile = join(dir, 'kitchen.json')
  writeFileSync(jsonFile, JSON.stringify({ cmd: kitchenCmd(), cpus: 0.1, mem: 256, version: 'v2' }))
  const run = async (...args: string[]) => {
    const c = io()
    const code = await runCli([...args, '--router', router.url], {}, c.io)
    return { code, out: c.out.join(''), err: c.err.join('') }
  }

  const created = await run('token', 'create', 'kitchen', '--file', yamlFile)
  t.equal(created.code, 0, created.err)
  t.match(created.out, /^Successfully created kitchen \(etag E-[0-9a-f]{32}\)/)
  t.match((await run('token', 'create', 'kitchen', '--file', yamlFile)).err, 'token kitchen exists already; use "maitre token update"')
  const updated = await run('token', 'update', 'kitchen', '--file', jsonFile, '--json')
  t.equal(updated.code, 0)
  t.match(JSON.parse(updated.out), { message: 'Successfully updated kitchen', result: 'token-updated' })

  const shown = await run('token', 'show', 'kitchen')
  t.match(shown.out, /^PARAMETER\s+VALUE\n/)
  t.match(shown.out, /version\s+v2/)
  const listed = await run('token', 'list', '--json')
  t.same((JSON.parse(listed.out) as { token: string }[]).map((x) => x.token), ['kitchen'])
  t.match((await run('token', 'list')).out, /^TOKEN\s+OWNER\s+MAINTENANCE\nkitchen\s+\S+[ \t]*\n/, 'a token not in maintenance shows nothing in that column')

  const ping = await run('ping', 'kitchen')
  t.equal(ping.code, 0, ping.err)
  t.match(ping.out, /^kitchen: received-response, status 200 from maitre-[0-9a-f]{32}\.[0-9a-f]+; service Running/)

  const apps = await run('apps')
  t.match(apps.out, /^SERVICE-ID\s+STATUS\s+HEALTHY\s+REQUESTED\s+OUTSTANDING\s+TOKENS\n/)
  const id = /(maitre-[0-9a-f]{32})\s+Running/.exec(apps.out)?.[1] as string
  t.ok(id, 'the running version is listed')
  const detail = await run('apps', id)
  const instance = /(maitre-[0-9a-f]{32}\.[0-9a-f]+)\s+127\.0\.0\.1/.exec(detail.out)?.[1] as string
  t.ok(instance, 'with its instance')

  const logs = await run('logs', id, instance)
  t.match(logs.out, /^NAME\s+SIZE\s+TYPE\n/)
  t.match(logs.out, /stderr\s+0\s+file/)
  await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'kitchen', 'x-cid': 'from-the-cli-test' } })
  const log = await run('logs', id, instance, '--file', 'requests.log')
  t.match(log.out, 'start from-the-cli-test /request-info')
  t.equal((await run('logs', id, instance, '--file', 'nope')).code, 1)

  const killed = await run('kill', id, instance)
  t.equal(killed.out, `soft-kill successfully sent to ${instance}\n`)

  const deleted = await run('token', 'delete', 'kitchen')
  t.match(deleted.out, 'Deleted token kitchen (soft')
  const hard = await run('token', 'delete', 'kitchen', '--hard')
  t.equal(hard.code, 0, hard.err)
  t.equal((await run('token', 'list', '--json')).out.trim(), '[]')
})

t.test('clear errors and exit codes', async (t) => {
  const router = await startRouter(t)
  const run = async (...args: string[]) => {
    const c = io()
    const code = await runCli(args, {}, c.io)
    return { code, err: c.err.join('') }
  }
  const missing = await run('token', 'show', 'nope', '--router', router.url)
  t.equal(missing.code, 1)
  t.equal(missing.err, "maitre: 404: Couldn't find token nope\n")
  const badPing = await run('ping', 'nope', '--router', router.url)
  t.equal(badPing.code, 1, 'a ping that did not reach a healthy instance fails')
  t.equal((await run('token', 'create', 'x1', '--router', router.url)).code, 64, 'no --file')
  const noFile = await run('token', 'create', 'x1', '--file', '/nonexistent.yaml', '--router', router.url)
  t.equal(noFile.code, 66)
  t.match(noFile.err, 'cannot read /nonexistent.yaml')
  const dir = join(router.dataDir, 'descriptors')
  mkdirSync(dir)
  const bad = join(dir, 'bad.yaml')
  writeFileSync(bad, 'cmd: [unclosed\n')
  t.equal((await run('token', 'create', 'x1', '--file', bad, '--router', router.url)).code, 66)
  const invalid = join(dir, 'invalid.json')
  writeFileSync(invalid, JSON.stringify({ cmd: 'x', cpus: -1, mem: 1, version: '1' }))
  const rejected = await run('token', 'create', 'x1', '--file', invalid, '--router', router.url)
  t.equal(rejected.code, 1)
  t.match(rejected.err, 'cpus must be a positive number.')
  const unset = io()
  await runCli(['apps'], { MAITRE_URL: '' }, unset.io)
  t.notMatch(unset.err.join(''), /Invalid URL/, 'MAITRE_URL set to nothing is unset: the default router is asked, whether or not one answers there')
  const down = await run('apps', '--router', 'http://127.0.0.1:1')
  t.equal(down.code, 69)
  t.match(down.err, 'cannot reach the router at http://127.0.0.1:1')
  const withPassword = await run('apps', '--router', 'http://alice:hunter2-pw@127.0.0.1:1')
  t.equal(withPassword.code, 69)
  t.match(withPassword.err, 'cannot reach the router at http://<redacted>@127.0.0.1:1', 'the address it names has no password in it')
  t.notMatch(withPassword.err, 'hunter2-pw')
  t.equal((await run('apps', 'a', 'b', '--router', router.url)).code, 64)
  // A mistyped address is a usage error, not a router that is down.
  for (const bad of ['127.0.0.1:9091', 'localhost:9091', 'ftp://127.0.0.1:9091', 'http://127.0.0.1:9091/?x=1']) {
    const mistyped = await run('apps', '--router', bad)
    t.equal(mistyped.code, 64, `--router ${bad}: usage`)
    t.match(mistyped.err, /--router must/)
  }
  const envTypo = io()
  t.equal(await runCli(['apps'], { MAITRE_URL: 'router.example:9091' }, envTypo.io), 64, 'MAITRE_URL too')
  t.match(envTypo.err.join(''), /MAITRE_URL must be an http:\/\/ or https:\/\/ URL/)
})

t.test('what the terminal shows: control characters in a token are made visible, and a version with no instances (let go) is shown, not a crash', async (t) => {
  const router = await startRouter(t)
  const c = io()
  const nasty = 'echo hi\u001b[2J\u001b]0;owned\u0007\r\nfake line'
  t.equal((await createToken(router, 'nasty', kitchenToken({ cmd: nasty }))).status, 200)
  t.equal(await runCli(['token', 'show', 'nasty', '--router', router.url], {}, c.io), 0)
  const shown = c.out.join('')
  t.notOk(/[\u0000-\u0008\u000b-\u001f\u007f]/.test(shown), 'no raw control character reaches the terminal')
  t.match(shown, 'echo hi\\x1b[2J\\x1b]0;owned\\x07\\x0d\\x0afake line', 'each is shown as \\xNN')
  const json = io()
  t.equal(await runCli(['token', 'show', 'nasty', '--json', '--router', router.url], {}, json.io), 0)
  t.equal((JSON.parse(json.out.join('')) as { cmd: string }).cmd, nasty, '--json keeps the value as it is')

  // A version its adaptive keep-alive let go answers without `instances`: shown, exit 0.
  const dormant = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(JSON.stringify({ 'service-id': 's-1', status: 'Inactive', 'instance-counts': { 'healthy-instances': 0, 'requested-instances': 0 }, 'request-metrics': { outstanding: 0 }, 'current-for-tokens': [] }))
  })
  await new Promise<void>((r) => dormant.listen(0, '127.0.0.1', r))
  t.teardown(() => new Promise<void>((r) => dormant.close(() => r())))
  const apps = io()
  t.equal(await runCli(['apps', 's-1', '--router', `http://127.0.0.1:${(dormant.address() as AddressInfo).port}`], {}, apps.io), 0)
  t.match(apps.out.join(''), 's-1  Inactive')
})

t.test('token create never overwrites a token that appeared after it looked: the write says If-Match "" and the race ends in a refusal', async (t) => {
  const router = await startRouter(t)
  const file = join(router.dataDir, 'd.json')
  writeFileSync(file, JSON.stringify({ cmd: kitchenCmd(), cpus: 0.1, mem: 256, version: 'cli' }))
  const teammate = JSON.stringify({ token: 'race', cmd: kitchenCmd(), cpus: 0.1, mem: 256, version: 'teammate' })
  // A teammate creates the token between the CLI's look and its write.
  class Racing extends RouterClient {
    override async call(...args: Parameters<RouterClient['call']>): ReturnType<RouterClient['call']> {
      const reply = await super.call(...args)
      if (args[0] === 'GET') t.equal((await call(`${router.url}/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: teammate })).status, 200)
      return reply
    }
  }
  const err = await runCommand('token', ['create', 'race'], { client: new Racing(router.url, undefined), json: false, out: () => undefined, options: { file } }).then(() => undefined, (e: unknown) => e as Error)
  t.ok(err !== undefined, 'the create fails')
  t.match(err?.message, /412|changed|exists|match/i, 'saying the token is not what it looked')
  t.equal((await call(`${router.url}/token?token=race`)).json<{ version: string }>().version, 'teammate', 'the teammate’s token stands')
})

t.test('Ctrl-C (or SIGTERM) ends a client command at once, whatever it waits on: 130, said on stderr', async (t) => {
  // A router that takes the connection and never answers.
  let stop!: () => void
  const stopped = new Promise<void>((resolve) => (stop = resolve))
  const { createServer: createTcpServer } = await import('node:net')
  const held: import('node:net').Socket[] = []
  let closedByClient = false
  const silent = createTcpServer((socket) => {
    socket.on('error', () => undefined)
    socket.on('close', () => (closedByClient = true))
    held.push(socket)
    // The command now waits on it: the user presses Ctrl-C.
    stop()
  })
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    for (const socket of held) socket.destroy()
    return new Promise<void>((resolve) => silent.close(() => resolve()))
  })
  const { err } = io()
  const code = await runCli(['apps', '--router', `http://127.0.0.1:${(silent.address() as AddressInfo).port}`], {}, { out: () => undefined, err: (s) => void err.push(s), stopSignal: () => stopped })
  t.equal(code, 130, 'exit code 130')
  t.match(err.join(''), /maitre: interrupted/)
  // The request itself is cancelled: nothing is left holding the process open.
  await waitFor('the request’s connection closed by the client', () => (closedByClient ? true : undefined), 5000)
  t.pass('the connection was closed')
})
