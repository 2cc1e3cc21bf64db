/**
 * A cluster router killed outright (SIGKILL, an OOM kill, a container restart) and started again
 * with its data directory, so with its routerId: it must not say it is ready while it cannot
 * serve, and it takes its place back at once rather than after its old lease's TTL, during
 * which it could fill no slot of its own.
 */
import t from 'tap'
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { startProcessClusterBase } from '../fixtures/cluster.ts'
import { startRouterProcess, spawnRouterGroup, REPO } from '../fixtures/router-process.ts'
import { call, claimPortSlice, createToken, kitchenToken, waitFor } from '../fixtures/router.ts'

t.test('a router SIGKILLed and started again with its routerId serves at once once it says it is ready', async (t) => {
  const { dir, etcd, kubeconfig, podPortLow } = await startProcessClusterBase(t, 'restart')
  const own = claimPortSlice()
  t.teardown(own.release)
  // Lease TTLs: r1's first life holds a 15 s lease, which its restart at the same address used to
  // wait out (at least 10 s of it is left when it dies: etcd3 renews a lease every third of its
  // TTL), far above how long a restart takes on a loaded machine (~1–5 s). Its second life holds
  // 6 s, which a restart at another address must wait out.
  const extraWith = (ttlSecs: number): string => `etcd:\n  endpoints: [${etcd.endpoint}]\n  leaseTtlSecs: ${ttlSecs}\n`
  const extra = extraWith(6)
  mkdirSync(join(dir, 'r0'))
  const r0 = await startRouterProcess(t, { dataDir: join(dir, 'r0', 'data'), kubeconfig, portLow: podPortLow, config: extra })
  const r1Data = join(dir, 'r1', 'data')
  mkdirSync(r1Data, { recursive: true })
  const config = join(dir, 'r1.yaml')
  const configAt = (port: number, ttlSecs: number): void => writeFileSync(config, ['server:', `  port: ${port}`, '  host: 127.0.0.1', `dataDir: ${r1Data}`, 'backend:', '  kind: kubernetes', '  kubernetes:', `    kubeconfig: ${kubeconfig}`, `    podBasePort: ${podPortLow}`, '    relistBackoffMs: 50', extraWith(ttlSecs), ''].join('\n'))
  configAt(own.low, 15)
  const startR1 = () => spawnRouterGroup(t, process.execPath, [join(REPO, 'src/main.ts'), 'serve', '--config', config], ['ignore', 'ignore', 'inherit'])
  let r1 = startR1()
  const url1 = `http://127.0.0.1:${own.low}`
  await waitFor('r1 to join', async () => ((await call(`${r0.url}/state/cluster`)).json<{ members: unknown[] }>().members.length === 2 ? true : undefined), 20_000)
  await createToken(r0, 'warm', kitchenToken({ 'concurrency-level': 4, 'min-instances': 1 }))
  const h = { 'x-waiter-token': 'warm' }
  t.equal((await call(`${r0.url}/request-info`, { headers: h })).status, 200)
  t.equal((await call(`${url1}/request-info`, { headers: h })).status, 200, 'both routers serve the warm version')

  process.kill(-(r1.child.pid as number), 'SIGKILL')
  await r1.exited
  configAt(own.low, 6)
  r1 = startR1()
  let restarted = Date.now()
  await waitFor('r1 to say it is ready again', async () => ((await call(`${url1}/readyz`).then((r) => r.status, () => 0)) === 200 ? true : undefined), 20_000)
  const readyAfter = Date.now() - restarted
  t.ok(readyAfter < 8000, `at the same address, it was ready ${readyAfter} ms after it started again, before its old 15 s lease could lapse (10 s or more after the kill)`)
  let started = Date.now()
  t.equal((await call(`${url1}/request-info`, { headers: h })).status, 200)
  t.ok(Date.now() - started < 1500, `and served the warm version in ${Date.now() - started} ms`)

  // Started again at another address, it cannot tell its old lease from another router's: it
  // waits the lease out, and says meanwhile that it is not ready.
  process.kill(-(r1.child.pid as number), 'SIGKILL')
  await r1.exited
  configAt(own.low + 1, 6)
  const url2 = `http://127.0.0.1:${own.low + 1}`
  r1 = startR1()
  restarted = Date.now()
  const readiness: string[] = []
  await waitFor('r1 to say it is ready again', async () => {
    const reply = await call(`${url2}/readyz`).catch(() => undefined)
    if (reply !== undefined) readiness.push(`${reply.status} ${reply.json<{ status: string }>().status}`)
    return reply?.status === 200 ? true : undefined
  }, 20_000)
  t.ok(readiness.includes('503 joining'), `not ready while it waited out its old lease (${[...new Set(readiness)].join(', ')}, ready after ${Date.now() - restarted} ms)`)
  started = Date.now()
  t.equal((await call(`${url2}/request-info`, { headers: h })).status, 200)
  t.ok(Date.now() - started < 1500, `once ready, it served the warm version in ${Date.now() - started} ms (it took ~4 s: the old lease's TTL, then the settling)`)
})
