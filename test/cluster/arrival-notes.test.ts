/**
 * Routers tell each other of requests to adaptive versions (arrival-notes.ts), on real sockets,
 * into the very peer API that hears them (admin/peer.ts): the notes reach every other router
 * whole, gathered into one post, with how long ago each request arrived; a router alone, or one
 * whose peers are gone, loses nothing but those notes; and what waits is bounded.
 */
import t from 'tap'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { ArrivalNotes, MAX_PENDING, MAX_POST_BYTES, type ArrivalNoteOutcome } from '../../src/cluster/arrival-notes.ts'
import { handlePeer, type ArrivalsPeer, type PeerExchange } from '../../src/admin/peer.ts'
import { peerKey, PEER_KEY_HEADER } from '../../src/cluster/slot-exchange.ts'
import type { Member } from '../../src/cluster/coordination.ts'
import { sendError } from '../../src/http/error-response.ts'
import { silentLogger } from '../../src/log.ts'
import { waitFor } from '../fixtures/router.ts'

const KEY = peerKey('the-cluster-secret')

type Heard = Parameters<ArrivalsPeer['heard']>
interface Peer {
  readonly url: string
  readonly heard: Heard[]
  posts: number
}

/** A router's peer API, hearing arrivals only. */
async function peer(t: { teardown(fn: () => unknown): void }, key = KEY): Promise<Peer> {
  const exchange = { authorized: (given: string | undefined) => given === key } as PeerExchange
  const heard: Heard[] = []
  const arrivals: ArrivalsPeer = { heard: (asked, arrival) => void heard.push([asked, arrival]) }
  const state = { posts: 0 }
  const server: Server = createServer((req, res) => {
    state.posts += 1
    const url = new URL(req.url ?? '/', 'http://router')
    handlePeer({ req, res, url, cid: 'c1' }, exchange, undefined, undefined, undefined, arrivals).catch((err: unknown) => sendError(req, res, err, { cid: 'c1' }))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    server.closeAllConnections()
    return new Promise<void>((resolve) => server.close(() => resolve()))
  })
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  return {
    url,
    heard,
    get posts() {
      return state.posts
    },
  }
}

const member = (routerId: string, url: string): Member => ({ routerId, url, startedAt: 0 })

t.test('notes gathered for a moment reach every other router in one post each, with what the router saw and how long ago each request arrived', async (t) => {
  const a = await peer(t)
  const b = await peer(t)
  const outcomes: [ArrivalNoteOutcome, number][] = []
  const notes = new ArrivalNotes({ routerId: 'me', key: KEY, members: () => [member('me', 'http://127.0.0.1:1'), member('a', a.url), member('b', b.url)], log: silentLogger, flushMs: 50, onOutcome: (o, n) => outcomes.push([o, n]) })
  t.teardown(() => notes.close())
  const told = performance.now()
  notes.tell('s-1', { running: true, warm: true, idleForMs: 120_000 })
  notes.tell('s-2', { running: false, warm: false, idleForMs: undefined })
  await waitFor('both peers to hear both notes', () => (a.heard.length === 2 && b.heard.length === 2) || undefined)
  const waited = performance.now() - told
  t.equal(a.posts, 1, 'one post for both notes')
  t.equal(b.posts, 1)
  for (const { heard } of [a, b]) {
    t.same(heard.map(([serviceId]) => serviceId), ['s-1', 's-2'], 'each note names its version')
    t.match(heard[0]?.[1], { running: true, warm: true, idleForMs: 120_000 })
    t.match(heard[1]?.[1], { running: false, warm: false, idleForMs: undefined })
    const agoMs = heard[0]?.[1].agoMs ?? -1
    t.ok(agoMs >= 45 && agoMs <= waited + 1, `arrived ${agoMs} ms before it was sent (gathered for 50 ms)`)
  }
  await waitFor('both posts answered', () => outcomes.length === 2 || undefined)
  t.same(outcomes, [['sent', 2], ['sent', 2]], 'counted per peer')
})

t.test('a router alone posts nothing; a peer that is gone or refuses costs only its notes; close drops what waits', async (t) => {
  const alone = new ArrivalNotes({ routerId: 'me', key: KEY, members: () => [member('me', 'http://127.0.0.1:1')], log: silentLogger, flushMs: 10 })
  t.teardown(() => alone.close())
  alone.tell('s-1', { running: true, warm: true, idleForMs: 0 })

  const fine = await peer(t)
  const refusing = await peer(t, peerKey('another-cluster'))
  const outcomes: ArrivalNoteOutcome[] = []
  const notes = new ArrivalNotes({
    routerId: 'me',
    key: KEY,
    members: () => [member('gone', 'http://127.0.0.1:1'), member('refusing', refusing.url), member('fine', fine.url)],
    log: silentLogger,
    flushMs: 10,
    onOutcome: (o) => outcomes.push(o),
  })
  notes.tell('s-1', { running: true, warm: true, idleForMs: 0 })
  await waitFor('three outcomes', () => outcomes.length === 3 || undefined)
  t.same(outcomes.toSorted(), ['failed', 'failed', 'sent'], 'the gone peer’s post failed, so did the one the other cluster refused (401); the third took it')
  t.equal(refusing.heard.length, 0)
  t.equal(fine.heard.length, 1)
  await notes.close()
  notes.tell('s-2', { running: true, warm: true, idleForMs: 0 })
  const heard = fine.heard.length
  await new Promise((resolve) => setTimeout(resolve, 50))
  t.equal(fine.heard.length, heard, 'nothing told after close')
  t.equal(outcomes.length, 3)
})

t.test('bounded: notes beyond what may wait are dropped and counted; many split into posts under the body bound', async (t) => {
  const p = await peer(t)
  const outcomes: [ArrivalNoteOutcome, number][] = []
  const notes = new ArrivalNotes({ routerId: 'me', key: KEY, members: () => [member('p', p.url)], log: silentLogger, flushMs: 100, onOutcome: (o, n) => outcomes.push([o, n]) })
  t.teardown(() => notes.close())
  // Version ids of the longest kind (253 characters): MAX_PENDING notes are more than one post carries.
  const id = (i: number): string => `s-${i}-`.padEnd(253, 'x')
  for (let i = 0; i < MAX_PENDING + 5; i++) notes.tell(id(i), { running: true, warm: true, idleForMs: i })
  t.same(outcomes, [['dropped', 1], ['dropped', 1], ['dropped', 1], ['dropped', 1], ['dropped', 1]], 'the 5 beyond the bound dropped at once')
  await waitFor('every note', () => p.heard.length === MAX_PENDING || undefined, 20_000)
  t.ok(p.posts >= Math.ceil((MAX_PENDING * 300) / MAX_POST_BYTES), `split into ${p.posts} posts`)
  t.same(new Set(p.heard.map(([serviceId]) => serviceId)), new Set(Array.from({ length: MAX_PENDING }, (_, i) => id(i))), 'every note that waited arrived (posts go side by side: in any order)')
  const sentCount = (): number => outcomes.filter(([o]) => o === 'sent').reduce((sum, [, n]) => sum + n, 0)
  const sent = await waitFor('every post answered', () => (sentCount() === MAX_PENDING ? MAX_PENDING : undefined), 5000).catch(sentCount)
  t.equal(sent, MAX_PENDING)
})
