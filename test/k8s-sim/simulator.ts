/**
 * An in-repo Kubernetes API server for tests (never shipped): the real REST and watch protocol
 * for ReplicaSets (+ /scale), pods, events and leases in namespaced paths, with bearer-token
 * auth, Status errors, resourceVersion conflicts, label and field selectors, NDJSON watches
 * (bookmarks, resume, 410 after compaction, timeoutSeconds), a ReplicaSet controller (scale-down
 * victim order including pod-deletion-cost, a pod quota that yields FailedCreate events), the
 * garbage collector for Background deletes, and a kubelet that runs pods as local processes.
 * Facts followed: ../shared/reference/kubernetes-api.md.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { randomBytes } from 'node:crypto'
import { Kubelet } from './kubelet.ts'
import { fieldSelector, labelSelector, SelectorError } from './selectors.ts'
import { clone, Store, type KObject, type Resource, type StoredEvent } from './store.ts'

export interface SimulatorOptions {
  readonly token: string
  readonly workDir: string
  readonly images?: readonly string[]
  /** Most pods a namespace may hold (a ResourceQuota on `pods`); undefined: no quota. */
  readonly podQuota?: number
  readonly crashBackoffMs?: number
  readonly maxCrashBackoffMs?: number
  readonly historyLimit?: number
  readonly bookmarkMs?: number
  readonly ipOctet?: number
}

export interface Simulator {
  readonly url: string
  /** Every (resource, verb) served, for the RBAC check. */
  readonly requests: ReadonlyArray<readonly [string, string]>
  list(resource: Resource, namespace: string): KObject[]
  /** Forgets watch history: resumes from before now get 410 Expired. */
  compact(): void
  /** Ends every open watch stream. */
  dropWatches(): void
  /** The next `n` requests get a 500 (fault injection). */
  failNext(n: number): void
  close(): Promise<void>
}

class ApiError extends Error {
  readonly code: number
  readonly reason: string
  readonly details: Record<string, unknown>
  constructor(code: number, reason: string, message: string, details: Record<string, unknown> = {}) {
    super(message)
    this.code = code
    this.reason = reason
    this.details = details
  }
}

const MICRO_TIME = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/
const PATCH_TYPES = new Set(['application/merge-patch+json', 'application/strategic-merge-patch+json', 'application/json-patch+json'])
const KIND_OF: Record<Resource, string> = { pods: 'Pod', replicasets: 'ReplicaSet', events: 'Event', leases: 'Lease' }
const GROUP_OF: Record<Resource, string> = { pods: 'v1', replicasets: 'apps/v1', events: 'v1', leases: 'coordination.k8s.io/v1' }
const QUALIFIED: Record<Resource, string> = { pods: 'pods', replicasets: 'replicasets.apps', events: 'events', leases: 'leases.coordination.k8s.io' }

function status(code: number, reason: string, message: string, details: Record<string, unknown> = {}): Record<string, unknown> {
  return { kind: 'Status', apiVersion: 'v1', metadata: {}, status: code < 400 ? 'Success' : 'Failure', message, reason, details, code }
}

function mergePatch(target: unknown, patch: unknown): unknown {
  if (typeof patch !== 'object' || patch === null || Array.isArray(patch)) return patch
  const out: Record<string, unknown> = typeof target === 'object' && target !== null && !Array.isArray(target) ? { ...(target as Record<string, unknown>) } : {}
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k]
    else out[k] = mergePatch(out[k], v)
  }
  return out
}

function jsonPatch(target: KObject, ops: { op: string; path: string; value?: unknown }[]): KObject {
  const doc = clone(target)
  for (const op of ops) {
    const keys = op.path.split('/').slice(1).map((k) => k.replaceAll('~1', '/').replaceAll('~0', '~'))
    const last = keys.pop() as string
    let node: Record<string, unknown> = doc
    for (const k of keys) node = (node[k] ??= {}) as Record<string, unknown>
    if (op.op === 'test') {
      if (JSON.stringify(node[last]) !== JSON.stringify(op.value)) throw new ApiError(422, 'Invalid', `the server rejected our request due to an error in our request: test failed at ${op.path}`)
    } else if (op.op === 'replace' || op.op === 'add') node[last] = op.value
    else if (op.op === 'remove') delete node[last]
    else throw new ApiError(422, 'Invalid', `unsupported json patch op ${op.op}`)
  }
  return doc
}

function isActive(pod: KObject): boolean {
  return pod.metadata.deletionTimestamp === undefined && pod.status?.phase !== 'Failed' && pod.status?.phase !== 'Succeeded'
}

function isReady(pod: KObject): boolean {
  return (pod.status?.conditions ?? []).some((c: KObject) => c.type === 'Ready' && c.status === 'True')
}

const PHASE_RANK: Record<string, number> = { Pending: 0, Unknown: 1, Running: 2 }

/** The ReplicaSet controller's scale-down order: the first pod sorted here is deleted first. */
export function victimOrder(a: KObject, b: KObject): number {
  const unscheduled = (p: KObject): number => (p.status?.podIP === undefined && p.status?.phase === 'Pending' ? 0 : 1)
  const cost = (p: KObject): number => Number(p.metadata.annotations?.['controller.kubernetes.io/pod-deletion-cost'] ?? '0')
  const restarts = (p: KObject): number => p.status?.containerStatuses?.[0]?.restartCount ?? 0
  return (
    unscheduled(a) - unscheduled(b) ||
    (PHASE_RANK[a.status?.phase ?? 'Pending'] ?? 0) - (PHASE_RANK[b.status?.phase ?? 'Pending'] ?? 0) ||
    Number(isReady(a)) - Number(isReady(b)) ||
    cost(a) - cost(b) ||
    restarts(b) - restarts(a) ||
    Date.parse(b.metadata.creationTimestamp as string) - Date.parse(a.metadata.creationTimestamp as string)
  )
}

function validDeletionCost(value: unknown): boolean {
  return typeof value === 'string' && /^-?(0|[1-9]\d*)$/.test(value) && Number(value) >= -2147483648 && Number(value) <= 2147483647
}

export async function startKubeSimulator(options: SimulatorOptions): Promise<Simulator> {
  let reconcileQueued = false
  const store = new Store(options.historyLimit ?? 10_000, (resource) => {
    if ((resource === 'pods' || resource === 'replicasets') && !reconcileQueued) {
      reconcileQueued = true
      setImmediate(() => {
        reconcileQueued = false
        reconcile()
      })
    }
  })
  const kubelet = new Kubelet(
    {
      workDir: options.workDir,
      images: options.images === undefined ? undefined : new Set(options.images),
      crashBackoffMs: options.crashBackoffMs ?? 10_000,
      maxCrashBackoffMs: options.maxCrashBackoffMs ?? 300_000,
      memoryCheckMs: 250,
      ipOctet: options.ipOctet ?? 1 + Math.floor(Math.random() * 250),
    },
    (namespace, name, change) => {
      const pod = store.get('pods', namespace, name)
      if (pod === undefined || pod.metadata.deletionTimestamp !== undefined) return
      const before = JSON.stringify(pod.status)
      change(pod)
      if (JSON.stringify(pod.status) !== before) store.update('pods', pod)
    },
  )
  const requests: [string, string][] = []
  let failures = 0
  const watchEnds = new Set<() => void>()

  function recordEvent(namespace: string, involved: KObject, reason: string, message: string): void {
    const existing = store.list('events', namespace).find((e) => e.involvedObject.uid === involved.metadata.uid && e.reason === reason && e.message === message)
    const at = new Date().toISOString()
    if (existing !== undefined) {
      existing.count = (existing.count ?? 1) + 1
      existing.lastTimestamp = at
      store.update('events', existing)
      return
    }
    store.create('events', {
      apiVersion: 'v1',
      kind: 'Event',
      metadata: { name: `${involved.metadata.name as string}.${randomBytes(8).toString('hex')}`, namespace },
      involvedObject: { kind: involved.kind, name: involved.metadata.name, namespace, uid: involved.metadata.uid, apiVersion: involved.apiVersion },
      reason,
      message,
      type: 'Warning',
      count: 1,
      firstTimestamp: at,
      lastTimestamp: at,
      source: { component: 'replicaset-controller' },
    })
  }

  /** Deletion as the API server does it: mark, let the kubelet stop the process, then remove. */
  function deletePod(pod: KObject, graceSeconds: number): KObject {
    const ns = pod.metadata.namespace as string
    const name = pod.metadata.name as string
    if (pod.metadata.deletionTimestamp !== undefined) return pod
    pod.metadata.deletionTimestamp = new Date(Date.now() + graceSeconds * 1000).toISOString().replace(/\.\d+Z$/, 'Z')
    pod.metadata.deletionGracePeriodSeconds = graceSeconds
    const marked = store.update('pods', pod)
    void kubelet.stop(ns, name, graceSeconds).then(() => store.remove('pods', ns, name))
    return marked
  }

  function reconcile(): void {
    for (const ns of allNamespaces()) {
      const sets = store.list('replicasets', ns)
      const pods = store.list('pods', ns)
      const uids = new Set(sets.map((s) => s.metadata.uid as string))
      // Garbage collector: pods whose owner is gone go too (Background propagation).
      for (const pod of pods) {
        const owner = pod.metadata.ownerReferences?.[0]?.uid as string | undefined
        if (owner !== undefined && !uids.has(owner) && pod.metadata.deletionTimestamp === undefined) deletePod(pod, pod.spec.terminationGracePeriodSeconds ?? 30)
      }
      for (const rs of sets) {
        const owned = pods.filter((p) => p.metadata.ownerReferences?.[0]?.uid === rs.metadata.uid)
        const active = owned.filter(isActive)
        const want = rs.spec.replicas as number
        if (active.length < want) {
          for (let i = active.length; i < want; i++) {
            const total = store.list('pods', ns).length
            if (options.podQuota !== undefined && total >= options.podQuota) {
              const podName = `${rs.metadata.name as string}-${suffix()}`
              recordEvent(ns, rs, 'FailedCreate', `Error creating: pods "${podName}" is forbidden: exceeded quota: compute-resources, requested: pods=1, used: pods=${total}, limited: pods=${options.podQuota}`)
              break
            }
            const pod = store.create('pods', {
              apiVersion: 'v1',
              kind: 'Pod',
              metadata: {
                name: `${rs.metadata.name as string}-${suffix()}`,
                namespace: ns,
                labels: { ...rs.spec.template.metadata.labels },
                annotations: { ...rs.spec.template.metadata.annotations },
                ownerReferences: [{ apiVersion: 'apps/v1', kind: 'ReplicaSet', name: rs.metadata.name, uid: rs.metadata.uid, controller: true }],
              },
              spec: { ...clone(rs.spec.template.spec), restartPolicy: 'Always', nodeName: 'sim-node' },
              status: { phase: 'Pending' },
            })
            kubelet.start(pod)
          }
        } else if (active.length > want) {
          for (const victim of [...active].sort(victimOrder).slice(0, active.length - want)) deletePod(victim, victim.spec.terminationGracePeriodSeconds ?? 30)
        }
        const current = store.list('pods', ns).filter((p) => p.metadata.ownerReferences?.[0]?.uid === rs.metadata.uid && isActive(p))
        const next = { replicas: current.length, readyReplicas: current.filter(isReady).length, availableReplicas: current.filter(isReady).length, observedGeneration: rs.metadata.generation }
        if (JSON.stringify(next) !== JSON.stringify(rs.status ?? {})) {
          rs.status = next
          store.update('replicasets', rs)
        }
      }
    }
  }

  const namespacesSeen = new Set<string>()
  const allNamespaces = (): string[] => [...namespacesSeen]
  const suffix = (): string => {
    const alphabet = 'bcdfghjklmnpqrstvwxz2456789'
    return Array.from(randomBytes(5), (b) => alphabet[b % alphabet.length]).join('')
  }

  async function body(req: IncomingMessage): Promise<unknown> {
    const chunks: Buffer[] = []
    for await (const chunk of req) chunks.push(chunk as Buffer)
    const text = Buffer.concat(chunks).toString('utf8')
    if (text === '') return undefined
    try {
      return JSON.parse(text)
    } catch {
      throw new ApiError(400, 'BadRequest', 'the body of the request was in an unknown format')
    }
  }

  function send(res: ServerResponse, code: number, value: unknown): void {
    const text = JSON.stringify(value)
    res.writeHead(code, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) })
    res.end(text)
  }

  function notFound(resource: Resource, name: string): ApiError {
    return new ApiError(404, 'NotFound', `${QUALIFIED[resource]} "${name}" not found`, { name, kind: resource })
  }

  function conflict(resource: Resource, name: string): ApiError {
    return new ApiError(409, 'Conflict', `Operation cannot be fulfilled on ${QUALIFIED[resource]} "${name}": the object has been modified; please apply your changes to the latest version and try again`, { name, kind: resource })
  }

  function validate(resource: Resource, object: KObject): void {
    const causes: { field: string; message: string }[] = []
    if (resource === 'replicasets') {
      const selector = object.spec?.selector?.matchLabels ?? {}
      const labels = object.spec?.template?.metadata?.labels ?? {}
      if (Object.entries(selector).some(([k, v]) => labels[k] !== v)) causes.push({ field: 'spec.template.metadata.labels', message: '`selector` does not match template `labels`' })
      if (!Number.isInteger(object.spec?.replicas) || object.spec.replicas < 0) causes.push({ field: 'spec.replicas', message: 'must be greater than or equal to 0' })
      for (const [k, v] of Object.entries(labels)) if (String(v).length > 63) causes.push({ field: `spec.template.metadata.labels[${k}]`, message: 'must be no more than 63 characters' })
    }
    if (resource === 'pods') {
      const cost = object.metadata.annotations?.['controller.kubernetes.io/pod-deletion-cost']
      if (cost !== undefined && !validDeletionCost(cost)) causes.push({ field: 'metadata.annotations[controller.kubernetes.io/pod-deletion-cost]', message: 'must be a 32bit integer' })
    }
    if (resource === 'leases') {
      for (const field of ['acquireTime', 'renewTime']) {
        const value = object.spec?.[field]
        if (value !== undefined && value !== null && !MICRO_TIME.test(String(value))) {
          throw new ApiError(400, 'BadRequest', `Lease in version "v1" cannot be handled as a Lease: parsing time "${String(value)}" as "2006-01-02T15:04:05.000000Z07:00": cannot parse`)
        }
      }
    }
    if (typeof object.metadata?.name !== 'string' || !/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(object.metadata.name) || object.metadata.name.length > 253) {
      causes.push({ field: 'metadata.name', message: 'a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters' })
    }
    if (causes.length > 0) {
      throw new ApiError(422, 'Invalid', `${KIND_OF[resource]} "${String(object.metadata?.name)}" is invalid: ${causes.map((c) => `${c.field}: Invalid value: ${c.message}`).join(', ')}`, { causes })
    }
  }

  function scaleOf(rs: KObject): KObject {
    return {
      kind: 'Scale',
      apiVersion: 'autoscaling/v1',
      metadata: { name: rs.metadata.name, namespace: rs.metadata.namespace, uid: rs.metadata.uid, resourceVersion: rs.metadata.resourceVersion, creationTimestamp: rs.metadata.creationTimestamp },
      spec: { replicas: rs.spec.replicas },
      status: { replicas: rs.status?.replicas ?? 0, selector: Object.entries(rs.spec.selector.matchLabels).map(([k, v]) => `${k}=${String(v)}`).join(',') },
    }
  }

  function watch(req: IncomingMessage, res: ServerResponse, resource: Resource, ns: string, query: URLSearchParams): void {
    const matchesLabels = labelSelector(query.get('labelSelector'))
    const matchesFields = fieldSelector(query.get('fieldSelector'))
    const matches = (o: KObject): boolean => matchesLabels(o.metadata.labels ?? {}) && matchesFields(o)
    const rvParam = query.get('resourceVersion')
    res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'chunked' })
    const write = (type: string, object: unknown): void => {
      res.write(`${JSON.stringify({ type, object })}\n`)
    }
    let ended = false
    const end = (): void => {
      if (ended) return
      ended = true
      unwatch()
      clearInterval(bookmarks)
      clearTimeout(timeout)
      watchEnds.delete(end)
      res.end()
    }
    watchEnds.add(end)
    const unwatch = store.watch({ resource, namespace: ns, matches, send: (e: StoredEvent) => write(e.type, e.object) })
    if (rvParam === null || rvParam === '' || rvParam === '0') {
      for (const o of store.list(resource, ns).filter(matches)) write('ADDED', o)
    } else {
      const rv = Number(rvParam)
      if (!(rv >= store.compactedTo)) {
        write('ERROR', status(410, 'Expired', `too old resource version: ${rvParam} (${store.compactedTo})`))
        end()
        return
      }
      for (const e of store.since(resource, rv)) if (e.object.metadata.namespace === ns && matches(e.object)) write(e.type, e.object)
    }
    const bookmarks = setInterval(() => {
      if (query.get('allowWatchBookmarks') === 'true') write('BOOKMARK', { kind: KIND_OF[resource], apiVersion: GROUP_OF[resource], metadata: { resourceVersion: String(store.resourceVersion) } })
    }, options.bookmarkMs ?? 1000)
    const timeout = setTimeout(end, Number(query.get('timeoutSeconds') ?? 1800) * 1000)
    req.on('close', end)
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://sim')
    const m = /^\/(?:api\/v1|apis\/(?:apps|coordination\.k8s\.io)\/v1)\/namespaces\/([^/]+)\/(pods|replicasets|events|leases)(?:\/([^/]+))?(?:\/(scale))?$/.exec(url.pathname)
    if (m === null) throw new ApiError(404, 'NotFound', 'the server could not find the requested resource')
    const [, ns, resource, name, sub] = m as unknown as [string, string, Resource, string | undefined, string | undefined]
    namespacesSeen.add(ns)
    const method = req.method ?? 'GET'
    const isWatch = url.searchParams.get('watch') === 'true'
    const verb = method === 'GET' ? (name === undefined ? (isWatch ? 'watch' : 'list') : 'get') : ({ POST: 'create', PUT: 'update', PATCH: 'patch', DELETE: 'delete' } as Record<string, string>)[method] ?? method
    requests.push([sub === undefined ? resource : `${resource}/${sub}`, verb])
    if (req.headers.authorization !== `Bearer ${options.token}`) throw new ApiError(401, 'Unauthorized', 'Unauthorized')
    if (failures > 0) {
      failures--
      throw new ApiError(500, 'InternalError', 'Internal error occurred: injected fault')
    }
    if (sub === 'scale' && resource !== 'replicasets') throw new ApiError(404, 'NotFound', 'the server could not find the requested resource')

    if (name === undefined) {
      if (method === 'GET') {
        const matchesLabels = labelSelector(url.searchParams.get('labelSelector'))
        const matchesFields = fieldSelector(url.searchParams.get('fieldSelector'))
        if (isWatch) return watch(req, res, resource, ns, url.searchParams)
        const items = store.list(resource, ns).filter((o) => matchesLabels(o.metadata.labels ?? {}) && matchesFields(o))
        return send(res, 200, { kind: `${KIND_OF[resource]}List`, apiVersion: GROUP_OF[resource], metadata: { resourceVersion: String(store.resourceVersion) }, items })
      }
      if (method === 'POST') {
        if (resource === 'pods') throw new ApiError(403, 'Forbidden', 'the simulator creates pods only through ReplicaSets')
        const object = (await body(req)) as KObject
        object.metadata = { ...(object.metadata ?? {}), namespace: ns }
        validate(resource, object)
        if (store.get(resource, ns, object.metadata.name as string) !== undefined) {
          throw new ApiError(409, 'AlreadyExists', `${QUALIFIED[resource]} "${object.metadata.name as string}" already exists`, { name: object.metadata.name, kind: resource })
        }
        delete object.status
        return send(res, 201, store.create(resource, object))
      }
      throw new ApiError(405, 'MethodNotAllowed', `the server does not allow this method on the requested resource`)
    }

    const current = store.get(resource, ns, name)
    if (current === undefined) throw notFound(resource, name)
    if (sub === 'scale') {
      if (method === 'GET') return send(res, 200, scaleOf(current))
      const input = (await body(req)) as KObject
      let replicas: unknown
      if (method === 'PUT') {
        const rv = input?.metadata?.resourceVersion
        if (rv !== undefined && rv !== current.metadata.resourceVersion) throw conflict(resource, name)
        replicas = input?.spec?.replicas
      } else if (method === 'PATCH') {
        const type = String(req.headers['content-type'] ?? '').split(';')[0] as string
        if (!PATCH_TYPES.has(type)) throw new ApiError(415, 'UnsupportedMediaType', `the body of the request was in an unknown format - accepted media types include: ${[...PATCH_TYPES].join(', ')}`)
        const patched = type === 'application/json-patch+json' ? jsonPatch(scaleOf(current), input as never) : (mergePatch(scaleOf(current), input) as KObject)
        replicas = patched.spec?.replicas
      } else {
        throw new ApiError(405, 'MethodNotAllowed', 'the server does not allow this method on the requested resource')
      }
      if (!Number.isInteger(replicas) || (replicas as number) < 0) throw new ApiError(422, 'Invalid', `Scale.autoscaling "${name}" is invalid: spec.replicas: Invalid value: must be greater than or equal to 0`)
      if (replicas !== current.spec.replicas) {
        current.spec.replicas = replicas
        current.metadata.generation = (current.metadata.generation ?? 1) + 1
        return send(res, 200, scaleOf(store.update(resource, current)))
      }
      return send(res, 200, scaleOf(current))
    }

    if (method === 'GET') return send(res, 200, current)
    if (method === 'PUT') {
      const input = (await body(req)) as KObject
      if (input?.metadata?.resourceVersion !== current.metadata.resourceVersion) throw conflict(resource, name)
      input.metadata = { ...input.metadata, namespace: ns, name, uid: current.metadata.uid, creationTimestamp: current.metadata.creationTimestamp, generation: current.metadata.generation }
      validate(resource, input)
      if (resource === 'replicasets' && JSON.stringify(input.spec.selector) !== JSON.stringify(current.spec.selector)) {
        throw new ApiError(422, 'Invalid', `ReplicaSet.apps "${name}" is invalid: spec.selector: Invalid value: field is immutable`)
      }
      if (JSON.stringify(input.spec) !== JSON.stringify(current.spec)) input.metadata.generation = (current.metadata.generation ?? 1) + 1
      return send(res, 200, store.update(resource, input))
    }
    if (method === 'PATCH') {
      const type = String(req.headers['content-type'] ?? '').split(';')[0] as string
      if (!PATCH_TYPES.has(type)) throw new ApiError(415, 'UnsupportedMediaType', `the body of the request was in an unknown format - accepted media types include: ${[...PATCH_TYPES].join(', ')}`)
      const input = await body(req)
      const patched = type === 'application/json-patch+json' ? jsonPatch(current, input as never) : (mergePatch(current, input) as KObject)
      patched.metadata = { ...patched.metadata, namespace: ns, name, uid: current.metadata.uid, resourceVersion: current.metadata.resourceVersion }
      validate(resource, patched)
      return send(res, 200, store.update(resource, patched))
    }
    if (method === 'DELETE') {
      const options = ((await body(req)) ?? {}) as KObject
      const uid = options.preconditions?.uid
      if (uid !== undefined && uid !== current.metadata.uid) {
        throw new ApiError(409, 'Conflict', `Precondition failed: UID in precondition: ${String(uid)}, UID in object meta: ${current.metadata.uid as string}`)
      }
      if (resource === 'pods') {
        const grace = Number(url.searchParams.get('gracePeriodSeconds') ?? options.gracePeriodSeconds ?? current.spec.terminationGracePeriodSeconds ?? 30)
        return send(res, 200, deletePod(current, grace))
      }
      // Background propagation (the only policy the simulator implements): the owner goes now,
      // the garbage collector deletes its dependents after.
      return send(res, 200, store.remove(resource, ns, name))
    }
    throw new ApiError(405, 'MethodNotAllowed', 'the server does not allow this method on the requested resource')
  }

  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      const e = err instanceof ApiError ? err : err instanceof SelectorError ? new ApiError(400, 'BadRequest', err.message) : new ApiError(500, 'InternalError', (err as Error).message)
      if (res.headersSent) res.end()
      else send(res, e.code, status(e.code, e.reason, e.message, e.details))
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as AddressInfo).port

  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    list: (resource, namespace) => store.list(resource, namespace),
    compact: () => store.compact(),
    dropWatches: () => {
      for (const end of [...watchEnds]) end()
    },
    failNext: (n) => {
      failures = n
    },
    async close() {
      for (const end of [...watchEnds]) end()
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
      await kubelet.close()
    },
  }
}
