/**
 * The GC loop: every interval, gathers what each known version looks like, asks pickGarbage()
 * what to reap, and deletes it from the backend and the registry. The next request for a
 * collected version cold-starts it again.
 */
import type { Backend } from '../backends/backend.ts'
import type { InstanceTracker } from '../backends/tracker.ts'
import type { Clock } from '../clock.ts'
import { startLoop, type Loop } from './loop.ts'
import type { Logger } from '../log.ts'
import type { ServiceRecord, ServiceRegistry } from '../versions/registry.ts'
import type { Tokens } from '../versions/tokens.ts'
import { tokenEtag } from '../versions/tokens.ts'
import { pickGarbage, type GcCandidate, type GcVerdict } from './gc.ts'

export interface GcOptions {
  readonly intervalMs: number
  readonly brokenTimeoutMs: number
  /** Defaults for tokens that do not set fallback-period-secs / stale-timeout-mins. */
  readonly fallbackMs: number
  readonly staleTimeoutMs: number
}

export interface GcDeps {
  readonly backend: Backend
  readonly tracker: InstanceTracker
  readonly registry: ServiceRegistry
  readonly tokens: Tokens
  readonly parametersOf: (record: ServiceRecord) => Readonly<Record<string, unknown>>
  /** Called after a version is deleted (drop overrides, caches, metrics). */
  readonly onCollected: (serviceId: string, reason: GcVerdict['reason']) => Promise<void> | void
  readonly clock: Clock
  readonly log: Logger
}

export class GcRunner {
  readonly #deps: GcDeps
  readonly #options: GcOptions
  /** First time each version was seen broken / stale with a token that no longer exists. */
  readonly #brokenSince = new Map<string, number>()
  readonly #orphanedSince = new Map<string, number>()
  readonly #collected: (GcVerdict & { at: number })[] = []
  #loop: Loop | undefined

  constructor(deps: GcDeps, options: GcOptions) {
    this.#deps = deps
    this.#options = options
  }

  start(): void {
    this.#loop ??= startLoop(this.#deps.clock, this.#options.intervalMs, () => this.tick(), (err) => this.#deps.log.error({ err }, 'gc failed'))
  }

  stop(): void {
    this.#loop?.stop()
    this.#loop = undefined
  }

  /** Recent collections, newest first (for /state). */
  recent(): readonly (GcVerdict & { at: number })[] {
    return this.#collected
  }

  async tick(): Promise<GcVerdict[]> {
    const now = this.#deps.clock.now()
    const candidates = this.#deps.registry.all().map((record) => this.#candidate(record, now))
    const verdicts = pickGarbage(candidates, now)
    for (const verdict of verdicts) {
      await this.#deps.backend.deleteService(verdict.id)
      await this.#deps.onCollected(verdict.id, verdict.reason)
      this.#brokenSince.delete(verdict.id)
      this.#orphanedSince.delete(verdict.id)
      this.#collected.unshift({ ...verdict, at: now })
      this.#collected.length = Math.min(this.#collected.length, 50)
      this.#deps.log.info({ service: verdict.id, reason: verdict.reason }, 'service garbage-collected')
      // Last: once /apps no longer shows the version, everything else about it is already done.
      await this.#deps.registry.forget(verdict.id)
    }
    return verdicts
  }

  #candidate(record: ServiceRecord, now: number): GcCandidate {
    const { backend, tracker, tokens } = this.#deps
    const params = this.#deps.parametersOf(record)
    const load = tracker.load(record.id)
    const state = backend.state(record.id)
    const broken = state?.deploymentError !== undefined && !state.instances.some((i) => i.healthy)
    if (broken && !this.#brokenSince.has(record.id)) this.#brokenSince.set(record.id, now)
    if (!broken) this.#brokenSince.delete(record.id)

    let staleSince: number | undefined
    let fallbackMs = this.#options.fallbackMs
    let staleTimeoutMs = this.#options.staleTimeoutMs
    if (record.sources.length > 0) {
      let current = false
      for (const source of record.sources) {
        const token = tokens.get(source.token)
        if (token === undefined) {
          staleSince = Math.max(staleSince ?? 0, this.#orphanedSince.get(record.id) ?? now)
          if (!this.#orphanedSince.has(record.id)) this.#orphanedSince.set(record.id, now)
          continue
        }
        if (tokenEtag(token) === source.etag) {
          current = true
          break
        }
        staleSince = Math.max(staleSince ?? 0, token['last-update-time'] as number)
        if (typeof token['fallback-period-secs'] === 'number') fallbackMs = token['fallback-period-secs'] * 1000
        if (typeof token['stale-timeout-mins'] === 'number') staleTimeoutMs = token['stale-timeout-mins'] * 60_000
      }
      if (current) staleSince = undefined
    }
    return {
      id: record.id,
      outstanding: load.inFlight + load.queued,
      lastActiveAt: Math.max(load.lastActiveAt, record.createdAt),
      idleTimeoutMs: (params['idle-timeout-mins'] as number) * 60_000,
      staleSince,
      fallbackMs,
      staleTimeoutMs,
      brokenSince: this.#brokenSince.get(record.id),
      brokenTimeoutMs: (params['grace-period-secs'] as number) * 1000 + this.#options.brokenTimeoutMs,
    }
  }
}
