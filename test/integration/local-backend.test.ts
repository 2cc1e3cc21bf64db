import t from 'tap'
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { call, createToken, kitchenCmd, kitchenToken, processAlive, startRouter, waitFor } from '../fixtures/router.ts'

const alive = processAlive

t.test('each instance has a sandbox with its stdout and stderr, and dies as a whole group', async (t) => {
  const router = await startRouter(t)
  const pidFile = join(router.dataDir, 'helper.pid')
  // The service starts a helper process of its own: killing the instance must take it along.
  await createToken(router, 'family', {
    cmd: `sleep 1000 & echo $! > ${pidFile}; echo started on $PORT0; echo oops >&2; exec ${kitchenCmd()}`,
    cpus: 0.1,
    mem: 256,
    version: 'v1',
  })
  const reply = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'family', 'x-waiter-debug': 'true' } })
  t.equal(reply.status, 200)
  const sandbox = reply.headers['x-waiter-backend-directory'] as string
  const port = reply.headers['x-waiter-backend-port'] as string
  t.equal(readFileSync(join(sandbox, 'stdout'), 'utf8'), `started on ${port}\n`)
  t.equal(readFileSync(join(sandbox, 'stderr'), 'utf8'), 'oops\n')
  t.ok(existsSync(join(sandbox, 'requests.log')), 'the app runs in its sandbox')
  const helper = Number(readFileSync(pidFile, 'utf8'))
  const app = reply.json<{ pid: number }>().pid
  t.ok(alive(helper) && alive(app))
  const id = reply.headers['x-waiter-service-id'] as string
  const deleted = await call(`${router.url}/apps/${id}`, { method: 'DELETE' })
  t.equal(deleted.json<{ result: string }>().result, 'deleted')
  await waitFor('the whole group to be gone', () => (alive(helper) || alive(app) ? undefined : true), 5000)
  t.notOk(alive(app), 'the app is gone')
  t.notOk(alive(helper), 'and so is its helper')
})

const MB = 1024 * 1024

/**
 * Resolves with `read()` once it has stayed the same for 8 polls in a row (200 ms): a byte count
 * that stopped growing (a negative count is not there yet). A transfer without back-pressure stops
 * only at its full size, so a small count here is the mark of back-pressure, however slow the machine.
 */
async function settled(what: string, read: () => number): Promise<number> {
  let last = -1
  let same = 0
  return waitFor(what, () => {
    const now = read()
    same = now >= 0 && now === last ? same + 1 : 0
    last = now
    return same >= 8 ? now : undefined
  })
}

const fileNumber = (path: string): number => (existsSync(path) ? Number(readFileSync(path, 'utf8')) : -1)

t.test('a 100 MB upload streams: while the instance stops reading, the client is held back', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'kitchen', kitchenToken())
  const h = { 'x-waiter-token': 'kitchen' }
  const warm = await call(`${router.url}/request-info`, { headers: { ...h, 'x-waiter-debug': 'true' } })
  const sandbox = warm.headers['x-waiter-backend-directory'] as string
  const { pid } = warm.json<{ pid: number }>()
  const chunk = Buffer.alloc(MB, 120)
  let produced = 0
  async function* upload(): AsyncGenerator<Buffer> {
    for (let i = 0; i < 100; i++) {
      produced += chunk.length
      yield chunk
    }
  }
  // hold=true: the instance reads the first chunk, then nothing until it gets SIGUSR2.
  const pending = call(`${router.url}/consume?hold=true`, { method: 'POST', headers: { ...h, 'content-type': 'application/octet-stream' }, body: Readable.from(upload()) })
  await waitFor('the instance to stop reading', () => (existsSync(join(sandbox, 'consume.progress')) ? true : undefined))
  const held = await settled('the client to stop sending', () => produced)
  t.ok(held < 40 * MB, `only ${(held / MB).toFixed(0)} MB left the client while the instance was not reading`)
  process.kill(pid, 'SIGUSR2')
  const reply = await pending
  t.equal(reply.json<{ bytes: number }>().bytes, 100 * MB, 'then all 100 MB arrive')
})

t.test('a 100 MB download streams: while the client stops reading, the instance is held back', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'kitchen', kitchenToken())
  const h = { 'x-waiter-token': 'kitchen', 'x-waiter-debug': 'true' }
  await call(`${router.url}/status`, { headers: h })
  const { request } = await import('undici')
  // report=true: the instance writes how far it got to produce.sent after every block.
  const res = await request(`${router.url}/produce?bytes=${100 * MB}&report=true`, { headers: h })
  const sandbox = res.headers['x-waiter-backend-directory'] as string
  // The body is not read until the instance has stopped writing.
  // (Its first report, 0, is no stop: on a slow machine it can stand for a while before the first block.)
  const sent = await settled('the instance to stop writing', () => Math.max(fileNumber(join(sandbox, 'produce.sent')), 0) || -1)
  t.ok(sent > 0 && sent < 40 * MB, `the instance had written only ${(sent / MB).toFixed(0)} MB while the client was not reading`)
  let bytes = 0
  for await (const chunk of Readable.from(res.body)) bytes += (chunk as Buffer).length
  t.equal(bytes, 100 * MB, 'then all 100 MB arrive')
})
