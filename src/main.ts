#!/usr/bin/env -S MALLOC_ARENA_MAX=2 node --max-semi-space-size=16
import { enableCompileCache } from 'node:module'
import { homedir } from 'node:os'
import { join } from 'node:path'

// Node's compile cache: a start that finds the app compiled (and its types stripped) there costs
// ~0.45 s less CPU and, when this file too was cached (NODE_COMPILE_CACHE set before Node starts,
// as the image does), loads no TypeScript transformer: ~25 MB less RSS (bench/RESULTS.md). The
// directory is the user's own, never a shared one such as /tmp: what is in it runs as maitre.
// One that cannot be written is left alone. Everything else loads after this, hence the import().
// A user with no home (no $HOME, no passwd entry: an arbitrary uid) runs without the cache.
if (process.env['NODE_COMPILE_CACHE'] === undefined) {
  try {
    enableCompileCache(join(homedir(), '.cache', 'maitre', 'node-compile-cache'))
  } catch {
    // homedir() threw (ENOENT): nowhere of the user's own to keep it.
  }
}
const { runCli } = await import('./cli.ts')

/**
 * The same signal again within this long is the same request to stop: Ctrl-C on `npm start`
 * reaches both npm and maitre (the terminal signals the whole process group), and npm forwards
 * it too, so maitre sees it twice within milliseconds.
 */
const REPEAT_WINDOW_MS = 1000

const stopSignal = (): Promise<void> =>
  new Promise((resolve) => {
    let firstAt: number | undefined
    const onSignal = (): void => {
      const now = Date.now()
      if (firstAt === undefined) {
        firstAt = now
        resolve()
        return
      }
      // A second signal, later on, means "now": do not wait for the drain.
      if (now - firstAt >= REPEAT_WINDOW_MS) process.exit(1)
    }
    process.on('SIGTERM', onSignal)
    process.on('SIGINT', onSignal)
    // The terminal maitre was started from closed (an ssh session ended): stop as for SIGTERM.
    // Node's default would exit at once, leaving every local instance running with nothing to
    // manage it (each runs in a process group of its own, which the hangup does not reach).
    // (nohup cannot keep maitre running: Node resets an ignored SIGHUP to the default, exit, as it
    // starts. A drain is the better end; `setsid` or a service manager keeps it running.)
    process.on('SIGHUP', onSignal)
  })

// With that terminal gone, a write to it fails (EIO), as one to a closed pipe does (EPIPE): the
// drain goes on without its log lines rather than stopping at an 'error' nobody listens to.
for (const stream of [process.stdout, process.stderr]) stream.on('error', () => undefined)

// The last safety net: a rejection nothing handled is reported, and the router stays up (the
// request path has its own net, which also answers the request).
process.on('unhandledRejection', (reason) => {
  const err = reason instanceof Error ? { type: reason.name, message: reason.message, stack: reason.stack } : { message: String(reason) }
  process.stderr.write(`${JSON.stringify({ level: 50, time: Date.now(), pid: process.pid, name: 'maitre', err, msg: 'unhandled rejection' })}\n`)
})

// Listening from the very start: a signal while the router starts up stops it once it is up,
// instead of killing it half-started.
const stopRequested = stopSignal()

process.exitCode = await runCli(process.argv.slice(2), process.env, {
  out: (text) => process.stdout.write(text),
  err: (text) => process.stderr.write(text),
  stopSignal: () => stopRequested,
})

// Everything is stopped and flushed by now. A library timer may still hold the event loop (the
// etcd client retries a watch stream it lost in an outage even after it is closed): it must not
// keep a stopped router alive. The grace lets stdout drain; the timer itself holds nothing.
setTimeout(() => process.exit(), 2000).unref()
