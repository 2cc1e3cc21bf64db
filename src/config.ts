/**
 * Configuration: one literal of defaults, a YAML file over it, a short list of environment
 * variables and command-line flags over that. Every problem is reported at once, with the
 * file:line:col of the offending key, and unknown keys are errors (with a did-you-mean hint).
 */
import { readFileSync } from 'node:fs'
import { isIPv6 } from 'node:net'
import { resolve as resolvePath, sep } from 'node:path'
import { LineCounter, parseDocument, isMap, type Document } from 'yaml'
import { MaitreError } from './errors.ts'
import { LOG_LEVELS, type LogLevel } from './log.ts'
import { isDnsLabel } from './dns-label.ts'
import { isPrincipalName } from './auth/authenticator.ts'

export interface LocalBackendConfig {
  /** Where instance sandboxes go; null = <dataDir>/instances. */
  readonly workDir: string | null
  /** Address instances listen on. */
  readonly host: string
  readonly portRange: readonly [number, number]
  /** A released port rests this long before reuse. */
  readonly portRestMs: number
  readonly healthCheckTimeoutMs: number
  /** Probe interval for an instance that has not yet passed its first health check. */
  readonly startupProbeIntervalMs: number
  /** Floor for the SIGTERM → SIGKILL delay, whatever the service's termination grace. */
  readonly minSigkillDelayMs: number
  readonly restartBackoffBaseMs: number
  readonly restartBackoffMaxMs: number
  readonly memoryCheckIntervalMs: number
  /** Failed instances (since the last healthy one) before a deployment error is declared. */
  readonly minFailedInstances: number
  /**
   * An instance's stdout or stderr over this size is rotated (copied to stdout.1 / stderr.1,
   * then emptied), checked every memoryCheckIntervalMs: each file stays under about this plus
   * what the instance writes in one interval.
   */
  readonly maxLogBytes: number
  /** Sandboxes of failed instances kept per version for /apps/{id}/logs; older ones are removed. */
  readonly failedSandboxesKept: number
}

export interface KubernetesBackendConfig {
  /** API server URL; null = in-cluster when KUBERNETES_SERVICE_HOST is set, else the kubeconfig's. */
  readonly apiServer: string | null
  /** Kubeconfig file; null = $KUBECONFIG, else ~/.kube/config (used only outside a cluster). */
  readonly kubeconfig: string | null
  /** Kubeconfig context; null = its current-context. */
  readonly context: string | null
  /** Namespace for every ReplicaSet; null = maitre's own namespace in-cluster, else the context's, else default. */
  readonly namespace: string | null
  /** Image for services that name none (shell commands run in it). */
  readonly defaultImage: string
  /** Container port of $PORT0; $PORTn is this + n. Each pod has its own IP, so every version can share it. */
  readonly podBasePort: number
  /** Failed container runs (since the last ready one) before a deployment error is declared. */
  readonly minFailedInstances: number
  /** Watch streams are re-opened after this long (the API server's timeoutSeconds). */
  readonly watchTimeoutSecs: number
  /** First delay before re-listing after a failed list or watch; grows 1.5x up to 60 s. */
  readonly relistBackoffMs: number
  /** Floor for the pod's terminationGracePeriodSeconds (Waiter's pod-sigkill-delay-secs). */
  readonly minTerminationGraceSecs: number
  /**
   * How long a pod the scheduler cannot place (no node fits it yet) may wait before its version
   * has a deployment error: a cluster autoscaler adds a node within that. 0: at once.
   */
  readonly unschedulableGraceSecs: number
  /** Instead of a server-side token: the service-account token file re-read every minute (null = in-cluster default). */
  readonly tokenFile: string | null
  /** Every API call but the pod watch must be answered within this long, or it is retried. */
  readonly requestTimeoutMs: number
}

export interface MesosBackendConfig {
  /** The masters' URLs, comma-separated (http://host:5050); the leader among them is found by redirect. */
  readonly master: string
  /** The role the framework subscribes with (its offers and quota). */
  readonly role: string
  /** HTTP basic credentials, when the master authenticates frameworks (both or neither). */
  readonly principal: string | null
  readonly secret: string | null
  readonly frameworkName: string
  /** How long the master keeps the framework's tasks running while no router is subscribed (seconds). */
  readonly failoverTimeoutSecs: number
  /** Failed tasks (since the last healthy one) before a deployment error is declared. */
  readonly minFailedInstances: number
  /** How long an offer declined (or the unused part of one accepted) is not offered again, unless demand revives it. */
  readonly declineRefuseSecs: number
  /** Spread a version's instances over agents before packing them (bin-packing still picks among equals). */
  readonly spread: boolean
  /** Every call, and the state read, must be answered within this long. */
  readonly requestTimeoutMs: number
}

export interface AuthConfig {
  /** one-user: every caller from loopback is `user` (an admin); jwt: Bearer tokens checked against a JWKS. */
  readonly kind: 'one-user' | 'jwt'
  /** The one-user principal; null = the OS user running maitre. */
  readonly user: string | null
  /** A one-user router bound to a non-loopback address refuses to start unless this says so on purpose. */
  readonly allowRemoteOneUser: boolean
  /** Principals that may do everything (the one-user principal always may). */
  readonly admins: readonly string[]
  readonly jwt: {
    /** A JWKS file, re-read when it changes (exactly one of jwksFile and jwksUrl). */
    readonly jwksFile: string | null
    /** A JWKS URL, fetched and cached, fetched again when a token names an unknown key id. */
    readonly jwksUrl: string | null
    readonly issuer: string | null
    readonly audience: string | null
    /** Leeway for exp and nbf. */
    readonly clockSkewSecs: number
    /** The claim that names the principal. */
    readonly subjectClaim: string
  }
}

export interface Config {
  readonly server: {
    readonly host: string
    readonly port: number
    /** Extra host names that address this router itself rather than a token. */
    readonly hostnames: readonly string[]
    readonly maxHeaderBytes: number
    readonly keepAliveTimeoutMs: number
    readonly headersTimeoutMs: number
    /** A request whose body sends nothing for this long gets 408 and its slot back. */
    readonly bodyIdleTimeoutMs: number
    /** Most headers a request may carry (431 beyond). */
    readonly maxHeaders: number
    /** Open client connections, in all (0 = no limit); beyond it a new one gets 503 and is closed. */
    readonly maxConnections: number
    /** Open client connections from one address (0 = no limit): one client cannot take them all. */
    readonly maxConnectionsPerClient: number
    /** Requests under way on one connection at once (HTTP/1.1 pipelining); beyond it, 429 and the connection closes. */
    readonly maxRequestsPerConnection: number
    readonly shutdownTimeoutMs: number
    /**
     * Where the other routers of a cluster reach this one; null = http://<host>:<port>, with
     * this machine's first non-loopback IPv4 address (a pod's IP) when host is 0.0.0.0 or ::.
     */
    readonly advertiseUrl: string | null
    /**
     * The admin API on a listener of its own (host null = the one listener serves everything, as
     * by default). With it, the main listener serves the data path and health checks only.
     */
    readonly admin: { readonly host: string | null; readonly port: number }
    /**
     * TLS on the router's listeners (PEM files; both or neither): ALPN offers h2 and http/1.1.
     * Without it the port speaks cleartext HTTP/1.1 and h2c.
     */
    readonly tls: { readonly cert: string | null; readonly key: string | null }
    /**
     * After a burst, the memory it left behind goes back to the system (memory/release.ts): once no
     * proxied request has begun for quietMs (60 s by default; 0 = never; else at least 1 s), if the
     * RSS grew by growthMb since the last release, one memory-reducing collection. V8's own memory
     * reducer hands the pages back after 1.5–3 minutes of quiet in the runs measured
     * (bench/RESULTS.md): this makes the bound stated and the moment known, a little sooner.
     * Quiet spells between quietMs and V8's own moment now pay for the release (its pause grows
     * with the live heap) and for the heap the next burst grows back.
     */
    readonly memoryRelease: { readonly quietMs: number; readonly growthMb: number }
  }
  readonly dataDir: string
  /** Tokens the store holds at most (soft-deleted ones included); creating one more answers 507. */
  readonly maxTokens: number
  readonly maxTokensPerOwner: number
  /** Service versions recorded at most (a new one past it: 507). */
  readonly maxVersions: number
  readonly cluster: string
  /** This router's name among its peers (cluster mode); null = generated once and kept in the data directory. */
  readonly routerId: string | null
  /** Cluster mode: routers share state through etcd. No endpoints = a single router on its data directory. */
  readonly etcd: {
    readonly endpoints: readonly string[]
    /** Namespace of every key; null = /maitre/<cluster>, so that two clusters can share one etcd. */
    readonly prefix: string | null
    /** Membership and leadership lapse this long after a router stops renewing them (crash, partition). */
    readonly leaseTtlSecs: number
    /** Each etcd call (get, put, transaction, lease grant) fails after this long. */
    readonly requestTimeoutMs: number
  }
  readonly serviceIdPrefix: string
  /** Secret instance passwords derive from; null = generated once and kept in the data directory. */
  readonly secret: string | null
  readonly auth: AuthConfig
  readonly proxy: {
    readonly allowOnTheFly: boolean
    readonly queueTimeoutMs: number
    readonly socketTimeoutMs: number
    readonly streamingTimeoutMs: number
    /**
     * A client that takes nothing of its answer for this long (never less than the streaming
     * timeout) is cut, its slot freed. Long, because the router sees a reader's progress only as
     * the kernel's socket buffer empties (in steps of megabytes over HTTP/1.1).
     */
    readonly clientStallTimeoutMs: number
    readonly connectTimeoutMs: number
    readonly ejectBaseMs: number
    readonly maxEjectMs: number
    readonly resolutionCacheSize: number
    readonly websocket: {
      /** Largest WebSocket message either side may send; a larger one closes the connection with 1009. */
      readonly maxMessageBytes: number
      /** A WebSocket with no message either way for this long is closed (1001). */
      readonly idleTimeoutMs: number
    }
  }
  readonly backend: { readonly kind: 'local' | 'kubernetes' | 'mesos'; readonly local: LocalBackendConfig; readonly kubernetes: KubernetesBackendConfig; readonly mesos: MesosBackendConfig }
  readonly scaler: {
    readonly tickMs: number
    /** Demand at this multiple of the ready capacity starts a burst: jump to the ideal count at once. */
    readonly burstThreshold: number
    /** A burst holds (no scale-down) this long after demand last crossed the threshold. */
    readonly burstHoldMs: number
    /** Least time between two kills of one version. */
    readonly interKillMs: number
    readonly gcIntervalMs: number
    /** A version failing to start is deleted after its grace period plus this. */
    readonly brokenServiceTimeoutMins: number
    /** The keep-alive policy of versions whose token sets none: 'fixed' (idle-timeout-mins) or 'adaptive'. */
    readonly keepAlive: 'fixed' | 'adaptive'
    /** How often adaptive versions are looked at, to let them go or pre-warm them on time. */
    readonly keepAliveTickMs: number
    /** Versions whose idle-time history is kept (least recently used forgotten first). */
    readonly keepAliveVersions: number
  }
  readonly log: {
    readonly level: LogLevel
    /** One `request completed` line per proxied request. */
    readonly access: boolean
  }
}

export const DEFAULTS: Config = {
  server: {
    host: '127.0.0.1',
    port: 9091,
    hostnames: [],
    maxHeaderBytes: 32768,
    keepAliveTimeoutMs: 65000,
    headersTimeoutMs: 60000,
    bodyIdleTimeoutMs: 30000,
    maxHeaders: 128,
    maxConnections: 10000,
    maxConnectionsPerClient: 2000,
    maxRequestsPerConnection: 16,
    shutdownTimeoutMs: 10000,
    advertiseUrl: null,
    admin: { host: null, port: 9092 },
    tls: { cert: null, key: null },
    memoryRelease: { quietMs: 60_000, growthMb: 32 },
  },
  dataDir: './data',
  maxTokens: 100000,
  maxTokensPerOwner: 1000,
  maxVersions: 100000,
  cluster: 'maitre',
  routerId: null,
  etcd: { endpoints: [], prefix: null, leaseTtlSecs: 5, requestTimeoutMs: 2000 },
  serviceIdPrefix: 'maitre-',
  secret: null,
  auth: {
    kind: 'one-user',
    user: null,
    allowRemoteOneUser: false,
    admins: [],
    jwt: { jwksFile: null, jwksUrl: null, issuer: null, audience: null, clockSkewSecs: 60, subjectClaim: 'sub' },
  },
  proxy: {
    allowOnTheFly: false,
    queueTimeoutMs: 300000,
    socketTimeoutMs: 900000,
    streamingTimeoutMs: 20000,
    clientStallTimeoutMs: 120000,
    connectTimeoutMs: 5000,
    ejectBaseMs: 10000,
    maxEjectMs: 300000,
    resolutionCacheSize: 10000,
    websocket: { maxMessageBytes: 1048576, idleTimeoutMs: 300000 },
  },
  backend: {
    kind: 'local',
    local: {
      workDir: null,
      host: '127.0.0.1',
      portRange: [10000, 10999],
      portRestMs: 2000,
      healthCheckTimeoutMs: 1000,
      startupProbeIntervalMs: 25,
      minSigkillDelayMs: 1000,
      restartBackoffBaseMs: 250,
      restartBackoffMaxMs: 30000,
      memoryCheckIntervalMs: 1000,
      minFailedInstances: 2,
      maxLogBytes: 10485760,
      failedSandboxesKept: 5,
    },
    kubernetes: {
      apiServer: null,
      kubeconfig: null,
      context: null,
      namespace: null,
      defaultImage: 'docker.io/library/debian:bookworm-slim',
      podBasePort: 8080,
      minFailedInstances: 2,
      watchTimeoutSecs: 300,
      relistBackoffMs: 100,
      minTerminationGraceSecs: 3,
      unschedulableGraceSecs: 120,
      tokenFile: null,
      requestTimeoutMs: 10000,
    },
    mesos: {
      master: 'http://127.0.0.1:5050',
      role: 'maitre',
      principal: null,
      secret: null,
      frameworkName: 'maitre',
      failoverTimeoutSecs: 604800,
      minFailedInstances: 2,
      declineRefuseSecs: 60,
      spread: true,
      requestTimeoutMs: 10000,
    },
  },
  scaler: {
    tickMs: 1000,
    burstThreshold: 2,
    burstHoldMs: 60000,
    interKillMs: 1000,
    gcIntervalMs: 60000,
    brokenServiceTimeoutMins: 30,
    keepAlive: 'fixed',
    keepAliveTickMs: 5000,
    keepAliveVersions: 10000,
  },
  log: { level: 'info', access: true },
}

export interface ConfigIssue {
  readonly path: string
  readonly message: string
  readonly where?: string
}

type Rule = (value: unknown) => string | undefined

/** A router id: it names the router's keys in etcd and its log lines. */
export const ROUTER_ID = /^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$/

/** What is wrong with an etcd endpoint: it must be a plain http(s) URL of a host and port, with no credentials in it. */
function etcdEndpointProblem(value: unknown): string | undefined {
  if (typeof value !== 'string') return 'must be a URL string'
  let url: URL
  try {
    url = new URL(value)
  } catch {
    return 'is not a URL'
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return 'must be an http:// or https:// URL'
  if (url.username !== '' || url.password !== '') return 'must not carry credentials'
  // As written, not as a URL parser reads it: the etcd client dials the text after the scheme,
  // so a space, an upper-case scheme or a trailing "/" made an endpoint it could never reach.
  // (With its port: without one the client dials 443, in the clear.)
  if (!/^https?:\/\/[^\s/?#@]+:\d{1,5}$/.test(value)) return 'must be scheme://host:port and nothing more (a lower-case scheme, a port, no space, no trailing /)'
  return undefined
}

/** The etcd key prefix of a cluster: every key of maitre lives under it. */
export function etcdPrefixOf(config: Pick<Config, 'etcd' | 'cluster'>): string {
  return config.etcd.prefix ?? `/maitre/${config.cluster}`
}
/** The shortest router secret accepted, configured or read back from where it is kept. */
export const MIN_SECRET_LENGTH = 16
const positiveInt: Rule = (v) => (Number.isInteger(v) && (v as number) > 0 ? undefined : 'must be a positive integer')
const nonNegativeInt: Rule = (v) => (Number.isInteger(v) && (v as number) >= 0 ? undefined : 'must be an integer >= 0')
/** Milliseconds a timer waits: Node caps a timer at 2^31 - 1 ms and fires a longer one after 1 ms. */
const MAX_TIMER_MS = 2 ** 31 - 1
const positiveMs: Rule = (v) => (Number.isInteger(v) && (v as number) > 0 && (v as number) <= MAX_TIMER_MS ? undefined : `must be an integer of milliseconds in [1, ${MAX_TIMER_MS}]`)
const nonNegativeMs: Rule = (v) => (Number.isInteger(v) && (v as number) >= 0 && (v as number) <= MAX_TIMER_MS ? undefined : `must be an integer of milliseconds in [0, ${MAX_TIMER_MS}]`)
/** The most a request's header block may be made to take (1 MiB) and hold (4,096 fields): what a router holds per connection must stay bounded. */
const MAX_HEADER_BYTES = 1024 * 1024
const MAX_HEADERS = 4096
const intIn = (min: number, max: number): Rule => (v) => (Number.isInteger(v) && (v as number) >= min && (v as number) <= max ? undefined : `must be an integer in [${min}, ${max}]`)
const port: Rule = (v) => (Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 65535 ? undefined : 'must be a port number in [0, 65535]')

/** Rules beyond "same type as the default", by dotted path. */
const RULES: Readonly<Record<string, Rule>> = {
  'server.port': port,
  'server.hostnames': (v) => ((v as unknown[]).every((h) => typeof h === 'string' && (/^[^\s/@:]{1,253}$/.test(h) || isIPv6(h.replace(/^\[(.*)\]$/, '$1')))) ? undefined : 'must be a list of host names without a port (1-253 characters, no spaces, "/", "@" or ":" but in an IPv6 address)'),
  // Labels and selectors of the Kubernetes backend carry it, and so does the etcd prefix.
  cluster: (v) => (typeof v === 'string' && /^[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/.test(v) ? undefined : 'must be a Kubernetes label value: 1-63 letters, digits, "-", "_" or ".", starting and ending with a letter or digit'),
  // (HTTP/2 takes it as its header-list setting, which stops at 2^32 - 1: a larger value crashed the router at the first HTTP/2 connection.)
  'server.maxHeaderBytes': intIn(1, MAX_HEADER_BYTES),
  'server.keepAliveTimeoutMs': positiveMs,
  'server.headersTimeoutMs': positiveMs,
  'server.bodyIdleTimeoutMs': positiveMs,
  'server.maxHeaders': intIn(1, MAX_HEADERS),
  'server.maxConnections': nonNegativeInt,
  'server.maxConnectionsPerClient': nonNegativeInt,
  'server.maxRequestsPerConnection': positiveInt,
  'server.shutdownTimeoutMs': nonNegativeMs,
  'server.admin.port': port,
  'server.memoryRelease.quietMs': (v) => (Number.isInteger(v) && (v === 0 || ((v as number) >= 1000 && (v as number) <= 86_400_000)) ? undefined : 'must be 0 (never release) or an integer of milliseconds in [1000, 86400000]'),
  'server.memoryRelease.growthMb': (v) => (Number.isInteger(v) && (v as number) >= 1 && (v as number) <= 65536 ? undefined : 'must be an integer of MB in [1, 65536]'),
  'server.tls.cert': (v) => (v === null || (typeof v === 'string' && v !== '') ? undefined : 'must be the path of a PEM certificate (chain) file, or null'),
  'server.tls.key': (v) => (v === null || (typeof v === 'string' && v !== '') ? undefined : 'must be the path of a PEM private key file, or null'),
  'server.advertiseUrl': (v) => (v === null || (typeof v === 'string' && /^https?:\/\/[^/?#@\s]+$/.test(v)) ? undefined : 'must be an http:// or https:// URL with a host and optional port, no path or credentials, or null'),
  // Cookies, instance passwords and peer keys derive from it: an empty or short one (a template
  // never filled in) would let anyone forge an admin's login cookie.
  secret: (v) => (v === null || (typeof v === 'string' && v.trim().length >= MIN_SECRET_LENGTH) ? undefined : `must be at least ${MIN_SECRET_LENGTH} characters (leave it null to have one generated), or null`),
  maxTokens: positiveInt,
  maxTokensPerOwner: positiveInt,
  maxVersions: positiveInt,
  routerId: (v) => (v === null || (typeof v === 'string' && ROUTER_ID.test(v)) ? undefined : 'must be 1-63 letters, digits, ".", "_" or "-", starting with a letter or digit, or null'),
  'etcd.endpoints': (v) => {
    const bad = (v as unknown[]).find((e) => etcdEndpointProblem(e) !== undefined)
    if (bad !== undefined) return `${JSON.stringify(bad)} ${etcdEndpointProblem(bad)}`
    // One client dials them all, with TLS or without.
    const schemes = new Set((v as string[]).map((e) => new URL(e).protocol))
    return schemes.size > 1 ? 'must all be http:// or all https://: one client with one kind of connection dials them' : undefined
  },
  'etcd.prefix': (v) => (v === null || (typeof v === 'string' && /^\/[\x21-\x7e]{0,200}$/.test(v) && !v.endsWith('/')) ? undefined : 'must start with "/", not end with "/", and hold only printable ASCII without spaces (at most 200), or be null'),
  'etcd.leaseTtlSecs': (v) => (Number.isInteger(v) && (v as number) >= 2 && (v as number) <= 60 ? undefined : 'must be an integer in [2, 60] (seconds)'),
  'etcd.requestTimeoutMs': positiveMs,
  serviceIdPrefix: (v) => (typeof v === 'string' && v.length <= 20 && isDnsLabel(`${v}x`) ? undefined : 'must be at most 20 characters of a-z, 0-9 and -, starting with a letter'),
  'auth.kind': (v) => (v === 'one-user' || v === 'jwt' ? undefined : "must be 'one-user' or 'jwt'"),
  // Principals travel in headers to instances: what a JWT subject must be, these must be too.
  'auth.user': (v) => (v === null || isPrincipalName(v) ? undefined : 'must be a user name (printable ASCII, no space at either end, at most 256 characters, not * or :any) or null'),
  'auth.admins': (v) => ((v as unknown[]).every((a) => isPrincipalName(a)) ? undefined : 'must be a list of principal names (printable ASCII, no space at either end, at most 256 characters, not * or :any)'),
  'auth.jwt.jwksUrl': (v) => (v === null || (typeof v === 'string' && /^https?:\/\/[^\s]+$/.test(v)) ? undefined : 'must be an http:// or https:// URL, or null'),
  'auth.jwt.clockSkewSecs': (v) => (Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 600 ? undefined : 'must be an integer in [0, 600] (seconds)'),
  'auth.jwt.subjectClaim': (v) => (typeof v === 'string' && v !== '' ? undefined : 'must name a claim'),
  'proxy.queueTimeoutMs': positiveMs,
  'proxy.socketTimeoutMs': positiveMs,
  'proxy.streamingTimeoutMs': positiveMs,
  'proxy.clientStallTimeoutMs': positiveMs,
  'proxy.connectTimeoutMs': positiveMs,
  'proxy.ejectBaseMs': positiveMs,
  'proxy.maxEjectMs': positiveMs,
  'proxy.resolutionCacheSize': (v) => (Number.isInteger(v) && (v as number) >= 1 && (v as number) <= 1_000_000 ? undefined : 'must be an integer from 1 to 1000000 (resolutions cached)'),
  'proxy.websocket.maxMessageBytes': (v) => (Number.isInteger(v) && (v as number) >= 125 && (v as number) <= 64 * 1024 * 1024 ? undefined : 'must be an integer in [125, 67108864] (bytes)'),
  'proxy.websocket.idleTimeoutMs': (v) => (Number.isInteger(v) && (v as number) > 0 && (v as number) <= 2 ** 31 - 1 ? undefined : 'must be a positive integer of milliseconds, at most 2147483647'),
  'backend.kind': (v) => (v === 'local' || v === 'kubernetes' || v === 'mesos' ? undefined : "must be 'local', 'kubernetes' or 'mesos'"),
  'backend.mesos.master': (v) => {
    const masters = typeof v === 'string' ? v.split(',').map((m) => m.trim()) : []
    // No user:password@ in it: undici sends no credentials from a URL (so the master answers
    // 401 for ever), and every log line naming the master would show them.
    if (masters.some((m) => /^https?:\/\/[^/]*@/.test(m))) return 'must carry no credentials: set backend.mesos.principal and backend.mesos.secret'
    return masters.length > 0 && masters.every((m) => /^https?:\/\/[^\s/@]+\/?$/.test(m)) ? undefined : 'must be a master URL (http://host:5050) or a comma-separated list of them'
  },
  'backend.mesos.role': (v) => (typeof v === 'string' && /^[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,127}$/.test(v) && v !== '.' && v !== '..' ? undefined : "must be a Mesos role name (letters, digits, '_', '.', '-'; not starting with '.' or '-'; at most 128)"),
  'backend.mesos.principal': (v) => (v === null || (typeof v === 'string' && v.trim() !== '' && !v.includes(':')) ? undefined : "must be a non-blank principal without ':', or null"),
  'backend.mesos.secret': (v) => (v === null || (typeof v === 'string' && v !== '') ? undefined : 'must be a non-empty secret, or null'),
  'backend.mesos.frameworkName': (v) => (typeof v === 'string' && v.trim() !== '' ? undefined : 'must be a non-blank name'),
  'backend.mesos.failoverTimeoutSecs': (v) => (typeof v === 'number' && Number.isFinite(v) && v >= 60 ? undefined : 'must be at least 60 (seconds): the master kills every task of a framework gone longer than this'),
  'backend.mesos.minFailedInstances': positiveInt,
  'backend.mesos.declineRefuseSecs': (v) => (typeof v === 'number' && Number.isFinite(v) && v >= 0 && v <= 3600 ? undefined : 'must be a number of seconds in [0, 3600]'),
  'backend.mesos.requestTimeoutMs': positiveMs,
  'backend.kubernetes.namespace': (v) => (v === null || isDnsLabel(v as string) ? undefined : 'must be a DNS-1123 label (a-z, 0-9, -; at most 63) or null'),
  'backend.kubernetes.podBasePort': (v) => (port(v) === undefined && (v as number) > 0 && (v as number) <= 65000 ? undefined : 'must be a port number in [1, 65000]'),
  'backend.kubernetes.minFailedInstances': positiveInt,
  // The router's own deadline on a watch is this plus 30 s, as a timer: past Node's ceiling it would fire at once.
  'backend.kubernetes.watchTimeoutSecs': (v) => (Number.isInteger(v) && (v as number) >= 1 && (v as number) <= 86_400 ? undefined : 'must be an integer of seconds in [1, 86400]'),
  'backend.kubernetes.relistBackoffMs': positiveMs,
  'backend.kubernetes.minTerminationGraceSecs': nonNegativeInt,
  'backend.kubernetes.unschedulableGraceSecs': (v) => (Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 3600 ? undefined : 'must be an integer in [0, 3600] (seconds)'),
  'backend.kubernetes.requestTimeoutMs': positiveMs,
  'backend.local.portRange': (v) =>
    Array.isArray(v) && v.length === 2 && v.every((p) => port(p) === undefined && (p as number) > 0) && (v[0] as number) <= (v[1] as number)
      ? undefined
      : 'must be [low, high] with 0 < low <= high <= 65535',
  'backend.local.portRestMs': nonNegativeMs,
  'backend.local.healthCheckTimeoutMs': positiveMs,
  'backend.local.startupProbeIntervalMs': positiveMs,
  'backend.local.minSigkillDelayMs': nonNegativeMs,
  'backend.local.restartBackoffBaseMs': nonNegativeMs,
  'backend.local.restartBackoffMaxMs': nonNegativeMs,
  'backend.local.memoryCheckIntervalMs': positiveMs,
  'backend.local.minFailedInstances': positiveInt,
  'backend.local.maxLogBytes': positiveInt,
  'backend.local.failedSandboxesKept': (v) => (Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 10 ? undefined : 'must be an integer in [0, 10] (the failed instances /apps lists)'),
  'scaler.tickMs': positiveMs,
  'scaler.burstThreshold': (v) => (typeof v === 'number' && v >= 1 ? undefined : 'must be a number >= 1'),
  'scaler.burstHoldMs': nonNegativeMs,
  'scaler.interKillMs': nonNegativeMs,
  'scaler.gcIntervalMs': positiveMs,
  'scaler.brokenServiceTimeoutMins': nonNegativeInt,
  'scaler.keepAlive': (v) => (v === 'fixed' || v === 'adaptive' ? undefined : "must be 'fixed' or 'adaptive'"),
  'scaler.keepAliveTickMs': positiveMs,
  'scaler.keepAliveVersions': (v) => (Number.isInteger(v) && (v as number) >= 1 && (v as number) <= 1_000_000 ? undefined : 'must be an integer from 1 to 1000000'),
  'log.level': (v) => (LOG_LEVELS.includes(v as LogLevel) ? undefined : `must be one of ${LOG_LEVELS.join(', ')}`),
}

function kindOf(value: unknown): string {
  if (value === null) return 'null'
  if (Array.isArray(value)) return 'list'
  return typeof value === 'object' ? 'map' : typeof value
}

function distance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i)
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0] as number
    row[0] = i
    for (let j = 1; j <= b.length; j++) {
      const cur = row[j] as number
      row[j] = Math.min(cur + 1, (row[j - 1] as number) + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1))
      prev = cur
    }
  }
  return row[b.length] as number
}

/** Overlays `input` on `defaults`, collecting every unknown key and type or rule violation. */
export function mergeConfig(defaults: unknown, input: unknown, path: string, issues: ConfigIssue[]): unknown {
  if (kindOf(defaults) === 'map') {
    if (kindOf(input) !== 'map') {
      issues.push({ path, message: `must be a map` })
      return defaults
    }
    const out: Record<string, unknown> = { ...(defaults as Record<string, unknown>) }
    for (const [key, value] of Object.entries(input as Record<string, unknown>)) {
      const child = path === '' ? key : `${path}.${key}`
      if (!(key in out)) {
        const near = Object.keys(out).find((k) => distance(k.toLowerCase(), key.toLowerCase()) <= 2)
        issues.push({ path: child, message: `is not a known setting${near === undefined ? '' : `; did you mean ${near}?`}` })
        continue
      }
      out[key] = mergeConfig(out[key], value, child, issues)
    }
    return out
  }
  const expected = kindOf(defaults)
  const actual = kindOf(input)
  const nullable = expected === 'null'
  if (!(actual === expected || (nullable && actual === 'string') || (actual === 'null' && nullable))) {
    issues.push({ path, message: `= ${shownValue(path, input)}, must be a ${nullable ? 'string or null' : expected}` })
    return defaults
  }
  const rule = RULES[path]
  const problem = rule?.(input)
  if (problem !== undefined) {
    issues.push({ path, message: `= ${shownValue(path, input)}, ${withoutUrlCredentials(problem)}` })
    return defaults
  }
  return input
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null) {
    for (const child of Object.values(value)) deepFreeze(child)
    Object.freeze(value)
  }
  return value
}

function locate(doc: Document, counter: LineCounter, file: string, path: string): string | undefined {
  const node = doc.getIn(path.split('.'), true) as { range?: [number, number, number] } | undefined
  const offset = node?.range?.[0]
  if (offset === undefined) return undefined
  const { line, col } = counter.linePos(offset)
  return `${file}:${line}:${col}`
}

function fail(issues: readonly ConfigIssue[]): never {
  const lines = issues.map((i) => `${i.where === undefined ? '' : `${i.where}: `}${i.path} ${i.message}`)
  throw new MaitreError('MAITRE_INVALID_CONFIG', `Invalid configuration:\n  ${lines.join('\n  ')}`, { details: { issues } })
}

/** Rules between settings, checked once everything is merged. */
function crossIssues(config: Config): ConfigIssue[] {
  const issues: ConfigIssue[] = []
  if (config.etcd.endpoints.length > 0 && config.backend.kind === 'local') {
    issues.push({
      path: 'etcd.endpoints',
      message: "= cluster mode, which needs a backend every router shares (backend.kind: kubernetes or mesos): the local backend's instances are one router's own processes",
    })
  }
  const mesos = config.backend.mesos
  if (config.backend.kind === 'mesos' && (mesos.principal === null) !== (mesos.secret === null)) {
    issues.push({ path: mesos.principal === null ? 'backend.mesos.principal' : 'backend.mesos.secret', message: 'is required with the other: HTTP basic authentication needs both' })
  }
  const { admin } = config.server
  const shareAddress = (a: string, b: string): boolean => a === b || ['0.0.0.0', '::', '[::]'].includes(a) || ['0.0.0.0', '::', '[::]'].includes(b)
  if (admin.host !== null && admin.port !== 0 && admin.port === config.server.port && shareAddress(admin.host, config.server.host)) {
    issues.push({ path: 'server.admin.port', message: `= ${admin.port}, the port of server.port too: the admin API needs a port of its own (or 0, any free one)` })
  }
  const { cert, key } = config.server.tls
  if ((cert === null) !== (key === null)) {
    issues.push({ path: cert === null ? 'server.tls.cert' : 'server.tls.key', message: 'is required with the other: TLS needs both a certificate and its key (PEM files)' })
  }
  const advertised = config.server.advertiseUrl
  if (config.etcd.endpoints.length > 0 && cert !== null && (advertised === null || advertised.startsWith('http:'))) {
    // The routers call each other (slot loans, kill and collection vetoes, read-your-writes,
    // Mesos followers) at the URL each advertises, http by default: with the port speaking only
    // TLS they could not, and every kill and collection would be vetoed by the silence.
    issues.push({ path: 'server.tls.cert', message: 'in cluster mode (etcd.endpoints) needs server.advertiseUrl to be an https:// URL whose certificate the other routers trust: they call each other there; or terminate TLS in front of the routers (a load balancer, an ingress)' })
  }
  const workDir = config.backend.local.workDir
  if (config.backend.kind === 'local' && workDir !== null) {
    // Everything in the work directory but its own files is removed at every start and stop.
    const data = resolvePath(config.dataDir)
    const work = resolvePath(workDir)
    if (data === work || data.startsWith(work.endsWith(sep) ? work : work + sep)) {
      issues.push({ path: 'backend.local.workDir', message: `= ${workDir}, which holds dataDir (${config.dataDir}): the local backend removes everything in its work directory at start and stop, the tokens and the data directory's lock with it; give each a directory of its own` })
    }
  }
  issues.push(...authIssues(config))
  return issues
}

/** Loopback addresses: a router bound only to them is reachable from this machine alone. */
export function isLoopbackHost(host: string): boolean {
  const h = host.toLowerCase().replace(/^\[|\]$/g, '')
  return h === 'localhost' || h === '::1' || /^127(\.\d{1,3}){3}$/.test(h) || /^::ffff:127(\.\d{1,3}){3}$/.test(h)
}

function authIssues(config: Config): ConfigIssue[] {
  const { auth } = config
  const issues: ConfigIssue[] = []
  if (auth.kind === 'one-user' && !auth.allowRemoteOneUser) {
    const listeners = [['server.host', config.server.host], ...(config.server.admin.host === null ? [] : [['server.admin.host', config.server.admin.host]])]
    const exposed = listeners.filter(([, host]) => !isLoopbackHost(host as string))
    for (const [path, host] of exposed) {
      issues.push({
        path: path as string,
        message: `= ${JSON.stringify(host)}, not a loopback address: with auth.kind one-user every caller would be the admin (and could run commands on this host). Configure auth.kind: jwt, or set auth.allowRemoteOneUser: true if that is really meant`,
      })
    }
  }
  if (auth.kind === 'jwt') {
    if ((auth.jwt.jwksFile === null) === (auth.jwt.jwksUrl === null)) issues.push({ path: 'auth.jwt', message: 'needs exactly one of jwksFile and jwksUrl' })
    if (auth.jwt.issuer === null) issues.push({ path: 'auth.jwt.issuer', message: 'is required with auth.kind jwt: a token of another issuer must not be accepted' })
    if (auth.jwt.audience === null) issues.push({ path: 'auth.jwt.audience', message: 'is required with auth.kind jwt: a token minted for another service must not be accepted' })
  }
  return issues
}

/**
 * A YAML error's words without the source they quote: the parser appends what it choked on after
 * ": " (a block scalar header, an alias name: a secret starting with |, > or * is quoted whole),
 * and names the character of a bad escape.
 */
function withoutQuotedSource(message: string): string {
  return message.split(': ')[0]?.replace(/^(Invalid escape sequence).*$/s, '$1') ?? message
}

/** Parses a YAML config text over the defaults. */
export function parseConfig(text: string, file = 'config'): Config {
  const counter = new LineCounter()
  // Not prettyErrors: those quote the offending line, which may hold a secret (an unclosed
  // quote after `secret:`); the file, line and column say where it is.
  const doc = parseDocument(text, { lineCounter: counter, prettyErrors: false })
  if (doc.errors.length > 0) {
    fail(doc.errors.map((e) => {
      const { line, col } = counter.linePos(e.pos[0])
      return { path: '(yaml)', message: withoutQuotedSource(e.message), where: `${file}:${line}:${col}` }
    }))
  }
  let input: unknown = {}
  try {
    if (doc.contents !== null) input = doc.toJS()
  } catch (err) {
    // Well-formed YAML can still be refused as a whole: aliases that expand past the parser's
    // bound (a "billion laughs"), say.
    fail([{ path: '(yaml)', message: withoutQuotedSource((err as Error).message), where: file }])
  }
  if (doc.contents !== null && !isMap(doc.contents)) fail([{ path: '(root)', message: 'must be a map of settings' }])
  const issues: ConfigIssue[] = []
  const merged = mergeConfig(DEFAULTS, input, '', issues)
  if (issues.length === 0) issues.push(...crossIssues(merged as Config))
  if (issues.length > 0) {
    fail(issues.map((i) => {
      const where = locate(doc, counter, file, i.path)
      return where === undefined ? i : { ...i, where }
    }))
  }
  return deepFreeze(merged as Config)
}

/** Settings whose value is a credential, at any depth (the router secret, the Mesos framework's password). */
const SECRET_KEY = /secret|password|passwd|credential/i

/** The user information of a URL (`scheme://user:password@host`), wherever one sits in a string. */
const URL_CREDENTIALS = /\b([a-z][a-z0-9+.-]*:\/\/)[^/\s?#]*@/gi

/**
 * A refused value as a configuration error shows it (stderr, a container's log, CI output): a
 * credential never, a URL without its user information.
 */
function shownValue(path: string, input: unknown): string {
  if (SECRET_KEY.test(path.slice(path.lastIndexOf('.') + 1)) && input !== null) return '<redacted>'
  return JSON.stringify(redacted(input))
}

/** A text with every URL's user information replaced (for what is printed: errors, logs). */
export function withoutUrlCredentials(text: string): string {
  return text.replace(URL_CREDENTIALS, '$1<redacted>@')
}

/** A copy of a settings tree with every credential's value replaced (null stays null: "none set" is no secret). */
function redacted(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(redacted)
  if (typeof value === 'string') return withoutUrlCredentials(value)
  if (value === null || typeof value !== 'object') return value
  const copy: Record<string, unknown> = {}
  for (const [key, inner] of Object.entries(value)) copy[key] = SECRET_KEY.test(key) && inner !== null ? '<redacted>' : redacted(inner)
  return copy
}

/** The config with every credential's value replaced (what --check-config prints). */
export function configWithoutCredentials(config: Config): unknown {
  return redacted(config)
}

/** The config as /settings shows it: no credential is ever shown, wherever it sits. */
export function redactedConfig(config: Config): unknown {
  return {
    ...(redacted(config) as object),
    // Waiter's own names for what its CLI and tools read from /settings.
    'cluster-config': { name: config.cluster },
    'scheduler-config': { kind: config.backend.kind },
    // Waiter polls its scheduler every this many seconds; maitre's backends push every change as
    // it happens (a watch, a health result), so routers agree within about a second.
    'scheduler-syncer-interval-secs': 1,
  }
}

export function loadConfigFile(path: string): Config {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (err) {
    throw new MaitreError('MAITRE_INVALID_CONFIG', `Cannot read config file ${path}: ${(err as Error).message}`)
  }
  return parseConfig(text, path)
}

/** Applies overrides given as dotted paths (from flags and environment) with the same checks. */
export function withOverrides(config: Config, overrides: Readonly<Record<string, unknown>>): Config {
  const patch: Record<string, unknown> = {}
  for (const [path, value] of Object.entries(overrides)) {
    if (value === undefined) continue
    const keys = path.split('.')
    let node = patch
    for (const key of keys.slice(0, -1)) node = (node[key] ??= {}) as Record<string, unknown>
    node[keys[keys.length - 1] as string] = value
  }
  const issues: ConfigIssue[] = []
  const merged = mergeConfig(config, patch, '', issues)
  if (issues.length === 0) issues.push(...crossIssues(merged as Config))
  if (issues.length > 0) fail(issues)
  return deepFreeze(merged as Config)
}
