/** Waiter scales a stale version (its token moved on) with min-instances > 1 as if min-instances were 1, until it is collected. */
import t from 'tap'
import { call, createToken, kitchenToken, startRouter, waitFor, type Router } from '../fixtures/router.ts'
import { OffsetClock } from '../fixtures/offset-clock.ts'

type Counts = { 'healthy-instances': number; 'requested-instances': number }
async function counts(router: Router, id: string): Promise<Counts | undefined> {
  const reply = await call(`${router.url}/apps/${id}`)
  return reply.status === 200 ? reply.json<{ 'instance-counts': Counts }>()['instance-counts'] : undefined
}

t.test('a stale version holds one instance, not its min-instances, while its collection is due; the current one keeps its minimum', async (t) => {
  const clock = new OffsetClock()
  const router = await startRouter(t, { 'scaler.tickMs': 250 }, { clock })
  const desc = { 'min-instances': 3, 'scale-down-factor': 0.5, 'idle-timeout-mins': 60 }
  await createToken(router, 'svc', kitchenToken({ ...desc, version: 'v1' }))
  const h = { 'x-waiter-token': 'svc' }
  t.equal((await call(`${router.url}/request-info`, { headers: h })).status, 200)
  const v1 = (await call(`${router.url}/service-id`, { headers: h })).text
  await waitFor('v1: 3 healthy', async () => ((await counts(router, v1))?.['healthy-instances'] === 3 ? true : undefined), 20_000)
  await createToken(router, 'svc', kitchenToken({ ...desc, version: 'v2' }))
  t.equal((await call(`${router.url}/request-info`, { headers: h })).status, 200)
  const v2 = (await call(`${router.url}/service-id?latest=true`, { headers: h })).text
  t.not(v2, v1)
  await waitFor('v2: 3 healthy', async () => ((await counts(router, v2))?.['healthy-instances'] === 3 ? true : undefined), 20_000)
  // Past the fallback period (300 s), well before the stale collection (300 s + 15 min).
  clock.jump(6 * 60_000)
  await waitFor('v1 to come down to one instance', async () => ((await counts(router, v1))?.['requested-instances'] === 1 ? true : undefined), 15_000).catch(() => undefined)
  t.equal((await counts(router, v1))?.['requested-instances'], 1, 'the stale version: one instance')
  t.equal((await counts(router, v2))?.['requested-instances'], 3, 'the current version: its min-instances')
})
