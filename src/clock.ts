/**
 * Time as a dependency. Everything that waits, expires or measures age takes a Clock, so unit
 * tests drive time by hand instead of sleeping.
 */
export interface Clock {
  /** Wall-clock milliseconds since the epoch (what ages and timestamps are measured in). */
  now(): number
  /** Runs `fn` once after `ms`; returns a function that cancels it. */
  setTimeout(fn: () => void, ms: number): () => void
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout(fn, ms) {
    const timer = setTimeout(fn, ms)
    timer.unref()
    return () => clearTimeout(timer)
  },
}
