/** Whether a recorded version is still what its tokens lead to (the GC's and the pre-warm's test), and since when it is not. */
import t from 'tap'
import { currencyOf } from '../../src/versions/currency.ts'
import { tokenEtag } from '../../src/versions/tokens.ts'
import type { ServiceRecord } from '../../src/versions/registry.ts'
import type { TokenData } from '../../src/versions/token-store.ts'

const record = (sets: { token: string; etag: string }[][]): ServiceRecord => ({ id: 'a', core: { 'run-as-user': 'me' }, sources: sets.map((set) => set.at(-1) as { token: string; etag: string }), sourceSets: sets, createdAt: 0 })
/** Version 'a' is what the merged description runs when its version is v1 (the last token to name one wins). */
const serviceIdOfTokens = (list: readonly TokenData[]): string => (list.reduce<unknown>((v, d) => d['version'] ?? v, undefined) === 'v1' ? 'a' : 'other')

t.test('a version reached through no token (headers only, or by id) is current: nothing it came from can move on', async (t) => {
  t.match(currencyOf(record([[]]), { token: () => undefined, serviceIdOfTokens, now: 5 }), { current: true })
  const { sourceSets: _none, ...older } = record([])
  t.match(currencyOf(older, { token: () => undefined, serviceIdOfTokens, now: 5 }), { current: true }, 'a record from before combinations were kept, with no token')
})

t.test('a version also reached by on-the-fly headers is current although its token moved on: those callers did not (Waiter’s {} reference)', async (t) => {
  const v1: TokenData = { version: 'v1', 'last-update-time': 1000 }
  const v2: TokenData = { version: 'v2', 'last-update-time': 2000, previous: v1 }
  const tokens = new Map([['web', v2]])
  const byToken = record([[{ token: 'web', etag: tokenEtag(v1) }]])
  t.match(currencyOf(byToken, { token: (n) => tokens.get(n), serviceIdOfTokens, now: 9000 }), { current: false }, 'by the token alone: stale')
  t.match(currencyOf({ ...byToken, direct: true }, { token: (n) => tokens.get(n), serviceIdOfTokens, now: 9000 }), { current: true, movedOnAt: undefined }, 'reached on the fly too: current')
})

t.test('a token moved on: stale since the first of its versions that leads elsewhere, later edits notwithstanding', async (t) => {
  const v1: TokenData = { version: 'v1', 'last-update-time': 1000, previous: {} }
  const v2: TokenData = { version: 'v2', 'last-update-time': 2000, previous: v1 }
  const v3: TokenData = { version: 'v2', 'queue-timeout-ms': 9, 'last-update-time': 3000, previous: v2 }
  const tokens = new Map([['web', v3]])
  const currency = currencyOf(record([[{ token: 'web', etag: tokenEtag(v1) }]]), { token: (n) => tokens.get(n), serviceIdOfTokens, now: 9000 })
  t.same({ current: currency.current, movedOnAt: currency.movedOnAt }, { current: false, movedOnAt: 2000 })
})

t.test('one of several combinations still leading here keeps the version current; a deleted token orphans its combination', async (t) => {
  const web: TokenData = { version: 'v2', 'last-update-time': 2000 }
  const base: TokenData = { cpus: 1, 'last-update-time': 500 }
  const tokens = new Map<string, TokenData>([['web', web], ['base', base]])
  const deps = { token: (n: string) => tokens.get(n), serviceIdOfTokens, now: 9000 }
  const pair = [{ token: 'web', etag: 'E-old' }, { token: 'base', etag: tokenEtag(base) }]
  t.match(currencyOf(record([pair]), deps), { current: false, movedOnAt: 2000 }, 'web,base now runs v2')
  t.match(currencyOf(record([pair, [{ token: 'base', etag: tokenEtag(base) }]]), deps), { current: true }, 'base alone still leads here')
  t.match(currencyOf(record([[{ token: 'gone', etag: 'E-x' }]]), deps), { current: false, orphaned: true, movedOnAt: undefined })
})
