/**
 * Slots across routers: each router fills only its share of every instance (slot-shares.ts), so
 * the fleet never sends an instance more than concurrency-level requests at once; and so that no
 * share idles while another router has requests waiting, routers lend each other slots, directly
 * over HTTP (Waiter's work-stealing, reference/waiter.md §4.2):
 *
 * - A router whose queue for a version changes tells its peers how many requests wait there
 *   (POST /maitre-peer/wants; repeated every second while any wait, forgotten after three).
 * - A router with a free slot of that version and nobody of its own waiting takes the slot (a
 *   lease in its own tracker: it counts there for kill vetoes and routing; its request counts in
 *   the borrower's load, for scaling and GC, so the fleet's sum never counts it twice) and offers it to
 *   the router with the most waiting (POST /maitre-peer/offer). The borrower hands the instance to
 *   its longest-waiting request, and answers the offer only when that request lets go, with how it
 *   went; the lender then releases its lease. A borrower with nobody waiting any more says no at
 *   once, and a broken connection (a router that died) releases the lease too. One whose requests
 *   wait but cannot go to that instance (ejected there, say) declines the instance: the lender
 *   lends a slot of another one instead, and offers that one again only after the next wants.
 * - Before the leader kills an instance, every peer is asked to take it out of rotation
 *   (POST /maitre-peer/eject); one that carries a request on it says no (423) and the kill waits.
 *
 * A router cut off from etcd for a whole lease TTL asks its peers whether they still count it
 * as a member (POST /maitre-peer/member). If etcd is down for everyone, they do (nobody's lease
 * lapses), and it serves on with its shares. If one says no (they reach etcd and let its lease
 * lapse, so its shares are theirs now), or it has peers and none answers, it is fenced: it fills
 * no slot of its own until etcd confirms it again, so the fleet never exceeds concurrency-level.
 * (A router with no peers has nobody its shares could have gone to.)
 *
 * Every call carries a key derived from the router secret the cluster shares: only routers of
 * this cluster lend, borrow or veto.
 */
import { createHmac, timingSafeEqual } from 'node:crypto'
import { Agent, request, type Dispatcher } from 'undici'
import type { Clock } from '../clock.ts'
import type { Logger } from '../log.ts'
import type { Lease, ReleaseOutcome, SlotSharing } from '../backends/tracker.ts'
import type { PeerReport, SlotView } from './coordination.ts'
import { slotLimit } from './slot-shares.ts'

import { PEER_KEY_HEADER, PEER_PATH_PREFIX, postToPeer } from './peer-post.ts'

export { PEER_KEY_HEADER, PEER_PATH_PREFIX }

/** What the exchange needs of the tracker. */
export interface LendingTracker {
  lend(serviceId: string, avoid?: ReadonlySet<string>): Lease | undefined
  grantBorrowed(serviceId: string, instanceId: string, done: (outcome: ReleaseOutcome) => void): (() => void) | undefined
  ejectForKill(serviceId: string, instanceId: string, periodMs: number): boolean
  cancelKillHold(serviceId: string, instanceId: string): void
  redispatch(): void
}

export interface SlotExchangeOptions {
  readonly routerId: string
  /** The secret every router of the cluster shares; the peer key derives from it. */
  readonly secret: string
  readonly tracker: LendingTracker
  /** The current slot view (late-bound: the router joins the cluster after it listens). */
  readonly view: () => SlotView
  readonly clock: Clock
  readonly log: Logger
  /** How long a peer keeps an instance out of rotation for a kill the leader prepares. */
  readonly killEjectMs: number
  /** A peer refused a connection: its process is gone (the coordination deals its slots anew). */
  readonly onPeerGone?: (routerId: string) => void
  /** Told of each kill another router vetoed (for metrics). */
  readonly onVeto?: (serviceId: string, instanceId: string, vetoedBy: readonly string[]) => void
  /** Bound on a wants or eject call to a peer. */
  readonly peerTimeoutMs?: number
  /**
   * The leader is about to collect a version: this router holds its new requests for it for
   * `periodMs` (they wait, then start it afresh) and says yes, or says no (a veto) if it carries,
   * waits for or starts a request for the version, or served one after `lastActiveAt` (the
   * leader's verdict came from load reports up to a publish interval old; undefined when the
   * verdict is not about idleness: a stale or broken version goes with nothing outstanding,
   * however recently it was asked for). Absent: always yes.
   */
  readonly holdForCollection?: (serviceId: string, lastActiveAt: number | undefined, periodMs: number) => boolean
  /** The collection this router held requests for is over (done, failed, or vetoed elsewhere). */
  readonly releaseCollectionHold?: (serviceId: string, deleted: boolean) => void
  /** The leader collected a version: for this reason, idle since `lastActiveAt` (what the keep-alive learns of it). */
  readonly collectedByLeader?: (serviceId: string, reason: CollectReason, lastActiveAt: number, forget: boolean) => void
  /**
   * The leader this router knows of. A collection asked for by another router is vetoed: an
   * old leader's question that arrives late, or a new one's that arrives before this router heard
   * of the change (whose hold the change would then let go of, and whose collection could then cut
   * a request; vetoed, it is asked again at the next GC round). Another router's word that a
   * collection is over releases nothing either: the hold is the known leader's. Absent: not checked.
   */
  readonly leaderId?: () => string | undefined
  /** How often the wants of requests still waiting are told again (default 1 s). */
  readonly wantsRepeatMs?: number
}

/** Why the leader collects a version (the GC's reasons); only an idle one is judged by when it was last used. */
export type CollectReason = 'idle' | 'stale' | 'broken' | 'orphaned'

/** How long a peer holds its requests for a version the leader collects, at most (a collection that takes longer lets them go on). */
const COLLECT_HOLD_MS = 30_000

/** A peer's wants expire unless repeated: a router that died stops being lent to. */
const WANT_TTL_MS = 3000
const WANT_REPEAT_MS = 1000
/** Versions one wants message may name (a router with more waiting sends several). */
const MAX_WANTS_PER_MESSAGE = 1000
/**
 * How long a lender keeps a slot after its offer ended without an answer (the connection broke):
 * a borrower that lives on carries its request as its own and reports it in its load (published
 * every 500 ms) before the lender may use the slot again.
 */
const HANDOVER_MS = 1500

/** An offer under way: its lease, and how to end it early. */
interface Offer {
  readonly routerId: string
  readonly lease: Lease
  readonly abort: AbortController
}

interface RemoteWant {
  waiting: number
  until: number
  /**
   * Instances the peer declined an offer of while requests waited there (ejected there, out of
   * its rotation, not known there yet): other instances' slots are lent to it instead, until it
   * tells its wants again (each second, and at once when its rotation grows), which may be
   * because it can take them now.
   */
  declined: Set<string> | undefined
}

export class SlotExchange implements SlotSharing {
  readonly #o: SlotExchangeOptions
  readonly #key: string
  /** Short calls (wants, ejects): a bounded pool. */
  readonly #agent = new Agent({ keepAliveTimeout: 30_000, connections: 64 })
  /**
   * Offers, each held open for as long as the borrowed request runs: a pool of their own, so
   * that however many are out, a want or a kill's eject never waits behind them. Bounded by the
   * slots this router holds (each offer holds one).
   */
  readonly #offerAgent = new Agent({ keepAliveTimeout: 30_000, connections: null })
  /**
   * A kill's or a collection's question, each held open as long as the hold it asks for (10 s,
   * 30 s) so that a late yes is heard: a pool of their own, so that a silent peer's open ones
   * never queue a want or a probe. Bounded by the leader's kills (three a tick) and collections.
   */
  readonly #holdAgent = new Agent({ keepAliveTimeout: 30_000, connections: null })
  readonly #offers = new Set<Offer>()
  /**
   * Requests running here on slots peers lent, by lender: each is adopted (counted and reported
   * as this router's own) once its lender leaves this router's view, before this router's next
   * report deals without the lender. Bounded by the requests this router carries.
   */
  readonly #borrowed = new Map<string, Set<() => void>>()
  /** Handover holds of leases whose offer broke, released early when the router stops. */
  readonly #handovers = new Map<ReturnType<typeof setTimeout>, Lease>()
  #lending = true
  /** Cut off from etcd and disowned by a peer (or unable to reach any): no slot of its own until etcd is back. */
  #fenced = false
  /** When each peer was last probed because another router dealt it out. */
  readonly #probedAt = new Map<string, number>()
  #fenceCheck: Promise<void> | undefined
  /** version id → instance id → concurrency-level → limit, valid until the slot view changes. */
  #limits = new Map<string, Map<string, number>>()
  /** This router's waiting requests per version, as last told to peers. */
  readonly #waiting = new Map<string, number>()
  /** Versions whose waiting count changed since the last wants message. */
  readonly #changed = new Set<string>()
  #flushScheduled = false
  /** version id → router id → what that router has waiting. */
  readonly #remote = new Map<string, Map<string, RemoteWant>>()
  readonly #repeat: ReturnType<typeof setInterval>
  #closed = false

  constructor(options: SlotExchangeOptions) {
    this.#o = options
    this.#key = peerKey(options.secret)
    this.#repeat = setInterval(() => {
      this.#repeatWants()
      this.#checkFence().catch((err: unknown) => this.#o.log.warn({ err }, 'fence check failed'))
    }, options.wantsRepeatMs ?? WANT_REPEAT_MS)
    this.#repeat.unref()
  }

  /** The value of PEER_KEY_HEADER that routers of this cluster send. */
  get key(): string {
    return this.#key
  }

  /** Whether a peer call carries this cluster's key. */
  authorized(given: string | undefined): boolean {
    if (given === undefined) return false
    const a = Buffer.from(given)
    const b = Buffer.from(this.#key)
    return a.length === b.length && timingSafeEqual(a, b)
  }

  /** Membership or a peer's report changed: limits are dealt again, and waiting requests may fit now. */
  viewChanged(): void {
    this.#limits = new Map()
    const view = this.#o.view()
    // A borrower that left the cluster (dead, or cut off) may never answer: its offers end now.
    const live = new Set(view.peers.filter((p) => p.url !== undefined).map((p) => p.routerId))
    for (const offer of this.#offers) if (!live.has(offer.routerId)) offer.abort.abort()
    // A lender gone from the view (it left, or was found dead; its offer's connection may not
    // have broken yet): its slots are dealt among the others now, and the requests it lent
    // them to must count here from this moment, or two routers could fill the one slot.
    for (const [lender, adoptions] of this.#borrowed) {
      if (view.members.includes(lender)) continue
      this.#borrowed.delete(lender)
      for (const adopt of adoptions) adopt()
    }
    this.#probeMissing(view)
    this.#o.tracker.redispatch()
  }

  /**
   * A member that another router deals without (it found it dead) is checked from here too, so
   * that every router re-deals a dead router's slots, not only the one that called it first.
   */
  #probeMissing(view: SlotView): void {
    const now = this.#o.clock.now()
    const present = new Set(view.peers.map((p) => p.routerId))
    for (const routerId of this.#probedAt.keys()) if (!present.has(routerId)) this.#probedAt.delete(routerId)
    for (const peer of view.peers) {
      if (peer.url === undefined || (this.#probedAt.get(peer.routerId) ?? 0) > now - WANT_REPEAT_MS) continue
      const dealtOut = view.peers.some((other) => other.routerId !== peer.routerId && other.members !== undefined && other.members.includes(this.#o.routerId) && !other.members.includes(peer.routerId))
      if (!dealtOut) continue
      this.#probedAt.set(peer.routerId, now)
      this.#callJson(peer.url, 'member', { routerId: this.#o.routerId }).catch((err: unknown) => this.#noteFailure(peer.routerId, err))
    }
  }

  limit(serviceId: string, instanceId: string, concurrencyLevel: number): number {
    if (this.#fenced) return 0
    let byInstance = this.#limits.get(serviceId)
    const key = `${instanceId}\u0000${concurrencyLevel}`
    const known = byInstance?.get(key)
    if (known !== undefined) return known
    const view = this.#o.view()
    // Just joined: its peers may not have seen its claims yet. It borrows meanwhile.
    if (view.settling) return 0
    const claims = view.peers.map((p: PeerReport) => ({ routerId: p.routerId, members: p.members, over: p.over(serviceId, instanceId) }))
    const limit = slotLimit(instanceId, concurrencyLevel, view.members, this.#o.routerId, claims)
    if (byInstance === undefined) this.#limits.set(serviceId, (byInstance = new Map()))
    byInstance.set(key, limit)
    return limit
  }

  queueChanged(serviceId: string, queued: number): void {
    if ((this.#waiting.get(serviceId) ?? 0) === queued) return
    if (queued === 0) this.#waiting.delete(serviceId)
    else this.#waiting.set(serviceId, queued)
    this.#wantsChanged(serviceId)
  }

  rotationGrew(serviceId: string, queued: number): void {
    // A peer that offered one of them while this router could not take it (it did not know the
    // instance yet, or had it out of rotation) was declined and stopped lending here until told
    // again: told now, not at the next repeat (up to a second of an idle slot while requests wait).
    this.#waiting.set(serviceId, queued)
    this.#wantsChanged(serviceId)
  }

  #wantsChanged(serviceId: string): void {
    this.#changed.add(serviceId)
    if (this.#flushScheduled) return
    // One message per peer for everything that changed in this turn of the event loop.
    this.#flushScheduled = true
    setImmediate(() => {
      this.#flushScheduled = false
      const changed = [...this.#changed]
      this.#changed.clear()
      this.#sendWants(changed)
    })
  }

  slotFree(serviceId: string): void {
    if (this.#remote.has(serviceId)) this.#lend(serviceId)
  }

  /** A peer says how many requests wait there, per version. */
  receiveWants(from: string, wants: Readonly<Record<string, number>>): void {
    const until = this.#o.clock.now() + WANT_TTL_MS
    for (const [serviceId, waiting] of Object.entries(wants)) {
      let routers = this.#remote.get(serviceId)
      if (waiting <= 0) {
        routers?.delete(from)
        if (routers?.size === 0) this.#remote.delete(serviceId)
        continue
      }
      if (routers === undefined) this.#remote.set(serviceId, (routers = new Map()))
      routers.set(from, { waiting, until, declined: undefined })
    }
    for (const [serviceId, waiting] of Object.entries(wants)) if (waiting > 0) this.#lend(serviceId)
  }

  /**
   * A peer lends a slot of an instance: resolves with how the request that took it went, or
   * undefined at once if nobody here waits for it.
   */
  receiveOffer(serviceId: string, instanceId: string, lender: string): { readonly outcome: Promise<ReleaseOutcome>; lenderGone(): void } | 'instance-declined' | undefined {
    // A lender already gone from this view: its slots are being dealt to others.
    if (!this.#o.view().members.includes(lender)) return undefined
    let done: (outcome: ReleaseOutcome) => void = () => undefined
    const outcome = new Promise<ReleaseOutcome>((resolve) => (done = resolve))
    let adoptions = this.#borrowed.get(lender)
    let adopt: (() => void) | undefined
    const forget = (): void => {
      if (adopt === undefined || adoptions?.delete(adopt) !== true) return
      if (adoptions.size === 0 && this.#borrowed.get(lender) === adoptions) this.#borrowed.delete(lender)
    }
    const granted = this.#o.tracker.grantBorrowed(serviceId, instanceId, (result) => {
      forget()
      done(result)
    })
    // Requests wait here, but that instance cannot take them here (ejected, out of rotation, not
    // known yet): the lender is told so, and lends a slot of another instance instead.
    if (granted === undefined) return (this.#waiting.get(serviceId) ?? 0) > 0 ? 'instance-declined' : undefined
    adopt = (): void => {
      forget()
      granted()
    }
    if (adoptions === undefined) this.#borrowed.set(lender, (adoptions = new Set()))
    adoptions.add(adopt)
    // The lender stops counting the request if its offer's connection breaks (or it leaves this
    // router's view): from then on it is counted here (and reported as over this router's
    // share), so the slot is never used twice.
    return { outcome, lenderGone: adopt }
  }

  /** Whether this router counts `routerId` among the live members (asked by a router cut off from etcd). */
  /** Versions with wants held (expired or not): bounded by what was asked for in the last few seconds. */
  get wantsHeld(): number {
    return this.#remote.size
  }

  receiveMemberQuery(routerId: string): boolean {
    return this.#o.view().members.includes(routerId)
  }

  /** Whether this router fills no slot of its own (cut off from etcd, and disowned by its peers). */
  get fenced(): boolean {
    return this.#fenced
  }

  /** Runs the fence check now (the timer runs it every second); resolves when it is done. */
  checkFence(): Promise<void> {
    return this.#checkFence()
  }

  #checkFence(): Promise<void> {
    this.#fenceCheck ??= this.#decideFence().finally(() => (this.#fenceCheck = undefined))
    return this.#fenceCheck
  }

  async #decideFence(): Promise<void> {
    const view = this.#o.view()
    let fenced = false
    if (view.cutOff) {
      const peers = view.peers.filter((p) => p.url !== undefined)
      const answers = await Promise.all(
        peers.map((p) =>
          withDeadline(this.#callJson(p.url as string, 'member', { routerId: this.#o.routerId }), this.#o.peerTimeoutMs ?? 1000).then(
            (body) => (body as { member?: unknown }).member === true,
            () => undefined,
          ),
        ),
      )
      fenced = answers.includes(false) || (peers.length > 0 && answers.every((a) => a === undefined))
    }
    if (fenced !== this.#fenced) {
      this.#fenced = fenced
      this.#o.log.warn({ routerId: this.#o.routerId, fenced }, fenced ? 'cut off from etcd and no longer a member for the others: filling no slot of its own' : 'slot shares restored')
      this.viewChanged()
    }
  }

  /** The leader prepares a kill: false (a veto) if this router carries a request on the instance. */
  receiveEject(serviceId: string, instanceId: string, periodMs: number): boolean {
    if (periodMs === 0) {
      // The kill was vetoed by another router: the instance is back in rotation here at once.
      this.#o.tracker.cancelKillHold(serviceId, instanceId)
      return true
    }
    return this.#o.tracker.ejectForKill(serviceId, instanceId, Math.min(periodMs, this.#o.killEjectMs))
  }

  /**
   * Asks every peer to take an instance out of rotation before the leader kills it: true only if
   * every one agreed. A peer that cannot be asked may be carrying a request on it: that is a no.
   */
  async allowKill(serviceId: string, instanceId: string): Promise<boolean> {
    // (The question waits for its answer as long as the hold it asks for lasts: see #askEveryPeer.)
    const vetoed = await this.#askEveryPeer((url) => this.#call(url, 'eject', { serviceId, instanceId, periodMs: this.#o.killEjectMs }, this.#o.killEjectMs), (url) => this.#call(url, 'eject', { serviceId, instanceId, periodMs: 0 }))
    if (vetoed.length > 0) {
      this.#o.log.info({ service: serviceId, instance: instanceId, vetoedBy: vetoed }, 'kill vetoed by routers that carry requests on the instance (or could not be asked)')
      this.#o.onVeto?.(serviceId, instanceId, vetoed)
    }
    return vetoed.length === 0
  }

  /**
   * Asks every peer to `hold` (a kill's eject, a collection's hold): the routers that said no,
   * or gave no answer within the peer timeout (one that cannot be asked may be using what is
   * asked for). With any no, every peer that said yes is told to `release`: those that answered
   * in time at once, one too slow (a no here, yet it holds once the question reaches it) as soon
   * as its yes comes, so that the release cannot overtake the hold it lifts. (`hold` keeps its
   * call open for as long as the hold would last, so a late yes is still heard.)
   */
  async #askEveryPeer(hold: (url: string) => Promise<number>, release: (url: string) => Promise<number>): Promise<string[]> {
    const peers = this.#o.view().peers.filter((p) => p.url !== undefined)
    const inTime = (peer: PeerReport, answer: Promise<number>): Promise<boolean> =>
      withDeadline(answer, this.#o.peerTimeoutMs ?? 1000).then((status) => status === 200, (err: unknown) => {
        this.#noteFailure(peer.routerId, err)
        return false
      })
    const asked = peers.map((p) => hold(p.url as string))
    const answers = await Promise.all(peers.map((p, i) => inTime(p, asked[i] as Promise<number>)))
    const vetoed = peers.filter((_, i) => !answers[i]).map((p) => p.routerId)
    if (vetoed.length === 0) return vetoed
    for (const [i, peer] of peers.entries()) {
      if (answers[i]) continue
      void (asked[i] as Promise<number>).then((status) => (status === 200 ? inTime(peer, release(peer.url as string)) : undefined), () => undefined)
    }
    await Promise.all(peers.filter((_, i) => answers[i]).map((p) => inTime(p, release(p.url as string))))
    return vetoed
  }

  /** The leader prepares a collection of a version: false (a veto) if this router is using it. */
  receiveCollect(serviceId: string, lastActiveAt: number, periodMs: number, reason: CollectReason, deleted = false, forget = false, askedBy?: string): boolean {
    // (A router from before this was told names no asker: not checked.)
    const notTheLeader = askedBy !== undefined && this.#o.leaderId !== undefined && askedBy !== this.#o.leaderId()
    if (periodMs === 0) {
      // An old leader's word that its collection is over says nothing of the one the leader
      // this router knows may have asked it to hold for since (that one's hold stays).
      if (!notTheLeader) this.#o.releaseCollectionHold?.(serviceId, deleted)
      // (A leader from before this was told sends no last activity: 0, nothing to learn from.)
      if (deleted && lastActiveAt > 0) this.#o.collectedByLeader?.(serviceId, reason, lastActiveAt, forget)
      return true
    }
    if (notTheLeader) {
      this.#o.log.debug({ service: serviceId, askedBy, leader: this.#o.leaderId() }, 'collection vetoed: asked by a router this one does not know as the leader')
      return false
    }
    return this.#o.holdForCollection?.(serviceId, reason === 'idle' ? lastActiveAt : undefined, Math.min(periodMs, COLLECT_HOLD_MS)) ?? true
  }

  /**
   * Asks every peer to hold its requests for a version before the leader collects it: true only
   * if every one agreed. A peer that cannot be asked may be serving it: that is a no, as for kills.
   * Those that agreed are released by collectDone(), or when the veto of another makes it moot.
   */
  async allowCollect(serviceId: string, lastActiveAt: number, reason: CollectReason): Promise<boolean> {
    const ask = (periodMs: number) => (url: string): Promise<number> => this.#call(url, 'collect', { serviceId, lastActiveAt, periodMs, reason, leader: this.#o.routerId }, periodMs === 0 ? undefined : periodMs)
    const vetoed = await this.#askEveryPeer(ask(COLLECT_HOLD_MS), ask(0))
    if (vetoed.length > 0) this.#o.log.info({ service: serviceId, vetoedBy: vetoed }, 'collection vetoed by routers that use the version (or could not be asked)')
    return vetoed.length === 0
  }

  /** The collection is over (`deleted`: it took the version): every peer lets the requests it held for it go on. */
  async collectDone(serviceId: string, collected: { readonly reason: CollectReason; readonly lastActiveAt: number; readonly forget?: boolean } | undefined): Promise<void> {
    const peers = this.#o.view().peers.filter((p) => p.url !== undefined)
    const body = collected === undefined ? { serviceId, lastActiveAt: 0, periodMs: 0, deleted: false, leader: this.#o.routerId } : { serviceId, lastActiveAt: collected.lastActiveAt, periodMs: 0, deleted: true, reason: collected.reason, leader: this.#o.routerId, ...(collected.forget === true ? { forget: true } : {}) }
    await Promise.all(peers.map((peer) =>
      withDeadline(this.#call(peer.url as string, 'collect', body), this.#o.peerTimeoutMs ?? 1000).catch((err: unknown) => {
        // Its hold lapses by itself (COLLECT_HOLD_MS) if it cannot be told.
        this.#noteFailure(peer.routerId, err)
      }),
    ))
  }

  /** Puts an instance back in rotation at every peer: the kill they agreed to is not coming (it failed, or this router stopped leading). */
  async cancelKill(serviceId: string, instanceId: string): Promise<void> {
    const peers = this.#o.view().peers.filter((p) => p.url !== undefined)
    await Promise.all(peers.map((peer) =>
      withDeadline(this.#call(peer.url as string, 'eject', { serviceId, instanceId, periodMs: 0 }), this.#o.peerTimeoutMs ?? 1000).catch((err: unknown) => {
        // Its hold lapses by itself (killEjectMs) if it cannot be told.
        this.#noteFailure(peer.routerId, err)
      }),
    ))
  }

  /**
   * Ends every offer still out (their borrowers carry the requests as their own from then on)
   * and every handover hold, without waiting for borrowed requests to finish.
   */
  async close(): Promise<void> {
    this.#closed = true
    this.#lending = false
    clearInterval(this.#repeat)
    for (const offer of this.#offers) offer.abort.abort()
    for (const [timer, lease] of this.#handovers) {
      clearTimeout(timer)
      lease.release('client-error')
    }
    this.#handovers.clear()
    await Promise.all([this.#agent.destroy().catch(() => undefined), this.#offerAgent.destroy().catch(() => undefined), this.#holdAgent.destroy().catch(() => undefined)])
  }

  #lend(serviceId: string): void {
    const routers = this.#remote.get(serviceId)
    if (routers === undefined || this.#closed || !this.#lending) return
    const now = this.#o.clock.now()
    for (const [routerId, want] of routers) if (want.until <= now || want.waiting <= 0) routers.delete(routerId)
    if (routers.size === 0) {
      this.#remote.delete(serviceId)
      return
    }
    const peers = new Map(this.#o.view().peers.map((p) => [p.routerId, p.url]))
    for (;;) {
      // The neediest first; one that declined every free instance gives way to the next.
      const needy = [...routers].filter(([routerId, want]) => want.waiting > 0 && peers.get(routerId) !== undefined).sort((a, b) => b[1].waiting - a[1].waiting)
      let lent = false
      for (const [routerId, want] of needy) {
        const lease = this.#o.tracker.lend(serviceId, want.declined)
        if (lease === undefined) continue
        want.waiting -= 1
        void this.#offer(peers.get(routerId) as string, routerId, serviceId, lease, want)
        lent = true
        break
      }
      if (!lent) return
    }
  }

  async #offer(url: string, routerId: string, serviceId: string, lease: Lease, want: RemoteWant): Promise<void> {
    const offer: Offer = { routerId, lease, abort: new AbortController() }
    this.#offers.add(offer)
    let outcome: ReleaseOutcome | undefined
    try {
      const res = await request(`${url}${PEER_PATH_PREFIX}offer`, {
        method: 'POST',
        dispatcher: this.#offerAgent,
        headers: { 'content-type': 'application/json', [PEER_KEY_HEADER]: this.#key },
        body: JSON.stringify({ from: this.#o.routerId, serviceId, instanceId: lease.instance.id }),
        // The answer comes when the borrowed request is over, however long that takes.
        headersTimeout: 0,
        bodyTimeout: 0,
        signal: offer.abort.signal,
      })
      const body = (await res.body.json().catch(() => ({}))) as { outcome?: unknown; 'instance-declined'?: unknown }
      if (res.statusCode === 200 && isOutcome(body.outcome)) outcome = body.outcome
      else if (res.statusCode === 409 && body['instance-declined'] === true) {
        // Requests wait there, but not for this instance (ejected there, say, after one 503 of
        // its): the slot goes back, and a slot of another instance is lent instead.
        outcome = 'client-error'
        const current = this.#remote.get(serviceId)?.get(routerId)
        if (current !== undefined) {
          // The request this offer was for waits still, unless the peer told its wants anew since.
          if (current === want) current.waiting += 1
          current.declined ??= new Set()
          current.declined.add(lease.instance.id)
        }
      } else if (res.statusCode !== 200) {
        // Nobody waits there any more: stop lending to it until it says otherwise.
        this.#remote.get(serviceId)?.delete(routerId)
        outcome = 'client-error'
      }
    } catch (err) {
      this.#o.log.debug({ err, peer: routerId, service: serviceId }, 'slot offer ended without an answer')
      this.#noteFailure(routerId, err)
      this.#remote.get(serviceId)?.delete(routerId)
      // The offer never left (nobody listens there: a router that died, or one draining, whose
      // listener is closed): no request of the borrower can hold the slot, so no handover.
      if (neverConnected(err)) outcome = 'client-error'
    } finally {
      this.#offers.delete(offer)
      if (outcome !== undefined || this.#closed) lease.release(outcome ?? 'client-error')
      else {
        // No answer: the borrower may still be running the request, now counted as its own.
        const timer = setTimeout(() => {
          this.#handovers.delete(timer)
          lease.release('client-error')
        }, HANDOVER_MS)
        timer.unref()
        this.#handovers.set(timer, lease)
      }
    }
  }

  #sendWants(serviceIds: readonly string[]): void {
    if (this.#closed || serviceIds.length === 0) return
    for (let i = 0; i < serviceIds.length; i += MAX_WANTS_PER_MESSAGE) {
      const wants: Record<string, number> = {}
      for (const id of serviceIds.slice(i, i + MAX_WANTS_PER_MESSAGE)) wants[id] = this.#waiting.get(id) ?? 0
      for (const peer of this.#o.view().peers) {
        if (peer.url === undefined) continue
        this.#call(peer.url, 'wants', { from: this.#o.routerId, wants }).catch((err: unknown) => {
          this.#o.log.debug({ err, peer: peer.routerId }, 'telling a peer what waits failed')
          this.#noteFailure(peer.routerId, err)
        })
      }
    }
  }

  #repeatWants(): void {
    this.#sendWants([...this.#waiting.keys()])
    // Wants nobody repeated have expired: forgotten here too, not only when a slot of theirs
    // frees (a version collected, a peer gone, would otherwise stay for good).
    const now = this.#o.clock.now()
    for (const [serviceId, routers] of this.#remote) {
      for (const [routerId, want] of routers) if (want.until <= now) routers.delete(routerId)
      if (routers.size === 0) this.#remote.delete(serviceId)
    }
  }

  /** A refused connection means nobody listens at the peer's address any more. */
  #noteFailure(routerId: string, err: unknown): void {
    if ((err as { code?: string } | null)?.code === 'ECONNREFUSED') this.#o.onPeerGone?.(routerId)
  }

  /** A short peer call (wants, eject, member), bounded by the peer timeout. */
  async #post(url: string, what: 'wants' | 'eject' | 'member' | 'collect', body: unknown, timeoutMs?: number): Promise<Dispatcher.ResponseData> {
    return postToPeer({ url, what, key: this.#key, body: JSON.stringify(body), timeoutMs: timeoutMs ?? this.#o.peerTimeoutMs ?? 1000, dispatcher: timeoutMs === undefined ? this.#agent : this.#holdAgent })
  }

  async #callJson(url: string, what: 'member', body: unknown): Promise<unknown> {
    const res = await this.#post(url, what, body)
    if (res.statusCode !== 200) {
      await res.body.dump()
      throw new Error(`status ${res.statusCode}`)
    }
    return res.body.json()
  }

  async #call(url: string, what: 'wants' | 'eject' | 'collect', body: unknown, timeoutMs?: number): Promise<number> {
    const res = await this.#post(url, what, body, timeoutMs)
    await res.body.dump()
    return res.statusCode
  }
}

/**
 * Failures before a connection was made: nothing of the call reached the peer. (Not a socket
 * error or a reset: the offer may have been written by then.)
 */
const BEFORE_CONNECTING = new Set(['ECONNREFUSED', 'UND_ERR_CONNECT_TIMEOUT', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL'])
function neverConnected(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code
  return typeof code === 'string' && BEFORE_CONNECTING.has(code)
}

/** The key routers of one cluster prove themselves with: derived from the shared secret, never the secret itself. */
export function peerKey(secret: string): string {
  return createHmac('sha256', secret).update('maitre-peer-v1').digest('hex')
}

const OUTCOMES = new Set<string>(['success', 'instance-error', 'instance-busy', 'client-error', 'generic-error'])
function isOutcome(value: unknown): value is ReleaseOutcome {
  return typeof value === 'string' && OUTCOMES.has(value)
}

/** Rejects when `ms` pass first: a call that cannot be answered in time is no answer. */
function withDeadline<T>(work: Promise<T>, ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms)
    work.then(
      (value) => {
        clearTimeout(timer)
        resolve(value)
      },
      (err: unknown) => {
        clearTimeout(timer)
        reject(err)
      },
    )
  })
}
