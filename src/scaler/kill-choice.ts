/**
 * Which instance a scale-down removes (Waiter's find-killable-instance preference), as a pure
 * function: never one with a request in flight; expired first, then unhealthy, then the youngest.
 */

export interface KillCandidate {
  readonly id: string
  readonly startedAt: number
  readonly healthy: boolean
  readonly expired: boolean
  /** Requests in flight on it (0 for instances routing does not use). */
  readonly inFlight: number
}

export function chooseKill(candidates: readonly KillCandidate[]): KillCandidate | undefined {
  let best: KillCandidate | undefined
  const rank = (c: KillCandidate): number => (c.expired ? 2 : 0) + (c.healthy ? 0 : 1)
  for (const c of candidates) {
    if (c.inFlight > 0) continue
    if (best === undefined || rank(c) > rank(best) || (rank(c) === rank(best) && c.startedAt > best.startedAt)) best = c
  }
  return best
}
