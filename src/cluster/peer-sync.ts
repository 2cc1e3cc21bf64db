/**
 * Read-your-writes across routers, as Waiter's POST /tokens/refresh gives it: a write to the
 * shared state (a token, a version's record, an override, a suspension) is answered only once
 * every live peer has read it from etcd (POST /maitre-peer/refresh), or the sync timeout has
 * passed. A client that writes a token through one router and calls it at once through another
 * (a deploy script behind a load balancer) is then served what it wrote, not a 404 or the version
 * before. A peer that does not confirm in time (one that died without a word, whose membership
 * lapses within the lease TTL) still sees the change through its watch: the write stands, and
 * the delay is logged. Such a peer is told of later writes without being waited for, until it
 * confirms one again: a silent peer costs one write the timeout, not every write until its lease
 * lapses (a version's record is written before its first start, so cold starts would pay it).
 */
import { Agent } from 'undici'
import type { Logger } from '../log.ts'
import type { Member } from './coordination.ts'
import { postToPeerOk } from './peer-post.ts'

/** How long a write waits for its peers at most. */
export const PEER_SYNC_TIMEOUT_MS = 1000

export type PeerSyncOutcome = 'confirmed' | 'unconfirmed'

export interface PeerSyncOptions {
  readonly routerId: string
  /** The cluster's peer key (peerKey of the shared secret). */
  readonly key: string
  /** The live routers, this one included. */
  readonly members: () => readonly Member[]
  readonly log: Logger
  readonly timeoutMs?: number
  /** Told of each peer's answer (for metrics). */
  readonly onOutcome?: (outcome: PeerSyncOutcome) => void
}

export class PeerSync {
  readonly #o: PeerSyncOptions
  /**
   * At most this many connections to each peer: a burst of writes queues rather than opening
   * hundreds (a call still queued when its write's second is up counts as unconfirmed).
   */
  readonly #agent = new Agent({ keepAliveTimeout: 10_000, connections: 32 })
  /** Peers that did not confirm their last change: not waited for until they confirm one. */
  readonly #unresponsive = new Set<string>()
  /** Each peer's latest confirmed call (by the order calls were made): an older call's failure, coming later, does not count. */
  readonly #confirmedUpTo = new Map<string, number>()
  #calls = 0

  constructor(options: PeerSyncOptions) {
    this.#o = options
  }

  /** Resolves once every peer has read `key` of `store` from etcd, or the timeout passed; never rejects. */
  async announce(store: string, key: string): Promise<void> {
    const peers = this.#o.members().filter((m) => m.routerId !== this.#o.routerId)
    // Members gone are forgotten (both stay bounded by the membership): one back is a router
    // started again, waited for like any other.
    for (const routerId of this.#unresponsive) if (!peers.some((p) => p.routerId === routerId)) this.#unresponsive.delete(routerId)
    for (const routerId of this.#confirmedUpTo.keys()) if (!peers.some((p) => p.routerId === routerId)) this.#confirmedUpTo.delete(routerId)
    if (peers.length === 0) return
    const timeout = this.#o.timeoutMs ?? PEER_SYNC_TIMEOUT_MS
    const signal = AbortSignal.timeout(timeout)
    const body = JSON.stringify({ store, key })
    const awaited: Promise<void>[] = []
    for (const peer of peers) {
      const telling = this.#tell(peer, store, key, body, signal, timeout)
      if (!this.#unresponsive.has(peer.routerId)) awaited.push(telling)
    }
    await Promise.all(awaited)
  }

  async #tell(peer: Member, store: string, key: string, body: string, signal: AbortSignal, timeout: number): Promise<void> {
    const call = ++this.#calls
    try {
      await postToPeerOk({ url: peer.url, what: 'refresh', key: this.#o.key, body, timeoutMs: timeout, signal, dispatcher: this.#agent })
      this.#unresponsive.delete(peer.routerId)
      this.#confirmedUpTo.set(peer.routerId, Math.max(call, this.#confirmedUpTo.get(peer.routerId) ?? 0))
      this.#o.onOutcome?.('confirmed')
    } catch (err) {
      this.#o.onOutcome?.('unconfirmed')
      if (this.#unresponsive.has(peer.routerId) || call < (this.#confirmedUpTo.get(peer.routerId) ?? 0)) return
      this.#unresponsive.add(peer.routerId)
      this.#o.log.warn({ err, peer: peer.routerId, store, key }, 'a peer did not confirm a change in time: it will see it through its watch, and is not waited for until it confirms one')
    }
  }

  async close(): Promise<void> {
    await this.#agent.close()
  }
}
