/**
 * How the concurrency-level slots of one instance are dealt among the routers of a cluster, so
 * that together they never send it more than concurrency-level requests at once. Pure.
 *
 * Each instance ranks the routers by a rendezvous hash of (instance, router), and slot j goes to
 * the router ranked j mod R: every router holds ⌊c/R⌋ or ⌈c/R⌉ of an instance's slots, the odd
 * slots (all of them when c < R, as for concurrency-level 1) land on routers that differ from
 * instance to instance, and a router that joins or leaves moves only the slots it takes or
 * gives back. Slots a router holds but does not need are lent to routers with requests waiting
 * (slot-exchange.ts); this module only says who holds what.
 */

/** FNV-1a over the UTF-16 code units: fast, and the same on every router. */
function score(instanceId: string, routerId: string): number {
  let h = 0x811c9dc5
  const key = `${instanceId}\u0000${routerId}`
  for (let i = 0; i < key.length; i++) {
    h ^= key.charCodeAt(i)
    h = Math.imul(h, 0x01000193)
  }
  // A final avalanche, so that ids differing only at the end still spread.
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  return h >>> 0
}

/** Where a router stands in an instance's ranking of the members (0 = first); -1 if not a member. */
export function rankOf(instanceId: string, members: readonly string[], routerId: string): number {
  if (!members.includes(routerId)) return -1
  const mine = score(instanceId, routerId)
  let rank = 0
  for (const other of members) {
    if (other === routerId) continue
    const theirs = score(instanceId, other)
    if (theirs > mine || (theirs === mine && other < routerId)) rank += 1
  }
  return rank
}

/** The slots of one instance (of `concurrencyLevel` in all) that `routerId` holds among `members`. */
export function shareOf(instanceId: string, concurrencyLevel: number, members: readonly string[], routerId: string): number {
  const rank = rankOf(instanceId, members, routerId)
  if (rank === -1) return 0
  const routers = new Set(members).size
  const base = Math.floor(concurrencyLevel / routers)
  return rank < concurrencyLevel % routers ? base + 1 : base
}

/** What another router may be using of an instance, as its last report tells. */
export interface PeerClaim {
  readonly routerId: string
  /** The membership that router deals slots by (its own view; it may lag or lead this one's). */
  readonly members: readonly string[] | undefined
  /** Requests it carries on the instance beyond its share (a share it lost while they ran). */
  readonly over: number
}

/**
 * How many requests this router may send to an instance at once: its share, and never more than
 * what the other routers' claims leave of concurrency-level. A peer's claim is the share its own
 * view gives it, or what it still carries there if that is more, so a slot changes hands only
 * once its previous holder has let go of it and said so; a peer whose view is not known yet
 * (it has not reported) is assumed to hold every slot, so nobody takes one of its slots meanwhile.
 *
 * A router gone from this one's view (it left, or was found dead) still claims its share for as
 * long as a peer's report deals with it: that peer may be running a request on a slot the router
 * lent it, which it counts as its own (and reports) only once it too has seen the router go.
 */
export function slotLimit(instanceId: string, concurrencyLevel: number, members: readonly string[], routerId: string, peers: readonly PeerClaim[]): number {
  let claimed = 0
  let departed: Map<string, number> | undefined
  for (const peer of peers) {
    if (peer.routerId === routerId) continue
    const share = peer.members === undefined ? concurrencyLevel : shareOf(instanceId, concurrencyLevel, peer.members, peer.routerId)
    claimed += Math.max(share, peer.over)
    if (peer.members === undefined) continue
    for (const other of peer.members) {
      if (other === routerId || other === peer.routerId || members.includes(other)) continue
      const theirs = shareOf(instanceId, concurrencyLevel, peer.members, other)
      if (theirs > (departed?.get(other) ?? 0)) (departed ??= new Map()).set(other, theirs)
    }
  }
  if (departed !== undefined) for (const share of departed.values()) claimed += share
  return Math.max(0, Math.min(shareOf(instanceId, concurrencyLevel, members, routerId), concurrencyLevel - claimed))
}
