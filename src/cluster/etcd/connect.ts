/**
 * The etcd client of a router in cluster mode (etcd3, gRPC). Every unary call carries a deadline,
 * so a router never waits on an etcd that does not answer; watches and lease keep-alives are
 * streams and reconnect by themselves. Only cluster mode loads this module (app.ts imports it
 * when etcd endpoints are configured): etcd3 with gRPC and protobufjs costs a router ~270 ms of
 * start and ~8 MB of heap it has no use for on its own.
 */
import { circuitBreaker, ConsecutiveBreaker, ExponentialBackoff, handleWhen } from 'cockatiel'
import { Etcd3, isRecoverableError } from 'etcd3'

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

export interface EtcdSettings {
  readonly endpoints: readonly string[]
  /** Unary calls (get, put, transactions, lease grants) fail after this long. */
  readonly requestTimeoutMs: number
}

export function connectEtcd(settings: EtcdSettings): Etcd3 {
  const client = new Etcd3({
    hosts: [...settings.endpoints],
    dialTimeout: settings.requestTimeoutMs,
    faultHandling: { watchBackoff: WATCH_BACKOFF, host: hostPolicy },
    grpcOptions: GRPC_OPTIONS,
    defaultCallOptions: (context) => (context.isStream ? {} : { deadline: Date.now() + settings.requestTimeoutMs }),
  })
  requireLeader(client)
  return client
}

interface MetadataLike {
  clone(): MetadataLike
  set(key: string, value: string): void
}

/**
 * Every call and stream asks etcd for a member that has a leader (the Go client's
 * WithRequireLeader: metadata `hasleader: true`). Without it, a member cut off from the others
 * keeps a watch stream open and healthy but delivers nothing more: a router whose watches sat
 * there kept the membership, leader and load it last saw for as long as the partition lasted.
 * With it, etcd ends such streams (and refuses such calls) with "no leader" within a few
 * election timeouts, and the client goes to another member: the watches' disconnection reloads
 * the stores from there. etcd3 has no option for it: the metadata every call is given is
 * extended where the library makes it.
 */
function requireLeader(client: Etcd3): void {
  const authenticator = (client as unknown as { pool?: { authenticator?: { getMetadata?: () => Promise<MetadataLike> } } }).pool?.authenticator
  const metadataOf = authenticator?.getMetadata?.bind(authenticator)
  // The library's insides changed shape: fail at start, not run without the guard.
  if (authenticator === undefined || metadataOf === undefined) throw new Error('etcd3 no longer lets maitre require a leader on its calls (pool.authenticator.getMetadata is gone)')
  authenticator.getMetadata = async () => {
    const metadata = (await metadataOf()).clone()
    metadata.set('hasleader', 'true')
    return metadata
  }
}
