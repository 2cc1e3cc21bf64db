/**
 * Adaptive keep-alive against a real router and real instances: a client that calls every 90 s,
 * on a clock the test jumps forward (instances start and probes run in real time).
 */
import t from 'tap'
import { call, createToken, kitchenToken, startRouter, waitFor, type Router } from '../fixtures/router.ts'
import { OffsetClock } from '../fixtures/offset-clock.ts'

const FAST = { 'scaler.tickMs': 250, 'scaler.gcIntervalMs': 100, 'scaler.keepAliveTickMs': 50 }

interface KeepAliveJson {
  readonly policy: string
  readonly basis: string
  readonly 'idle-times-seen': number
  readonly 'pre-warm-after-secs': number
  readonly 'keep-alive-secs': number
  readonly 'let-go-after-secs': number
  readonly 'next-action': { action: string; at: string } | null
  readonly 'pre-warms': number
  readonly 'pre-warm-hits': number
  readonly 'pre-warm-misses': number
}
interface AppJson {
  readonly status: string
  readonly 'keep-alive': KeepAliveJson
}

async function app(router: Router, id: string): Promise<AppJson | undefined> {
  const reply = await call(`${router.url}/apps/${id}`)
  return reply.status === 200 ? reply.json<AppJson>() : undefined
}

async function metric(router: Router, name: string): Promise<number> {
  const text = (await call(`${router.url}/metrics`)).text
  const line = text.split('\n').find((l) => l.startsWith(`${name} `))
  return Number(line?.split(' ')[1] ?? Number.NaN)
}

t.test('a client every 90 s: an adaptive version learns the period, sits at zero between calls once it has learned and is warm again for each', async (t) => {
  const clock = new OffsetClock()
  const router = await startRouter(t, FAST, { clock })
  // The fixed timeout it keeps before its first idle time (1 min) is shorter than the period: the
  // second call is cold; from then on it is kept for the histogram's range while it learns.
  await createToken(router, 'periodic', kitchenToken({ 'keep-alive': 'adaptive', 'idle-timeout-mins': 1 }))
  const h = { 'x-waiter-token': 'periodic' }
  const id = (await call(`${router.url}/service-id`, { headers: h })).text
  const status = async (): Promise<string | undefined> => (await app(router, id))?.status
  const cold: boolean[] = []
  for (let period = 1; period <= 7; period++) {
    const startedAt = clock.now()
    const reply = await call(`${router.url}/request-info`, { headers: h })
    t.equal(reply.status, 200)
    cold.push(reply.headers['x-maitre-cold-start'] === 'true')
    const keepAlive = await waitFor(`period ${period}: the keep-alive view`, async () => (await app(router, id))?.['keep-alive'])
    if (keepAlive.basis === 'learned') {
      // Let go 10 s after its call, started again before the next call is due.
      clock.jump(startedAt + 30_000 - clock.now())
      await waitFor(`period ${period}: the version let go after its call`, async () => ((await status()) === 'Inactive' ? true : undefined))
      const dormant = await app(router, id)
      t.equal(dormant?.['keep-alive']['next-action']?.action, 'pre-warm', `period ${period}: at zero, with a pre-warm planned`)
      clock.jump(startedAt + 80_000 - clock.now())
      await waitFor(`period ${period}: pre-warmed and healthy`, async () => ((await status()) === 'Running' ? true : undefined))
    } else if (keepAlive['idle-times-seen'] === 0) {
      // No idle time yet: the fixed 1-minute timeout lets it go before the next call.
      t.equal(keepAlive['keep-alive-secs'], 60, `period ${period}: its fixed timeout`)
      clock.jump(startedAt + 61_000 - clock.now())
      await waitFor(`period ${period}: collected after the fixed timeout`, async () => ((await status()) === 'Inactive' ? true : undefined))
    } else {
      // Seen again but still learning: kept for the histogram's range (the next call finds it warm).
      t.match(keepAlive, { basis: 'too-few-idle-times', 'keep-alive-secs': 4 * 3600 }, `period ${period}: kept four hours while it learns`)
    }
    clock.jump(startedAt + 90_000 - clock.now())
  }
  t.same(cold, [true, true, false, false, false, false, false], 'cold at the first call and at the second (a first call says nothing of the next), then warm at every call: kept while it learns (three idle times), pre-warmed since')
  // The loop left it pre-warmed for an eighth call, due now.
  const learned = (await app(router, id))?.['keep-alive']
  t.match(learned, { policy: 'adaptive', basis: 'learned', 'pre-warm-after-secs': 57, 'keep-alive-secs': 69, 'let-go-after-secs': 10, 'pre-warms': 4, 'pre-warm-hits': 3, 'pre-warm-misses': 0 }, 'let go 10 s after a call, pre-warmed at 57 s (60 less 5 %), kept to 126 s (120 plus 5 %)')
  t.equal(await metric(router, 'maitre_prewarms_total'), 4)
  t.equal(await metric(router, 'maitre_prewarm_hits_total'), 3)
  t.equal(await metric(router, 'maitre_prewarm_misses_total'), 0)

  // The eighth call does not come: the pre-warmed version is let go at the end of its keep-alive, a miss.
  clock.jump(40_000)
  await waitFor('let go unused: a miss', async () => ((await metric(router, 'maitre_prewarm_misses_total')) === 1 ? true : undefined))
  const after = await app(router, id)
  t.equal(after?.status, 'Inactive', 'at zero')
  t.equal(after?.['keep-alive']['next-action'], null, 'and nothing more is planned until a call comes')
  // An operator's delete of a version at zero forgets it: Waiter's answer for a service that does not run.
  const deleted = await call(`${router.url}/apps/${id}`, { method: 'DELETE' })
  t.equal(deleted.status, 404)
  t.match(deleted.json(), { success: false, result: 'no-such-service-exists' })
  t.equal((await call(`${router.url}/apps/${id}`)).status, 404, 'then unknown')
})

t.test('keep-alive: a fixed version shows its plan; an unknown policy is refused; an operator’s delete of a version at zero forgets it', async (t) => {
  const router = await startRouter(t, FAST)
  await createToken(router, 'fixed', kitchenToken({ 'idle-timeout-mins': 5 }))
  const h = { 'x-waiter-token': 'fixed' }
  t.equal((await call(`${router.url}/request-info`, { headers: h })).status, 200)
  const id = (await call(`${router.url}/service-id`, { headers: h })).text
  t.match((await app(router, id))?.['keep-alive'], { policy: 'fixed', basis: 'fixed', 'keep-alive-secs': 300, 'next-action': { action: 'let-go' } }, 'the router default, fixed: let go after idle-timeout-mins')
  const refused = await call(`${router.url}/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: 'bad', ...kitchenToken({ 'keep-alive': 'forever' }) }) })
  t.equal(refused.status, 400)
  t.match(refused.text, /keep-alive must be one of: 'fixed', 'adaptive'/)
  t.equal((await call(`${router.url}/apps/${id}`, { method: 'DELETE' })).status, 200)
  t.equal((await call(`${router.url}/apps/${id}`)).status, 404, 'a fixed version, deleted, is gone')
})

t.test('a request served by a fallback is the edited token’s: the previous version, stale, is not pre-warmed for it, and is forgotten', async (t) => {
  const clock = new OffsetClock()
  const router = await startRouter(t, FAST, { clock })
  await createToken(router, 'fb', kitchenToken({ 'keep-alive': 'adaptive', 'idle-timeout-mins': 1 }))
  const h = { 'x-waiter-token': 'fb' }
  const v1 = (await call(`${router.url}/service-id`, { headers: h })).text
  const status = async (id: string): Promise<string | undefined> => (await app(router, id))?.status
  let startedAt = clock.now()
  for (let period = 1; ; period++) {
    startedAt = clock.now()
    t.equal((await call(`${router.url}/request-info`, { headers: h })).status, 200)
    const keepAlive = await waitFor('the keep-alive view', async () => (await app(router, v1))?.['keep-alive'])
    if (keepAlive.basis === 'learned') break
    // Before its first idle time, the fixed 1-minute timeout; then kept while it learns.
    if (keepAlive['idle-times-seen'] === 0) {
      clock.jump(startedAt + 61_000 - clock.now())
      await waitFor(`period ${period}: collected`, async () => ((await status(v1)) === 'Inactive' ? true : undefined))
    }
    clock.jump(startedAt + 90_000 - clock.now())
  }
  // v1 runs, just called. The token moves on to v2, slow to start: meanwhile v1 serves it.
  await createToken(router, 'fb', kitchenToken({ 'keep-alive': 'fixed', 'idle-timeout-mins': 60, version: 'v2' }, '--start-up-sleep-ms 2000'))
  const served = await call(`${router.url}/request-info`, { headers: { ...h, 'x-waiter-debug': 'true' } })
  t.equal(served.headers['x-waiter-service-id'], v1, 'a request served by v1 through the fallback')
  const v2 = (await call(`${router.url}/service-id`, { headers: h })).text
  await waitFor('v2 healthy', async () => ((await status(v2)) === 'Running' ? true : undefined), 20_000)
  clock.jump(startedAt + 30_000 - clock.now())
  await waitFor('v1 let go', async () => ((await status(v1)) === 'Inactive' ? true : undefined))
  // Its pre-warm time: the token no longer runs it, so it is forgotten rather than started.
  clock.jump(startedAt + 85_000 - clock.now())
  const outcome = await waitFor('v1 started or forgotten', async () => {
    const reply = await call(`${router.url}/apps/${v1}`)
    return reply.status === 404 ? 'forgotten' : reply.json<AppJson>().status === 'Running' ? 'started' : undefined
  })
  t.equal(outcome, 'forgotten', 'not started again: its token moved on')
})
