/** Resident memory of whole process groups, read from /proc (Linux). */
import { readdir, readFile } from 'node:fs/promises'

const PAGE_BYTES = 4096

/** Sums the RSS in bytes of every process in each of the given groups. */
export async function groupResidentBytes(groups: ReadonlySet<number>): Promise<Map<number, number>> {
  const totals = new Map<number, number>()
  if (groups.size === 0) return totals
  let entries: string[]
  try {
    entries = await readdir('/proc')
  } catch {
    return totals // no /proc: memory limits cannot be enforced here
  }
  await Promise.all(
    entries.map(async (entry) => {
      if (!/^\d+$/.test(entry)) return
      let stat: string
      try {
        stat = await readFile(`/proc/${entry}/stat`, 'utf8')
      } catch {
        return // the process ended while we looked
      }
      // Fields after the parenthesised command name: state ppid pgrp ... rss is the 22nd of them.
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      const group = Number(fields[2])
      if (!groups.has(group)) return
      totals.set(group, (totals.get(group) ?? 0) + Number(fields[21]) * PAGE_BYTES)
    }),
  )
  return totals
}
