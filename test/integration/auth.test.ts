import t from 'tap'
import { join } from 'node:path'
import { createServer } from 'node:http'
import { userInfo } from 'node:os'
import type { AddressInfo } from 'node:net'
import { call, createToken, kitchenToken, startRouter, type Reply, type Router, type Teardown } from '../fixtures/router.ts'
import { AUDIENCE, ISSUER, mint, signingKey, writeJwks, type SigningKey } from '../fixtures/jwt.ts'
import { runCli } from '../../src/cli.ts'

interface JwtRouter extends Router {
  readonly key: SigningKey
  /** Headers that authenticate as `user`. */
  as(user: string): Promise<Record<string, string>>
}

async function startJwtRouter(t: Teardown & { testdir(): string }, overrides: Record<string, unknown> = {}): Promise<JwtRouter> {
  const key = await signingKey('ES256', 'test-key')
  const file = join(t.testdir(), 'jwks.json')
  writeJwks(file, [key])
  const router = await startRouter(t, {
    'auth.kind': 'jwt',
    'auth.admins': ['root'],
    'auth.jwt.jwksFile': file,
    'auth.jwt.issuer': ISSUER,
    'auth.jwt.audience': AUDIENCE,
    ...overrides,
  })
  const tokens = new Map<string, string>()
  return {
    ...router,
    key,
    async as(user) {
      if (!tokens.has(user)) tokens.set(user, await mint(key, { sub: user }))
      return { authorization: `Bearer ${tokens.get(user) as string}` }
    },
  }
}

const post = async (router: JwtRouter, user: string, body: Record<string, unknown>, query = '', headers: Record<string, string> = {}): Promise<Reply> =>
  call(`${router.url}/token${query}`, { method: 'POST', headers: { 'content-type': 'application/json', ...(await router.as(user)), ...headers }, body: JSON.stringify(body) })

type ErrorBody = { 'waiter-error': { status: number; code: string; 'error-class': string; message: string; principal: string | null } }
const waiterError = (reply: Reply): ErrorBody['waiter-error'] => reply.json<ErrorBody>()['waiter-error']

t.test('JWT: no or bad credentials are a 401 with a Bearer challenge and Waiter’s body; a good token earns the x-waiter-auth cookie that then stands in for it', async (t) => {
  const router = await startJwtRouter(t)
  for (const [what, headers] of [['none', {}], ['garbage', { authorization: 'Bearer a.b.c' }], ['expired', { authorization: `Bearer ${await mint(router.key, { sub: 'alice', expiresIn: -3600 })}` }]] as const) {
    const reply = await call(`${router.url}/tokens`, { headers })
    t.equal(reply.status, 401, what)
    t.match(reply.headers['www-authenticate'], /^Bearer realm="maitre"/, `${what}: challenged`)
    t.match(waiterError(reply), { status: 401, 'error-class': 'waiter.Unauthorized', code: 'MAITRE_UNAUTHORIZED' })
  }
  const proxied = await call(`${router.url}/anything`, { headers: { 'x-waiter-token': 'nope' } })
  t.equal(proxied.status, 401, 'the data path asks for credentials before it says anything about the token')

  const ok = await call(`${router.url}/tokens`, { headers: await router.as('alice') })
  t.equal(ok.status, 200)
  const setCookie = ok.headers['set-cookie'] as string[]
  // The token lives an hour: the cookie lives no longer than its proof (at most a day).
  const maxAge = Number(/Max-Age=(\d+)/.exec(setCookie[0] as string)?.[1])
  t.match(setCookie[0], /^x-waiter-auth=[A-Za-z0-9_-]+; Max-Age=\d+; Path=\/; HttpOnly; SameSite=Lax$/)
  t.ok(maxAge > 3500 && maxAge <= 3600, `Max-Age ${maxAge}: the JWT's remaining hour, not a day`)
  t.match(setCookie[1], /^x-auth-expires-at=\d+; Max-Age=\d+; Path=\/$/)
  const overHttps = await call(`${router.url}/tokens`, { headers: { ...(await router.as('alice')), 'x-forwarded-proto': 'https' } })
  t.match((overHttps.headers['set-cookie'] as string[])[0], /; HttpOnly; SameSite=Lax; Secure$/, 'a request that came over https (a TLS terminator says so) gets a Secure cookie')
  const cookie = (setCookie[0] as string).split(';')[0] as string
  const byCookie = await call(`${router.url}/token`, { method: 'POST', headers: { cookie, 'content-type': 'application/json' }, body: JSON.stringify({ token: 'mine', ...kitchenToken() }) })
  t.equal(byCookie.status, 200, 'the cookie alone authenticates')
  t.equal(byCookie.headers['set-cookie'], undefined, 'and earns no new cookie')
  const token = await call(`${router.url}/token?token=mine`, { headers: { cookie } })
  t.equal(token.json()['owner'], 'alice', 'as the principal the JWT named')
  const value = cookie.slice('x-waiter-auth='.length)
  const middle = Math.floor(value.length / 2)
  const tamperedValue = `${value.slice(0, middle)}${value[middle] === 'A' ? 'B' : 'A'}${value.slice(middle + 1)}`
  const tampered = await call(`${router.url}/tokens`, { headers: { cookie: `x-waiter-auth=${tamperedValue}` } })
  t.equal(tampered.status, 401, 'an altered cookie is no credential')
  // Waiter: a bearer token sent with the cookie is what counts (a client switching users).
  const asBob = await call(`${router.url}/token`, { method: 'POST', headers: { cookie, 'content-type': 'application/json', ...(await router.as('bob')) }, body: JSON.stringify({ token: 'bobs', ...kitchenToken() }) })
  t.equal(asBob.status, 200)
  t.equal((await call(`${router.url}/token?token=bobs`, { headers: { cookie } })).json()['owner'], 'bob', 'alice’s cookie with bob’s bearer token acts as bob')
  t.equal((await call(`${router.url}/tokens`, { headers: { cookie, authorization: 'Bearer a.b.c' } })).status, 401, 'and a bad bearer token is refused, whatever cookie came with it')
})

t.test('an instance hears who called (x-waiter-auth-principal, -user) and nothing a client forged, never the router’s cookie, and cannot set it', async (t) => {
  const router = await startJwtRouter(t)
  await post(router, 'alice', { token: 'kitchen', ...kitchenToken() })
  const first = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'kitchen', ...(await router.as('alice')) } })
  t.equal(first.status, 200)
  const cookie = ((first.headers['set-cookie'] as string[])[0] as string).split(';')[0] as string
  t.ok(cookie.startsWith('x-waiter-auth='), 'the data path sets the cookie too')
  const info = await call(`${router.url}/request-info`, {
    headers: { 'x-waiter-token': 'kitchen', cookie: `theme=dark; ${cookie}; x-auth-expires-at=1`, 'x-waiter-auth-principal': 'root', 'x-waiter-auth-user': 'root' },
  })
  const seen = info.json<{ headers: Record<string, string> }>().headers
  t.equal(seen['x-waiter-auth-principal'], 'alice')
  t.equal(seen['x-waiter-auth-user'], 'alice')
  t.equal(seen['cookie'], 'theme=dark', 'the app’s own cookies pass, the router’s do not')
  t.notOk(String(seen['authorization']).startsWith('Bearer'), 'the caller’s bearer token is not passed on')
  const set = await call(`${router.url}/set-cookies?name=session&name=x-waiter-auth`, { headers: { 'x-waiter-token': 'kitchen', cookie } })
  t.same([set.headers['set-cookie']].flat(), ['session=from-the-app; Path=/'], 'the app cannot set the router’s cookie')
})

t.test('token rules: owner, editor, owner assignment, run-as, admins and update-mode=admin, each a 403 naming its rule', async (t) => {
  const router = await startJwtRouter(t)
  t.equal((await post(router, 'alice', { token: 'shop', ...kitchenToken(), editor: 'bob' })).status, 200)
  const bobOwner = await post(router, 'bob', { token: 'shop', ...kitchenToken({ version: 'v2' }), owner: 'bob', editor: 'bob' })
  t.equal(bobOwner.status, 403)
  t.match(waiterError(bobOwner), { code: 'MAITRE_NOT_TOKEN_MANAGER', 'error-class': 'waiter.TokenManageForbidden', message: 'An editor cannot change owner of token shop' })
  t.equal((await post(router, 'bob', { token: 'shop', ...kitchenToken({ version: 'v2' }), owner: 'alice', editor: 'bob' })).status, 200, 'an editor edits the description')
  const carol = await post(router, 'carol', { token: 'shop', ...kitchenToken({ version: 'v3' }) })
  t.match(waiterError(carol), { status: 403, code: 'MAITRE_NOT_TOKEN_MANAGER', message: 'Cannot update token (owner=alice) as user: carol' })
  const carolDelete = await call(`${router.url}/token?token=shop`, { method: 'DELETE', headers: await router.as('carol') })
  t.match(waiterError(carolDelete), { status: 403, message: 'User not allowed to delete token' })
  const bobDelete = await call(`${router.url}/token?token=shop`, { method: 'DELETE', headers: await router.as('bob') })
  t.equal(bobDelete.status, 403, 'an editor does not delete')

  const forOther = await post(router, 'alice', { token: 'gift', ...kitchenToken(), owner: 'bob' })
  t.match(waiterError(forOther), { status: 403, code: 'MAITRE_CANNOT_ASSIGN_OWNER', 'error-class': 'waiter.TokenOwnerForbidden', message: 'Cannot create token as provided owner: bob' })
  t.equal((await post(router, 'root', { token: 'gift', ...kitchenToken(), owner: 'bob' })).status, 200, 'an admin creates tokens for others')

  const runAs = await post(router, 'alice', { token: 'runner', ...kitchenToken(), 'run-as-user': 'bob' })
  t.match(waiterError(runAs), { status: 403, code: 'MAITRE_CANNOT_RUN_AS', 'error-class': 'waiter.RunAsForbidden', message: "Authenticated user 'alice' cannot run as user 'bob'" })
  t.equal((await post(router, 'alice', { token: 'runner', ...kitchenToken(), 'run-as-user': 'alice' })).status, 200, 'as oneself')
  t.equal((await post(router, 'alice', { token: 'runner2', ...kitchenToken(), 'run-as-user': '*' })).status, 200, 'as the requester')
  const adminPlain = await post(router, 'root', { token: 'runner3', ...kitchenToken(), 'run-as-user': 'bob', owner: 'bob' })
  t.match(waiterError(adminPlain), { status: 403, message: "Authenticated user 'root' cannot run as user 'bob'" }, 'an admin too, unless it asks for admin mode')
  t.equal((await post(router, 'root', { token: 'runner3', ...kitchenToken(), 'run-as-user': 'bob', owner: 'bob' }, '?update-mode=admin')).status, 200, 'admin mode, as the CLI’s --admin sends')
  const notAdmin = await post(router, 'alice', { token: 'runner4', ...kitchenToken() }, '?update-mode=admin')
  t.match(waiterError(notAdmin), { status: 403, code: 'MAITRE_ADMIN_ONLY', message: 'Only admins may use update-mode=admin' })
})

t.test('permitted-user decides who calls a version; only its managers (or an admin) change it, and /apps shows each caller what it manages', async (t) => {
  const router = await startJwtRouter(t)
  t.equal((await post(router, 'alice', { token: 'private', ...kitchenToken(), 'run-as-user': 'alice', 'permitted-user': 'alice' })).status, 200)
  const bob = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'private', ...(await router.as('bob')) } })
  t.match(waiterError(bob), { status: 403, code: 'MAITRE_NOT_PERMITTED', 'error-class': 'waiter.UserNotPermitted', message: "This user isn't allowed to invoke this service", principal: 'bob' })
  const bobPing = await call(`${router.url}/waiter-ping`, { headers: { 'x-waiter-token': 'private', ...(await router.as('bob')) } })
  t.match(bobPing.json(), { 'ping-response': { result: 'descriptor-error', status: 403 } }, 'nor may bob start it with a ping')
  const alice = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'private', 'x-waiter-debug': 'true', ...(await router.as('alice')) } })
  t.equal(alice.status, 200)
  const serviceId = alice.headers['x-waiter-service-id'] as string

  const refusals: [string, string, string][] = [
    ['DELETE', `/apps/${serviceId}`, 'delete'],
    ['POST', `/apps/${serviceId}/suspend`, 'suspend'],
    ['POST', `/apps/${serviceId}/resume`, 'resume'],
    ['POST', `/apps/${serviceId}/override`, 'override'],
    ['DELETE', `/apps/${serviceId}/override`, 'clear overrides'],
    ['GET', `/apps/${serviceId}/logs?instance-id=x`, 'logs'],
    ['POST', `/apps/${serviceId}/instance/x/kill`, 'kill'],
    ['POST', `/apps/${serviceId}/instance/x/expire`, 'expire'],
  ]
  for (const [method, path, what] of refusals) {
    const reply = await call(`${router.url}${path}`, { method, headers: { 'content-type': 'application/json', ...(await router.as('bob')) }, body: method === 'POST' ? '{"min-instances": 1}' : null })
    t.match(waiterError(reply), { status: 403, code: 'MAITRE_NOT_SERVICE_MANAGER', 'error-class': 'waiter.ServiceManageForbidden' }, `bob may not ${what}`)
  }
  t.equal((await call(`${router.url}/apps/${serviceId}/override`, { headers: await router.as('bob') })).status, 200, 'reading overrides is anyone’s')
  const listFor = async (user: string): Promise<string[]> => (await call(`${router.url}/apps`, { headers: await router.as(user) })).json<{ 'service-id': string }[]>().map((a) => a['service-id'])
  t.same(await listFor('bob'), [], 'bob manages nothing')
  t.same(await listFor('alice'), [serviceId])
  t.same(await listFor('root'), [serviceId], 'admins see everything')
  t.equal((await call(`${router.url}/apps/${serviceId}/suspend`, { method: 'POST', headers: await router.as('alice') })).status, 200, 'alice suspends her own')
  t.equal((await call(`${router.url}/apps/${serviceId}/resume`, { method: 'POST', headers: await router.as('root') })).status, 200, 'an admin resumes it')
  const get = await call(`${router.url}/apps/${serviceId}/suspend`, { headers: await router.as('alice') })
  t.equal(get.status, 405, 'state changes refuse GET')
  t.equal(get.headers['allow'], 'POST')

  t.equal((await post(router, 'alice', { token: 'open', ...kitchenToken({ version: 'v9' }), 'run-as-user': 'alice', 'permitted-user': '*' })).status, 200)
  t.equal((await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'open', ...(await router.as('bob')) } })).status, 200, 'permitted-user * lets anyone authenticated call')
  const deleted = await call(`${router.url}/apps/${serviceId}`, { method: 'DELETE', headers: await router.as('alice') })
  t.match(deleted.json(), { success: true, result: 'deleted' }, 'alice deletes her version')
})

t.test('on the fly: only with proxy.allowOnTheFly, and running as somebody else takes an admin', async (t) => {
  const router = await startJwtRouter(t, { 'proxy.allowOnTheFly': true })
  const onTheFly = { 'x-waiter-cmd': 'true', 'x-waiter-cpus': '0.1', 'x-waiter-mem': '64', 'x-waiter-version': 'a' }
  const own = await call(`${router.url}/service-id`, { headers: { ...onTheFly, ...(await router.as('bob')) } })
  t.equal(own.status, 200, 'as oneself')
  const other = await call(`${router.url}/service-id`, { headers: { ...onTheFly, 'x-waiter-run-as-user': 'alice', ...(await router.as('bob')) } })
  t.match(waiterError(other), { status: 403, code: 'MAITRE_CANNOT_RUN_AS', message: "Authenticated user 'bob' cannot run as user 'alice'" })
  t.equal((await call(`${router.url}/service-id`, { headers: { ...onTheFly, 'x-waiter-run-as-user': 'alice', ...(await router.as('root')) } })).status, 200, 'an admin may')
  const closed = await startJwtRouter(t)
  t.match(waiterError(await call(`${closed.url}/service-id`, { headers: { ...onTheFly, ...(await closed.as('root')) } })), { status: 403, code: 'MAITRE_ON_THE_FLY_DISABLED' }, 'off by default, even for admins')
})

t.test('authentication: disabled tokens are served to anyone, with no principal; Waiter’s rules hold at token write', async (t) => {
  const router = await startJwtRouter(t, { 'proxy.allowOnTheFly': true })
  const incomplete = await post(router, 'alice', { token: 'public', cmd: 'x', authentication: 'disabled' })
  t.equal(incomplete.status, 400)
  t.match(waiterError(incomplete).message, /must specify permitted-user as \*[\s\S]*explicit run-as-user[\s\S]*Missing parameters: cpus, mem, version/)
  t.equal((await post(router, 'alice', { token: 'public', ...kitchenToken(), authentication: 'disabled', 'permitted-user': '*', 'run-as-user': 'alice' })).status, 200)
  const anonymous = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'public', 'x-waiter-auth-principal': 'root' } })
  t.equal(anonymous.status, 200, 'no credentials needed')
  const seen = anonymous.json<{ headers: Record<string, string> }>().headers
  t.equal(seen['x-waiter-auth-principal'], undefined, 'the instance hears of no principal, forged or not')
  t.equal(anonymous.headers['set-cookie'], undefined, 'and nobody gets a cookie')
  const mixed = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'public', 'x-waiter-cpus': '0.2', ...(await router.as('alice')) } })
  t.match(waiterError(mixed), { status: 400, message: 'An authentication disabled token may not be combined with on-the-fly headers' })
  t.equal((await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'public', 'x-waiter-cpus': '0.2' } })).status, 401, 'nor does it let an anonymous caller change the description')
  t.equal((await post(router, 'alice', { token: 'public-params', ...kitchenToken({ version: 'p' }), authentication: 'disabled', 'permitted-user': '*', 'run-as-user': 'alice', 'allowed-params': ['FOO'] })).status, 200)
  t.equal((await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'public-params', 'x-waiter-param-foo': 'one' } })).status, 401, 'nor start versions of its own with params (each a new version)')
  t.equal((await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'public-params', 'x-waiter-param-foo': 'one', ...(await router.as('bob')) } })).status, 200, 'which a caller with credentials may')
  t.equal((await post(router, 'alice', { token: 'closed', ...kitchenToken({ version: 'v2' }), 'run-as-user': 'alice' })).status, 200)
  t.equal((await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'closed' } })).status, 401, 'other tokens still need credentials')
})

t.test('while the issuer’s keys cannot be fetched, callers of an authentication: disabled token are served even with a bearer token; other tokens answer 503, not 401', async (t) => {
  // The tokens are written by a one-user router first: the JWT router below never gets its keys.
  const dataDir = t.testdir()
  const writer = await startRouter(t, {}, { dataDir })
  await createToken(writer, 'public', { ...kitchenToken(), authentication: 'disabled', 'permitted-user': '*', 'run-as-user': userInfo().username })
  await createToken(writer, 'closed', kitchenToken({ version: 'closed' }))
  await writer.app.stop()
  let fetches = 0
  const issuer = createServer((req, res) => {
    fetches++
    res.writeHead(503).end()
  })
  await new Promise<void>((resolve) => issuer.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => issuer.close(() => resolve())))
  const router = await startRouter(t, { 'auth.kind': 'jwt', 'auth.jwt.jwksUrl': `http://127.0.0.1:${(issuer.address() as AddressInfo).port}/jwks.json`, 'auth.jwt.issuer': ISSUER, 'auth.jwt.audience': AUDIENCE }, { dataDir })
  const bearer = { authorization: `Bearer ${await mint(await signingKey('ES256', 'k'), { sub: 'alice' })}` }
  for (let i = 0; i < 3; i++) {
    const reply = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'public', ...bearer } })
    t.equal(reply.status, 200, `call ${i + 1} of the public token: served`)
  }
  const closed = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'closed', ...bearer } })
  t.match(waiterError(closed), { status: 503, code: 'MAITRE_AUTH_UNAVAILABLE' }, 'another token: the router’s trouble, said as such')
  t.equal(fetches, 1, 'and the failing issuer was asked once')
})

t.test('https-redirect and maintenance are answered before authentication', async (t) => {
  const router = await startJwtRouter(t)
  t.equal((await post(router, 'alice', { token: 'secure', ...kitchenToken(), 'https-redirect': true })).status, 200)
  const get = await call(`${router.url}/a/b?c=1`, { headers: { 'x-waiter-token': 'secure', host: 'secure.example:9091' } })
  t.equal(get.status, 301)
  t.equal(get.headers['location'], 'https://secure.example/a/b?c=1')
  const postReply = await call(`${router.url}/a`, { method: 'POST', headers: { 'x-waiter-token': 'secure', host: 'secure.example' }, body: 'x' })
  t.equal(postReply.status, 307, 'other methods keep their method and body: 307')
  const authenticated = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'secure', ...(await router.as('alice')) } })
  t.equal(authenticated.status, 301, 'authenticated or not')
  const behindTls = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'secure', 'x-forwarded-proto': 'https', ...(await router.as('alice')) } })
  t.equal(behindTls.status, 200, 'a request that came in over https (a TLS terminator said so) is served')

  t.equal((await post(router, 'alice', { token: 'down', ...kitchenToken(), maintenance: { message: 'back at noon' } })).status, 200)
  const down = await call(`${router.url}/x`, { headers: { 'x-waiter-token': 'down' } })
  t.match(waiterError(down), { status: 503, 'error-class': 'waiter.Maintenance', message: 'back at noon' })
})

t.test('one-user (the default) sets the x-waiter-auth cookie like any authenticator', async (t) => {
  const router = await startRouter(t)
  const reply = await call(`${router.url}/tokens`)
  t.equal(reply.status, 200)
  t.match((reply.headers['set-cookie'] as string[])[0], /^x-waiter-auth=[A-Za-z0-9_-]+; Max-Age=86400; Path=\/; HttpOnly/)
})

t.test('CORS: preflights are answered before authentication by the token’s cors-rules (Waiter’s headers, 403 classes); cross-origin calls need a rule too', async (t) => {
  const router = await startJwtRouter(t)
  const rules = [{ 'origin-regex': 'https://app\\.example', 'target-path-regex': '/api/.*', methods: ['GET', 'POST'] }]
  t.equal((await post(router, 'alice', { token: 'shop.example', ...kitchenToken(), 'cors-rules': rules, 'permitted-user': '*' })).status, 200)
  const preflight = (origin: string, method: string, path = '/api/items'): Promise<Reply> =>
    call(`${router.url}${path}`, { method: 'OPTIONS', headers: { host: 'shop.example', origin, 'access-control-request-method': method, 'access-control-request-headers': 'content-type' } })
  const allowed = await preflight('https://app.example', 'POST')
  t.equal(allowed.status, 200, 'no credentials needed for a preflight')
  t.match(allowed.headers, {
    'access-control-allow-origin': 'https://app.example',
    'access-control-allow-credentials': 'true',
    'access-control-allow-methods': 'GET, POST',
    'access-control-allow-headers': 'content-type',
    'access-control-max-age': '3600',
  })
  for (const [what, origin, method, path] of [
    ['another origin', 'https://evil.example', 'POST', '/api/items'],
    ['a prefix of the pattern is no match', 'https://app.example.evil.com', 'POST', '/api/items'],
    ['a method the rule does not name', 'https://app.example', 'DELETE', '/api/items'],
    ['a path outside the rule', 'https://app.example', 'GET', '/admin'],
  ] as const) {
    const reply = await preflight(origin, method, path)
    t.match(waiterError(reply), { status: 403, 'error-class': 'waiter.CorsPreflightForbidden' }, what)
  }
  const sameOrigin = await call(`${router.url}/api/x`, { method: 'OPTIONS', headers: { host: 'shop.example', origin: 'http://shop.example', 'access-control-request-method': 'PUT' } })
  t.equal(sameOrigin.status, 200, 'a page of the service’s own origin needs no rule')

  const auth = await router.as('bob')
  const actual = await call(`${router.url}/api/items`, { headers: { host: 'shop.example', origin: 'https://app.example', ...auth } })
  t.equal(actual.status, 200)
  t.equal(actual.headers['access-control-allow-origin'], 'https://app.example')
  t.equal(actual.headers['access-control-allow-credentials'], 'true')
  // An app with CORS of its own (any origin): the token's answer wins, as Waiter's does; a
  // credentialed call with "*" next to allow-credentials is one browsers refuse.
  const own = await call(`${router.url}/api/items`, { headers: { host: 'shop.example', origin: 'https://app.example', 'x-kitchen-own-cors': 'true', ...auth } })
  t.equal(own.headers['access-control-allow-origin'], 'https://app.example', 'the token’s origin over the app’s *')
  t.equal(own.headers['access-control-allow-credentials'], 'true')
  t.equal(own.headers['vary'], 'Accept-Encoding, Origin', 'the app’s Vary kept, Origin added')
  const refused = await call(`${router.url}/api/items`, { headers: { host: 'shop.example', origin: 'https://evil.example', ...auth } })
  t.match(waiterError(refused), { status: 403, 'error-class': 'waiter.CorsRequestForbidden' })

  const apiPreflight = await call(`${router.url}/token`, { method: 'OPTIONS', headers: { origin: 'https://app.example', 'access-control-request-method': 'POST' } })
  t.match(waiterError(apiPreflight), { status: 403, 'error-class': 'waiter.CorsPreflightForbidden' }, 'the API has no rules: other origins are refused')
  const apiCall = await call(`${router.url}/tokens`, { headers: { origin: 'https://app.example', ...auth } })
  t.match(waiterError(apiCall), { status: 403, 'error-class': 'waiter.CorsRequestForbidden' }, 'so a page elsewhere cannot spend a caller’s cookie on the API')
  const backref = await post(router, 'alice', { token: 'slow', ...kitchenToken(), 'cors-rules': [{ 'origin-regex': '(a)\\1' }] })
  t.match(waiterError(backref), { status: 400, message: /origin-regex "\(a\)\\\\1" is not a valid regular expression \(RE2 syntax/ }, 'RE2 syntax: no backreferences')
  // Patterns a backtracking engine takes seconds to minutes on (here, about 2^500 paths): RE2 is linear.
  const slow = ['(a|a)*b', '(a+)+b', 'a*a*a*a*a*a*b', '.*.*.*.*.*.*=']
  t.equal((await post(router, 'alice', { token: 'slow.example', ...kitchenToken(), 'permitted-user': '*', 'cors-rules': slow.map((p) => ({ 'origin-regex': p })) })).status, 200)
  for (const origin of ['a'.repeat(250), `https://${'a'.repeat(240)}`]) {
    const reply = await call(`${router.url}/x`, { method: 'OPTIONS', headers: { host: 'slow.example', origin, 'access-control-request-method': 'GET' } })
    t.equal(reply.status, 403, `a ${origin.length}-character origin against ${slow.join(', ')}: answered, not stalled`)
  }
  t.equal((await call(`${router.url}/x`, { method: 'OPTIONS', headers: { host: 'slow.example', origin: `${'a'.repeat(200)}b`, 'access-control-request-method': 'GET' } })).status, 200, 'and matched where it should')
})

t.test('the admin API on its own listener: the main one serves the data path and health checks only; state changes refuse GET', async (t) => {
  const router = await startRouter(t, { 'server.admin.host': '127.0.0.1', 'server.admin.port': 0 })
  const admin = router.app.adminUrl() as string
  t.match(admin, /^http:\/\/127\.0\.0\.1:\d+$/)
  t.not(admin, router.url)
  const created = await call(`${admin}/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: 'kitchen', ...kitchenToken() }) })
  t.equal(created.status, 200, 'the API on the admin listener')
  for (const path of ['/token?token=kitchen', '/tokens', '/apps', '/settings', '/state', '/metrics', '/waiter-ping', '/']) {
    t.equal((await call(`${router.url}${path}`)).status, 404, `${path} is not on the main listener`)
  }
  for (const path of ['/status', '/livez', '/readyz']) t.equal((await call(`${router.url}${path}`)).status, 200, `${path} is`)
  const proxied = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'kitchen', 'x-waiter-debug': 'true' } })
  t.equal(proxied.status, 200, 'and the data path is')
  const serviceId = proxied.headers['x-waiter-service-id'] as string
  for (const path of [`/apps/${serviceId}/suspend`, `/apps/${serviceId}/resume`, `/apps/${serviceId}/instance/x/kill`, `/apps/${serviceId}/instance/x/expire`]) {
    const reply = await call(`${admin}${path}`)
    t.equal(reply.status, 405, `GET ${path}`)
  }
  t.equal((await call(`${admin}/apps/${serviceId}`, { method: 'PUT' })).status, 405)
})


t.test('maitre’s own CLI authenticates to a JWT router with MAITRE_AUTH_TOKEN', async (t) => {
  const router = await startJwtRouter(t)
  await post(router, 'alice', { token: 'shop', ...kitchenToken() })
  const run = async (env: Record<string, string>): Promise<{ code: number; out: string; err: string }> => {
    const out: string[] = []
    const err: string[] = []
    const code = await runCli(['token', 'list', '--json', '--router', router.url], env, { out: (s) => void out.push(s), err: (s) => void err.push(s), stopSignal: () => new Promise<void>(() => undefined) })
    return { code, out: out.join(''), err: err.join('') }
  }
  const anonymous = await run({})
  t.equal(anonymous.code, 1)
  t.match(anonymous.err, /401: Authentication required/)
  const bearer = (await router.as('alice'))['authorization']?.slice('Bearer '.length) as string
  const listed = await run({ MAITRE_AUTH_TOKEN: bearer })
  t.equal(listed.code, 0, listed.err)
  t.same((JSON.parse(listed.out) as { token: string; owner: string }[]).map((x) => [x.token, x.owner]), [['shop', 'alice']])
})

t.test('what a request merges is judged as a whole: tokens joined in x-waiter-token cannot lend each other run-as, permitted-user or authentication: disabled', async (t) => {
  const router = await startJwtRouter(t)
  t.equal((await post(router, 'alice', { token: 'private', ...kitchenToken({ env: { SECRET_FLAVOUR: 'alice-only' } }), 'run-as-user': 'alice', 'permitted-user': 'alice' })).status, 200)
  t.equal((await post(router, 'bob', { token: 'opener', 'permitted-user': '*' })).status, 200)
  const bobDirect = await call(`${router.url}/environment`, { headers: { 'x-waiter-token': 'private', ...(await router.as('bob')) } })
  t.match(waiterError(bobDirect), { status: 403, code: 'MAITRE_NOT_PERMITTED' })
  const bobJoined = await call(`${router.url}/environment`, { headers: { 'x-waiter-token': 'private,opener', ...(await router.as('bob')) } })
  t.match(waiterError(bobJoined), { status: 403, code: 'MAITRE_CANNOT_RUN_AS', message: 'Authenticated user cannot run service' }, 'a later token’s permitted-user does not open an earlier token’s service to bob')

  t.equal((await post(router, 'bob', { token: 'bobs', ...kitchenToken({ version: 'bob-v1' }), 'run-as-user': 'bob' })).status, 200)
  t.equal((await post(router, 'alice', { token: 'mine', version: 'alice-v1' })).status, 200)
  const aliceAsBob = await call(`${router.url}/environment`, { headers: { 'x-waiter-token': 'bobs,mine', ...(await router.as('alice')) } })
  t.match(waiterError(aliceAsBob), { status: 403, message: 'Authenticated user cannot run service' }, 'alice cannot run her changes as bob')
  const aliceBobsAlone = await call(`${router.url}/environment`, { headers: { 'x-waiter-token': 'bobs', ...(await router.as('alice')) } })
  t.match(waiterError(aliceBobsAlone), { status: 403, message: 'Authenticated user cannot run service' }, 'bob’s token says who it runs as but not who may call it: only bob')

  t.equal((await post(router, 'alice', { token: 'public', ...kitchenToken({ version: 'pub' }), authentication: 'disabled', 'permitted-user': '*', 'run-as-user': 'alice' })).status, 200)
  t.equal((await call(`${router.url}/environment`, { headers: { 'x-waiter-token': 'public,bobs' } })).status, 401, 'an anonymous caller cannot ride a public token into bob’s')
  t.equal((await call(`${router.url}/environment`, { headers: { 'x-waiter-token': 'bobs,public' } })).status, 401, 'in either order')
  const info = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'public', 'x-waiter-debug': 'true', ...(await router.as('bob')) } })
  t.equal(info.json<{ headers: Record<string, string> }>().headers['x-waiter-auth-principal'], undefined, 'a public service hears of no principal, even one who proved itself')
  const byId = await call(`${router.url}/request-info`, { headers: { 'x-waiter-service-id': info.headers['x-waiter-service-id'] as string, ...(await router.as('bob')) } })
  t.equal(byId.json<{ headers: Record<string, string> }>().headers['x-waiter-auth-principal'], undefined, 'nor when it is called by id')
  t.equal((await call(`${router.url}/request-info`, { headers: { 'x-waiter-service-id': info.headers['x-waiter-service-id'] as string } })).status, 401, 'though by id it is not public')

  t.equal((await post(router, 'alice', { token: 'params', ...kitchenToken({ version: 'p' }), 'allowed-params': ['FOO'], 'run-as-user': 'alice', 'permitted-user': '*' })).status, 200)
  for (let i = 0; i < 5; i++) t.equal((await call(`${router.url}/x`, { headers: { 'x-waiter-token': 'params', 'x-waiter-param-foo': `v${i}` } })).status, 401)
  const recorded = (await call(`${router.url}/apps`, { headers: await router.as('root') })).json<{ 'service-description': Record<string, unknown> }[]>()
  t.notOk(recorded.some((a) => JSON.stringify(a['service-description']).includes('"FOO"')), 'callers who proved nothing recorded no version')
})

t.test('a token that runs as its requester gives each requester a version of its own, run as them and managed by them alone', async (t) => {
  const router = await startJwtRouter(t)
  t.equal((await post(router, 'alice', { token: 'shared', ...kitchenToken(), 'permitted-user': '*' })).status, 200)
  const idOf = async (user: string): Promise<string> => (await call(`${router.url}/service-id`, { headers: { 'x-waiter-token': 'shared', ...(await router.as(user)) } })).text
  const alices = await idOf('alice')
  const bobs = await idOf('bob')
  t.not(alices, bobs, 'two requesters, two versions')
  const env = await call(`${router.url}/environment`, { headers: { 'x-waiter-token': 'shared', ...(await router.as('bob')) } })
  t.equal(env.json()['USER'], 'bob', 'bob’s runs as bob')
  const app = (await call(`${router.url}/apps/${bobs}`, { headers: await router.as('bob') })).json<{ 'service-description': Record<string, unknown> }>()
  t.match(app['service-description'], { 'run-as-user': 'bob', 'permitted-user': 'bob' }, 'and says so')
  t.match(waiterError(await call(`${router.url}/apps/${alices}`, { method: 'DELETE', headers: await router.as('bob') })), { status: 403, code: 'MAITRE_NOT_SERVICE_MANAGER' }, 'bob cannot stop alice’s, though his token is a copy')
  t.match(waiterError(await call(`${router.url}/request-info`, { headers: { 'x-waiter-service-id': alices, ...(await router.as('bob')) } })), { status: 403, code: 'MAITRE_NOT_PERMITTED' }, 'nor call it by id')
  const history = (await call(`${router.url}/token-history?token=shared`, { headers: await router.as('bob') })).json<{ 'service-id': string }[]>()
  t.equal(history[0]?.['service-id'], bobs, 'the token’s history shows the caller’s own version')
})

t.test('a version addressed by id is still its tokens’: maintenance holds, and a fallback target admits only its own callers', async (t) => {
  const router = await startJwtRouter(t)
  t.equal((await post(router, 'alice', { token: 'mm', ...kitchenToken(), 'run-as-user': 'alice', 'permitted-user': '*' })).status, 200)
  const serviceId = (await call(`${router.url}/service-id`, { headers: { 'x-waiter-token': 'mm', ...(await router.as('alice')) } })).text
  t.equal((await post(router, 'alice', { token: 'mm', ...kitchenToken(), 'run-as-user': 'alice', 'permitted-user': '*', maintenance: { message: 'down for now' } })).status, 200)
  for (const headers of [{ 'x-waiter-service-id': serviceId }, { 'x-waiter-token': `^SERVICE-ID#${serviceId}` }]) {
    t.match(waiterError(await call(`${router.url}/request-info`, { headers: { ...headers, ...(await router.as('bob')) } })), { status: 503, 'error-class': 'waiter.Maintenance', message: 'down for now' })
  }

  t.equal((await post(router, 'alice', { token: 'fb', ...kitchenToken({ version: 'v1' }), 'run-as-user': 'alice', 'permitted-user': 'alice' })).status, 200)
  const v1 = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'fb', 'x-waiter-debug': 'true', ...(await router.as('alice')) } })
  t.equal(v1.status, 200)
  // v2 never becomes healthy, opens the token to everyone: within the fallback period, v1 still serves.
  t.equal((await post(router, 'alice', { token: 'fb', ...kitchenToken({ version: 'v2', cmd: 'exit 1' }), 'run-as-user': 'alice', 'permitted-user': '*', authentication: 'disabled' })).status, 200)
  const aliceNow = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'fb', 'x-waiter-debug': 'true', ...(await router.as('alice')) } })
  t.equal(aliceNow.headers['x-waiter-service-id'], v1.headers['x-waiter-service-id'], 'alice falls back to v1')
  for (const [who, headers] of [['bob', await router.as('bob')], ['an anonymous caller', {}]] as const) {
    const reply = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'fb', 'x-waiter-debug': 'true', 'x-waiter-queue-timeout': '2000', ...headers } })
    t.not(reply.status, 200, `${who} is not served by v1, which admits alice only`)
    t.not(reply.headers['x-waiter-service-id'], v1.headers['x-waiter-service-id'])
  }
})

t.test('a public token being edited falls back for anonymous callers too: its previous version, public as well, serves them meanwhile', async (t) => {
  const router = await startJwtRouter(t)
  const open = { 'run-as-user': 'alice', 'permitted-user': '*', authentication: 'disabled' }
  t.equal((await post(router, 'alice', { token: 'pub', ...kitchenToken({ version: 'v1' }), ...open })).status, 200)
  const v1 = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'pub', 'x-waiter-debug': 'true' } })
  t.equal(v1.status, 200, 'v1 serves anonymous callers')
  // v2 never becomes healthy: within the fallback period, v1 still serves everyone it served.
  t.equal((await post(router, 'alice', { token: 'pub', ...kitchenToken({ version: 'v2', cmd: 'exit 1' }), ...open })).status, 200)
  for (const [who, headers] of [['alice', await router.as('alice')], ['an anonymous caller', {}]] as const) {
    const reply = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'pub', 'x-waiter-debug': 'true', 'x-waiter-queue-timeout': '2000', ...headers } })
    t.equal(reply.status, 200, `${who} is served`)
    t.equal(reply.headers['x-waiter-service-id'], v1.headers['x-waiter-service-id'], `${who}: by v1, not left waiting on v2`)
  }
  t.equal((await call(`${router.url}/request-info`, { headers: { 'x-waiter-service-id': String(v1.headers['x-waiter-service-id']) } })).status, 401, 'by id, an anonymous caller still reaches nothing')
})

t.test('with an admin listener, the main one still carries the routers’ peer calls; hard delete takes an admin', async (t) => {
  const router = await startJwtRouter(t, { 'server.admin.host': '127.0.0.1', 'server.admin.port': 0 })
  const peer = await call(`${router.url}/maitre-peer/wants`, { method: 'POST', body: '{}' })
  t.equal(peer.status, 404, 'a single router has no peers, and says so from its peer handler')
  t.match(peer.json(), { 'waiter-error': { code: 'MAITRE_NOT_FOUND', message: 'This router is not in a cluster: it has no peers' } })
  const admin = router.app.adminUrl() as string
  const created = await call(`${admin}/token`, { method: 'POST', headers: { 'content-type': 'application/json', ...(await router.as('alice')) }, body: JSON.stringify({ token: 'gone', ...kitchenToken() }) })
  const etag = created.headers['etag'] as string
  const hard = await call(`${admin}/token?token=gone&hard-delete=true`, { method: 'DELETE', headers: { 'if-match': etag, ...(await router.as('alice')) } })
  t.match(waiterError(hard), { status: 403, code: 'MAITRE_ADMIN_ONLY', message: 'Cannot hard-delete token' }, 'the owner may not hard-delete')
  t.equal((await call(`${admin}/token?token=gone&hard-delete=true`, { method: 'DELETE', headers: { 'if-match': etag, ...(await router.as('root')) } })).status, 200, 'an admin may')
})

t.test('an editor edits a token that runs as its owner: Waiter asks the run-as rule of owners, not editors (who cannot change run-as-user)', async (t) => {
  const router = await startJwtRouter(t)
  t.equal((await post(router, 'alice', { token: 'shop', ...kitchenToken(), 'run-as-user': 'alice', 'permitted-user': '*', editor: 'bob' })).status, 200)
  const edit = await post(router, 'bob', { token: 'shop', ...kitchenToken({ version: 'v2' }), 'run-as-user': 'alice', 'permitted-user': '*', editor: 'bob' })
  t.equal(edit.status, 200, 'the editor changes the description')
  const takeOver = await post(router, 'bob', { token: 'shop', ...kitchenToken({ version: 'v3' }), 'run-as-user': 'bob', 'permitted-user': '*', editor: 'bob' })
  t.match(waiterError(takeOver), { status: 403, message: 'An editor cannot change run-as-user of token shop' }, 'but not whom it runs as')
  const carol = await post(router, 'carol', { token: 'shop', ...kitchenToken({ version: 'v4' }), 'run-as-user': 'alice', 'permitted-user': '*' })
  t.equal(carol.status, 403, 'and nobody else edits it')
})

t.test('a token deleted and created again by someone else starts afresh: no fallback to the deleted token’s versions, which run as their old owner', async (t) => {
  const router = await startJwtRouter(t)
  t.equal((await post(router, 'alice', { token: 'app', ...kitchenToken(), 'run-as-user': 'alice', 'permitted-user': '*' })).status, 200)
  const alices = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'app', ...(await router.as('alice')) } })
  t.equal(alices.status, 200, 'alice’s version runs')
  t.equal((await call(`${router.url}/token?token=app`, { method: 'DELETE', headers: await router.as('alice') })).status, 200)
  t.equal((await post(router, 'bob', { token: 'app', cmd: 'exec sleep 600', cpus: 0.1, mem: 64, version: 'bob', 'health-check-url': '/never' })).status, 200, 'bob creates the name again')
  const bobs = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'app', 'x-waiter-queue-timeout': '1500', ...(await router.as('bob')) } })
  t.equal(bobs.status, 503, 'bob’s request waits for bob’s version, which never comes up, rather than reach alice’s running one')
})

t.test('a caller of a preauthorized token may set its allowed params: x-waiter-param-* does not take the token’s run-as-user away', async (t) => {
  const router = await startJwtRouter(t)
  t.equal((await post(router, 'alice', { token: 'pp', ...kitchenToken(), 'run-as-user': 'alice', 'permitted-user': '*', 'allowed-params': ['FOO'] })).status, 200)
  t.equal((await call(`${router.url}/service-id`, { headers: { 'x-waiter-token': 'pp', ...(await router.as('bob')) } })).status, 200, 'bob may call it')
  const withParam = await call(`${router.url}/service-id`, { headers: { 'x-waiter-token': 'pp', 'x-waiter-param-foo': 'bar', ...(await router.as('bob')) } })
  t.equal(withParam.status, 200, 'and give it an allowed param')
  const env = await call(`${router.url}/environment`, { headers: { 'x-waiter-token': 'pp', 'x-waiter-param-foo': 'bar', ...(await router.as('bob')) } })
  t.match(env.json(), { FOO: 'bar', USER: 'alice' }, 'the version sees the param and still runs as alice')
  const notAllowed = await call(`${router.url}/service-id`, { headers: { 'x-waiter-token': 'pp', 'x-waiter-param-bar': 'x', ...(await router.as('bob')) } })
  t.equal(notAllowed.status, 400, 'a param the token does not allow is still refused')
})

t.test('update-mode=admin always writes: a change of system metadata alone (deleted, last-update-user) is no no-op', async (t) => {
  const router = await startJwtRouter(t)
  t.equal((await post(router, 'alice', { token: 'sync', ...kitchenToken() })).status, 200)
  const etag = (await call(`${router.url}/token?token=sync`, { headers: await router.as('root') })).headers['etag'] as string
  const write = await post(router, 'root', { token: 'sync', ...kitchenToken(), owner: 'alice', deleted: true }, '?update-mode=admin', { 'if-match': etag })
  t.equal(write.headers['x-waiter-operation-result'], 'token-updated', 'the write is applied')
  t.equal((await call(`${router.url}/token?token=sync`, { headers: await router.as('root') })).status, 404, 'and the token is soft-deleted, as token sync relies on')
  const same = await post(router, 'alice', { token: 'plain', ...kitchenToken() })
  t.equal(same.status, 200)
  t.equal((await post(router, 'alice', { token: 'plain', ...kitchenToken() })).headers['x-waiter-operation-result'], 'token-no-op', 'an ordinary write that changes nothing stays a no-op')
})

t.test('a router bound to every interface serves its own API to a request naming it by an interface address (a kubelet probing the pod IP), not as a token', async (t) => {
  const { networkInterfaces } = await import('node:os')
  const address = Object.values(networkInterfaces()).flat().find((i) => i !== undefined && !i.internal && i.family === 'IPv4')?.address
  if (address === undefined) {
    t.comment('this machine has no interface but loopback: nothing to check')
    return
  }
  const router = await startJwtRouter(t, { 'server.host': '0.0.0.0' })
  const port = new URL(router.url).port
  for (const path of ['/readyz', '/livez', '/status']) {
    const reply = await call(`${router.url}${path}`, { headers: { host: `${address}:${port}` } })
    t.equal(reply.status, 200, `${path} by ${address}`)
  }
  const apps = await call(`${router.url}/apps`, { headers: { host: `${address}:${port}`, ...(await router.as('root')) } })
  t.equal(apps.status, 200, 'and the API answers there as on localhost')
  t.same(apps.json(), [])
})
