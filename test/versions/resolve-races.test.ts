/**
 * The resolver caches an answer only if no token changed while it was being recorded: a token
 * edit that revokes something (a narrower permitted-user, maintenance) holds for every request
 * after it, even one that raced it.
 */
import t from 'tap'
import { join } from 'node:path'
import { ManualClock } from '../fixtures/manual-clock.ts'
import { tokenStoreOf } from '../../src/versions/token-store.ts'
import { JsonDirectory } from '../../src/storage/json-dir.ts'
import { Tokens } from '../../src/versions/tokens.ts'
import { Resolver } from '../../src/versions/resolve.ts'
import type { ServiceRegistry } from '../../src/versions/registry.ts'

const alice = { user: 'alice', admin: false }
const bob = { user: 'bob', admin: false }
const base = { cmd: 'node app.js', cpus: 1, mem: 128, version: 'v1', 'run-as-user': 'alice' }

function setup(dir: string) {
  const tokens = new Tokens(tokenStoreOf(JsonDirectory.open(join(dir, 'tokens'), 'token')), new ManualClock(), 'c')
  let finish: (() => void) | undefined
  let hold = false
  // A registry whose write can be held open, as an fsync or an etcd round trip holds it.
  const registry = {
    remember: (): Promise<unknown> => (hold ? new Promise<void>((resolve) => (finish = resolve)) : Promise.resolve()),
    get: () => undefined,
  } as unknown as ServiceRegistry
  const resolver = new Resolver(tokens, registry, { routerHostnames: new Set(), allowOnTheFly: false, serviceIdPrefix: 'maitre-', cacheSize: 1000, fallbackPeriodSecs: 300 })
  return { tokens, resolver, holdWrites: (on: boolean) => void (hold = on), finishWrite: () => finish?.() }
}

async function outcome(resolving: () => unknown): Promise<string> {
  try {
    await resolving()
    return 'allowed'
  } catch (err) {
    return (err as { code?: string }).code ?? 'error'
  }
}

for (const [what, change, refusal] of [
  ['permitted-user narrowed to alice', { ...base, 'permitted-user': 'alice' }, 'MAITRE_NOT_PERMITTED'],
  ['maintenance switched on', { ...base, 'permitted-user': '*', maintenance: { message: 'down' } }, 'MAITRE_MAINTENANCE'],
] as const) {
  t.test(`a token edit (${what}) that lands while an earlier answer is being recorded holds for every later request`, async (t) => {
    const { tokens, resolver, holdWrites, finishWrite } = setup(t.testdir())
    await tokens.upsert('svc', { ...base, 'permitted-user': '*' }, { principal: alice })
    holdWrites(true)
    const racing = resolver.resolve({ 'x-waiter-token': 'svc' }, bob)
    await tokens.upsert('svc', change, { principal: alice })
    finishWrite()
    t.equal(await outcome(() => racing), 'allowed', 'the request that raced the edit was answered on what it read')
    holdWrites(false)
    t.equal(await outcome(() => resolver.resolve({ 'x-waiter-token': 'svc' }, bob)), refusal, 'the next one sees the edit: nothing stale was cached')
  })
}
