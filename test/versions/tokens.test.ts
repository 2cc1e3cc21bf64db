import t from 'tap'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { ManualClock } from '../fixtures/manual-clock.ts'
import { tokenStoreOf, type TokenData, type TokenStore } from '../../src/versions/token-store.ts'
import { JsonDirectory } from '../../src/storage/json-dir.ts'
import { HISTORY_LENGTH, Tokens, tokenEtag } from '../../src/versions/tokens.ts'
import { MaitreError } from '../../src/errors.ts'

const owner = { user: 'alice', admin: true }
const stranger = { user: 'mallory', admin: false }
const base = { cmd: 'node app.js', cpus: 1, mem: 128, version: 'v1' }

function tokensIn(dir: string, clock = new ManualClock()): Tokens {
  return new Tokens(tokenStoreOf(JsonDirectory.open(join(dir, 'tokens'), 'token')), clock, 'test-cluster')
}

t.test('create, no-op, update with etags and history', async (t) => {
  const dir = t.testdir()
  const clock = new ManualClock()
  const tokens = tokensIn(dir, clock)
  const created = await tokens.upsert('svc', base, { principal: owner })
  t.equal(created.result, 'token-created')
  t.equal(created.data['owner'], 'alice', 'owner defaults to the creator')
  t.equal(created.data['last-update-time'], clock.now())
  t.match(created.etag, /^E-[0-9a-f]{32}$/)

  const again = await tokens.upsert('svc', base, { principal: owner })
  t.equal(again.result, 'token-no-op')
  t.equal(again.etag, created.etag)

  await t.rejects(tokens.upsert('svc', { ...base, version: 'v2' }, { principal: owner, ifMatch: 'E-stale' }), { code: 'MAITRE_STALE_TOKEN', status: 412 })
  clock.advance(1000)
  const updated = await tokens.upsert('svc', { ...base, version: 'v2' }, { principal: owner, ifMatch: created.etag })
  t.equal(updated.result, 'token-updated')
  t.not(updated.etag, created.etag)
  t.equal((updated.data['previous'] as Record<string, unknown>)['version'], 'v1')

  for (let v = 3; v < 10; v++) await tokens.upsert('svc', { ...base, version: `v${v}` }, { principal: owner })
  const history = tokens.history('svc')
  t.equal(history.length, HISTORY_LENGTH + 1, 'current plus the previous five')
  t.same(history.map((h) => h['version']), ['v9', 'v8', 'v7', 'v6', 'v5', 'v4'])
})

t.test('validation names the fields and the token', async (t) => {
  const tokens = tokensIn(t.testdir())
  const err = await tokens.upsert('svc', { cpus: 'lots', colour: 'blue', 'last-update-time': 5 }, { principal: owner }).catch((e: unknown) => e)
  t.ok(err instanceof MaitreError)
  const fields = ((err as MaitreError).details['fields'] as string[]).sort()
  t.same(fields, ['colour', 'cpus', 'last-update-time'])
  t.match((err as MaitreError).message, 'Unsupported key(s) in token: colour')
  t.match((err as MaitreError).message, 'Cannot modify last-update-time token metadata')
  await t.rejects(tokens.upsert('bad#name', base, { principal: owner }), { message: 'Token contains invalid character: "#"' })
  await t.rejects(tokens.upsert('svc', {}, { principal: owner }), { message: 'No parameters provided for svc' })
})

t.test('soft delete, then hard delete by an admin with If-Match', async (t) => {
  const tokens = tokensIn(t.testdir())
  const { etag } = await tokens.upsert('svc', base, { principal: owner })
  await t.rejects(tokens.delete('svc', { principal: stranger }), { code: 'MAITRE_NOT_TOKEN_MANAGER', status: 403 })
  await tokens.delete('svc', { principal: owner })
  t.equal(tokens.get('svc'), undefined, 'soft-deleted tokens are hidden')
  t.equal(tokens.get('svc', true)?.['deleted'], true)
  await t.rejects(tokens.delete('svc', { principal: owner }), { code: 'MAITRE_TOKEN_NOT_FOUND' })
  const current = tokens.get('svc', true)
  t.ok(current)
  await t.rejects(tokens.delete('svc', { principal: owner, hard: true, ifMatch: etag }), { code: 'MAITRE_STALE_TOKEN' })
  await tokens.delete('svc', { principal: owner, hard: true, ifMatch: tokenEtag(current ?? {}) })
  t.equal(tokens.get('svc', true), undefined)
})

t.test('a restart keeps every token; a corrupt store refuses to start and changes nothing', async (t) => {
  const dir = t.testdir()
  const first = tokensIn(dir)
  for (const name of ['a1', 'b2', 'c3']) await first.upsert(name, { ...base, version: name }, { principal: owner })
  const second = tokensIn(dir)
  t.same([...second.entries()].map(([name]) => name).sort(), ['a1', 'b2', 'c3'])
  t.equal(second.get('b2')?.['version'], 'b2')

  const broken = join(dir, 'tokens', 'b2.json')
  writeFileSync(broken, '{"cmd": "trunc')
  t.throws(() => tokensIn(dir), { code: 'MAITRE_STORE_CORRUPT', message: /b2\.json is not valid JSON/ })
  const { readFileSync } = await import('node:fs')
  t.equal(readFileSync(broken, 'utf8'), '{"cmd": "trunc', 'the corrupt file is left as it was')
  t.equal(JSON.parse(readFileSync(join(dir, 'tokens', 'a1.json'), 'utf8'))['version'], 'a1')
})

/**
 * Another router writes the token between this one's read and its write (the store refuses the
 * compare-and-set): the store below lets one such write in just before the first put.
 */
function racedTokens(dir: string, clock: ManualClock): { tokens: Tokens; raceOnce: (data: Record<string, unknown>) => void } {
  const docs = JsonDirectory.open<Record<string, unknown>>(join(dir, 'tokens'), 'token')
  const store = tokenStoreOf(docs)
  let pending: Record<string, unknown> | undefined
  const raced: typeof store = {
    ...store,
    put: async (name, data, expected) => {
      const other = pending
      pending = undefined
      if (other !== undefined) await docs.put(name, other)
      return store.put(name, data, expected)
    },
  }
  return { tokens: new Tokens(raced, clock, 'test-cluster'), raceOnce: (data) => (pending = data) }
}

t.test('a write that lost a race to another router: recomputed without If-Match, 412 with it', async (t) => {
  const clock = new ManualClock()
  const { tokens, raceOnce } = racedTokens(t.testdir(), clock)
  const created = await tokens.upsert('svc', base, { principal: owner })
  const theirs = { ...created.data, version: 'theirs', previous: created.data }
  raceOnce(theirs)
  const ours = await tokens.upsert('svc', { ...base, version: 'ours' }, { principal: owner })
  t.equal(ours.result, 'token-updated')
  t.same(tokens.history('svc').map((h) => h['version']), ['ours', 'theirs', 'v1'], 'neither update is lost: theirs is in the history')

  raceOnce({ ...(tokens.get('svc') as Record<string, unknown>), version: 'theirs-again' })
  await t.rejects(tokens.upsert('svc', { ...base, version: 'mine' }, { principal: owner, ifMatch: ours.etag }), { code: 'MAITRE_STALE_TOKEN', status: 412 })
  t.equal(tokens.get('svc')?.['version'], 'theirs-again', 'the If-Match write did not land')

  raceOnce({ ...(tokens.get('svc') as Record<string, unknown>), version: 'before-delete' })
  await t.rejects(tokens.delete('svc', { principal: owner, ifMatch: tokenEtag(tokens.get('svc') as Record<string, unknown>) }), { code: 'MAITRE_STALE_TOKEN' })
  t.equal(tokens.get('svc')?.['version'], 'before-delete')
})

t.test('Waiter’s CLI: If-Match "" creates a token that does not exist or was soft-deleted, and is stale against a live one; the first version’s history is {}', async (t) => {
  const tokens = tokensIn(t.testdir())
  const created = await tokens.upsert('fresh', base, { principal: owner, ifMatch: '' })
  t.equal(created.result, 'token-created', 'what `waiter create` sends for a new token')
  t.same(created.data['previous'], {}, 'the first version carries an empty history, as Waiter’s does')
  t.same(tokens.history('fresh').length, 1, 'and that empty history is no version of its own')
  await t.rejects(tokens.upsert('fresh', { ...base, version: 'v2' }, { principal: owner, ifMatch: '' }), { code: 'MAITRE_STALE_TOKEN', status: 412, message: 'Cannot modify stale token' }, 'against a live token it is stale')
  await tokens.delete('fresh', { principal: owner, hard: false })
  const recreated = await tokens.upsert('fresh', { ...base, version: 'v3' }, { principal: owner, ifMatch: '' })
  t.equal(recreated.result, 'token-created', 'a soft-deleted token may be created again with it')
  t.same(tokens.history('fresh').map((v) => v['version'] ?? null), ['v3'], 'afresh, as in Waiter: no history of the deleted token')
  t.same(recreated.data['previous'], {})
})

t.test('a user may set a token’s cluster, as Waiter’s CLI does; the other system metadata stays the router’s', async (t) => {
  const tokens = tokensIn(t.testdir())
  const made = await tokens.upsert('colored', { ...base, cluster: 'blue' }, { principal: stranger })
  t.equal(made.data['cluster'], 'blue', 'user-set cluster is kept')
  t.equal((await tokens.upsert('colored', { ...base }, { principal: stranger })).data['cluster'], 'blue', 'and stays when a later write does not name it')
  const moved = await tokens.upsert('colored', { ...base, cluster: 'green' }, { principal: stranger })
  t.equal(moved.result, 'token-updated', 'changing only the cluster is an update, not a no-op')
  t.equal(moved.data['cluster'], 'green')
  for (const key of ['last-update-time', 'last-update-user', 'root', 'previous']) {
    await t.rejects(tokens.upsert('colored', { ...base, [key]: key === 'last-update-time' ? 1 : key === 'previous' ? {} : 'x' }, { principal: stranger }), { code: 'MAITRE_INVALID_DESCRIPTOR', message: new RegExp(`Cannot modify ${key} token metadata`) }, `${key} is refused`)
  }
  await t.rejects(tokens.upsert('colored', { ...base, cluster: '' }, { principal: stranger }), { message: /cluster must be a non-empty string/ })
})

t.test('an owner holds at most maxTokensPerOwner live tokens (Waiter’s limit-per-owner): a creation or hand-over past it is a 403 with Waiter’s message; edits, soft-deleted tokens and admin mode are not held to it', async (t) => {
  const dir = t.testdir()
  const tokens = new Tokens(tokenStoreOf(JsonDirectory.open(join(dir, 'tokens'), 'token')), new ManualClock(), 'test-cluster', { maxTokensPerOwner: 2 })
  const bob = { user: 'bob', admin: false }
  const carol = { user: 'carol', admin: false }
  await tokens.upsert('b1', base, { principal: bob })
  await tokens.upsert('b2', base, { principal: bob })
  const refused = await tokens.upsert('b3', base, { principal: bob }).catch((e: unknown) => e)
  t.match(refused, { code: 'MAITRE_TOKEN_LIMIT', status: 403, message: /^You have reached the limit of number of tokens allowed\. Please delete at least one/, details: { 'allowed-owned-tokens': 2, 'num-owned-tokens': 2, owner: 'bob' } })
  t.equal(tokens.get('b3'), undefined, 'nothing was stored')
  t.equal((await tokens.upsert('b1', { ...base, version: 'v2' }, { principal: bob })).result, 'token-updated', 'a token already held is edited freely')
  await tokens.upsert('c1', base, { principal: carol })
  await t.rejects(tokens.upsert('c1', { ...base, owner: 'bob' }, { principal: carol }), { code: 'MAITRE_TOKEN_LIMIT' }, 'nor can one be handed to an owner at the limit')
  t.equal(tokens.get('c1')?.['owner'], 'carol')
  await tokens.delete('b2', { principal: bob })
  t.equal((await tokens.upsert('b3', base, { principal: bob })).result, 'token-created', 'a soft-deleted token no longer counts')
  await t.rejects(tokens.upsert('b2', base, { principal: bob }), { code: 'MAITRE_TOKEN_LIMIT' }, 'and creating it again counts again')
  const admin = { user: 'root', admin: true }
  t.equal((await tokens.upsert('b4', { ...base, owner: 'bob' }, { principal: admin, adminMode: true })).result, 'token-created', 'admin mode is not held to the limit')
})

t.test('the per-owner limit holds for creations under different names at once: they are counted while their writes are under way', async (t) => {
  const dir = t.testdir()
  const tokens = new Tokens(tokenStoreOf(JsonDirectory.open(join(dir, 'tokens'), 'token')), new ManualClock(), 'test-cluster', { maxTokensPerOwner: 2 })
  const bob = { user: 'bob', admin: false }
  const outcomes = await Promise.allSettled(Array.from({ length: 10 }, (_, i) => tokens.upsert(`b${i}`, base, { principal: bob })))
  t.equal(outcomes.filter((o) => o.status === 'fulfilled').length, 2, 'two of ten created at once')
  t.ok(outcomes.filter((o) => o.status === 'rejected').every((o) => (o as PromiseRejectedResult).reason.code === 'MAITRE_TOKEN_LIMIT'), 'the rest refused for the limit')
  t.equal([...tokens.entries()].filter(([, d]) => d['owner'] === 'bob').length, 2, 'bob holds two')
  const held = [...tokens.entries()].find(([, d]) => d['owner'] === 'bob')?.[0] as string
  t.equal((await tokens.upsert(held, { ...base, version: 'v9' }, { principal: bob })).result, 'token-updated', 'and may still edit them')
})

t.test('a creation whose write the store already shows but has not confirmed (etcd waits for the peers) counts once toward the per-owner limit, not twice', async (t) => {
  const docs = new Map<string, TokenData>()
  const gates: (() => void)[] = []
  const store = {
    get: (name: string) => docs.get(name),
    entries: () => docs.entries(),
    size: () => docs.size,
    put: async (name: string, data: TokenData) => {
      docs.set(name, data)
      await new Promise<void>((resolve) => gates.push(resolve))
    },
    remove: async (name: string) => void docs.delete(name),
    onChange: () => () => undefined,
  } as unknown as TokenStore
  const tokens = new Tokens(store, new ManualClock(), 'test-cluster', { maxTokensPerOwner: 2 })
  const bob = { user: 'bob', admin: false }
  const first = tokens.upsert('aa', base, { principal: bob })
  await waitForCondition(() => gates.length === 1)
  const second = tokens.upsert('bb', base, { principal: bob })
  await waitForCondition(() => gates.length === 2)
  for (const open of gates) open()
  t.equal((await first).result, 'token-created')
  t.equal((await second).result, 'token-created', 'the second of two is within the limit')
})

async function waitForCondition(check: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !check(); i++) await new Promise((resolve) => setImmediate(resolve))
  if (!check()) throw new Error('condition never held')
}
