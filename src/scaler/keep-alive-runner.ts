/**
 * Carries out the keep-alive policy of versions that learn theirs ('adaptive'): records the idle
 * time each request ends, lets a version go when its plan says (through the GC, which decides
 * again before it collects), and starts a version again at its pre-warm time through the
 * activator, as a first request would. A pre-warm only starts a version that does not run, with
 * its minimum instances: the autoscaler owns it from there, and max-instances holds as ever.
 * Only the leader lets versions go and pre-warms them (as only it collects). In a cluster every
 * router learns from every router's requests: each tells the others of those that reach it
 * (PEER_NOTE_GAP_MS), and idle times are the fleet's, not one router's (its own requests alone
 * would make a version look idle while the others serve it). A note only names the version: what
 * starts it again comes from this router's own record of it.
 */
import type { Backend } from '../backends/backend.ts'
import type { InstanceTracker } from '../backends/tracker.ts'
import type { Clock } from '../clock.ts'
import type { LaunchSpec } from '../launch-spec.ts'
import type { Logger } from '../log.ts'
import type { ServiceRecord, ServiceRegistry, TokenReference } from '../versions/registry.ts'
import type { Resolution } from '../versions/resolve.ts'
import type { Activator, ActivationRequest } from './activator.ts'
import type { GcVerdict } from './gc.ts'
import { ALONE, fleetIdleSince, fleetLoadOf, type Fleet } from './fleet.ts'
import type { KeepAliveLedger, KeepAliveView } from './keep-alive-ledger.ts'
import type { KeepAlivePlan, KeepAlivePolicy } from './keep-alive.ts'
import { startLoop, type Loop } from './loop.ts'

/** What a pre-warm needs: the activation of the version's last request, and the tokens it came through. */
export interface PrewarmPayload {
  readonly activation: ActivationRequest
  /** The tokens (each at its version) the last request named: a pre-warm needs them unchanged. */
  readonly sources: readonly TokenReference[]
  /** The version's description (what /apps/{id} shows of it while it does not run). */
  readonly core: Readonly<Record<string, unknown>>
}

/** A request for an adaptive version that reached another router, as that router told this one. */
export interface PeerArrival {
  /** How long before this router heard of it the request arrived there (the note waited to be sent). */
  readonly agoMs: number
  /** Whether the version was running there (instances asked for), and warm (one healthy), when it arrived. */
  readonly running: boolean
  readonly warm: boolean
  /** How long the fleet had been idle when it arrived, as that router saw it (undefined: busy, or the version not running there). */
  readonly idleForMs: number | undefined
}

/** How a recorded version is started without a request (as a leader taking over a backend does). */
export interface RecordStarts {
  readonly parametersOf: (record: ServiceRecord) => Readonly<Record<string, unknown>>
  readonly launchSpecOf: (record: ServiceRecord) => LaunchSpec
  readonly remember: (record: ServiceRecord) => Promise<unknown>
}

/**
 * What a pre-warm of a version takes, from this router's own record of it: its parameters and
 * its tokens as recorded. Undefined for a record that names no run-as-user (from before every
 * version named one): who it runs as came from each request, so only a request starts it.
 */
export function payloadOfRecord(record: ServiceRecord, starts: RecordStarts): PrewarmPayload | undefined {
  const runAs = record.core['run-as-user']
  if (typeof runAs !== 'string' || runAs === '' || runAs === '*') return undefined
  const activation: ActivationRequest = {
    serviceId: record.id,
    effective: () => starts.parametersOf(record),
    launchSpec: () => starts.launchSpecOf(record),
    remember: () => starts.remember(record),
  }
  return { activation, sources: record.sources, core: record.core }
}

export interface KeepAliveDeps {
  readonly ledger: KeepAliveLedger<PrewarmPayload>
  readonly backend: Pick<Backend, 'requested'>
  readonly tracker: Pick<InstanceTracker, 'load' | 'idleSince'>
  /** Tells the other routers of a request that reached this one (cluster mode; see PEER_NOTE_GAP_MS). */
  readonly tellPeers?: ((serviceId: string, arrival: PeerArrival) => void) | undefined
  readonly registry: Pick<ServiceRegistry, 'all' | 'get'>
  readonly activator: Pick<Activator, 'ensure' | 'collecting'>
  /** The GC's collection of a version it finds idle now (it decides again), resolving with what it did. */
  readonly collectIfIdle: (serviceId: string) => Promise<GcVerdict | undefined>
  readonly parametersOf: (record: ServiceRecord) => Readonly<Record<string, unknown>>
  /** Whether the version is still what the tokens of its last request run (else it is never pre-warmed again). */
  readonly isCurrent: (serviceId: string, payload: PrewarmPayload) => boolean
  /** Whether the version is suspended (no pre-warm meanwhile; its history stays). */
  readonly isSuspended: (serviceId: string) => boolean
  /** Whether an operator overrode the version's scaling parameters. */
  readonly isOverridden: (serviceId: string) => boolean
  readonly onPrewarm?: (serviceId: string) => void
  readonly onHit?: (serviceId: string) => void
  readonly onMiss?: (serviceId: string) => void
  readonly clock: Clock
  readonly log: Logger
  readonly fleet?: Fleet
}

export interface KeepAliveOptions {
  /** The policy of versions whose parameters name none. */
  readonly defaultPolicy: KeepAlivePolicy
  readonly tickMs: number
}

export class KeepAliveRunner {
  readonly #deps: KeepAliveDeps
  readonly #options: KeepAliveOptions
  #loop: Loop | undefined
  /** Pre-warms under way (a slow start is not started twice). */
  readonly #starting = new Set<string>()

  constructor(deps: KeepAliveDeps, options: KeepAliveOptions) {
    this.#deps = deps
    this.#options = options
  }

  start(): void {
    this.#loop ??= startLoop(this.#deps.clock, this.#options.tickMs, () => this.tick(), (err) => this.#deps.log.error({ err }, 'keep-alive round failed'))
  }

  stop(): void {
    this.#loop?.stop()
    this.#loop = undefined
  }

  policyOf(params: Readonly<Record<string, unknown>>): KeepAlivePolicy {
    const named = params['keep-alive']
    return named === 'adaptive' || named === 'fixed' ? named : this.#options.defaultPolicy
  }

  #planOf(serviceId: string, params: Readonly<Record<string, unknown>>): KeepAlivePlan {
    return this.#deps.ledger.plan(serviceId, this.policyOf(params), (params['idle-timeout-mins'] as number) * 60_000)
  }

  /** A request for the version arrives here (on the data path: a map lookup for an adaptive version, nothing for the others). */
  arrived(asked: Resolution, params: Readonly<Record<string, unknown>>, activation: ActivationRequest): void {
    if (this.policyOf(params) !== 'adaptive') return
    const serviceId = asked.serviceId
    const now = this.#deps.clock.now()
    const running = (this.#deps.backend.requested(serviceId) ?? 0) > 0
    const warm = running && this.#deps.tracker.load(serviceId).healthy > 0
    const idleSince = running ? fleetIdleSince(this.#deps.tracker, this.#deps.fleet ?? ALONE, serviceId) : undefined
    this.#learn(serviceId, now, running, warm, idleSince, { activation, sources: asked.sources, core: asked.core })
    if (this.#deps.tellPeers !== undefined && this.#deps.ledger.tell(serviceId, now, running)) {
      this.#deps.tellPeers(serviceId, { agoMs: 0, running, warm, idleForMs: idleSince === undefined ? undefined : Math.max(0, now - idleSince) })
    }
  }

  /**
   * A request for an adaptive version reached another router, which told this one. `known`:
   * this router's own record of the version, if it has one: its parameters, and what it takes to
   * start it again (never what the note says: a note names a version, it does not describe one).
   * Judged by what that router saw when the request arrived (a cold start there may already
   * show as running here).
   */
  heard(serviceId: string, known: { readonly params: Readonly<Record<string, unknown>>; readonly payload: PrewarmPayload | undefined } | undefined, arrival: PeerArrival): void {
    // (Unknown here yet, a version just recorded elsewhere: the router that told judged it adaptive.)
    if (known !== undefined && this.policyOf(known.params) !== 'adaptive') return
    const at = this.#deps.clock.now() - arrival.agoMs
    const idleSince = arrival.running && arrival.idleForMs !== undefined ? at - arrival.idleForMs : undefined
    this.#learn(serviceId, at, arrival.running, arrival.warm, idleSince, known?.payload)
  }

  #learn(serviceId: string, at: number, running: boolean, warm: boolean, idleSince: number | undefined, payload: PrewarmPayload | undefined): void {
    const outcome = this.#deps.ledger.arrived(serviceId, at, running, warm, idleSince, payload)
    if (outcome === 'hit') this.#deps.onHit?.(serviceId)
    else if (outcome === 'miss') this.#deps.onMiss?.(serviceId)
  }

  /**
   * For the GC: when an adaptive version is let go (undefined: its idle timeout decides). A
   * version an operator set by hand (suspended, or its scaling overridden) keeps its idle
   * timeout: a collection ends the suspension and the overrides with the version, and an
   * adaptive let-go, seconds after each busy spell, would end them within a minute (and the
   * pre-warm would then start a version its operator had suspended).
   */
  keepUntil(record: ServiceRecord, params: Readonly<Record<string, unknown>>, lastActiveAt: number): number | undefined {
    if (this.policyOf(params) !== 'adaptive') return undefined
    if (this.#deps.isSuspended(record.id) || this.#deps.isOverridden(record.id)) return undefined
    return this.#deps.ledger.scheduleRunning(record.id, this.#planOf(record.id, params), lastActiveAt).collectAt
  }

  /** The GC collected a version: for its idleness (its history stays), or for good. */
  /**
   * The version was collected. Returns whether what was learned of it is forgotten (collected
   * for anything but idleness, or while suspended: its suspension goes with it, and it is never
   * started again but by a request). `forget`: the leader that collected it forgot it (a
   * follower's own suspension may already be gone when it hears of the collection).
   */
  collected(serviceId: string, reason: GcVerdict['reason'], lastActiveAt: number, forget = false): boolean {
    if (forget || reason !== 'idle' || this.#deps.isSuspended(serviceId)) {
      this.#deps.ledger.forget(serviceId)
      return true
    }
    if (this.#deps.ledger.collected(serviceId, lastActiveAt)) this.#deps.onMiss?.(serviceId)
    return false
  }

  /** An operator deleted the version: nothing is started again. */
  deleted(serviceId: string): void {
    this.#deps.ledger.forget(serviceId)
  }

  /** What /apps/{id} shows of the version's keep-alive. */
  view(record: ServiceRecord | undefined, serviceId: string, params: Readonly<Record<string, unknown>>): KeepAliveView {
    const running = (this.#deps.backend.requested(serviceId) ?? 0) > 0
    const load = fleetLoadOf(this.#deps.tracker, this.#deps.fleet ?? ALONE, serviceId)
    const lastActiveAt = record === undefined ? load.lastActiveAt : Math.max(load.lastActiveAt, record.createdAt)
    // As keepUntil decides it: a version an operator suspended or overrode keeps its idle timeout.
    const byOperator = this.policyOf(params) === 'adaptive' && (this.#deps.isSuspended(serviceId) || this.#deps.isOverridden(serviceId))
    const plan: KeepAlivePlan = byOperator ? { policy: 'adaptive', basis: 'operator', prewarmMs: 0, keepAliveMs: (params['idle-timeout-mins'] as number) * 60_000, letGoMs: 0 } : this.#planOf(serviceId, params)
    return this.#deps.ledger.view(serviceId, plan, running, load.inFlight + load.queued > 0 ? undefined : lastActiveAt, this.#deps.clock.now())
  }

  /** A version that does not run and has no record, but whose keep-alive remembers it: its description and plans. */
  dormant(serviceId: string): { core: Readonly<Record<string, unknown>>; view: KeepAliveView } | undefined {
    const payload = this.#deps.ledger.payload(serviceId)
    if (payload === undefined || (this.#deps.backend.requested(serviceId) ?? 0) > 0) return undefined
    return { core: payload.core, view: this.view(undefined, serviceId, payload.activation.effective()) }
  }

  /** Forgets a version's history (an operator deleted it). */
  forget(serviceId: string): void {
    this.#deps.ledger.forget(serviceId)
  }

  /** One round: adaptive versions due to go are offered to the GC; those due to come back are started. */
  async tick(): Promise<void> {
    const { ledger, backend, registry, clock, log } = this.#deps
    if (!(this.#deps.fleet ?? ALONE).isLeader()) return
    const now = clock.now()
    const running = new Set<string>()
    for (const record of registry.all()) {
      if ((backend.requested(record.id) ?? 0) === 0) continue
      running.add(record.id)
      const params = this.#deps.parametersOf(record)
      if (this.policyOf(params) !== 'adaptive') continue
      const load = fleetLoadOf(this.#deps.tracker, this.#deps.fleet ?? ALONE, record.id)
      if (load.inFlight + load.queued > 0) continue
      const collectAt = this.keepUntil(record, params, Math.max(load.lastActiveAt, record.createdAt))
      if (collectAt !== undefined && now >= collectAt) await this.#deps.collectIfIdle(record.id)
    }
    for (const serviceId of ledger.ids()) {
      if (running.has(serviceId) || this.#starting.has(serviceId) || (backend.requested(serviceId) ?? 0) > 0) continue
      // A collection under way: looked at again next round, once it is over.
      if (this.#deps.activator.collecting(serviceId)) continue
      const payload = ledger.payload(serviceId)
      if (payload === undefined) continue
      // A version not running has no record (its collection dropped it): its plan follows the
      // parameters of the last request that reached it.
      const record = registry.get(serviceId)
      const params = record === undefined ? payload.activation.effective() : this.#deps.parametersOf(record)
      if (this.policyOf(params) !== 'adaptive') continue
      // Due before the next round: started at this one (a pre-warm planned 3 s before the next
      // bin's edge, 57 s for idle times of a minute, must not wait out a 5 s round and a start);
      // and still due now, in the last round of its window.
      const plan = this.#planOf(serviceId, params)
      if ((ledger.prewarmDue(serviceId, plan, now + this.#options.tickMs) ?? ledger.prewarmDue(serviceId, plan, now)) === undefined) continue
      if (this.#deps.isSuspended(serviceId)) continue
      if (!this.#deps.isCurrent(serviceId, payload)) {
        // Its tokens moved on: what they run now is another version, with a history of its own.
        ledger.forget(serviceId)
        continue
      }
      const starting = this.#deps.activator.ensure(payload.activation)
      // (Undefined: it runs after all, started by a request meanwhile.)
      if (starting === undefined) continue
      this.#starting.add(serviceId)
      ledger.prewarmed(serviceId, now)
      this.#deps.onPrewarm?.(serviceId)
      log.info({ service: serviceId }, 'pre-warming: starting the version before its next expected request')
      void starting
        .catch((err: unknown) => {
          log.warn({ err, service: serviceId }, 'pre-warming the version failed')
          if (ledger.prewarmFailed(serviceId)) this.#deps.onMiss?.(serviceId)
        })
        .finally(() => this.#starting.delete(serviceId))
    }
  }
}
