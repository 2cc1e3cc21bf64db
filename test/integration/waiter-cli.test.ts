/**
 * Waiter's own CLI (twosigma/waiter cli/, 1.5.8-dev) against a router, one subcommand at a time:
 * each test sends what the CLI sends (read from its source: token_post.py, querying.py and
 * subcommands/) and checks what the CLI reads from the answer.
 */
import t from 'tap'
import { call, createToken, kitchenToken, ownDir, startRouter, waitFor, type Reply, type Router } from '../fixtures/router.ts'

type Service = {
  'service-id': string
  status: string
  url: string
  'instance-counts': { 'healthy-instances': number; 'unhealthy-instances': number }
  'resource-usage': { cpus: number; mem: number }
  'effective-parameters': Record<string, unknown>
  'service-description': Record<string, unknown>
  'source-tokens': { token: string; version: string }[][]
  'current-for-tokens': string[]
  'last-request-time': string | null
}

const json = { 'content-type': 'application/json' }

/** token_post.py create_or_update: GET /token?token=N for the etag, then POST with If-Match: etag or "". */
async function cliPost(router: Router, name: string, fields: Record<string, unknown>, admin = false): Promise<Reply> {
  const existing = await call(`${router.url}/token?token=${name}`)
  const etag = existing.status === 200 ? (existing.headers['etag'] as string) : ''
  return call(`${router.url}/token?token=${name}${admin ? '&update-mode=admin' : ''}`, { method: 'POST', headers: { ...json, 'if-match': etag }, body: JSON.stringify(fields) })
}

/** querying.py get_services_using_token. */
async function servicesUsing(router: Router, token: string): Promise<Service[]> {
  const reply = await call(`${router.url}/apps?effective-parameters=true&token=${token}`)
  return reply.json<Service[]>()
}

t.test('`waiter create` and `update`: a new token with If-Match "" (also soft-deleted), 412 against a live one, the message the CLI prints', async (t) => {
  const router = await startRouter(t)
  const created = await cliPost(router, 'fresh', kitchenToken())
  t.equal(created.status, 200)
  t.match(created.json(), { message: /Successfully created fresh/ }, 'process_post_result prints "message"')
  const raced = await call(`${router.url}/token?token=fresh`, { method: 'POST', headers: { ...json, 'if-match': '' }, body: JSON.stringify(kitchenToken({ version: 'raced' })) })
  t.equal(raced.status, 412, 'a create that lost the race to another create is refused, not an overwrite')
  t.match(raced.json(), { 'waiter-error': { message: 'Cannot modify stale token' } })
  const updated = await cliPost(router, 'fresh', { ...(await call(`${router.url}/token?token=fresh`)).json<Record<string, unknown>>(), version: 'v2' })
  t.equal(updated.status, 200)
  t.match(updated.json(), { message: /Successfully updated fresh/ })
  t.equal((await call(`${router.url}/token?token=fresh`, { method: 'DELETE', headers: { 'x-waiter-token': 'fresh' } })).status, 200, 'soft delete')
  const again = await call(`${router.url}/token?token=fresh`, { method: 'POST', headers: { ...json, 'if-match': '' }, body: JSON.stringify(kitchenToken({ version: 'v3' })) })
  t.equal(again.status, 200, 'a soft-deleted token is created anew with If-Match ""')
})

t.test('`waiter show` and `waiter tokens`: the token with its metadata, its services as the CLI tabulates them, the owner’s token list', async (t) => {
  const router = await startRouter(t, { 'auth.user': 'alice', cluster: 'east' })
  t.equal((await cliPost(router, 'shown', kitchenToken({ 'min-instances': 2, 'max-instances': 2 }))).status, 200)
  t.equal((await cliPost(router, 'pinned', kitchenToken({ cluster: 'west' }))).status, 200, 'a token may name its cluster')
  const token = await call(`${router.url}/token?token=shown&include=metadata`)
  const etag = token.headers['etag'] as string
  t.match(token.json(), { owner: 'alice', 'last-update-user': 'alice', cluster: 'east', 'last-update-time': String }, 'what tabulate_token and _get_latest_cluster read')
  t.ok(Number.isFinite(Date.parse(token.json<{ 'last-update-time': string }>()['last-update-time'])), 'last-update-time is a timestamp the CLI formats')
  t.equal((await call(`${router.url}/token?token=pinned&include=metadata`)).json<{ cluster: string }>().cluster, 'west')
  const settings = (await call(`${router.url}/settings`)).json<{ 'cluster-config': { name: string } }>()
  t.equal(settings['cluster-config'].name, 'east', 'the name the CLI matches a token’s cluster against')

  t.same(await servicesUsing(router, 'shown'), [], 'a token whose version never ran has no services')
  t.equal((await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'shown' } })).status, 200)
  await waitFor('both instances healthy', async () => ((await servicesUsing(router, 'shown'))[0]?.['instance-counts']['healthy-instances'] === 2 ? true : undefined))
  const [service] = await servicesUsing(router, 'shown')
  t.match(service, {
    status: 'Running',
    'instance-counts': { 'healthy-instances': 2, 'unhealthy-instances': 0 },
    'resource-usage': { cpus: 0.2, mem: 512 },
    'effective-parameters': { 'run-as-user': 'alice', cpus: 0.1, mem: 256, version: 'v1' },
    'last-request-time': String,
  }, 'each column of tabulate_token_services')
  const byId = (await call(`${router.url}/apps/${service?.['service-id']}?effective-parameters=True`)).json<Service>()
  t.match(byId['effective-parameters'], { 'run-as-user': 'alice', version: 'v1' }, 'get_service sends Python’s True')
  t.ok(service?.['source-tokens'].some((set) => set.some((s) => s.token === 'shown' && s.version === etag)), 'is_service_current finds the token at its current etag')

  type Listed = { token: string; owner: string; 'last-update-time': string; maintenance: boolean; etag: string }
  const listed = (await call(`${router.url}/tokens?owner=alice&include=metadata`)).json<Listed[]>()
  t.same(listed.map((e) => e.token).sort(), ['pinned', 'shown'])
  for (const e of listed) {
    t.equal(e.owner, 'alice', `${e.token}: Owner column`)
    t.ok(Number.isFinite(Date.parse(e['last-update-time'])), `${e.token}: Updated column`)
    t.equal(e.maintenance, false, `${e.token}: a flag, not a dict`)
  }
  t.same((await call(`${router.url}/tokens?owner=bob&include=metadata`)).json(), [], 'another owner has none')
})

t.test('`waiter kill` and `waiter delete`: only versions that run are services; kill waits for the routers; delete then goes through; after a restart nothing is left to kill', async (t) => {
  const dataDir = ownDir(t)
  const first = await startRouter(t, {}, { dataDir })
  await cliPost(first, 'brief', kitchenToken())
  const idOnly = (await call(`${first.url}/service-id`, { headers: { 'x-waiter-token': 'brief' } })).text
  t.same(await servicesUsing(first, 'brief'), [], 'asking for the id records the version but runs nothing: no service to kill (as Waiter, whose /apps lists what its scheduler knows)')
  t.equal((await call(`${first.url}/apps/${idOnly}`)).json<{ status: string }>().status, 'Inactive', '/apps/{id} still answers for it')

  t.equal((await call(`${first.url}/request-info`, { headers: { 'x-waiter-token': 'brief' } })).status, 200)
  const running = await servicesUsing(first, 'brief')
  t.same(running.map((s) => s['service-id']), [idOnly], 'once it runs, it is the token’s service')
  t.equal(running[0]?.status, 'Running')

  // kill.py: DELETE /apps/{id}?timeout=<seconds * 1000>; --timeout 7200 is two hours.
  const killed = await call(`${first.url}/apps/${idOnly}?timeout=7200000`, { method: 'DELETE' })
  t.equal(killed.status, 200, 'a two-hour timeout is a valid timeout')
  t.match(killed.json(), { success: true, 'routers-agree': true })
  t.same(await servicesUsing(first, 'brief'), [], 'killed: gone from the token’s services')

  // Run it again, then restart the router: the version is recorded, not running.
  t.equal((await call(`${first.url}/request-info`, { headers: { 'x-waiter-token': 'brief' } })).status, 200)
  await first.app.stop()
  const second = await startRouter(t, {}, { dataDir })
  t.same(await servicesUsing(second, 'brief'), [], 'after a restart, a version that does not run is no service (`waiter kill` says there is none)')
  const token = await call(`${second.url}/token?token=brief`)
  const deleted = await call(`${second.url}/token`, { method: 'DELETE', headers: { 'if-match': token.headers['etag'] as string, 'x-waiter-token': 'brief' } })
  t.equal(deleted.status, 200, '`waiter delete` goes through')
})

t.test('DELETE /apps/{id}?timeout= takes what Waiter takes: digits, up to a Java int of milliseconds; anything else is a 400 that stops nothing', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'kitchen', kitchenToken())
  t.equal((await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'kitchen' } })).status, 200)
  const id = (await call(`${router.url}/service-id`, { headers: { 'x-waiter-token': 'kitchen' } })).text
  for (const bad of ['', '1e3', '-1', '+5', '1.5', ' 5', '2147483648', '99999999999']) {
    const reply = await call(`${router.url}/apps/${id}?timeout=${encodeURIComponent(bad)}`, { method: 'DELETE' })
    t.equal(reply.status, 400, `timeout=${JSON.stringify(bad)}`)
    t.match(reply.json(), { 'waiter-error': { details: { field: 'timeout' } } })
  }
  t.equal((await servicesUsing(router, 'kitchen')).length, 1, 'nothing was stopped')
  t.match((await call(`${router.url}/apps/${id}?timeout=2147483647`, { method: 'DELETE' })).json(), { result: 'deleted', 'routers-agree': true }, 'the largest Java int is taken')
})

t.test('/apps?token= and ?token-version= take globs, as Waiter’s do', async (t) => {
  const router = await startRouter(t)
  const a = await createToken(router, 'team-alpha', kitchenToken())
  await createToken(router, 'team-beta', kitchenToken({ version: 'beta' }))
  await createToken(router, 'other', kitchenToken({ version: 'other' }))
  for (const token of ['team-alpha', 'team-beta', 'other']) t.equal((await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': token } })).status, 200)
  const ids = async (query: string): Promise<string[]> => (await call(`${router.url}/apps?${query}`)).json<Service[]>().map((s) => s['source-tokens'][0]?.[0]?.token as string).sort()
  t.same(await ids('token=team-*'), ['team-alpha', 'team-beta'])
  t.same(await ids('token=*-beta'), ['team-beta'])
  t.same(await ids('token=team-alpha'), ['team-alpha'], 'no star: exact')
  const etag = a.headers['etag'] as string
  t.same(await ids(`token-version=${etag}`), ['team-alpha'])
  t.same(await ids(`token-version=${etag.slice(0, 6)}*`), ['team-alpha'])
  t.same(await ids('token-version=E-*'), ['other', 'team-alpha', 'team-beta'])
  t.equal((await call(`${router.url}/apps?token=${'*'.repeat(20)}`)).status, 400, 'a glob has bounds')
})

t.test('current-for-tokens counts a token combination only while every token in it is current, as Waiter does', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'base', kitchenToken())
  await createToken(router, 'extra', { env: { FLAVOUR: 'mint' } })
  const h = { 'x-waiter-token': 'base,extra' }
  t.equal((await call(`${router.url}/request-info`, { headers: h })).status, 200)
  const joined = async (): Promise<Service> => (await servicesUsing(router, 'extra'))[0] as Service
  t.same((await joined())['current-for-tokens'], ['base', 'extra'])
  await createToken(router, 'extra', { env: { FLAVOUR: 'lime' } })
  t.same((await joined())['current-for-tokens'], [], 'extra changed: base,extra leads elsewhere now, so base is not current here either')
})

t.test('x-waiter-debug is on whenever the header is there (Waiter’s rule), on the data path, on errors and on pings; the *-ns headers are nanoseconds', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'kitchen', kitchenToken())
  const id = (await call(`${router.url}/service-id`, { headers: { 'x-waiter-token': 'kitchen' } })).text
  const values = ['true', 'yes', 'false', '']
  for (const value of values) {
    const d = { 'x-waiter-token': 'kitchen', 'x-waiter-debug': value }
    const proxied = await call(`${router.url}/request-info`, { headers: d })
    t.equal(proxied.headers['x-waiter-service-id'], id, `data path, x-waiter-debug: ${JSON.stringify(value)}`)
    const ping = await call(`${router.url}/waiter-ping`, { headers: d })
    t.equal(ping.headers['x-waiter-service-id'], id, `ping, x-waiter-debug: ${JSON.stringify(value)}`)
  }
  const plain = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'kitchen' } })
  t.equal(plain.headers['x-waiter-service-id'], undefined, 'without the header, no debug headers')

  const slept = await call(`${router.url}/sleep?sleep-ms=30`, { headers: { 'x-waiter-token': 'kitchen', 'x-waiter-debug': 'true' } })
  const responseNs = BigInt(slept.headers['x-waiter-backend-response-ns'] as string)
  t.ok(responseNs >= 30_000_000n, `the instance’s 30 ms are in it (${responseNs} ns)`)
  t.ok(responseNs < 30_000_000_000n, 'and it is nanoseconds, not a millisecond count scaled up by a wrong factor')
  t.ok(BigInt(slept.headers['x-waiter-get-available-instance-ns'] as string) > 0n, 'getting an instance took some nanoseconds')
  // A millisecond clock scaled to ns would give whole multiples of 10^6 every time.
  const samples: bigint[] = []
  for (let i = 0; i < 5; i++) {
    const r = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'kitchen', 'x-waiter-debug': 'true' } })
    samples.push(BigInt(r.headers['x-waiter-backend-response-ns'] as string), BigInt(r.headers['x-waiter-get-available-instance-ns'] as string))
  }
  t.ok(samples.some((ns) => ns % 1_000_000n !== 0n), `finer than a millisecond: ${samples.join(', ')}`)

  t.equal((await call(`${router.url}/apps/${id}/suspend`, { method: 'POST' })).status, 200)
  for (const value of values) {
    const refused = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'kitchen', 'x-waiter-debug': value } })
    t.equal(refused.status, 503)
    t.equal(refused.headers['x-waiter-service-id'], id, `maitre’s own error about the version, x-waiter-debug: ${JSON.stringify(value)}`)
  }
  t.equal((await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'kitchen' } })).headers['x-waiter-service-id'], undefined, 'and not without it')
})

t.test('`waiter ping` is a request to the version (Waiter’s goes through its proxy): `show` then has a last request; a ping of a token in maintenance names the token', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'pinged', kitchenToken())
  const ping = await call(`${router.url}/waiter-ping`, { headers: { 'x-waiter-token': 'pinged', 'x-waiter-fallback-period-secs': '0' } })
  t.match(ping.json(), { 'ping-response': { result: 'received-response', status: 200 } })
  const [service] = await servicesUsing(router, 'pinged')
  t.ok(service?.['last-request-time'] !== null && Number.isFinite(Date.parse(service?.['last-request-time'] as string)), 'last-request-time is set, not n/a')
  t.match(service, { 'request-metrics': { total: 1 } })
  await createToken(router, 'down', kitchenToken({ maintenance: { message: 'back soon' } }))
  const down = await call(`${router.url}/waiter-ping`, { headers: { 'x-waiter-token': 'down' } })
  t.equal(down.status, 200, 'Waiter: a 200, whose ping-response is the token’s 503')
  const pinged = down.json<{ 'ping-response': { status: number; body: string } }>()['ping-response']
  t.equal(pinged.status, 503)
  t.match(JSON.parse(pinged.body), { 'waiter-error': { 'error-class': 'waiter.Maintenance', 'waiter-token': 'down' } })
})

t.test('token writes and lists refuse what Waiter refuses: an unknown update-mode, more filter values than the bound', async (t) => {
  const router = await startRouter(t)
  const odd = await call(`${router.url}/token?token=odd&update-mode=foo`, { method: 'POST', headers: { ...json, 'if-match': '' }, body: JSON.stringify(kitchenToken()) })
  t.equal(odd.status, 400)
  t.match(odd.json(), { 'waiter-error': { details: { field: 'update-mode' }, message: /Invalid update-mode/ } })
  t.equal((await call(`${router.url}/token?token=odd`)).status, 404, 'and nothing was written')
  const many = Array.from({ length: 17 }, (_, i) => `name=n${i}`).join('&')
  const refused = await call(`${router.url}/tokens?${many}`)
  t.equal(refused.status, 400, 'one key repeated counts once per value')
  t.match(refused.json(), { 'waiter-error': { details: { limit: 'filters', max: 16 } } })
  t.equal((await call(`${router.url}/tokens?${Array.from({ length: 16 }, (_, i) => `name=n${i}`).join('&')}`)).status, 200, 'up to the bound')
})
