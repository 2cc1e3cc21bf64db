/**
 * The etcd client of a router in cluster mode (etcd3, gRPC). Every unary call carries a deadline,
 * so a router never waits on an etcd that does not answer; watches and lease keep-alives are
 * streams and reconnect by themselves.
 */
import { ExponentialBackoff } from 'cockatiel'
import { Etcd3 } from 'etcd3'

/**
 * A lost watch stream is re-opened after 100 ms, doubling up to 2 s: a router catches up within
 * about 2 s of etcd's return (the library's default waits up to 30 s), and a client closed
 * while etcd is away keeps no long retry timer pending.
 */
const WATCH_BACKOFF = new ExponentialBackoff({ initialDelay: 100, maxDelay: 2000 }).next()

export interface EtcdSettings {
  readonly endpoints: readonly string[]
  /** Unary calls (get, put, transactions, lease grants) fail after this long. */
  readonly requestTimeoutMs: number
}

export function connectEtcd(settings: EtcdSettings): Etcd3 {
  return new Etcd3({
    hosts: [...settings.endpoints],
    dialTimeout: settings.requestTimeoutMs,
    faultHandling: { watchBackoff: WATCH_BACKOFF },
    defaultCallOptions: (context) => (context.isStream ? {} : { deadline: Date.now() + settings.requestTimeoutMs }),
  })
}
