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

/** Reads of a batch of environments with none answering for this long are given up. */
export const ENVIRON_READ_TIMEOUT_MS = 2_000

/**
 * Waits for `work`, giving up once nothing has progressed for `timeoutMs` (each call of the
 * returned `progressed` counts). A timer that fires late, the event loop having been held (a long
 * collection, a frozen VM), is no sign of a stuck read: it is armed again.
 */
function withInactivityTimeout<T>(timeoutMs: number, work: (progressed: () => void) => Promise<T>, onGiveUp: () => T): Promise<T> {
  return new Promise<T>((resolve) => {
    let settled = false
    let lastProgress = 0
    let timer: NodeJS.Timeout | undefined
    const arm = (delayMs: number): void => {
      const armedAt = performance.now()
      timer = setTimeout(() => {
        const now = performance.now()
        if (now - armedAt > delayMs * 1.5) return arm(timeoutMs)
        const quiet = now - lastProgress
        if (quiet < timeoutMs) return arm(timeoutMs - quiet)
        settled = true
        resolve(onGiveUp())
      }, delayMs)
    }
    const settle = (value: T): void => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      resolve(value)
    }
    // The work first, then the clock: a pause in between (this process not scheduled) must not
    // count against reads not yet asked for.
    let working: Promise<T>
    try {
      working = work(() => (lastProgress = performance.now()))
    } catch (err) {
      working = Promise.reject(err)
    }
    lastProgress = performance.now()
    arm(timeoutMs)
    working.then(settle, () => {
      if (!settled) settle(onGiveUp())
    })
  })
}

/**
 * Finds the processes whose environment names a sandbox. Reading another process's environment
 * takes a lock on its memory: a process stuck in the kernel holding it (on a hung NFS or FUSE
 * mount, say) holds the read and its thread of the pool for as long as it is stuck, and with it,
 * since sweeps are batched, every later sweep (ended instances' ports and sandboxes never
 * released, close() never returning). So a batch in which no read has answered for
 * `ENVIRON_READ_TIMEOUT_MS` gives up the reads left, and their processes are skipped until those
 * reads answer. Listing /proc gets the same bound. What stays: each stuck process holds one of the
 * pool's four threads; with four stuck, no file work of the router's moves, and sweeps then find
 * nothing (they still end).
 */
export class SandboxScanner {
  readonly #list: () => Promise<number[] | undefined>
  readonly #read: (pid: number) => Promise<string | undefined>
  readonly #timeoutMs: number
  readonly #onGiveUp: (what: number | 'listing') => void
  /** Processes whose environment read was given up and has not answered since. */
  readonly #stuck = new Set<number>()

  constructor(options: { list?: () => Promise<number[] | undefined>; read?: (pid: number) => Promise<string | undefined>; timeoutMs?: number; onGiveUp?: (what: number | 'listing') => void } = {}) {
    this.#list = options.list ?? listPids
    this.#read = options.read ?? sandboxOf
    this.#timeoutMs = options.timeoutMs ?? ENVIRON_READ_TIMEOUT_MS
    this.#onGiveUp = options.onGiveUp ?? (() => undefined)
  }

  /** Processes skipped because a read of theirs was given up and has not answered yet. */
  get stuck(): ReadonlySet<number> {
    return this.#stuck
  }

  /** Each live process whose environment names a sandbox within one of `roots`, with that sandbox. */
  readonly scan = async (roots: readonly string[]): Promise<Map<number, string>> => {
    const pids = await withInactivityTimeout(this.#timeoutMs, () => this.#list(), () => {
      this.#onGiveUp('listing')
      return undefined
    })
    const readable = (pids ?? []).filter((pid) => !this.#stuck.has(pid))
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

  /** The sandboxes of a batch of processes (undefined: none, unreadable, or given up). */
  #readBatch(batch: readonly number[]): Promise<(string | undefined)[]> {
    const sandboxes: (string | undefined)[] = batch.map(() => undefined)
    const done = batch.map(() => false)
    let givenUp = false
    return withInactivityTimeout(
      this.#timeoutMs,
      (progressed) => Promise.all(batch.map(async (pid, index) => {
        let sandbox: string | undefined
        try {
          sandbox = await this.#read(pid)
        } catch {
          sandbox = undefined
        }
        done[index] = true
        // Answered after all: its thread is free again, and it is read at the next scan.
        if (givenUp) this.#stuck.delete(pid)
        else {
          sandboxes[index] = sandbox
          progressed()
        }
      })).then(() => [...sandboxes]),
      () => {
        givenUp = true
        batch.forEach((pid, index) => {
          if (done[index]) return
          this.#stuck.add(pid)
          this.#onGiveUp(pid)
        })
        return [...sandboxes]
      },
    )
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
