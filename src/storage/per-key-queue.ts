/**
 * Runs tasks one after the other per key (each starts once the one before it on that key
 * settled, whatever its outcome), and forgets a key as soon as its queue is empty.
 */
export class PerKeyQueue {
  readonly #tails = new Map<string, Promise<unknown>>()

  run<T>(key: string, task: () => Promise<T>): Promise<T> {
    const previous = this.#tails.get(key) ?? Promise.resolve()
    const next = previous.catch(() => undefined).then(task)
    this.#tails.set(key, next)
    const cleanup = (): void => {
      if (this.#tails.get(key) === next) this.#tails.delete(key)
    }
    next.then(cleanup, cleanup)
    return next
  }

  /** Resolves when every task queued so far has settled. */
  async settled(): Promise<void> {
    await Promise.allSettled([...this.#tails.values()])
  }
}
