/**
 * The Kubernetes REST calls the backend makes, over undici. Raw REST rather than
 * @kubernetes/client-node: the backend needs eight calls, a watch that resumes from a
 * resourceVersion and re-lists on 410 (client-node's Watch never reconnects), and explicit patch
 * content types; undici is already the data path's client. Every call names the RBAC permission
 * it needs, and PERMISSIONS lists them all, so the shipped Role is exactly what is used (a test
 * holds the two equal).
 */
import { Agent, request, type Dispatcher } from 'undici'
import type { KubeConnection } from './connection.ts'
import type { KubeEvent, KubeList, KubeStatus, Pod, ReplicaSet, Scale } from './objects.ts'

export const PERMISSIONS = {
  replicasets: ['create', 'delete', 'list', 'watch'],
  'replicasets/scale': ['get', 'update'],
  pods: ['delete', 'list', 'patch', 'watch'],
  events: ['list'],
} as const satisfies Record<string, readonly string[]>

type Resource = keyof typeof PERMISSIONS
type Verb<R extends Resource> = (typeof PERMISSIONS)[R][number]

/** How long a call (anything but the watch) may take, connecting to last body byte. */
export const DEFAULT_REQUEST_TIMEOUT_MS = 10_000
/** The watch's headers come at once; only its body is quiet for long stretches. */
const WATCH_HEADERS_TIMEOUT_MS = 30_000
/** A watch still open this long after the server should have ended it is taken for dead. */
const WATCH_GRACE_SECS = 30

export interface KubeApiOptions {
  /** Bounds every call but the watch, so a hung API server cannot stall the backend. */
  readonly requestTimeoutMs?: number
}

/** A non-2xx answer from the API server, with its Status reason (NotFound, Conflict, Expired...). */
export class KubeApiError extends Error {
  readonly code: number
  readonly reason: string
  constructor(code: number, reason: string, message: string, options?: ErrorOptions) {
    super(message, options)
    this.name = 'KubeApiError'
    this.code = code
    this.reason = reason
  }
}

/**
 * The API server did not answer within the request timeout. A 504 Timeout, as the API server
 * itself reports one, so that it is retried like any other transient failure.
 */
export class KubeApiTimeoutError extends KubeApiError {
  constructor(call: string, timeoutMs: number, options?: ErrorOptions) {
    super(504, 'Timeout', `${call}: no answer from the API server within ${timeoutMs} ms`, options)
    this.name = 'KubeApiTimeoutError'
  }
}

export interface WatchEvent<T> {
  readonly type: 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK' | 'ERROR'
  readonly object: T
}

type Query = Record<string, string | number | boolean | undefined>

function queryString(query: Query): string {
  const parts = Object.entries(query)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`)
  return parts.length === 0 ? '' : `?${parts.join('&')}`
}

export class KubeApi {
  readonly namespace: string
  readonly #connection: KubeConnection
  readonly #agent: Agent
  readonly #requestTimeoutMs: number

  constructor(connection: KubeConnection, options: KubeApiOptions = {}) {
    this.#connection = connection
    this.namespace = connection.namespace
    this.#requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS
    this.#agent = new Agent({ connect: { ...connection.tls }, keepAliveTimeout: 30_000, connections: 16 })
  }

  #path(group: 'core' | 'apps', resource: string, name?: string, sub?: string): string {
    const base = group === 'core' ? '/api/v1' : '/apis/apps/v1'
    const ns = encodeURIComponent(this.namespace)
    return `${base}/namespaces/${ns}/${resource}${name === undefined ? '' : `/${encodeURIComponent(name)}`}${sub === undefined ? '' : `/${sub}`}`
  }

  /**
   * `_permission` is checked by the compiler only: a call outside PERMISSIONS does not build. One
   * deadline covers connecting, the headers and the whole body (undici's headersTimeout and
   * bodyTimeout leave connecting out, and bodyTimeout restarts at every chunk).
   */
  async #call<T, R extends Resource>(
    _permission: [R, Verb<R>],
    method: Dispatcher.HttpMethod,
    path: string,
    options: { query?: Query; body?: unknown; contentType?: string } = {},
  ): Promise<T> {
    const authorization = await this.#connection.authorization()
    const deadline = AbortSignal.timeout(this.#requestTimeoutMs)
    const { statusCode, text } = await this.#bounded(`${method} ${path}`, deadline, async () => {
      const res = await request(`${this.#connection.server}${path}${queryString(options.query ?? {})}`, {
        dispatcher: this.#agent,
        method,
        headers: {
          accept: 'application/json',
          ...(authorization === undefined ? {} : { authorization }),
          ...(options.body === undefined ? {} : { 'content-type': options.contentType ?? 'application/json' }),
        },
        body: options.body === undefined ? null : JSON.stringify(options.body),
        signal: deadline,
      })
      return { statusCode: res.statusCode, text: await res.body.text() }
    })
    if (statusCode >= 200 && statusCode < 300) return JSON.parse(text) as T
    throw errorOf(statusCode, text)
  }

  /** Whatever undici throws when the deadline aborts `exchange` becomes one typed, transient error. */
  async #bounded<T>(call: string, deadline: AbortSignal, exchange: () => Promise<T>): Promise<T> {
    try {
      return await exchange()
    } catch (err) {
      if (deadline.aborted) throw new KubeApiTimeoutError(call, this.#requestTimeoutMs, { cause: err })
      throw err
    }
  }

  listReplicaSets(labelSelector: string): Promise<KubeList<ReplicaSet>> {
    return this.#call(['replicasets', 'list'], 'GET', this.#path('apps', 'replicasets'), { query: { labelSelector } })
  }

  createReplicaSet(body: ReplicaSet): Promise<ReplicaSet> {
    return this.#call(['replicasets', 'create'], 'POST', this.#path('apps', 'replicasets'), { body })
  }

  /**
   * Background propagation: the garbage collector removes the pods after the ReplicaSet. With
   * its uid as a precondition (when known), a same-named successor is never deleted by mistake.
   */
  deleteReplicaSet(name: string, uid?: string): Promise<unknown> {
    return this.#call(['replicasets', 'delete'], 'DELETE', this.#path('apps', 'replicasets', name), {
      body: { kind: 'DeleteOptions', apiVersion: 'v1', propagationPolicy: 'Background', ...(uid === undefined ? {} : { preconditions: { uid } }) },
    })
  }

  getScale(name: string): Promise<Scale> {
    return this.#call(['replicasets/scale', 'get'], 'GET', this.#path('apps', 'replicasets', name, 'scale'))
  }

  /** Keeps the fetched resourceVersion, so a concurrent change is a 409 rather than lost. */
  replaceScale(name: string, scale: Scale): Promise<Scale> {
    return this.#call(['replicasets/scale', 'update'], 'PUT', this.#path('apps', 'replicasets', name, 'scale'), { body: scale })
  }

  listPods(labelSelector: string): Promise<KubeList<Pod>> {
    return this.#call(['pods', 'list'], 'GET', this.#path('core', 'pods'), { query: { labelSelector } })
  }

  patchPod(name: string, mergePatch: unknown): Promise<Pod> {
    return this.#call(['pods', 'patch'], 'PATCH', this.#path('core', 'pods', name), { body: mergePatch, contentType: 'application/merge-patch+json' })
  }

  /** The uid precondition makes sure a same-named successor is never deleted by mistake. */
  deletePod(name: string, uid: string, gracePeriodSeconds?: number): Promise<unknown> {
    return this.#call(['pods', 'delete'], 'DELETE', this.#path('core', 'pods', name), {
      body: { kind: 'DeleteOptions', apiVersion: 'v1', preconditions: { uid }, ...(gracePeriodSeconds === undefined ? {} : { gracePeriodSeconds }) },
    })
  }

  listEvents(fieldSelector: string): Promise<KubeList<KubeEvent>> {
    return this.#call(['events', 'list'], 'GET', this.#path('core', 'events'), { query: { fieldSelector } })
  }

  /**
   * Watches pods from `resourceVersion` until the server ends the stream (timeoutSeconds) or the
   * signal aborts. Each event goes to `onEvent`, ERROR included (a 410 arrives that way).
   */
  watchPods(labelSelector: string, resourceVersion: string, timeoutSeconds: number, signal: AbortSignal, onEvent: (event: WatchEvent<Pod | KubeStatus>) => void): Promise<void> {
    const _permission: [Resource, Verb<'pods'>] = ['pods', 'watch']
    return this.#watch(this.#path('core', 'pods'), labelSelector, resourceVersion, timeoutSeconds, signal, onEvent)
  }

  /** Watches ReplicaSets as watchPods watches pods: every router then sees the others' scale writes and deletes. */
  watchReplicaSets(labelSelector: string, resourceVersion: string, timeoutSeconds: number, signal: AbortSignal, onEvent: (event: WatchEvent<ReplicaSet | KubeStatus>) => void): Promise<void> {
    const _permission: [Resource, Verb<'replicasets'>] = ['replicasets', 'watch']
    return this.#watch(this.#path('apps', 'replicasets'), labelSelector, resourceVersion, timeoutSeconds, signal, onEvent)
  }

  async #watch<T>(path: string, labelSelector: string, resourceVersion: string, timeoutSeconds: number, signal: AbortSignal, onEvent: (event: WatchEvent<T | KubeStatus>) => void): Promise<void> {
    const authorization = await this.#connection.authorization()
    const query = { watch: 'true', labelSelector, resourceVersion, allowWatchBookmarks: 'true', timeoutSeconds }
    const res = await request(`${this.#connection.server}${path}${queryString(query)}`, {
      dispatcher: this.#agent,
      method: 'GET',
      headers: { accept: 'application/json', ...(authorization === undefined ? {} : { authorization }) },
      // A watch is quiet for long stretches, so no body timeout; but the server ends it at
      // timeoutSeconds, and one that goes silent past that (a dropped connection, no FIN) is
      // given up a little later, to be listed and watched anew.
      signal: AbortSignal.any([signal, AbortSignal.timeout((timeoutSeconds + WATCH_GRACE_SECS) * 1000)]),
      bodyTimeout: 0,
      headersTimeout: WATCH_HEADERS_TIMEOUT_MS,
    })
    if (res.statusCode !== 200) throw errorOf(res.statusCode, await res.body.text())
    const lines = new LineSplitter()
    for await (const chunk of res.body) {
      for (const line of lines.push(chunk as Buffer)) {
        if (line.trim() !== '') onEvent(JSON.parse(line) as WatchEvent<T | KubeStatus>)
      }
    }
  }

  /** Ends every connection, calls under way included: a closing router waits for none of them. */
  async close(): Promise<void> {
    await this.#agent.destroy()
  }
}

/**
 * Cuts a byte stream into newline-terminated lines. The decoder streams: a character whose bytes
 * arrive in two chunks is held back until it is whole, rather than becoming two U+FFFD.
 */
class LineSplitter {
  readonly #utf8 = new TextDecoder('utf-8')
  #partial = ''

  /** The lines this chunk completes, without their newlines. */
  push(chunk: Uint8Array): string[] {
    const lines = (this.#partial + this.#utf8.decode(chunk, { stream: true })).split('\n')
    this.#partial = lines.pop() ?? ''
    return lines
  }
}

function errorOf(code: number, text: string): KubeApiError {
  try {
    const status = JSON.parse(text) as Partial<KubeStatus>
    return new KubeApiError(code, status.reason ?? 'Unknown', status.message ?? text)
  } catch {
    return new KubeApiError(code, 'Unknown', text.slice(0, 500) || `HTTP ${code}`)
  }
}
