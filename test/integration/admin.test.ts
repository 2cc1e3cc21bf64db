import t from 'tap'
import { call, createToken, kitchenToken, startRouter, waitFor, type Router } from '../fixtures/router.ts'

type Active = { id: string; healthy: boolean }
const active = async (router: Router, id: string): Promise<Active[]> =>
  (await call(`${router.url}/apps/${id}`)).json<{ instances: { 'active-instances': Active[] } }>().instances['active-instances']

t.test('/waiter-ping starts the service and health-checks an instance', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'kitchen', kitchenToken())
  const ping = await call(`${router.url}/waiter-ping`, { headers: { 'x-waiter-token': 'kitchen' } })
  t.equal(ping.status, 200)
  const body = ping.json<{ 'ping-response': { result: string; status: number; body: string; instance: { id: string } }; 'service-state': Record<string, unknown>; 'service-description': Record<string, unknown> }>()
  t.match(body['ping-response'], { result: 'received-response', status: 200, body: 'ok' })
  t.match(body['ping-response'].instance.id, /^maitre-/)
  t.match(body['service-state'], { 'exists?': true, 'healthy?': true, status: 'Running' })
  t.equal(body['service-description']['version'], 'v1')
  const missing = await call(`${router.url}/waiter-ping`, { headers: { 'x-waiter-token': 'nope' } })
  t.match(missing.json(), { 'ping-response': { result: 'descriptor-error', status: 404 }, 'service-state': { 'exists?': false, status: 'Inactive' } })
  // maitre's own refusal travels as the JSON error body it would have sent, as Waiter's does.
  const refusal = JSON.parse(missing.json<{ 'ping-response': { body: string } }>()['ping-response'].body) as { 'waiter-error': Record<string, unknown> }
  t.match(refusal['waiter-error'], { status: 404, code: 'MAITRE_TOKEN_NOT_FOUND', message: /nope/ })
})

t.test('Waiter’s pseudo-token ^SERVICE-ID#<id> (what `waiter ping --service-id` sends) names a version exactly', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'kitchen', kitchenToken())
  const first = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'kitchen', 'x-waiter-debug': 'true' } })
  const serviceId = first.headers['x-waiter-service-id'] as string
  await createToken(router, 'kitchen', kitchenToken({ version: 'v2' }))
  const ping = await call(`${router.url}/waiter-ping`, { headers: { 'x-waiter-token': `^SERVICE-ID#${serviceId}`, 'x-waiter-fallback-period-secs': '0' } })
  t.equal(ping.status, 200)
  t.match(ping.json(), { 'ping-response': { result: 'received-response', status: 200 }, 'service-state': { 'service-id': serviceId, 'exists?': true } }, 'the version named, not the token’s newer one')
  const proxied = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': `^SERVICE-ID#${serviceId}`, 'x-waiter-debug': 'true' } })
  t.equal(proxied.headers['x-waiter-service-id'], serviceId, 'and so does a proxied request')
  const unknown = await call(`${router.url}/waiter-ping`, { headers: { 'x-waiter-token': '^SERVICE-ID#maitre-nope' } })
  t.match(unknown.json(), { 'ping-response': { result: 'descriptor-error', status: 404 } })
})

t.test('/state/{service-id} answers for any id the serviceIdPrefix makes, and 404 for one it does not know', async (t) => {
  const router = await startRouter(t, { serviceIdPrefix: 'svc' })
  await createToken(router, 'plain', kitchenToken())
  const id = (await call(`${router.url}/service-id`, { headers: { 'x-waiter-token': 'plain' } })).text
  t.match(id, /^svc[0-9a-f]{32}$/, 'no name, so no dash before the hash')
  const state = await call(`${router.url}/state/${id}`)
  t.equal(state.status, 200, state.text)
  t.match(state.json(), { state: { tracker: { load: {} } } })
  t.equal((await call(`${router.url}/state/svc0123`)).status, 404)
})

t.test('suspend and resume', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'kitchen', kitchenToken())
  const h = { 'x-waiter-token': 'kitchen' }
  const id = (await call(`${router.url}/service-id`, { headers: h })).text
  t.equal((await call(`${router.url}/apps/${id}/suspend`, { method: 'POST' })).status, 200)
  const refused = await call(`${router.url}/request-info`, { headers: h })
  t.equal(refused.status, 503)
  t.equal(refused.json<{ 'waiter-error': { message: string } }>()['waiter-error'].message, 'Service has been suspended')
  t.equal(refused.headers['x-waiter-service-id'], undefined, 'without x-waiter-debug an error names no version')
  const debugged = await call(`${router.url}/request-info`, { headers: { ...h, 'x-waiter-debug': 'true' } })
  t.equal(debugged.status, 503)
  t.equal(debugged.headers['x-waiter-service-id'], id, 'with it, maitre’s own error names the version, as Waiter’s do')
  t.match((await call(`${router.url}/apps/${id}`)).json(), { 'service-suspended-state': { suspended: true } })
  t.equal((await call(`${router.url}/apps/${id}/resume`, { method: 'POST' })).status, 200)
  t.equal((await call(`${router.url}/request-info`, { headers: h })).status, 200)
})

t.test('a token edited to a version that is then suspended: the fallback keeps serving the previous version and never starts the suspended one', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'edited', kitchenToken({ 'fallback-period-secs': 600 }))
  const h = { 'x-waiter-token': 'edited', 'x-waiter-debug': 'true' }
  const v1 = (await call(`${router.url}/request-info`, { headers: h })).headers['x-waiter-service-id'] as string
  await createToken(router, 'edited', kitchenToken({ 'fallback-period-secs': 600, version: 'v2' }))
  const v2 = (await call(`${router.url}/service-id?latest=true`, { headers: { 'x-waiter-token': 'edited' } })).text
  t.not(v2, v1)
  t.equal((await call(`${router.url}/apps/${v2}/suspend`, { method: 'POST' })).status, 200)
  for (let i = 0; i < 3; i++) {
    const served = await call(`${router.url}/request-info`, { headers: h })
    t.equal(served.status, 200, `request ${i + 1}: served`)
    t.equal(served.headers['x-waiter-service-id'], v1, 'by the previous version')
  }
  const app = (await call(`${router.url}/apps/${v2}`)).json<{ instances: { 'active-instances': unknown[] } }>()
  t.same(app.instances['active-instances'], [], 'the suspended version was never started')
})

t.test('kill and expire an instance; read its logs', async (t) => {
  const router = await startRouter(t, { 'scaler.tickMs': 200, 'scaler.interKillMs': 100, 'scaler.burstHoldMs': 500 })
  await createToken(router, 'kitchen', kitchenToken())
  const h = { 'x-waiter-token': 'kitchen' }
  await call(`${router.url}/request-info`, { headers: h })
  const id = (await call(`${router.url}/service-id`, { headers: h })).text
  const [first] = await active(router, id)
  t.ok(first)

  const logs = await call(`${router.url}/apps/${id}/logs?instance-id=${first!.id}`)
  const files = logs.json<{ name: string; url: string }[]>()
  t.same(files.map((f) => f.name).filter((n) => n === 'stdout' || n === 'stderr'), ['stderr', 'stdout'])
  const stdout = files.find((f) => f.name === 'requests.log')
  t.match((await call(`${router.url}${stdout!.url}`)).text, /start .* \/request-info/)
  t.equal((await call(`${router.url}/apps/${id}/logs?instance-id=${first!.id}&file=../../router-secret`)).status, 404, 'nothing outside the sandbox')

  const expired = await call(`${router.url}/apps/${id}/instance/${first!.id}/expire`, { method: 'POST' })
  t.same(expired.json(), { 'signal-response': { message: `expire successfully sent to ${first!.id}`, success: true } })
  // Until its replacement is up (a new process: far longer than this one call), it is listed expired.
  const marked = (await call(`${router.url}/apps/${id}`)).json<{ instances: { 'active-instances': { id: string; flags: string[]; 'healthy?': boolean }[] } }>()
  const shown = marked.instances['active-instances'].find((i) => i.id === first!.id)
  t.ok(shown?.flags.includes('expired'), `shown expired (${String(shown?.flags)})`)
  t.equal(shown?.['healthy?'], true, 'with Waiter’s healthy? key')
  await waitFor('the expired instance to be replaced and killed', async () => {
    const now = await active(router, id)
    return !now.some((i) => i.id === first!.id) && now.some((i) => i.healthy) ? true : undefined
  }, 15000)

  const [second] = await active(router, id)
  const killed = await call(`${router.url}/apps/${id}/instance/${second!.id}/kill`, { method: 'POST' })
  t.equal(killed.json<{ 'signal-response': { message: string } }>()['signal-response'].message, `soft-kill successfully sent to ${second!.id}`)
  type Instances = { instances: { 'active-instances': { id: string }[]; 'killed-instances': { id: string }[] } }
  const app = await waitFor('the kill to be recorded', async () => {
    const now = (await call(`${router.url}/apps/${id}`)).json<Instances>()
    return now.instances['killed-instances'].some((i) => i.id === second!.id) ? now : undefined
  })
  t.ok(app.instances['killed-instances'].some((i) => i.id === second!.id), `${second!.id} is listed as killed`)
  t.notOk(app.instances['active-instances'].some((i) => i.id === second!.id), 'and no longer as active')
  t.equal((await call(`${router.url}/apps/${id}/instance/nope/kill`, { method: 'POST' })).status, 404)
})

t.test('/apps filters and /settings redaction', async (t) => {
  const router = await startRouter(t, { secret: 'hunter2-hunter2-hunter2' })
  await createToken(router, 'alpha-token', kitchenToken({ name: 'alpha' }))
  await createToken(router, 'beta-token', kitchenToken({ name: 'beta', version: 'v2' }))
  // Running, so listed (/apps lists what runs, as Waiter's lists what its scheduler knows).
  await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'alpha-token' } })
  await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'beta-token' } })
  const byName = (await call(`${router.url}/apps?name=beta`)).json<{ 'service-description': { name: string } }[]>()
  t.same(byName.map((a) => a['service-description'].name), ['beta'])
  const byGlob = (await call(`${router.url}/apps?version=v*`)).json<unknown[]>()
  t.equal(byGlob.length, 2, 'a glob: * matches any run of characters')
  t.equal((await call(`${router.url}/apps?version=v.*`)).json<unknown[]>().length, 0, 'a regular expression is only a literal')
  const hostile = await call(`${router.url}/apps?name=${encodeURIComponent(`${'(a+)+'.repeat(40)}b`)}`)
  t.equal(hostile.status, 200, 'a pattern that would be catastrophic as a regex is just text')
  const long = await call(`${router.url}/apps?name=${'a'.repeat(257)}`)
  t.equal(long.status, 400, 'filters are bounded')
  t.match(long.json(), { 'waiter-error': { details: { limit: 'filter-length', max: 256 } } })
  const settings = await call(`${router.url}/settings`)
  t.notMatch(settings.text, 'hunter2')
  t.match(settings.json(), { secret: '<redacted>', proxy: { allowOnTheFly: false } })
  // What Waiter's CLI reads: the cluster's name, the scheduler's kind and its sync interval.
  t.match(settings.json(), { 'cluster-config': { name: 'maitre' }, 'scheduler-config': { kind: 'local' }, 'scheduler-syncer-interval-secs': 1 })
  const maintainer = (await call(`${router.url}/state/maintainer`)).json<{ state: { routers: Record<string, string> } }>()
  t.same(Object.values(maintainer.state.routers), [router.url], '/state/maintainer lists the routers as Waiter’s tools read them')
})

t.test('Waiter’s CLI reads: /tokens always says whether a token is in maintenance; a port index is checked against ports only when a token gives both', async (t) => {
  const router = await startRouter(t)
  t.equal((await createToken(router, 'open', kitchenToken())).status, 200)
  t.equal((await createToken(router, 'closed', kitchenToken({ maintenance: { message: 'back soon' } }))).status, 200)
  const list = (await call(`${router.url}/tokens`)).json<{ token: string; maintenance: unknown }[]>()
  t.same(Object.fromEntries(list.map((e) => [e.token, e.maintenance])), { open: false, closed: true }, 'a boolean for every entry')
  // Another token (or a header) may bring the ports: an index alone is no error in a token.
  t.equal((await createToken(router, 'index-only', kitchenToken({ 'health-check-port-index': 1 }))).status, 200)
  const both = await call(`${router.url}/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: 'index-and-ports', ...kitchenToken({ 'health-check-port-index': 1, ports: 1 }) }) })
  t.equal(both.status, 400, 'with both given, the index must be smaller than ports')
  t.match(both.text, /health check port index \(1\) must be smaller than ports \(1\)/)
})

t.test('Waiter’s kill: DELETE /apps/{id} stops the version, it leaves /apps, routers agree, a second DELETE is 404, a bad timeout stops nothing', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'kitchen', kitchenToken())
  const h = { 'x-waiter-token': 'kitchen', 'x-waiter-debug': 'true' }
  const id = (await call(`${router.url}/request-info`, { headers: h })).headers['x-waiter-service-id'] as string
  const garbage = await call(`${router.url}/apps/${id}?timeout=soon`, { method: 'DELETE' })
  t.equal(garbage.status, 400)
  t.match(garbage.json(), { 'waiter-error': { details: { field: 'timeout' } } })
  t.equal((await call(`${router.url}/apps`)).json<unknown[]>().length, 1, 'and nothing was stopped')
  const killed = await call(`${router.url}/apps/${id}?timeout=5000`, { method: 'DELETE' })
  t.equal(killed.status, 200)
  t.match(killed.json(), { 'service-id': id, success: true, result: 'deleted', 'routers-agree': true })
  t.same((await call(`${router.url}/apps`)).json(), [], 'the killed version is gone from /apps, not left Inactive')
  t.equal((await call(`${router.url}/apps/${id}`, { method: 'DELETE' })).status, 404, 'a second DELETE finds nothing')
  const again = await call(`${router.url}/request-info`, { headers: h })
  t.equal(again.status, 200, 'the token starts it afresh on the next request')
  t.equal(again.headers['x-maitre-cold-start'], 'true')
  // A version recorded but never started (GET /service-id records it): Waiter's 404.
  await createToken(router, 'idle', kitchenToken({ version: 'never-started' }))
  const idle = (await call(`${router.url}/service-id`, { headers: { 'x-waiter-token': 'idle' } })).text
  t.equal((await call(`${router.url}/apps/${idle}`)).status, 200, 'recorded')
  const notRunning = await call(`${router.url}/apps/${idle}`, { method: 'DELETE' })
  t.equal(notRunning.status, 404, 'deleting a version that does not run is a 404')
  t.match(notRunning.json(), { 'service-id': idle, success: false, result: 'no-such-service-exists' })
})

t.test('Waiter’s run-as rule under one-user authentication: another run-as-user takes admin mode (the CLI’s --admin), as it does for everyone', async (t) => {
  const router = await startRouter(t, { 'auth.user': 'alice' })
  const post = (body: Record<string, unknown>, query = '', headers: Record<string, string> = {}) =>
    call(`${router.url}/token${query}`, { method: 'POST', headers: { 'content-type': 'application/json', 'if-match': '', ...headers }, body: JSON.stringify(body) })
  const refused = await post({ token: 'batch', ...kitchenToken(), 'run-as-user': 'bob' })
  t.equal(refused.status, 403)
  t.match(refused.json(), { 'waiter-error': { message: "Authenticated user 'alice' cannot run as user 'bob'", 'error-class': 'waiter.RunAsForbidden' } })
  t.equal((await post({ token: 'batch', ...kitchenToken(), 'run-as-user': 'alice' })).status, 200, 'as oneself')
  const adminMode = await post({ token: 'batch2', ...kitchenToken(), 'run-as-user': 'bob' }, '?update-mode=admin')
  t.equal(adminMode.status, 200, 'the one-user principal is an admin, and said so')
  t.equal((await call(`${router.url}/token?token=batch2`)).json()['run-as-user'], 'bob')
})

t.test('Waiter’s CLI `show`: /apps?effective-parameters=true&token=T lists each version with its effective parameters, the description as it runs, and source-tokens in Waiter’s shape, under every token it was reached through', async (t) => {
  const router = await startRouter(t, { 'auth.user': 'alice' })
  const base = await createToken(router, 'base', kitchenToken())
  await createToken(router, 'extra', { env: { FLAVOUR: 'mint' }, 'run-as-user': 'alice', 'permitted-user': '*' })
  const baseEtag = base.headers['etag'] as string
  const extraEtag = (await call(`${router.url}/token?token=extra`)).headers['etag'] as string
  const single = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'base', 'x-waiter-debug': 'true' } })
  const joined = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'base,extra', 'x-waiter-debug': 'true' } })
  const [singleId, joinedId] = [single.headers['x-waiter-service-id'], joined.headers['x-waiter-service-id']] as string[]
  t.not(singleId, joinedId)

  type App = { 'service-id': string; 'service-description': Record<string, unknown>; 'effective-parameters': Record<string, unknown>; 'source-tokens': { token: string; version: string }[][]; 'current-for-tokens': string[] }
  const listed = (await call(`${router.url}/apps?effective-parameters=true&token=base`)).json<App[]>()
  t.same(listed.map((a) => a['service-id']).sort(), [singleId, joinedId].sort(), '?token=base finds both: the one reached through base alone and the one through base,extra')
  t.same((await call(`${router.url}/apps?token=extra`)).json<App[]>().map((a) => a['service-id']), [joinedId], '?token=extra finds the joined one')
  const joinedApp = listed.find((a) => a['service-id'] === joinedId) as App
  t.same(joinedApp['source-tokens'], [[{ token: 'base', version: baseEtag }, { token: 'extra', version: extraEtag }]], 'one list per token combination, each token at its etag (what the CLI compares to decide "Current")')
  t.same(joinedApp['current-for-tokens'], ['base', 'extra'])
  // A token named again counts once, at its last place: the same version, the same one combination.
  const repeated = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'extra,base,extra,base,extra', 'x-waiter-debug': 'true' } })
  t.equal(repeated.headers['x-waiter-service-id'], joinedId, '`extra,base,extra,base,extra` is `base,extra`')
  t.same((await call(`${router.url}/apps/${joinedId}?effective-parameters=true`)).json<App>()['source-tokens'], [[{ token: 'base', version: baseEtag }, { token: 'extra', version: extraEtag }]], 'and adds no combination to the record')
  t.match(joinedApp['effective-parameters'], { 'run-as-user': 'alice', cpus: 0.1, mem: 256, version: 'v1', 'concurrency-level': 1, env: { FLAVOUR: 'mint' } }, 'what the CLI prints: run-as-user, cpus, memory, version')
  t.match(joinedApp['service-description'], { 'run-as-user': 'alice', 'permitted-user': '*' }, 'the description names who it runs as and who may call it, as resolved')
  const singleApp = listed.find((a) => a['service-id'] === singleId) as App
  t.match(singleApp['service-description'], { 'run-as-user': 'alice', 'permitted-user': 'alice' }, 'a token that runs as its requester: the requester, both (Waiter forces permitted-user to the requester too)')
  t.same((await call(`${router.url}/apps?token-version=${extraEtag}`)).json<App[]>().map((a) => a['service-id']), [joinedId], '?token-version=<etag> finds the versions of that token version')
  await createToken(router, 'star', kitchenToken({ version: 'v3', 'run-as-user': '*' }))
  const starId = (await call(`${router.url}/service-id`, { headers: { 'x-waiter-token': 'star' } })).text
  const star = (await call(`${router.url}/apps/${starId}?effective-parameters=true`)).json<App>()
  t.match(star['service-description'], { 'run-as-user': 'alice', 'permitted-user': 'alice' }, 'a run-as-user "*" token’s service shows its requester as its run-as-user')
  t.equal(star['effective-parameters']['run-as-user'], 'alice')
  t.equal((await call(`${router.url}/apps`)).json<App[]>()[0]?.['effective-parameters'], undefined, 'effective parameters only when asked for')
})

t.test('the rest of Waiter’s API its own integration tests rely on', async (t) => {
  const router = await startRouter(t, { 'auth.user': 'alice' })
  await createToken(router, 'kitchen', kitchenToken({ env: { FLAG: 'on' }, 'load-balancing': 'random' }))
  await createToken(router, 'other', kitchenToken({ version: 'v2', env: { FLAG: 'off' } }))

  const first = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'kitchen', 'x-waiter-debug': 'true' } })
  t.match(first.headers['x-waiter-backend-response-ns'], /^\d+$/, 'debug: how long the instance took to answer, in ns')
  const serviceId = first.headers['x-waiter-service-id'] as string
  const died = await call(`${router.url}/die`, { headers: { 'x-waiter-token': 'kitchen', 'x-waiter-debug': 'true' } })
  t.equal(died.status, 502, 'maitre’s own 502 for a request that reached an instance')
  t.match(died.headers, { 'x-waiter-backend-id': /^maitre-/, 'x-waiter-backend-host': '127.0.0.1', 'x-waiter-backend-port': /^\d+$/, 'x-waiter-backend-proto': 'http' }, 'names the instance')

  const ping = await call(`${router.url}/waiter-ping?exclude=service-state`, { headers: { 'x-waiter-token': 'kitchen', 'x-waiter-debug': 'true' } })
  t.equal(ping.headers['x-waiter-service-id'], serviceId, 'ping with debug names the version')
  t.same(ping.json()['service-state'], { result: 'excluded' }, '?exclude=service-state')

  type Entry = { token: string; parameters?: Record<string, unknown> }
  const tokens = async (query: string): Promise<string[]> => (await call(`${router.url}/tokens?${query}`)).json<Entry[]>().map((e) => e.token)
  t.same(await tokens('version=v2'), ['other'], 'any parameter filters')
  t.same(await tokens('env.FLAG=on'), ['kitchen'], 'dotted keys reach into maps')
  t.same(await tokens('load-balancing=random'), ['kitchen'])
  t.same(await tokens('version=v1&version=v2'), ['kitchen', 'other'], 'a key given twice matches either')
  // Waiter's flags, and parameters that are no token field (ignored, as Waiter does).
  await createToken(router, 'star', kitchenToken({ version: 'v3', 'run-as-user': '*', 'allowed-params': ['SIZE', 'MODE'], env: { MODE: 'fast' } }))
  t.same(await tokens('watch=false&run-as-requester=TRUE'), ['star'], 'Waiter’s run-as-requester: run-as-user "*"')
  t.same(await tokens('run-as-requester=false'), ['kitchen', 'other'])
  t.same(await tokens('requires-parameters=true'), ['star'], 'an allowed parameter (SIZE) with no default in env')
  t.same(await tokens('requires-parameters=false'), ['kitchen', 'other'])
  t.same(await tokens('maintenance=FALSE'), ['kitchen', 'other', 'star'], 'maintenance is a flag, read in any case')
  t.same(await tokens('can-manage-as-user=alice'), ['kitchen', 'other', 'star'], 'alice owns them all (and, as the one-user principal, is an admin)')
  t.same(await tokens('can-manage-as-user=mallory'), [], 'mallory manages neither')
  t.same((await call(`${router.url}/tokens?token=kitchen&parameters=version&parameters=cpus`)).json<Entry[]>()[0]?.parameters, { version: 'v1', cpus: 0.1 }, 'parameters= adds those values')

  const app = (await call(`${router.url}/apps/${serviceId}?include=references&include=healthy-instances`)).json<{
    'request-metrics': { total: number }; 'last-request-time': string; references: unknown[]
    instances: { 'healthy-instances': { id: string; host: string; port: number }[]; 'active-instances': { id: string; 'log-url': string }[] }
  }>()
  t.equal(app['request-metrics'].total, 3, 'request-metrics.total counts the proxied requests and the ping (Waiter’s ping goes through its proxy)')
  t.ok(Date.parse(app['last-request-time']) > Date.now() - 60_000, 'last-request-time is recent')
  t.match(app.references, [{ token: { sources: [{ token: 'kitchen', version: /^E-/ }] } }], '?include=references')
  const instance = app.instances['active-instances'][0] as { id: string; 'log-url': string }
  t.match(app.instances['healthy-instances'], [{ id: instance.id, host: '127.0.0.1', port: Number }], '?include=healthy-instances')
  t.equal(instance['log-url'], `/apps/${serviceId}/logs?instance-id=${encodeURIComponent(instance.id)}&host=127.0.0.1`, 'an active instance carries its log-url for a caller who manages it')

  await createToken(router, 'kitchen', kitchenToken({ env: { FLAG: 'on' }, 'load-balancing': 'random', version: 'v9', cmd: 'exit 3' }))
  const during = await call(`${router.url}/service-id`, { headers: { 'x-waiter-token': 'kitchen' } })
  t.equal(during.text, serviceId, '/service-id during a fallback names the version that serves')
  const latest = await call(`${router.url}/service-id?latest=true`, { headers: { 'x-waiter-token': 'kitchen' } })
  t.not(latest.text, serviceId, '?latest=true names the token’s newest')

  const killed = await call(`${router.url}/apps/${serviceId}/instance/${instance.id}/kill?force=true`, { method: 'POST' })
  t.same(killed.json(), { 'signal-response': { message: `force-kill successfully sent to ${instance.id}`, success: true } })
  await waitFor('the force-killed instance to be gone', async () => {
    const now = (await call(`${router.url}/apps/${serviceId}`)).json<{ instances: { 'killed-instances': { id: string; 'exit-code': number | null; message: string }[] } }>()
    return now.instances['killed-instances'].find((k) => k.id === instance.id)
  }).then((gone) => t.match(gone, { message: 'Force-killed by maitre' }, 'killed at once, and said so'))


  await call(`${router.url}/apps/${serviceId}/suspend`, { method: 'POST' })
  const suspendedPing = await call(`${router.url}/waiter-ping`, { headers: { 'x-waiter-token': `^SERVICE-ID#${serviceId}` } })
  t.match(suspendedPing.json(), { 'waiter-error': { status: 503, 'error-class': 'waiter.Suspended' } }, 'a ping does not start a suspended version')
  await createToken(router, 'down', { ...kitchenToken(), maintenance: { message: 'back soon' } })
  const inMaintenance = await call(`${router.url}/waiter-ping`, { headers: { 'x-waiter-token': 'down' } })
  t.equal(inMaintenance.status, 200, 'Waiter: a ping of a token in maintenance is a 200 (the CLI reads the ping-response of a 200 only)…')
  t.match(inMaintenance.json(), {
    'ping-response': { result: 'received-response', status: 503, body: /waiter\.Maintenance[\s\S]*back soon/ },
    'service-state': { 'exists?': false, 'healthy?': false, 'service-id': null, status: 'Inactive' },
  }, '…whose ping-response is the 503 any request to the token gets; nothing is started')

  await createToken(router, 'secure', kitchenToken({ 'https-redirect': true }))
  const redirected = await call(`${router.url}/waiter-ping`, { headers: { 'x-waiter-token': 'secure' } })
  t.equal(redirected.status, 301, 'an https-only token is not pinged (nor started) over plain http: Waiter’s redirect')
  t.equal(redirected.headers['location'], 'https://127.0.0.1/waiter-ping')
  t.match(redirected.json(), { 'ping-response': { result: 'waiter-response', status: 301 }, 'service-state': { status: 'Inactive' } })
  t.same((await call(`${router.url}/apps`)).json<{ 'service-id': string }[]>().filter((a) => a['service-id'].includes('secure')), [], 'no version of it runs')

  // An instance's answer is reported up to a stated bound, not read whole into the router.
  await createToken(router, 'big', kitchenToken({ 'health-check-url': '/status?pad=100000' }))
  const big = await call(`${router.url}/waiter-ping`, { headers: { 'x-waiter-token': 'big' } })
  const pinged = big.json<{ 'ping-response': { status: number; body: string; 'body-truncated'?: boolean } }>()['ping-response']
  t.equal(pinged.status, 200, pinged.body.slice(0, 300))
  t.equal(pinged.body.length, 64 * 1024, 'the body is cut at 64 KiB')
  t.equal(pinged['body-truncated'], true, 'and the answer says so')
})

t.test('Waiter’s messages for an unsupported cmd-type, a malformed or reserved token name and an interstitial on a partial token', async (t) => {
  const router = await startRouter(t, { 'server.hostnames': ['maitre.example.com'] })
  const post = (body: Record<string, unknown>) => call(`${router.url}/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
  const bogus = await post({ token: 'typed', ...kitchenToken(), 'cmd-type': 'bogus' })
  t.equal(bogus.status, 400)
  t.match(bogus.json(), { 'waiter-error': { 'error-class': 'waiter.ServiceMisconfigured', message: /\nCommand type bogus is not supported/ } })
  t.equal((await post({ token: 'typed', ...kitchenToken(), 'cmd-type': 'docker' })).status, 200, 'docker is a type Waiter knows (a cluster backend runs it)')
  const docker = await call(`${router.url}/x`, { headers: { 'x-waiter-token': 'typed' } })
  t.match(docker.json(), { 'waiter-error': { status: 400, message: /Command type docker is not supported \(the local backend runs shell commands only\)/ } }, 'the local backend says so in Waiter’s words')
  const hash = await post({ token: 'bad#name', ...kitchenToken() })
  t.match(hash.json(), { 'waiter-error': { status: 400, message: 'Token contains invalid character: "#"' } })
  const digit = await post({ token: '9lives', ...kitchenToken() })
  t.match(digit.json(), { 'waiter-error': { status: 400, message: 'Token must match pattern', details: { pattern: String, 'invalid-character': '9' } } }, 'any other break of the pattern cites it')
  for (const name of ['localhost', 'LocalHost', 'maitre.example.com']) {
    const reserved = await post({ token: name, ...kitchenToken() })
    t.match(reserved.json(), { 'waiter-error': { status: 403, code: 'MAITRE_TOKEN_NAME_RESERVED', message: 'Token name is reserved' } }, `${name}: a host name of the router, which a Host header never reads as a token`)
  }
  t.equal((await call(`${router.url}/token?token=localhost`)).status, 404, 'nothing was made')
  const interstitial = await post({ token: 'partial', version: 'v1', 'interstitial-secs': 5 })
  t.match(interstitial.json(), { 'waiter-error': { status: 400, message: /Tokens with missing required parameters cannot use interstitial support\. Missing parameters: cmd, cpus, mem/ } }, 'an interstitial waits for what a token runs: the token must name it whole')
  t.equal((await post({ token: 'partial', version: 'v1', 'interstitial-secs': 0 })).status, 200, 'a partial token without one is fine')
})

t.test('a token named by the Host is looked up as the Host sends it (token names are case-sensitive)', async (t) => {
  const router = await startRouter(t)
  const port = new URL(router.url).port
  t.equal((await createToken(router, 'MyApp.example', kitchenToken())).status, 200)
  const read = await call(`${router.url}/token`, { headers: { host: `MyApp.example:${port}` } })
  t.equal(read.status, 200, 'GET /token by Host')
  const served = await call(`${router.url}/request-info`, { headers: { host: `MyApp.example:${port}` } })
  t.equal(served.status, 200, 'a request to the token the Host names')
  t.same((await call(`${router.url}/status`, { headers: { host: `LOCALHOST:${port}` } })).json(), { status: 'ok' }, 'the router’s own names still match in any case (the API answers)')
  t.equal((await createToken(router, 'lower.example', kitchenToken())).status, 200)
  t.equal((await call(`${router.url}/request-info`, { headers: { host: `Lower.Example:${port}` } })).status, 200, 'a lower-case token is still reached by a Host in another case, as before (DNS names ignore case)')
  t.equal((await call(`${router.url}/token`, { headers: { host: `LOWER.example:${port}` } })).status, 200)
})

t.test('callers cannot record versions without bound: past maxVersions a request naming a new one is a 507, the recorded ones still serve', async (t) => {
  const router = await startRouter(t, { maxVersions: 1 })
  t.equal((await createToken(router, 'mint', kitchenToken({ 'allowed-params': ['X'], 'idle-timeout-mins': 0 }))).status, 200)
  const h = (x: string) => ({ 'x-waiter-token': 'mint', 'x-waiter-param-x': x })
  t.equal((await call(`${router.url}/service-id`, { headers: h('v1') })).status, 200, 'the first version')
  const second = await call(`${router.url}/service-id`, { headers: h('v2') })
  t.equal(second.status, 507, 'a second, past the bound')
  t.match(second.json(), { 'waiter-error': { code: 'MAITRE_STORE_FULL', details: { limit: 'versions', max: 1 } } })
  t.equal((await call(`${router.url}/request-info`, { headers: h('v1') })).status, 200, 'the recorded one serves')
})
