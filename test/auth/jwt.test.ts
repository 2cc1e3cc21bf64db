import t from 'tap'
import { writeFileSync } from 'node:fs'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { IncomingMessage } from 'node:http'
import { join } from 'node:path'
import { SignJWT } from 'jose'
import { jwtAuthenticator, type JwtOptions } from '../../src/auth/jwt.ts'
import { oneUserAuthenticator } from '../../src/auth/authenticator.ts'
import type { Authenticator } from '../../src/auth/authenticator.ts'
import { MaitreError } from '../../src/errors.ts'
import { ManualClock } from '../fixtures/manual-clock.ts'
import { waitFor } from '../fixtures/router.ts'
import { AUDIENCE, ISSUER, mint, signingKey, writeJwks, type SigningKey } from '../fixtures/jwt.ts'

const request = (headers: Record<string, string>, remoteAddress = '127.0.0.1'): IncomingMessage => ({ headers, socket: { remoteAddress } }) as unknown as IncomingMessage

const options = (extra: Partial<JwtOptions>): JwtOptions => ({
  jwksFile: null,
  jwksUrl: null,
  issuer: ISSUER,
  audience: AUDIENCE,
  clockSkewSecs: 60,
  subjectClaim: 'sub',
  admins: new Set(['root']),
  ...extra,
})

async function refusal(auth: Authenticator, headers: Record<string, string>): Promise<MaitreError> {
  try {
    await auth.authenticate(request(headers))
  } catch (err) {
    if (err instanceof MaitreError) return err
    throw err
  }
  throw new Error('authenticated, but should not have been')
}

t.test('RS256, ES256 and EdDSA tokens from the JWKS file authenticate their subject; admins are named in config', async (t) => {
  const clock = new ManualClock(Date.now())
  const keys = await Promise.all([signingKey('RS256', 'rsa'), signingKey('ES256', 'ec'), signingKey('EdDSA', 'ed')])
  const file = join(t.testdir(), 'jwks.json')
  writeJwks(file, keys)
  const auth = jwtAuthenticator(options({ jwksFile: file }), clock)
  for (const key of keys) {
    const who = await auth.authenticate(request({ authorization: `Bearer ${await mint(key, { sub: `user-${key.alg}`, now: clock.now() })}` }))
    t.same(who, { user: `user-${key.alg}`, admin: false, method: 'jwt', expiresAt: (Math.floor(clock.now() / 1000) + 3600) * 1000 }, `${key.alg}, and the proof lapses with its exp`)
  }
  const admin = await auth.authenticate(request({ authorization: `bearer ${await mint(keys[0] as SigningKey, { sub: 'root', now: clock.now() })}` }))
  t.equal(admin.admin, true, 'a principal of auth.admins is an admin (and the scheme is case-insensitive)')
})

t.test('every way a token can be wrong is a 401 with a Bearer challenge, never another failure', async (t) => {
  const clock = new ManualClock(Date.now())
  const key = await signingKey('ES256', 'k1')
  const stranger = await signingKey('ES256', 'k1') // same kid, other key: a forgery
  const file = join(t.testdir(), 'jwks.json')
  writeJwks(file, [key])
  const auth = jwtAuthenticator(options({ jwksFile: file }), clock)
  const now = clock.now()
  const cases: [string, Record<string, string>, string][] = [
    ['no credentials', {}, 'missing-credentials'],
    ['Basic credentials', { authorization: 'Basic YWxpY2U6c2VjcmV0' }, 'not-bearer'],
    ['signed by another key', { authorization: `Bearer ${await mint(stranger, { sub: 'alice', now })}` }, 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED'],
    ['expired beyond the leeway', { authorization: `Bearer ${await mint(key, { sub: 'alice', now, expiresIn: -61 })}` }, 'ERR_JWT_EXPIRED'],
    ['not valid before beyond the leeway', { authorization: `Bearer ${await mint(key, { sub: 'alice', now, notBeforeIn: 120 })}` }, 'ERR_JWT_CLAIM_VALIDATION_FAILED'],
    ['another issuer', { authorization: `Bearer ${await mint(key, { sub: 'alice', now, iss: 'https://evil.test' })}` }, 'ERR_JWT_CLAIM_VALIDATION_FAILED'],
    ['another audience', { authorization: `Bearer ${await mint(key, { sub: 'alice', now, aud: 'other' })}` }, 'ERR_JWT_CLAIM_VALIDATION_FAILED'],
    ['no subject', { authorization: `Bearer ${await mint(key, { now })}` }, 'no-principal'],
    ['a subject headers cannot carry', { authorization: `Bearer ${await mint(key, { sub: 'алиса', now })}` }, 'no-principal'],
    ['a subject HTTP would trim into another', { authorization: `Bearer ${await mint(key, { sub: ' alice ', now })}` }, 'no-principal'],
    ['a wildcard of the rules as subject', { authorization: `Bearer ${await mint(key, { sub: '*', now })}` }, 'no-principal'],
    ['no expiry at all', { authorization: `Bearer ${await new SignJWT({ sub: 'alice' }).setProtectedHeader({ alg: 'ES256', kid: 'k1' }).setIssuer(ISSUER).setAudience(AUDIENCE).sign(key.privateKey)}` }, 'ERR_JWT_CLAIM_VALIDATION_FAILED'],
    ['garbage', { authorization: 'Bearer not.a.jwt' }, 'ERR_JWS_INVALID'],
  ]
  for (const [what, headers, reason] of cases) {
    const err = await refusal(auth, headers)
    t.equal(err.status, 401, what)
    t.equal(err.details['reason'], reason, `${what}: ${reason}`)
    t.match(err.headers['www-authenticate'], /^Bearer realm="maitre"/, `${what}: challenged`)
  }
  const rsa = await signingKey('RS256', 'rsa')
  writeJwks(file, [key, rsa])
  const good = await mint(rsa, { sub: 'alice', now })
  t.equal((await auth.authenticate(request({ authorization: `Bearer ${good}` }))).user, 'alice')
  // A 256-byte signature leaves 4 spare bits in its last base64url character: flip one of them.
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
  const respelled = `${good.slice(0, -1)}${alphabet[alphabet.indexOf(good.slice(-1)) ^ 1] as string}`
  t.same(Buffer.from(respelled.split('.')[2] as string, 'base64url'), Buffer.from(good.split('.')[2] as string, 'base64url'), 'the same signature bytes, spelled otherwise')
  t.equal((await refusal(auth, { authorization: `Bearer ${respelled}` })).details['reason'], 'ERR_JWS_INVALID', 'only the canonical spelling of a token is accepted')
  const within = await auth.authenticate(request({ authorization: `Bearer ${await mint(key, { sub: 'alice', now, expiresIn: -30 })}` }))
  t.equal(within.user, 'alice', 'expired 30 s ago is within the 60 s leeway')
})

t.test('the principal comes from auth.jwt.subjectClaim', async (t) => {
  const clock = new ManualClock(Date.now())
  const key = await signingKey('RS256', 'k')
  const file = join(t.testdir(), 'jwks.json')
  writeJwks(file, [key])
  const auth = jwtAuthenticator(options({ jwksFile: file, subjectClaim: 'email' }), clock)
  const who = await auth.authenticate(request({ authorization: `Bearer ${await mint(key, { sub: 'x', extra: { email: 'alice@example.com' }, now: clock.now() })}` }))
  t.equal(who.user, 'alice@example.com')
})

t.test('a JWKS file is re-read when it changes: a new key id works at once, a removed key stops working', async (t) => {
  const clock = new ManualClock(Date.now())
  const [a, b] = await Promise.all([signingKey('ES256', 'a'), signingKey('ES256', 'b')])
  const file = join(t.testdir(), 'jwks.json')
  writeJwks(file, [a as SigningKey])
  const auth = jwtAuthenticator(options({ jwksFile: file }), clock)
  const tokenB = await mint(b as SigningKey, { sub: 'bob', now: clock.now() })
  t.equal((await refusal(auth, { authorization: `Bearer ${tokenB}` })).details['reason'], 'ERR_JWKS_NO_MATCHING_KEY', 'key b is unknown')
  writeJwks(file, [a as SigningKey, b as SigningKey])
  t.equal((await auth.authenticate(request({ authorization: `Bearer ${tokenB}` }))).user, 'bob', 'the unknown key id made the router look again')
  const tokenA = await mint(a as SigningKey, { sub: 'alice', now: clock.now() })
  writeJwks(file, [b as SigningKey])
  clock.advance(1000)
  t.equal((await refusal(auth, { authorization: `Bearer ${tokenA}` })).status, 401, 'key a, revoked, no longer verifies')
  writeFileSync(file, '{ not json')
  clock.advance(1000)
  t.equal((await auth.authenticate(request({ authorization: `Bearer ${tokenB}` }))).user, 'bob', 'a broken rewrite keeps the keys it had')
})

/** An issuer's JWKS endpoint on 127.0.0.1: serves `served` (changeable), counts fetches, answers 500 while `down`. */
async function jwksIssuer(t: { teardown(fn: () => unknown): void }, first: SigningKey[]): Promise<{ url: string; served: SigningKey[]; fetches: () => number; setDown(down: boolean): void }> {
  const state = { served: first, fetches: 0, down: false }
  const server = createServer((req, res) => {
    state.fetches++
    if (state.down) return void res.writeHead(500).end()
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: state.served.map((k) => k.publicJwk) }))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())))
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/jwks.json`,
    get served() {
      return state.served
    },
    set served(keys: SigningKey[]) {
      state.served = keys
    },
    fetches: () => state.fetches,
    setDown: (down) => void (state.down = down),
  }
}

t.test('a JWKS URL is fetched, cached, and fetched again for an unknown key id; when it is down the answer is 503, not 401 or 500', async (t) => {
  const clock = new ManualClock(Date.now())
  const [a, b] = await Promise.all([signingKey('RS256', 'a'), signingKey('EdDSA', 'b')])
  const issuer = await jwksIssuer(t, [a as SigningKey])
  const auth = jwtAuthenticator(options({ jwksUrl: issuer.url, refetchCooldownMs: 0 }), clock)
  const tokenA = await mint(a as SigningKey, { sub: 'alice', now: clock.now() })
  t.equal((await auth.authenticate(request({ authorization: `Bearer ${tokenA}` }))).user, 'alice')
  t.equal((await auth.authenticate(request({ authorization: `Bearer ${tokenA}` }))).user, 'alice')
  t.equal(issuer.fetches(), 1, 'the key set is cached')
  issuer.served = [a as SigningKey, b as SigningKey]
  const tokenB = await mint(b as SigningKey, { sub: 'bob', now: clock.now() })
  t.equal((await auth.authenticate(request({ authorization: `Bearer ${tokenB}` }))).user, 'bob', 'an unknown kid fetched the set again')
  t.equal(issuer.fetches(), 2)
  issuer.setDown(true)
  const tokenC = await mint(await signingKey('ES256', 'c'), { sub: 'carol', now: clock.now() })
  const err = await refusal(auth, { authorization: `Bearer ${tokenC}` })
  t.equal(err.status, 503, 'the issuer’s keys are unreachable: the router’s trouble, said as such')
  t.equal(err.code, 'MAITRE_AUTH_UNAVAILABLE')
})

t.test('a JWKS URL that fails is asked at most once per cooldown however many tokens arrive, and the keys it gave keep verifying through its outage for up to a day', async (t) => {
  const clock = new ManualClock(Date.now())
  const [a, b] = await Promise.all([signingKey('RS256', 'a'), signingKey('EdDSA', 'b')])
  const issuer = await jwksIssuer(t, [a as SigningKey])
  const auth = jwtAuthenticator(options({ jwksUrl: issuer.url }), clock)
  const tokenA = await mint(a as SigningKey, { sub: 'alice', now: clock.now(), expiresIn: 3 * 86_400 })
  t.equal((await auth.authenticate(request({ authorization: `Bearer ${tokenA}` }))).user, 'alice')
  t.equal(issuer.fetches(), 1)

  issuer.setDown(true)
  const unknown = await mint(await signingKey('ES256', 'x'), { sub: 'mallory', now: clock.now() })
  clock.advance(5000)
  const refusals = await Promise.all(Array.from({ length: 50 }, () => refusal(auth, { authorization: `Bearer ${unknown}` })))
  t.same([...new Set(refusals.map((e) => e.status))], [503], 'an unknown key id while the issuer fails: 503, the router’s trouble')
  t.equal(issuer.fetches(), 2, '50 tokens naming unknown keys cost the issuer one fetch, not 50')
  for (let i = 0; i < 20; i++) await refusal(auth, { authorization: `Bearer ${unknown}` })
  t.equal(issuer.fetches(), 2, 'nor does a failed fetch let the next caller try again before the cooldown')
  clock.advance(5000)
  await refusal(auth, { authorization: `Bearer ${unknown}` })
  t.equal(issuer.fetches(), 3, 'one fetch per cooldown')

  clock.advance(11 * 60_000)
  t.equal((await auth.authenticate(request({ authorization: `Bearer ${tokenA}` }))).user, 'alice', 'past the 10-minute refresh, the known key still verifies while the issuer fails')
  await waitFor('the background refresh', () => (issuer.fetches() === 4 ? true : undefined), 5000)
  t.equal((await auth.authenticate(request({ authorization: `Bearer ${tokenA}` }))).user, 'alice', 'and after that refresh failed')
  t.equal(issuer.fetches(), 4, 'which is not tried again before the cooldown')

  clock.advance(86_400_000)
  t.equal((await refusal(auth, { authorization: `Bearer ${tokenA}` })).status, 503, 'a day after the last good fetch, the old keys verify nothing more')

  issuer.setDown(false)
  issuer.served = [b as SigningKey]
  clock.advance(5000)
  const tokenB = await mint(b as SigningKey, { sub: 'bob', now: clock.now() })
  t.equal((await auth.authenticate(request({ authorization: `Bearer ${tokenB}` }))).user, 'bob', 'the issuer back: its keys verify')
  t.match(await refusal(auth, { authorization: `Bearer ${tokenA}` }), { status: 401, details: { reason: 'ERR_JWKS_NO_MATCHING_KEY' } }, 'and a key it dropped is refused as the caller’s problem')
})

t.test('one-user trusts loopback callers only, unless remote callers are allowed on purpose', async (t) => {
  const strict = oneUserAuthenticator('me', { allowRemote: false })
  t.same(await strict.authenticate(request({}, '127.0.0.1')), { user: 'me', admin: true, method: 'one-user' })
  t.equal((await strict.authenticate(request({}, '::1'))).user, 'me')
  t.equal((await strict.authenticate(request({}, '::ffff:127.0.0.1'))).user, 'me')
  t.throws(() => strict.authenticate(request({}, '10.1.2.3')), { code: 'MAITRE_UNAUTHORIZED', status: 401 })
  t.throws(() => strict.authenticate(request({}, '::ffff:10.1.2.3')), { code: 'MAITRE_UNAUTHORIZED' })
  const open = oneUserAuthenticator('me', { allowRemote: true })
  t.equal((await open.authenticate(request({}, '10.1.2.3'))).user, 'me')
})
