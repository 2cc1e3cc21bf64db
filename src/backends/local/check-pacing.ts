/**
 * How long the local backend waits between two rounds of its instance checks (memory from /proc,
 * log sizes): `memoryCheckIntervalMs` after the last round ended, or longer when the rounds
 * grow long, so that they take at most CHECK_SHARE of the router's time. With a thousand
 * instances a round reads ~3,000 /proc files and stats 2,000 logs (150-300 ms on a slow host):
 * every second, that was a sixth to a quarter of a core taken from the requests. The memory
 * limit is then enforced a few seconds late instead; the README's bound on a log file's growth
 * says "between two checks", which this lengthens in the same proportion.
 */

/** The largest share of the router's time the checks may take, round after round. */
export const CHECK_SHARE = 0.1

/**
 * The longest wait, in intervals: a round's time counts the other work run between its turns,
 * so a very busy router would otherwise put its memory limits off without end.
 */
export const MAX_INTERVALS = 10

/** The wait after a round that took `lastRoundMs` (a monotonic measure), with `intervalMs` the configured interval. */
export function nextCheckDelayMs(intervalMs: number, lastRoundMs: number): number {
  const paced = Math.ceil(Math.max(0, lastRoundMs) * (1 / CHECK_SHARE - 1))
  return Math.max(intervalMs, Math.min(paced, intervalMs * MAX_INTERVALS))
}
