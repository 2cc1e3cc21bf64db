/**
 * The etcd client of a router in cluster mode (etcd3, gRPC). Every unary call carries a deadline,
 * so a router never waits on an etcd that does not answer; watches and lease keep-alives are
 * streams and reconnect by themselves.
 */
import { circuitBreaker, ConsecutiveBreaker, ExponentialBackoff, handleWhen } from 'cockatiel'
import { Etcd3, isRecoverableError, type Watcher } from 'etcd3'

/**
 * A lost watch stream is re-opened after 100 ms, doubling up to 2 s: a router catches up within
 * about 2 s of etcd's return (the library's default waits up to 30 s), and a client closed
 * while etcd is away keeps no long retry timer pending.
 */
const WATCH_BACKOFF = new ExponentialBackoff({ initialDelay: 100, maxDelay: 2000 }).next()

/**
 * After three failed calls in a row the endpoint is left alone for 1 s (the library's default is
 * 5 s), and gRPC dials a lost endpoint again after 250 ms, doubling up to 2 s (its default grows
 * to 2 minutes): a router is back within about 2 s of etcd's return, however long it was away.
 */
const hostPolicy = (): ReturnType<typeof circuitBreaker> => circuitBreaker(handleWhen(isRecoverableError), { halfOpenAfter: 1000, breaker: new ConsecutiveBreaker(3) })
const GRPC_OPTIONS = {
  'grpc.initial_reconnect_backoff_ms': 250,
  'grpc.max_reconnect_backoff_ms': 2000,
  // A store opens with one range read of all its keys: gRPC's default 4 MiB would refuse a few
  // thousand tokens with their histories. The largest store (maxTokens 100,000) fits in 512 MiB.
  'grpc.max_receive_message_length': 512 * 1024 * 1024,
  // A silent partition (no RST) is noticed within about 15 s, so streams and calls fail over
  // instead of waiting on a dead connection (etcd accepts pings every 5 s at most).
  'grpc.keepalive_time_ms': 10_000,
  'grpc.keepalive_timeout_ms': 5_000,
}

/** Retries against an etcd that is away back off to at most this: a router catches up within about 2 s of its return. */
export const RETRY_MAX_MS = 2000

export interface EtcdSettings {
  readonly endpoints: readonly string[]
  /** Unary calls (get, put, transactions, lease grants) fail after this long. */
  readonly requestTimeoutMs: number
}

export function connectEtcd(settings: EtcdSettings): Etcd3 {
  return new Etcd3({
    hosts: [...settings.endpoints],
    dialTimeout: settings.requestTimeoutMs,
    faultHandling: { watchBackoff: WATCH_BACKOFF, host: hostPolicy },
    grpcOptions: GRPC_OPTIONS,
    defaultCallOptions: (context) => (context.isStream ? {} : { deadline: Date.now() + settings.requestTimeoutMs }),
  })
}

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
  let timer: NodeJS.Timeout | undefined
  await Promise.race([
    watcher.cancel().catch(() => undefined),
    new Promise<void>((resolve) => {
      timer = setTimeout(resolve, CANCEL_TIMEOUT_MS)
    }),
  ])
  clearTimeout(timer)
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
