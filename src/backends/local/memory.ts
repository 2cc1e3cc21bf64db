/**
 * Resident memory of each instance's process tree, read from /proc (Linux). Only the instances'
 * own processes are read (leader, then children via /proc/<pid>/task/<tid>/children), never
 * every process on the host: cheaper, and a busy unrelated process cannot stall the check.
 */
import { readdir, readFile } from 'node:fs/promises'

const PAGE_BYTES = 4096

async function childrenOf(pid: number): Promise<number[]> {
  let tasks: string[]
  try {
    tasks = await readdir(`/proc/${pid}/task`)
  } catch {
    return []
  }
  const lists = await Promise.all(tasks.map((tid) => readFile(`/proc/${pid}/task/${tid}/children`, 'utf8').catch(() => '')))
  return lists.flatMap((list) => list.split(' ').filter((s) => s !== '').map(Number))
}

async function residentBytes(pid: number): Promise<number> {
  try {
    const statm = await readFile(`/proc/${pid}/statm`, 'utf8')
    return Number(statm.split(' ')[1]) * PAGE_BYTES
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
export async function treeResidentBytes(leaders: Iterable<number>): Promise<Map<number, TreeUsage>> {
  const totals = new Map<number, TreeUsage>()
  await Promise.all(
    [...leaders].map(async (leader) => {
      let total = 0
      const processes: [number, number][] = []
      const seen = new Set<number>()
      let frontier = [leader]
      while (frontier.length > 0 && seen.size < 10_000) {
        const next: number[] = []
        for (const pid of frontier) {
          if (seen.has(pid)) continue
          seen.add(pid)
          const bytes = await residentBytes(pid)
          processes.push([pid, bytes])
          total += bytes
          next.push(...(await childrenOf(pid)))
        }
        frontier = next
      }
      totals.set(leader, { bytes: total, processes })
    }),
  )
  return totals
}
