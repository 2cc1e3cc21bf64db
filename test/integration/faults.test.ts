/**
 * Faults and races against a real router with real instance processes: the promises maitre
 * must keep when instances flap, die or are killed under load.
 */
import t from 'tap'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { call, createToken, kitchenToken, startRouter, waitFor, type Router } from '../fixtures/router.ts'

interface AppInstance {
  readonly id: string
  readonly healthy: boolean
  readonly 'log-directory': string
}
interface AppView {
  readonly instances: { 'active-instances': AppInstance[]; 'killed-instances': AppInstance[] }
  readonly slots: { id: string; used: number; routable: boolean }[]
}

async function app(router: Router, serviceId: string): Promise<AppView> {
  return (await call(`${router.url}/apps/${serviceId}`)).json<AppView>()
}

t.test('an instance that fails its health checks mid-request finishes the request and is not the one killed', async (t) => {
  const router = await startRouter(t, { 'scaler.tickMs': 200, 'scaler.interKillMs': 200, 'scaler.burstHoldMs': 0 })
  await createToken(router, 'flappy', kitchenToken({
    'concurrency-level': 1,
    'min-instances': 1,
    'health-check-interval-secs': 5,
    'health-check-max-consecutive-failures': 10,
    'scale-down-factor': 0.9,
  }))
  const h = { 'x-waiter-token': 'flappy' }
  const serviceId = (await call(`${router.url}/service-id`, { headers: h })).text
  t.equal((await call(`${router.url}/status`, { headers: h })).status, 200, 'warm')
  await call(`${router.url}/apps/${serviceId}/override`, { method: 'POST', body: JSON.stringify({ 'min-instances': 2 }) })
  const two = await waitFor('two healthy instances', async () => {
    const live = (await app(router, serviceId)).instances['active-instances']
    return live.length === 2 && live.every((i) => i.healthy) ? live : undefined
  })

  // The oldest instance (load-balancing: oldest) takes a request that lasts until the test releases it.
  const long = call(`${router.url}/wait-file?name=release`, { headers: h })
  const busy = await waitFor('the long request to reach an instance', async () => {
    const used = (await app(router, serviceId)).slots.find((s) => s.used === 1)
    return used === undefined ? undefined : two.find((i) => i.id === used.id)
  })
  const idle = two.find((i) => i.id !== busy.id) as AppInstance
  writeFileSync(join(busy['log-directory'], 'fail-health-checks'), '')
  await waitFor('the busy instance to fail a health check', async () => {
    const view = await app(router, serviceId)
    return view.instances['active-instances'].find((i) => i.id === busy.id)?.healthy === false ? true : undefined
  }, 15_000)
  const during = await app(router, serviceId)
  t.match(during.slots.find((s) => s.id === busy.id), { used: 1, routable: false }, 'its request still counts, and it takes no new one')

  // Now the scaler wants one instance fewer, and Waiter's preference would take the unhealthy one.
  await call(`${router.url}/apps/${serviceId}/override`, { method: 'POST', body: JSON.stringify({ 'min-instances': 1 }) })
  const killed = await waitFor('one instance to be killed', async () => {
    const view = await app(router, serviceId)
    return view.instances['killed-instances'][0]
  }, 15_000)
  t.equal(killed.id, idle.id, 'the idle healthy instance was killed, not the busy unhealthy one')
  t.ok((await app(router, serviceId)).instances['active-instances'].some((i) => i.id === busy.id), 'the busy instance still runs')

  writeFileSync(join(busy['log-directory'], 'release'), '')
  const reply = await long
  t.equal(reply.status, 200, 'the long request completed')
  const log = readFileSync(join(busy['log-directory'], 'requests.log'), 'utf8').trim().split('\n')
  let open = 0
  let most = 0
  for (const line of log) {
    if (/ start /.test(line)) most = Math.max(most, ++open)
    if (/ (end|cut) /.test(line)) open -= 1
  }
  t.equal(most, 1, 'the instance never carried more than concurrency-level 1 request at once')
  t.notOk(log.some((l) => / cut /.test(l)), 'and no request was cut')
  t.ok(existsSync(busy['log-directory']), 'its sandbox is still there')
})
