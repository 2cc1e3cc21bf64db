/**
 * Cluster coordination through etcd: membership, leadership and the load exchange, all bound to
 * one lease per router so that a router that dies (or is cut off) vanishes from all three within
 * the lease TTL, with nobody having to notice it.
 *
 * Keys under the cluster prefix P:
 *   P/routers/<routerId>  this router's Member (lease-bound): the membership list
 *   P/leader              the leader's router id (lease-bound): created only where absent, so one holds it
 *   P/load/<routerId>     this router's per-version load (lease-bound), rewritten when it changes,
 *                         at most every `loadIntervalMs`: O(routers) writes per second, not O(versions);
 *                         with it, the membership this router deals slots by and the requests it
 *                         still carries beyond its share (slot-shares.ts), rewritten at once when
 *                         the membership changes
 *
 * Leadership is held only while the lease is known to be alive: from the moment a keep-alive
 * fails, or none has succeeded for two thirds of the TTL, this router stops acting as leader,
 * before etcd can expire the lease and let another router take over. A lost lease is replaced
 * by a new one, and membership, load and candidacy are re-established on it.
 */
import { hostname } from 'node:os'
import type { Etcd3, Lease } from 'etcd3'
import type { Clock } from '../../clock.ts'
import { MaitreError } from '../../errors.ts'
import type { Logger } from '../../log.ts'
import { NO_LOAD, type Coordination, type Member, type PeerReport, type SlotView, type VersionLoad } from '../coordination.ts'
import { EtcdDirectory } from './etcd-directory.ts'
import { startWatch, dropWatcher, farewell, pause, RETRY_MAX_MS } from './calls.ts'

/** A draining router stands for leader only after the seat stayed empty this long (see #campaign). */
const DRAINING_CAMPAIGN_DELAY_MS = 1000

export interface EtcdCoordinatorOptions {
  readonly client: Etcd3
  /** The cluster prefix, without a trailing slash. */
  readonly prefix: string
  readonly routerId: string
  readonly url: () => string
  /**
   * The URL is this process's own listening address (not a configured `advertiseUrl`, which
   * several routers could share): a membership key advertising it can only be this router's
   * previous life.
   */
  readonly urlIsOwnAddress?: boolean
  /** The machine's name, kept in the membership key (default: the OS's). */
  readonly hostname?: string
  readonly leaseTtlSecs: number
  readonly endpoints: readonly string[]
  /** This router's per-version load, published to the others. */
  readonly localLoads: () => Iterable<readonly [string, VersionLoad]>
  /** Requests this router carries beyond its share of an instance (published with the load). */
  readonly overShare?: () => Iterable<readonly [serviceId: string, instanceId: string, over: number]>
  /** How often the load is compared with what was last published (and rewritten if it changed). */
  readonly loadIntervalMs?: number
  readonly clock: Clock
  readonly log: Logger
  /**
   * Called each time this router joins the cluster again (its lease was lost: etcd was away
   * too long, or came back without its data), to put back what the cluster keeps in etcd
   * outside the stores. Its failure is logged, never fails the join.
   */
  readonly onRejoined?: () => Promise<void>
  /** Called when the leader this router knows of changes (another, or none). */
  readonly onLeaderChanged?: (leaderId: string | undefined) => void
}

/** One router's published load: version id → [in flight, queued, last request time]. */
type LoadDocument = {
  readonly at: number
  readonly versions: Readonly<Record<string, readonly [number, number, number]>>
  /** The membership the router deals slots by. */
  readonly members?: readonly string[]
  /** version id → instance id → requests carried beyond its share. */
  readonly over?: Readonly<Record<string, Readonly<Record<string, number>>>>
  /** It is draining: it refuses new connections but still carries requests on its slots. */
  readonly draining?: boolean
  /** Some versions were left out to keep the report under its bound: it may hold more than it lists. */
  readonly partial?: boolean
}

/**
 * How long a router that (re)joins waits, after publishing the report that claims its shares,
 * before it fills any: every peer subtracts a claim only once its watch has delivered the
 * report, and the limits of all routers together stay within concurrency-level only when each
 * sees every other's claim (slot-shares.ts). Far above a watch's delivery time; meanwhile its
 * requests borrow from the others.
 */
export const SETTLE_MS = 1000

/** A published load stays under etcd's request limit (1.5 MiB by default) with room to spare. */
const MAX_LOAD_BYTES = 1024 * 1024

const isMember = (doc: unknown): string | undefined => {
  const m = doc as Partial<Member> | null
  return m !== null && typeof m === 'object' && typeof m.routerId === 'string' && typeof m.url === 'string' ? undefined : 'is not a router'
}
const isLoad = (doc: unknown): string | undefined => {
  const l = doc as Partial<LoadDocument> | null
  return l !== null && typeof l === 'object' && typeof l.versions === 'object' && l.versions !== null ? undefined : 'is not a load report'
}

/** The longest lease a router may hold (`etcd.leaseTtlSecs` is at most 60). */
const MAX_LEASE_TTL_MS = 60_000

/** The member a membership key holds, as far as it can be read. */
function memberOf(value: Buffer): { url: string | undefined; hostname: string | undefined } | undefined {
  try {
    const member = JSON.parse(value.toString('utf8')) as Partial<Member> | null
    if (member === null || typeof member !== 'object') return undefined
    return { url: typeof member.url === 'string' ? member.url : undefined, hostname: typeof member.hostname === 'string' ? member.hostname : undefined }
  } catch {
    return undefined
  }
}

/** Versions whose last request on another router this one remembers (see #lastRequestSeen). */
const MAX_VERSIONS_REMEMBERED = 100_000

export class EtcdCoordinator implements Coordination {
  readonly mode = 'etcd'
  readonly routerId: string
  readonly endpoints: readonly string[]
  readonly #options: EtcdCoordinatorOptions
  readonly #client: Etcd3
  readonly #leaderKey: string
  readonly #memberKey: string
  readonly #loadKey: string
  readonly #ttlMs: number
  readonly #members: EtcdDirectory<Member>
  readonly #loads: EtcdDirectory<LoadDocument>
  #lease: Lease | undefined
  #leaseId: string | undefined
  /** Last time etcd confirmed the lease (a grant or a keep-alive); 0 = not confirmed since a failure. */
  /**
   * When the last request etcd confirmed the lease on was sent (performance.now(): monotonic, so
   * a wall-clock step cannot stretch leadership); 0 = not confirmed since a failure. Counting
   * from the send, not the answer, keeps the window inside etcd's own however late the answer
   * is handled.
   */
  #confirmedAt = 0
  /** When etcd last confirmed a lease of this router (never zeroed): how long it has been cut off. */
  #lastConfirmedAt = performance.now()
  /** Send times of keep-alives not yet answered, oldest first (answers come in order on the stream). */
  #keepalivesSent: number[] = []
  #leader: { routerId: string; lease: string } | undefined
  #publishedLoad = ''
  #slotView: SlotView | undefined
  /**
   * Members a peer found dead (its port refused a connection: the process is gone), left out of
   * the slot view until their membership key changes (a restart joins anew) or goes.
   */
  readonly #suspects = new Map<string, number>()
  /** The last load published carries requests beyond this router's share: publish fast until they drain. */
  #overPending = false
  /** Until then (performance.now()), this router fills no slot of its own: it has just (re)joined. */
  #settledAt = Number.POSITIVE_INFINITY
  #settleTimer: ReturnType<typeof setTimeout> | undefined
  #draining = false
  /** It handed the leadership over at its drain: it acts as leader no more, whatever its watch still says. */
  #resigned = false
  readonly #slotViewListeners = new Set<() => void>()
  /** The write of this router's load key under way, if any. */
  #publishing: Promise<void> | undefined
  /** The write that follows it, for what changed after it read the load (one, shared by every caller meanwhile). */
  #publishAfter: Promise<void> | undefined
  #cancelLoadTimer: (() => void) | undefined
  #closed = false
  /** Ends the retry pauses when the store or coordinator closes, so nothing outlives it. */
  readonly #closing = new AbortController()
  readonly #startedAt: number

  private constructor(options: EtcdCoordinatorOptions, members: EtcdDirectory<Member>, loads: EtcdDirectory<LoadDocument>) {
    this.#options = options
    this.#client = options.client
    this.routerId = options.routerId
    this.endpoints = options.endpoints
    this.#leaderKey = `${options.prefix}/leader`
    this.#memberKey = `${options.prefix}/routers/${encodeURIComponent(options.routerId)}`
    this.#loadKey = `${options.prefix}/load/${encodeURIComponent(options.routerId)}`
    this.#ttlMs = options.leaseTtlSecs * 1000
    this.#members = members
    this.#loads = loads
    this.#startedAt = options.clock.now()
    members.onChange((key) => {
      this.#suspects.delete(key)
      this.#slotViewChanged()
      // Peers learn at once which membership this router now deals by, so slots change hands fast.
      void this.#publishLoad()
    })
    loads.onChange((key) => {
      // A suspect that reports itself draining was refusing connections, not dead.
      if (this.#suspects.has(key) && loads.get(key)?.draining === true) this.#suspects.delete(key)
      this.#noteLastRequests(key)
      this.#slotViewChanged()
    })
    for (const [key] of loads.entries()) this.#noteLastRequests(key)
  }

  /**
   * The latest request each version had on any router, as the reports showed it. A router's report
   * goes with the router (a scale-down, a crash): without this, the fleet would forget that a
   * version was used a moment ago there, and the leader collect it as idle since long before.
   * Bounded: the versions least recently reported go first.
   */
  readonly #lastRequestSeen = new Map<string, number>()

  #noteLastRequests(routerId: string): void {
    if (routerId === this.routerId) return
    const report = this.#loads.get(routerId)
    if (report === undefined) return
    for (const [serviceId, entry] of Object.entries(report.versions)) {
      const at = entry[2]
      const seen = this.#lastRequestSeen.get(serviceId)
      if (seen !== undefined && seen >= at) continue
      this.#lastRequestSeen.delete(serviceId)
      this.#lastRequestSeen.set(serviceId, at)
      if (this.#lastRequestSeen.size > MAX_VERSIONS_REMEMBERED) this.#lastRequestSeen.delete(this.#lastRequestSeen.keys().next().value as string)
    }
  }

  static async start(options: EtcdCoordinatorOptions): Promise<EtcdCoordinator> {
    const members = await EtcdDirectory.open<Member>(options.client, `${options.prefix}/routers/`, 'router', isMember, options.log)
    let loads: EtcdDirectory<LoadDocument>
    try {
      loads = await EtcdDirectory.open<LoadDocument>(options.client, `${options.prefix}/load/`, 'load report', isLoad, options.log)
    } catch (err) {
      await members.close()
      throw err
    }
    const coordinator = new EtcdCoordinator(options, members, loads)
    // A start that fails part-way lets go of all it began (watches, a lease and its keep-alives,
    // the rejoin its loss would start): the caller never gets the coordinator to close.
    try {
      await coordinator.#waitForOwnId()
      await coordinator.#watchLeader()
      await coordinator.#join()
    } catch (err) {
      await coordinator.close()
      throw err
    }
    coordinator.#scheduleLoad()
    return coordinator
  }

  isLeader(): boolean {
    const leader = this.#leader
    return (
      !this.#closed &&
      !this.#resigned &&
      leader !== undefined &&
      leader.lease === this.#leaseId &&
      this.#confirmedAt > 0 &&
      performance.now() - this.#confirmedAt < (this.#ttlMs * 2) / 3
    )
  }

  leaderId(): string | undefined {
    return this.#leader?.routerId
  }

  members(): readonly Member[] {
    return [...this.#members.entries()].map(([, member]) => member).sort((a, b) => a.routerId.localeCompare(b.routerId))
  }

  peerLoad(serviceId: string): VersionLoad {
    let inFlight = 0
    let queued = 0
    let lastRequestAt = 0
    for (const [routerId, report] of this.#loads.entries()) {
      if (routerId === this.routerId) continue
      const entry = report.versions[serviceId]
      if (entry === undefined) continue
      inFlight += entry[0]
      queued += entry[1]
      lastRequestAt = Math.max(lastRequestAt, entry[2])
    }
    lastRequestAt = Math.max(lastRequestAt, this.#lastRequestSeen.get(serviceId) ?? 0)
    return inFlight === 0 && queued === 0 && lastRequestAt === 0 ? NO_LOAD : { inFlight, queued, lastRequestAt }
  }

  slotView(): SlotView {
    this.#slotView ??= this.#readSlotView()
    const now = performance.now()
    const cutOff = now - this.#lastConfirmedAt >= this.#ttlMs
    const settling = now < this.#settledAt
    return cutOff === this.#slotView.cutOff && settling === this.#slotView.settling ? this.#slotView : (this.#slotView = { ...this.#slotView, cutOff, settling })
  }

  onSlotViewChange(listener: () => void): () => void {
    this.#slotViewListeners.add(listener)
    return () => this.#slotViewListeners.delete(listener)
  }

  #slotViewChanged(): void {
    this.#slotView = undefined
    for (const listener of this.#slotViewListeners) listener()
  }

  /**
   * A peer refused a connection (its process is gone): its slots are dealt among the others now
   * rather than when its lease lapses. A router that restarts under the same id must wait out its
   * old membership key before it joins, so nothing it does can clash with the re-dealt slots.
   */
  suspect(routerId: string): void {
    if (routerId === this.routerId || this.#suspects.has(routerId) || !this.#members.has(routerId)) return
    // A draining router refuses new connections while it finishes what it carries: not dead.
    if (this.#loads.get(routerId)?.draining === true) return
    this.#suspects.set(routerId, performance.now())
    this.#options.log.warn({ routerId }, 'peer refused a connection: dealing its slots among the others until its lease lapses')
    this.#slotViewChanged()
    void this.#publishLoad()
  }

  #readSlotView(): SlotView {
    const members = new Map<string, Member>([...this.#members.entries()].map(([, m]) => [m.routerId, m]).filter(([id]) => !this.#suspects.has(id as string)) as [string, Member][])
    const ids = [...new Set([...members.keys(), this.routerId])].sort()
    const peers: PeerReport[] = []
    const reported = new Set<string>()
    for (const [routerId, report] of this.#loads.entries()) {
      if (routerId === this.routerId || this.#suspects.has(routerId)) continue
      reported.add(routerId)
      const over = report.over ?? {}
      peers.push({ routerId, url: members.get(routerId)?.url, members: Array.isArray(report.members) ? report.members : undefined, over: (s, i) => over[s]?.[i] ?? 0, draining: report.draining === true })
    }
    for (const [routerId, member] of members) {
      if (routerId !== this.routerId && !reported.has(routerId)) peers.push({ routerId, url: member.url, members: undefined, over: () => 0 })
    }
    return { members: ids, peers, cutOff: false, settling: false }
  }

  /**
   * This router starts draining: its peers learn it before its listener closes (so a refused
   * connection is not taken for its death while it still carries requests). Bounded: etcd may be
   * away, and the drain must not wait on it.
   */
  async announceDraining(): Promise<void> {
    this.#draining = true
    // (A write already under way may carry the old flag: #publishLoad follows it with ours.)
    await Promise.race([Promise.all([this.#publishLoad(), this.#resignForDrain()]), new Promise((resolve) => setTimeout(resolve, 1000).unref())])
  }

  /**
   * A leader that starts draining hands the leadership over at once when another router can
   * take it (a live member that does not drain): kept through the drain, its closed listener
   * refused its followers' calls for up to shutdownTimeoutMs (a Mesos follower's cold starts,
   * kills and deletes, an expiry through any follower), and no one else could lead. It stands no
   * more (#campaign); alone, it keeps leading, so that what it still carries can be scaled.
   */
  async #resignForDrain(): Promise<void> {
    const leaseId = this.#leaseId
    if (leaseId === undefined || this.#leader?.routerId !== this.routerId) return
    const successor = this.members().some((m) => m.routerId !== this.routerId && !this.#suspects.has(m.routerId) && this.#loads.get(m.routerId)?.draining !== true)
    if (!successor) return
    // Stops acting before the key goes: the successor may win its campaign before this router's
    // own watch hears of the delete, and two leaders would act meanwhile.
    this.#resigned = true
    try {
      const result = await this.#client.if(this.#leaderKey, 'Value', '==', this.routerId).and(this.#leaderKey, 'Lease', '==', leaseId).then(this.#client.delete().key(this.#leaderKey)).commit()
      if (result.succeeded) this.#options.log.info({ routerId: this.routerId }, 'draining: leadership handed over')
      else this.#resigned = false
    } catch (err) {
      this.#resigned = false
      this.#options.log.warn({ err, routerId: this.routerId }, 'draining: could not hand the leadership over; it goes with the lease at the stop')
    }
  }

  peerMayHold(serviceId: string): boolean {
    for (const [routerId, report] of this.#loads.entries()) {
      if (routerId === this.routerId) continue
      // A report cut short to its bound may leave out the very version asked about.
      if (Object.hasOwn(report.versions, serviceId) || report.partial === true) return true
    }
    return false
  }

  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    this.#closing.abort()
    if (this.#settleTimer !== undefined) clearTimeout(this.#settleTimer)
    this.#cancelLoadTimer?.()
    const watchers = [this.#leaderWatch, this.#leaderWatchStarting].filter((watcher) => watcher !== undefined)
    this.#leaderWatch = undefined
    this.#leaderWatchStarting = undefined
    // All at once, not one after another: against an etcd that does not answer, each waits out
    // its bound, and a stop should wait that long once. Revoking the lease removes membership,
    // load and leadership at once: the others take over now rather than after the TTL.
    await Promise.all([
      this.#members.close(),
      this.#loads.close(),
      ...watchers.map((watcher) => dropWatcher(watcher, false)),
      ...(this.#lease === undefined ? [] : [farewell(this.#lease.revoke())]),
    ])
  }

  /**
   * Another live router with this router's id would overwrite its membership and load and share
   * its leadership. A key left by this router's previous life goes within one lease TTL (nobody
   * keeps it alive), so that long is waited out; one still held after that is someone else's.
   * The TTL is the old lease's own when it was longer (the previous life ran with a longer
   * `etcd.leaseTtlSecs`): waiting out only this life's would take the previous one for a twin.
   * Counted from when this router began to wait, so a twin that keeps taking new leases cannot
   * push the refusal out; while etcd will not say the old lease's TTL, the longest any router
   * may hold (60 s) is assumed rather than a shorter one that could refuse wrongly.
   */
  async #waitForOwnId(): Promise<void> {
    const waitingSince = performance.now()
    const until = (ttlMs: number): number => waitingSince + Math.max(this.#ttlMs, ttlMs) + 1000
    let deadline = until(0)
    let leaseKnown: string | undefined
    let toldOfFailure = false
    for (;;) {
      const existing = (await this.#client.get(this.#memberKey).exec()).kvs[0]
      if (existing === undefined) return
      if (existing.lease !== leaseKnown) {
        const reply = await this.#client.leaseClient.leaseTimeToLive({ ID: existing.lease }).catch((err: unknown) => {
          if (!toldOfFailure) this.#options.log.warn({ err, routerId: this.routerId }, 'cannot read the lease of the membership key this routerId still has: waiting as long as any lease may last')
          toldOfFailure = true
          return undefined
        })
        const grantedSecs = Number(reply?.grantedTTL)
        if (reply !== undefined) leaseKnown = existing.lease
        deadline = Math.max(deadline, until(reply === undefined ? MAX_LEASE_TTL_MS : Number.isFinite(grantedSecs) ? Math.min(grantedSecs * 1000, MAX_LEASE_TTL_MS) : 0))
      }
      // This router's own previous life (SIGKILLed, OOM-killed, its container restarted): the
      // same id at the very address this process now listens on (its own, not a configured
      // advertiseUrl), on the same machine (an address like 127.0.0.1 repeats across
      // containers), which no other live router can hold: this process holds the address, and
      // the data directory's lock. Its lease goes at once (its membership, load and any leadership with it)
      // rather than after a TTL during which this router could fill no slot.
      const previous = memberOf(existing.value)
      if (this.#options.urlIsOwnAddress === true && previous?.url === this.#options.url() && previous.hostname === (this.#options.hostname ?? hostname())) {
        await this.#client.leaseClient.leaseRevoke({ ID: existing.lease }).catch(() => undefined)
        const still = (await this.#client.get(this.#memberKey).exec()).kvs[0]
        if (still === undefined) return
      }
      if (performance.now() > deadline) {
        const url = previous?.url ?? '?'
        throw new MaitreError('MAITRE_INVALID_CONFIG', `routerId ${this.routerId} is held by another live router (${url}); give each router its own routerId (or data directory)`, { details: { routerId: this.routerId } })
      }
      await new Promise((resolve) => setTimeout(resolve, 250))
    }
  }

  #leaderWatch: Awaited<ReturnType<ReturnType<Etcd3['watch']>['create']>> | undefined
  /** A leader watch asked for and not yet accepted by etcd. */
  #leaderWatchStarting: Awaited<ReturnType<ReturnType<Etcd3['watch']>['create']>> | undefined

  async #watchLeader(): Promise<void> {
    const current = await this.#client.get(this.#leaderKey).exec()
    // Closed while the read was out (a re-watch after a disconnection): a watch started now
    // would be retried by the library on the closed client for as long as the process lives.
    if (this.#closed) return
    const kv = current.kvs[0]
    // (Through #setLeader: a change seen only now, after a disconnection, is told as any other.)
    this.#setLeader(kv === undefined ? undefined : { routerId: kv.value.toString('utf8'), lease: kv.lease })
    const watcher = await startWatch(this.#client.watch().key(this.#leaderKey).startRevision((BigInt(current.header.revision) + 1n).toString()), (w) => (this.#leaderWatchStarting = w))
    this.#leaderWatchStarting = undefined
    if (this.#closed) {
      await dropWatcher(watcher, false)
      return
    }
    this.#leaderWatch = watcher
    watcher.on('put', (put) => {
      this.#setLeader({ routerId: put.value.toString('utf8'), lease: put.lease })
    })
    watcher.on('delete', () => {
      this.#setLeader(undefined)
      void this.#campaign()
    })
    watcher.on('error', (err) => {
      void dropWatcher(watcher, true)
      if (this.#leaderWatch === watcher) this.#leaderWatch = undefined
      if (this.#closed) return
      this.#options.log.warn({ err }, 'etcd leader watch failed: watching again')
      void this.#rewatchLeader()
    })
    // The library would resume the watch past a leader change it never delivered (see
    // EtcdDirectory): the leader key is read again instead, and a vacant seat is campaigned for.
    watcher.on('disconnected', () => {
      if (this.#leaderWatch !== watcher) return
      this.#leaderWatch = undefined
      void dropWatcher(watcher, false)
      if (this.#closed) return
      void this.#rewatchLeader()
    })
  }

  async #rewatchLeader(): Promise<void> {
    for (let delayMs = 250; !this.#closed; delayMs = Math.min(delayMs * 2, RETRY_MAX_MS)) {
      try {
        await this.#watchLeader()
        if (this.#leader === undefined) void this.#campaign()
        return
      } catch (err) {
        this.#options.log.warn({ err, retryInMs: delayMs }, 'etcd leader watch could not be re-established')
        await pause(delayMs, this.#closing.signal)
      }
    }
  }

  #setLeader(leader: { routerId: string; lease: string } | undefined): void {
    const before = this.#leader?.routerId
    this.#leader = leader
    if (leader?.routerId !== before) {
      this.#options.log.info({ leader: leader?.routerId, routerId: this.routerId }, 'cluster leader changed')
      this.#options.onLeaderChanged?.(leader?.routerId)
    }
  }

  /** Grants a lease, registers as a member on it, publishes load and stands for leader. */
  async #join(): Promise<void> {
    const lease = this.#client.lease(this.#options.leaseTtlSecs)
    const grantSentAt = performance.now()
    const leaseId = await lease.grant()
    if (this.#closed) {
      await farewell(lease.revoke())
      return
    }
    this.#lease = lease
    this.#leaseId = leaseId
    this.#confirmedAt = grantSentAt
    this.#lastConfirmedAt = grantSentAt
    this.#keepalivesSent = []
    lease.on('keepaliveEstablished', () => {
      if (this.#lease === lease) this.#keepalivesSent = []
    })
    lease.on('keepaliveFired', () => {
      if (this.#lease !== lease) return
      this.#keepalivesSent.push(performance.now())
      if (this.#keepalivesSent.length > 16) this.#keepalivesSent.shift()
    })
    lease.on('keepaliveSucceeded', () => {
      const sentAt = this.#keepalivesSent.shift()
      if (this.#lease === lease && sentAt !== undefined) {
        this.#confirmedAt = sentAt
        this.#lastConfirmedAt = sentAt
      }
    })
    // A failed keep-alive (its stream reset: an etcd member restarting, a connection cut and
    // made again) changes nothing by itself: etcd cannot expire the lease before the last
    // confirmed renewal's send time plus the TTL, and isLeader() already stops at two thirds of
    // that. Dropping leadership at the first failure made every blip of the stream hand the
    // leader's work (a Mesos framework's subscription, the scaler's smoothing) over and back.
    lease.on('keepaliveFailed', (err: unknown) => {
      if (this.#lease === lease) this.#options.log.debug({ err, routerId: this.routerId }, 'etcd lease keep-alive failed; leadership holds until the renewal window runs out')
    })
    lease.on('lost', (err) => {
      if (this.#lease !== lease || this.#closed) return
      this.#options.log.warn({ err, routerId: this.routerId }, 'etcd lease lost: joining the cluster again')
      this.#confirmedAt = 0
      this.#lease = undefined
      this.#leaseId = undefined
      void this.#rejoin()
    })
    const member: Member = { routerId: this.routerId, url: this.#options.url(), startedAt: this.#startedAt, hostname: this.#options.hostname ?? hostname() }
    // The report first: a member without one is taken to hold every slot until it reports.
    this.#publishedLoad = ''
    // Slots wait until every peer has surely seen the report that claims them (see SETTLE_MS).
    this.#settledAt = performance.now() + SETTLE_MS
    this.#settleTimer = setTimeout(() => this.#slotViewChanged(), SETTLE_MS + 1)
    this.#settleTimer.unref()
    await this.#publishLoad()
    await lease.put(this.#memberKey).value(JSON.stringify(member))
    await this.#campaign()
  }

  async #rejoin(): Promise<void> {
    for (let delayMs = 250; !this.#closed && this.#lease === undefined; delayMs = Math.min(delayMs * 2, RETRY_MAX_MS)) {
      try {
        await this.#join()
        this.#options.log.info({ routerId: this.routerId }, 'joined the cluster again')
        await this.#options.onRejoined?.().catch((err: unknown) => this.#options.log.error({ err }, 'could not restore what the cluster keeps in etcd after joining again'))
        return
      } catch (err) {
        this.#options.log.warn({ err, retryInMs: delayMs }, 'joining the cluster failed')
        const lease = this.#lease as Lease | undefined
        this.#lease = undefined
        this.#leaseId = undefined
        // Bounded: a lease etcd never hears of again lapses by itself, and a retry waits on this.
        if (lease !== undefined) await farewell(lease.revoke())
        await pause(delayMs, this.#closing.signal)
      }
    }
  }

  /**
   * Takes the leader key if nobody holds it (a transaction: one router wins). A call that fails
   * (etcd slow or away) is tried again while this router holds a lease, or the cluster could stay
   * without a leader until the key changes again.
   */
  async #campaign(): Promise<void> {
    let withdrawn = false
    for (let delayMs = 250; ; delayMs = Math.min(delayMs * 2, RETRY_MAX_MS)) {
      const leaseId = this.#leaseId
      if (this.#closed || leaseId === undefined) return
      if (this.#draining) {
        // A draining router stands only when nobody else took the seat in a while (every router
        // drains at once: a deployment deleted), so that what they still carry can be scaled.
        await pause(DRAINING_CAMPAIGN_DELAY_MS, this.#closing.signal)
        if (this.#closed || this.#leader !== undefined || this.#leaseId !== leaseId) return
      }
      try {
        const result = await this.#client
          .if(this.#leaderKey, 'Create', '==', 0)
          .then(this.#client.put(this.#leaderKey).value(this.routerId).lease(leaseId))
          .else(this.#client.get(this.#leaderKey))
          .commit()
        if (result.succeeded) {
          this.#resigned = false
          this.#setLeader({ routerId: this.routerId, lease: leaseId })
        } else {
          const kv = result.responses[0]?.response_range?.kvs[0]
          // (Only while the lease this campaign stood with is still this router's: a campaign that
          // outlived its lease must not withdraw what the next one put.)
          if (kv !== undefined && kv.value.toString('utf8') === this.routerId && kv.lease !== leaseId && leaseId === this.#leaseId && kv.lease !== this.#leaseId && !withdrawn) {
            withdrawn = true
            // This router's own key, bound to a lease it lost (etcd was away for longer than two
            // TTLs): nobody keeps that lease alive, yet etcd, back, would keep the key for up to
            // a TTL more with no leader acting. Withdrawn (if unchanged since), then stood again.
            await this.#client.if(this.#leaderKey, 'Mod', '==', kv.mod_revision).then(this.#client.delete().key(this.#leaderKey)).commit()
            await this.#client.leaseClient.leaseRevoke({ ID: kv.lease }).catch(() => undefined)
            continue
          }
          if (kv !== undefined) this.#setLeader({ routerId: kv.value.toString('utf8'), lease: kv.lease })
        }
        return
      } catch (err) {
        this.#options.log.warn({ err, retryInMs: delayMs }, 'standing for leader failed')
        await pause(delayMs, this.#closing.signal)
      }
    }
  }

  /**
   * A dead router's lease lapses within a TTL of its death, taking its membership key with it. A
   * suspect whose key is still there a TTL (and a second) after it was suspected is alive (say,
   * reachable from others but not from here): it is counted again, claims and all.
   */
  #clearStaleSuspicions(): void {
    let changed = false
    for (const [routerId, since] of this.#suspects) {
      if (performance.now() - since > this.#ttlMs + 1000 && this.#members.has(routerId)) {
        this.#suspects.delete(routerId)
        changed = true
        this.#options.log.warn({ routerId }, 'a suspected peer kept its lease alive: counting it again')
      }
    }
    if (changed) this.#slotViewChanged()
  }

  #scheduleLoad(): void {
    if (this.#closed) return
    this.#clearStaleSuspicions()
    this.#cancelLoadTimer = this.#options.clock.setTimeout(() => {
      void this.#publishLoad().finally(() => this.#scheduleLoad())
    }, this.#overPending ? Math.min(50, this.#options.loadIntervalMs ?? 500) : (this.#options.loadIntervalMs ?? 500))
  }

  /**
   * Rewrites this router's load key when its content changed since the last write; settles once
   * a write that read the load after this call has ended. A write under way read it before (a
   * membership, a draining flag, a request over its share may have changed since): another
   * follows it, or peers could deal by a report this router no longer stands by.
   */
  #publishLoad(): Promise<void> {
    if (this.#publishing === undefined) {
      this.#publishing = this.#writeLoad()
        .catch((err: unknown) => this.#options.log.warn({ err }, 'the load report could not be made'))
        .finally(() => (this.#publishing = undefined))
      return this.#publishing
    }
    const next = (): Promise<void> => {
      this.#publishAfter = undefined
      return this.#publishLoad()
    }
    this.#publishAfter ??= this.#publishing.then(next, next)
    return this.#publishAfter
  }

  async #writeLoad(): Promise<void> {
    const lease = this.#lease
    if (lease === undefined || this.#closed) return
    const entries = [...this.#options.localLoads()].sort((a, b) => b[1].lastRequestAt - a[1].lastRequestAt)
    const versions: Record<string, readonly [number, number, number]> = {}
    let bytes = 0
    let dropped = 0
    for (const [id, load] of entries) {
      bytes += id.length + 48
      if (bytes > MAX_LOAD_BYTES) dropped++
      else versions[id] = [load.inFlight, load.queued, load.lastRequestAt]
    }
    const members = this.slotView().members
    const over: Record<string, Record<string, number>> = {}
    for (const [serviceId, instanceId, n] of this.#options.overShare?.() ?? []) (over[serviceId] ??= {})[instanceId] = n
    const draining = this.#draining
    const text = JSON.stringify([versions, members, over, draining, dropped > 0])
    if (text === this.#publishedLoad) return
    if (dropped > 0) this.#options.log.warn({ dropped }, 'load report over 1 MiB: the least recently used versions were left out')
    try {
      const doc: LoadDocument = { at: this.#options.clock.now(), versions, members, over, ...(draining ? { draining } : {}), ...(dropped > 0 ? { partial: true } : {}) }
      await lease.put(this.#loadKey).value(JSON.stringify(doc))
      this.#publishedLoad = text
      // While requests run beyond this router's share, a peer waits for the report that they
      // ended before it takes the slots: check every 50 ms until then, not every 500.
      this.#overPending = Object.keys(over).length > 0
    } catch (err) {
      this.#options.log.debug({ err }, 'publishing load failed (etcd unreachable?); trying again')
    }
  }
}
