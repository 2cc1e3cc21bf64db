/**
 * A backend that only one router of a cluster may drive — Mesos: one scheduler per framework —
 * in cluster mode. The leader runs the real backend; every other router shows the leader's view
 * of it and asks the leader for what it wants done, over the routers' own peer HTTP (the
 * cluster's key proves the caller, as for slot lending):
 *
 * - GET /maitre-peer/backend/state?after=VIEW: a long poll, answered as soon as the leader's view
 *   has changed past VIEW (or after LONG_POLL_MS with the same one): every service's state.
 *   Followers ask again at most every MIN_POLL_GAP_MS, so a change reaches them within about
 *   that, and a leader serves O(routers) polls, not O(changes).
 * - POST /maitre-peer/backend/{ensure,scale,kill,delete}: the leader carries the call out and
 *   answers with the service's state after it, which the follower shows at once (a cold start
 *   asked through a follower then counts as started there too).
 *
 * Leadership is checked every CHECK_MS. A router that becomes leader starts the real backend
 * (for Mesos: it subscribes with the framework id the cluster keeps in etcd and adopts the tasks
 * that run) and shows the previous leader's view until its own has adopted them. One that stops
 * leading closes its backend at once, leaving what runs to the next leader (a new subscription
 * with the framework id ends the old one in any case: Mesos itself fences a deposed scheduler),
 * and shows the last view it had until the new leader's arrives. With no leader, or none that
 * answers, a follower keeps routing to what it last knew; what it asks for waits up to
 * ASK_PATIENCE_MS for a leader to take it, then fails with a 503 and Retry-After. A new leader
 * carries over demand it cannot adopt (a cold start not placed yet) from the version's record,
 * and its scale, kill and delete wait until it knows what runs.
 */
import { randomUUID } from 'node:crypto'
import { request } from 'undici'
import type { Backend, ServiceState } from '../backends/backend.ts'
import { ServiceListeners } from '../backends/service-listeners.ts'
import { MaitreError, type ErrorCode } from '../errors.ts'
import type { LaunchSpec } from '../launch-spec.ts'
import type { Logger } from '../log.ts'
import { launchSpecOf, serviceStateOf, toWire, WireError } from './backend-wire.ts'
import { PEER_KEY_HEADER, PEER_PATH_PREFIX, postToPeer } from './peer-post.ts'

/** The real backend the leader runs: `ready` once it knows what runs (Mesos: tasks adopted). */
export interface LedBackend extends Backend {
  readonly ready: boolean
}

export interface LeaderBackendOptions {
  readonly kind: Backend['kind']
  /** A new real backend, each time this router becomes leader. */
  readonly start: () => LedBackend
  readonly isLeader: () => boolean
  /** Where the leader listens, when another router leads and is known. */
  readonly leaderUrl: () => string | undefined
  /** The cluster's peer key (slot-exchange.ts's peerKey). */
  readonly peerKey: string
  readonly log: Logger
  /** How often leadership is checked (ms). */
  readonly checkMs?: number
  /** How long a follower's call waits for a leader to take it (ms). */
  readonly askPatienceMs?: number
  /**
   * The LaunchSpec of a recorded version, for demand a new leader carries over from the last
   * view (a cold start not placed yet, whose service its own backend cannot adopt: no task runs).
   */
  readonly specOf?: (serviceId: string) => LaunchSpec | undefined
}

export type BackendCall = 'ensure' | 'scale' | 'kill' | 'delete'

const CHECK_MS = 250
const LONG_POLL_MS = 20_000
const MIN_POLL_GAP_MS = 100
/** A follower whose poll failed (no leader yet, a leader still adopting, a broken connection) asks again after this. */
const RETRY_MS = 250
/** How long a follower's call waits for a leader to take it (a hand-over takes up to a lease TTL, then adoption). */
const ASK_PATIENCE_MS = 10_000
/** Bound on a call to the leader: a leader that cannot answer in this time is as good as gone. */
const CALL_TIMEOUT_MS = 10_000

const ID = /^[\x21-\x7e]{1,253}$/
/** The most instances a peer may ask for one version: far beyond any real service, short of a runaway. */
const MAX_INSTANCES = 10_000

export class LeaderBackend implements Backend {
  readonly kind: Backend['kind']
  readonly #o: LeaderBackendOptions
  readonly #listeners: ServiceListeners
  #local: LedBackend | undefined
  #unsubscribeLocal: (() => void) | undefined
  /** The local backend's view is shown (it is ready); until then, the last view from elsewhere. */
  #showingLocal = false
  /** A local backend being closed after leadership was lost: none starts before it is gone. */
  #stopping: Promise<void> | undefined
  /** The leader's view, as last received (or this router's own, as it stopped leading). */
  #remote = new Map<string, ServiceState>()
  /** The view id last received from the leader: its next answer comes once it changed. */
  #seen = ''
  /** This router's views, while it leads: `<epoch>.<version>`, the epoch new with each process. */
  readonly #epoch = randomUUID()
  #version = 0
  readonly #waiters = new Set<() => void>()
  #longPollsEnded = false
  #followAbort: AbortController | undefined
  #followingUrl: string | undefined
  #following: Promise<void> | undefined
  readonly #timer: NodeJS.Timeout
  #closed = false

  constructor(options: LeaderBackendOptions) {
    this.kind = options.kind
    this.#o = options
    this.#listeners = new ServiceListeners(options.log)
    this.#timer = setInterval(() => this.#check(), options.checkMs ?? CHECK_MS)
    this.#timer.unref()
    this.#check()
  }

  // -------------------------------------------------------------------------------------------
  // Backend

  async ensureService(spec: LaunchSpec): Promise<void> {
    const local = this.#local
    if (local !== undefined) return local.ensureService(spec)
    this.#merge('ensure', spec.serviceId, await this.#ask('ensure', { spec }))
  }

  // Scale, kill and delete act on services the backend knows, which a leader still taking over
  // may not yet: they wait for it to be ready (ensure creates, so it need not).

  async scale(serviceId: string, instances: number): Promise<void> {
    if (this.#local !== undefined) return (await this.#readyLocal('scale')).scale(serviceId, instances)
    this.#merge('scale', serviceId, await this.#ask('scale', { serviceId, instances }))
  }

  async killInstance(serviceId: string, instanceId: string, options: { readonly force?: boolean } = {}): Promise<boolean> {
    if (this.#local !== undefined) return (await this.#readyLocal('kill')).killInstance(serviceId, instanceId, options)
    const answer = await this.#ask('kill', { serviceId, instanceId, force: options.force === true })
    this.#merge('kill', serviceId, answer)
    return answer['killed'] === true
  }

  async deleteService(serviceId: string): Promise<void> {
    if (this.#local !== undefined) return (await this.#readyLocal('delete')).deleteService(serviceId)
    this.#merge('delete', serviceId, await this.#ask('delete', { serviceId }))
  }

  /** This router's own backend once it is ready, waited for up to the call patience. */
  async #readyLocal(call: BackendCall): Promise<LedBackend> {
    const giveUpAt = Date.now() + (this.#o.askPatienceMs ?? ASK_PATIENCE_MS)
    for (;;) {
      const local = this.#local
      if (local?.ready === true && this.#showingLocal) return local
      if (local === undefined || this.#closed || Date.now() >= giveUpAt) {
        throw new MaitreError('MAITRE_BACKEND', `The ${this.kind} backend is changing hands between the cluster's routers; try again`, { status: 503, headers: { 'retry-after': '1' }, details: { call } })
      }
      await this.#sleep(RETRY_MS)
    }
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => setTimeout(resolve, ms).unref())
  }

  // While this router's own backend is still taking over (not ready), a service it was asked
  // for shows as it has it: a caller that has just created one must see it (the activator asks
  // again and again until it does); the others show as the last view had them.

  state(serviceId: string): ServiceState | undefined {
    const local = this.#local?.state(serviceId)
    return this.#showingLocal || local !== undefined ? local : this.#remote.get(serviceId)
  }

  requested(serviceId: string): number | undefined {
    const local = this.#local?.requested(serviceId)
    return this.#showingLocal || local !== undefined ? local : this.#remote.get(serviceId)?.requested
  }

  services(): readonly ServiceState[] {
    const local = this.#local?.services() ?? []
    if (this.#showingLocal) return local
    const merged = new Map(this.#remote)
    for (const service of local) merged.set(service.id, service)
    return [...merged.values()]
  }

  subscribe(listener: (serviceId: string) => void): () => void {
    return this.#listeners.subscribe(listener)
  }

  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    clearInterval(this.#timer)
    this.#followAbort?.abort()
    for (const wake of this.#waiters) wake()
    const local = this.#local
    this.#local = undefined
    this.#unsubscribeLocal?.()
    await Promise.all([local?.close(), this.#stopping, this.#following])
  }

  // -------------------------------------------------------------------------------------------
  // Leadership

  #check(): void {
    if (this.#closed) return
    const leading = this.#o.isLeader()
    if (leading && this.#local === undefined && this.#stopping === undefined) this.#lead()
    else if (!leading && this.#local !== undefined) this.#stepDown()
    if (leading && this.#local?.ready === true && !this.#showingLocal) {
      this.#carryOver(this.#local)
      // The leader's own view from now on: whatever either view names may have changed.
      const ids = new Set([...this.#remote.keys(), ...this.#local.services().map((s) => s.id)])
      this.#showingLocal = true
      this.#o.log.info({ services: this.#local.services().length }, 'cluster leader: the backend is ready; showing its own view')
      this.#bump()
      for (const id of ids) this.#listeners.emit(id)
    }
    if (!leading) this.#follow(this.#o.leaderUrl())
  }

  /**
   * Demand the last view had that the new backend did not adopt (nothing of it ran: a cold
   * start not placed yet) is asked of it again, so the requests waiting for it wait on instead of
   * finding their service gone.
   */
  #carryOver(local: LedBackend): void {
    for (const service of this.#remote.values()) {
      if (service.requested === 0 || local.state(service.id) !== undefined) continue
      const spec = this.#o.specOf?.(service.id)
      if (spec === undefined) {
        this.#o.log.warn({ service: service.id }, 'demand the last leader had cannot be carried over: the version is not recorded')
        continue
      }
      const failed = (err: unknown): void => this.#o.log.error({ err, service: service.id }, 'demand the last leader had could not be carried over')
      // Both take effect at once (before their first await): the view shown next has the service.
      local.ensureService(spec).catch(failed)
      local.scale(service.id, service.requested).catch(failed)
      this.#o.log.info({ service: service.id, instances: service.requested }, 'cluster leader: carried over demand the last leader had not placed')
    }
  }

  #lead(): void {
    this.#o.log.info('cluster leader: starting the backend')
    this.#stopFollowing()
    const local = this.#o.start()
    this.#local = local
    this.#unsubscribeLocal = local.subscribe((serviceId) => {
      if (this.#local !== local) return
      // Before it is ready, only what it was asked for shows from it (see state()).
      if (!this.#showingLocal && local.state(serviceId) === undefined) return
      this.#bump()
      this.#listeners.emit(serviceId)
    })
  }

  #stepDown(): void {
    const local = this.#local as LedBackend
    this.#o.log.warn('no longer the cluster leader: the backend stops here and the new leader drives it')
    // Keeps routing to what it knew until the new leader's view comes.
    if (this.#showingLocal) this.#remote = new Map(local.services().map((s) => [s.id, s]))
    this.#showingLocal = false
    this.#seen = ''
    this.#local = undefined
    this.#unsubscribeLocal?.()
    this.#unsubscribeLocal = undefined
    this.#bump()
    this.#stopping = local
      .close()
      .catch((err: unknown) => this.#o.log.error({ err }, 'the backend did not close cleanly'))
      .finally(() => {
        this.#stopping = undefined
      })
  }

  #bump(): void {
    this.#version += 1
    for (const wake of this.#waiters) wake()
    this.#waiters.clear()
  }

  // -------------------------------------------------------------------------------------------
  // Following the leader

  #follow(url: string | undefined): void {
    if (url !== this.#followingUrl) {
      // Another leader (or none): the poll under way asks the wrong router.
      this.#followAbort?.abort()
      this.#followingUrl = url
      this.#seen = ''
    }
    if (this.#following === undefined && url !== undefined) {
      this.#following = this.#pollLoop(url).finally(() => {
        this.#following = undefined
      })
    }
  }

  #stopFollowing(): void {
    this.#followAbort?.abort()
    this.#followingUrl = undefined
  }

  async #pollLoop(url: string): Promise<void> {
    while (!this.#closed && this.#local === undefined && this.#followingUrl === url) {
      const abort = new AbortController()
      this.#followAbort = abort
      let gap = RETRY_MS
      try {
        const res = await request(`${url}${PEER_PATH_PREFIX}backend/state?after=${encodeURIComponent(this.#seen)}`, {
          headers: { [PEER_KEY_HEADER]: this.#o.peerKey },
          signal: abort.signal,
          headersTimeout: LONG_POLL_MS + CALL_TIMEOUT_MS,
          bodyTimeout: CALL_TIMEOUT_MS,
        })
        if (res.statusCode === 200) {
          this.#received((await res.body.json()) as unknown)
          gap = MIN_POLL_GAP_MS
        } else {
          await res.body.dump()
        }
      } catch (err) {
        if (!abort.signal.aborted) this.#o.log.debug({ err, leader: url }, 'the cluster leader did not answer for the backend view')
      }
      if (this.#closed || abort.signal.aborted) return
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, gap)
        abort.signal.addEventListener('abort', () => {
          clearTimeout(timer)
          resolve()
        })
      })
    }
  }

  /** The leader's whole view: shown, and every service whose state changed is announced. */
  #received(body: unknown): void {
    if (this.#local !== undefined) return
    let view: string
    let services: ServiceState[]
    try {
      const o = body as { view?: unknown; services?: unknown }
      if (typeof o.view !== 'string' || !Array.isArray(o.services)) throw new WireError('answer', 'must be { view, services }')
      view = o.view
      services = o.services.map((s, i) => serviceStateOf(s, `services[${i}]`))
    } catch (err) {
      this.#o.log.warn({ err }, 'the cluster leader sent a backend view this router cannot read; keeping the last one')
      return
    }
    if (this.#olderThanShown(view)) return
    const next = new Map(services.map((s) => [s.id, s]))
    const changed = [...new Set([...this.#remote.keys(), ...next.keys()])].filter((id) => JSON.stringify(toWire(this.#remote.get(id) ?? EMPTY)) !== JSON.stringify(toWire(next.get(id) ?? EMPTY)))
    this.#remote = next
    this.#seen = view
    this.#noteNewest(view)
    for (const id of changed) this.#listeners.emit(id)
  }

  /**
   * One service's state as the leader answered a call: shown at once. A view from the long poll
   * older than this answer is dropped when it arrives (it could undo what the call did).
   */
  #merge(call: BackendCall, serviceId: string, answer: Record<string, unknown>): void {
    if (this.#local !== undefined) return
    let state: ServiceState | undefined
    try {
      state = answer['service'] === null || answer['service'] === undefined ? undefined : serviceStateOf(answer['service'])
    } catch (err) {
      this.#o.log.warn({ err, service: serviceId }, 'the cluster leader answered with a service state this router cannot read')
      return
    }
    // An answer from before the view shown (the poll overtook it) would undo what came since.
    if (typeof answer['view'] === 'string') {
      if (this.#olderThanShown(answer['view'])) return
      this.#noteNewest(answer['view'])
    }
    // Only a delete makes a service gone; another call that finds none changes nothing here.
    if (state === undefined && call !== 'delete') return
    if (state === undefined) this.#remote.delete(serviceId)
    else this.#remote.set(serviceId, state)
    this.#listeners.emit(serviceId)
  }

  /** The newest view shown, from the long poll or a call's answer: `<epoch>.<version>`. */
  #newest: { epoch: string; version: number } | undefined

  #noteNewest(view: string): void {
    const parsed = parseView(view)
    if (parsed === undefined) return
    if (this.#newest === undefined || this.#newest.epoch !== parsed.epoch || this.#newest.version < parsed.version) this.#newest = parsed
  }

  /** Whether a view (polled, or a call's answer) is older than one already shown. */
  #olderThanShown(view: string): boolean {
    const parsed = parseView(view)
    return parsed !== undefined && this.#newest !== undefined && parsed.epoch === this.#newest.epoch && parsed.version < this.#newest.version
  }

  /**
   * A call carried out by the leader. Through a hand-over (no leader yet, one still taking over,
   * one gone) it is asked again every RETRY_MS for up to ASK_PATIENCE_MS: a cold start waits out
   * a leader change (the request's own queue timeout still bounds the caller) instead of failing.
   */
  async #ask(call: BackendCall, body: Record<string, unknown>): Promise<Record<string, unknown>> {
    const giveUpAt = Date.now() + (this.#o.askPatienceMs ?? ASK_PATIENCE_MS)
    for (;;) {
      try {
        return await this.#askOnce(call, body)
      } catch (err) {
        if (!(err instanceof LeaderUnavailable) || Date.now() >= giveUpAt || this.#closed) throw err instanceof LeaderUnavailable ? err.error : err
      }
      await this.#sleep(RETRY_MS)
      if (this.#local !== undefined) {
        // This router leads now: its own backend carries the call out.
        switch (call) {
          case 'ensure':
            await this.ensureService(body['spec'] as LaunchSpec)
            return {}
          case 'scale':
            await this.scale(body['serviceId'] as string, body['instances'] as number)
            return {}
          case 'kill':
            return { killed: await this.killInstance(body['serviceId'] as string, body['instanceId'] as string, { force: body['force'] === true }) }
          case 'delete':
            await this.deleteService(body['serviceId'] as string)
            return {}
        }
      }
    }
  }

  async #askOnce(call: BackendCall, body: Record<string, unknown>): Promise<Record<string, unknown>> {
    const url = this.#o.leaderUrl()
    const unavailable = (why: string, cause?: unknown): LeaderUnavailable =>
      new LeaderUnavailable(new MaitreError('MAITRE_BACKEND', `The cluster's leader drives the ${this.kind} backend and ${why}; try again`, { status: 503, headers: { 'retry-after': '1' }, details: { call }, cause }))
    if (url === undefined) throw unavailable('none is known right now')
    let res: Awaited<ReturnType<typeof request>>
    try {
      res = await postToPeer({ url, what: `backend/${call}`, key: this.#o.peerKey, body: JSON.stringify(body), timeoutMs: CALL_TIMEOUT_MS })
    } catch (err) {
      throw unavailable('did not answer', err)
    }
    const answer = (await res.body.json().catch(() => ({}))) as Record<string, unknown>
    if (res.statusCode === 200) return answer
    // The leader's own refusal of the call (a descriptor this backend cannot run): the same error here.
    const failure = answer['failure'] as { code?: unknown; message?: unknown; status?: unknown; details?: unknown } | undefined
    // (Only a refusal of the version itself: any other 4xx is the routers' own fault, not the caller's.)
    if (failure?.code === 'MAITRE_INVALID_DESCRIPTOR' && typeof failure.message === 'string' && typeof failure.status === 'number') {
      throw new MaitreError(failure.code as ErrorCode, failure.message, { status: failure.status, details: (failure.details ?? {}) as Record<string, unknown> })
    }
    const why = `answered ${res.statusCode}${typeof failure?.message === 'string' ? `: ${failure.message}` : ''}`
    // Not (yet) the leader, or taking over: worth asking again. Anything else is its answer.
    if (failure?.code === 'MAITRE_CLUSTER_UNAVAILABLE') throw unavailable(why)
    throw new MaitreError('MAITRE_BACKEND', `The cluster's leader drives the ${this.kind} backend and ${why}`, { status: 503, headers: { 'retry-after': '1' }, details: { call } })
  }

  // -------------------------------------------------------------------------------------------
  // Serving the followers (admin/peer.ts)

  /**
   * This router drains: followers' long polls are answered now (with the view as it is) rather
   * than when they end by themselves, which the drain would wait for (up to LONG_POLL_MS, while
   * the leadership it is about to give up stays here), and new ones are answered at once.
   */
  endLongPolls(): void {
    this.#longPollsEnded = true
    for (const wake of this.#waiters) wake()
    this.#waiters.clear()
  }

  /** The view after `after`: at once if it is another, else when it changes (or the long poll ends). */
  async peerState(after: string, signal: AbortSignal): Promise<{ view: string; services: unknown[] }> {
    this.#mustLead()
    if (after === this.#viewId() && !this.#longPollsEnded) {
      await new Promise<void>((resolve) => {
        const wake = (): void => {
          clearTimeout(timer)
          this.#waiters.delete(wake)
          signal.removeEventListener('abort', wake)
          resolve()
        }
        const timer = setTimeout(wake, LONG_POLL_MS)
        if (signal.aborted) return wake()
        this.#waiters.add(wake)
        signal.addEventListener('abort', wake, { once: true })
      })
      this.#mustLead()
    }
    return { view: this.#viewId(), services: this.services().map(toWire) }
  }

  /** A follower's call, carried out here (the leader): answers with the service's state after it. */
  async peerCall(call: BackendCall, body: Record<string, unknown>): Promise<Record<string, unknown>> {
    const local = this.#local
    // Still taking over, it knows only what it was asked since: the follower asks again.
    if (local === undefined || !this.#o.isLeader() || (call !== 'ensure' && !(local.ready && this.#showingLocal))) throw notLeading()
    let serviceId: string
    const answer: Record<string, unknown> = {}
    try {
      switch (call) {
        case 'ensure': {
          const spec = launchSpecOf(body['spec'])
          if (!ID.test(spec.serviceId)) throw new WireError('spec.serviceId', 'must be a string of 1 to 253 printable characters')
          serviceId = spec.serviceId
          await local.ensureService(spec)
          break
        }
        case 'scale': {
          serviceId = idOf(body, 'serviceId')
          const instances = body['instances']
          if (!Number.isSafeInteger(instances) || (instances as number) < 0 || (instances as number) > MAX_INSTANCES) throw new WireError('instances', `must be a whole number from 0 to ${MAX_INSTANCES}`)
          await local.scale(serviceId, instances as number)
          break
        }
        case 'kill': {
          serviceId = idOf(body, 'serviceId')
          const force = body['force'] ?? false
          if (typeof force !== 'boolean') throw new WireError('force', 'must be true or false')
          answer['killed'] = await local.killInstance(serviceId, idOf(body, 'instanceId'), { force })
          break
        }
        case 'delete':
          serviceId = idOf(body, 'serviceId')
          await local.deleteService(serviceId)
          break
      }
    } catch (err) {
      if (err instanceof WireError) throw new MaitreError('MAITRE_BAD_REQUEST', `${err.message}`, { details: { field: err.field } })
      // Stepped down meanwhile (its backend closed under the call): the follower asks the next leader.
      if (!(err instanceof MaitreError) && this.#local !== local) throw notLeading()
      throw err
    }
    const state = local.state(serviceId)
    return { ...answer, service: state === undefined ? null : toWire(state), view: this.#viewId() }
  }

  #viewId(): string {
    return `${this.#epoch}.${this.#version}`
  }

  #mustLead(): void {
    if (this.#closed || this.#local === undefined || !this.#showingLocal || !this.#o.isLeader()) throw notLeading()
  }
}

/** The leader could not be asked (none known, none answering, one taking over): worth asking again. */
class LeaderUnavailable extends Error {
  readonly error: MaitreError
  constructor(error: MaitreError) {
    super(error.message)
    this.error = error
  }
}

const EMPTY: ServiceState = { id: '', requested: 0, instances: [], failed: [], killed: [], deploymentError: undefined }

function idOf(body: Record<string, unknown>, field: string): string {
  const value = body[field]
  if (typeof value !== 'string' || !ID.test(value)) throw new WireError(field, 'must be a string of 1 to 253 printable characters')
  return value
}

function parseView(view: string): { epoch: string; version: number } | undefined {
  const dot = view.lastIndexOf('.')
  const version = Number(view.slice(dot + 1))
  return dot <= 0 || !Number.isSafeInteger(version) ? undefined : { epoch: view.slice(0, dot), version }
}

function notLeading(): MaitreError {
  return new MaitreError('MAITRE_CLUSTER_UNAVAILABLE', 'This router does not drive the backend: it is not the cluster leader, or it is still taking over', { headers: { 'retry-after': '1' } })
}
