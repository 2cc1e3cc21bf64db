/**
 * An instance is a session (its leader ran under setsid), usually of one process group. But a
 * command may start process groups of its own inside that session (`timeout 3600 app`, a
 * script with `set -m`): a signal to the instance's group misses them, so a kill's SIGTERM
 * never reached the service it was meant for. Those are found in /proc (a process's session is
 * in its `stat`) and signalled too. One scan of /proc serves every signal asked for in the same
 * turn of the event loop (stopping a thousand instances scans once, not a thousand times), and
 * it gives the event loop back as it reads (ReadBudget).
 */
import { readFileSync } from 'node:fs'
import { listProcesses, READS_PER_TURN } from './memory.ts'
import { ReadBudget } from './read-budget.ts'

/** Sessions (by their leader's pid) to signal, and with what, at the next scan. */
const pending = new Map<number, NodeJS.Signals>()
/** The scan under way (or the last one). */
let running: Promise<void> = Promise.resolve()
/** The next scan, until it starts (and takes what is pending). */
let next: Promise<void> | undefined

/**
 * Signals the processes of session `sid` that are in other process groups than the session
 * leader's (which the caller signals itself, at once). Resolves once the scan that did it ended.
 */
export function signalOtherGroups(sid: number, signal: NodeJS.Signals): Promise<void> {
  // A SIGKILL asked for after a SIGTERM of the same session wins; never the other way round.
  if (pending.get(sid) !== 'SIGKILL') pending.set(sid, signal)
  next ??= running
    .then(() => new Promise<void>((resolve) => setImmediate(resolve)))
    .then(() => {
      next = undefined
      running = scan().catch(() => undefined)
      return running
    })
  return next
}

async function scan(): Promise<void> {
  const wanted = new Map(pending)
  pending.clear()
  const budget = new ReadBudget(READS_PER_TURN)
  for (const pid of (await listProcesses(budget)) ?? []) {
    await budget.read()
    let stat: string
    try {
      stat = readFileSync(`/proc/${pid}/stat`, 'latin1')
    } catch {
      continue // ended meanwhile
    }
    // After the command name (which may hold spaces and parentheses): state, ppid, pgrp, session.
    const [, , pgrp, session] = stat.slice(stat.lastIndexOf(')') + 2).split(' ', 4).map(Number)
    const signal = session === undefined ? undefined : wanted.get(session)
    if (signal === undefined || pgrp === session) continue
    try {
      process.kill(pid, signal)
    } catch {
      // Gone meanwhile.
    }
  }
}
