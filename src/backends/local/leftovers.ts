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

/** Each live process (but this one) whose environment names a sandbox within one of `roots`, with that sandbox. */
async function sandboxedProcesses(roots: readonly string[]): Promise<Map<number, string>> {
  let entries: string[]
  try {
    entries = await readdir('/proc')
  } catch {
    return new Map() // not Linux: nothing to find this way
  }
  const pids = entries.filter((e) => /^\d+$/.test(e)).map(Number).filter((pid) => pid !== process.pid)
  const found = new Map<number, string>()
  // In batches: a host with thousands of processes must not open thousands of files at once.
  for (let i = 0; i < pids.length; i += 64) {
    const batch = pids.slice(i, i + 64)
    const seen = await Promise.all(batch.map(sandboxOf))
    seen.forEach((sandbox, index) => {
      if (sandbox !== undefined && roots.some((root) => within(sandbox, root))) found.set(batch[index] as number, sandbox)
    })
  }
  return found
}

async function pick(found: ReadonlyMap<number, string>, root: string, exceptGroup: number | undefined): Promise<number[]> {
  const pids = [...found].filter(([, sandbox]) => within(sandbox, root)).map(([pid]) => pid)
  if (exceptGroup === undefined) return pids
  const kept: number[] = []
  // In batches too: instances may have left thousands of processes.
  for (let i = 0; i < pids.length; i += 64) {
    const batch = pids.slice(i, i + 64)
    const groups = await Promise.all(batch.map(processGroupOf))
    batch.forEach((pid, index) => {
      if (groups[index] !== exceptGroup) kept.push(pid)
    })
  }
  return kept
}

function killAll(pids: readonly number[]): void {
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL')
    } catch {
      // ESRCH: it ended meanwhile.
    }
  }
}

interface Sweep {
  readonly root: string
  readonly exceptGroup: number | undefined
  readonly done: (pids: number[]) => void
  readonly failed: (err: unknown) => void
}

/**
 * Kills what escaped ended instances, one scan of /proc for all the instances that ended while
 * the scan before it ran (and in the same turn as the first of them). A scan reads every
 * process's environment: with 3 000 processes of the router's user on the host it took 0.2-0.5 s
 * and 0.3-0.7 s of CPU here, so a scan per instance made a router stopping or scaling down
 * hundreds of instances spend minutes in it. Each sweep still sees /proc as it was after the
 * sweep was asked for: one asked while a scan runs waits for the next. A scan that never ends
 * (an environment stuck behind a hung process's memory lock) holds every later sweep, as it held
 * the instance's own before.
 */
export class LeftoverSweeper {
  readonly #scan: (roots: readonly string[]) => Promise<ReadonlyMap<number, string>>
  #waiting: Sweep[] = []
  #scanning = false
  #scans = 0

  constructor(scan: (roots: readonly string[]) => Promise<ReadonlyMap<number, string>> = sandboxedProcesses) {
    this.#scan = scan
  }

  /** Scans run so far. */
  get scans(): number {
    return this.#scans
  }

  /** SIGKILLs every process found under `root` (but members of `exceptGroup`); resolves with their pids. */
  sweep(root: string, exceptGroup?: number): Promise<number[]> {
    return new Promise<number[]>((done, failed) => {
      this.#waiting.push({ root, exceptGroup, done, failed })
      if (this.#scanning) return
      this.#scanning = true
      // A turn later: the instances a stop or a scale-down ends together share the first scan.
      setImmediate(() => void this.#run())
    })
  }

  async #run(): Promise<void> {
    while (this.#waiting.length > 0) {
      const sweeps = this.#waiting
      this.#waiting = []
      this.#scans++
      let found: ReadonlyMap<number, string>
      try {
        found = await this.#scan(sweeps.map((s) => s.root))
      } catch (err) {
        for (const s of sweeps) s.failed(err)
        continue
      }
      // Each sweep on its own: one that fails does not fail the others.
      await Promise.all(sweeps.map(async (s) => {
        try {
          const pids = await pick(found, s.root, s.exceptGroup)
          killAll(pids)
          s.done(pids)
        } catch (err) {
          s.failed(err)
        }
      }))
    }
    this.#scanning = false
  }
}
