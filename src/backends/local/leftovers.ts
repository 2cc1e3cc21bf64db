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

/** The pids /proc lists, but this process's; undefined when it cannot be listed (not Linux). */
async function listPids(): Promise<number[] | undefined> {
  try {
    return (await readdir('/proc')).filter((e) => /^\d+$/.test(e)).map(Number).filter((pid) => pid !== process.pid)
  } catch {
    return undefined
  }
}

/** A read of one process's environment taking longer than this is given up. */
export const ENVIRON_READ_TIMEOUT_MS = 2_000

/**
 * Finds the processes whose environment names a sandbox. Reading another process's environment
 * takes a lock on its memory: a process stuck in the kernel holding it (on a hung NFS or FUSE
 * mount, say) would hold the read, its thread of the pool, and with it every later sweep, so
 * ports and sandboxes of ended instances would never be released. A read past
 * `ENVIRON_READ_TIMEOUT_MS` is given up, and that process is not read again while it lives: at
 * most one thread of the pool stays stuck per such process.
 */
export class SandboxScanner {
  readonly #list: () => Promise<number[] | undefined>
  readonly #read: (pid: number) => Promise<string | undefined>
  readonly #timeoutMs: number
  readonly #stuck = new Set<number>()

  constructor(options: { list?: () => Promise<number[] | undefined>; read?: (pid: number) => Promise<string | undefined>; timeoutMs?: number } = {}) {
    this.#list = options.list ?? listPids
    this.#read = options.read ?? sandboxOf
    this.#timeoutMs = options.timeoutMs ?? ENVIRON_READ_TIMEOUT_MS
  }

  /** Processes whose reads were given up, skipped while they live. */
  get stuck(): ReadonlySet<number> {
    return this.#stuck
  }

  /** Each live process whose environment names a sandbox within one of `roots`, with that sandbox. */
  readonly scan = async (roots: readonly string[]): Promise<Map<number, string>> => {
    const pids = (await this.#list()) ?? []
    const live = new Set(pids)
    for (const pid of this.#stuck) if (!live.has(pid)) this.#stuck.delete(pid)
    const readable = pids.filter((pid) => !this.#stuck.has(pid))
    const found = new Map<number, string>()
    // In batches: a host with thousands of processes must not open thousands of files at once.
    for (let i = 0; i < readable.length; i += 64) {
      const batch = readable.slice(i, i + 64)
      const seen = await this.#readBatch(batch)
      seen.forEach((sandbox, index) => {
        if (sandbox !== undefined && roots.some((root) => within(sandbox, root))) found.set(batch[index] as number, sandbox)
      })
    }
    return found
  }

  /** The sandboxes of a batch of processes; a read not done within the timeout counts as none, and its process as stuck. */
  #readBatch(batch: readonly number[]): Promise<(string | undefined)[]> {
    return new Promise((resolve) => {
      const sandboxes: (string | undefined)[] = batch.map(() => undefined)
      const done = batch.map(() => false)
      let left = batch.length
      const finish = (): void => {
        clearTimeout(timer)
        resolve(sandboxes)
      }
      const timer = setTimeout(() => {
        batch.forEach((pid, index) => {
          if (!done[index]) this.#stuck.add(pid)
        })
        resolve([...sandboxes]) // a copy: a read that ends later must not change what was answered
      }, this.#timeoutMs)
      batch.forEach((pid, index) => {
        const settle = (sandbox: string | undefined): void => {
          done[index] = true
          sandboxes[index] = sandbox
          if (--left === 0) finish()
        }
        this.#read(pid).then(settle, () => settle(undefined))
      })
      if (left === 0) finish()
    })
  }
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
 * sweep was asked for: one asked while a scan runs waits for the next. (A scan cannot hang on a
 * stuck process: SandboxScanner gives such a read up.)
 */
export class LeftoverSweeper {
  readonly #scan: (roots: readonly string[]) => Promise<ReadonlyMap<number, string>>
  #waiting: Sweep[] = []
  #scanning = false
  #scans = 0

  constructor(scan: (roots: readonly string[]) => Promise<ReadonlyMap<number, string>> = new SandboxScanner().scan) {
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
