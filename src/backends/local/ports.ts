/**
 * Ports for local instances, from a configured range. A port is handed out only if nothing on
 * the host listens on it, and a released port rests for a while before reuse, so a late
 * request to a dead instance never reaches its successor.
 */
import { createServer } from 'node:net'

/** Undefined if the port is free; otherwise why not (EADDRINUSE when something listens there). */
function whyNotFree(port: number, host: string): Promise<string | undefined> {
  return new Promise((resolve) => {
    const probe = createServer()
    probe.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message))
    probe.listen({ port, host, exclusive: true }, () => probe.close(() => resolve(undefined)))
  })
}

export class PortAllocator {
  readonly #low: number
  readonly #high: number
  readonly #host: string
  readonly #restMs: number
  readonly #now: () => number
  readonly #inUse = new Set<number>()
  readonly #restingUntil = new Map<number, number>()
  #cursor: number

  constructor(range: readonly [number, number], host: string, restMs: number, now: () => number) {
    ;[this.#low, this.#high] = range
    this.#host = host
    this.#restMs = restMs
    this.#now = now
    this.#cursor = this.#low
  }

  /** Reserves `count` free ports, or throws when the range has too few. */
  async reserve(count: number): Promise<number[]> {
    const size = this.#high - this.#low + 1
    const got: number[] = []
    // Why the ports passed over were not taken, for the error (EMFILE is not a busy range).
    const passed = new Map<string, number>()
    const pass = (why: string): void => {
      passed.set(why, (passed.get(why) ?? 0) + 1)
    }
    for (let tried = 0; tried < size && got.length < count; tried++) {
      const port = this.#cursor
      this.#cursor = port >= this.#high ? this.#low : port + 1
      if (this.#inUse.has(port)) {
        pass('held by an instance')
        continue
      }
      if ((this.#restingUntil.get(port) ?? 0) > this.#now()) {
        pass('resting after release')
        continue
      }
      this.#inUse.add(port) // claim before the async check so concurrent launches never share a port
      const why = await whyNotFree(port, this.#host)
      if (why === undefined) got.push(port)
      else {
        this.#inUse.delete(port)
        pass(why)
      }
    }
    if (got.length < count) {
      this.release(got)
      const reasons = [...passed].map(([why, n]) => `${why}: ${n}`).join(', ')
      throw new Error(`No free ports left in the range ${this.#low}-${this.#high} (${reasons})`)
    }
    return got
  }

  release(ports: readonly number[]): void {
    const until = this.#now() + this.#restMs
    for (const port of ports) {
      this.#inUse.delete(port)
      this.#restingUntil.set(port, until)
    }
  }
}
