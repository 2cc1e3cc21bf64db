import t from 'tap'
import type { IncomingMessage } from 'node:http'
import { AuthCookies, cookieValues, setsRouterCookie, withoutRouterCookies } from '../../src/auth/cookie.ts'
import { AuthGate } from '../../src/auth/gate.ts'
import { oneUserAuthenticator, type Authenticator } from '../../src/auth/authenticator.ts'
import { MaitreError } from '../../src/errors.ts'
import { ManualClock } from '../fixtures/manual-clock.ts'

const sealedOf = (setCookie: readonly string[]): string => {
  const [first] = setCookie
  return /^x-waiter-auth=([^;]+)/.exec(first as string)?.[1] as string
}

t.test('the cookie names its principal for a day, under HttpOnly, and nobody without the secret can read, forge or alter it', async (t) => {
  const clock = new ManualClock()
  const cookies = new AuthCookies('router-secret', clock)
  const issued = cookies.issue('alice', 'jwt')
  t.match(issued[0], /^x-waiter-auth=[A-Za-z0-9_-]+; Max-Age=86400; Path=\/; HttpOnly/)
  t.equal(issued[1], `x-auth-expires-at=${Math.floor((clock.now() + 86_400_000) / 1000)}; Max-Age=86400; Path=/`)
  const sealed = sealedOf(issued)
  t.notOk(sealed.includes('alice') || Buffer.from(sealed, 'base64url').toString('latin1').includes('alice'), 'the principal is not readable in it')
  t.match(cookies.open(sealed), { user: 'alice', kind: 'jwt' })
  t.equal(cookies.fromRequest(`a=1; x-waiter-auth=${sealed}; b=2`)?.user, 'alice')
  const flipped = Buffer.from(sealed, 'base64url')
  flipped[20] = (flipped[20] as number) ^ 1
  t.equal(cookies.open(flipped.toString('base64url')), undefined, 'one flipped bit: rejected')
  t.equal(cookies.open(sealed.slice(0, -4)), undefined, 'truncated: rejected')
  t.equal(cookies.open(`${sealed.slice(0, 10)}!${sealed.slice(10)}`), undefined, 'a stray character the decoder would skip: rejected')
  t.equal(new AuthCookies('another-secret', clock).open(sealed), undefined, 'another router secret: rejected')
  t.equal(cookies.open('x'.repeat(5000)), undefined, 'oversized: not even decoded')
  t.same(cookies.issue('alice', 'jwt'), issued, 'handed out again within a minute: no seal per request')
  const short = cookies.issue('carol', 'jwt', clock.now() + 300_000)
  t.match(short[0], /; Max-Age=300;/, 'a proof that lapses in 5 minutes buys a cookie of 5 minutes')
  t.same(cookies.issue('carol', 'jwt', clock.now() + 100_000)[0]?.includes('Max-Age=100;'), true, 'and a shorter one is not handed the longer cookie')
  t.match(cookies.issue('carol', 'jwt', clock.now() + 3_600_000)[0], /; Max-Age=3600;/, 'nor is a longer one handed the shorter cookie of a moment ago')
  const dead = cookies.issue('dave', 'jwt', clock.now() - 20_000)
  t.match(dead[0], /; Max-Age=0;/, 'a proof inside its leeway but past its exp buys a cookie that is dead at once')
  const fresh = cookies.issue('dave', 'jwt', clock.now() + 3_600_000)
  t.match(fresh[0], /; Max-Age=3600;/, 'and a fresh proof a moment later is not handed that dead cookie again')
  t.equal(cookies.open(sealedOf(fresh))?.user, 'dave')
  const overHttps = cookies.issue('erin', 'jwt', Number.POSITIVE_INFINITY, true)
  t.match(overHttps[0], /; HttpOnly; SameSite=Lax; Secure$/, 'over https the cookie is Secure: a browser never sends it over plain http')
  t.match(overHttps[1], /; Secure$/)
  t.notMatch(cookies.issue('erin', 'jwt')[0], /Secure/, 'and over http it is not (the browser would drop it), whatever was handed out over https a moment before')
  clock.advance(300_001)
  t.equal(cookies.open(sealedOf(short)), undefined, 'which is worth nothing after them')
  clock.advance(86_400_000)
  t.equal(cookies.open(sealed), undefined, 'a day later it has expired, whatever the client kept')
  t.not(sealedOf(cookies.issue('alice', 'jwt')), sealed, 'a fresh one after that')
})

t.test('router cookies never reach an instance, and an instance cannot set them', async (t) => {
  t.equal(withoutRouterCookies('a=1; x-waiter-auth=abc; x-auth-expires-at=1; b=2'), 'a=1; b=2')
  t.equal(withoutRouterCookies('x-waiter-auth=abc'), undefined)
  t.same(cookieValues('x-waiter-auth=1; x-waiter-auth=2', 'x-waiter-auth'), ['1', '2'])
  t.equal(setsRouterCookie('x-waiter-auth=forged; Path=/'), true)
  t.equal(setsRouterCookie('session=1; Path=/'), false)
  // A nameless cookie: a browser sends its value alone, "x-waiter-auth=…", which the router would read as its own.
  t.equal(setsRouterCookie('=x-waiter-auth=sealed; Path=/longer'), true, 'nameless, carrying the auth cookie')
  t.equal(setsRouterCookie(' = x-auth-expires-at=1'), true)
  t.equal(setsRouterCookie('=plain-value; Path=/'), false, 'a nameless cookie of anything else passes')
  t.equal(setsRouterCookie('=a=b'), false)
})

const req = (headers: Record<string, string>, remoteAddress = '127.0.0.1'): IncomingMessage => ({ headers, socket: { remoteAddress } }) as unknown as IncomingMessage

t.test('the gate: a valid cookie of this kind of router skips the authenticator; fresh proofs earn a cookie, cookies do not', async (t) => {
  const clock = new ManualClock()
  const cookies = new AuthCookies('s', clock)
  let asked = 0
  const bearer: Authenticator = {
    kind: 'jwt',
    authenticate: () => {
      asked++
      throw new MaitreError('MAITRE_UNAUTHORIZED', 'no')
    },
  }
  const gate = new AuthGate(bearer, cookies, new Set(['root']))
  const alice = await gate.authenticate(req({ cookie: `x-waiter-auth=${sealedOf(cookies.issue('alice', 'jwt'))}` }))
  t.same(alice, { user: 'alice', admin: false, method: 'cookie' })
  t.equal(asked, 0, 'no signature check')
  t.equal(gate.cookiesFor(alice), undefined, 'no new cookie for a cookie')
  t.equal((await gate.authenticate(req({ cookie: `x-waiter-auth=${sealedOf(cookies.issue('root', 'jwt'))}` }))).admin, true, 'admin comes from the config, not the cookie')
  t.throws(() => gate.authenticate(req({ cookie: `x-waiter-auth=${sealedOf(cookies.issue('alice', 'one-user'))}` })), { code: 'MAITRE_UNAUTHORIZED' }, 'a one-user router’s cookie means nothing to a JWT router')
  t.equal(asked, 1)
  t.ok(gate.cookiesFor({ user: 'bob', admin: false, method: 'jwt' })?.[0]?.startsWith('x-waiter-auth='), 'a fresh JWT proof earns a cookie')

  // One-user trusts the caller's address: a cookie cannot stand in for it.
  const oneUser = new AuthGate(oneUserAuthenticator('me', { allowRemote: false }), cookies, new Set())
  const cookie = `x-waiter-auth=${sealedOf(cookies.issue('me', 'one-user'))}`
  t.throws(() => oneUser.authenticate(req({ cookie }, '10.0.0.9')), { code: 'MAITRE_UNAUTHORIZED' }, 'a remote caller with a cookie is still remote')
  t.ok(oneUser.cookiesFor(await oneUser.authenticate(req({})))?.[0]?.startsWith('x-waiter-auth='), 'one-user sets the cookie like any authenticator')
})
