/**
 * Membership and leadership against a real etcd: one leader among three, handed over at once on a
 * clean leave and within the lease TTL when a router goes silent or is cut off, and followed again
 * after etcd outages, compactions and flapping links. (The load exchange and the slot view are in
 * coordinator-load.test.ts.)
 */
import t from 'tap'
import { connectEtcd } from '../../src/cluster/etcd/connect.ts'
import { EtcdCoordinator } from '../../src/cluster/etcd/coordinator.ts'
import { systemClock } from '../../src/clock.ts'
import { silentLogger } from '../../src/log.ts'
import { attachedWatches, followLeasedKey, recordReads, startEtcd } from '../fixtures/etcd.ts'
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

t.test('a leader that starts draining hands the leadership over at once when another router can take it, and stands no more; one alone keeps leading through its drain', async (t) => {
  const etcd = await startEtcd(t)
  // A 10 s TTL: a hand-over that waited for the lease would take seconds.
  const a = await node(etcd, 'a', etcd.endpoint, 10)
  const b = await node(etcd, 'b', etcd.endpoint, 10)
  await waitFor('both see both', () => (a.coordinator.members().length === 2 && b.coordinator.members().length === 2 ? true : undefined))
  t.same(leaders([a, b]), ['a'])
  const started = Date.now()
  await a.coordinator.announceDraining?.()
  await waitFor('b leads', () => (b.coordinator.isLeader() ? true : undefined), 5000)
  t.ok(Date.now() - started < 2000, `handed over ${Date.now() - started} ms after the drain began, not a TTL later`)
  t.notOk(a.coordinator.isLeader(), 'a leads no more')
  await waitFor('a knows b leads', () => (a.coordinator.leaderId() === 'b' ? true : undefined))
  t.ok(a.coordinator.members().some((m) => m.routerId === 'a'), 'and is still a member, finishing what it carries')
  t.equal(b.leaderChanges.at(-1), 'b', 'b was told of the change (a router releases the collection holds the leader before asked for)')

  // b, now alone with a draining router, drains too: nobody else could lead, so it keeps leading.
  await b.coordinator.announceDraining?.()
  t.ok(b.coordinator.isLeader(), 'a leader with no router to take over keeps leading')
})

t.test('a draining leader stops acting before it hands the key over: on a slow link to etcd, no moment with two leaders', async (t) => {
  const etcd = await startEtcd(t)
  // a hears from etcd 150 ms late (each way): its own watch learns of its resignation last.
  const relay = await startRelay(Number(new URL(etcd.endpoint).port), { delayMs: 150 })
  etcd.beforeStop(() => relay.close())
  const a = await node(etcd, 'a', relay.url, 10, 100, 3000)
  const b = await node(etcd, 'b', etcd.endpoint, 10)
  await waitFor('both see both', () => (a.coordinator.members().length === 2 && b.coordinator.members().length === 2 ? true : undefined), 10_000)
  t.ok(a.coordinator.isLeader(), 'a leads')
  let both = 0
  const sampler = setInterval(() => {
    if (a.coordinator.isLeader() && b.coordinator.isLeader()) both++
  }, 1)
  t.teardown(() => clearInterval(sampler))
  await a.coordinator.announceDraining?.()
  await waitFor('b leads', () => (b.coordinator.isLeader() ? true : undefined), 5000)
  await waitFor('a knows b leads', () => (a.coordinator.leaderId() === 'b' ? true : undefined), 5000)
  clearInterval(sampler)
  t.equal(both, 0, 'never both')
})

t.test('every router draining at once (a deployment deleted): one of them still leads through the drain', async (t) => {
  const etcd = await startEtcd(t)
  const a = await node(etcd, 'a', etcd.endpoint, 10)
  const b = await node(etcd, 'b', etcd.endpoint, 10)
  await waitFor('both see both', () => (a.coordinator.members().length === 2 && b.coordinator.members().length === 2 ? true : undefined))
  t.same(leaders([a, b]), ['a'])
  // Both at once: a hands over to b, whose drain it has not heard of yet, and b drains too.
  await Promise.all([a.coordinator.announceDraining?.(), b.coordinator.announceDraining?.()])
  const leader = await waitFor('a leader again', () => leaders([a, b])[0], 5000)
  t.ok(leader === 'a' || leader === 'b', `${leader} leads`)
  await new Promise((resolve) => setTimeout(resolve, 1500))
  t.equal(leaders([a, b]).length, 1, 'exactly one, and it stays')
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
  t.ok(a.leaderChanges.includes('b'), 'and was told of the change (a router releases the collection holds its old leader asked for)')
  await b.coordinator.close()
  await waitFor('a takes over when b leaves', () => (a.coordinator.isLeader() ? true : undefined), 5000)
  // (Membership and leadership are two keys, seen through two watches: either may arrive first.)
  const members = await waitFor('b gone from its member list', () => {
    const ids = a.coordinator.members().map((m) => m.routerId)
    return ids.length === 1 ? ids : undefined
  }, 5000)
  t.same(members, ['a'], 'and b is gone from its member list')
})

t.test('a leader whose etcd connection is reset and made again at once (an etcd member restarting) keeps leading throughout: its lease never lapsed', async (t) => {
  const etcd = await startEtcd(t)
  const relay = await startRelay(Number(new URL(etcd.endpoint).port))
  etcd.beforeStop(() => relay.close())
  const a = await node(etcd, 'a', relay.url, 5)
  const b = await node(etcd, 'b', etcd.endpoint, 5)
  await waitFor('a leads', () => (a.coordinator.isLeader() ? true : undefined))
  let lapses = 0
  const sampler = setInterval(() => {
    if (!a.coordinator.isLeader()) lapses++
  }, 5)
  t.teardown(() => clearInterval(sampler))
  for (let i = 0; i < 3; i++) {
    // Past a keep-alive (every 1.7 s at this TTL), so that each reset breaks a keep-alive stream in use.
    await new Promise((resolve) => setTimeout(resolve, 2000))
    relay.cut()
    relay.heal()
  }
  await new Promise((resolve) => setTimeout(resolve, 2000))
  clearInterval(sampler)
  t.equal(lapses, 0, 'a never stopped leading across three resets')
  t.same(leaders([a, b]), ['a'], 'and b never led')
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

t.test('a router closed while it watches the leader again after a disconnection leaves no watch behind to hold the process open', async (t) => {
  const etcd = await startEtcd(t)
  // A slow link: the reads after the disconnection are still out when the router closes.
  const relay = await startRelay(Number(new URL(etcd.endpoint).port), { delayMs: 300 })
  etcd.beforeStop(() => relay.close())
  const a = await node(etcd, 'a', relay.url, 5, 100, 5000)
  type Watched = { once(event: 'disconnected', fn: () => void): void }
  let disconnected = false
  for (const watcher of (a.client as unknown as { watchManager: { watchers: Watched[] } }).watchManager.watchers) watcher.once('disconnected', () => (disconnected = true))
  const reads = recordReads(a.client)
  relay.cut()
  relay.heal()
  await waitFor('the watches to drop', () => (disconnected ? true : undefined), 5000)
  const afterDrop = reads.length
  await a.coordinator.close()
  a.client.close()
  // The case under test: the reads the router sent to watch again were answered after it closed.
  const outcomes = await Promise.all(reads.map((read) => read.then(() => 'answered', () => 'failed')))
  t.ok(afterDrop > 0 && outcomes.every((o) => o === 'answered'), `the ${afterDrop} reads the router sent to watch again were answered after it closed: ${outcomes.join(', ')}`)
  await new Promise((resolve) => setTimeout(resolve, 100))
  t.equal(attachedWatches(a.client), 0, 'no watch was started once the router had closed')
})

t.test('a start that fails part-way lets go of what it began: no watch is left attached', async (t) => {
  const etcd = await startEtcd(t)
  const client = connectEtcd({ endpoints: [etcd.endpoint], requestTimeoutMs: 1000 })
  etcd.beforeStop(() => client.close())
  // Its stores and leader watch are under way when the lease cannot be had.
  ;(client as unknown as { lease: () => never }).lease = () => {
    throw new Error('no lease for you')
  }
  await t.rejects(EtcdCoordinator.start({ client, prefix: '/maitre/test', routerId: 'a', url: () => 'http://127.0.0.1/a', leaseTtlSecs: 2, endpoints: [etcd.endpoint], localLoads: () => [], clock: systemClock, log: silentLogger }), { message: 'no lease for you' })
  t.equal(attachedWatches(client), 0, 'its stores’ and leader watches were let go')
})
