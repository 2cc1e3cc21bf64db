/**
 * Faults and races against a real router with real instance processes: the promises maitre
 * must keep when instances flap, die or are killed under load.
 */
import t from 'tap'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { PassThrough } from 'node:stream'
import { createLogger } from '../../src/log.ts'
import { call, createToken, kitchenToken, startKubeRouter, startRouter, waitFor, type Router } from '../fixtures/router.ts'

interface AppInstance {
  readonly id: string
  readonly healthy: boolean
  readonly 'log-directory': string
  readonly 'started-at': string
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

t.test('a request an instance refused to connect goes to another instance, whatever its method', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'pair', kitchenToken({ 'min-instances': 2, 'concurrency-level': 4, 'load-balancing': 'oldest' }))
  const h = { 'x-waiter-token': 'pair' }
  const serviceId = (await call(`${router.url}/service-id`, { headers: h })).text
  t.equal((await call(`${router.url}/status`, { headers: h })).status, 200)
  const two = await waitFor('two healthy instances', async () => {
    const live = (await app(router, serviceId)).instances['active-instances']
    return live.length === 2 && live.every((i) => i.healthy) ? live : undefined
  })
  // The oldest instance (the one requests go to first) stops listening but stays healthy until its next check.
  const deaf = await call(`${router.url}/stop-listening`, { headers: { ...h, 'x-waiter-debug': 'true' } })
  const deafId = deaf.headers['x-waiter-backend-id'] as string
  t.ok(two.some((i) => i.id === deafId))
  const replies = []
  // A request with a body first: it is the one that meets the deaf instance (the others find it
  // ejected), and its body must not be taken from the client before a connection is there.
  for (const method of ['POST', 'GET', 'PUT', 'DELETE', 'PATCH']) {
    replies.push(await call(`${router.url}/request-info`, { method, headers: { ...h, 'x-waiter-debug': 'true', 'content-type': 'text/plain' }, body: method === 'GET' || method === 'DELETE' ? null : `a ${method} body` }))
  }
  t.same(replies.map((r) => r.status), [200, 200, 200, 200, 200], 'every request was served, bodies included')
  t.ok(replies.every((r) => r.headers['x-waiter-backend-id'] !== deafId), 'by the instance that listens')
  t.same(replies.map((r) => r.json<{ body: string }>().body), ['a POST body', '', 'a PUT body', '', 'a PATCH body'], 'with their bodies intact')
  const slots = (await app(router, serviceId)).slots
  t.ok((slots.find((s) => s.id === deafId) as unknown as { ejectedUntil: number }).ejectedUntil > Date.now(), 'the deaf instance is ejected')
})

t.test('SIGKILL of an instance under load fails only the requests it was carrying', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'herd', kitchenToken({ 'min-instances': 3, 'concurrency-level': 4 }))
  const h = { 'x-waiter-token': 'herd' }
  const serviceId = (await call(`${router.url}/service-id`, { headers: h })).text
  t.equal((await call(`${router.url}/status`, { headers: h })).status, 200)
  const three = await waitFor('three healthy instances', async () => {
    const live = (await app(router, serviceId)).instances['active-instances']
    return live.length === 3 && live.every((i) => i.healthy) ? live : undefined
  })
  // With 'oldest' load balancing the oldest instance is always the busiest: kill it mid-load.
  const victim = [...three].sort((x, y) => Date.parse(x['started-at']) - Date.parse(y['started-at']))[0] as AppInstance
  const victimPid = Number((readFileSync(join(victim['log-directory'], 'maitre-instance.json'), 'utf8').match(/"pid":(\d+)/) ?? [])[1])
  let stop = false
  let served = 0
  const failures: { cid: string; reason: string }[] = []
  const send = async (cid: string, sleepMs: number): Promise<void> => {
    const reply = await call(`${router.url}/sleep?sleep-ms=${sleepMs}`, { headers: { ...h, 'x-cid': cid } }).catch((err: Error) => ({ status: 0, text: err.message }))
    if (reply.status === 200) served += 1
    else failures.push({ cid, reason: `${reply.status} ${/"message": "([^"]*)"/.exec(reply.text)?.[1] ?? reply.text.slice(0, 200)}` })
  }
  // Two long requests land on the victim first (the oldest, with free slots): it is surely
  // carrying them when it dies.
  const long = ['long-0', 'long-1'].map((cid) => send(cid, 10_000))
  await waitFor('the victim carries both long requests', () => {
    const log = existsSync(join(victim['log-directory'], 'requests.log')) ? readFileSync(join(victim['log-directory'], 'requests.log'), 'utf8') : ''
    return log.includes('start long-0') && log.includes('start long-1') ? true : undefined
  })
  const workers = Array.from({ length: 8 }, async (_, worker) => {
    for (let n = 0; !stop; n++) await send(`herd-${worker}-${n}`, 30)
  })
  await waitFor('the load to reach the victim', () => (existsSync(join(victim['log-directory'], 'requests.log')) && served > 50 ? true : undefined))
  process.kill(-victimPid, 'SIGKILL')
  const before = served
  await waitFor('the load to go on past the kill', () => (served > before + 100 ? true : undefined), 15_000)
  stop = true
  await Promise.all([...workers, ...long])
  // Each app's own log: what it began and finished, by cid.
  const lines = (i: AppInstance): string[] => (existsSync(join(i['log-directory'], 'requests.log')) ? readFileSync(join(i['log-directory'], 'requests.log'), 'utf8').trim().split('\n') : [])
  const cidsOf = (ls: string[], what: string): Set<string> => new Set(ls.filter((l) => l.split(' ')[1] === what).map((l) => l.split(' ')[2] as string))
  const victimLog = lines(victim)
  // Answered there: the app had begun to hand its response to the socket (a kill may still cut
  // it, or come before its end line, so these may have failed or succeeded).
  const answeredThere = cidsOf(victimLog, 'respond')
  const carried = [...cidsOf(victimLog, 'start')].filter((cid) => !answeredThere.has(cid))
  const startedElsewhere = new Set(three.filter((i) => i.id !== victim.id).flatMap((i) => [...cidsOf(lines(i), 'start')]))
  const failed = failures.map((f) => f.cid)
  t.ok(carried.includes('long-0') && carried.includes('long-1') && carried.length <= 4, `the victim was carrying ${carried.length} requests when it died (its own log: ${carried.join(', ')}), the two long ones among them, within its concurrency-level`)
  t.same(failed.filter((cid) => startedElsewhere.has(cid)), [], 'no request another instance handled failed')
  t.same(carried.filter((cid) => !failed.includes(cid)), [], 'every request the victim carried failed (none was retried after reaching it)')
  t.ok(failed.length <= 4, `failures (${failed.length}) are the requests it carried, and at most those sent to it and not yet read: ${failures.map((f) => `${f.cid} ${f.reason}`).join('; ')}`)
  t.ok(failures.every((f) => f.reason.startsWith('502') && f.reason.includes('Request to service backend failed')), 'each a 502 for a request cut mid-way')
})

t.test('a cluster API that keeps failing: a typed 503 within the queue timeout, its own text not shown, the cid logged', async (t) => {
  const lines: Record<string, unknown>[] = []
  const out = new PassThrough()
  out.on('data', (chunk: Buffer) => {
    for (const line of chunk.toString().split('\n')) if (line !== '') lines.push(JSON.parse(line) as Record<string, unknown>)
  })
  const router = await startKubeRouter(t, {}, {}, { log: createLogger('info', out) })
  router.sim.failNext(Infinity, ['replicasets', 'create'])
  await createToken(router, 'unlucky', kitchenToken())
  const started = Date.now()
  const reply = await call(`${router.url}/x`, { headers: { 'x-waiter-token': 'unlucky', 'x-cid': 'k8s-down', 'x-waiter-queue-timeout': '20000' } })
  t.equal(reply.status, 503)
  const err = reply.json<{ 'waiter-error': { code: string; message: string } }>()['waiter-error']
  t.equal(err.code, 'MAITRE_BACKEND')
  t.equal(err.message, 'The kubernetes backend could not create the service; try again')
  t.notMatch(reply.text, /injected fault|InternalError/, 'nothing of the API server’s own answer')
  t.equal(reply.headers['retry-after'], '1')
  t.ok(Date.now() - started < 20_000, 'within the queue timeout')
  t.match(lines.find((l) => l['cid'] === 'k8s-down' && l['msg'] === 'request failed'), { code: 'MAITRE_BACKEND', status: 503 }, 'the 5xx is logged with its cid')

  router.sim.failNext(0, ['replicasets', 'create'])
  const later = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'unlucky', 'x-waiter-queue-timeout': '20000' } })
  t.equal(later.status, 200, 'once the API server recovers, the next request starts the service')
})

t.test('a cold start waits no longer than the queue timeout while the cluster API hangs', async (t) => {
  const router = await startKubeRouter(t, { 'backend.kubernetes.requestTimeoutMs': 60_000 })
  router.sim.hangNext(Infinity, ['replicasets', 'create'])
  await createToken(router, 'stuck', kitchenToken())
  const started = Date.now()
  const reply = await call(`${router.url}/x`, { headers: { 'x-waiter-token': 'stuck', 'x-waiter-queue-timeout': '1000' } })
  const took = Date.now() - started
  t.equal(reply.status, 503)
  t.equal(reply.json<{ 'waiter-error': { code: string } }>()['waiter-error'].code, 'MAITRE_QUEUE_TIMEOUT')
  t.ok(took < 10_000, `answered after ${took} ms for a 1 s queue timeout, not at the API server call's 60 s timeout`)
  router.sim.hangNext(0, ['replicasets', 'create'])
})
