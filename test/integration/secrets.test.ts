/**
 * Secrets stay secret: the router secret, the instance password and the Authorization header
 * instances get, callers' bearer tokens and x-waiter-auth cookies, and the JWT signing key never
 * appear in /settings, /state, /apps, /tokens, /metrics, error bodies or the router's log (at
 * trace level), whatever the test makes the router do.
 */
import t from 'tap'
import { PassThrough } from 'node:stream'
import { join } from 'node:path'
import { exportJWK } from 'jose'
import { createLogger } from '../../src/log.ts'
import { call, kitchenToken, startRouter, waitFor } from '../fixtures/router.ts'
import { AUDIENCE, ISSUER, mint, signingKey, writeJwks } from '../fixtures/jwt.ts'

const ROUTER_SECRET = 'PLANTED-router-secret-7f3a9c'

t.test('no secret appears in any answer the router gives or any line it logs', async (t) => {
  const logText: string[] = []
  const sink = new PassThrough()
  sink.on('data', (chunk: Buffer) => logText.push(chunk.toString('utf8')))
  const key = await signingKey('RS256', 'k')
  const file = join(t.testdir(), 'jwks.json')
  writeJwks(file, [key])
  const router = await startRouter(t, {
    secret: ROUTER_SECRET,
    'auth.kind': 'jwt',
    'auth.admins': ['root'],
    'auth.jwt.jwksFile': file,
    'auth.jwt.issuer': ISSUER,
    'auth.jwt.audience': AUDIENCE,
    'log.level': 'trace',
  }, { log: createLogger('trace', sink) })
  const bearer = await mint(key, { sub: 'root' })
  const auth = { authorization: `Bearer ${bearer}` }
  const answers: string[] = []
  const get = async (path: string, headers: Record<string, string> = auth, method = 'GET', body: string | null = null): Promise<string> => {
    const reply = await call(`${router.url}${path}`, { method, headers: { 'content-type': 'application/json', ...headers }, body })
    // Set-Cookie hands the caller its own cookie: that is its purpose, not a leak.
    const { 'set-cookie': _own, ...headersShown } = reply.headers
    const text = `${reply.status} ${JSON.stringify(headersShown)}\n${reply.text}`
    answers.push(`${method} ${path}: ${text}`)
    return reply.text
  }

  await get('/token', auth, 'POST', JSON.stringify({ token: 'kitchen', ...kitchenToken({ env: { FLAVOUR: 'plain' } }) }))
  const env = JSON.parse(await get('/environment', { ...auth, 'x-waiter-token': 'kitchen' })) as Record<string, string>
  const instancePassword = env['WAITER_PASSWORD'] as string
  t.match(instancePassword, /^[0-9a-f]{16,}$/, 'the instance got its password (it alone may see it)')
  const info = JSON.parse(await get('/request-info', { ...auth, 'x-waiter-token': 'kitchen' })) as { headers: Record<string, string> }
  const instanceAuthorization = info.headers['authorization'] as string
  t.match(instanceAuthorization, /^Basic /, 'and the router authenticates to it')
  answers.length = 0 // what the instance itself answered may hold its own secrets; the router’s answers may not

  const cookieReply = await call(`${router.url}/tokens`, { headers: auth })
  const cookie = ((cookieReply.headers['set-cookie'] as string[])[0] as string).split(';')[0] as string
  const sealed = cookie.slice('x-waiter-auth='.length)
  const serviceId = JSON.parse(await get('/apps')).map((a: { 'service-id': string }) => a['service-id'])[0] as string
  t.ok(serviceId !== undefined, 'a version runs')

  await get('/settings')
  const state = JSON.parse(await get('/state')) as { details: Record<string, string> }
  for (const path of Object.values(state.details)) await get(path)
  await get(`/state/${serviceId}`)
  await get('/state/maintainer')
  await get(`/apps/${serviceId}?effective-parameters=true`)
  await get('/apps?effective-parameters=true')
  await get('/token?token=kitchen&include=metadata')
  await get('/tokens?include=metadata')
  await get('/token-history?token=kitchen')
  await get('/metrics')
  await get('/waiter-ping', { ...auth, 'x-waiter-token': 'kitchen' })
  await get(`/apps/${serviceId}/logs?instance-id=nope`, { cookie })
  // Failures, carrying credentials the router must not echo.
  await get('/tokens', { authorization: `Bearer ${bearer.slice(0, -5)}xxxxx` })
  await get('/tokens', { authorization: `Bearer ${ROUTER_SECRET}` })
  await get('/tokens', { cookie: `x-waiter-auth=${sealed}x` })
  await get('/anything', { ...auth, 'x-waiter-token': 'nope' })
  await get('/anything', { ...auth, 'x-waiter-token': 'kitchen', 'x-waiter-cpus': 'lots' })
  await get('/token', auth, 'POST', JSON.stringify({ token: 'kitchen', cmd: 42 }))
  await get('/token', { authorization: `Bearer ${bearer}x` }, 'POST', '{}')
  await get('/nope', { cookie })
  await get('/bad-status?status=502', { ...auth, 'x-waiter-token': 'kitchen' })
  await get('/die', { ...auth, 'x-waiter-token': 'kitchen' })
  await waitFor('the log to hold the requests', () => (logText.join('').includes('request completed') ? true : undefined))

  const privateD = (await exportJWK(key.privateKey)).d as string
  t.match(privateD, /^[A-Za-z0-9_-]{40,}$/, 'the signing key’s private part, to search for')
  const secrets: Record<string, string> = {
    'router secret': ROUTER_SECRET,
    'instance password': instancePassword,
    'instance Authorization header': instanceAuthorization.slice('Basic '.length),
    'bearer token': bearer,
    'bearer signature': bearer.split('.')[2] as string,
    'auth cookie': sealed,
    'JWT private key': privateD,
  }
  const places: Record<string, string> = { answers: answers.join('\n'), log: logText.join('') }
  t.ok(places['answers'] !== undefined && places['answers'].length > 10_000, `${answers.length} answers to search`)
  t.ok((places['log'] ?? '').split('\n').length > 10, `and a log of the router's work (${(places['log'] ?? '').split('\n').length} lines)`)
  for (const [place, text] of Object.entries(places)) {
    for (const [name, secret] of Object.entries(secrets)) {
      t.notOk(text.includes(secret), `the ${name} is nowhere in the ${place}`)
    }
  }
})
