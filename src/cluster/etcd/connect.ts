/**
 * The etcd client of a router in cluster mode (etcd3, gRPC). Every unary call carries a deadline,
 * so a router never waits on an etcd that does not answer; watches and lease keep-alives are
 * streams and reconnect by themselves.
 */
import { Etcd3 } from 'etcd3'

export interface EtcdSettings {
  readonly endpoints: readonly string[]
  /** Unary calls (get, put, transactions, lease grants) fail after this long. */
  readonly requestTimeoutMs: number
}

export function connectEtcd(settings: EtcdSettings): Etcd3 {
  return new Etcd3({
    hosts: [...settings.endpoints],
    dialTimeout: settings.requestTimeoutMs,
    defaultCallOptions: (context) => (context.isStream ? {} : { deadline: Date.now() + settings.requestTimeoutMs }),
  })
}
