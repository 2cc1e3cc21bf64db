/** A control loop on the injected clock: runs `tick` every interval, one run at a time, until stopped. */
import type { Clock } from '../clock.ts'

export interface Loop {
  stop(): void
}

export function startLoop(clock: Clock, intervalMs: number, tick: () => Promise<unknown>, onError: (err: unknown) => void): Loop {
  let stopped = false
  let cancel: (() => void) | undefined
  const schedule = (): void => {
    if (stopped) return
    cancel = clock.setTimeout(() => {
      tick()
        .catch(onError)
        .finally(schedule)
    }, intervalMs)
  }
  schedule()
  return {
    stop() {
      stopped = true
      cancel?.()
    },
  }
}
