/**
 * The DocumentStore contract, run against both implementations: the directory of files of a
 * single router and etcd (a real server) of a cluster. Then what only etcd does: two routers'
 * stores see each other's writes, compare-and-set holds between them, and an outage of etcd
 * refuses writes clearly while reads go on, and heals by itself.
 */
import t from 'tap'
import { rmSync } from 'node:fs'
import { Writable } from 'node:stream'
import { join } from 'node:path'
import { Etcd3 } from 'etcd3'
import { JsonDirectory } from '../../src/storage/json-dir.ts'
import type { DocumentStore } from '../../src/storage/document-store.ts'
import { EtcdDirectory } from '../../src/cluster/etcd/etcd-directory.ts'
import { connectEtcd } from '../../src/cluster/etcd/connect.ts'
import { MaitreError } from '../../src/errors.ts'
import { createLogger, silentLogger } from '../../src/log.ts'
import { attachedWatches, recordReads, startEtcd } from '../fixtures/etcd.ts'
import { waitFor } from '../fixtures/router.ts'
import { flapOnNextWatch, startRelay } from '../fixtures/tcp-cut.ts'

interface Doc {
  readonly v: number
}
const check = (doc: unknown): string | undefined => (typeof (doc as Doc | null)?.v === 'number' ? undefined : 'has no v')

const codeOf = async (promise: Promise<unknown>): Promise<string | undefined> => {
  try {
    await promise
    return undefined
  } catch (err) {
    return err instanceof MaitreError ? err.code : `not ours: ${String(err)}`
  }
}

interface Flavour {
  readonly name: string
  /** Opens the store as a router starting (again) would. */
  setup(t: { teardown(fn: () => unknown): void; testdir(): string }): Promise<() => Promise<DocumentStore<Doc>>>
}

const flavours: Flavour[] = [
  {
    name: 'files',
    setup: async (t) => {
      const dir = t.testdir()
      return () => Promise.resolve(JsonDirectory.open<Doc>(join(dir, 'things'), 'thing', check))
    },
  },
  {
    name: 'etcd',
    setup: async (t) => {
      const etcd = await startEtcd(t)
      const clients: Etcd3[] = []
      const stores: EtcdDirectory<Doc>[] = []
      etcd.beforeStop(async () => {
        for (const store of stores) await store.close()
        for (const client of clients) client.close()
      })
      return async () => {
        const client = connectEtcd({ endpoints: [etcd.endpoint], requestTimeoutMs: 2000 })
        clients.push(client)
        const store = await EtcdDirectory.open<Doc>(client, '/maitre/test/things/', 'thing', check, silentLogger)
        stores.push(store)
        return store
      }
    },
  },
]

for (const flavour of flavours) {
  t.test(`${flavour.name}: what is written is read back, after a restart too`, async (t) => {
    const open = await flavour.setup(t)
    const store = await open()
    await store.put('a', { v: 1 })
    await store.put('odd/key %$.tmp-1', { v: 2 })
    await store.put('a', { v: 3 })
    await store.delete('gone-before-it-came')
    t.same(store.get('a'), { v: 3 })
    t.equal(store.size, 2)
    const again = await open()
    t.same(Object.fromEntries(again.entries()), { a: { v: 3 }, 'odd/key %$.tmp-1': { v: 2 } }, 'a restart loses nothing')
    await again.delete('a')
    t.notOk(again.has('a'))
    t.same([...(await open()).entries()].map(([k]) => k), ['odd/key %$.tmp-1'])
  })

  t.test(`${flavour.name}: compare-and-set refuses a write computed from a replaced document`, async (t) => {
    const open = await flavour.setup(t)
    const store = await open()
    t.equal(await codeOf(store.put('k', { v: 1 }, null)), undefined, 'created where nothing was')
    const first = store.get('k')
    t.equal(await codeOf(store.put('k', { v: 9 }, null)), 'MAITRE_STORE_CONFLICT', '"absent" no longer holds')
    t.equal(await codeOf(store.put('k', { v: 2 }, first)), undefined, 'replaces the document it was computed from')
    t.equal(await codeOf(store.put('k', { v: 9 }, first)), 'MAITRE_STORE_CONFLICT', 'but not twice')
    t.equal(await codeOf(store.delete('k', first)), 'MAITRE_STORE_CONFLICT')
    t.same(store.get('k'), { v: 2 }, 'nothing was written by the refused ones')
    t.same((await open()).get('k'), { v: 2 }, 'nor stored')
    t.equal(await codeOf(store.delete('k', store.get('k'))), undefined)
    t.notOk((await open()).has('k'))
  })
}

t.test('etcd: two routers see each other within a second; compare-and-set holds between them', async (t) => {
  const open = await flavours[1]!.setup(t)
  const a = await open()
  const b = await open()
  const changed: string[] = []
  b.onChange((key) => changed.push(key))
  const before = Date.now()
  await a.put('shared', { v: 1 })
  await waitFor('b sees a’s write', () => (b.get('shared')?.v === 1 ? true : undefined), 1000)
  t.ok(Date.now() - before < 1000, `seen after ${Date.now() - before} ms`)
  t.same(changed, ['shared'], 'and announces it')

  // Both computed their write from v1: exactly one lands.
  const base = b.get('shared') as Doc
  const results = await Promise.all([codeOf(a.put('shared', { v: 2 }, a.get('shared'))), codeOf(b.put('shared', { v: 3 }, base))])
  t.same(results.filter((r) => r === undefined).length, 1, `exactly one write wins (${results.join(', ')})`)
  t.same(results.filter((r) => r === 'MAITRE_STORE_CONFLICT').length, 1, 'the other is a conflict')
  const winner = results[0] === undefined ? 2 : 3
  await waitFor('both agree', () => (a.get('shared')?.v === winner && b.get('shared')?.v === winner ? true : undefined), 1000)
  // The loser already holds the winner's document, so a retry computed from it succeeds at once.
  const loser = results[0] === undefined ? b : a
  t.equal(await codeOf(loser.put('shared', { v: 4 }, loser.get('shared'))), undefined, 'a retry on what is current succeeds')

  await a.delete('shared')
  await waitFor('b sees the delete', () => (b.has('shared') ? undefined : true), 1000)
})

t.test('etcd: read-your-writes: a write resolves once the stores it is announced to read it, however far behind their watch is', async (t) => {
  const etcd = await startEtcd(t)
  // b is a router on a slow link (150 ms each way): its watch hears of a's writes 150 ms late.
  const relay = await startRelay(Number(new URL(etcd.endpoint).port), { delayMs: 150 })
  const fast = connectEtcd({ endpoints: [etcd.endpoint], requestTimeoutMs: 2000 })
  const slow = connectEtcd({ endpoints: [relay.url], requestTimeoutMs: 3000 })
  const a = await EtcdDirectory.open<Doc>(fast, '/maitre/test/things/', 'thing', check, silentLogger)
  const b = await EtcdDirectory.open<Doc>(slow, '/maitre/test/things/', 'thing', check, silentLogger)
  etcd.beforeStop(async () => {
    await a.close()
    await b.close()
    fast.close()
    slow.close()
    await relay.close()
  })
  const announced: string[] = []
  a.afterCommit(async (key) => {
    announced.push(key)
    await b.refresh(key)
  })
  const changed: string[] = []
  b.onChange((key) => changed.push(key))

  await a.put('k', { v: 1 })
  t.same(b.get('k'), { v: 1 }, 'a new document is in b when a’s write resolves')
  await a.put('k', { v: 2 }, a.get('k'))
  t.same(b.get('k'), { v: 2 }, 'so is a replaced one')
  await a.delete('k', a.get('k'))
  t.notOk(b.has('k'), 'and a deletion')
  t.same(announced, ['k', 'k', 'k'], 'each write was announced once')
  // A delete that finds nothing (a collection clearing a suspension the version never had) has
  // nothing to tell: no wait on the peers.
  await a.delete('never-there')
  t.same(announced, ['k', 'k', 'k'], 'a delete of nothing is not announced')
  t.same(changed, ['k', 'k', 'k'], 'b announced each change to its listeners, as its watch would')
  // The late echoes of the watch change nothing: b does not bring back what was deleted.
  await a.put('other', { v: 9 })
  await waitFor('b’s watch catches up', () => (b.get('other')?.v === 9 ? true : undefined), 3000)
  t.notOk(b.has('k'), 'the deletion holds after the watch delivered the old writes')
  t.same(changed.filter((k) => k === 'k').length, 3, 'and the echoes were not announced again')
})

t.test('etcd: while a write waits for the other routers, this router’s own caches already know it', async (t) => {
  const etcd = await startEtcd(t)
  const client = connectEtcd({ endpoints: [etcd.endpoint], requestTimeoutMs: 2000 })
  const a = await EtcdDirectory.open<Doc>(client, '/maitre/test/things/', 'thing', check, silentLogger)
  etcd.beforeStop(async () => {
    await a.close()
    client.close()
  })
  const heard: string[] = []
  a.onChange((key) => heard.push(`${key}=${a.get(key)?.v ?? 'gone'}`))
  // What this router's listeners had heard when the wait for the peers began.
  const heardAtWait: string[][] = []
  a.afterCommit(async () => void heardAtWait.push([...heard]))
  await a.put('k', { v: 1 })
  await a.delete('k')
  // (Its watch's echo of a write may come first and be announced too: a second announcement is harmless.)
  t.ok(heardAtWait[0]?.includes('k=1'), `the write was announced here at commit, the document in memory (${JSON.stringify(heardAtWait[0])})`)
  t.ok(heardAtWait[1]?.includes('k=gone'), `and so was the delete (${JSON.stringify(heardAtWait[1])})`)
})

t.test('etcd: a document the store cannot read is left out, not fatal', async (t) => {
  const etcd = await startEtcd(t)
  const raw = new Etcd3({ hosts: etcd.endpoint })
  etcd.beforeStop(() => raw.close())
  await raw.put('/maitre/test/things/bad').value('{not json')
  await raw.put('/maitre/test/things/wrong').value('{"w": 1}')
  await raw.put('/maitre/test/things/good').value('{"v": 5}')
  const client = connectEtcd({ endpoints: [etcd.endpoint], requestTimeoutMs: 2000 })
  const store = await EtcdDirectory.open<Doc>(client, '/maitre/test/things/', 'thing', check, silentLogger)
  etcd.beforeStop(async () => {
    await store.close()
    client.close()
  })
  t.same(Object.fromEntries(store.entries()), { good: { v: 5 } })
  await raw.put('/maitre/test/things/later').value('[]')
  await raw.put('/maitre/test/things/after').value('{"v": 6}')
  await waitFor('the valid one arrives', () => (store.get('after')?.v === 6 ? true : undefined))
  t.notOk(store.has('later'))
})

t.test('etcd: while etcd is down writes fail fast with a retryable 503, reads go on; then it heals', async (t) => {
  const etcd = await startEtcd(t)
  const open = async (): Promise<EtcdDirectory<Doc>> => {
    const client = connectEtcd({ endpoints: [etcd.endpoint], requestTimeoutMs: 1000 })
    const store = await EtcdDirectory.open<Doc>(client, '/maitre/test/things/', 'thing', check, silentLogger)
    etcd.beforeStop(async () => {
      await store.close()
      client.close()
    })
    return store
  }
  const a = await open()
  const b = await open()
  await a.put('k', { v: 1 })
  await waitFor('b sees it', () => (b.get('k')?.v === 1 ? true : undefined))
  await etcd.stop()
  const started = Date.now()
  const failure = await a.put('k', { v: 2 }).then(() => undefined, (err: unknown) => err)
  t.ok(failure instanceof MaitreError && failure.code === 'MAITRE_STORE_WRITE' && failure.status === 503, 'a 503 of ours')
  t.equal((failure as MaitreError).headers['retry-after'], '5')
  t.ok(Date.now() - started < 5000, `within the request timeout's reach (${Date.now() - started} ms)`)
  t.same(a.get('k'), { v: 1 }, 'memory stays on what etcd holds')
  t.same(b.get('k'), { v: 1 }, 'reads go on')
  await etcd.start()
  await waitFor('a write goes through again', async () => ((await codeOf(a.put('k', { v: 3 }))) === undefined ? true : undefined), 20_000)
  await waitFor('and b sees it through its re-established watch', () => (b.get('k')?.v === 3 ? true : undefined), 10_000)
})

t.test('etcd: a router whose watch history was compacted while it was cut off reads everything again, and closes promptly', async (t) => {
  const etcd = await startEtcd(t)
  const relay = await startRelay(Number(new URL(etcd.endpoint).port))
  const raw = new Etcd3({ hosts: etcd.endpoint })
  const client = connectEtcd({ endpoints: [relay.url], requestTimeoutMs: 1000 })
  const store = await EtcdDirectory.open<Doc>(client, '/maitre/test/things/', 'thing', check, silentLogger)
  let closed = false
  etcd.beforeStop(async () => {
    if (!closed) await store.close()
    client.close()
    raw.close()
    await relay.close()
  })
  await raw.put('/maitre/test/things/x').value('{"v": 1}')
  await waitFor('the store sees the first write', () => (store.get('x')?.v === 1 ? true : undefined))
  relay.cut()
  for (let v = 2; v <= 5; v++) await raw.put('/maitre/test/things/x').value(JSON.stringify({ v }))
  await raw.put('/maitre/test/things/gone').value('{"v": 7}')
  await raw.delete().key('/maitre/test/things/gone')
  const { header } = await raw.get('/maitre/test/things/x').exec()
  await raw.kv.compact({ revision: header.revision, physical: true })
  relay.heal()
  await waitFor('the store catches up past the compaction', () => (store.get('x')?.v === 5 ? true : undefined), 10_000)
  await raw.put('/maitre/test/things/x').value('{"v": 6}')
  await waitFor('and follows later writes', () => (store.get('x')?.v === 6 ? true : undefined), 5000)
  t.notOk(store.has('gone'))
  const started = Date.now()
  await store.close()
  closed = true
  t.ok(Date.now() - started < 2000, `close() took ${Date.now() - started} ms`)
})

t.test('etcd: a link that flaps again just as the watch resumes loses none of the changes made while the router was away', async (t) => {
  const etcd = await startEtcd(t)
  const relay = await startRelay(Number(new URL(etcd.endpoint).port))
  const raw = new Etcd3({ hosts: etcd.endpoint })
  const client = connectEtcd({ endpoints: [relay.url], requestTimeoutMs: 1000 })
  const prefix = '/maitre/test/things/'
  await raw.put(`${prefix}old`).value('{"v": 1}')
  await raw.put(`${prefix}gone`).value('{"v": 1}')
  const store = await EtcdDirectory.open<Doc>(client, prefix, 'thing', check, silentLogger)
  etcd.beforeStop(async () => {
    await store.close()
    client.close()
    raw.close()
    await relay.close()
  })
  relay.cut()
  await raw.put(`${prefix}old`).value('{"v": 2}')
  await raw.delete().key(`${prefix}gone`)
  for (let i = 0; i < 50; i++) await raw.put(`${prefix}new-${i}`).value('{"v": 3}')
  const flapped = flapOnNextWatch(client, relay)
  relay.heal()
  await waitFor('the link to flap', () => (flapped() ? true : undefined), 10_000)
  await waitFor('the store to hold what etcd holds', () => (store.size === 51 && store.get('old')?.v === 2 && !store.has('gone') ? true : undefined), 10_000).catch(() => undefined)
  t.equal(store.size, 51, 'every token written meanwhile arrived')
  t.same(store.get('old'), { v: 2 }, 'the one changed meanwhile reads changed')
  t.notOk(store.has('gone'), 'the one deleted meanwhile is gone')
})

t.test('etcd: a store closed while it reads everything again after a disconnection leaves no watch behind to hold the process open', async (t) => {
  const etcd = await startEtcd(t)
  // A slow link: the read after the disconnection is still out when the store and client close.
  const relay = await startRelay(Number(new URL(etcd.endpoint).port), { delayMs: 300 })
  const client = connectEtcd({ endpoints: [relay.url], requestTimeoutMs: 5000 })
  const logged: string[] = []
  const log = createLogger('warn', new Writable({ write: (chunk: Buffer, _encoding, done) => void (logged.push(chunk.toString('utf8')), done()) }))
  const store = await EtcdDirectory.open<Doc>(client, '/maitre/test/things/', 'thing', check, log)
  etcd.beforeStop(async () => {
    await store.close()
    client.close()
    await relay.close()
  })
  const reads = recordReads(client)
  relay.cut()
  relay.heal()
  await waitFor('the store to start reading everything again', () => (logged.some((line) => line.includes('reloading the store')) ? true : undefined), 5000)
  await store.close()
  client.close()
  // The case under test: the store's read was answered after it closed.
  const outcomes = await Promise.all(reads.map((read) => read.then(() => 'answered', () => 'failed')))
  t.ok(outcomes.length > 0 && outcomes.every((o) => o === 'answered'), `the store's reads were answered after it closed: ${outcomes.join(', ')}`)
  await new Promise((resolve) => setTimeout(resolve, 100))
  t.equal(attachedWatches(client), 0, 'no watch was started once the store had closed')
})

t.test('etcd: an etcd that comes back with its data lost is taken as it is: the store lets go of what it held and writes work again', async (t) => {
  const etcd = await startEtcd(t)
  const client = connectEtcd({ endpoints: [etcd.endpoint], requestTimeoutMs: 1000 })
  const prefix = '/maitre/test/things/'
  const store = await EtcdDirectory.open<Doc>(client, prefix, 'thing', check, silentLogger)
  etcd.beforeStop(async () => {
    await store.close()
    client.close()
  })
  for (let i = 0; i < 20; i++) await store.put(`k${i}`, { v: i })
  await etcd.stop()
  rmSync(join(t.testdir(), 'etcd'), { recursive: true, force: true })
  await etcd.start()
  await waitFor('the store to let go of what etcd lost', () => (store.size === 0 ? true : undefined), 15_000).catch(() => undefined)
  t.equal(store.size, 0, 'nothing etcd no longer holds is served')
  await waitFor('a write to succeed', () => store.put('k3', { v: 33 }, null).then(() => true, () => undefined), 10_000).catch(() => undefined)
  t.same(store.get('k3'), { v: 33 }, 'a key it had cached can be written again, as new')
  const raw = new Etcd3({ hosts: etcd.endpoint })
  etcd.beforeStop(() => raw.close())
  await raw.put(`${prefix}other`).value('{"v": 9}')
  await waitFor('a change made elsewhere to arrive', () => (store.get('other')?.v === 9 ? true : undefined), 5000).catch(() => undefined)
  t.same(store.get('other'), { v: 9 }, 'and changes made elsewhere arrive')
})

t.test('etcd: a store larger than gRPC’s default 4 MiB message opens', async (t) => {
  const etcd = await startEtcd(t)
  const raw = new Etcd3({ hosts: etcd.endpoint })
  etcd.beforeStop(() => raw.close())
  const padding = 'x'.repeat(2000)
  // 2,560 documents of ~2 KB (tokens with their history are that size), written 128 per transaction.
  for (let batch = 0; batch < 20; batch++) {
    const puts = Array.from({ length: 128 }, (_, i) => raw.put(`/maitre/test/things/k${batch}-${i}`).value(JSON.stringify({ v: i, padding })))
    await raw.if('/maitre/test/things/never', 'Version', '==', 0).then(...puts).commit()
  }
  const client = connectEtcd({ endpoints: [etcd.endpoint], requestTimeoutMs: 5000 })
  const store = await EtcdDirectory.open<Doc>(client, '/maitre/test/things/', 'thing', check, silentLogger)
  etcd.beforeStop(async () => {
    await store.close()
    client.close()
  })
  t.equal(store.size, 2560, 'every document is read')
})

t.test('etcd: a write whose answer comes after the client’s deadline (so the client sends it again) is the write it was, not a conflict', async (t) => {
  const etcd = await startEtcd(t)
  const relay = await startRelay(Number(new URL(etcd.endpoint).port))
  const client = connectEtcd({ endpoints: [relay.url], requestTimeoutMs: 1000 })
  const store = await EtcdDirectory.open<Doc>(client, '/maitre/test/things/', 'thing', check, silentLogger)
  etcd.beforeStop(async () => {
    await store.close()
    client.close()
    await relay.close()
  })
  await store.put('late', { v: 1 })
  // etcd's answers are held past the client's 1 s deadline: it sends the transaction again,
  // whose compare then fails against the first send's committed write.
  const letThrough = relay.holdReplies()
  t.teardown(letThrough)
  const writing = codeOf(store.put('late', { v: 2 }, store.get('late')))
  setTimeout(letThrough, 1300)
  t.equal(await writing, undefined, 'the write succeeds: no conflict with itself')
  t.same(store.get('late'), { v: 2 }, 'and the store holds it')
  // A real conflict is still one: another writer changed the key in etcd, and this store has
  // not heard of it yet (its answers are held), so its compare fails in etcd.
  const other = connectEtcd({ endpoints: [etcd.endpoint], requestTimeoutMs: 2000 })
  t.teardown(() => other.close())
  const unheard = relay.holdReplies()
  t.teardown(unheard)
  await other.put(`/maitre/test/things/${encodeURIComponent('late')}`).value(JSON.stringify({ v: 9 }))
  const conflicting = codeOf(store.put('late', { v: 3 }, store.get('late')))
  setTimeout(unheard, 300)
  t.equal(await conflicting, 'MAITRE_STORE_CONFLICT', 'a write computed from what another writer changed is refused')
  await waitFor('the store to hold the other writer’s document', () => (store.get('late')?.v === 9 ? true : undefined), 3000)
  // The same for a delete.
  const again = relay.holdReplies()
  t.teardown(again)
  const deleting = codeOf(store.delete('late', store.get('late')))
  setTimeout(again, 1300)
  t.equal(await deleting, undefined, 'a delete sent again after a late answer succeeds')
  t.notOk(store.has('late'), 'and the document is gone')
})

t.test('etcd: a store is loaded a page of keys at a time, all of it and nothing beyond its prefix (one read of a large store passed the client’s answer cap)', async (t) => {
  const etcd = await startEtcd(t)
  const raw = new Etcd3({ hosts: etcd.endpoint })
  etcd.beforeStop(() => raw.close())
  for (const key of ['a', 'b', 'b\u0000x', 'c', 'd', 'e']) await raw.put(`/maitre/test/things/${key}`).value(JSON.stringify({ v: key.length }))
  // Keys that sort right around the store's range, in other stores.
  await raw.put('/maitre/test/things-else/z').value('{"v": 9}')
  await raw.put('/maitre/test/thingsZ').value('{"v": 9}')
  await raw.put('/maitre/test/thing').value('{"v": 9}')
  const client = connectEtcd({ endpoints: [etcd.endpoint], requestTimeoutMs: 2000 })
  const reads = recordReads(client)
  const store = await EtcdDirectory.open<Doc>(client, '/maitre/test/things/', 'thing', check, silentLogger, 2)
  etcd.beforeStop(async () => {
    await store.close()
    client.close()
  })
  t.same([...store.entries()].map(([key]) => key).sort(), ['a', 'b', 'b\u0000x', 'c', 'd', 'e'], 'every key of the store')
  t.equal(reads.length, 3, 'in three pages of two')
  await raw.put('/maitre/test/things/f').value('{"v": 1}')
  await waitFor('a write after the load', () => (store.get('f')?.v === 1 ? true : undefined), 3000)
  t.pass('and the watch takes over from the load’s revision')
})
