/**
 * A router's identity in its cluster: its routerId is its own. A second live router with the
 * same id is refused, and a key left by this router's previous life is waited out or taken back.
 */
import t from 'tap'
import { connectEtcd } from '../../src/cluster/etcd/connect.ts'
import { EtcdCoordinator } from '../../src/cluster/etcd/coordinator.ts'
import { systemClock } from '../../src/clock.ts'
import { silentLogger } from '../../src/log.ts'
import { startEtcd } from '../fixtures/etcd.ts'
import { node } from '../fixtures/coordinator-node.ts'

t.test('a second live router with the same routerId is refused at start, naming the one that holds it', async (t) => {
  const etcd = await startEtcd(t)
  await node(etcd, 'twin')
  const started = Date.now()
  await t.rejects(node(etcd, 'twin'), { code: 'MAITRE_INVALID_CONFIG', message: /routerId twin is held by another live router \(http:\/\/127\.0\.0\.1\/twin\)/ })
  const took = Date.now() - started
  t.ok(took >= 2000 && took < 2000 + 6000, `after waiting out one lease TTL (2 s), in which a key of its own previous life would have gone, and not much longer (${took} ms)`)
})

t.test('a previous life that ran with a longer lease TTL is waited out by its own TTL, not taken for a twin', async (t) => {
  const etcd = await startEtcd(t)
  // What a router SIGKILLed while it ran with etcd.leaseTtlSecs 5 leaves: its key on a lease
  // nobody renews. Started again with a 2 s TTL (and at another address), it must wait the 5 s out.
  const client = connectEtcd({ endpoints: [etcd.endpoint], requestTimeoutMs: 1000 })
  t.teardown(() => client.close())
  const left = client.lease(5, { autoKeepAlive: false })
  await left.put('/maitre/test/routers/phoenix').value(JSON.stringify({ routerId: 'phoenix', url: 'http://127.0.0.1/old-address', hostname: 'elsewhere' }))
  const started = Date.now()
  const back = await node(etcd, 'phoenix')
  const took = Date.now() - started
  t.ok(back.coordinator.members().some((m) => m.routerId === 'phoenix' && m.url === 'http://127.0.0.1/phoenix'), `it joined, ${took} ms later, once the old key had gone`)
  t.ok(took >= 3000, `not before the old 5 s lease could lapse (${took} ms)`)
})

t.test('a key at the same id and address but from another machine is another live router’s (127.0.0.1 repeats across containers): refused, not revoked', async (t) => {
  const etcd = await startEtcd(t)
  const first = await node(etcd, 'twin', etcd.endpoint, 2, 100, 1000, 'container-a')
  await t.rejects(node(etcd, 'twin', etcd.endpoint, 2, 100, 1000, 'container-b'), { code: 'MAITRE_INVALID_CONFIG', message: /routerId twin is held by another live router/ })
  t.ok(first.coordinator.members().some((m) => m.routerId === 'twin'), 'the live one keeps its membership')
})

t.test('when etcd will not say how long the old lease lasts, the router waits as long as any lease may last rather than take its previous life for a twin', async (t) => {
  const etcd = await startEtcd(t)
  const planted = connectEtcd({ endpoints: [etcd.endpoint], requestTimeoutMs: 1000 })
  t.teardown(() => planted.close())
  await planted.lease(5, { autoKeepAlive: false }).put('/maitre/test/routers/phoenix').value(JSON.stringify({ routerId: 'phoenix', url: 'http://127.0.0.1/old-address', hostname: 'elsewhere' }))
  const client = connectEtcd({ endpoints: [etcd.endpoint], requestTimeoutMs: 1000 })
  // The first question about the old lease fails (a timeout, etcd busy): the router must not
  // fall back to its own 2 s TTL for it.
  const leases = client.leaseClient as unknown as { leaseTimeToLive: (...args: unknown[]) => Promise<unknown> }
  const ask = leases.leaseTimeToLive.bind(leases)
  let asked = 0
  leases.leaseTimeToLive = (...args) => (++asked === 1 ? Promise.reject(new Error('DEADLINE_EXCEEDED')) : ask(...args))
  const warnings: string[] = []
  const log = { ...silentLogger, warn: (_: unknown, msg: string) => void warnings.push(msg) } as unknown as typeof silentLogger
  const started = Date.now()
  const coordinator = await EtcdCoordinator.start({ client, prefix: '/maitre/test', routerId: 'phoenix', url: () => 'http://127.0.0.1/phoenix', leaseTtlSecs: 2, endpoints: [etcd.endpoint], localLoads: () => new Map().entries(), overShare: () => [], loadIntervalMs: 100, clock: systemClock, log })
  etcd.beforeStop(async () => {
    await coordinator.close()
    client.close()
  })
  t.ok(coordinator.members().some((m) => m.routerId === 'phoenix' && m.url === 'http://127.0.0.1/phoenix'), `it joined ${Date.now() - started} ms later, once the old 5 s lease had gone`)
  t.ok(warnings.some((w) => /cannot read the lease/.test(w)), 'and said why it waited')
})
