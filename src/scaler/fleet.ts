/**
 * What the control loops need of the cluster: whether this router may act (only the leader
 * scales, kills and collects), and the load of a version over every router, so that the leader
 * scales on the fleet's demand and never collects a version another router is serving.
 */
import type { InstanceTracker } from '../backends/tracker.ts'
import { NO_LOAD, type Coordination, type VersionLoad } from '../cluster/coordination.ts'

export interface Fleet extends Pick<Coordination, 'isLeader' | 'peerLoad'> {
  /**
   * Asks the other routers before an instance is killed: false if any carries a request on it
   * (a veto). Absent for a router on its own: its own tracker's lock is the whole answer.
   */
  readonly allowKill?: ((serviceId: string, instanceId: string) => Promise<boolean>) | undefined
  /** The routers that agreed to a kill that is not coming after all (it failed, or leadership went) put the instance back in rotation. */
  readonly cancelKill?: ((serviceId: string, instanceId: string) => Promise<void>) | undefined
  /**
   * Asks the other routers before a version is collected: false if any uses it (a request in
   * flight, waiting or starting, or one since `lastActiveAt`); those that agree hold their new
   * requests for it until collectDone. Absent for a router on its own.
   */
  readonly allowCollect?: ((serviceId: string, lastActiveAt: number, reason: 'idle' | 'stale' | 'broken' | 'orphaned') => Promise<boolean>) | undefined
  /**
   * The collection is over; `collected`: it took the version, for this reason, idle since this
   * time (the others' keep-alive learns that the version was let go, as the leader's does).
   */
  readonly collectDone?: ((serviceId: string, collected: CollectedVersion | undefined) => Promise<void>) | undefined
}

/** A version the leader collected: why, and when its last activity ended. */
export interface CollectedVersion {
  readonly reason: 'idle' | 'stale' | 'broken' | 'orphaned'
  readonly lastActiveAt: number
  /** The leader's keep-alive forgot the version (collected while suspended, say): the others forget it too. */
  readonly forget?: boolean
}

/**
 * A peer's answer to the leader's collection of a version: whether this router may let it go
 * now (nothing in flight or waiting here, no request since `lastActiveAt`, no start under way),
 * and if so its new requests for it are held for `periodMs`.
 */
export function agreeToCollect(tracker: Pick<InstanceTracker, 'load'>, activator: { holdForCollection(serviceId: string, periodMs: number): boolean }, serviceId: string, lastActiveAt: number | undefined, periodMs: number): boolean {
  const load = tracker.load(serviceId)
  if (load.inFlight + load.queued > 0) return false
  // Used since the activity the leader judged an idle version by (its reports are up to a
  // publish interval old). Undefined: a verdict not about idleness (stale, broken).
  if (lastActiveAt !== undefined && load.lastActiveAt > lastActiveAt) return false
  return activator.holdForCollection(serviceId, periodMs)
}

/** A router on its own: always the leader, no peers. */
export const ALONE: Fleet = { isLeader: () => true, peerLoad: () => NO_LOAD }

export interface FleetLoad {
  readonly inFlight: number
  readonly queued: number
  readonly lastActiveAt: number
}

/** This router's load of a version (from its tracker) plus what the other routers last reported. */
export function fleetLoadOf(tracker: Pick<InstanceTracker, 'load'>, fleet: Fleet, serviceId: string): FleetLoad {
  const local = tracker.load(serviceId)
  const peers = fleet.peerLoad(serviceId)
  return {
    inFlight: local.inFlight + peers.inFlight,
    queued: local.queued + peers.queued,
    lastActiveAt: Math.max(local.lastActiveAt, peers.lastRequestAt),
  }
}

/**
 * When the version's last activity ended over the whole fleet, if none is under way or waiting
 * anywhere now as far as this router knows (undefined otherwise, or if this router's tracker does
 * not know the version). The other routers' part is their last reports (up to a publish interval
 * old): an idle time in the keep-alive's one-minute bins does not notice.
 */
export function fleetIdleSince(tracker: Pick<InstanceTracker, 'idleSince'>, fleet: Fleet, serviceId: string): number | undefined {
  const own = tracker.idleSince(serviceId)
  if (own === undefined) return undefined
  const peers = fleet.peerLoad(serviceId)
  if (peers.inFlight + peers.queued > 0) return undefined
  return Math.max(own, peers.lastRequestAt)
}

/** This router's load of every version it routes, as the load exchange publishes it. */
export function* localLoads(tracker: Pick<InstanceTracker, 'serviceIds' | 'load'>): Iterable<readonly [string, VersionLoad]> {
  for (const id of tracker.serviceIds()) {
    const load = tracker.load(id)
    yield [id, { inFlight: load.inFlight, queued: load.queued, lastRequestAt: load.lastActiveAt }]
  }
}
