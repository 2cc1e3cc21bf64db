/**
 * One instance = one process group. The group's leader first forks a watchdog that blocks on a
 * pipe from maitre and kills the whole group when the pipe closes: if maitre dies, even by
 * SIGKILL, the kernel closes the pipe and no instance is orphaned. The leader then runs the
 * service's run script itself (sourced, `$0` its path), so its exit code is the service's, and a
 * `cmd` that ends in `exec` makes the service the leader.
 *
 * A kill signals the whole group with SIGTERM, and the group goes once its leader exits. A leader
 * with no trap would die of that SIGTERM at once, and the service it runs (`node app.js`, any
 * `cmd` not ending in `exec`) with it, its termination grace lost. So the leader traps SIGTERM:
 * bash runs the trap once the foreground command has ended, and the trap also waits for what the
 * script started in the background (`app & wait`), then exits with the status of the command
 * the SIGTERM interrupted (143 for a `wait`).
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { closeSync, openSync } from 'node:fs'
import { join } from 'node:path'
import { signalOtherGroups } from './session-signals.ts'

// The watchdog ignores SIGTERM (a kill's SIGTERM reaches the whole group, and a router that dies
// during the grace must still take the group with it), and is disowned so that the trap's `wait`
// does not wait for it.
//
// When maitre dies the watchdog kills the leader's ($$) descendants first, found through
// /proc/<pid>/task/*/children, so process groups the command made of its own (`timeout`,
// `set -m`) go too; then its own group. Walking the instance's tree costs what the instance
// holds, not what the host runs (a scan of every process, times every instance, when maitre
// died with hundreds running). What left the tree (a daemon reparented to init) the sweep for
// leftovers at the next start ends (WAITER_SANDBOX).
const WATCHDOG = 'read -r -u 3 _; todo=$$; tree=; while [ -n "$todo" ]; do set -- $todo; p=$1; shift; todo="$*"; for c in $(cat /proc/$p/task/*/children 2>/dev/null); do [ "$c" = "$BASHPID" ] && continue; todo="$todo $c"; tree="$tree $c"; done; done; [ -n "$tree" ] && kill -KILL $tree 2>/dev/null; kill -KILL 0'
const LAUNCHER = `(trap "" TERM; ${WATCHDOG}) & disown; exec 3<&-; trap 'maitre_status=$?; wait; exit $maitre_status' TERM; . "$0"`

export interface GroupExit {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
}

export interface ProcessGroup {
  readonly pid: number
  /** Resolves when the group leader exits. */
  readonly exited: Promise<GroupExit>
  signal(signal: NodeJS.Signals): void
}

export function startProcessGroup(runScript: string, sandbox: string, env: Readonly<Record<string, string>>): ProcessGroup {
  const stdout = openSync(join(sandbox, 'stdout'), 'a', 0o600)
  const stderr = openSync(join(sandbox, 'stderr'), 'a', 0o600)
  let child: ChildProcess
  try {
    child = spawn('/bin/bash', ['-c', LAUNCHER, runScript], {
      cwd: sandbox,
      env,
      detached: true, // setsid: the instance leads its own process group
      stdio: ['ignore', stdout, stderr, 'pipe'],
    })
  } finally {
    closeSync(stdout)
    closeSync(stderr)
  }
  // A spawn that fails (EMFILE, EAGAIN: the router is out of something) reports it as an
  // 'error' event on the next tick: without a listener that would crash the router.
  let spawnError: Error | undefined
  child.once('error', (err) => {
    spawnError = err
  })
  const pid = child.pid
  if (pid === undefined) throw new Error(`the instance process could not be started${spawnError === undefined ? '' : `: ${spawnError.message}`}`)
  const exited = new Promise<GroupExit>((resolve) => {
    child.once('exit', (code, signal) => {
      // The leader is gone; take its watchdog and any leftover children with it.
      signalGroup(pid, 'SIGKILL')
      resolve({ code, signal })
    })
  })
  return {
    pid,
    exited,
    signal: (signal) => {
      signalGroup(pid, signal)
      // Process groups the command made of its own in the instance's session (`timeout`, `set -m`).
      void signalOtherGroups(pid, signal)
    },
  }
}

function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal)
  } catch {
    // ESRCH: the group is already gone.
  }
}
