/**
 * RecordIO as the Mesos master frames its event stream: `<decimal byte length>\n<that many bytes>`,
 * repeated with nothing in between. Chunk boundaries have nothing to do with records: a record (or
 * its length line, or a multi-byte UTF-8 character) may be split across chunks, and one chunk may
 * hold several records. So the parser works on bytes and decodes a record only once it is whole.
 */

/** A length line longer than this is no length: the stream is not RecordIO. */
const MAX_LENGTH_DIGITS = 20
/** The largest record accepted (a master's OFFERS for a big cluster stay far below it). */
export const MAX_RECORD_BYTES = 64 * 1024 * 1024

export class RecordIoError extends Error {
  override name = 'RecordIoError'
}

export class RecordIoParser {
  #buffered: Buffer[] = []
  #bufferedBytes = 0
  /** The length of the record being read, once its line is in; undefined while reading a length. */
  #expected: number | undefined

  /** Takes a chunk; returns every record it completes, decoded as UTF-8. Throws RecordIoError on a malformed stream. */
  push(chunk: Buffer): string[] {
    this.#buffered.push(chunk)
    this.#bufferedBytes += chunk.length
    const records: string[] = []
    for (;;) {
      if (this.#expected === undefined) {
        const all = this.#joined()
        const newline = all.indexOf(0x0a)
        if (newline === -1) {
          if (all.length > MAX_LENGTH_DIGITS) throw new RecordIoError(`no record length within ${MAX_LENGTH_DIGITS} bytes`)
          return records
        }
        const line = all.subarray(0, newline).toString('latin1')
        if (!/^\d{1,20}$/.test(line)) throw new RecordIoError(`a record length must be decimal digits, got ${JSON.stringify(line.slice(0, 40))}`)
        const length = Number(line)
        if (length === 0 || length > MAX_RECORD_BYTES) throw new RecordIoError(`a record length must be in [1, ${MAX_RECORD_BYTES}], got ${line}`)
        this.#expected = length
        this.#keep(all.subarray(newline + 1))
      }
      const expected = this.#expected
      if (this.#bufferedBytes < expected) return records
      const all = this.#joined()
      records.push(all.subarray(0, expected).toString('utf8'))
      this.#expected = undefined
      this.#keep(all.subarray(expected))
    }
  }

  /** Bytes received that no complete record holds yet. */
  get pendingBytes(): number {
    return this.#bufferedBytes
  }

  #joined(): Buffer {
    if (this.#buffered.length !== 1) this.#buffered = [Buffer.concat(this.#buffered, this.#bufferedBytes)]
    return this.#buffered[0] ?? Buffer.alloc(0)
  }

  #keep(rest: Buffer): void {
    this.#buffered = rest.length === 0 ? [] : [rest]
    this.#bufferedBytes = rest.length
  }
}

/** One record as a master writes it (the simulator's writer and the tests use the same framing). */
export function recordOf(json: string): Buffer {
  const body = Buffer.from(json, 'utf8')
  return Buffer.concat([Buffer.from(`${body.length}\n`, 'latin1'), body])
}
