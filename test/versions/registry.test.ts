/** Service records: concurrent changes from several routers are merged, and a delete never takes a record changed since it was judged. */
import t from 'tap'
import { join } from 'node:path'
import { ManualClock } from '../fixtures/manual-clock.ts'
import { JsonDirectory } from '../../src/storage/json-dir.ts'
import { ServiceRegistry, type ServiceRecord } from '../../src/versions/registry.ts'

const CORE = { cmd: 'run', cpus: 1, mem: 64, version: 'v1' }

t.test('forget takes the record only as it was judged: one another router just extended stays', async (t) => {
  const docs = JsonDirectory.open<ServiceRecord>(join(t.testdir(), 'services'), 'service')
  const registry = new ServiceRegistry(docs, new ManualClock())
  const judged = await registry.remember('svc', CORE, { token: 'a', etag: 'E-1' })
  // Another router records a request through token b, as its write arrives through the watch.
  await docs.put('svc', { ...judged, sources: [...judged.sources, { token: 'b', etag: 'E-2' }] })
  t.equal(await registry.forget('svc', judged), false, 'the delete is refused')
  t.same(registry.get('svc')?.sources.map((s) => s.token), ['a', 'b'], 'and the record is whole')
  t.equal(await registry.forget('svc', registry.get('svc')), true, 'judged again as it is now, it goes')
  t.equal(registry.get('svc'), undefined)
  t.equal(await registry.forget('svc'), true, 'forgetting what is gone is fine')
})

t.test('two token references recorded at once both land, even when one write loses a race', async (t) => {
  const docs = JsonDirectory.open<ServiceRecord>(join(t.testdir(), 'services'), 'service')
  const registry = new ServiceRegistry(docs, new ManualClock())
  await registry.remember('svc', CORE, { token: 'a', etag: 'E-1' })
  const base = docs.get('svc') as ServiceRecord
  // Another router's reference lands between this router's read and its write.
  const original = docs.put.bind(docs)
  let raced = false
  docs.put = async (key, doc, expected) => {
    if (!raced) {
      raced = true
      await original(key, { ...base, sources: [...base.sources, { token: 'c', etag: 'E-3' }] })
    }
    return original(key, doc, expected)
  }
  await registry.remember('svc', CORE, { token: 'b', etag: 'E-2' })
  t.same(registry.get('svc')?.sources.map((s) => s.token).sort(), ['a', 'b', 'c'], 'the retry read theirs and added ours')
})

t.test('a version reached by token and by on-the-fly headers keeps both references, and stays current when the token moves on (Waiter’s {} reference)', async (t) => {
  const dir = join(t.testdir(), 'services')
  const docs = JsonDirectory.open<ServiceRecord>(dir, 'service')
  const registry = new ServiceRegistry(docs, new ManualClock())
  await registry.remember('svc', CORE, { token: 'web', etag: 'E-1' })
  t.equal(registry.get('svc')?.direct, undefined, 'by token only: no direct reference')
  await registry.remember('svc', CORE, undefined, [], true)
  t.equal(registry.get('svc')?.direct, true, 'on-the-fly access is recorded')
  t.same(registry.get('svc')?.sources, [{ token: 'web', etag: 'E-1' }], 'beside the token')
  await registry.remember('svc', CORE, { token: 'web', etag: 'E-2' })
  t.equal(registry.get('svc')?.direct, true, 'and kept when the token is recorded again')
  await docs.flush()
  const reopened = new ServiceRegistry(JsonDirectory.open<ServiceRecord>(dir, 'service'), new ManualClock())
  t.equal(reopened.get('svc')?.direct, true, 'and after a restart')
})

t.test('versions are bounded: a new one past maxVersions is refused with 507, one already recorded is not', async (t) => {
  const docs = JsonDirectory.open<ServiceRecord>(join(t.testdir(), 'services'), 'service')
  const registry = new ServiceRegistry(docs, new ManualClock(), 2)
  await registry.remember('a', CORE, { token: 't', etag: 'E-1' })
  await registry.remember('b', CORE, { token: 't', etag: 'E-2' })
  await t.rejects(registry.remember('c', CORE, { token: 't', etag: 'E-3' }), { code: 'MAITRE_STORE_FULL', status: 507, details: { limit: 'versions', max: 2 } })
  t.equal(registry.get('c'), undefined, 'nothing written')
  await registry.remember('a', CORE, { token: 'u', etag: 'E-4' })
  t.same(registry.get('a')?.sources.map((s) => s.token), ['t', 'u'], 'a recorded version still takes a new reference')
  t.equal(await registry.forget('b'), true)
  await registry.remember('c', CORE, { token: 't', etag: 'E-3' })
  t.ok(registry.get('c'), 'room again once one is collected')
})
