/**
 * The Kubernetes backend's own contract against the in-repo API simulator: the watch resumes and
 * re-lists after 410 and decodes characters split across chunks, calls time out and are retried,
 * a service outlives a failed delete, optimistic concurrency, in-cluster and kubeconfig
 * credentials, and the pure readings of pods. (The kill of an idle pod: kubernetes-kill-*.test.ts.)
 */
import t, { type Test as TapTest } from 'tap'
import { getEventListeners } from 'node:events'
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createServer, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Agent, request as undiciRequest } from 'undici'
import { DEPLOYMENT_ERRORS } from '../../src/backends/deployment-error.ts'
import { KubernetesBackend } from '../../src/backends/kubernetes.ts'
import { KubeApi, KubeApiError, PERMISSIONS, type KubeApiOptions, type WatchEvent } from '../../src/backends/kubernetes/api.ts'
import { fileToken, kubeConnection, type KubeConnection } from '../../src/backends/kubernetes/connection.ts'
import type { Pod } from '../../src/backends/kubernetes/objects.ts'
import { clusterProblem, failureKey, instanceId, lastFailure, latestFailedCreate, schedulerProblem } from '../../src/backends/kubernetes/pod-view.ts'
import type { KubeEvent } from '../../src/backends/kubernetes/objects.ts'
import { replicaSetName, replicaSetOf } from '../../src/backends/kubernetes/replica-set.ts'
import { systemClock } from '../../src/clock.ts'
import { DEFAULTS } from '../../src/config.ts'
import { silentLogger } from '../../src/log.ts'
import { call, createToken, kitchenCmd, kitchenToken, startKubeRouter, startRouter, SIM_NAMESPACE, SIM_TOKEN, waitFor, within } from '../fixtures/router.ts'
import { healthy, requestTo, setup, spec } from '../fixtures/kube-backend.ts'
import type { Instance } from '../../src/backends/backend.ts'
import { realisticTiming, type Simulator, type SimulatorOptions } from '../fixtures/k8s-sim/simulator.ts'

const K8S = DEFAULTS.backend.kubernetes


const served = (sim: Simulator, resource: string, verb: string): number => sim.requests.filter(([r, v]) => r === resource && v === verb).length

/** A plain HTTP server on 127.0.0.1 in the API server's place, answering as `respond` says, and a client of it. */
async function scriptedApi(t: Parameters<typeof startRouter>[0], respond: (res: ServerResponse) => void, options: KubeApiOptions = {}): Promise<KubeApi> {
  const server: Server = createServer((_req, res) => respond(res))
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const connection: KubeConnection = {
    server: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    namespace: 'ns',
    tls: { rejectUnauthorized: true },
    authorization: async () => undefined,
  }
  const api = new KubeApi(connection, options)
  t.teardown(async () => {
    // Connections first: the client's close waits for requests still open.
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
    await api.close()
  })
  return api
}

/** Writes one chunk and lets the client read it before anything else is written, so chunks stay apart. */
async function writeAlone(res: ServerResponse, chunk: Buffer): Promise<void> {
  await new Promise<void>((resolve, reject) => res.write(chunk, (err) => (err ? reject(err) : resolve())))
  // Written to the socket; one whole turn of the event loop (a poll phase) lets the client read it.
  await new Promise((resolve) => setImmediate(resolve))
  await new Promise((resolve) => setImmediate(resolve))
}

t.test('after its history is compacted and its watch dropped, the backend lists again and keeps up', async (t) => {
  const { sim, backend } = await setup(t)
  await backend.ensureService(spec('svc-a'))
  await waitFor('a ready pod', () => (healthy(backend, 'svc-a') === 1 ? true : undefined), 10000)
  sim.compact()
  sim.dropWatches()
  // The resumed watch gets 410 Expired; only a fresh list shows the second pod.
  await backend.scale('svc-a', 2)
  await waitFor('two ready pods after the re-list', () => (healthy(backend, 'svc-a') === 2 ? true : undefined), 10000)
  t.equal(sim.list('replicasets', SIM_NAMESPACE)[0]?.spec.replicas, 2, 'replicas written through /scale')
  t.equal(backend.state('svc-a')?.instances.length, 2)
  t.ok(sim.requests.filter(([r, v]) => r === 'pods' && v === 'list').length >= 2, 'the 410 led to a fresh list')
})

t.test('a service account RBAC lets not list pods: cold starts fail at once, and the backend is not ready until the list goes through', async (t) => {
  const { sim, api, podBasePort } = await setup(t, { sim: { forbidden: [['pods', 'list']] } })
  // A second backend of another cluster, asked to start a service before its first list is answered.
  const backend = new KubernetesBackend({ ...DEFAULTS.backend.kubernetes, api, cluster: 'rbac', podBasePort: podBasePort + 50, relistBackoffMs: 20, clock: systemClock, log: silentLogger })
  t.teardown(() => backend.close())
  t.match(backend.notReadyBecause(), /has not listed its pods yet/, 'not ready before its first list')
  const early = backend.ensureService(spec('svc-rbac-early'))
  await t.rejects(within('the cold start waiting for the first list to fail', early), { message: /first list of pods was refused/ }, 'a cold start already waiting is failed by the refusal')
  await t.rejects(within('a later cold start to fail', backend.ensureService(spec('svc-rbac'))), { message: /first list of pods was refused/ }, 'and a later one at once')
  t.match(backend.notReadyBecause(), /could not list its pods yet; it keeps trying/)
  t.equal(sim.list('replicasets', SIM_NAMESPACE).filter((rs) => rs.metadata.labels?.['maitre/cluster'] === 'rbac').length, 0, 'nothing was created')
  sim.forbidNext(0, ['pods', 'list']) // the Role is fixed
  await within('the first list, once allowed', backend.ready())
  t.equal(backend.notReadyBecause(), undefined, 'ready once the list is in')
  await backend.ensureService(spec('svc-rbac'))
  await waitFor('its pod ready', () => (healthy(backend, 'svc-rbac') === 1 ? true : undefined), 10_000)
})

t.test('a router whose backend may not list pods is not ready, and answers a cold start 503 at once', async (t) => {
  const router = await startKubeRouter(t, {}, { forbidden: [['pods', 'list']] })
  const readyz = await call(`${router.url}/readyz`)
  t.equal(readyz.status, 503)
  t.match(readyz.json(), { status: 'backend-syncing', message: /Kubernetes backend/ }, '/readyz says why')
  await createToken(router, 'rbac', kitchenToken())
  const reply = await within('the cold start to be answered', call(`${router.url}/hello`, { headers: { 'x-waiter-token': 'rbac' } }))
  t.equal(reply.status, 503, 'a 503 at once, not after the queue timeout')
  t.match(reply.json(), { 'waiter-error': { message: /kubernetes backend could not create the service/ } })
  t.notMatch(reply.text, /forbidden|serviceaccount/, "the API server's own words stay in the log")
  router.sim.forbidNext(0, ['pods', 'list'])
  await waitFor('/readyz 200 once the list is in', async () => ((await call(`${router.url}/readyz`)).status === 200 ? true : undefined), 10_000)
  t.equal((await call(`${router.url}/hello`, { headers: { 'x-waiter-token': 'rbac' } })).status, 200, 'served then')
})

t.test('an API server failing the first list for a while (5xx) is waited past, not reported to the cold start', async (t) => {
  const { sim, api, podBasePort } = await setup(t)
  sim.failNext(Infinity, ['pods', 'list'])
  const lists = (): number => sim.requests.filter(([r, v]) => r === 'pods' && v === 'list').length
  const before = lists()
  const backend = new KubernetesBackend({ ...DEFAULTS.backend.kubernetes, api, cluster: 'flaky', podBasePort: podBasePort + 50, relistBackoffMs: 20, clock: systemClock, log: silentLogger })
  t.teardown(() => backend.close())
  let settled: string | undefined
  const starting = backend.ensureService(spec('svc-flaky')).then(() => (settled = 'resolved'), (err: unknown) => (settled = `rejected: ${String(err)}`))
  await waitFor('three failed first lists', () => (lists() >= before + 3 ? true : undefined), 10_000)
  t.equal(settled, undefined, 'the cold start still waits')
  t.match(backend.notReadyBecause(), /could not list its pods yet/)
  sim.failNext(0, ['pods', 'list'])
  await within('the cold start, once the list goes through', starting)
  t.equal(settled, 'resolved')
  await waitFor('its pod ready', () => (healthy(backend, 'svc-flaky') === 1 ? true : undefined), 10_000)
})

t.test('a failing API server is retried with backoff, not fatal', async (t) => {
  const { sim, backend } = await setup(t)
  await backend.ready()
  sim.failNext(3)
  sim.dropWatches()
  await backend.ensureService(spec('svc-b')) // meets the injected 500s, and retries
  await backend.ensureService(spec('svc-c'))
  await waitFor('a ready pod of each', () => (healthy(backend, 'svc-b') === 1 && healthy(backend, 'svc-c') === 1 ? true : undefined), 10000)
  t.equal(backend.state('svc-b')?.deploymentError, undefined, 'a 500 is not mistaken for a deployment error')
  t.ok(sim.requests.filter(([r, v]) => r === 'pods' && v === 'list').length >= 2, 'the pods were listed again')
})

t.test('a scale write the API server sheds past every retry is written again when the count is asked for again, even the same count', async (t) => {
  const { sim, backend } = await setup(t)
  await backend.ready()
  await backend.ensureService(spec('svc-shed', { minInstances: 0 }))
  const replicas = (): unknown => sim.list('replicasets', SIM_NAMESPACE)[0]?.spec.replicas
  await waitFor('the ReplicaSet made', () => (replicas() === 0 ? true : undefined), 5000)
  // The API server sheds every write of the count for a while (429/5xx: an etcd leader change, its
  // priority and fairness): a cold start's scale-up fails after its retries.
  sim.failNext(Infinity, ['replicasets/scale', 'update'])
  await backend.scale('svc-shed', 1)
  t.equal(replicas(), 0, 'not written while the API server sheds it')
  sim.failNext(0, ['replicasets/scale', 'update'])
  // The next cold start (or the autoscaler's next tick) asks for the same count.
  await backend.scale('svc-shed', 1)
  t.equal(replicas(), 1, 'written then: the cold start goes on instead of waiting for a ReplicaSet event')
  await waitFor('its pod ready', () => (healthy(backend, 'svc-shed') === 1 ? true : undefined), 10_000)
})

t.test('an outage of the API server leaves no listener behind per relist pause', async (t) => {
  // The backend's own AbortController, caught as it is made (it is private).
  const made: AbortController[] = []
  const Real = globalThis.AbortController
  globalThis.AbortController = class extends Real {
    constructor() {
      super()
      made.push(this)
    }
  }
  let setUp: Awaited<ReturnType<typeof setup>>
  try {
    setUp = await setup(t, { backend: { relistBackoffMs: 5 } })
  } finally {
    globalThis.AbortController = Real
  }
  const { sim, backend } = setUp
  await backend.ready()
  const listeners = (): number => Math.max(0, ...made.map((c) => getEventListeners(c.signal, 'abort').length))
  const lists = (): number => sim.requests.filter(([r, v]) => r === 'pods' && v === 'list').length
  const before = lists()
  sim.failNext(Infinity, ['pods', 'watch'])
  sim.failNext(Infinity, ['pods', 'list'])
  sim.dropWatches()
  await waitFor('a dozen failed relists', () => (lists() >= before + 12 ? true : undefined), 20_000)
  sim.failNext(0, ['pods', 'watch'])
  sim.failNext(0, ['pods', 'list'])
  const failing = lists()
  await waitFor('listed again', () => (lists() > failing ? true : undefined), 20_000)
  t.ok(listeners() <= 2, `abort listeners on the backend's signal after twelve pauses: ${listeners()}`)
})

t.test('a call the API server never answers fails within the request timeout, as a transient 504', { timeout: 15_000 }, async (t) => {
  const silent = await scriptedApi(t, () => undefined, { requestTimeoutMs: 200 })
  const stalled = await scriptedApi(t, (res) => {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': '100' })
    res.write('{"items":')
  }, { requestTimeoutMs: 200 })
  for (const [what, api] of [['no headers', silent], ['a body that never ends', stalled]] as const) {
    const started = Date.now()
    const err = await api.listPods('a=b').catch((e: unknown) => e)
    t.ok(err instanceof KubeApiError, `${what}: a KubeApiError`)
    t.match(err, { name: 'KubeApiTimeoutError', code: 504, reason: 'Timeout', message: 'GET /api/v1/namespaces/ns/pods: no answer from the API server within 200 ms' }, what)
    t.ok(Date.now() - started < 5000, `${what}: bounded by the timeout`)
  }
})

t.test('an API call never answered is retried like a 5xx, not taken for a deployment error', { timeout: 20_000 }, async (t) => {
  const { sim, backend } = await setup(t, { api: { requestTimeoutMs: 500 } })
  await backend.ready()
  sim.hangNext(1, ['replicasets', 'create'])
  await backend.ensureService(spec('svc-hung'))
  t.ok(served(sim, 'replicasets', 'create') >= 2, 'the unanswered create was sent again')
  t.equal(backend.state('svc-hung')?.deploymentError, undefined)
  await waitFor('a ready pod', () => (healthy(backend, 'svc-hung') === 1 ? true : undefined), 10000)
})

t.test('the watch decodes characters whose bytes arrive in different chunks', { timeout: 15_000 }, async (t) => {
  const event = (name: string): WatchEvent<unknown> => ({ type: 'ADDED', object: { metadata: { name, annotations: { note: 'é→😀' } } } })
  const [a, b, c, d] = ['a', 'b', 'c', 'd'].map((name) => Buffer.from(`${JSON.stringify(event(name))}\n`)) as [Buffer, Buffer, Buffer, Buffer]
  /** A byte offset `into` bytes inside the first `char` of `line`. */
  const inside = (line: Buffer, char: string, into: number): number => line.indexOf(Buffer.from(char)) + into
  const events: unknown[] = []
  const delivered = (n: number): Promise<boolean> => waitFor(`${n} events`, () => (events.length >= n ? true : undefined), 5000)
  const script = async (res: ServerResponse): Promise<void> => {
    res.writeHead(200, { 'content-type': 'application/json' })
    const cSplit = inside(c, 'é', 1)
    const [dSplit1, dSplit2] = [inside(d, '→', 1), inside(d, '😀', 2)]
    // Two whole events and the first byte of c's é in one chunk; the rest of c only once a and b
    // are delivered, so the client has read up to the middle of the é.
    await writeAlone(res, Buffer.concat([a, b, c.subarray(0, cSplit)]))
    await delivered(2)
    // d over three chunks: cut inside → (once c is delivered) and inside 😀.
    await writeAlone(res, Buffer.concat([c.subarray(cSplit), d.subarray(0, dSplit1)]))
    await delivered(3)
    await writeAlone(res, d.subarray(dSplit1, dSplit2))
    await writeAlone(res, d.subarray(dSplit2))
    res.end()
  }
  const api = await scriptedApi(t, (res) => void script(res).catch((err: unknown) => res.destroy(err as Error)))
  await api.watchPods('a=b', '1', 60, new AbortController().signal, (e) => events.push(e))
  t.same(events, ['a', 'b', 'c', 'd'].map(event), 'every event whole, é→😀 intact')
})

t.test('a ReplicaSet delete that fails leaves the service known, and a later delete finishes it', async (t) => {
  const { sim, backend } = await setup(t)
  await backend.ensureService(spec('svc-del'))
  const replicaSets = (): string[] => sim.list('replicasets', SIM_NAMESPACE).map((rs) => rs.metadata.name as string)
  sim.failNext(Number.POSITIVE_INFINITY, ['replicasets', 'delete'])
  await t.rejects(backend.deleteService('svc-del'), { code: 500 }, 'the delete fails, after its retries')
  t.equal(backend.state('svc-del')?.requested, 1, 'still known, at the size its ReplicaSet still has')
  t.same(replicaSets(), [replicaSetName('svc-del')], 'the ReplicaSet still exists')
  sim.failNext(0, ['replicasets', 'delete'])
  await backend.deleteService('svc-del')
  t.equal(backend.state('svc-del'), undefined, 'forgotten once deleted')
  t.same(replicaSets(), [], 'the ReplicaSet is gone')
})

t.test('while its delete is in flight, a service is neither scaled nor half recreated', { timeout: 20_000 }, async (t) => {
  const { sim, backend } = await setup(t, { api: { requestTimeoutMs: 500 } })
  await backend.ensureService(spec('svc-x'))
  const replicaSets = (): Array<{ uid: string; replicas: number }> => sim.list('replicasets', SIM_NAMESPACE).map((rs) => ({ uid: rs.metadata.uid as string, replicas: rs.spec.replicas as number }))
  const [first] = replicaSets()
  sim.hangNext(1, ['replicasets', 'delete']) // the first attempt times out; the retry deletes
  const deleted = backend.deleteService('svc-x')
  await waitFor('the delete sent', () => (served(sim, 'replicasets', 'delete') >= 1 ? true : undefined))
  const scaling = backend.scale('svc-x', 3)
  t.equal(backend.state('svc-x')?.requested, 0, 'still known while deleting, at 0')
  const recreated = backend.ensureService(spec('svc-x'))
  await deleted
  await scaling
  t.equal(served(sim, 'replicasets/scale', 'update'), 0, 'a scale asked while deleting waits for the delete, then has nothing to scale')
  await recreated
  const [second, ...more] = replicaSets()
  t.same(more, [], 'one ReplicaSet')
  t.not(second?.uid, first?.uid, 'created afresh after the delete, not adopted half-deleted')
  t.equal(second?.replicas, 1)
  t.equal(backend.state('svc-x')?.requested, 1)
  await waitFor('a ready pod of the new ReplicaSet', () => (healthy(backend, 'svc-x') === 1 ? true : undefined), 10000)
})

t.test('a router that starts later adopts the ReplicaSets already in the cluster', async (t) => {
  const { backend, kubeconfig } = await setup(t)
  await backend.ensureService(spec('svc-d'))
  await backend.scale('svc-d', 2)
  await waitFor('two ready pods', () => (healthy(backend, 'svc-d') === 2 ? true : undefined), 10000)
  const next = new KubernetesBackend({ ...K8S, api: new KubeApi(kubeConnection({ ...K8S, kubeconfig }, {})), cluster: 'test', podBasePort: 1, clock: systemClock, log: silentLogger })
  t.teardown(() => next.close())
  await next.ready()
  t.equal(next.state('svc-d')?.requested, 2, 'requested from the ReplicaSet')
  t.equal(next.state('svc-d')?.instances.filter((i) => i.healthy).length, 2, 'its pods are its instances')
  // This router's own podBasePort (1) is not the one the pods were made with.
  const ports = (b: KubernetesBackend): number[] => (b.state('svc-d')?.instances ?? []).map((i) => i.port)
  t.same(ports(next), ports(backend), 'at the port the ReplicaSet made them with, not this router’s podBasePort')
  const answer = await requestTo(next.state('svc-d')?.instances[0] as Instance, '/status')
  t.equal(answer.status, 200, 'and reached there')
})

t.test('the API server enforces resourceVersion on /scale; the client reports Status errors typed', async (t) => {
  const { api, backend } = await setup(t)
  await backend.ensureService(spec('svc-e'))
  const name = replicaSetName('svc-e')
  // The controller writes the ReplicaSet's status as its pod comes (a new resourceVersion), so
  // the first write may itself meet a newer version: read again until one goes through.
  let read = await api.getScale(name)
  for (let attempt = 1; ; attempt++) {
    const written = await api.replaceScale(name, { ...read, spec: { replicas: 2 } }).then(() => true, (err: unknown) => {
      if (!(err instanceof KubeApiError && err.code === 409) || attempt >= 20) throw err
      return false
    })
    if (written) break
    read = await api.getScale(name)
  }
  const stale = await api.replaceScale(name, { ...read, spec: { replicas: 3 } }).catch((err: unknown) => err)
  t.ok(stale instanceof KubeApiError)
  t.match(stale, { code: 409, reason: 'Conflict', message: /the object has been modified/ })
  const h2cCheck = { url: '/status', portIndex: 0, proto: 'h2c' as const, intervalMs: 10000, maxConsecutiveFailures: 5, authenticated: false }
  await t.rejects(backend.ensureService(spec('svc-h2', { backendProto: 'h2c', healthCheck: h2cCheck })), { code: 'MAITRE_INVALID_DESCRIPTOR', message: /health-check-proto h2c is not supported by this backend; use http, https \(the kubelet's HTTP probes/ }, 'an h2c health check is refused: the kubelet cannot probe it')
  const missing = await api.getScale('nope').catch((err: unknown) => err)
  t.match(missing, { code: 404, reason: 'NotFound' })
  const bad = await api.patchPod('nope', {}).catch((err: unknown) => err)
  t.match(bad, { code: 404 })
})

t.test('the simulator speaks the API faithfully where the backend relies on it', async (t) => {
  const { sim } = await setup(t)
  // Over TLS, trusting the simulator's CA only (as a client of a cluster does).
  const trusting = new Agent({ connect: { ca: sim.ca } })
  t.teardown(() => trusting.close())
  const request = (url: string, options: Parameters<typeof undiciRequest>[1] = {}): ReturnType<typeof undiciRequest> => undiciRequest(url, { ...options, dispatcher: trusting })
  const untrusted = await undiciRequest(`${sim.url}/version`).catch((err: unknown) => err)
  t.match(untrusted, { code: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE' }, 'a client that does not trust its CA is refused')
  const h = { authorization: `Bearer ${SIM_TOKEN}`, 'content-type': 'application/json' }
  const base = `${sim.url}/apis/coordination.k8s.io/v1/namespaces/${SIM_NAMESPACE}/leases`
  const lease = (time: string, rv?: string): string =>
    JSON.stringify({ apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', metadata: { name: 'maitre-leader', ...(rv === undefined ? {} : { resourceVersion: rv }) }, spec: { holderIdentity: 'r1', leaseDurationSeconds: 15, renewTime: time } })
  const millis = await request(base, { method: 'POST', headers: h, body: lease('2026-01-02T03:04:05.123Z') })
  t.equal(millis.statusCode, 400, 'MicroTime needs six fractional digits')
  await millis.body.dump()
  const created = await request(base, { method: 'POST', headers: h, body: lease('2026-01-02T03:04:05.123000Z') })
  t.equal(created.statusCode, 201)
  const rv = ((await created.body.json()) as { metadata: { resourceVersion: string } }).metadata.resourceVersion
  const renewed = await request(`${base}/maitre-leader`, { method: 'PUT', headers: h, body: lease('2026-01-02T03:04:15.123000Z', rv) })
  t.equal(renewed.statusCode, 200)
  await renewed.body.dump()
  const lost = await request(`${base}/maitre-leader`, { method: 'PUT', headers: h, body: lease('2026-01-02T03:04:25.123000Z', rv) })
  t.equal(lost.statusCode, 409, 'a stale resourceVersion is a Conflict')
  t.match(await lost.body.json(), { kind: 'Status', reason: 'Conflict', code: 409 })
  const anonymous = await request(base, { headers: { authorization: 'Bearer wrong' } })
  t.equal(anonymous.statusCode, 401)
  await anonymous.body.dump()
  const badPatch = await request(`${sim.url}/api/v1/namespaces/${SIM_NAMESPACE}/pods/x`, { method: 'PATCH', headers: { ...h, 'content-type': 'text/plain' }, body: '{}' })
  t.equal(badPatch.statusCode, 404, 'a missing pod is 404 before the patch type is looked at')
  await badPatch.body.dump()
})

t.test('the simulator behaves as an API server where clients are easily fooled: field selectors, no-op writes, dry runs, selector transitions on watches, second-precision times', async (t) => {
  const { sim } = await setup(t)
  const trusting = new Agent({ connect: { ca: sim.ca } })
  t.teardown(() => trusting.close())
  const h = { authorization: `Bearer ${SIM_TOKEN}`, 'content-type': 'application/json' }
  const core = `${sim.url}/api/v1/namespaces/${SIM_NAMESPACE}`
  const apps = `${sim.url}/apis/apps/v1/namespaces/${SIM_NAMESPACE}`
  const json = async (url: string, options: { method?: string; body?: unknown; type?: string } = {}): Promise<{ status: number; body: Record<string, any> }> => {
    const res = await undiciRequest(url, { dispatcher: trusting, method: (options.method ?? 'GET') as 'GET', headers: { ...h, ...(options.type === undefined ? {} : { 'content-type': options.type }) }, ...(options.body === undefined ? {} : { body: JSON.stringify(options.body) }) })
    return { status: res.statusCode, body: (await res.body.json()) as Record<string, any> }
  }
  const rs = { apiVersion: 'apps/v1', kind: 'ReplicaSet', metadata: { name: 'fidelity' }, spec: { replicas: 1, selector: { matchLabels: { app: 'fidelity' } }, template: { metadata: { labels: { app: 'fidelity' } }, spec: { containers: [{ name: 'app', image: 'maitre-app', command: ['/bin/sh', '-c', 'exec sleep 60'] }] } } } }

  const dry = await json(`${apps}/replicasets?dryRun=All`, { method: 'POST', body: rs })
  t.equal(dry.status, 201, 'a dry run is answered as a create')
  t.equal((await json(`${apps}/replicasets/fidelity`)).status, 404, 'and stores nothing')
  t.equal((await json(`${apps}/replicasets`, { method: 'POST', body: rs })).status, 201)
  const pod = await waitFor('its pod running', async () => {
    const items = (await json(`${core}/pods`)).body.items as Record<string, any>[]
    return items.find((p) => p.status?.containerStatuses?.[0]?.state?.running !== undefined)
  })
  const name = pod.metadata.name as string
  t.match(pod.metadata.creationTimestamp, /T\d\d:\d\d:\d\dZ$/, 'timestamps in whole seconds (metav1.Time)')
  t.match(pod.status.containerStatuses[0].state.running.startedAt, /T\d\d:\d\d:\d\dZ$/)

  const unsupported = await json(`${core}/pods?fieldSelector=spec.containers.image%3Dx`)
  t.equal(unsupported.status, 400, 'a field the API server cannot select by is a 400, not ignored')
  t.match(unsupported.body, { reason: 'BadRequest', message: 'field label not supported: spec.containers.image' })
  t.equal((await json(`${core}/pods?fieldSelector=status.phase%3DRunning`)).status, 200, 'a supported one is served')


  // A watch of the pods labelled tier=web sees one come and go as its label changes.
  const watched = await undiciRequest(`${core}/pods?watch=true&labelSelector=tier%3Dweb&resourceVersion=${String(pod.metadata.resourceVersion)}`, { dispatcher: trusting, headers: h })
  const types: string[] = []
  const deletedLabels: Record<string, string>[] = []
  let buffered = ''
  watched.body.on('data', (chunk: Buffer) => {
    buffered += chunk.toString()
    for (let nl = buffered.indexOf('\n'); nl >= 0; nl = buffered.indexOf('\n')) {
      const line = buffered.slice(0, nl)
      buffered = buffered.slice(nl + 1)
      const event = JSON.parse(line) as { type: string; object: { metadata: { name: string; labels: Record<string, string> } } }
      if (event.object.metadata.name !== name) continue
      types.push(event.type)
      if (event.type === 'DELETED') deletedLabels.push(event.object.metadata.labels)
    }
  })
  t.teardown(() => watched.body.destroy())
  const label = (value: string): Promise<{ status: number; body: Record<string, any> }> => json(`${core}/pods/${name}`, { method: 'PATCH', type: 'application/merge-patch+json', body: { metadata: { labels: { tier: value } } } })
  const labelled = await label('web')
  await label('batch')
  await waitFor('ADDED then DELETED', () => (types.length >= 2 ? true : undefined))
  t.same(types, ['ADDED', 'DELETED'], 'a pod that comes to match a selector is ADDED to its watch, one that stops matching is DELETED')
  t.same(deletedLabels, [{ app: 'fidelity', tier: 'web' }], 'DELETED carries the object as the watch last saw it (still matching)')
  // Resumed from before both changes, the history shows the same.
  const resumed = await undiciRequest(`${core}/pods?watch=true&labelSelector=tier%3Dweb&resourceVersion=${String(pod.metadata.resourceVersion)}`, { dispatcher: trusting, headers: h })
  let replayed = ''
  for await (const chunk of resumed.body) {
    replayed += String(chunk)
    if (replayed.split('\n').filter((l) => l.includes(name)).length >= 2) break
  }
  resumed.body.destroy()
  t.same(replayed.split('\n').filter((l) => l.includes(name)).map((l) => (JSON.parse(l) as { type: string }).type), ['ADDED', 'DELETED'], 'a watch resumed from history sees the transitions too')

  const again = await json(`${core}/pods/${name}`, { method: 'PATCH', type: 'application/merge-patch+json', body: { metadata: { labels: { tier: 'batch' } } } })
  const now = await json(`${core}/pods/${name}`)
  t.equal(again.body.metadata.resourceVersion, now.body.metadata.resourceVersion, 'a patch that changes nothing is no write')
  t.not(labelled.body.metadata.resourceVersion, now.body.metadata.resourceVersion)
  const dryPatch = await json(`${core}/pods/${name}?dryRun=All`, { method: 'PATCH', type: 'application/merge-patch+json', body: { metadata: { labels: { tier: 'web' } } } })
  t.equal(dryPatch.body.metadata.labels.tier, 'web', 'a dry-run patch answers the patched object')
  t.equal((await json(`${core}/pods/${name}`)).body.metadata.labels.tier, 'batch', 'and stores nothing')
  // A delete whose uid precondition names another pod (a same-named successor) is refused, and the pod stays.
  const wrongUid = await json(`${core}/pods/${name}`, { method: 'DELETE', body: { kind: 'DeleteOptions', apiVersion: 'v1', preconditions: { uid: 'not-its-uid' } } })
  t.equal(wrongUid.status, 409, 'a delete with another uid as its precondition is a 409 Conflict')
  t.equal((await json(`${core}/pods/${name}`)).body.metadata?.deletionTimestamp, undefined, 'and the pod is not marked for deletion')
  const deleted = await json(`${core}/pods/${name}`, { method: 'DELETE', body: { kind: 'DeleteOptions', apiVersion: 'v1', preconditions: { uid: pod.metadata.uid }, gracePeriodSeconds: 30 } })
  t.equal(deleted.status, 200, 'with its own uid the delete is taken')
  t.ok(BigInt(deleted.body.metadata.resourceVersion as string) > BigInt(pod.metadata.resourceVersion as string), 'answered with the pod as marked for deletion, at a newer resourceVersion')
})

t.test('a crash is recorded as soon as the pod shows it, not when the kubelet restarts the container after its back-off', async (t) => {
  // The kubelet's back-off at a fifth of its real length: the first restart at once, then 2 s,
  // 4 s, … The second crash comes right after the first; its restart only 2 s later. Also with
  // the whole cluster at a fifth of real time (a container's end seen at a 200 ms relist).
  for (const [timing, sim] of [['fast', { crashBackoffMs: 2000, maxCrashBackoffMs: 30_000 }], ['realistic', realisticTiming(0.2)]] as const) await t.test(timing, (t) => crashesOnRecord(t, sim))
})

async function crashesOnRecord(t: TapTest, simOptions: Partial<SimulatorOptions>): Promise<void> {
  const { sim, backend } = await setup(t, { sim: simOptions })
  const startedAt = Date.now()
  await backend.ensureService(spec('svc-crashes', { command: 'exit 3' }))
  const failed = await waitFor('both crashed runs on record', () => {
    const runs = backend.state('svc-crashes')?.failed ?? []
    return runs.length >= 2 ? runs : undefined
  }, 10_000)
  const tookMs = Date.now() - startedAt
  t.same(failed.map((f) => f.exitCode), [3, 3], 'each run that ended, with its exit code')
  t.equal(new Set(failed.map((f) => f.id)).size, 2, 'each once')
  const restarts = sim.list('pods', SIM_NAMESPACE).map((p) => p.status?.containerStatuses?.[0]?.restartCount as number)
  // Restarted once so far: the second run is on record before the 2 s back-off after it ran out,
  // whatever the machine's load made of the time before (no wall-clock bound needed).
  t.same(restarts, [1], `the second is on record ${tookMs} ms after the start, while the container waits out its back-off (restarted once so far)`)
  t.equal(backend.state('svc-crashes')?.deploymentError, DEPLOYMENT_ERRORS.badStartupCommand)
}

t.test('SIGTERM reaches the app when the kubelet signals only the container’s PID 1, whatever shell line runs it', async (t) => {
  // And that PID 1 is deaf to a SIGTERM it has no handler for, as a container's init is.
  const { backend } = await setup(t, { sim: { pid1SignalImmunity: true } })
  const logs = mkdtempSync(join(tmpdir(), 'maitre-k8s-sigterm-'))
  t.teardown(() => rmSync(logs, { recursive: true, force: true }))
  // A shell line that does not end in the app (a shell stays its parent): the case a bare
  // `/bin/sh -c` left to SIGKILL at the end of the grace period.
  await backend.ensureService(spec('svc-term', { command: `${kitchenCmd(`--request-log-dir ${logs}`)}; echo stopped` }))
  await waitFor('a ready pod', () => (healthy(backend, 'svc-term') === 1 ? true : undefined), 10_000)
  const victim = backend.state('svc-term')?.instances[0]?.id as string
  t.equal(await backend.killInstance('svc-term', victim), true)
  const said = await waitFor('the app told of its stop', () => {
    const lines = readdirSync(logs).flatMap((f) => readFileSync(join(logs, f), 'utf8').split('\n'))
    return lines.some((l) => / sigterm \d+$/.test(l)) ? lines : undefined
  }, 10_000)
  t.ok(said.some((l) => / sigterm \d+$/.test(l)), 'the app got SIGTERM and could finish its requests')
})

t.test('a container that fails its liveness probe is stopped as a kubelet does it (SIGTERM first), and read as a liveness kill', async (t) => {
  const { backend } = await setup(t, { sim: { pid1SignalImmunity: true } })
  const logs = mkdtempSync(join(tmpdir(), 'maitre-k8s-liveness-'))
  t.teardown(() => rmSync(logs, { recursive: true, force: true }))
  const failing = { url: '/bad-status', portIndex: 0, proto: 'http' as const, intervalMs: 1000, maxConsecutiveFailures: 1, authenticated: false }
  await backend.ensureService(spec('svc-live', { command: kitchenCmd(`--request-log-dir ${logs}`), livenessCheck: failing, gracePeriodMs: 1000 }))
  const failure = await waitFor('a failed run', () => backend.state('svc-live')?.failed[0], 15_000)
  t.equal(failure.exitCode, undefined, 'a liveness kill says nothing of the command’s own exit code')
  t.ok(failure.flags.has('never-passed-health-checks'), 'read as a liveness kill (exit 143, reason Error)')
  const lines = readdirSync(logs).flatMap((f) => readFileSync(join(logs, f), 'utf8').split('\n'))
  t.ok(lines.some((l) => / sigterm \d+$/.test(l)), 'the app was told with SIGTERM, and could stop cleanly')
})

t.test('every call the backend makes is in PERMISSIONS, which the shipped Role grants exactly', async (t) => {
  const { sim, backend } = await setup(t, { sim: { podQuota: 4 } })
  await backend.ensureService(spec('svc-f'))
  await backend.scale('svc-f', 2)
  await waitFor('two ready pods', () => (healthy(backend, 'svc-f') === 2 ? true : undefined), 10000)
  const victim = backend.state('svc-f')?.instances[0]?.id as string
  t.equal(await backend.killInstance('svc-f', victim), true)
  await waitFor('one pod left', () => (backend.state('svc-f')?.instances.length === 1 ? true : undefined), 10000)
  t.notOk(backend.state('svc-f')?.instances.some((i) => i.id === victim), 'the chosen pod is the one removed')
  // Short of pods (the quota leaves it at most three) and none ready: the backend reads its
  // ReplicaSet's Events to find out why.
  await backend.ensureService(spec('svc-g', { command: 'exec sleep 60', minInstances: 4 }))
  await waitFor('an events list', () => (sim.requests.some(([r, v]) => r === 'events' && v === 'list') ? true : undefined), 5000)
  await backend.deleteService('svc-g')
  await backend.deleteService('svc-f')
  const allowed = new Set(Object.entries(PERMISSIONS).flatMap(([resource, verbs]) => verbs.map((v) => `${resource} ${v}`)))
  const used = new Set(sim.requests.map(([resource, verb]) => `${resource} ${verb}`))
  t.same([...used].filter((u) => !allowed.has(u)), [], 'nothing outside PERMISSIONS')
})

t.test('credentials: in-cluster files (token re-read as it rotates) and kubeconfig', async (t) => {
  const dir = t.testdir()
  const sa = join(dir, 'sa')
  mkdirSync(sa)
  writeFileSync(join(sa, 'token'), 'first\n')
  writeFileSync(join(sa, 'namespace'), 'apps')
  writeFileSync(join(sa, 'ca.crt'), '-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n')
  const conn = kubeConnection(K8S, { KUBERNETES_SERVICE_HOST: '10.0.0.1', KUBERNETES_SERVICE_PORT: '443' }, sa)
  t.equal(conn.server, 'https://10.0.0.1:443')
  t.equal(conn.namespace, 'apps')
  t.match(conn.tls.ca, /BEGIN CERTIFICATE/)
  t.equal(await conn.authorization(), 'Bearer first')

  let now = 0
  const token = fileToken(join(sa, 'token'), () => now)
  t.equal(await token(), 'first')
  writeFileSync(join(sa, 'token'), 'second\n')
  now = 59_000
  t.equal(await token(), 'first', 'cached within a minute')
  now = 60_000
  t.equal(await token(), 'second', 'the rotated token is read after a minute')

  const kc = join(dir, 'kc')
  writeFileSync(kc, ['current-context: a', 'contexts: [{name: a, context: {cluster: c, user: u}}]', 'clusters: [{name: c, cluster: {server: "https://k:6443/", certificate-authority-data: ' + Buffer.from('CA').toString('base64') + '}}]', 'users: [{name: u, user: {tokenFile: tok}}]'].join('\n'))
  writeFileSync(join(dir, 'tok'), 'file-token')
  const fromFile = kubeConnection({ ...K8S, kubeconfig: kc }, {})
  t.same([fromFile.server, fromFile.namespace, fromFile.tls.ca, await fromFile.authorization()], ['https://k:6443', 'default', 'CA', 'Bearer file-token'])
  // maitre's own backend.kubernetes.tokenFile, relative, is relative to where maitre runs, not to the kubeconfig.
  const elsewhere = join(dir, 'elsewhere')
  mkdirSync(join(elsewhere, 'secrets'), { recursive: true })
  writeFileSync(join(elsewhere, 'secrets', 'tok'), 'configured-token')
  const cwd = process.cwd()
  process.chdir(elsewhere)
  try {
    const configured = kubeConnection({ ...K8S, kubeconfig: kc, tokenFile: join('secrets', 'tok') }, {})
    t.equal(await configured.authorization(), 'Bearer configured-token', 'read from ./secrets/tok where maitre runs')
  } finally {
    process.chdir(cwd)
  }
  writeFileSync(kc, ['current-context: a', 'contexts: [{name: a, context: {cluster: c, user: u}}]', 'clusters: [{name: c, cluster: {server: "https://k"}}]', 'users: [{name: u, user: {exec: {command: aws}}}]'].join('\n'))
  t.throws(() => kubeConnection({ ...K8S, kubeconfig: kc }, {}), { code: 'MAITRE_INVALID_CONFIG', message: /exec or auth-provider/ })
  t.throws(() => kubeConnection({ ...K8S, kubeconfig: join(dir, 'none') }, {}), { message: /cannot read kubeconfig/ })
  // A broken file is a configuration error naming it (exit 78 at start), never a TypeError.
  writeFileSync(kc, 'clusters: [\n')
  t.throws(() => kubeConnection({ ...K8S, kubeconfig: kc }, {}), { code: 'MAITRE_INVALID_CONFIG', message: /kubeconfig .* is not valid YAML/ })
  writeFileSync(kc, ['current-context: a', 'contexts: {a: {cluster: c}}'].join('\n'))
  t.throws(() => kubeConnection({ ...K8S, kubeconfig: kc }, {}), { code: 'MAITRE_INVALID_CONFIG', message: /kubeconfig .* cannot be used/ })
  writeFileSync(kc, ['current-context: a', 'contexts: [{name: a, context: {cluster: c, user: u}}]', 'clusters: [{name: c, cluster: {server: "https://k", certificate-authority: missing-ca.pem}}]', 'users: [{name: u, user: {token: x}}]'].join('\n'))
  t.throws(() => kubeConnection({ ...K8S, kubeconfig: kc }, {}), { code: 'MAITRE_INVALID_CONFIG', message: /missing-ca\.pem/ })
})

t.test('a pod no node fits is a deployment error only once it has waited its grace (a cluster autoscaler adds a node meanwhile); an image problem at once', async (t) => {
  const at = (iso: string): number => Date.parse(iso)
  const unschedulable = (since: string): Pod => ({ metadata: { name: 'p-waiting' }, spec: { containers: [] }, status: { phase: 'Pending', conditions: [{ type: 'PodScheduled', status: 'False', reason: 'Unschedulable', message: '0/3 nodes are available: 3 Insufficient cpu.', lastTransitionTime: since }] } })
  const pulling: Pod = { metadata: { name: 'p-image' }, spec: { containers: [] }, status: { phase: 'Pending', containerStatuses: [{ name: 'maitre-app', ready: false, restartCount: 0, state: { waiting: { reason: 'ErrImagePull', message: 'not found' } } }] } }
  const pending = unschedulable('2026-12-03T10:00:00Z')
  t.same(clusterProblem([pending], at('2026-12-03T10:01:00Z'), 120_000), { problem: undefined, recheckAt: at('2026-12-03T10:02:00Z') }, 'a minute in: no error yet, a look again when its two minutes are up')
  t.same(clusterProblem([pending], at('2026-12-03T10:02:00Z'), 120_000), { problem: 'Unschedulable: 0/3 nodes are available: 3 Insufficient cpu.', recheckAt: undefined }, 'two minutes in: the deployment error')
  t.same(clusterProblem([pending], at('2026-12-03T10:00:01Z'), 0), { problem: 'Unschedulable: 0/3 nodes are available: 3 Insufficient cpu.', recheckAt: undefined }, 'a grace of 0: at once')
  t.same(clusterProblem([pending, pulling], at('2026-12-03T10:00:30Z'), 120_000), { problem: 'ErrImagePull: not found', recheckAt: undefined }, 'an image that cannot be pulled is one at once')
  t.same(clusterProblem([], at('2026-12-03T10:00:30Z'), 120_000), { problem: undefined, recheckAt: undefined })
})

t.test('reading pods: failed runs, OOMKilled, liveness kills and the scheduler’s reasons', async (t) => {
  const pod = (status: NonNullable<Pod['status']>): Pod => ({ metadata: { name: 'p-abcde' }, spec: { containers: [] }, status })
  const run = (terminated: { exitCode: number; reason: string }, restartCount = 1): Pod =>
    pod({ phase: 'Running', containerStatuses: [{ name: 'maitre-app', ready: false, restartCount, lastState: { terminated } }] })
  t.match(lastFailure(run({ exitCode: 127, reason: 'Error' }, 3), 's', 0), { id: 's.p-abcde-2', exitCode: 127 })
  const oom = lastFailure(run({ exitCode: 137, reason: 'OOMKilled' }), 's', 0)
  t.ok(oom?.flags.has('memory-limit-exceeded'))
  const liveness = lastFailure(run({ exitCode: 137, reason: 'Error' }), 's', 0)
  t.equal(liveness?.exitCode, undefined, 'a liveness kill says nothing of the command')
  t.ok(liveness?.flags.has('never-passed-health-checks'))
  t.equal(lastFailure(pod({ phase: 'Running', containerStatuses: [{ name: 'maitre-app', ready: true, restartCount: 0 }] }), 's', 0), undefined)
  // A kubelet counts a restart when it starts the container again: a crash shows before that.
  const backingOff = pod({ phase: 'Running', containerStatuses: [{ name: 'maitre-app', ready: false, restartCount: 1, state: { waiting: { reason: 'CrashLoopBackOff' } }, lastState: { terminated: { exitCode: 3, reason: 'Error' } } }] })
  t.match(lastFailure(backingOff, 's', 0), { id: 's.p-abcde-1', exitCode: 3 }, 'in back-off, the run that ended is run restartCount')
  const justEnded = pod({ phase: 'Running', containerStatuses: [{ name: 'maitre-app', ready: false, restartCount: 0, state: { terminated: { exitCode: 3, reason: 'Error' } } }] })
  t.match(lastFailure(justEnded, 's', 0), { id: 's.p-abcde-0', exitCode: 3 }, 'the first crash, before any restart')
  t.equal(lastFailure({ ...justEnded, metadata: { ...justEnded.metadata, deletionTimestamp: '2026-01-01T00:00:00Z' } }, 's', 0), undefined, 'a pod being deleted ended on purpose')
  // One run, as a real kubelet shows it: crashed, backing off, being created again (its restart
  // counted already), running again. Always the same ended run; the live instance is the next.
  const terminated = { exitCode: 3, reason: 'Error', containerID: 'containerd://run-1', startedAt: '2026-01-01T00:00:01Z', finishedAt: '2026-01-01T00:00:02Z' }
  const phases: Pod[] = [
    pod({ phase: 'Running', containerStatuses: [{ name: 'maitre-app', ready: false, restartCount: 1, state: { terminated } }] }),
    pod({ phase: 'Running', containerStatuses: [{ name: 'maitre-app', ready: false, restartCount: 1, state: { waiting: { reason: 'CrashLoopBackOff' } }, lastState: { terminated } }] }),
    pod({ phase: 'Running', containerStatuses: [{ name: 'maitre-app', ready: false, restartCount: 2, state: { waiting: {} }, lastState: { terminated } }] }),
    pod({ phase: 'Running', containerStatuses: [{ name: 'maitre-app', ready: true, restartCount: 2, state: { running: { startedAt: '2026-01-01T00:00:12Z' } }, lastState: { terminated } }] }),
  ]
  t.same(phases.map((p) => lastFailure(p, 's', 0)?.id), ['s.p-abcde-1', 's.p-abcde-1', 's.p-abcde-1', 's.p-abcde-1'], 'the ended run keeps its id through every phase')
  t.same(new Set(phases.map((p) => failureKey(p))).size, 1, 'and its key, so it is recorded once')
  t.same(phases.map((p) => instanceId('s', p)), ['s.p-abcde-2', 's.p-abcde-2', 's.p-abcde-2', 's.p-abcde-2'], 'the live instance is the run to come, never the one that failed')
  // Events carry whole seconds: ties are broken by eventTime, then by count; others ignored.
  const event = (name: string, lastTimestamp: string | undefined, extra: Record<string, unknown> = {}): KubeEvent => ({ metadata: { name }, involvedObject: { kind: 'ReplicaSet', name: 'rs', uid: 'u1' }, reason: 'FailedCreate', message: name, type: 'Warning', ...(lastTimestamp === undefined ? {} : { lastTimestamp }), ...extra })
  const second = '2026-01-01T00:00:05Z'
  t.equal(latestFailedCreate([event('old', '2026-01-01T00:00:04Z'), event('new', second), event('none', undefined)], 'u1')?.message, 'new')
  t.equal(latestFailedCreate([event('a', second, { eventTime: '2026-01-01T00:00:05.100000Z' }), event('b', second, { eventTime: '2026-01-01T00:00:05.900000Z' })], 'u1')?.message, 'b', 'a tie on the second: eventTime decides')
  t.equal(latestFailedCreate([event('once', second, { count: 1 }), event('recurring', second, { count: 4 })], 'u1')?.message, 'recurring', 'then the count')
  t.equal(latestFailedCreate([event('other', second, { involvedObject: { kind: 'ReplicaSet', name: 'rs', uid: 'u2' } })], 'u1'), undefined, 'another ReplicaSet’s events are not its')
  t.equal(schedulerProblem(pod({ phase: 'Pending', containerStatuses: [{ name: 'maitre-app', ready: false, restartCount: 0, state: { waiting: { reason: 'ImagePullBackOff', message: 'Back-off pulling image "x"' } } }] })), 'ImagePullBackOff: Back-off pulling image "x"')
  t.equal(schedulerProblem(pod({ phase: 'Pending', conditions: [{ type: 'PodScheduled', status: 'False', reason: 'Unschedulable', message: '0/3 nodes are available: 3 Insufficient cpu.' }] })), 'Unschedulable: 0/3 nodes are available: 3 Insufficient cpu.')
  t.equal(schedulerProblem(pod({ phase: 'Pending', containerStatuses: [{ name: 'maitre-app', ready: false, restartCount: 0, state: { waiting: { reason: 'ContainerCreating' } } }] })), undefined, 'ContainerCreating is normal')
})

t.test('the ReplicaSet: names fit pod names, and the spec carries what the service needs', async (t) => {
  const long = `maitre-${'x'.repeat(23)}-${'0123456789abcdef'.repeat(2)}`
  t.equal(long.length, 63)
  t.ok(replicaSetName(long).length <= 57, 'room for the 6-character pod suffix')
  t.not(replicaSetName(long), replicaSetName(`${long.slice(0, -1)}0`), 'distinct ids stay distinct')
  const rs = replicaSetOf(spec('svc', { gracePeriodMs: 30000, ports: 2, healthCheck: { url: '/healthy', portIndex: 1, proto: 'http', intervalMs: 10000, maxConsecutiveFailures: 5, authenticated: true } }), { cluster: 'c', defaultImage: 'img', podBasePort: 8080, minTerminationGraceSecs: 3 })
  const container = rs.spec.template.spec.containers[0]
  t.same(rs.spec.selector.matchLabels, { app: 'svc', 'maitre/cluster': 'c' })
  t.same(container?.env?.filter((e) => e.name.startsWith('PORT')).map((e) => [e.name, e.value]), [['PORT', '8080'], ['PORT0', '8080'], ['PORT1', '8081']])
  t.equal(container?.readinessProbe?.httpGet.port, 8081, 'health-check-port-index')
  t.ok(container?.readinessProbe?.httpGet.httpHeaders?.some((h) => h.name === 'authorization'), 'authenticated health checks carry the credentials')
  t.equal(container?.livenessProbe?.initialDelaySeconds, 30, 'liveness only with a grace period, after it')
  t.same(container?.resources, { requests: { cpu: '0.1', memory: '256Mi' }, limits: { memory: '256Mi' } })
  t.equal(rs.spec.template.spec.terminationGracePeriodSeconds, 3)
  t.equal(rs.spec.template.spec.automountServiceAccountToken, false)
})

t.test('a delete that comes while the ReplicaSet is being created waits for it, and strands nothing', { timeout: 20_000 }, async (t) => {
  const { sim, backend } = await setup(t, { api: { requestTimeoutMs: 500 } })
  await backend.ready()
  // The first create hangs until the client gives up on it; the retry makes the ReplicaSet.
  sim.hangNext(1, ['replicasets', 'create'])
  const creating = backend.ensureService(spec('svc-race'))
  await waitFor('the create sent', () => (served(sim, 'replicasets', 'create') >= 1 ? true : undefined))
  await backend.deleteService('svc-race')
  await creating
  t.equal(backend.state('svc-race'), undefined, 'forgotten once deleted')
  t.same(sim.list('replicasets', SIM_NAMESPACE).map((r) => r.metadata.name), [], 'and no ReplicaSet is left that the backend does not know')
})

t.test('a ReplicaSet deleted and made again while this router was not watching is taken for the new one: its later delete takes the service with it', async (t) => {
  const { sim, api, backend, podBasePort } = await setup(t)
  await backend.ready()
  // The ports this test claimed: a fixed one could be another test file's.
  const options = { ...DEFAULTS.backend.kubernetes, cluster: 'test', podBasePort }
  // Another router makes the version; this one adopts it from its watch.
  const first = await api.createReplicaSet(replicaSetOf(spec('svc-u'), options))
  await waitFor('adopted', () => (backend.state('svc-u') !== undefined ? true : undefined), 5000)
  // This router's ReplicaSet list and watch fail for a while (API server trouble, a partition)...
  sim.failNext(Infinity, ['replicasets', 'watch'])
  sim.failNext(Infinity, ['replicasets', 'list'])
  sim.dropWatches()
  // ...while the other router's GC deletes the version and a request makes it again.
  await api.deleteReplicaSet(first.metadata.name as string)
  const second = await api.createReplicaSet(replicaSetOf(spec('svc-u'), options))
  t.not(second.metadata.uid, first.metadata.uid, 'a new ReplicaSet under the same name')
  const lists = sim.requests.filter(([r, v]) => r === 'replicasets' && v === 'list').length
  sim.failNext(0, ['replicasets', 'watch'])
  sim.failNext(0, ['replicasets', 'list'])
  await waitFor('listed again', () => (sim.requests.filter(([r, v]) => r === 'replicasets' && v === 'list').length > lists ? true : undefined), 10_000)
  t.ok(backend.state('svc-u'), 'the version is still known: its ReplicaSet exists')
  // The other router's GC deletes it again (the watch resumes from the list, so it sees this).
  await api.deleteReplicaSet(second.metadata.name as string)
  await waitFor('the version forgotten with its ReplicaSet', () => (backend.state('svc-u') === undefined ? true : undefined), 5000)
  const scales = sim.requests.filter(([r]) => r === 'replicasets/scale').length
  await backend.scale('svc-u', 3)
  t.equal(sim.requests.filter(([r]) => r === 'replicasets/scale').length, scales, 'and no scale is written to a ReplicaSet that is gone')
})

t.test('watches that the server ends as soon as they begin are not resumed in a spin: the backend backs off, lists again, and still keeps up', async (t) => {
  // timeoutSeconds=0: every watch ends at once (as through a proxy that closes the stream).
  const { sim, backend } = await setup(t, { backend: { watchTimeoutSecs: 0 } })
  await backend.ready()
  await backend.ensureService(spec('svc-w'))
  await waitFor('the pod ready, seen through lists', () => (healthy(backend, 'svc-w') === 1 ? true : undefined), 20_000)
  const watches = sim.requests.filter(([, verb]) => verb === 'watch').length
  t.ok(watches < 200, `${watches} watches in all, not one every few milliseconds`)
})

t.test('a ReplicaSet delete retried after a lost answer never takes the successor another router made meanwhile', async (t) => {
  const { sim, api, backend, podBasePort } = await setup(t)
  await backend.ready()
  await backend.ensureService(spec('svc-rd'))
  await waitFor('the ReplicaSet known', () => (backend.state('svc-rd') !== undefined ? true : undefined), 5000)
  const name = replicaSetName('svc-rd')
  const options = { ...DEFAULTS.backend.kubernetes, cluster: 'test', podBasePort }
  // The first delete goes through, but its answer is lost; meanwhile another router's request
  // makes the version again under the same name.
  const original = api.deleteReplicaSet.bind(api)
  let successor: string | undefined
  api.deleteReplicaSet = async (rsName: string, uid?: string) => {
    if (successor !== undefined) return original(rsName, uid)
    await original(rsName, uid)
    successor = (await api.createReplicaSet(replicaSetOf(spec('svc-rd'), options))).metadata.uid as string
    throw new KubeApiError(504, 'Timeout', 'the answer was lost')
  }
  await backend.deleteService('svc-rd')
  const left = sim.requests.filter(([r, v]) => r === 'replicasets' && v === 'delete').length
  t.equal(left, 2, 'the delete was tried again')
  const now = await api.listReplicaSets('').then((list) => list.items.find((rs) => rs.metadata.name === name))
  t.equal(now?.metadata.uid, successor, 'the successor the other router made is still there')
})

t.test('a ReplicaSet found already made (409) but gone before it could be adopted is made afresh by the next request, not left as a service with nothing behind it', async (t) => {
  const { api, backend } = await setup(t)
  await backend.ready()
  // Another router made the version (409), then its GC deleted it before this one read its scale.
  const create = api.createReplicaSet.bind(api)
  const getScale = api.getScale.bind(api)
  let creates = 0
  api.createReplicaSet = async (body) => {
    creates += 1
    if (creates === 1) throw new KubeApiError(409, 'AlreadyExists', 'replicasets.apps already exists')
    return create(body)
  }
  let firstScaleRead = true
  api.getScale = async (name) => {
    if (firstScaleRead) {
      firstScaleRead = false
      throw new KubeApiError(404, 'NotFound', 'replicasets.apps not found')
    }
    return getScale(name)
  }
  await t.rejects(backend.ensureService(spec('svc-gone-adopt')), 'the first request fails: nothing to adopt')
  // (Adopted for real below, it knows its ReplicaSet's uid from the start: a delete names it.)
  t.equal(backend.state('svc-gone-adopt'), undefined, 'and no service is kept for it')
  await backend.ensureService(spec('svc-gone-adopt'))
  t.equal(creates, 2, 'the next request makes the ReplicaSet afresh')
  await waitFor('its pod ready', () => (healthy(backend, 'svc-gone-adopt') === 1 ? true : undefined), 20_000)
})

t.test('a ReplicaSet adopted after a 409 is deleted with its uid as a precondition, before any watch event told it the uid', async (t) => {
  const { sim, api, backend, podBasePort } = await setup(t)
  await backend.ready()
  const options = { ...DEFAULTS.backend.kubernetes, cluster: 'test', podBasePort }
  // Another router made it; this router's ReplicaSet watch and list fail meanwhile, so nothing
  // has told it the uid when a request comes.
  sim.failNext(Infinity, ['replicasets', 'watch'])
  sim.failNext(Infinity, ['replicasets', 'list'])
  sim.dropWatches()
  t.teardown(() => {
    sim.failNext(0, ['replicasets', 'watch'])
    sim.failNext(0, ['replicasets', 'list'])
  })
  const made = await api.createReplicaSet(replicaSetOf(spec('svc-adopt-uid'), options))
  const create = api.createReplicaSet.bind(api)
  api.createReplicaSet = async (body) => {
    if (body.metadata.name === made.metadata.name) throw new KubeApiError(409, 'AlreadyExists', 'replicasets.apps already exists')
    return create(body)
  }
  await backend.ensureService(spec('svc-adopt-uid'))
  const remove = api.deleteReplicaSet.bind(api)
  const asked: (string | undefined)[] = []
  api.deleteReplicaSet = async (name: string, uid?: string) => {
    asked.push(uid)
    return remove(name, uid)
  }
  await backend.deleteService('svc-adopt-uid')
  t.same(asked, [made.metadata.uid], 'the delete named the uid of the ReplicaSet it adopted')
})

t.test('a ReplicaSet of the same name made by another maitre cluster in the namespace is not adopted: the version answers a deployment error, and deleting it leaves the other cluster’s ReplicaSet alone', async (t) => {
  const { api, backend, podBasePort } = await setup(t)
  await backend.ready()
  // Staging's router made it (its pods are another cluster's: this backend is cluster "test").
  const theirs = await api.createReplicaSet(replicaSetOf(spec('svc-shared-name'), { ...DEFAULTS.backend.kubernetes, cluster: 'staging', podBasePort }))
  await backend.ensureService(spec('svc-shared-name'))
  t.match(backend.state('svc-shared-name')?.deploymentError, /belongs to another maitre cluster \(staging\)/, 'a deployment error naming the cause')
  await backend.deleteService('svc-shared-name')
  const left = await api.getScale(theirs.metadata.name as string)
  t.equal(left.metadata.uid, theirs.metadata.uid, 'the other cluster’s ReplicaSet is still there')
  t.equal(left.spec.replicas, theirs.spec.replicas, 'at the size it had')
})
