/**
 * A backend only the cluster's leader drives (Mesos in cluster mode), with two routers on real
 * sockets and a fake backend in the leader's place: the follower shows the leader's view and its
 * changes, its calls are carried out by the leader (a refusal comes back as the same error), a
 * call with no leader to take it fails clearly, bad input from a peer names its field, and
 * leadership changing hands closes one backend and starts the other without a gap in the view.
 */
import t, { type Test } from 'tap'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { handlePeer, type PeerExchange } from '../../src/admin/peer.ts'
import type { Instance, ServiceState } from '../../src/backends/backend.ts'
import { LeaderBackend, type LedBackend } from '../../src/cluster/leader-backend.ts'
import { serviceStateOf, toWire } from '../../src/cluster/backend-wire.ts'
import { peerKey } from '../../src/cluster/slot-exchange.ts'
import { MaitreError, misconfigured } from '../../src/errors.ts'
import { sendError } from '../../src/http/error-response.ts'
import type { LaunchSpec } from '../../src/launch-spec.ts'
import { silentLogger } from '../../src/log.ts'
import { waitFor } from '../fixtures/router.ts'

const KEY = peerKey('the-cluster-secret')

const check = { url: '/status', portIndex: 0, proto: 'http' as const, intervalMs: 1000, maxConsecutiveFailures: 3, authenticated: false }
const spec = (serviceId: string): LaunchSpec => ({
  serviceId,
  command: 'run-it',
  cmdType: 'shell',
  image: undefined,
  env: { A: 'b' },
  ports: 1,
  cpus: 0.1,
  memMb: 128,
  backendProto: 'http',
  healthCheck: check,
  livenessCheck: check,
  gracePeriodMs: 0,
  terminationGraceMs: 0,
  restartBackoffFactor: 2,
  minInstances: 1,
  runAsUser: 'me',
  authorization: 'Basic x',
})

/** The real backend's stand-in: services in memory, every call recorded. */
class FakeBackend implements LedBackend {
  readonly kind = 'mesos' as const
  ready = true
  closed = false
  readonly calls: string[] = []
  readonly #services = new Map<string, ServiceState>()
  readonly #listeners = new Set<(id: string) => void>()
  refuse: MaitreError | undefined
  async ensureService(s: LaunchSpec): Promise<void> {
    this.calls.push(`ensure ${s.serviceId}`)
    if (this.refuse !== undefined) throw this.refuse
    if (!this.#services.has(s.serviceId)) this.set({ id: s.serviceId, requested: s.minInstances, instances: [], failed: [], killed: [], deploymentError: undefined })
  }
  async scale(id: string, n: number): Promise<void> {
    this.calls.push(`scale ${id} ${n}`)
    const s = this.#services.get(id)
    if (s !== undefined) this.set({ ...s, requested: n })
  }
  async killInstance(id: string, instanceId: string, options: { force?: boolean } = {}): Promise<boolean> {
    this.calls.push(`kill ${id} ${instanceId} ${options.force === true}`)
    const s = this.#services.get(id)
    if (s === undefined || !s.instances.some((i) => i.id === instanceId)) return false
    this.set({ ...s, requested: s.requested - 1, instances: s.instances.filter((i) => i.id !== instanceId) })
    return true
  }
  async deleteService(id: string): Promise<void> {
    this.calls.push(`delete ${id}`)
    this.#services.delete(id)
    for (const l of this.#listeners) l(id)
  }
  state = (id: string): ServiceState | undefined => this.#services.get(id)
  requested = (id: string): number | undefined => this.#services.get(id)?.requested
  services = (): ServiceState[] => [...this.#services.values()]
  subscribe(listener: (id: string) => void): () => void {
    this.#listeners.add(listener)
    return () => this.#listeners.delete(listener)
  }
  async close(): Promise<void> {
    this.closed = true
  }
  set(state: ServiceState): void {
    this.#services.set(state.id, state)
    for (const l of this.#listeners) l(state.id)
  }
}

const instance = (serviceId: string, n: number, healthy = true): Instance => ({ id: `${serviceId}.${n}`, serviceId, host: '10.0.0.1', port: 31000 + n, extraPorts: [], proto: 'http', startedAt: 1000 + n, healthy, logDirectory: undefined, flags: new Set(['has-connected']) })

interface Peer {
  readonly backend: LeaderBackend
  readonly url: string
  /** Each backend this router started as leader, in order. */
  readonly started: FakeBackend[]
  leading: boolean
}

/** Two routers, each a LeaderBackend behind its own peer port; `leader` decides who leads. */
async function routers(t: Test, options: { askPatienceMs?: number; notReady?: boolean; specOf?: (id: string) => LaunchSpec | undefined } = {}): Promise<[Peer, Peer]> {
  const peers: Peer[] = []
  const exchange: PeerExchange = { authorized: (k) => k === KEY, receiveWants: () => undefined, receiveOffer: () => undefined, receiveEject: () => true, receiveCollect: () => true, receiveMemberQuery: () => true }
  for (let i = 0; i < 2; i++) {
    let backend: LeaderBackend | undefined
    const server: Server = createServer((req, res) => {
      const url = new URL(req.url ?? '/', 'http://router')
      handlePeer({ req, res, url, cid: 'c' }, exchange, backend).catch((err: unknown) => sendError(req, res, err, { cid: 'c' }))
    })
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
    const peer: Peer = { url, started: [], leading: i === 0, backend: undefined as unknown as LeaderBackend }
    backend = new LeaderBackend({
      kind: 'mesos',
      start: () => {
        const fake = new FakeBackend()
        fake.ready = options.notReady !== true
        peer.started.push(fake)
        return fake
      },
      isLeader: () => peer.leading,
      leaderUrl: () => peers.find((p) => p.leading && p !== peer)?.url,
      peerKey: KEY,
      log: silentLogger,
      checkMs: 20,
      ...(options.askPatienceMs === undefined ? {} : { askPatienceMs: options.askPatienceMs }),
      ...(options.specOf === undefined ? {} : { specOf: options.specOf }),
    })
    ;(peer as { backend: LeaderBackend }).backend = backend
    peers.push(peer)
    t.teardown(async () => {
      await backend?.close()
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    })
  }
  return peers as [Peer, Peer]
}

t.test('the follower shows the leader’s view as it changes, and the leader carries out what the follower asks', async (t) => {
  const [leader, follower] = await routers(t)
  const real = await waitFor('the leader’s backend started', () => leader.started[0], 2000)
  t.same(follower.started, [], 'a follower runs no backend of its own')

  await follower.backend.ensureService(spec('svc'))
  t.same(real.calls, ['ensure svc'], 'the cold start asked through the follower reached the leader’s backend')
  t.equal(follower.backend.requested('svc'), 1, 'and counts on the follower at once')

  const changes: string[] = []
  follower.backend.subscribe((id) => changes.push(id))
  real.set({ ...(real.state('svc') as ServiceState), instances: [instance('svc', 1), instance('svc', 2, false)] })
  const seen = await waitFor('the new instances on the follower', () => {
    const instances = follower.backend.state('svc')?.instances ?? []
    return instances.length === 2 ? instances : undefined
  }, 2000)
  t.same(seen.map((i) => [i.id, i.healthy, [...i.flags]]), [['svc.1', true, ['has-connected']], ['svc.2', false, ['has-connected']]], 'whole: health and flags included')
  t.ok(changes.includes('svc'), 'and announced to the follower’s subscribers')

  t.equal(await follower.backend.killInstance('svc', 'svc.1', { force: true }), true)
  t.equal(await follower.backend.killInstance('svc', 'svc.9'), false, 'a kill the leader could not make says so')
  t.same(real.calls.slice(1), ['kill svc svc.1 true', 'kill svc svc.9 false'])
  t.same(follower.backend.state('svc')?.instances.map((i) => i.id), ['svc.2'], 'the follower shows the kill at once')
  await follower.backend.scale('svc', 3)
  t.equal(follower.backend.requested('svc'), 3)
  await follower.backend.deleteService('svc')
  t.equal(follower.backend.state('svc'), undefined, 'a delete shows at once too')
  t.same(real.calls.slice(3), ['scale svc 3', 'delete svc'])
})

t.test('a refusal by the leader’s backend reaches the follower’s caller as the same error', async (t) => {
  const [leader, follower] = await routers(t)
  const real = await waitFor('the leader’s backend started', () => leader.started[0], 2000)
  real.refuse = misconfigured([{ field: 'health-check-proto', message: 'h2c is not supported by this backend' }])
  const refused = await follower.backend.ensureService(spec('bad')).catch((err: unknown) => err)
  t.match(refused, { code: 'MAITRE_INVALID_DESCRIPTOR', status: 400, message: /h2c is not supported by this backend/ })
})

t.test('with no leader to take it, a follower’s call waits its patience out, then fails with a 503 that says why', async (t) => {
  const [leader, follower] = await routers(t, { askPatienceMs: 400 })
  leader.leading = false
  await waitFor('the leader’s backend closed', () => (leader.started[0]?.closed === true ? true : undefined), 2000)
  const startedAt = Date.now()
  const failed = await follower.backend.ensureService(spec('nobody')).catch((err: unknown) => err)
  t.ok(Date.now() - startedAt >= 400, 'it waited for a leader first')
  t.match(failed, { code: 'MAITRE_BACKEND', status: 503, headers: { 'retry-after': '1' }, message: /leader drives the mesos backend and none is known/ })
})

t.test('a call that waits for a leader is carried out by whichever router leads next', async (t) => {
  const [leader, follower] = await routers(t, { askPatienceMs: 5000 })
  leader.leading = false
  await waitFor('the leader’s backend closed', () => (leader.started[0]?.closed === true ? true : undefined), 2000)
  const asked = follower.backend.ensureService(spec('later'))
  await new Promise((resolve) => setTimeout(resolve, 100))
  follower.leading = true
  await asked
  t.same(follower.started[0]?.calls, ['ensure later'], 'the new leader (the follower itself) carried it out')
})

t.test('leadership changing hands: the old leader stops its backend at once and shows its last view; the new one shows that view until its own backend is ready', async (t) => {
  const [a, b] = await routers(t, { notReady: true })
  const first = await waitFor('a’s backend started', () => a.started[0], 2000)
  first.ready = true
  first.set({ id: 'kept', requested: 1, instances: [instance('kept', 1)], failed: [], killed: [], deploymentError: undefined })
  await waitFor('b sees a’s view', () => b.backend.state('kept')?.instances[0], 2000)

  a.leading = false
  b.leading = true
  await waitFor('a’s backend closed', () => (first.closed ? true : undefined), 2000)
  t.same(a.backend.state('kept')?.instances.map((i) => i.id), ['kept.1'], 'the old leader routes on with what it knew')
  const second = await waitFor('b’s backend started', () => b.started[0], 2000)
  t.same(b.backend.state('kept')?.instances.map((i) => i.id), ['kept.1'], 'while its backend takes over, b shows the view it had')
  await b.backend.ensureService(spec('new'))
  t.equal(b.backend.requested('new'), 1, 'and what it was asked meanwhile shows from its own backend')

  second.set({ id: 'kept', requested: 1, instances: [instance('kept', 1), instance('kept', 2)], failed: [], killed: [], deploymentError: undefined })
  second.ready = true
  await waitFor('b shows its own backend’s view', () => (b.backend.state('kept')?.instances.length === 2 ? true : undefined), 2000)
  await waitFor('a follows b now', () => (a.backend.state('kept')?.instances.length === 2 ? true : undefined), 2000)
  t.pass('the view moved over without a gap')
})

t.test('a peer’s bad input is a 400 naming the field; a router that does not lead refuses to act', async (t) => {
  const [leader, follower] = await routers(t)
  await waitFor('the leader’s backend started', () => leader.started[0], 2000)
  await t.rejects(leader.backend.peerCall('scale', { serviceId: 'svc', instances: -1 }), { code: 'MAITRE_BAD_REQUEST', details: { field: 'instances' } })
  await t.rejects(leader.backend.peerCall('kill', { serviceId: 'svc', instanceId: 'i', force: 'yes' }), { code: 'MAITRE_BAD_REQUEST', details: { field: 'force' } })
  await t.rejects(leader.backend.peerCall('ensure', { spec: { ...spec('svc'), ports: 0 } }), { code: 'MAITRE_BAD_REQUEST', details: { field: 'spec.ports' } })
  await t.rejects(leader.backend.peerCall('ensure', { spec: { ...spec('svc'), healthCheck: { ...check, proto: 'gopher' } } }), { code: 'MAITRE_BAD_REQUEST', details: { field: 'spec.healthCheck.proto' } })
  await t.rejects(leader.backend.peerCall('delete', { serviceId: '' }), { code: 'MAITRE_BAD_REQUEST', details: { field: 'serviceId' } })
  await t.rejects(follower.backend.peerCall('scale', { serviceId: 'svc', instances: 1 }), { code: 'MAITRE_CLUSTER_UNAVAILABLE', status: 503 })
  await t.rejects(follower.backend.peerState('', new AbortController().signal), { code: 'MAITRE_CLUSTER_UNAVAILABLE' })
})

t.test('a leader still taking over makes the follower’s kill wait until it knows what runs, then carries it out', async (t) => {
  const [leader, follower] = await routers(t, { notReady: true })
  const real = await waitFor('the leader’s backend started', () => leader.started[0], 2000)
  real.set({ id: 'svc', requested: 2, instances: [instance('svc', 1), instance('svc', 2)], failed: [], killed: [], deploymentError: undefined })
  let killed: boolean | undefined
  const asked = follower.backend.killInstance('svc', 'svc.1').then((k) => (killed = k))
  await new Promise((resolve) => setTimeout(resolve, 300))
  t.same(real.calls, [], 'nothing reached a backend that has not adopted what runs')
  t.equal(killed, undefined, 'the follower still waits')
  real.ready = true
  await asked
  t.equal(killed, true)
  t.same(real.calls, ['kill svc svc.1 false'], 'carried out once the leader was ready')
})

t.test('a cold start the last leader had not placed is carried over to the next: its service never leaves the view', async (t) => {
  const [a, b] = await routers(t, { notReady: true, specOf: (id) => (id === 'pending' ? spec('pending') : undefined) })
  const first = await waitFor('a’s backend started', () => a.started[0], 2000)
  first.ready = true
  first.set({ id: 'pending', requested: 2, instances: [], failed: [], killed: [], deploymentError: undefined })
  await waitFor('b sees the demand', () => (b.backend.requested('pending') === 2 ? true : undefined), 2000)
  const gone: string[] = []
  b.backend.subscribe((id) => {
    if (b.backend.state(id) === undefined) gone.push(id)
  })
  a.leading = false
  b.leading = true
  const second = await waitFor('b’s backend started', () => b.started[0], 2000)
  second.ready = true
  await waitFor('b shows its own view', () => (second.calls.length >= 2 ? true : undefined), 2000)
  t.same(second.calls, ['ensure pending', 'scale pending 2'], 'b’s backend was asked for it, as many as before')
  t.equal(b.backend.requested('pending'), 2)
  t.same(gone, [], 'the service never went missing from b’s view (its queued requests wait on)')
})

t.test('the leader’s own scale, kill and delete wait until its backend has adopted what runs', async (t) => {
  const [leader] = await routers(t, { notReady: true })
  const real = await waitFor('the leader’s backend started', () => leader.started[0], 2000)
  real.set({ id: 'svc', requested: 1, instances: [instance('svc', 1)], failed: [], killed: [], deploymentError: undefined })
  let done = false
  const scaling = leader.backend.scale('svc', 5).then(() => (done = true))
  await new Promise((resolve) => setTimeout(resolve, 200))
  t.same([real.calls, done], [[], false], 'not carried out while the backend does not know what runs (it would be dropped)')
  real.ready = true
  await scaling
  t.same(real.calls, ['scale svc 5'])
  t.equal(leader.backend.requested('svc'), 5)
})

t.test('a refusal that is not about the version (the routers’ own fault) reaches the caller as a 503, not as the leader’s 4xx', async (t) => {
  const [leader, follower] = await routers(t)
  const real = await waitFor('the leader’s backend started', () => leader.started[0], 2000)
  real.refuse = new MaitreError('MAITRE_NOT_PERMITTED', 'not permitted here', { status: 403 })
  const refused = await follower.backend.ensureService(spec('svc')).catch((err: unknown) => err)
  t.match(refused, { code: 'MAITRE_BACKEND', status: 503, message: /answered 403: not permitted here/ })
})

t.test('a call’s answer older than the view already shown (the long poll overtook it) changes nothing', async (t) => {
  // A fake leader: the poll shows view E.12 (svc.1 killed at E.11); the scale's answer, made at E.10, arrives after it.
  let polls = 0
  const server: Server = createServer((req, res) => {
    if (req.url?.startsWith('/maitre-peer/backend/state')) {
      polls += 1
      if (polls === 1) res.end(JSON.stringify({ view: 'E.12', services: [toWire({ id: 'svc', requested: 1, instances: [instance('svc', 2)], failed: [], killed: [], deploymentError: undefined })] }))
      return // later polls: nothing new (held open)
    }
    req.resume()
    setTimeout(() => res.end(JSON.stringify({ service: toWire({ id: 'svc', requested: 2, instances: [instance('svc', 1), instance('svc', 2)], failed: [], killed: [], deploymentError: undefined }), view: 'E.10' })), 300)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  const follower = new LeaderBackend({ kind: 'mesos', start: () => new FakeBackend(), isLeader: () => false, leaderUrl: () => url, peerKey: KEY, log: silentLogger, checkMs: 20 })
  t.teardown(async () => {
    await follower.close()
    server.closeAllConnections()
    server.close()
  })
  const scaling = follower.scale('svc', 2)
  await waitFor('E.12 shown', () => (follower.state('svc')?.instances.length === 1 ? true : undefined), 2000)
  await scaling
  t.same(follower.state('svc')?.instances.map((i) => i.id), ['svc.2'], 'svc.1, killed at E.11, is not routed to again')
})

t.test('the wire: a state read back is the state sent; flags a newer router added are left out, not refused; a bad field is named', async (t) => {
  const state: ServiceState = { id: 's', requested: 2, instances: [instance('s', 1)], failed: [{ id: 's.0', serviceId: 's', host: 'h', port: 1, startedAt: 1, endedAt: 2, exitCode: 127, flags: new Set(['never-passed-health-checks']), message: 'Invalid startup command', logDirectory: undefined }], killed: [], deploymentError: 'Invalid startup command' }
  t.same(serviceStateOf(JSON.parse(JSON.stringify(toWire(state)))), state)
  const newer = JSON.parse(JSON.stringify(toWire(state))) as { instances: { flags: string[] }[] }
  newer.instances[0]?.flags.push('a-flag-from-the-future')
  t.same([...(serviceStateOf(newer).instances[0]?.flags ?? [])], ['has-connected'])
  const fieldOf = (build: () => unknown): unknown => {
    try {
      build()
    } catch (err) {
      return (err as { field?: unknown }).field
    }
    return undefined
  }
  t.equal(fieldOf(() => serviceStateOf({ ...(toWire(state) as object), requested: -1 })), 'service.requested')
  t.equal(fieldOf(() => serviceStateOf({ ...(toWire(state) as object), instances: [{ ...(toWire(state) as { instances: object[] }).instances[0], port: 'x' }] })), 'service.instances[0].port')
})
