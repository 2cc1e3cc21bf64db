/**
 * Two routers' slot exchanges talking over real HTTP (the peer API on a socket), each with its own
 * tracker: wants travel, an idle share is lent to the router that waits, the outcome returns to
 * the lender, declined and broken offers release the lender's slot, a borrower that leaves the
 * cluster ends its offers, and kill vetoes lift the holds of the routers that agreed.
 */
import t from 'tap'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { InstanceTracker } from '../../src/backends/tracker.ts'
import type { Instance } from '../../src/backends/backend.ts'
import { SlotExchange, type SlotExchangeOptions } from '../../src/cluster/slot-exchange.ts'
import { shareOf } from '../../src/cluster/slot-shares.ts'
import type { PeerReport, SlotView } from '../../src/cluster/coordination.ts'
import { handlePeer } from '../../src/admin/peer.ts'
import { sendError } from '../../src/http/error-response.ts'
import { systemClock } from '../../src/clock.ts'
import { silentLogger } from '../../src/log.ts'
import { waitFor } from '../fixtures/router.ts'

const instance = (id: string): Instance => ({ id, serviceId: 's', host: '127.0.0.1', port: 1, extraPorts: [], proto: 'http', startedAt: 1, healthy: true, logDirectory: undefined, flags: new Set() })

interface Side {
  readonly tracker: InstanceTracker
  readonly exchange: SlotExchange
  readonly url: string
  peers: PeerReport[]
  members: string[]
  cutOff: boolean
  settling: boolean
}

type CollectHooks = Pick<SlotExchangeOptions, 'holdForCollection' | 'releaseCollectionHold' | 'collectedByLeader' | 'leaderId'>

async function router(t: { teardown(fn: () => unknown): void }, id: string, members: string[], gone: string[] = [], wantsRepeatMs?: number, hooks: CollectHooks & Pick<SlotExchangeOptions, 'peerTimeoutMs'> = {}): Promise<Side> {
  const tracker = new InstanceTracker({ clock: systemClock, ejectBaseMs: 10_000, maxEjectMs: 60_000 })
  const side: { peers: PeerReport[]; members: string[]; cutOff: boolean; settling: boolean } = { peers: [], members, cutOff: false, settling: false }
  const view = (): SlotView => ({ members: side.members, peers: side.peers, cutOff: side.cutOff, settling: side.settling })
  const exchange = new SlotExchange({ routerId: id, secret: 'shared', tracker, view, clock: systemClock, log: silentLogger, killEjectMs: 10_000, onPeerGone: (peer) => void gone.push(peer), ...(wantsRepeatMs === undefined ? {} : { wantsRepeatMs }), ...hooks })
  tracker.shareSlots(exchange)
  tracker.configure('s', { concurrencyLevel: 2, loadBalancing: 'oldest', maxQueueLength: 10 })
  tracker.sync('s', [instance('i')], undefined)
  const server: Server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://router')
    handlePeer({ req, res, url, cid: 'c' }, exchange).catch((err: unknown) => sendError(req, res, err, { cid: 'c' }))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    await exchange.close()
    server.closeAllConnections()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  })
  return Object.assign(side, { tracker, exchange, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` })
}

/** Two routers that see each other; instance i (concurrency-level 2) gives each one slot. */
async function pair(t: { teardown(fn: () => unknown): void }, options: Pick<SlotExchangeOptions, 'peerTimeoutMs'> = {}) {
  const members = ['router-a', 'router-b']
  const a = await router(t, 'router-a', members, [], undefined, options)
  const b = await router(t, 'router-b', members, [], undefined, options)
  a.peers = [{ routerId: 'router-b', url: b.url, members, over: () => 0 }]
  b.peers = [{ routerId: 'router-a', url: a.url, members, over: () => 0 }]
  a.exchange.viewChanged()
  b.exchange.viewChanged()
  return { a, b }
}

/** Slots in use in a router's tracker, lent ones included (its load counts only its own requests). */
const held = (r: { tracker: { instanceSlots(id: string): readonly { used: number }[] } }, serviceId: string): number => r.tracker.instanceSlots(serviceId).reduce((n, slot) => n + slot.used, 0)

t.test('a router with requests waiting borrows the other’s idle share; the outcome goes back to the lender', async (t) => {
  const { a, b } = await pair(t)
  t.same([a.tracker.load('s').slotsAvailable, b.tracker.load('s').slotsAvailable], [1, 1], 'one slot each of concurrency-level 2')
  const own = a.tracker.tryAcquire('s')
  t.ok(own, 'a takes its own slot')
  const borrowed = await a.tracker.acquire('s', { timeoutMs: 5000 })
  t.equal(borrowed.instance.id, 'i', 'a second request on a is served by b’s slot')
  t.equal(held(b, 's'), 1, 'the lent slot is held on the lender (kill vetoes, routing)')
  t.equal(b.tracker.load('s').inFlight, 0, 'but its request counts in the borrower’s load, not the lender’s (for scaling and GC)')
  t.equal(a.tracker.load('s').inFlight, 2, 'the borrower counts both its requests: the fleet’s sum counts each once')
  t.equal(b.tracker.tryAcquire('s'), undefined, 'b cannot use the slot it lent')
  borrowed.release('instance-error')
  await waitFor('the lender to hear how it went', () => (held(b, 's') === 0 ? true : undefined))
  t.ok((b.tracker.instanceSlots('s')[0]?.ejectedUntil ?? 0) > Date.now(), 'an instance error on a borrowed slot ejects the instance on the lender')
  own?.release('success')
})

t.test('a lender whose offer nobody takes any more keeps its slot; one whose borrower left the cluster gets it back', async (t) => {
  const { a, b } = await pair(t)
  const own = a.tracker.tryAcquire('s')
  const aborter = new AbortController()
  const waiting = a.tracker.acquire('s', { timeoutMs: 5000, signal: aborter.signal })
  const borrowed = await waiting
  t.equal(held(b, 's'), 1)
  // a leaves b's view (it died, or was cut off): its offer ends; b holds the slot for the
  // handover (a request a still runs is a's own now), then has it back.
  b.peers = []
  const endedAt = Date.now()
  b.exchange.viewChanged()
  await waitFor('the lender to have its slot back', () => (held(b, 's') === 0 ? true : undefined), 5000)
  t.ok(Date.now() - endedAt >= 1400, `held for the hand-over (${Date.now() - endedAt} ms), so a borrower that lives on reports the request as its own first`)
  borrowed.release('success')
  own?.release('success')
  // Nobody waits on a: an offer b makes is declined, and b keeps its slot.
  b.peers = [{ routerId: 'router-a', url: a.url, members: ['router-a', 'router-b'], over: () => 0 }]
  b.exchange.viewChanged()
  b.exchange.receiveWants('router-a', { s: 1 })
  await waitFor('the declined offer to release b’s slot', () => (held(b, 's') === 0 && b.tracker.load('s').slotsAvailable === 1 ? true : undefined))
  t.equal(b.tracker.tryAcquire('s')?.instance.id, 'i', 'b serves its own request with it')
})

t.test('an instance lent before the borrower knew it (declined) is lent again as soon as the borrower learns it, not at the next repeat of its wants', async (t) => {
  const members = ['router-a', 'router-b']
  // Wants told again only once a minute: the lending below cannot wait for the repeat.
  const a = await router(t, 'router-a', members, [], 60_000)
  const b = await router(t, 'router-b', members, [], 60_000)
  a.peers = [{ routerId: 'router-b', url: b.url, members, over: () => 0 }]
  b.peers = [{ routerId: 'router-a', url: a.url, members, over: () => 0 }]
  a.exchange.viewChanged()
  b.exchange.viewChanged()
  // A concurrency-level 1 version whose one new instance's slot is b's share, not a's.
  const j = ['j0', 'j1', 'j2', 'j3', 'j4', 'j5', 'j6', 'j7'].find((id) => shareOf(id, 1, members, 'router-b') === 1) as string
  for (const side of [a, b]) side.tracker.configure('t', { concurrencyLevel: 1, loadBalancing: 'oldest', maxQueueLength: 10 })
  const heard: number[] = []
  const receiveWants = b.exchange.receiveWants.bind(b.exchange)
  b.exchange.receiveWants = (from, wants) => {
    if (wants['t'] !== undefined) heard.push(wants['t'])
    receiveWants(from, wants)
  }
  const waiting = a.tracker.acquire('t', { timeoutMs: 20_000 })
  await waitFor('b to hear that a waits', () => (heard.length === 1 ? true : undefined))
  // b learns of j first and lends its slot to a, which does not know j yet: declined.
  b.tracker.sync('t', [{ ...instance(j), serviceId: 't' }], undefined)
  t.equal(held(b, 't'), 1, 'b lent its slot of j at once')
  await waitFor('the declined offer to give b its slot back', () => (held(b, 't') === 0 ? true : undefined))
  t.same(heard, [1], 'a said it waits once so far')
  // a learns of j: none of its slots is a's, so a tells b again that it waits, and b lends.
  a.tracker.sync('t', [{ ...instance(j), serviceId: 't' }], undefined)
  const lease = await waiting
  t.equal(lease.instance.id, j, 'a’s request is served on b’s slot of j')
  t.equal(held(b, 't'), 1, 'held on the lender')
  t.equal(a.tracker.load('t').inFlight, 1, 'counted in the borrower’s load')
  lease.release('success')
  await waitFor('the lender to have its slot back', () => (held(b, 't') === 0 ? true : undefined))
})

t.test('an instance the borrower has ejected is declined, and a slot of another instance is lent instead: no free slot idles while a request waits', async (t) => {
  const { a, b } = await pair(t)
  // Two instances of concurrency-level 2: each router holds one slot of i and one of j.
  for (const side of [a, b]) side.tracker.sync('s', [instance('i'), instance('j')], undefined)
  t.same([a.tracker.load('s').slotsAvailable, b.tracker.load('s').slotsAvailable], [2, 2])
  // On a, i answers one 503: ejected there (for 10 s), not on b, which prefers i (the oldest).
  const first = a.tracker.tryAcquire('s')
  t.equal(first?.instance.id, 'i')
  first?.release('instance-busy')
  const own = a.tracker.tryAcquire('s')
  t.equal(own?.instance.id, 'j', 'a’s own slot of j')
  const lease = await a.tracker.acquire('s', { timeoutMs: 3000 })
  t.equal(lease.instance.id, 'j', 'the request waiting on a is served on b’s slot of j, not left to wait out i’s ejection')
  t.same(b.tracker.instanceSlots('s').map((slot) => [slot.id, slot.used]), [['i', 0], ['j', 1]], 'b holds the lent slot of j; its slot of i went back')
  lease.release('success')
  own?.release('success')
  await waitFor('the lender to have its slot back', () => (held(b, 's') === 0 ? true : undefined))
})

t.test('a kill another router vetoes lifts the hold of those that agreed', async (t) => {
  const members = ['router-a', 'router-b', 'router-c']
  const [a, b, c] = [await router(t, 'router-a', members), await router(t, 'router-b', members), await router(t, 'router-c', members)] as [Side, Side, Side]
  for (const side of [a, b, c]) {
    side.tracker.configure('s', { concurrencyLevel: 3, loadBalancing: 'oldest', maxQueueLength: 10 })
    side.peers = [a, b, c].filter((o) => o !== side).map((o) => ({ routerId: members[[a, b, c].indexOf(o)] as string, url: o.url, members, over: () => 0 }))
    side.exchange.viewChanged()
  }
  const busy = b.tracker.tryAcquire('s')
  t.ok(busy, 'b carries a request on i')
  t.notOk(await a.exchange.allowKill('s', 'i'), 'so the leader (a) is vetoed')
  const onC = c.tracker.tryAcquire('s')
  t.equal(onC?.instance.id, 'i', 'c, which agreed and held i out of rotation, has it back at once')
  onC?.release('success')
  busy?.release('success')
  t.ok(await a.exchange.allowKill('s', 'i'), 'with nobody carrying a request there, everyone agrees')
  t.equal(b.tracker.tryAcquire('s'), undefined, 'and b holds it out of rotation for the kill')
  // The kill fails at the backend (or a loses leadership): called off, b and c serve on i at once.
  await a.exchange.cancelKill('s', 'i')
  for (const [name, side] of [['b', b], ['c', c]] as const) {
    const lease = side.tracker.tryAcquire('s')
    t.equal(lease?.instance.id, 'i', `${name} has i back in rotation once the kill is called off`)
    lease?.release('success')
  }
})

t.test('a router cut off from etcd serves on while its peers still count it, and fills no slot of its own once they do not', async (t) => {
  const { a, b } = await pair(t)
  a.cutOff = true
  await a.exchange.checkFence()
  t.notOk(a.exchange.fenced, 'etcd away for everyone: b still counts a, so a serves on with its share')
  t.equal(a.tracker.load('s').slotsAvailable, 1)
  // b reaches etcd and let a's lease lapse: a's shares are b's now.
  b.members = ['router-b']
  b.peers = []
  b.exchange.viewChanged()
  t.equal(b.tracker.load('s').slotsAvailable, 2, 'b deals itself every slot of i')
  await a.exchange.checkFence()
  t.ok(a.exchange.fenced, 'b no longer counts a: a is fenced')
  t.equal(a.tracker.load('s').slotsAvailable, 0, 'and fills no slot of its own, so i never gets more than concurrency-level')
  a.cutOff = false
  await a.exchange.checkFence()
  t.notOk(a.exchange.fenced, 'etcd confirms a again: its shares are back')
  t.equal(a.tracker.load('s').slotsAvailable, 1)
  a.cutOff = true
  a.peers = [{ routerId: 'router-b', url: 'http://127.0.0.1:1', members: ['router-a', 'router-b'], over: () => 0 }]
  await a.exchange.checkFence()
  t.ok(a.exchange.fenced, 'cut off from etcd and from every peer: nobody can vouch for it, so it is fenced too')
})

t.test('a peer whose port refuses connections is reported gone (its process is), so its slots can be dealt anew', async (t) => {
  const gone: string[] = []
  const a = await router(t, 'router-a', ['router-a', 'router-b'], gone)
  const closed = createServer()
  await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve))
  const deadUrl = `http://127.0.0.1:${(closed.address() as AddressInfo).port}`
  await new Promise<void>((resolve) => closed.close(() => resolve()))
  a.peers = [{ routerId: 'router-b', url: deadUrl, members: ['router-a', 'router-b'], over: () => 0 }]
  a.exchange.viewChanged()
  const own = a.tracker.tryAcquire('s')
  const waiting = a.tracker.acquire('s', { timeoutMs: 200 }).catch((err: unknown) => err)
  await waitFor('a’s wants to b were refused', () => (gone.length > 0 ? true : undefined))
  t.same(gone, ['router-b'])
  t.match(await waiting, { code: 'MAITRE_QUEUE_TIMEOUT' })
  own?.release('success')
})

t.test('a member another router deals without is checked from here too, and reported gone if its port refuses', async (t) => {
  const gone: string[] = []
  const members = ['router-a', 'router-b', 'router-c']
  const a = await router(t, 'router-a', members, gone)
  const b = await router(t, 'router-b', members)
  const closed = createServer()
  await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve))
  const deadUrl = `http://127.0.0.1:${(closed.address() as AddressInfo).port}`
  await new Promise<void>((resolve) => closed.close(() => resolve()))
  // b found c dead and deals without it; a has no queue of its own, so it would never call c.
  a.peers = [
    { routerId: 'router-b', url: b.url, members: ['router-a', 'router-b'], over: () => 0 },
    { routerId: 'router-c', url: deadUrl, members, over: () => 0 },
  ]
  a.exchange.viewChanged()
  await waitFor('a to check c and find it gone', () => (gone.length > 0 ? true : undefined))
  t.same(gone, ['router-c'])
})

t.test('however many offers are held open, a kill’s eject and a want still go through at once', async (t) => {
  // A peer call's deadline of 10 s (1 s by default): an eject stuck behind the held offers would
  // end at it, and read as a veto too, so only the time tells the two apart.
  const { a, b } = await pair(t, { peerTimeoutMs: 10_000 })
  for (const side of [a, b]) side.tracker.configure('s', { concurrencyLevel: 160, loadBalancing: 'oldest', maxQueueLength: 200 })
  a.exchange.viewChanged()
  b.exchange.viewChanged()
  // b fills its own 80 slots, then 80 more requests wait there: a lends them all its 80.
  const own = Array.from({ length: 80 }, () => b.tracker.tryAcquire('s'))
  t.ok(own.every((l) => l !== undefined), 'b holds 80 slots of its own')
  const borrowed = Array.from({ length: 80 }, () => b.tracker.acquire('s', { timeoutMs: 10_000 }))
  const leases = await Promise.all(borrowed)
  t.equal(held(a, 's'), 80, 'a lent 80 slots: 80 offers held open, more than a connection pool of 64')
  const started = Date.now()
  t.notOk(await a.exchange.allowKill('s', 'i'), 'b carries requests on i: vetoed')
  const took = Date.now() - started
  t.ok(took < 3000, `answered in ${took} ms, not stuck behind the held offers until the call's 10 s deadline`)
  for (const lease of leases) lease.release('success')
  for (const lease of own) lease?.release('success')
  await waitFor('every lent slot back', () => (held(a, 's') === 0 ? true : undefined), 5000)
})

t.test('a router that has just joined fills no slot of its own until its peers have seen its claims; it borrows meanwhile', async (t) => {
  const { a, b } = await pair(t)
  a.settling = true
  a.exchange.viewChanged()
  t.equal(a.tracker.load('s').slotsAvailable, 0, 'settling: none of its own')
  const borrowed = await a.tracker.acquire('s', { timeoutMs: 5000 })
  t.equal(held(b, 's'), 1, 'its request is served by a slot b lends')
  borrowed.release('success')
  a.settling = false
  a.exchange.viewChanged()
  t.equal(a.tracker.load('s').slotsAvailable, 1, 'settled: its share is its own')
})

t.test('the leader’s collection of a version: a router using it vetoes; one that agrees holds its requests for it until the collection is over', async (t) => {
  const members = ['router-a', 'router-b']
  const a = await router(t, 'router-a', members)
  const held: string[] = []
  const released: string[] = []
  const collected: [string, string, number][] = []
  const judgedBy: (number | undefined)[] = []
  let using = false
  const bSide = await router(t, 'router-b', members, [], undefined, {
    holdForCollection: (serviceId, lastActiveAt) => {
      judgedBy.push(lastActiveAt)
      if (using) return false
      held.push(serviceId)
      return true
    },
    releaseCollectionHold: (serviceId) => void released.push(serviceId),
    collectedByLeader: (serviceId, reason, lastActiveAt) => void collected.push([serviceId, reason, lastActiveAt]),
  })
  a.peers = [{ routerId: 'router-b', url: bSide.url, members, over: () => 0 }]
  a.exchange.viewChanged()
  t.equal(await a.exchange.allowCollect('s', 1000, 'idle'), true, 'b does not use it: yes')
  t.same(held, ['s'], 'and holds its requests for it')
  await a.exchange.collectDone('s', { reason: 'idle', lastActiveAt: 1000 })
  t.same(released, ['s'], 'released when the collection is over')
  t.same(collected, [['s', 'idle', 1000]], 'and told the version went, why, and when it was last used (its keep-alive learns it was let go)')
  t.equal(await a.exchange.allowCollect('s', 1000, 'stale'), true)
  t.same(judgedBy, [1000, undefined], 'a stale (or broken) version is not judged by when it was last used')
  await a.exchange.collectDone('s', undefined)
  t.same(collected, [['s', 'idle', 1000]], 'a collection that did not take the version tells nothing of one')
  // b agrees, a router that cannot be asked vetoes: b is released at once, not after 30 s.
  a.peers = [{ routerId: 'router-b', url: bSide.url, members, over: () => 0 }, { routerId: 'router-c', url: 'http://127.0.0.1:1', members, over: () => 0 }]
  a.exchange.viewChanged()
  released.length = 0
  t.equal(await a.exchange.allowCollect('s', 1000, 'idle'), false, 'a router that cannot be asked may be using it: a veto')
  t.same(released, ['s'], 'and every router that may hold its requests is released')
  using = true
  t.equal(await a.exchange.allowCollect('s', 1000, 'idle'), false, 'b uses it: a veto')
})

t.test('a collection asked for by a router this one does not know as the leader is vetoed, and nothing is held for it; only the leader’s word that it is over releases a hold', async (t) => {
  // A new leader that asks before a follower heard of the change: were it held, the change (which
  // lets go of the old leader's holds) would let requests start the version it then deletes.
  const members = ['router-a', 'router-b']
  const a = await router(t, 'router-a', members)
  const held: string[] = []
  let leader: string | undefined = 'router-old'
  const released: string[] = []
  const b = await router(t, 'router-b', members, [], undefined, {
    holdForCollection: (serviceId) => {
      held.push(serviceId)
      return true
    },
    releaseCollectionHold: (serviceId) => void released.push(serviceId),
    leaderId: () => leader,
  })
  a.peers = [{ routerId: 'router-b', url: b.url, members, over: () => 0 }]
  a.exchange.viewChanged()
  t.equal(await a.exchange.allowCollect('s', 1000, 'idle'), false, 'b still knows another leader: a veto')
  leader = undefined
  t.equal(await a.exchange.allowCollect('s', 1000, 'idle'), false, 'b knows no leader: a veto')
  t.same(held, [], 'and b held no request for either')
  leader = 'router-a'
  t.equal(await a.exchange.allowCollect('s', 1000, 'idle'), true, 'once b knows a leads, it agrees')
  t.same(held, ['s'], 'and holds its requests for it')
  // a loses the lead to c, which asks b to hold for the same version; a's collection, which went
  // on, then says it is over: that releases nothing of c's hold.
  leader = 'router-c'
  t.equal(b.exchange.receiveCollect('s', 1000, 30_000, 'idle', false, false, 'router-c'), true, 'b holds for c')
  await a.exchange.collectDone('s', { reason: 'idle', lastActiveAt: 1000 })
  t.same(released, [], 'the old leader’s word that its collection is over leaves the new one’s hold')
  t.equal(b.exchange.receiveCollect('s', 0, 0, 'idle', true, false, 'router-c'), true)
  t.same(released, ['s'], 'the leader’s own word releases it')
})

t.test('an offer refused at connect (nobody listens: a draining or dead borrower) gives the lender its slot back at once, not after the handover', async (t) => {
  // A port nobody listens on.
  const closed: Server = createServer()
  await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve))
  const port = (closed.address() as AddressInfo).port
  await new Promise<void>((resolve) => closed.close(() => resolve()))
  const members = ['router-a', 'router-b']
  const tracker = new InstanceTracker({ clock: systemClock, ejectBaseMs: 10_000, maxEjectMs: 60_000 })
  const peers: PeerReport[] = [{ routerId: 'router-b', url: `http://127.0.0.1:${port}`, members, over: () => 0, draining: true }]
  const gone: string[] = []
  const exchange = new SlotExchange({ routerId: 'router-a', secret: 'x', tracker, view: (): SlotView => ({ members, peers, cutOff: false, settling: false }), clock: systemClock, log: silentLogger, killEjectMs: 10_000, onPeerGone: (p) => void gone.push(p) })
  t.teardown(() => exchange.close())
  tracker.shareSlots(exchange)
  // Concurrency-level 2 over two routers: router-a holds one slot of i.
  tracker.configure('s', { concurrencyLevel: 2, loadBalancing: 'oldest', maxQueueLength: 10 })
  tracker.sync('s', [instance('i')], undefined)
  t.equal(tracker.load('s').slotsAvailable, 1, 'a holds one free slot')
  exchange.receiveWants('router-b', { s: 1 })
  t.equal(tracker.load('s').slotsAvailable, 0, 'and lends it to b, which says requests wait there')
  await waitFor('the offer to be refused', () => (gone.includes('router-b') ? true : undefined), 2000)
  await waitFor('the slot to come back', () => (tracker.load('s').slotsAvailable === 1 ? true : undefined), 500).catch(() => undefined)
  const own = tracker.tryAcquire('s')
  t.ok(own !== undefined, 'a’s own request gets the slot at once: the offer never reached anyone')
  own?.release('success')
})

t.test('wants nobody repeats are forgotten, even for a version whose slots never free here again', async (t) => {
  const tracker = new InstanceTracker({ clock: systemClock, ejectBaseMs: 10_000, maxEjectMs: 60_000 })
  const members = ['router-a', 'router-b']
  const exchange = new SlotExchange({ routerId: 'router-a', secret: 'x', tracker, view: (): SlotView => ({ members, peers: [], cutOff: false, settling: false }), clock: systemClock, log: silentLogger, killEjectMs: 10_000, wantsRepeatMs: 100 })
  t.teardown(() => exchange.close())
  tracker.shareSlots(exchange)
  // Versions this router does not run (collected, say): nothing here ever frees a slot of them.
  exchange.receiveWants('router-b', { gone1: 2, gone2: 1 })
  t.equal(exchange.wantsHeld, 2, 'held while they may still be repeated')
  await waitFor('the wants to expire (3 s) and be forgotten', () => (exchange.wantsHeld === 0 ? true : undefined), 6000).catch(() => undefined)
  t.equal(exchange.wantsHeld, 0, 'forgotten once expired')
})

t.test('a lender that leaves: the request it lent a slot to counts on the borrower at once, so the slot is never filled twice', async (t) => {
  // Concurrency-level 1 and three routers: the one slot of instance i is a's; c is next in line.
  const all = ['router-a', 'router-b', 'router-c']
  const a = await router(t, 'router-a', all)
  const b = await router(t, 'router-b', all)
  const c = await router(t, 'router-c', all)
  const level = 1
  const id = Array.from({ length: 500 }, (_, n) => `i${n}`).find((i) => shareOf(i, level, all, 'router-a') === 1 && shareOf(i, level, ['router-b', 'router-c'], 'router-c') === 1) as string
  for (const side of [a, b, c]) {
    side.tracker.configure('s', { concurrencyLevel: level, loadBalancing: 'oldest', maxQueueLength: 10 })
    side.tracker.sync('s', [instance(id)], undefined)
  }
  const report = (routerId: string, url: string, members: string[], over: () => number = () => 0): PeerReport => ({ routerId, url, members, over })
  a.peers = [report('router-b', b.url, all), report('router-c', c.url, all)]
  b.peers = [report('router-a', a.url, all), report('router-c', c.url, all)]
  c.peers = [report('router-a', a.url, all), report('router-b', b.url, all)]
  for (const side of [a, b, c]) side.exchange.viewChanged()
  // b's request borrows a's slot.
  const lease = await b.tracker.acquire('s', { timeoutMs: 5000 })
  t.equal(held(a, 's'), 1, 'a lent its slot to b')
  t.equal([...b.tracker.overLimit()].length, 0, 'a borrowed request is the lender’s claim, not the borrower’s')
  // a leaves b's view (its lease revoked, or found dead) before its offer's connection broke.
  b.members = ['router-b', 'router-c']
  b.peers = [report('router-c', c.url, all)]
  b.exchange.viewChanged()
  t.same([...b.tracker.overLimit()], [['s', id, 1]], 'b counts the request as its own at once, over its share: its next report says so')
  // c sees a gone while b's report is still the one made before.
  c.members = ['router-b', 'router-c']
  c.peers = [report('router-b', b.url, all)]
  c.exchange.viewChanged()
  t.equal(c.exchange.limit('s', id, level), 0, 'c does not fill the slot while b’s report still deals with a')
  c.peers = [report('router-b', b.url, ['router-b', 'router-c'], () => 1)]
  c.exchange.viewChanged()
  t.equal(c.exchange.limit('s', id, level), 0, 'nor while b reports the request it carries there')
  lease.release('success')
  c.peers = [report('router-b', b.url, ['router-b', 'router-c'])]
  c.exchange.viewChanged()
  // (b's withdrawn wants may still be on their way to c, which then lends b the slot once, declined.)
  const mine = await waitFor('c to take the slot once b reports it let go', () => c.tracker.tryAcquire('s'), 3000)
  t.ok(mine, 'c takes the slot once b reports it let go')
  // b waits now (c holds the one slot). An offer from a router b no longer counts is declined:
  // its slots are being dealt anew. One from a member is taken.
  const waiting = b.tracker.acquire('s', { timeoutMs: 5000 }).then(() => 'granted', () => 'timed out')
  t.equal(b.exchange.receiveOffer('s', id, 'router-a'), undefined, 'a gone lender’s offer is declined')
  t.ok(b.exchange.receiveOffer('s', id, 'router-c'), 'a member’s offer is taken')
  t.equal(await waiting, 'granted')
  mine.release('success')
})

t.test('a peer too slow to answer a kill’s eject (a veto) is released once its yes comes, after it, so no hold outlives the kill that is not coming', async (t) => {
  // Fake peers: each records what it is asked, in the order its answers go out. The slow one
  // answers a hold only when the test says (a router paused by GC or CPU limits); releases at once.
  const fakePeer = async (gated: boolean): Promise<{ url: string; asked: number[]; answer: () => void }> => {
    const asked: number[] = []
    let answer = (): void => undefined
    const server = createServer((req, res) => {
      let body = ''
      req.on('data', (chunk: Buffer) => (body += chunk.toString()))
      req.on('end', () => {
        const { periodMs } = JSON.parse(body) as { periodMs: number }
        const reply = (): void => {
          asked.push(periodMs)
          res.writeHead(200, { 'content-type': 'application/json' })
          res.end('{}')
        }
        if (gated && periodMs !== 0) answer = reply
        else reply()
      })
    })
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    t.teardown(() => {
      server.closeAllConnections()
      server.close()
    })
    return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, asked, answer: () => answer() }
  }
  const members = ['router-a', 'router-b', 'router-c']
  const slow = await fakePeer(true)
  const fast = await fakePeer(false)
  const a = await router(t, 'router-a', members, [], undefined, { peerTimeoutMs: 1000 })
  a.peers = [
    { routerId: 'router-b', url: slow.url, members, over: () => 0 },
    { routerId: 'router-c', url: fast.url, members, over: () => 0 },
  ]
  a.exchange.viewChanged()
  t.notOk(await a.exchange.allowKill('s', 'i'), 'no answer from b in time: a veto')
  t.same(fast.asked, [10_000, 0], 'c, which agreed in time, is released at once')
  t.same(slow.asked, [], 'b has not answered yet')
  slow.answer()
  await waitFor('b to be released', () => (slow.asked.length === 2 ? true : undefined), 3000)
  t.same(slow.asked, [10_000, 0], 'b is released after it answered yes to the hold, never before it')
  // The same for a collection's hold.
  slow.asked.length = 0
  fast.asked.length = 0
  t.notOk(await a.exchange.allowCollect('s', 0, 'idle'), 'a collection b does not answer in time is vetoed')
  slow.answer()
  await waitFor('b to be released from the collection', () => (slow.asked.length === 2 ? true : undefined), 3000)
  t.same(slow.asked, [30_000, 0], 'and b is released after its yes')
  t.same(fast.asked, [30_000, 0])
})
