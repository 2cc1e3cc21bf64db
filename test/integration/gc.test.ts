/**
 * Garbage collection against a real router and real instances, with a clock the test jumps
 * forward instead of waiting out idle timeouts.
 */
import t from 'tap'
import { existsSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { call, createToken, kitchenCmd, kitchenToken, processAlive, startRouter, waitFor, type Router } from '../fixtures/router.ts'
import { OffsetClock } from '../fixtures/offset-clock.ts'

const FAST_GC = { 'scaler.tickMs': 250, 'scaler.gcIntervalMs': 100 }

interface AppSummary {
  readonly 'service-id': string
  readonly 'instance-counts': { 'healthy-instances': number }
}

async function listed(router: Router, id: string): Promise<AppSummary | undefined> {
  return (await call(`${router.url}/apps`)).json<AppSummary[]>().find((a) => a['service-id'] === id)
}

t.test('a version idle past its idle timeout is collected, and comes back on the next request', async (t) => {
  const clock = new OffsetClock()
  const router = await startRouter(t, FAST_GC, { clock })
  await createToken(router, 'idle', kitchenToken({ 'idle-timeout-mins': 1 }))
  const h = { 'x-waiter-token': 'idle' }
  const first = await call(`${router.url}/request-info`, { headers: { ...h, 'x-waiter-debug': 'true' } })
  const pid = first.json<{ pid: number }>().pid
  const id = first.headers['x-waiter-service-id'] as string
  const sandbox = first.headers['x-waiter-backend-directory'] as string
  // A suspension is the version's: it goes when the version is collected (else nothing could remove it).
  t.equal((await call(`${router.url}/apps/${id}/suspend`, { method: 'POST' })).status, 200)
  const rounds = async (): Promise<number> => (await call(`${router.url}/state/gc-services`)).json<{ state: { rounds: number } }>().state.rounds
  clock.jump(59_000)
  const after = (await rounds()) + 2
  await waitFor('two GC rounds after the jump', async () => ((await rounds()) >= after ? true : undefined))
  t.ok(await listed(router, id), 'idle for 59 s: still there')
  clock.jump(2_000)
  await waitFor('the idle version to disappear from /apps', async () => ((await listed(router, id)) === undefined ? true : undefined))
  await waitFor('its instance to be gone', () => (processAlive(pid) ? undefined : true), 5000)
  await waitFor('and its sandbox', () => (existsSync(sandbox) ? undefined : true), 5000)
  const collected = await waitFor('the collection on record', async () => {
    const gc = (await call(`${router.url}/state/gc-services`)).json<{ state: { 'recently-collected': { id: string; reason: string }[] } }>()
    return gc.state['recently-collected'][0]
  })
  t.match(collected, { id, reason: 'idle' })
  t.same(readdirSync(join(router.dataDir, 'suspended')).filter((f) => f.endsWith('.json')), [], 'its suspension went with it')
  const again = await call(`${router.url}/request-info`, { headers: h })
  t.equal(again.status, 200)
  t.equal(again.headers['x-maitre-cold-start'], 'true', 'the next request cold-starts it')
  t.ok(await listed(router, id), 'and it is listed again')
})

t.test('a request that arrives while its version is being collected starts it afresh, and it stays managed', async (t) => {
  const clock = new OffsetClock()
  // The instance ignores SIGTERM, so it takes the whole SIGTERM→SIGKILL delay to go.
  // 3 s: room for the checks below to see it still going on a loaded machine.
  const router = await startRouter(t, { ...FAST_GC, 'backend.local.minSigkillDelayMs': 3000 }, { clock })
  // exec: the app itself leads the process group and takes the SIGTERM (a shell would die of it).
  await createToken(router, 'idle', kitchenToken({ 'idle-timeout-mins': 1, cmd: `exec ${kitchenCmd('--ignore-sigterm')}` }))
  const h = { 'x-waiter-token': 'idle' }
  const first = await call(`${router.url}/request-info`, { headers: { ...h, 'x-waiter-debug': 'true' } })
  const oldPid = first.json<{ pid: number }>().pid
  const id = first.headers['x-waiter-service-id'] as string
  clock.jump(61_000)
  // The record goes first, the instance last: in between, the collection is under way.
  await waitFor('the collection to start', async () => ((await listed(router, id)) === undefined ? true : undefined))
  t.ok(processAlive(oldPid), 'the old instance is still being stopped')
  const late = await call(`${router.url}/request-info`, { headers: { ...h, 'x-waiter-debug': 'true' } })
  t.equal(late.status, 200, 'the request is served')
  t.not(late.json<{ pid: number }>().pid, oldPid, 'by a new instance: it did not wait out the old one’s grace')
  t.equal(late.headers['x-maitre-cold-start'], 'true')
  await waitFor('the old instance to go once its grace ran out', () => (processAlive(oldPid) ? undefined : true), 10_000)
  const summary = await listed(router, id)
  t.equal(summary?.['instance-counts']['healthy-instances'], 1, 'the version it started is recorded: /apps knows it')
  const scaling = await waitFor('the autoscaler to manage it', async () => (await call(`${router.url}/state/${id}`)).json<{ state: { autoscaler: unknown } }>().state.autoscaler ?? undefined)
  t.ok(scaling, 'the autoscaler decides for it')
  clock.jump(61_000)
  await waitFor('GC to collect it again in its turn', async () => ((await listed(router, id)) === undefined ? true : undefined))
  const newPid = late.json<{ pid: number }>().pid
  await waitFor('and its instance to go', () => (processAlive(newPid) ? undefined : true), 5000)
})

t.test('a token deleted, made again and deleted again: the stale period counts from the second delete, not the first', async (t) => {
  const clock = new OffsetClock()
  const router = await startRouter(t, FAST_GC, { clock })
  const rounds = async (): Promise<number> => (await call(`${router.url}/state/gc-services`)).json<{ state: { rounds: number } }>().state.rounds
  const gcRounds = async (n: number): Promise<void> => {
    const target = (await rounds()) + n
    await waitFor(`${n} GC rounds`, async () => ((await rounds()) >= target ? true : undefined))
  }
  const body = kitchenToken({ 'idle-timeout-mins': 600 })
  await createToken(router, 'tok', body)
  const h = { 'x-waiter-token': 'tok' }
  t.equal((await call(`${router.url}/request-info`, { headers: h })).status, 200)
  const id = (await call(`${router.url}/service-id`, { headers: h })).text
  t.equal((await call(`${router.url}/token?token=tok`, { method: 'DELETE' })).status, 200, 'soft-deleted')
  await gcRounds(3) // the GC sees it orphaned
  await createToken(router, 'tok', body) // by mistake: made again, the same version current again
  await gcRounds(3)
  clock.jump(60 * 60_000) // an hour of serving
  t.equal((await call(`${router.url}/request-info`, { headers: h })).status, 200)
  t.equal((await call(`${router.url}/token?token=tok`, { method: 'DELETE' })).status, 200, 'deleted again')
  await gcRounds(3)
  t.equal((await call(`${router.url}/apps/${id}`)).status, 200, 'kept through its fallback and stale periods from this delete')
})

