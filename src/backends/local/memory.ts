/**
 * Resident memory of each instance's process tree, read from /proc (Linux). Only the instances'
 * own processes are read (leader, then children via /proc/<pid>/task/<tid>/children), never
 * every process on the host: cheaper, and a busy unrelated process cannot stall the check.
 *
 * The reads are synchronous. The files read here (`statm`, `task/`, `task/<tid>/children`) are
 * made by the kernel on the spot, with no disk and no lock on the target's memory that could
 * make the reader sleep (unlike `maps`, `smaps`, `cmdline` or `environ`: do not add those here).
 * Through fs/promises each file cost an open, fstat, read and close on the thread pool and four
 * promises, and a Node instance has a dozen threads, each with its own children file: 14-21 ms
 * of CPU per check of 20 Node instances here, against 4.5-5.3 ms read directly. The event loop
 * is given back every `READS_PER_TURN` files (counted per file, so an instance with hundreds of
 * threads cannot hold it longer), a few milliseconds at a time however many instances there are.
 */
import { readdirSync, readFileSync } from 'node:fs'
import { ReadBudget } from './read-budget.ts'

const PAGE_BYTES = 4096

/** /proc files read between two turns of the event loop: 15-20 µs each here, so ~4 ms at a time. */
export const READS_PER_TURN = 256

async function childrenOf(pid: number, budget: ReadBudget): Promise<number[]> {
  let tasks: string[]
  await budget.read()
  try {
    tasks = readdirSync(`/proc/${pid}/task`)
  } catch {
    return [] // ended while we looked
  }
  const children: number[] = []
  for (const tid of tasks) {
    await budget.read()
    let list: string
    try {
      list = readFileSync(`/proc/${pid}/task/${tid}/children`, 'latin1')
    } catch {
      continue // the thread ended meanwhile
    }
    for (const child of list.split(' ')) if (child.trim() !== '') children.push(Number(child))
  }
  return children
}

function residentBytes(pid: number): number {
  try {
    return Number(readFileSync(`/proc/${pid}/statm`, 'latin1').split(' ')[1]) * PAGE_BYTES
  } catch {
    return 0 // ended while we looked
  }
}

export interface TreeUsage {
  readonly bytes: number
  /** [pid, bytes] of every process counted. */
  readonly processes: readonly (readonly [number, number])[]
}

/** Sums the RSS in bytes of each leader's process tree. */
export async function treeResidentBytes(leaders: Iterable<number>, readsPerTurn = READS_PER_TURN): Promise<Map<number, TreeUsage>> {
  const totals = new Map<number, TreeUsage>()
  const budget = new ReadBudget(readsPerTurn)
  // Copied first: the check yields, and a caller's live collection may change meanwhile.
  for (const leader of [...leaders]) {
    let total = 0
    const processes: [number, number][] = []
    const seen = new Set<number>()
    let frontier = [leader]
    while (frontier.length > 0 && seen.size < 10_000) {
      const next: number[] = []
      for (const pid of frontier) {
        if (seen.has(pid)) continue
        seen.add(pid)
        await budget.read()
        const bytes = residentBytes(pid)
        processes.push([pid, bytes])
        total += bytes
        next.push(...(await childrenOf(pid, budget)))
      }
      frontier = next
    }
    totals.set(leader, { bytes: total, processes })
  }
  return totals
}
