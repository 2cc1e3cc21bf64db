import t from 'tap'
import { call, createToken, kitchenToken, startRouter } from '../fixtures/router.ts'

type Info = { pid: number; headers: Record<string, string> }

t.test('a token edit makes a new version while the old one still answers by id', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'kitchen', kitchenToken())
  const debug = { 'x-waiter-token': 'kitchen', 'x-waiter-debug': 'true' }
  const v1 = await call(`${router.url}/request-info`, { headers: debug })
  const id1 = v1.headers['x-waiter-service-id'] as string

  await createToken(router, 'kitchen', kitchenToken({ version: 'v2' }))
  const v2 = await call(`${router.url}/request-info`, { headers: debug })
  const id2 = v2.headers['x-waiter-service-id'] as string
  t.not(id2, id1, 'the edit made a new service id')
  t.not(v2.json<Info>().pid, v1.json<Info>().pid, 'served by a new instance')

  const old = await call(`${router.url}/request-info`, { headers: { 'x-waiter-service-id': id1, 'x-waiter-debug': 'true' } })
  t.equal(old.status, 200)
  t.equal(old.headers['x-waiter-service-id'], id1)
  t.equal(old.json<Info>().pid, v1.json<Info>().pid, 'the old version’s instance still answers')

  const apps = await call(`${router.url}/apps`)
  const listed = apps.json<{ 'service-id': string; status: string; 'current-for-tokens': string[] }[]>()
  t.same(listed.map((a) => a['service-id']).sort(), [id1, id2].sort())
  t.same(listed.find((a) => a['service-id'] === id2)?.['current-for-tokens'], ['kitchen'])
  t.same(listed.find((a) => a['service-id'] === id1)?.['current-for-tokens'], [])

  const history = await call(`${router.url}/token-history?token=kitchen`)
  t.same(history.json<{ 'service-id': string }[]>().map((h) => h['service-id']), [id2, id1], 'history is newest first')
  const unknown = await call(`${router.url}/x`, { headers: { 'x-waiter-service-id': 'maitre-nope' } })
  t.equal(unknown.status, 404)
})

t.test('metadata-only edits keep the service id; /service-id tells it without starting anything', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'kitchen', kitchenToken())
  const before = await call(`${router.url}/service-id`, { headers: { 'x-waiter-token': 'kitchen' } })
  await createToken(router, 'kitchen', kitchenToken({ 'queue-timeout-ms': 1234, 'fallback-period-secs': 10 }))
  const after = await call(`${router.url}/service-id`, { headers: { 'x-waiter-token': 'kitchen' } })
  t.match(before.text, /^maitre-[0-9a-f]{32}$/)
  t.equal(after.text, before.text)
  const app = await call(`${router.url}/apps/${before.text}`)
  t.equal(app.json<{ status: string }>().status, 'Inactive', 'asking for the id started nothing')
})

t.test('a router restart keeps every token and version', async (t) => {
  const dataDir = t.testdir()
  const first = await startRouter(t, {}, dataDir)
  await createToken(first, 'kitchen', kitchenToken())
  await createToken(first, 'other', kitchenToken({ version: 'other' }))
  const id = (await call(`${first.url}/request-info`, { headers: { 'x-waiter-token': 'kitchen', 'x-waiter-debug': 'true' } })).headers['x-waiter-service-id']
  await first.app.stop()

  const second = await startRouter(t, {}, dataDir)
  const tokens = await call(`${second.url}/tokens`)
  t.same(tokens.json<{ token: string }[]>().map((x) => x.token), ['kitchen', 'other'])
  const reply = await call(`${second.url}/request-info`, { headers: { 'x-waiter-token': 'kitchen', 'x-waiter-debug': 'true' } })
  t.equal(reply.status, 200)
  t.equal(reply.headers['x-waiter-service-id'], id, 'same id after restart')
  t.equal(reply.headers['x-maitre-cold-start'], 'true', 'instances do not outlive their router')
})
