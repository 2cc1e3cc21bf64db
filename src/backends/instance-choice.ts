/** Which instance serves the next request (Waiter's find-available-instance), as a pure function. */

export type LoadBalancing = 'oldest' | 'youngest' | 'random'

export interface Candidate {
  readonly startedAt: number
  readonly expired: boolean
}

/**
 * Picks among instances that have a free slot. Non-expired instances are always preferred, so
 * expired ones drain; `random` is a number in [0, 1). Among expired ones only, the youngest, in
 * either order, as Waiter sorts them (started-at descending): the oldest, which the scaler kills
 * first, drains first.
 */
export function chooseInstance<C extends Candidate>(candidates: readonly C[], mode: LoadBalancing, random: () => number): C | undefined {
  if (candidates.length <= 1) return candidates[0]
  const fresh = candidates.filter((c) => !c.expired)
  const pool = fresh.length > 0 ? fresh : candidates
  if (mode === 'random') return pool[Math.floor(random() * pool.length)]
  const oldestFirst = mode === 'oldest' && fresh.length > 0
  let best = pool[0] as C
  for (const c of pool) {
    if (oldestFirst ? c.startedAt < best.startedAt : c.startedAt > best.startedAt) best = c
  }
  return best
}
