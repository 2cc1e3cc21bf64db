/**
 * The router-to-router API of cluster mode, on a real socket: only callers with the cluster's key
 * are heard, bad input is a clear 400 naming the field, an offer is answered when the borrowed
 * request is done, and a busy instance's kill is vetoed with 423.
 */
import t from 'tap'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { handlePeer, type ArrivalsPeer, type LeaderPeer, type PeerExchange, type StoresPeer } from '../../src/admin/peer.ts'
import { MaitreError } from '../../src/errors.ts'
import { peerKey, PEER_KEY_HEADER } from '../../src/cluster/slot-exchange.ts'
import { sendError } from '../../src/http/error-response.ts'
import type { ReleaseOutcome } from '../../src/backends/tracker.ts'
import { call, waitFor } from '../fixtures/router.ts'

const KEY = peerKey('the-cluster-secret')

async function serve(t: { teardown(fn: () => unknown): void }, exchange: PeerExchange | undefined, stores?: StoresPeer, leader?: LeaderPeer, arrivals?: ArrivalsPeer): Promise<string> {
  const server: Server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://router')
    handlePeer({ req, res, url, cid: 'c1' }, exchange, undefined, stores, leader, arrivals).catch((err: unknown) => sendError(req, res, err, { cid: 'c1' }))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())))
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`
}

function fakeExchange() {
  const wants: [string, Record<string, number>][] = []
  let finish: ((o: ReleaseOutcome) => void) | undefined
  let lenderGone = 0
  const exchange: PeerExchange = {
    authorized: (given) => given === KEY,
    receiveWants: (from, w) => void wants.push([from, w]),
    receiveOffer: (serviceId) =>
      serviceId === 'nobody-waits' ? undefined : { outcome: new Promise<ReleaseOutcome>((resolve) => (finish = resolve)), lenderGone: () => void (lenderGone += 1) },
    receiveEject: (_s, instanceId) => instanceId !== 'busy',
    receiveCollect: () => true,
    receiveMemberQuery: (routerId) => routerId === 'r2',
  }
  return { exchange, wants, offered: () => finish !== undefined, finish: (o: ReleaseOutcome) => finish?.(o), lenderGone: () => lenderGone, reset: () => (finish = undefined) }
}

/** `key` null: no key header at all. */
const post = (url: string, body: unknown, key: string | null = KEY) =>
  call(url, { method: 'POST', headers: { 'content-type': 'application/json', ...(key === null ? {} : { [PEER_KEY_HEADER]: key }) }, body: JSON.stringify(body) })

t.test('only routers of the cluster are heard, and a router on its own has no peer API', async (t) => {
  const { exchange, wants } = fakeExchange()
  const url = await serve(t, exchange)
  const missing = await post(`${url}/maitre-peer/wants`, { from: 'r2', wants: { s: 1 } }, null)
  t.equal(missing.status, 401)
  t.match(missing.json(), { 'waiter-error': { details: { header: PEER_KEY_HEADER } } })
  t.equal((await post(`${url}/maitre-peer/wants`, { from: 'r2', wants: { s: 1 } }, peerKey('another-cluster'))).status, 401, 'another cluster’s key is refused')
  t.same(wants, [], 'nothing refused reached the exchange')
  const alone = await serve(t, undefined)
  t.equal((await post(`${alone}/maitre-peer/wants`, { from: 'r2', wants: {} })).status, 404)
})

t.test('bad input is a 400 naming the field', async (t) => {
  const { exchange, wants } = fakeExchange()
  const url = await serve(t, exchange)
  const cases: [string, unknown, string][] = [
    ['wants', { wants: { s: 1 } }, 'from'],
    ['wants', { from: 'r2', wants: [1] }, 'wants'],
    ['wants', { from: 'r2', wants: { s: -1 } }, 'wants.s'],
    ['wants', { from: 'r2', wants: { s: 1.5 } }, 'wants.s'],
    ['offer', { serviceId: 's' }, 'instanceId'],
    ['eject', { serviceId: 's', instanceId: 'i', periodMs: 'soon' }, 'periodMs'],
    ['collect', { serviceId: 's', lastActiveAt: 1, periodMs: 1000, leader: 7 }, 'leader'],
  ]
  for (const [what, body, field] of cases) {
    const reply = await post(`${url}/maitre-peer/${what}`, body)
    t.equal(reply.status, 400, `${what} ${JSON.stringify(body)}`)
    t.match(reply.json(), { 'waiter-error': { details: { field } } })
  }
  t.equal((await call(`${url}/maitre-peer/wants`, { headers: { [PEER_KEY_HEADER]: KEY } })).status, 405, 'GET is not a peer call')
  t.equal((await post(`${url}/maitre-peer/nope`, {})).status, 404)
  t.same(wants, [])
})

t.test('wants are taken; an offer is answered when the borrowed request lets go; a busy instance vetoes its kill', async (t) => {
  const fake = fakeExchange()
  const url = await serve(t, fake.exchange)
  t.equal((await post(`${url}/maitre-peer/wants`, { from: 'r2', wants: { s: 3, t: 0 } })).status, 200)
  t.same(fake.wants, [['r2', { s: 3, t: 0 }]])
  t.equal((await post(`${url}/maitre-peer/offer`, { from: 'r2', serviceId: 'nobody-waits', instanceId: 'i' })).status, 409, 'nobody waits: declined at once')
  const offer = post(`${url}/maitre-peer/offer`, { from: 'r2', serviceId: 's', instanceId: 'i' })
  await waitFor('the offer reached the exchange', () => (fake.offered() ? true : undefined))
  fake.finish('instance-error')
  const reply = await offer
  t.equal(reply.status, 200)
  // The outcome exists only once the borrowed request let go: the answer waited for it.
  t.match(reply.json(), { taken: true, outcome: 'instance-error' }, 'answered with how the borrowed request went')
  t.equal(fake.lenderGone(), 0, 'an offer answered in full leaves the request the lender’s')
  // A lender whose offer connection breaks while the borrowed request runs: the request is
  // counted on the borrower from then on.
  fake.reset()
  const aborter = new AbortController()
  const broken = call(`${url}/maitre-peer/offer`, { method: 'POST', headers: { 'content-type': 'application/json', [PEER_KEY_HEADER]: KEY }, body: JSON.stringify({ from: 'r2', serviceId: 's', instanceId: 'i' }), signal: aborter.signal }).catch(() => 'broken')
  await waitFor('the second offer reached the exchange', () => (fake.offered() ? true : undefined))
  aborter.abort()
  t.equal(await broken, 'broken')
  await waitFor('the borrower to learn the lender is gone', () => (fake.lenderGone() === 1 ? true : undefined))
  fake.finish('success')
  t.equal((await post(`${url}/maitre-peer/eject`, { serviceId: 's', instanceId: 'busy', periodMs: 1000 })).status, 423)
  t.equal((await post(`${url}/maitre-peer/eject`, { serviceId: 's', instanceId: 'idle', periodMs: 1000 })).status, 200)
  t.match((await post(`${url}/maitre-peer/member`, { routerId: 'r2' })).json(), { member: true }, 'a router cut off from etcd asks whether it is still counted')
  t.match((await post(`${url}/maitre-peer/member`, { routerId: 'r9' })).json(), { member: false })
})

t.test('a peer that wrote a key has it read again here before it answers its caller; bad names are a 400', async (t) => {
  const { exchange } = fakeExchange()
  const refreshed: [string, string][] = []
  let etcdDown = false
  const stores: StoresPeer = {
    refresh: async (store, key) => {
      if (etcdDown) throw new MaitreError('MAITRE_CLUSTER_UNAVAILABLE', 'etcd did not answer')
      if (store !== 'tokens') return false
      refreshed.push([store, key])
      return true
    },
  }
  const url = await serve(t, exchange, stores)
  const reply = await post(`${url}/maitre-peer/refresh`, { store: 'tokens', key: 'my-token' })
  t.equal(reply.status, 200)
  t.match(reply.json(), { refreshed: true, store: 'tokens', key: 'my-token' })
  t.same(refreshed, [['tokens', 'my-token']], 'the store read the key again')
  t.equal((await post(`${url}/maitre-peer/refresh`, { store: 'tokens', key: 'x' }, null)).status, 401, 'only routers of the cluster')
  const cases: [unknown, string][] = [
    [{ key: 'k' }, 'store'],
    [{ store: 'secrets', key: 'k' }, 'store'],
    [{ store: 'tokens' }, 'key'],
    [{ store: 'tokens', key: '' }, 'key'],
    [{ store: 'tokens', key: 'k'.repeat(1025) }, 'key'],
    [{ store: 'tokens', key: '\ud800' }, 'key'],
  ]
  for (const [body, field] of cases) {
    const bad = await post(`${url}/maitre-peer/refresh`, body)
    t.equal(bad.status, 400, JSON.stringify(body).slice(0, 60))
    t.match(bad.json(), { 'waiter-error': { details: { field } } })
  }
  t.equal(refreshed.length, 1, 'nothing refused was read')
  etcdDown = true
  const down = await post(`${url}/maitre-peer/refresh`, { store: 'tokens', key: 'my-token' })
  t.equal(down.status, 503, 'etcd away: the writer hears no confirmation')
})

t.test('a follower’s expiry reaches the leader: done there, 404 for an unknown instance, 503 once it no longer leads', async (t) => {
  const { exchange } = fakeExchange()
  const expired: string[] = []
  let leads = true
  const noted: string[] = []
  const leader: LeaderPeer = {
    isLeader: () => leads,
    expire: (serviceId, instanceId, from) => (instanceId === 'gone' ? false : (expired.push(`${serviceId}/${instanceId}${from === undefined ? '' : ` from ${from}`}`), true)),
    noteExpiry: (serviceId, instanceId) => void noted.push(`${serviceId}/${instanceId}`),
  }
  const url = await serve(t, exchange, undefined, leader)
  const done = await post(`${url}/maitre-peer/expire`, { serviceId: 's', instanceId: 'i1', from: 'r2' })
  t.equal(done.status, 200)
  t.same(expired, ['s/i1 from r2'], 'the leader’s autoscaler was told, and who asked (it need not be told back)')
  t.equal((await post(`${url}/maitre-peer/expire`, { serviceId: 's', instanceId: 'gone' })).status, 404)
  t.equal((await post(`${url}/maitre-peer/expire`, { serviceId: 's' })).status, 400, 'instanceId is required')
  t.equal((await post(`${url}/maitre-peer/expire`, { serviceId: 's', instanceId: 'i2' }, null)).status, 401, 'only routers of the cluster')
  leads = false
  t.equal((await post(`${url}/maitre-peer/expire`, { serviceId: 's', instanceId: 'i3' })).status, 503, 'led elsewhere by now: the follower is told to try again')
  t.same(expired, ['s/i1 from r2'], 'nothing refused was expired')
  const note = await post(`${url}/maitre-peer/expire`, { serviceId: 's', instanceId: 'i4', note: true })
  t.equal(note.status, 200, 'a leader’s note of an expiry it took is recorded by a router that does not lead')
  t.same(noted, ['s/i4'])
})

t.test('requests another router told of reach the keep-alive; a batch with one bad note is a 400 naming its field, and none of it is heard', async (t) => {
  const { exchange } = fakeExchange()
  const heard: Parameters<ArrivalsPeer['heard']>[] = []
  const url = await serve(t, exchange, undefined, undefined, { heard: (serviceId, arrival) => void heard.push([serviceId, arrival]) })
  const good = { serviceId: 's-1', agoMs: 12, running: true, warm: false, idleForMs: 90_000 }
  const ok = await post(`${url}/maitre-peer/arrivals`, { from: 'r2', notes: [good, { ...good, serviceId: 's-2', idleForMs: undefined }] })
  t.equal(ok.status, 200)
  t.same(ok.json(), { heard: 2 })
  t.same(heard, [['s-1', { agoMs: 12, running: true, warm: false, idleForMs: 90_000 }], ['s-2', { agoMs: 12, running: true, warm: false, idleForMs: undefined }]], 'heard as told')
  heard.length = 0
  const cases: [unknown, string][] = [
    [{ notes: 'all of them' }, 'notes'],
    [{ notes: [good, 'x'] }, 'notes[1]'],
    [{ notes: [good, { ...good, serviceId: 'a b' }] }, 'notes[1].serviceId'],
    [{ notes: [{ ...good, serviceId: undefined }] }, 'notes[0].serviceId'],
    [{ notes: [{ ...good, agoMs: -1 }] }, 'notes[0].agoMs'],
    [{ notes: [{ ...good, agoMs: 3_600_000 }] }, 'notes[0].agoMs'],
    [{ notes: [{ ...good, running: 1 }] }, 'notes[0].running'],
    [{ notes: [{ ...good, warm: 'yes' }] }, 'notes[0].warm'],
    [{ notes: [{ ...good, idleForMs: -5 }] }, 'notes[0].idleForMs'],
    [{ notes: [{ ...good, idleForMs: 1e300 }] }, 'notes[0].idleForMs'],
  ]
  for (const [body, field] of cases) {
    const res = await post(`${url}/maitre-peer/arrivals`, body)
    t.equal(res.status, 400, field)
    t.match(res.json(), { 'waiter-error': { details: { field } } }, `names ${field}`)
  }
  t.same(heard, [], 'no note of a refused batch was heard, not even its good ones')
  t.equal((await post(`${url}/maitre-peer/arrivals`, { notes: [good] }, null)).status, 401, 'without the key: refused')
})
