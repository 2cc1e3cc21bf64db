/** A WebSocket call or a /waiter-ping to an adaptive version is an arrival for its keep-alive: a pre-warm it finds is a hit, not a miss. */
import t, { type Test } from 'tap'
import { WebSocket } from 'ws'
import { call, createToken, kitchenToken, startRouter, waitFor, type Router } from '../fixtures/router.ts'
import { OffsetClock } from '../fixtures/offset-clock.ts'

const FAST = { 'scaler.tickMs': 250, 'scaler.gcIntervalMs': 100, 'scaler.keepAliveTickMs': 50 }

async function app(router: Router, id: string): Promise<{ status: string; 'keep-alive': { basis: string; 'idle-times-seen': number } } | undefined> {
  const reply = await call(`${router.url}/apps/${id}`)
  return reply.status === 200 ? reply.json() : undefined
}
async function metric(router: Router, name: string): Promise<number> {
  const text = (await call(`${router.url}/metrics`)).text
  const line = text.split('\n').find((l) => l.startsWith(`${name} `))
  return Number(line?.split(' ')[1] ?? Number.NaN)
}
function wsCall(router: Router, headers: Record<string, string>): Promise<{ cold: boolean }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${router.url.replace('http://', 'ws://')}/`, [], { headers })
    let cold = false
    ws.once('upgrade', (res) => { cold = res.headers['x-maitre-cold-start'] === 'true' })
    ws.once('open', () => { ws.send('hi'); ws.once('message', () => { ws.close(1000, 'bye') }) })
    ws.once('close', () => resolve({ cold }))
    ws.once('error', reject)
  })
}

/** An adaptive version whose 90 s period is learned, let go and pre-warmed; the next call is due. */
async function prewarmedAndDue(t: Test): Promise<{ router: Router; clock: OffsetClock; id: string; h: Record<string, string>; status: () => Promise<string | undefined>; counts: () => Promise<{ hits: number; misses: number }> }> {
  const clock = new OffsetClock()
  const router = await startRouter(t, FAST, { clock })
  await createToken(router, 'periodic', kitchenToken({ 'keep-alive': 'adaptive', 'idle-timeout-mins': 1 }))
  const h = { 'x-waiter-token': 'periodic' }
  const id = (await call(`${router.url}/service-id`, { headers: h })).text
  const status = async (): Promise<string | undefined> => (await app(router, id))?.status
  let startedAt = clock.now()
  // HTTP calls every 90 s until the period is learned
  for (let period = 1; ; period++) {
    startedAt = clock.now()
    t.equal((await call(`${router.url}/request-info`, { headers: h })).status, 200)
    const ka = await waitFor('view', async () => (await app(router, id))?.['keep-alive'])
    if (ka.basis === 'learned') break
    // Before its first idle time, the fixed 1-minute timeout; then kept while it learns.
    if (ka['idle-times-seen'] === 0) {
      clock.jump(startedAt + 61_000 - clock.now())
      await waitFor(`period ${period}: collected`, async () => ((await status()) === 'Inactive' ? true : undefined))
    }
    clock.jump(startedAt + 90_000 - clock.now())
  }
  // learned; let go, pre-warmed
  clock.jump(startedAt + 30_000 - clock.now())
  await waitFor('let go', async () => ((await status()) === 'Inactive' ? true : undefined))
  clock.jump(startedAt + 80_000 - clock.now())
  await waitFor('pre-warmed', async () => ((await status()) === 'Running' ? true : undefined))
  clock.jump(startedAt + 90_000 - clock.now())
  const counts = async (): Promise<{ hits: number; misses: number }> => ({ hits: await metric(router, 'maitre_prewarm_hits_total'), misses: await metric(router, 'maitre_prewarm_misses_total') })
  return { router, clock, id, h, status, counts }
}

t.test('a pre-warmed version that serves a WebSocket counts a hit, not a miss', async (t) => {
  const { router, clock, h, status, counts } = await prewarmedAndDue(t)
  const before = await counts()
  const startedAt = clock.now()
  const ws1 = await wsCall(router, h)
  t.equal(ws1.cold, false, 'the WebSocket found the pre-warmed instance')
  // its let-go and the next period
  clock.jump(startedAt + 45_000 - clock.now())
  await waitFor('let go at last', async () => ((await status()) === 'Inactive' ? true : undefined), 20_000)
  const after = await counts()
  t.equal(after.hits - before.hits, 1, 'the pre-warm served the WebSocket: a hit')
  t.equal(after.misses - before.misses, 0, 'not a miss')
})

t.test('a pre-warmed version that answers a /waiter-ping counts a hit, not a miss', async (t) => {
  const { router, h, counts } = await prewarmedAndDue(t)
  const before = await counts()
  const ping = await call(`${router.url}/waiter-ping`, { headers: h })
  t.equal(ping.status, 200)
  const after = await waitFor('the ping judged', async () => {
    const now = await counts()
    return now.hits + now.misses > before.hits + before.misses ? now : undefined
  })
  t.equal(after.hits - before.hits, 1, 'the pre-warm answered the ping: a hit')
  t.equal(after.misses - before.misses, 0, 'not a miss')
})
