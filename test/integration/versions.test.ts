import t from 'tap'
import { readdirSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { call, createToken, kitchenToken, ownDir, startRouter } from '../fixtures/router.ts'

type Info = { pid: number; headers: Record<string, string> }

t.test('a token edit makes a new version while the old one still answers by id', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'kitchen', kitchenToken())
  const debug = { 'x-waiter-token': 'kitchen', 'x-waiter-debug': 'true' }
  const v1 = await call(`${router.url}/request-info`, { headers: debug })
  const id1 = v1.headers['x-waiter-service-id'] as string

  // No fallback window here: the new version must answer at once (fallback has its own test).
  await createToken(router, 'kitchen', kitchenToken({ version: 'v2', 'fallback-period-secs': 0 }))
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

t.test('a router that stopped between forgetting a version’s record and its suspension drops that suspension at its next start: the version’s next life is not suspended', async (t) => {
  const dataDir = ownDir(t)
  const first = await startRouter(t, {}, { dataDir })
  await createToken(first, 'tok', kitchenToken())
  const id = (await call(`${first.url}/service-id`, { headers: { 'x-waiter-token': 'tok' } })).text
  t.equal((await call(`${first.url}/apps/${id}/suspend`, { method: 'POST' })).status, 200)
  t.equal((await call(`${first.url}/apps/${id}/override`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ 'min-instances': 2 }) })).status, 200)
  await first.app.stop()
  // What a crash between the collection's steps leaves: the record's file gone, the others not.
  rmSync(join(dataDir, 'services', `${id}.json`))
  t.ok(readdirSync(join(dataDir, 'suspended')).some((f) => f.startsWith(id)), 'the suspension was left behind')

  const second = await startRouter(t, {}, { dataDir })
  const reply = await call(`${second.url}/request-info`, { headers: { 'x-waiter-token': 'tok' } })
  t.equal(reply.status, 200, `the version, recorded afresh, serves: ${reply.text.slice(0, 120)}`)
  t.same((await call(`${second.url}/apps/${id}/override`)).json<{ overrides: unknown }>().overrides, {}, 'its old overrides are gone too')
})

t.test('a router restart keeps every token and version', async (t) => {
  const dataDir = ownDir(t)
  const first = await startRouter(t, {}, { dataDir })
  await createToken(first, 'kitchen', kitchenToken())
  await createToken(first, 'other', kitchenToken({ version: 'other' }))
  const id = (await call(`${first.url}/request-info`, { headers: { 'x-waiter-token': 'kitchen', 'x-waiter-debug': 'true' } })).headers['x-waiter-service-id']
  await first.app.stop()

  const second = await startRouter(t, {}, { dataDir })
  const tokens = await call(`${second.url}/tokens`)
  t.same(tokens.json<{ token: string }[]>().map((x) => x.token), ['kitchen', 'other'])
  const reply = await call(`${second.url}/request-info`, { headers: { 'x-waiter-token': 'kitchen', 'x-waiter-debug': 'true' } })
  t.equal(reply.status, 200)
  t.equal(reply.headers['x-waiter-service-id'], id, 'same id after restart')
  t.equal(reply.headers['x-maitre-cold-start'], 'true', 'instances do not outlive their router')
})

t.test('the /token API over HTTP: etags, If-Match, operation results, soft and hard delete', async (t) => {
  const router = await startRouter(t)
  const post = (body: Record<string, unknown>, headers: Record<string, string> = {}) =>
    call(`${router.url}/token`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) })
  const created = await post({ token: 'svc', ...kitchenToken() })
  t.equal(created.headers['x-waiter-operation-result'], 'token-created')
  const etag = created.headers['etag'] as string
  t.match(etag, /^E-[0-9a-f]{32}$/)
  t.equal((await post({ token: 'svc', ...kitchenToken() })).headers['x-waiter-operation-result'], 'token-no-op')
  const stale = await post({ token: 'svc', ...kitchenToken({ version: 'v2' }) }, { 'if-match': 'E-old' })
  t.equal(stale.status, 412)
  const updated = await post({ token: 'svc', ...kitchenToken({ version: 'v2' }) }, { 'if-match': etag })
  t.equal(updated.headers['x-waiter-operation-result'], 'token-updated')
  const got = await call(`${router.url}/token?token=svc&include=metadata`)
  t.equal(got.json<{ version: string }>().version, 'v2')
  t.equal(got.json<{ owner: string }>().owner, (await import('node:os')).userInfo().username, 'owner is the one user')
  t.match(got.json<{ 'last-update-time': string }>()['last-update-time'], /^\d{4}-\d\d-\d\dT/)
  t.equal(got.json<{ previous: { version: string } }>().previous.version, 'v1')
  t.equal(got.headers['etag'], updated.headers['etag'])
  const byHeader = await call(`${router.url}/token`, { headers: { 'x-waiter-token': 'svc' } })
  t.equal(byHeader.json<{ version: string }>().version, 'v2')

  const listed = await call(`${router.url}/tokens?owner=nobody`)
  t.same(listed.json(), [], 'owner filter')
  const soft = await call(`${router.url}/token?token=svc`, { method: 'DELETE' })
  t.same(soft.json(), { delete: 'svc', 'hard-delete': false, success: true })
  t.equal((await call(`${router.url}/token?token=svc`)).status, 404)
  t.equal((await call(`${router.url}/token?token=svc&include=deleted`)).status, 200)
  const current = (await call(`${router.url}/token?token=svc&include=deleted`)).headers['etag'] as string
  const noIfMatch = await call(`${router.url}/token?token=svc&hard-delete=true`, { method: 'DELETE' })
  t.equal(noIfMatch.status, 200, 'an already soft-deleted token may be hard-deleted without If-Match')
  t.equal((await call(`${router.url}/token?token=svc&include=deleted`)).status, 404)
  t.ok(current.startsWith('E-'))
  t.equal((await call(`${router.url}/token?token=svc`, { method: 'PUT' })).status, 405)
})
