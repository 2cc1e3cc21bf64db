/**
 * Membership, leadership and the load exchange against a real etcd: one leader among three,
 * handed over at once on a clean leave and within the lease TTL when a router goes silent, and
 * loads summed over the other routers.
 */
import t from 'tap'
import { connectEtcd } from '../../src/cluster/etcd/connect.ts'
import { SETTLE_MS } from '../../src/cluster/etcd/coordinator.ts'
import { startEtcd, followLeasedKey } from '../fixtures/etcd.ts'
import { leaders, node } from '../fixtures/coordinator-node.ts'
import { waitFor, within } from '../fixtures/router.ts'
import { flapOnNextWatch, startRelay } from '../fixtures/tcp-cut.ts'

t.test('three routers: one leader, everyone agrees; a clean leave hands over at once', async (t) => {
  const etcd = await startEtcd(t)
  // A 10 s TTL: a leader key left to lapse would hold the hand-over off for 6.7 s or more (etcd3
  // renews every third of the TTL), well clear of a revoke's hand-over on a loaded machine.
  const nodes = [await node(etcd, 'a', etcd.endpoint, 10), await node(etcd, 'b', etcd.endpoint, 10), await node(etcd, 'c', etcd.endpoint, 10)]
  await waitFor('every router sees three members', () => (nodes.every((n) => n.coordinator.members().length === 3) ? true : undefined))
  t.same(nodes[0]!.coordinator.members().map((m) => m.routerId), ['a', 'b', 'c'])
  t.same(leaders(nodes), ['a'], 'the first to stand leads')
  t.ok(nodes.every((n) => n.coordinator.leaderId() === 'a'), 'and all know it')

  const started = Date.now()
  await nodes[0]!.coordinator.close()
  const rest = nodes.slice(1)
  await waitFor('a new leader', () => (leaders(rest).length === 1 ? true : undefined), 8000)
  t.ok(Date.now() - started < 4000, `handed over in ${Date.now() - started} ms (the lease was revoked, no 10 s TTL to wait)`)
  const next = leaders(rest)[0]
  await waitFor('both agree on it', () => (rest.every((n) => n.coordinator.leaderId() === next) ? true : undefined))
  await waitFor('a left the member list', () => (rest.every((n) => n.coordinator.members().length === 2) ? true : undefined))
})

t.test('a leader cut off from etcd stops acting at once and is replaced within the lease TTL; it rejoins after', async (t) => {
  const etcd = await startEtcd(t)
  const relay = await startRelay(Number(new URL(etcd.endpoint).port))
  etcd.beforeStop(() => relay.close())
  const a = await node(etcd, 'a', relay.url)
  const b = await node(etcd, 'b')
  t.ok(a.coordinator.isLeader())
  // When etcd lets a's lease go is etcd's doing (late on a loaded machine): timed apart from b's taking over.
  const leaderKey = await followLeasedKey(etcd, '/maitre/test/leader')
  t.equal(leaderKey.grantedTtlSecs, 2, 'a leads on a lease of the 2 s TTL, which etcd lets go 2 s after its last renewal')
  const started = Date.now()
  relay.cut()
  let overlap = 0
  let aStoppedAt = 0
  await waitFor('b leads', () => {
    if (a.coordinator.isLeader() && b.coordinator.isLeader()) overlap++
    if (aStoppedAt === 0 && !a.coordinator.isLeader()) aStoppedAt = Date.now()
    return b.coordinator.isLeader() ? true : undefined
  }, 10_000)
  const tookMs = Date.now() - started
  const lapsedMs = (await within('etcd to delete a’s leader key', leaderKey.gone, 5000)) - started
  t.ok(aStoppedAt - started < 1500, `a stopped acting as leader ${aStoppedAt - started} ms after the cut`)
  t.ok(tookMs - lapsedMs < 2000, `b took over ${tookMs - lapsedMs} ms after etcd let a's lease go (${lapsedMs} ms after the cut; ${tookMs} ms in all)`)
  t.equal(overlap, 0, 'no moment with two leaders')
  t.notOk(a.coordinator.isLeader())

  relay.heal()
  await waitFor('a is a member again, following b', () => (a.coordinator.leaderId() === 'b' && b.coordinator.members().some((m) => m.routerId === 'a') ? true : undefined), 15_000)
  t.notOk(a.coordinator.isLeader())
  t.ok(b.coordinator.isLeader())
})

t.test('etcd away for longer than two TTLs: once it is back, a leader acts again as soon as the routers rejoin, not a TTL later', async (t) => {
  const etcd = await startEtcd(t)
  // A 5 s TTL: the stale key would hold leadership off for 5 s and more after etcd returns,
  // well clear of the time rejoining itself takes on a loaded machine (up to ~2.5 s seen).
  const nodes = [await node(etcd, 'a', etcd.endpoint, 5), await node(etcd, 'b', etcd.endpoint, 5)]
  await waitFor('a leads', () => (nodes[0]?.coordinator.isLeader() === true ? true : undefined))
  // A lease of the same TTL that nobody renews, as nobody renews the old leader key's once etcd
  // is back: etcd gives both a whole TTL again as it returns, and lets them go together. Still
  // alive when a leader acts, it says the stale key was not waited out, whenever etcd got back
  // to serving on a loaded machine and however long the routers took to rejoin meanwhile.
  const control = connectEtcd({ endpoints: [etcd.endpoint], requestTimeoutMs: 2000 })
  etcd.beforeStop(() => control.close())
  const staleKeyTwin = await control.lease(5, { autoKeepAlive: false }).grant()
  await etcd.stop()
  // The scenario: an outage past 2 × TTL, after which each router's lease is lost to it, while
  // etcd, back, would keep the old leader key alive for another TTL.
  await new Promise((resolve) => setTimeout(resolve, 11_000))
  t.same(nodes.map((n) => n.coordinator.isLeader()), [false, false], 'nobody leads while etcd is away')
  await etcd.start()
  const back = Date.now()
  await waitFor('a leader acting', () => (nodes.some((n) => n.coordinator.isLeader()) ? true : undefined), 15_000)
  const tookMs = Date.now() - back
  const { TTL: twinLeftSecs } = await control.leaseClient.leaseTimeToLive({ ID: staleKeyTwin })
  t.ok(Number(twinLeftSecs) >= 0, `a leader acts ${tookMs} ms after etcd returned, while a lease as old as the stale key's still had ${twinLeftSecs} s of its 5 s (the stale key would hold it off until it lapsed)`)
  await waitFor('both agree on it', () => (new Set(nodes.map((n) => n.coordinator.leaderId())).size === 1 ? true : undefined))
})

t.test('load exchange: each router sees the sum of the others, not its own', async (t) => {
  const etcd = await startEtcd(t)
  const nodes = [await node(etcd, 'a'), await node(etcd, 'b'), await node(etcd, 'c')]
  nodes[0]!.loads.set('svc', { inFlight: 2, queued: 1, lastRequestAt: 1000 })
  nodes[1]!.loads.set('svc', { inFlight: 3, queued: 0, lastRequestAt: 3000 })
  nodes[2]!.loads.set('other', { inFlight: 1, queued: 0, lastRequestAt: 5 })
  await waitFor('c sees a and b', () => (nodes[2]!.coordinator.peerLoad('svc').inFlight === 5 ? true : undefined), 2000)
  t.same(nodes[2]!.coordinator.peerLoad('svc'), { inFlight: 5, queued: 1, lastRequestAt: 3000 })
  await waitFor('a sees b only', () => (nodes[0]!.coordinator.peerLoad('svc').inFlight === 3 ? true : undefined), 2000)
  t.same(nodes[0]!.coordinator.peerLoad('svc'), { inFlight: 3, queued: 0, lastRequestAt: 3000 })
  await waitFor('a sees c’s other version', () => (nodes[0]!.coordinator.peerMayHold('other') ? true : undefined), 2000)
  t.ok(nodes[0]!.coordinator.peerMayHold('svc'), 'b holds svc')
  t.notOk(nodes[0]!.coordinator.peerMayHold('nope'), 'nobody reports nope')

  nodes[1]!.loads.set('svc', { inFlight: 0, queued: 0, lastRequestAt: 4000 })
  await waitFor('a change arrives within a publish interval', () => (nodes[0]!.coordinator.peerLoad('svc').lastRequestAt === 4000 ? true : undefined), 2000)
  await nodes[1]!.coordinator.close()
  await waitFor('a router that leaves leaves the membership', () => (nodes[0]!.coordinator.members().every((m) => m.routerId !== nodes[1]!.coordinator.routerId) ? true : undefined), 2000)
  t.equal(nodes[0]!.coordinator.peerLoad('svc').lastRequestAt, 4000, 'its requests in flight go with it; the time of its last one is remembered (see below)')
})

t.test('a router whose leader watch was compacted away while cut off still follows the leader, and takes over when it leaves', async (t) => {
  const etcd = await startEtcd(t)
  const relay = await startRelay(Number(new URL(etcd.endpoint).port))
  etcd.beforeStop(() => relay.close())
  const a = await node(etcd, 'a', relay.url)
  const b = await node(etcd, 'b')
  relay.cut()
  await waitFor('b leads while a is cut off', () => (b.coordinator.isLeader() ? true : undefined), 10_000)
  const { header } = await b.client.get('/maitre/test/leader').exec()
  await b.client.kv.compact({ revision: header.revision, physical: true })
  relay.heal()
  await waitFor('a follows b again', () => (a.coordinator.leaderId() === 'b' && a.coordinator.members().length === 2 ? true : undefined), 15_000)
  await b.coordinator.close()
  await waitFor('a takes over when b leaves', () => (a.coordinator.isLeader() ? true : undefined), 5000)
  // (Membership and leadership are two keys, seen through two watches: either may arrive first.)
  const members = await waitFor('b gone from its member list', () => {
    const ids = a.coordinator.members().map((m) => m.routerId)
    return ids.length === 1 ? ids : undefined
  }, 5000)
  t.same(members, ['a'], 'and b is gone from its member list')
})

t.test('keep-alives renew the window leadership is held in: a healthy leader never lapses', async (t) => {
  const etcd = await startEtcd(t)
  // The default TTL (5 s): keep-alives every 1.7 s, each renewing leadership for 3.3 s from its send.
  const only = await node(etcd, 'only', etcd.endpoint, 5)
  let lapses = 0
  for (const until = Date.now() + 4500; Date.now() < until; ) {
    if (!only.coordinator.isLeader()) lapses++
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  t.equal(lapses, 0, 'sampled past the first window (3.3 s), it never lapsed')
})

t.test('the slot view: every router’s membership as it deals slots, and what it carries beyond its share, through the load keys', async (t) => {
  const etcd = await startEtcd(t)
  const a = await node(etcd, 'a')
  const b = await node(etcd, 'b')
  let changes = 0
  a.coordinator.onSlotViewChange(() => (changes += 1))
  const view = await waitFor('a sees b report the membership of both', () => {
    const v = a.coordinator.slotView()
    return v.peers.find((p) => p.routerId === 'b')?.members?.length === 2 ? v : undefined
  }, 3000)
  t.same(view.members, ['a', 'b'], 'a deals by both members, itself included')
  t.same(view.peers.map((p) => ({ routerId: p.routerId, url: p.url, members: p.members })), [{ routerId: 'b', url: 'http://127.0.0.1/b', members: ['a', 'b'] }])
  b.over.push(['svc', 'svc.i1', 2])
  await waitFor('b’s request beyond its share reaches a', () => (a.coordinator.slotView().peers[0]?.over('svc', 'svc.i1') === 2 ? true : undefined), 3000)
  t.equal(a.coordinator.slotView().peers[0]?.over('svc', 'svc.other'), 0, 'nothing carried elsewhere')
  t.ok(changes > 0, 'a was told its view changed')
  const c = await node(etcd, 'c')
  await waitFor('a, then its report, know c', () => (a.coordinator.slotView().members.length === 3 ? true : undefined), 3000)
  await waitFor('b deals by three members too', () => (a.coordinator.slotView().peers.find((p) => p.routerId === 'b')?.members?.length === 3 ? true : undefined), 3000)
  await c.coordinator.close()
  await waitFor('c leaves every view with its lease', () => (a.coordinator.slotView().members.length === 2 && a.coordinator.slotView().peers.length === 1 ? true : undefined), 3000)
})

t.test('a peer found dead (a refused connection) leaves the slot view at once, unless it announced its drain', async (t) => {
  const etcd = await startEtcd(t)
  const a = await node(etcd, 'a')
  const b = await node(etcd, 'b')
  const c = await node(etcd, 'c')
  await waitFor('a sees both', () => (a.coordinator.slotView().members.length === 3 && a.coordinator.slotView().peers.every((p) => p.members?.length === 3) ? true : undefined), 3000)
  await c.coordinator.announceDraining()
  await waitFor('a sees c drain', () => (a.coordinator.slotView().peers.find((p) => p.routerId === 'c')?.draining === true ? true : undefined), 3000)
  a.coordinator.suspect('c')
  t.same(a.coordinator.slotView().members, ['a', 'b', 'c'], 'a draining router refuses connections but still carries requests: not dead')
  a.coordinator.suspect('b')
  t.same(a.coordinator.slotView().members, ['a', 'c'], 'b is dealt out of the slots at once, before its lease lapses')
  t.same(a.coordinator.slotView().peers.map((p) => p.routerId), ['c'], 'and its claims and lending go with it')
  await waitFor('a tells the others it deals without b', () => (b.coordinator.slotView().peers.find((p) => p.routerId === 'a')?.members?.length === 2 ? true : undefined), 3000)
  a.coordinator.suspect('a')
  t.same(a.coordinator.slotView().members, ['a', 'c'], 'a router never suspects itself')
  await b.coordinator.close()
  await waitFor('once b’s key goes, nothing of it is kept', () => (a.coordinator.slotView().members.length === 2 ? true : undefined), 3000)
  const again = await node(etcd, 'b')
  await waitFor('b, back under its id, is a member again', () => (a.coordinator.slotView().members.includes('b') ? true : undefined), 5000)
  t.ok(again.coordinator.slotView().members.includes('a'))
})

t.test('a suspect that keeps its lease alive for a TTL was alive after all, and is counted again', async (t) => {
  const etcd = await startEtcd(t)
  const a = await node(etcd, 'a')
  await node(etcd, 'b')
  await waitFor('a sees b', () => (a.coordinator.slotView().members.length === 2 ? true : undefined), 3000)
  a.coordinator.suspect('b')
  t.same(a.coordinator.slotView().members, ['a'])
  await waitFor('b, whose key outlived the suspicion by a TTL, counts again', () => (a.coordinator.slotView().members.length === 2 ? true : undefined), 6000)
  t.same(a.coordinator.slotView().members, ['a', 'b'])
})

t.test('while a router carries requests beyond its share it reports every 50 ms, so the slot changes hands fast', async (t) => {
  const etcd = await startEtcd(t)
  const a = await node(etcd, 'a')
  // b reports load every 2 s, except while it carries requests beyond its share.
  const b = await node(etcd, 'b', etcd.endpoint, 2, 2000)
  await waitFor('a sees b', () => (a.coordinator.slotView().peers.some((p) => p.routerId === 'b' && p.members !== undefined) ? true : undefined), 5000)
  b.over.push(['svc', 'svc.i1', 1])
  await waitFor('b reports the request beyond its share', () => (a.coordinator.slotView().peers[0]?.over('svc', 'svc.i1') === 1 ? true : undefined), 5000)
  b.over.length = 0
  const endedAt = Date.now()
  await waitFor('b reports it let go', () => (a.coordinator.slotView().peers[0]?.over('svc', 'svc.i1') === 0 ? true : undefined), 5000)
  t.ok(Date.now() - endedAt < 1000, `within ${Date.now() - endedAt} ms, not b's 2 s interval`)
})

t.test('a router that (re)joins settles for a second before it fills slots of its own, so every peer has seen its claims', async (t) => {
  const etcd = await startEtcd(t)
  const joinedAt = Date.now()
  const a = await node(etcd, 'a')
  t.ok(a.coordinator.slotView().settling || Date.now() - joinedAt >= 1000, 'settling right after it joined')
  let changed = false
  a.coordinator.onSlotViewChange(() => (changed = true))
  await waitFor('settled', () => (a.coordinator.slotView().settling ? undefined : true), 3000)
  t.ok(Date.now() - joinedAt >= 1000, `settled ${Date.now() - joinedAt} ms after starting to join (at least ${SETTLE_MS} ms)`)
  // The view reads as settled from the clock; the notice comes from the settle timer, which a
  // loaded machine may run a little after a poll has seen the time pass.
  await waitFor('told', () => (changed ? true : undefined), 500).catch(() => undefined)
  t.ok(changed, 'and the router was told its view changed, so waiting requests take the slots at once')
})

t.test('a load report cut short to its bound says so, and a peer then takes it as possibly holding any version (a kill does not claim agreement it cannot know)', async (t) => {
  const etcd = await startEtcd(t)
  const a = await node(etcd, 'a')
  const b = await node(etcd, 'b')
  // ~90 bytes an entry: 13 000 versions go past the 1 MiB bound.
  for (let i = 0; i < 13_000; i++) b.loads.set(`maitre-${String(i).padStart(32, '0')}`, { inFlight: 0, queued: 0, lastRequestAt: 1_000_000 + i })
  await waitFor('a sees b’s report', () => (a.coordinator.peerMayHold(`maitre-${String(12_999).padStart(32, '0')}`) ? true : undefined), 5000)
  t.ok(a.coordinator.peerMayHold('maitre-never-reported'), 'a partial report may hold anything')
  b.loads.clear()
  await waitFor('b reports nothing', () => (a.coordinator.peerMayHold(`maitre-${String(12_999).padStart(32, '0')}`) ? undefined : true), 5000)
  t.notOk(a.coordinator.peerMayHold('maitre-never-reported'), 'a whole report is taken at its word')
})

t.test('a drain announcement waits for etcd at most a second: a router cut off from etcd still stops in time', async (t) => {
  const etcd = await startEtcd(t)
  const relay = await startRelay(Number(new URL(etcd.endpoint).port))
  // Registered before the router, so closed after it (closers run last first): an etcd3 client
  // closed with its server out of reach keeps retrying its lost streams, and the file never exits.
  etcd.beforeStop(() => relay.close())
  // etcd calls may take 10 s here: the announcement's own second must bound it.
  const a = await node(etcd, 'a', relay.url, 2, 100, 10_000)
  relay.stall()
  const started = Date.now()
  await a.coordinator.announceDraining()
  const took = Date.now() - started
  t.ok(took >= 900 && took < 5000, `gave up after ${took} ms with etcd silent: bounded by its second, not by etcd's 10 s timeout`)
  // The stalled connections dropped, so the router's teardown reaches etcd on a new one instead of waiting out its 10 s.
  relay.cut()
  relay.heal()
})

t.test('the leader leaves while the only other router is cut off for a moment, and the link flaps again as it comes back: that router still takes the lead', async (t) => {
  const etcd = await startEtcd(t)
  const relay = await startRelay(Number(new URL(etcd.endpoint).port))
  etcd.beforeStop(() => relay.close())
  const a = await node(etcd, 'a')
  const b = await node(etcd, 'b', relay.url)
  await waitFor('a leads, b knows it', () => (a.coordinator.isLeader() && b.coordinator.leaderId() === 'a' ? true : undefined), 5000)
  relay.cut()
  await a.coordinator.close() // a rolling update: the leader leaves, its lease revoked
  const flapped = flapOnNextWatch(b.client, relay, '/maitre/test/leader')
  relay.heal()
  await waitFor('the link to flap', () => (flapped() ? true : undefined), 10_000)
  await waitFor('b to lead', () => (b.coordinator.isLeader() ? true : undefined), 10_000).catch(() => undefined)
  t.ok(b.coordinator.isLeader(), 'b, the only router left, leads: the leader’s leaving was not lost in the flap')
})

t.test('a router that left while another was cut off for a moment is no member of that one’s view, even when the link flaps as it comes back', async (t) => {
  const etcd = await startEtcd(t)
  const relay = await startRelay(Number(new URL(etcd.endpoint).port))
  etcd.beforeStop(() => relay.close())
  const a = await node(etcd, 'a', relay.url)
  const b = await node(etcd, 'b')
  const c = await node(etcd, 'c')
  c.loads.set('svc', { inFlight: 3, queued: 2, lastRequestAt: Date.now() })
  await waitFor('a sees c and its load', () => (a.coordinator.members().length === 3 && a.coordinator.peerLoad('svc').inFlight === 3 ? true : undefined), 5000)
  relay.cut()
  await c.coordinator.close()
  await waitFor('b sees c gone', () => (b.coordinator.members().length === 2 ? true : undefined), 3000)
  const flapped = flapOnNextWatch(a.client, relay)
  relay.heal()
  await waitFor('the link to flap', () => (flapped() ? true : undefined), 10_000)
  await waitFor('a to see c gone', () => (a.coordinator.members().length === 2 && a.coordinator.peerLoad('svc').inFlight === 0 ? true : undefined), 10_000).catch(() => undefined)
  t.same(a.coordinator.members().map((m) => m.routerId).sort(), ['a', 'b'], 'c is no member for a (an unreported member would hold every slot)')
  t.equal(a.coordinator.peerLoad('svc').inFlight, 0, 'nor is its load counted')
})

t.test('a version’s last request on a router that leaves is remembered by the others: the leader does not take it for idle since long before', async (t) => {
  const etcd = await startEtcd(t)
  const a = await node(etcd, 'a')
  const b = await node(etcd, 'b')
  const usedAt = Date.now()
  b.loads.set('svc', { inFlight: 0, queued: 0, lastRequestAt: usedAt })
  await waitFor('a sees b’s report', () => (a.coordinator.peerLoad('svc').lastRequestAt === usedAt ? true : undefined), 5000)
  await b.coordinator.close() // b leaves: its lease, membership and report go
  await waitFor('a sees b gone', () => (a.coordinator.members().length === 1 ? true : undefined), 5000)
  t.equal(a.coordinator.peerLoad('svc').lastRequestAt, usedAt, 'the last request b served still counts')
  t.equal(a.coordinator.peerLoad('svc').inFlight, 0, 'and nothing of it is in flight')
  const c = await node(etcd, 'c')
  t.equal(c.coordinator.peerLoad('svc').lastRequestAt, 0, 'a router that never saw it knows nothing of it (the reports are gone)')
})
