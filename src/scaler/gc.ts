/**
 * Which versions to garbage-collect (Waiter's idle, stale and broken service GC, reference §6,
 * plus versions running with no record), as a pure function. A version with a request
 * outstanding is never collected.
 */

export type GcReason = 'idle' | 'stale' | 'broken' | 'orphaned'

export interface GcCandidate {
  readonly id: string
  readonly outstanding: number
  /** Last request activity (or creation). */
  readonly lastActiveAt: number
  /** 0 = never collect for idleness. */
  readonly idleTimeoutMs: number
  /**
   * When the version's keep-alive policy lets it go, if it has its own say (an adaptive policy
   * may let it go sooner, or keep it longer, than lastActiveAt + idleTimeoutMs).
   */
  readonly keepUntil?: number | undefined
  /** When the version's tokens moved on to another version; undefined while it is current. */
  readonly staleSince: number | undefined
  readonly fallbackMs: number
  readonly staleTimeoutMs: number
  /** Since when the version has failed to start with no healthy instance; undefined if it is not broken. */
  readonly brokenSince: number | undefined
  readonly brokenTimeoutMs: number
  /** Since when the backend runs the version although no record of it exists (a failed delete, a lost record). */
  readonly unrecordedSince?: number | undefined
  readonly unrecordedGraceMs?: number | undefined
}

export interface GcVerdict {
  readonly id: string
  readonly reason: GcReason
}

export function pickGarbage(candidates: readonly GcCandidate[], now: number): GcVerdict[] {
  const out: GcVerdict[] = []
  for (const c of candidates) {
    if (c.outstanding > 0) continue
    if (c.unrecordedSince !== undefined) {
      if (now >= c.unrecordedSince + (c.unrecordedGraceMs ?? 0)) out.push({ id: c.id, reason: 'orphaned' })
      continue
    }
    if (c.staleSince !== undefined && now >= c.staleSince + c.fallbackMs + c.staleTimeoutMs) out.push({ id: c.id, reason: 'stale' })
    else if (c.brokenSince !== undefined && now >= c.brokenSince + c.brokenTimeoutMs) out.push({ id: c.id, reason: 'broken' })
    else if (c.keepUntil !== undefined ? now >= c.keepUntil : c.idleTimeoutMs > 0 && now >= c.lastActiveAt + c.idleTimeoutMs) out.push({ id: c.id, reason: 'idle' })
  }
  return out
}
