/**
 * Resident memory of each instance's process tree, read from /proc (Linux), one of two ways,
 * whichever reads fewer files:
 * - a walk of the instances' own trees (leader, then children via
 *   /proc/<pid>/task/<tid>/children): its `statm`, its `task/` directory and one children file
 *   per thread, so ~14 files for a Node instance (a dozen threads), 50 and more for a JVM;
 * - a scan of every process on the host: one `stat` each (its parent), the trees then built
 *   from the parent links, and one `statm` for each process counted.
 * The first instance's tree is walked, and the rest read the way its files predict is cheaper:
 * with a thousand Node instances (two processes each) the walk reads ~16 000 files each check,
 * the scan ~5 000; with instances of one thread each (busybox) the walk, 3 files apiece, wins.
 *
 * The reads are synchronous. The files read here (`statm`, `stat`, `task/`, `task/<tid>/children`)
 * are made by the kernel on the spot, with no disk and no lock on the target's memory that could
 * make the reader sleep, so a busy unrelated process cannot stall the scan (unlike `maps`, `smaps`,
 * `cmdline` or `environ`: do not add those here). Through fs/promises each file cost an open,
 * fstat, read and close on the thread pool and four promises: 14-21 ms of CPU per check of 20
 * Node instances here, against 4.5-5.3 ms read directly. The event loop is given back every
 * `READS_PER_TURN` files (counted per file, so an instance with hundreds of threads cannot hold
 * it longer), a few milliseconds at a time however many instances there are.
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
  // Copied first: the check yields, and a caller's live collection may change meanwhile.
  const [first, ...rest] = [...leaders]
  const budget = new ReadBudget(readsPerTurn)
  if (first === undefined) return new Map()
  // The first tree is walked, and stands for the others in the choice.
  const totals = await walkTrees([first], budget)
  if (rest.length === 0) return totals
  const sample = { reads: budget.reads, processes: totals.get(first)?.processes.length ?? 1 }
  await budget.read()
  const host = processIds()
  const others = scanIsCheaper(host.length, rest.length, sample) ? await scanTrees(rest, host, budget) : await walkTrees(rest, budget)
  for (const [leader, usage] of others) totals.set(leader, usage)
  return totals
}

/**
 * Whether reading every process's `stat` once (and each counted process's `statm`) reads fewer
 * files than walking `leaders` trees like the sample one (its files read, its processes).
 */
export function scanIsCheaper(hostProcesses: number, leaders: number, sample: { readonly reads: number; readonly processes: number }): boolean {
  return hostProcesses + leaders * sample.processes < leaders * sample.reads
}

/** The pids /proc lists: every process on the host (of this pid namespace). */
export function processIds(): number[] {
  const ids: number[] = []
  for (const name of readdirSync('/proc')) {
    const code = name.charCodeAt(0)
    if (code >= 48 && code <= 57) ids.push(Number(name))
  }
  return ids
}

/**
 * The trees built from the parent links of every process in `processes` (the host's, as listed
 * in /proc; one `stat` each), then one `statm` for each process counted. (`stat` has an RSS of
 * its own, but on recent kernels a cheaper, approximate one: 108 KB under statm's for a sleep
 * here, and up to a batch of pages per CPU off on a large host.)
 */
export async function scanTrees(leaders: readonly number[], processes: readonly number[], budget: ReadBudget): Promise<Map<number, TreeUsage>> {
  const alive = new Set<number>()
  const children = new Map<number, number[]>()
  for (const pid of processes) {
    await budget.read()
    let stat: string
    try {
      stat = readFileSync(`/proc/${pid}/stat`, 'latin1')
    } catch {
      continue // ended while we looked
    }
    // The fields after the command name (which may hold spaces and parentheses): state, ppid, …
    const parent = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ', 2)[1])
    alive.add(pid)
    const siblings = children.get(parent)
    if (siblings === undefined) children.set(parent, [pid])
    else siblings.push(pid)
  }
  const totals = new Map<number, TreeUsage>()
  for (const leader of leaders) {
    let total = 0
    const counted: [number, number][] = []
    const seen = new Set<number>()
    let frontier = [leader]
    while (frontier.length > 0 && seen.size < 10_000) {
      const next: number[] = []
      for (const pid of frontier) {
        if (seen.has(pid)) continue
        seen.add(pid)
        let bytes = 0
        if (alive.has(pid)) {
          await budget.read()
          bytes = residentBytes(pid)
          next.push(...(children.get(pid) ?? []))
        }
        counted.push([pid, bytes])
        total += bytes
      }
      frontier = next
    }
    totals.set(leader, { bytes: total, processes: counted })
  }
  return totals
}

/** The trees walked from each leader through the children files of its threads. */
export async function walkTrees(leaders: readonly number[], budget: ReadBudget): Promise<Map<number, TreeUsage>> {
  const totals = new Map<number, TreeUsage>()
  for (const leader of leaders) {
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
