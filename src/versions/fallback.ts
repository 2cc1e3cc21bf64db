/**
 * Waiter's fallback decision, pure: within fallback-period-secs of a token edit, while the new
 * version has no healthy instance, requests go to the newest previous version that has one.
 */
import type { Resolution } from './resolve.ts'

/**
 * The previous version that serves in place of `resolution`'s now, if any. `periodHeader` is
 * x-waiter-fallback-period-secs, which overrides the token's period for one request (0: none).
 */
export function fallbackTarget(resolution: Resolution, now: number, periodHeader: string | undefined, healthyOf: (serviceId: string) => number): string | undefined {
  const fallback = resolution.fallback
  if (fallback === undefined) return undefined
  const headerSecs = periodHeader === undefined ? Number.NaN : Number(periodHeader)
  const until = Number.isInteger(headerSecs) && headerSecs >= 0 ? fallback.since + headerSecs * 1000 : fallback.until
  if (now >= until || healthyOf(resolution.serviceId) > 0) return undefined
  return fallback.serviceIds.find((id) => healthyOf(id) > 0)
}
