/**
 * What a router knows of its peers: who they are, who leads, and how much load each carries per
 * version. The control loops ask it whether to act (only the leader scales, kills and collects)
 * and what the fleet's load is (they scale on the sum over routers, and a version is idle only
 * when every router says so). A single router is its own leader with no peers.
 */

export interface Member {
  readonly routerId: string
  /** Where peers reach it (its listening URL). */
  readonly url: string
  readonly startedAt: number
  /** The name of the machine (the pod, the container) it runs on, as its OS gives it. */
  readonly hostname?: string
}

/** One version's load on one router, as the load exchange carries it. */
export interface VersionLoad {
  readonly inFlight: number
  readonly queued: number
  /** Last time a request for the version started or ended on that router (ms since the epoch); 0 = never. */
  readonly lastRequestAt: number
}

export const NO_LOAD: VersionLoad = { inFlight: 0, queued: 0, lastRequestAt: 0 }

/** Another router, as the slot shares see it (slot-shares.ts). */
export interface PeerReport {
  readonly routerId: string
  /** Where it is reached; undefined if it reports load but is no longer a member (it is leaving). */
  readonly url: string | undefined
  /** The membership it deals slots by; undefined until it has reported. */
  readonly members: readonly string[] | undefined
  /** Requests it still carries on an instance beyond its share (0 for most). */
  over(serviceId: string, instanceId: string): number
  /** It announced its drain: it refuses new connections but is not dead. */
  readonly draining?: boolean
}

/** What this router deals slots by: the live routers (itself included, sorted) and what the others report. */
export interface SlotView {
  readonly members: readonly string[]
  readonly peers: readonly PeerReport[]
  /**
   * etcd has not confirmed this router's lease for a whole TTL: the others may have let it go
   * and dealt its shares among themselves (or etcd is down for everyone: then nobody did).
   */
  readonly cutOff: boolean
  /** It has just (re)joined: it fills no slot of its own until every peer has seen its claims. */
  readonly settling: boolean
}

export interface Coordination {
  readonly mode: 'single' | 'etcd'
  readonly routerId: string
  /** Whether this router may act for the fleet right now (scale, kill, collect garbage). */
  isLeader(): boolean
  /** The leader's router id, when one is known. */
  leaderId(): string | undefined
  /** Live routers, this one included. */
  members(): readonly Member[]
  /** The load other routers last reported for a version (this router's own excluded). */
  peerLoad(serviceId: string): VersionLoad
  /** Whether another router may still hold a version: it reports load for it, or its report was cut short. */
  peerMayHold(serviceId: string): boolean
  /** Who holds which slots: membership and the other routers' reports. */
  slotView(): SlotView
  /** A peer refused a connection (its process is gone): deal its slots among the others now. */
  suspect?(routerId: string): void
  /** This router starts draining: tell the peers before its listener closes. */
  announceDraining?(): Promise<void>
  /** Calls `listener` whenever the slot view may have changed; returns the unsubscribe. */
  onSlotViewChange(listener: () => void): () => void
  /** The etcd endpoints in use (no credentials: the config refuses them). */
  readonly endpoints: readonly string[]
  close(): Promise<void>
}

export function singleRouter(routerId: string, url: () => string, startedAt: number): Coordination {
  return {
    mode: 'single',
    routerId,
    isLeader: () => true,
    leaderId: () => routerId,
    members: () => [{ routerId, url: url(), startedAt }],
    peerLoad: () => NO_LOAD,
    peerMayHold: () => false,
    slotView: () => ({ members: [routerId], peers: [], cutOff: false, settling: false }),
    onSlotViewChange: () => () => undefined,
    endpoints: [],
    close: () => Promise.resolve(),
  }
}

/** A cluster router before it has joined (it is not listening yet): it acts for nobody. */
export function joining(routerId: string, endpoints: readonly string[]): Coordination {
  return {
    mode: 'etcd',
    routerId,
    isLeader: () => false,
    leaderId: () => undefined,
    members: () => [],
    peerLoad: () => NO_LOAD,
    peerMayHold: () => false,
    slotView: () => ({ members: [], peers: [], cutOff: false, settling: false }),
    onSlotViewChange: () => () => undefined,
    endpoints,
    close: () => Promise.resolve(),
  }
}
