/**
 * Resident memory of each instance's process tree, read from /proc (Linux), one of two ways:
 * - a walk of the instances' own trees (leader, then children via
 *   /proc/<pid>/task/<tid>/children): its `statm`, its `task/` directory and one children file
 *   per thread, so ~14 files for a Node instance (a dozen threads), 50 and more for a JVM;
 * - a scan of every process on the host: one `stat` each (its parent), the trees then built
 *   from the parent links, and one `statm` for each process counted.
 * A sample of the trees is walked and predicts which reads fewer files for the rest
 * (`node bench/local-checks.ts N`): with 200 Node instances (a bash launcher and a Node process
 * each, 12 files to walk) on a host of 524 processes, the walk read 2 400 files in 45-71 ms of
 * CPU per check (median 58), the sample and scan ~930 in 33-68 (median 37); with 100 instances
 * 31 and 18. Instances of one thread each (busybox: 3 files) keep the walk.
 *
 * The reads are synchronous. The files read here (`statm`, `stat`, `task/`, `task/<tid>/children`)
 * are made by the kernel on the spot, with no disk and no lock on the target's memory that could
 * make the reader sleep, so a busy unrelated process cannot stall the scan (unlike `maps`, `smaps`,
 * `cmdline` or `environ`: do not add those here). Through fs/promises each file cost an open,
 * fstat, read and close on the thread pool and four promises: 14-21 ms of CPU per check of 20
 * Node instances here, against 4.5-5.3 ms read directly. The event loop is given back every
 * `READS_PER_TURN` files (counted per file, so an instance with hundreds of threads cannot hold
 * it longer) or once a turn has read for 2 ms (a statm read takes 80-100 µs on some machines), so
 * a request waits about that long (plus the read under way) behind the check at each of its
 * turns, however many instances.
 */
import { opendirSync, readdirSync, readFileSync, type Dir } from 'node:fs'
import { ReadBudget } from './read-budget.ts'

const PAGE_BYTES = 4096

/** /proc files read between two turns of the event loop at most: 25-100 µs each, so the turn usually ends first on time (read-budget.ts's MAX_TURN_MS). */
export const READS_PER_TURN = 128

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

/** Trees walked first, spread over the leaders, to estimate what walking the rest would read. */
export const SAMPLE_TREES = 8

/**
 * What a file of the scan costs against one of a walk: measured with 100 Node instances here,
 * ~37 µs a file (mostly `stat`) against ~25 (mostly `children`). The scan must win by that much.
 */
export const SCAN_FILE_COST = 1.5

export interface TreeReading {
  /** Files read between two turns of the event loop. */
  readonly readsPerTurn?: number
  /** The processes of the host (default: as /proc lists them); undefined when it cannot be listed. */
  readonly hostProcesses?: (budget: ReadBudget) => Promise<number[] | undefined>
  /** Told how the trees past the sample were read, and how many files the whole reading took. */
  readonly observe?: (way: 'walk' | 'scan', reads: number) => void
}

/**
 * Sums the RSS in bytes of each leader's process tree. A sample of the trees is walked; the rest
 * are walked too, or read from one scan of the host when the sample says that reads fewer files.
 * A sample, not one tree: an instance with a hundred threads among single-threaded ones would
 * otherwise make every check scan a host of thousands of processes.
 */
export async function treeResidentBytes(leaders: Iterable<number>, reading: TreeReading = {}): Promise<Map<number, TreeUsage>> {
  // Copied first: the check yields, and a caller's live collection may change meanwhile.
  const all = [...leaders]
  const budget = new ReadBudget(reading.readsPerTurn ?? READS_PER_TURN)
  const stride = Math.max(1, Math.floor(all.length / SAMPLE_TREES))
  const sample = all.filter((_, i) => i % stride === 0).slice(0, SAMPLE_TREES)
  const sampled = await walkTrees(sample, budget)
  const rest = all.filter((leader) => !sampled.has(leader))
  let way: 'walk' | 'scan' = 'walk'
  let others: Map<number, TreeUsage> = new Map()
  if (rest.length > 0) {
    const readsPerTree = budget.reads / sample.length
    const processesPerTree = [...sampled.values()].reduce((sum, usage) => sum + usage.processes.length, 0) / sample.length
    const walk = rest.length * readsPerTree
    const statms = rest.length * processesPerTree
    // Listing the host is only worth it when a scan could win even on an empty one.
    const host = SCAN_FILE_COST * statms < walk ? await (reading.hostProcesses ?? listProcesses)(budget) : undefined
    if (host !== undefined && SCAN_FILE_COST * (host.length + statms) < walk) way = 'scan'
    others = way === 'scan' ? await scanTrees(rest, host as number[], budget) : await walkTrees(rest, budget)
  }
  reading.observe?.(way, budget.reads)
  // In the order given.
  const totals = new Map<number, TreeUsage>()
  for (const leader of all) totals.set(leader, (sampled.get(leader) ?? others.get(leader)) as TreeUsage)
  return totals
}

/** Entries of /proc counted as one read of the budget: listing one is far cheaper than reading a file. */
const ENTRIES_PER_READ = 64

/** The pids /proc lists (every process of this pid namespace), or undefined when it cannot be listed. */
export async function listProcesses(budget: ReadBudget): Promise<number[] | undefined> {
  let dir: Dir
  try {
    dir = opendirSync('/proc')
  } catch {
    return undefined
  }
  const ids: number[] = []
  try {
    for (let entries = 0; ; entries++) {
      if (entries % ENTRIES_PER_READ === 0) await budget.read()
      const entry = dir.readSync()
      if (entry === null) break
      const code = entry.name.charCodeAt(0)
      if (code >= 48 && code <= 57) ids.push(Number(entry.name))
    }
  } catch {
    return undefined
  } finally {
    dir.closeSync()
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
  return sumTrees(leaders, async (pid) => {
    if (!alive.has(pid)) return { bytes: 0, children: [] }
    await budget.read()
    return { bytes: residentBytes(pid), children: children.get(pid) ?? [] }
  })
}

/** The trees walked from each leader through the children files of its threads. */
export async function walkTrees(leaders: readonly number[], budget: ReadBudget): Promise<Map<number, TreeUsage>> {
  return sumTrees(leaders, async (pid) => {
    await budget.read()
    const bytes = residentBytes(pid)
    return { bytes, children: await childrenOf(pid, budget) }
  })
}

/** Each leader's tree, breadth first, each process once: `visit` reads one (its resident bytes and its children). */
async function sumTrees(leaders: readonly number[], visit: (pid: number) => Promise<{ readonly bytes: number; readonly children: readonly number[] }>): Promise<Map<number, TreeUsage>> {
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
        const { bytes, children } = await visit(pid)
        processes.push([pid, bytes])
        total += bytes
        next.push(...children)
      }
      frontier = next
    }
    totals.set(leader, { bytes: total, processes })
  }
  return totals
}
