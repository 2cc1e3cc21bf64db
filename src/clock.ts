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

/** Whether `work` settles (either way) within `ms` on `clock`; the work goes on regardless. */
export function settlesWithin(clock: Clock, work: Promise<unknown>, ms: number): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    const cancel = clock.setTimeout(() => resolve(false), ms)
    const settled = (): void => {
      cancel()
      resolve(true)
    }
    work.then(settled, settled)
  })
}
