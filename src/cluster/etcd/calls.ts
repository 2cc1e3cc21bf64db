/**
 * What the etcd-backed stores and the coordinator share about calling etcd: how far retries back
 * off, how a watcher is let go, and a pause that a close cuts short. Types only from etcd3, so
 * that importing these loads no gRPC (connect.ts does, in cluster mode only).
 */
import type { Watcher, WatchBuilder } from 'etcd3'

/** Retries against an etcd that is away back off to at most this: a router catches up within about 2 s of its return. */
export const RETRY_MAX_MS = 2000

/** Watchers are cancelled within this long, or given up on: a stop never waits on an etcd that does not answer. */
const CANCEL_TIMEOUT_MS = 1000

/**
 * Lets go of a watcher. One that reported an error is already detached by the library (asking it
 * to cancel would wait for an answer that never comes), so it is only silenced; any other is
 * cancelled, waiting at most CANCEL_TIMEOUT_MS.
 */
export async function dropWatcher(watcher: Watcher, failed: boolean): Promise<void> {
  watcher.removeAllListeners('put')
  watcher.removeAllListeners('delete')
  watcher.removeAllListeners('error')
  // An 'error' with no listener would throw from the library's stream handler.
  watcher.on('error', () => undefined)
  if (failed) return
  await farewell(watcher.cancel())
}

/**
 * Waits for a call made on the way out (a watch's cancel, the lease's revoke) at most
 * CANCEL_TIMEOUT_MS, its failure ignored: what it would have done etcd does by itself in time
 * (a lapsed lease), and the library's retries must not multiply a stop's wait.
 */
export async function farewell(call: Promise<unknown>): Promise<void> {
  let timer: NodeJS.Timeout | undefined
  await Promise.race([
    call.catch(() => undefined),
    new Promise<void>((resolve) => {
      timer = setTimeout(resolve, CANCEL_TIMEOUT_MS)
    }),
  ])
  clearTimeout(timer)
}

/**
 * Starts a watch and resolves once etcd has accepted it, as the library's create() does, but
 * hands the watcher to `hold` at once. A watcher whose start is still pending when its owner
 * closes (etcd away) can then be let go: left attached, the library would retry it every 2 s,
 * on a closed client too, for as long as the process lives.
 */
export function startWatch(builder: WatchBuilder, hold: (watcher: Watcher) => void): Promise<Watcher> {
  const watcher = builder.watcher()
  hold(watcher)
  return new Promise((resolve, reject) => {
    const onConnected = (): void => {
      watcher.off('error', onError)
      resolve(watcher)
    }
    const onError = (err: unknown): void => {
      watcher.off('connected', onConnected)
      reject(err)
    }
    watcher.once('connected', onConnected)
    watcher.once('error', onError)
  })
}

/** Waits `ms`, or less if `signal` aborts first (a closing store or coordinator stops its retries at once). */
export function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve()
    const timer = setTimeout(done, ms)
    function done(): void {
      clearTimeout(timer)
      signal.removeEventListener('abort', done)
      resolve()
    }
    signal.addEventListener('abort', done, { once: true })
  })
}
