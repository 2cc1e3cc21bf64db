/**
 * Read-your-writes across routers (peer-sync.ts), on real sockets: a write's announcement
 * resolves once every peer answered, calls nobody on a router alone, and does not hold a write
 * longer than its timeout for a peer that never answers or answers with an error.
 */
import t from 'tap'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { PeerSync, type PeerSyncOutcome } from '../../src/cluster/peer-sync.ts'
import { PEER_KEY_HEADER } from '../../src/cluster/slot-exchange.ts'
import type { Member } from '../../src/cluster/coordination.ts'
import { silentLogger } from '../../src/log.ts'

interface Heard {
  readonly path: string | undefined
  readonly key: string | undefined
  readonly body: unknown
}

async function peer(t: { teardown(fn: () => unknown): void }, answer: (res: ServerResponse, req: IncomingMessage) => void): Promise<{ url: string; heard: Heard[] }> {
  const heard: Heard[] = []
  const server = createServer((req, res) => {
    let text = ''
    req.on('data', (chunk: Buffer) => (text += chunk.toString()))
    req.on('end', () => {
      heard.push({ path: req.url, key: req.headers[PEER_KEY_HEADER] as string | undefined, body: JSON.parse(text) })
      answer(res, req)
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    server.closeAllConnections()
    return new Promise<void>((resolve) => server.close(() => resolve()))
  })
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, heard }
}

const member = (routerId: string, url: string): Member => ({ routerId, url, startedAt: 0 })

t.test('a write waits for every peer to confirm it has read it, and tells the peers what and where', async (t) => {
  let release: (() => void) | undefined
  const slow = await peer(t, (res) => {
    release = () => res.end('{}')
  })
  const quick = await peer(t, (res) => res.end('{}'))
  const outcomes: PeerSyncOutcome[] = []
  const sync = new PeerSync({ routerId: 'me', key: 'k3y', members: () => [member('me', 'http://127.0.0.1:1'), member('slow', slow.url), member('quick', quick.url)], log: silentLogger, onOutcome: (o) => outcomes.push(o) })
  t.teardown(() => sync.close())
  let done = false
  const announcing = sync.announce('tokens', 'my-token').then(() => (done = true))
  while (release === undefined) await new Promise((r) => setImmediate(r))
  t.same(quick.heard, [{ path: '/maitre-peer/refresh', key: 'k3y', body: { store: 'tokens', key: 'my-token' } }], 'each peer is told the store and key, with the cluster’s key')
  t.notOk(done, 'not done while a peer has not answered')
  release()
  await announcing
  t.same(outcomes, ['confirmed', 'confirmed'])
  t.equal(slow.heard.length + quick.heard.length, 2, 'the router itself is not called')
})

t.test('a router alone calls nobody', async (t) => {
  const outcomes: PeerSyncOutcome[] = []
  const sync = new PeerSync({ routerId: 'me', key: 'k', members: () => [member('me', 'http://127.0.0.1:1')], log: silentLogger, onOutcome: (o) => outcomes.push(o) })
  t.teardown(() => sync.close())
  await sync.announce('tokens', 't')
  t.same(outcomes, [], 'no call was made, not even to itself')
})

t.test('a peer that never answers, or refuses, holds a write no longer than the timeout; the others still confirm', async (t) => {
  const silent = await peer(t, () => undefined)
  const refusing = await peer(t, (res) => {
    res.statusCode = 503
    res.end('{}')
  })
  const fine = await peer(t, (res) => res.end('{}'))
  const outcomes: PeerSyncOutcome[] = []
  const sync = new PeerSync({
    routerId: 'me',
    key: 'k',
    members: () => [member('silent', silent.url), member('refusing', refusing.url), member('fine', fine.url), member('gone', 'http://127.0.0.1:1')],
    log: silentLogger,
    timeoutMs: 300,
    onOutcome: (o) => outcomes.push(o),
  })
  t.teardown(() => sync.close())
  const started = Date.now()
  await sync.announce('services', 'v1')
  const took = Date.now() - started
  t.ok(took >= 290 && took < 2000, `resolved after the timeout (${took} ms), not before and not much later`)
  t.same(outcomes.sort(), ['confirmed', 'unconfirmed', 'unconfirmed', 'unconfirmed'], 'only the peer that answered 200 confirmed')
})

t.test('a peer that did not confirm is told of later writes without being waited for, until it confirms one again', async (t) => {
  // Silent for the first two writes, back for the third, slow (150 ms) for the fourth.
  const flaky = await peer(t, (res) => {
    const n = flaky.heard.length
    if (n === 3) res.end('{}')
    if (n === 4) setTimeout(() => res.end('{}'), 150)
  })
  const outcomes: PeerSyncOutcome[] = []
  const sync = new PeerSync({ routerId: 'me', key: 'k', members: () => [member('flaky', flaky.url)], log: silentLogger, timeoutMs: 1000, onOutcome: (o) => outcomes.push(o) })
  t.teardown(() => sync.close())
  let started = Date.now()
  await sync.announce('tokens', 'a')
  t.ok(Date.now() - started >= 990, 'the first write waited out the timeout')
  started = Date.now()
  await sync.announce('tokens', 'b')
  t.ok(Date.now() - started < 500, `the next did not wait for its 1 s (${Date.now() - started} ms)`)
  // It is still told: once it confirms a write, it is waited for again.
  await sync.announce('tokens', 'c')
  while (outcomes.length < 3) await new Promise((r) => setTimeout(r, 10))
  t.same(outcomes, ['unconfirmed', 'confirmed', 'unconfirmed'], 'a and b went unconfirmed, c confirmed')
  started = Date.now()
  await sync.announce('tokens', 'd')
  t.ok(Date.now() - started >= 140, `back in favour, it is waited for (${Date.now() - started} ms)`)
  t.same(flaky.heard.map((h) => (h.body as { key: string }).key), ['a', 'b', 'c', 'd'], 'it heard of every write')
})

t.test('a peer that left the membership is forgotten: back (a router restarted with its id), it is waited for again', async (t) => {
  let members: Member[] = []
  const silent = await peer(t, () => undefined)
  const sync = new PeerSync({ routerId: 'me', key: 'k', members: () => members, log: silentLogger, timeoutMs: 200 })
  t.teardown(() => sync.close())
  members = [member('r2', silent.url)]
  await sync.announce('tokens', 'a')
  members = []
  await sync.announce('tokens', 'b')
  // Restarted at another address, slow to answer this once.
  const restarted = await peer(t, (res) => setTimeout(() => res.end('{}'), 100))
  members = [member('r2', restarted.url)]
  const started = Date.now()
  await sync.announce('tokens', 'c')
  t.ok(Date.now() - started >= 90, `the restarted router was waited for (${Date.now() - started} ms)`)
  t.same(restarted.heard.map((h) => (h.body as { key: string }).key), ['c'])
})
