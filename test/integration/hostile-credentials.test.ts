/**
 * Generated hostile credentials against a real JWT router (fast-check, seeded so a failure
 * replays): a few thousand JWTs and x-waiter-auth cookies that are wrong in every way we know of.
 * Every one must be a 401 or 403 with Waiter's JSON body; none may authenticate; the router must
 * neither crash nor answer a 5xx, and must still let a good token in afterwards.
 */
import t from 'tap'
import fc from 'fast-check'
import { join } from 'node:path'
import { exportSPKI, importJWK, SignJWT, base64url, type CryptoKey } from 'jose'
import { AuthCookies } from '../../src/auth/cookie.ts'
import { systemClock } from '../../src/clock.ts'
import { call, startRouter, type Reply } from '../fixtures/router.ts'
import { AUDIENCE, ISSUER, mint, signingKey, writeJwks, type SigningKey } from '../fixtures/jwt.ts'

const SEED = 20261201
const SECRET = 'hostile-credentials-router-secret'

const enc = (value: unknown): string => base64url.encode(JSON.stringify(value))
const nowSecs = (): number => Math.floor(Date.now() / 1000)
const claims = (extra: Record<string, unknown> = {}): Record<string, unknown> => ({ sub: 'mallory', iss: ISSUER, aud: AUDIENCE, iat: nowSecs(), exp: nowSecs() + 3600, ...extra })

/** A token with any header and payload, and a signature that cannot be right. */
const forged = (header: unknown, payload: unknown, signature = ''): string => `${enc(header)}.${enc(payload)}.${signature}`

t.test('a few thousand hostile JWTs and cookies: every one a 401 or 403 with Waiter’s body, none authenticates, nothing breaks', async (t) => {
  const key = await signingKey('RS256', 'good')
  const edKey = await signingKey('EdDSA', 'good-ed')
  const stranger = await signingKey('RS256', 'stranger')
  const impostor = await signingKey('RS256', 'good') // the good kid, another key
  const file = join(t.testdir(), 'jwks.json')
  writeJwks(file, [key, edKey])
  const router = await startRouter(t, {
    secret: SECRET,
    'auth.kind': 'jwt',
    'auth.jwt.jwksFile': file,
    'auth.jwt.issuer': ISSUER,
    'auth.jwt.audience': AUDIENCE,
  })
  const publicPem = await exportSPKI(await importJWK(key.publicJwk, 'RS256', { extractable: true }) as CryptoKey)
  const good = await mint(key, { sub: 'mallory' })
  const goodCookie = (new AuthCookies(SECRET, systemClock).issue('mallory', 'jwt')[0] as string).split(';')[0]?.slice('x-waiter-auth='.length) as string

  const hmacWithPublicKey = async (alg: 'HS256' | 'HS384', secret: string): Promise<string> =>
    new SignJWT(claims()).setProtectedHeader({ alg, kid: 'good' }).sign(new TextEncoder().encode(secret))
  const signedBy = (k: SigningKey, extra: Record<string, unknown>, header: Record<string, unknown> = {}): Promise<string> =>
    new SignJWT(claims(extra)).setProtectedHeader({ alg: k.alg, kid: k.kid, ...header }).sign(k.privateKey)

  const jwtCases: fc.Arbitrary<() => Promise<string> | string> = fc.oneof(
    fc.constant(() => forged({ alg: 'none', typ: 'JWT' }, claims())),
    fc.constantFrom('none', 'None', 'NONE', 'nOnE').map((alg) => () => forged({ alg, kid: 'good' }, claims(), '')),
    fc.constantFrom('HS256', 'HS384').chain((alg) => fc.constantFrom(publicPem, JSON.stringify(key.publicJwk), key.publicJwk.n as string).map((secret) => () => hmacWithPublicKey(alg, secret))),
    fc.constantFrom('RS384', 'PS256', 'ES256', 'ES512', 'EdDSA', 'HS256', 'foo', '').map((alg) => () => `${enc({ alg, kid: 'good' })}.${good.split('.')[1]}.${good.split('.')[2]}`),
    fc.integer({ min: 61, max: 10_000_000 }).map((ago) => () => signedBy(key, { exp: nowSecs() - ago })),
    fc.integer({ min: 61, max: 10_000_000 }).map((ahead) => () => signedBy(key, { nbf: nowSecs() + ahead })),
    fc.string({ maxLength: 40 }).filter((s) => s !== ISSUER).map((iss) => () => signedBy(edKey, { iss })),
    fc.oneof(fc.string({ maxLength: 40 }), fc.array(fc.string({ maxLength: 10 }), { maxLength: 3 })).filter((aud) => aud !== AUDIENCE && !(Array.isArray(aud) && aud.includes(AUDIENCE))).map((aud) => () => signedBy(key, { aud })),
    fc.constantFrom(undefined, 'unknown', 'stranger', '', '../../etc/passwd').map((kid) => () => signedBy(stranger, {}, { kid })),
    fc.constant(() => signedBy(impostor, {})),
    fc.constantFrom({ sub: '' }, { sub: 42 }, { sub: null }, { sub: ['root'] }, { sub: 'x'.repeat(300) }, { sub: 'a\nb' }).map((bad) => () => signedBy(key, bad)),
    fc.nat({ max: good.length - 1 }).map((at) => () => good.slice(0, at)),
    fc.tuple(fc.nat({ max: good.length - 1 }), fc.integer({ min: 0x21, max: 0x7e })).map(([at, code]) => () => `${good.slice(0, at)}${String.fromCharCode(code)}${good.slice(at + 1)}`).filter((f) => f() !== good),
    fc.integer({ min: 4096, max: 24_000 }).map((size) => () => `${good}${'A'.repeat(size)}`),
    fc.integer({ min: 4096, max: 24_000 }).map((size) => () => `${enc({ alg: 'RS256', kid: 'good', pad: 'x'.repeat(size) })}.${good.split('.')[1]}.${good.split('.')[2]}`),
    fc.tuple(fc.uint8Array({ maxLength: 200 }), fc.uint8Array({ maxLength: 200 }), fc.uint8Array({ maxLength: 300 })).map(([h, p, s]) => () => `${base64url.encode(h)}.${base64url.encode(p)}.${base64url.encode(s)}`),
    // Anything a client could put in the header (a test client cannot send control characters at all).
    fc.string({ maxLength: 300 }).map((s) => () => s.replace(/[^\x20-\x7e]/g, '')),
    fc.tuple(fc.string({ maxLength: 50 }), fc.string({ maxLength: 50 })).map(([h, p]) => () => `${base64url.encode(h)}.${base64url.encode(p)}.${good.split('.')[2]}`),
    fc.constant(() => `${good}.${good.split('.')[2]}`),
    fc.constant(() => `${good.split('.').slice(0, 2).join('.')}.`),
  )

  const cookieCases: fc.Arbitrary<() => string> = fc.oneof(
    fc.string({ maxLength: 400 }).map((s) => () => s.replace(/[^\x20-\x7e]|;/g, '')),
    fc.uint8Array({ minLength: 1, maxLength: 200 }).map((bytes) => () => base64url.encode(bytes)),
    fc.uint8Array({ minLength: 1, maxLength: 200 }).map((bytes) => () => base64url.encode(Uint8Array.of(1, ...bytes))),
    fc.nat({ max: goodCookie.length - 1 }).map((at) => () => goodCookie.slice(0, at)),
    fc.tuple(fc.nat({ max: goodCookie.length - 1 }), fc.constantFrom('A', 'B', '_', '-', '0')).map(([at, c]) => () => `${goodCookie.slice(0, at)}${c}${goodCookie.slice(at + 1)}`).filter((f) => f() !== goodCookie),
    fc.constant(() => (new AuthCookies('another-secret', systemClock).issue('mallory', 'jwt')[0] as string).split(';')[0]?.slice(14) as string),
    fc.constant(() => (new AuthCookies(SECRET, systemClock).issue('mallory', 'one-user')[0] as string).split(';')[0]?.slice(14) as string),
    fc.constant(() => new AuthCookies(SECRET, systemClock).seal({ user: 'mallory', expiresAt: Date.now() - 1, kind: 'jwt' })),
    fc.integer({ min: 2049, max: 20_000 }).map((size) => () => 'A'.repeat(size)),
  )

  let tried = 0
  const check = async (reply: Reply, what: string): Promise<void> => {
    tried++
    if (reply.status !== 401 && reply.status !== 403) throw new Error(`${what}: answered ${reply.status} ${reply.text.slice(0, 300)}`)
    const body = reply.json<{ 'waiter-error'?: { status?: number; 'error-class'?: string } }>()['waiter-error']
    if (body?.status !== reply.status || typeof body['error-class'] !== 'string') throw new Error(`${what}: not Waiter’s body: ${reply.text.slice(0, 300)}`)
  }
  await fc.assert(
    fc.asyncProperty(jwtCases, fc.constantFrom('/tokens', '/any/path'), fc.constantFrom('Bearer', 'bearer', 'BEARER'), async (make, path, scheme) => {
      const jwt = await make()
      const headers: Record<string, string> = { authorization: `${scheme} ${jwt}`, ...(path === '/any/path' ? { 'x-waiter-token': 'nope' } : {}) }
      await check(await call(`${router.url}${path}`, { headers }), `JWT ${jwt.slice(0, 120)}`)
    }),
    { seed: SEED, numRuns: 2000 },
  )
  await fc.assert(
    fc.asyncProperty(cookieCases, async (make) => {
      const value = make()
      await check(await call(`${router.url}/tokens`, { headers: { cookie: `x-waiter-auth=${value}` } }), `cookie ${value.slice(0, 120)}`)
    }),
    { seed: SEED, numRuns: 1000 },
  )
  t.ok(tried >= 3000, `${tried} hostile credentials, each refused with Waiter’s body`)
  const still = await call(`${router.url}/tokens`, { headers: { authorization: `Bearer ${good}` } })
  t.equal(still.status, 200, 'and a good token is let in afterwards')
  const byCookie = await call(`${router.url}/tokens`, { headers: { cookie: `x-waiter-auth=${goodCookie}` } })
  t.equal(byCookie.status, 200, 'as is a good cookie')
})
