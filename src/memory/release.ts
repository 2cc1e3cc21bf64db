/**
 * Carries out release-decision.ts: reads the RSS and the data path's request count on a timer,
 * and when the rule says so runs one memory-reducing collection (V8's "last resort" flavour, the
 * one that also hands its pooled pages back to the system; a plain full collection keeps them).
 *
 * The collection stops the event loop for as long as it takes (120–280 ms measured after the
 * bench's load, ~20 MB live; it grows with the live heap: 0.3 s with 107 MB, 0.9 s with 370 MB,
 * `node bench/release-pause.ts`): it runs only after `quietMs` (at least 1 s; 60 s by default)
 * without a new proxied request or WebSocket, so every request still under way then (a stream, a
 * long poll, one queued behind a long cold start) has already taken at least that long; its
 * bytes, and a request that arrives during the collection, wait for it. Once per quiet spell.
 *
 * Nothing here may take the router down: a failed reading (the RSS is read through a file
 * descriptor, and a router out of them gets EMFILE) skips one turn, and a runtime without V8's
 * gc() turns the release off, with one warning each.
 */
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import type { Clock } from '../clock.ts'
import type { Logger } from '../log.ts'
import { released, startWatch, watchRelease, type ReleaseRule, type ReleaseWatch } from './release-decision.ts'

/** What a release did, for the log, the metrics and the tests. */
export interface Release {
  readonly rssBefore: number
  readonly rssAfter: number
  readonly pauseMs: number
}

export interface MemoryReleaseOptions extends ReleaseRule {
  /** Proxied requests begun since the router started. */
  readonly requests: () => number
  readonly clock: Clock
  readonly log: Logger
  /** Told of every release (metrics). */
  readonly onRelease?: (release: Release) => void
  /** The RSS in bytes (tests inject their own). */
  readonly rss?: () => number
  /** The collection (tests inject their own). */
  readonly collect?: () => void
}

export interface MemoryRelease {
  stop(): void
}

type GcFunction = (options?: { type?: 'major' | 'minor'; execution?: 'sync' | 'async'; flavor?: 'regular' | 'last-resort' }) => void

let gcFunction: GcFunction | undefined

/**
 * V8's gc(), without launching Node with --expose-gc (which would put it on every module's
 * global): the flag is set for one new context, whose global gets the function, then unset.
 */
function v8Gc(): GcFunction {
  if (gcFunction !== undefined) return gcFunction
  const global = (globalThis as { gc?: unknown }).gc
  let found: unknown = global
  if (typeof found !== 'function') {
    setFlagsFromString('--expose-gc')
    try {
      found = runInNewContext('gc')
    } finally {
      setFlagsFromString('--no-expose-gc')
    }
  }
  if (typeof found !== 'function') throw new Error("this runtime gives no V8 gc() to call")
  gcFunction = found as GcFunction
  return gcFunction
}

/** One synchronous collection that reduces the heap to what is live and returns the freed pages. */
export function collectForRelease(): void {
  v8Gc()({ type: 'major', execution: 'sync', flavor: 'last-resort' })
}

/** How often the rule is read: often enough to act within a quarter of `quietMs`, at most every 5 s. */
export function readEveryMs(quietMs: number): number {
  return Math.min(5_000, Math.max(50, Math.floor(quietMs / 4)))
}

export function startMemoryRelease(options: MemoryReleaseOptions): MemoryRelease {
  const rss = options.rss ?? (() => process.memoryUsage.rss())
  const collect = options.collect ?? collectForRelease
  const { clock } = options
  let cancel: (() => void) | undefined
  let stopped = false

  let readingFailed = false
  // An RSS that cannot be read yet is no baseline: the first reading that succeeds becomes it.
  let firstRss = Number.POSITIVE_INFINITY
  try {
    firstRss = rss()
  } catch {}
  let watch: ReleaseWatch = startWatch({ now: clock.now(), requests: options.requests(), rss: firstRss })
  const turn = (): void => {
    const rssBefore = rss()
    const decided = watchRelease(watch, { now: clock.now(), requests: options.requests(), rss: rssBefore }, options)
    watch = decided.watch
    if (!decided.release) return
    const started = performance.now()
    try {
      collect()
    } catch (err) {
      stopped = true
      options.log.warn({ err }, 'memory release turned off: the collection failed')
      return
    }
    const pauseMs = performance.now() - started
    watch = released(watch, watch.baselineRss) // this spell is done, even if the RSS cannot be read now
    const release: Release = { rssBefore, rssAfter: rss(), pauseMs }
    watch = released(watch, release.rssAfter)
    options.log.info({ rssBeforeMb: toMb(release.rssBefore), rssAfterMb: toMb(release.rssAfter), pauseMs: Math.round(release.pauseMs) }, 'traffic quiet: memory handed back to the system')
    options.onRelease?.(release)
  }
  const read = (): void => {
    if (stopped) return
    try {
      turn()
    } catch (err) {
      // The RSS could not be read (EMFILE): this turn is skipped, the next may succeed.
      if (!readingFailed) options.log.warn({ err }, 'memory release: reading the RSS failed; trying again next turn')
      readingFailed = true
    }
    if (!stopped) cancel = clock.setTimeout(read, readEveryMs(options.quietMs))
  }
  cancel = clock.setTimeout(read, readEveryMs(options.quietMs))

  return {
    stop() {
      stopped = true
      cancel?.()
    },
  }
}

const toMb = (bytes: number): number => Math.round(bytes / 104_857.6) / 10
