/**
 * Instances' stdout and stderr kept under a size bound: a file past `maxBytes` has its last
 * `maxBytes` copied to `<file>.1` (replacing the previous one) and is emptied. The instance holds it open in append
 * mode, so its next write lands at the new, empty end.
 *
 * Sizes are read with one synchronous stat each: through fs/promises, 2 000 stats (a thousand
 * instances' two files, every second) cost 103-126 ms of CPU here, against 13-34 ms directly
 * (7-17 µs each). The event loop is given back every `statsPerTurn` files, or sooner once a
 * turn has run `maxTurnMs` (read-budget.ts). Only the rare
 * oversized file is then copied, off the event loop. The instances hold these files open, so
 * their inodes stay cached; on a network file system a stat could wait on the server, which is
 * why backend.local.workDir must be a local disk (README).
 */
import { createReadStream, createWriteStream, statSync } from 'node:fs'
import { stat, truncate } from 'node:fs/promises'
import { pipeline } from 'node:stream/promises'
import { MAX_TURN_MS, ReadBudget } from './read-budget.ts'

/** Files stat'ed between two turns of the event loop at most (7-22 µs each; the turn also ends after MAX_TURN_MS). */
export const STATS_PER_TURN = 256

/** Rotates each file larger than `maxBytes`; returns those rotated. A file gone or unreadable is skipped. */
export async function rotateOversizedLogs(files: Iterable<string>, maxBytes: number, statsPerTurn = STATS_PER_TURN, maxTurnMs = MAX_TURN_MS): Promise<string[]> {
  const budget = new ReadBudget(statsPerTurn, { maxTurnMs })
  const oversized: string[] = []
  for (const file of files) {
    await budget.read()
    let size = 0
    try {
      size = statSync(file, { throwIfNoEntry: false })?.size ?? 0
    } catch {
      // Unreadable (a link looping on itself that the instance made, say): skipped, and the
      // files after it still looked at.
    }
    if (size > maxBytes) oversized.push(file)
  }
  const rotated: string[] = []
  await Promise.all(oversized.map(async (file) => {
    try {
      // Its size now, not at the round's stat (the instance wrote on meanwhile), and its last
      // maxBytes only: one that writes faster than the checks come may have put gigabytes there
      // since the last one, and copying them all would double them.
      const size = (await stat(file)).size
      await pipeline(createReadStream(file, { start: Math.max(0, size - maxBytes), end: size - 1 }), createWriteStream(`${file}.1`))
      await truncate(file, 0)
      rotated.push(file)
    } catch (err) {
      // The instance ended and its sandbox went meanwhile: nothing to rotate.
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    }
  }))
  return rotated
}
