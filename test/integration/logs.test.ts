import t from 'tap'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { PassThrough } from 'node:stream'
import { createLogger } from '../../src/log.ts'
import { call, createToken, kitchenToken, startRouter, waitFor, type Router, type Teardown } from '../fixtures/router.ts'

type Line = Record<string, unknown>

/** A router whose log lines are parsed into `lines` as they come. */
async function loggedRouter(t: Teardown, overrides: Record<string, unknown>): Promise<{ router: Router; lines: Line[] }> {
  const lines: Line[] = []
  const out = new PassThrough()
  out.on('data', (chunk: Buffer) => {
    for (const line of chunk.toString().split('\n')) if (line !== '') lines.push(JSON.parse(line) as Line)
  })
  return { router: await startRouter(t, overrides, { log: createLogger('info', out) }), lines }
}

t.test('JSON log lines: one access line per request, and lifecycle lines', async (t) => {
  const { router, lines } = await loggedRouter(t, { 'scaler.tickMs': 200, 'scaler.gcIntervalMs': 300 })
  await createToken(router, 'kitchen', kitchenToken())
  await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'kitchen', 'x-cid': 'log-test-1' } })
  await waitFor('the access line', () => lines.find((l) => l['cid'] === 'log-test-1' && l['msg'] === 'request completed'))
  const access = lines.find((l) => l['cid'] === 'log-test-1' && l['msg'] === 'request completed') as Line
  t.match(access, { level: 30, token: 'kitchen', status: 200, coldStart: true, method: 'GET', path: '/request-info' })
  t.match(access['service'], /^maitre-/)
  t.match(access['instance'], /^maitre-.*\.[0-9a-f]+$/)
  for (const field of ['queueMs', 'backendMs', 'totalMs', 'time', 'pid']) t.type(access[field], 'number', field)
  const id = access['service'] as string
  // Scaling, ejection, kill and GC each leave their line.
  await call(`${router.url}/apps/${id}/override`, { method: 'POST', body: JSON.stringify({ 'min-instances': 2 }) })
  await waitFor('a scaling decision', () => lines.find((l) => l['msg'] === 'scaling decision'))
  const instances = await waitFor('two healthy instances', async () => {
    const active = (await call(`${router.url}/apps/${id}`)).json<{ instances: { 'active-instances': { id: string; healthy: boolean }[] } }>().instances['active-instances']
    return active.filter((i) => i.healthy).length === 2 ? active : undefined
  })
  // A 503 ejects an instance only while another can take its requests.
  await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'kitchen', 'x-kitchen-act-busy': 'true' } })
  await call(`${router.url}/apps/${id}/instance/${instances[0]?.id ?? ''}/kill`, { method: 'POST' })
  await createToken(router, 'kitchen', kitchenToken({ version: 'v2', 'fallback-period-secs': 0, 'stale-timeout-mins': 0 }))
  await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'kitchen' } })
  await waitFor('the old version to be collected', () => lines.find((l) => l['msg'] === 'service garbage-collected'), 10000)
  const messages = new Set(lines.map((l) => l['msg']))
  for (const msg of ['maitre listening', 'cold start: creating service', 'instance started', 'instance healthy', 'instance ejected', 'scaling decision', 'instance killed', 'instance exited', 'service garbage-collected']) {
    t.ok(messages.has(msg), `logs "${msg}"`)
  }
  t.match(lines.find((l) => l['msg'] === 'service garbage-collected'), { service: id, reason: 'stale' })
  const state = (await call(`${router.url}/state/${id}`))
  t.equal(state.status, 404, 'a collected version has no state')
  const current = (await call(`${router.url}/service-id`, { headers: { 'x-waiter-token': 'kitchen' } })).text
  const tracker = (await call(`${router.url}/state/instance-tracker`)).json<{ state: Record<string, { load: { inFlight: number } }> }>()
  t.same(Object.keys(tracker.state), [current], '/state/instance-tracker lists the running version, not the collected one')
  t.equal(tracker.state[current]?.load.inFlight, 0, 'with its load: nothing in flight')
})

t.test('the access line: 499 for a client that went away; log.access false turns it off', async (t) => {
  const setups = [{ access: true, cid: 'gone-1' }, { access: false, cid: 'quiet-1' }]
  for (const { access, cid } of setups) {
    const { router, lines } = await loggedRouter(t, { 'log.access': access })
    await createToken(router, 'kitchen', kitchenToken())
    const warm = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'kitchen', 'x-cid': `${cid}-warm`, 'x-waiter-debug': 'true' } })
    const requestsLog = join(warm.headers['x-waiter-backend-directory'] as string, 'requests.log')
    const aborter = new AbortController()
    const gone = call(`${router.url}/sleep?sleep-ms=5000`, { headers: { 'x-waiter-token': 'kitchen', 'x-cid': cid }, signal: aborter.signal })
    // The client gives up once the app has the request, as the app's own log shows.
    await waitFor('the app to start the slow request', () => (readFileSync(requestsLog, 'utf8').includes(`start ${cid} /sleep`) ? true : undefined))
    aborter.abort()
    await t.rejects(gone, 'the client gives up')
    if (access) {
      const line = await waitFor('the access line of the abandoned request', () => lines.find((l) => l['cid'] === cid && l['msg'] === 'request completed'))
      t.equal(line['status'], 499, 'logged as 499, nginx’s client-closed-request')
      t.ok(lines.some((l) => l['cid'] === `${cid}-warm` && l['status'] === 200), 'the ordinary request has its line')
    } else {
      // The line would be written as the slot is released: wait for that, then look.
      await waitFor('the abandoned request to release its slot', async () => {
        const tracker = (await call(`${router.url}/state/instance-tracker`)).json<{ state: Record<string, { load: { inFlight: number } }> }>()
        const loads = Object.values(tracker.state)
        return loads.length > 0 && loads.every((s) => s.load.inFlight === 0) ? true : undefined
      })
      t.notOk(lines.some((l) => l['msg'] === 'request completed'), 'no access lines')
      t.ok(lines.some((l) => l['msg'] === 'instance healthy'), 'lifecycle lines still come')
    }
  }
})
