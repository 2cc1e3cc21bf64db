/**
 * Synchronous reads of many small files, with the event loop given back every `perTurn` of
 * them or once a turn has read for `maxTurnMs`, whichever comes first: each read is cheap, but a
 * thousand instances' worth in one go would hold every request the router carries for tens of
 * milliseconds. The time bound is what a request feels: one proxied request needs several turns
 * (its head, the instance's connect, its answer), and each may wait behind one turn of reads. A
 * `/proc/<pid>/statm` read took 25–37 µs on one machine and 80–100 µs on another, so a count
 * alone let a turn run 3 ms there and 12 ms here.
 */
import { setImmediate as nextTurn } from 'node:timers/promises'

/** How long one turn of reads may run before the event loop is given back (ms). */
export const MAX_TURN_MS = 2

/** Counts the files read, and gives the event loop back once `perTurn` have been or the turn ran `maxTurnMs`. */
export class ReadBudget {
  readonly #perTurn: number
  readonly #maxTurnMs: number
  readonly #now: () => number
  #left: number
  #turnStartedAt: number
  /** Files read so far. */
  reads = 0
  /** Times the event loop was given back. */
  turns = 0
  constructor(perTurn: number, options: { maxTurnMs?: number; now?: () => number } = {}) {
    this.#perTurn = perTurn
    this.#maxTurnMs = options.maxTurnMs ?? MAX_TURN_MS
    this.#now = options.now ?? performance.now.bind(performance)
    this.#left = perTurn
    this.#turnStartedAt = this.#now()
  }

  /** Counts one read, after giving the event loop back if this turn's reads or time are spent. */
  async read(): Promise<void> {
    if (this.#left <= 0 || this.#now() - this.#turnStartedAt >= this.#maxTurnMs) {
      await nextTurn()
      this.turns++
      this.#left = this.#perTurn
      this.#turnStartedAt = this.#now()
    }
    this.#left--
    this.reads++
  }
}
