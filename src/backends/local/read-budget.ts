/**
 * Synchronous reads of many small files, with the event loop given back every `perTurn` of
 * them: each read is cheap, but a thousand instances' worth in one go would hold every request
 * the router carries for tens of milliseconds.
 */
import { setImmediate as nextTurn } from 'node:timers/promises'

/** Counts the files read, and gives the event loop back once `perTurn` have been. */
export class ReadBudget {
  readonly #perTurn: number
  #left: number
  /** Files read so far. */
  reads = 0
  constructor(perTurn: number) {
    this.#perTurn = perTurn
    this.#left = perTurn
  }

  /** Counts one read, after giving the event loop back if this turn's reads are spent. */
  async read(): Promise<void> {
    if (this.#left <= 0) {
      this.#left = this.#perTurn
      await nextTurn()
    }
    this.#left--
    this.reads++
  }
}
