/**
 * Processes an instance left behind. Killing an instance's process group takes everything that
 * stayed in the group; a process that called setsid or daemonised did not. Such a process still
 * carries its instance's sandbox in its environment (WAITER_SANDBOX, which instances cannot set
 * themselves), and that is how it is found: in /proc (Linux), among the processes this user may
 * read. (Working in a sandbox is no sign: an operator's shell may have cd'd into one.)
 */
import { readdir, readFile } from 'node:fs/promises'
import { sep } from 'node:path'

/** The sandbox a process's environment names; undefined if none, or once it is gone or unreadable. */
async function sandboxOf(pid: number): Promise<string | undefined> {
  try {
    const environ = await readFile(`/proc/${pid}/environ`, 'utf8')
    return environ.split('\0').find((e) => e.startsWith('WAITER_SANDBOX='))?.slice('WAITER_SANDBOX='.length)
  } catch {
    return undefined
  }
}

function within(path: string | undefined, root: string): boolean {
  return path !== undefined && (path === root || path.startsWith(root + sep))
}

/** The process group a process belongs to (field 5 of /proc/<pid>/stat). */
async function processGroupOf(pid: number): Promise<number | undefined> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8')
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[2])
  } catch {
    return undefined
  }
}

/**
 * Pids of live processes whose sandbox (by environment) is `root` or lies under it, except members of `exceptGroup` (a group already being killed as a whole).
 */
export async function processesUnder(root: string, exceptGroup?: number): Promise<number[]> {
  let entries: string[]
  try {
    entries = await readdir('/proc')
  } catch {
    return [] // not Linux: nothing to find this way
  }
  const pids = entries.filter((e) => /^\d+$/.test(e)).map(Number).filter((pid) => pid !== process.pid)
  const found: number[] = []
  // In batches: a host with thousands of processes must not open thousands of files at once.
  for (let i = 0; i < pids.length; i += 64) {
    const batch = pids.slice(i, i + 64)
    const seen = await Promise.all(batch.map(sandboxOf))
    seen.forEach((sandbox, index) => {
      if (within(sandbox, root)) found.push(batch[index] as number)
    })
  }
  if (exceptGroup === undefined) return found
  const groups = await Promise.all(found.map(processGroupOf))
  return found.filter((_, index) => groups[index] !== exceptGroup)
}

/** SIGKILLs every process found under `root` (but members of `exceptGroup`); returns their pids. */
export async function killProcessesUnder(root: string, exceptGroup?: number): Promise<number[]> {
  const pids = await processesUnder(root, exceptGroup)
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL')
    } catch {
      // ESRCH: it ended meanwhile.
    }
  }
  return pids
}
