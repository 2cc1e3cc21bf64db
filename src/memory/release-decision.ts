/**
 * When the router hands the memory a burst of traffic left behind back to the system.
 *
 * V8 keeps the heap's high-water mark: pages a full collection freed stay resident in its page
 * pool, and its own memory reducer waits for an allocation rate it rarely sees in a router (a
 * router that served 25k requests a second stays at its peak for minutes after the last one).
 * Java's G1 answers the same problem with a periodic collection once the application is idle
 * (JEP 346); this is that rule: once no proxied request has begun for `quietMs`, and the RSS has
 * grown by at least `growthBytes` since the last release (or the lowest reading since), one
 * memory-reducing collection. At most one per quiet spell: what still allocates in it (a long
 * stream, a WebSocket, scrapes) regrows the young generation at once, and would otherwise earn a
 * pause every few seconds. None for a router whose memory never grew.
 */

export interface ReleaseRule {
  /** No proxied request begun for this long: traffic is over. */
  readonly quietMs: number
  /** Growth of the RSS over the baseline that is worth a collection. */
  readonly growthBytes: number
}

/** What the rule remembers between readings. */
export interface ReleaseWatch {
  /** Proxied requests begun at the last reading. */
  readonly requests: number
  /** Since when that count has not moved (ms). */
  readonly quietSince: number
  /** The RSS after the last release, or the lowest since (bytes). */
  readonly baselineRss: number
  /** This quiet spell had its release: the next one waits for a request to begin. */
  readonly spellReleased: boolean
}

export interface ReleaseReading {
  readonly now: number
  /** Proxied requests begun since the router started. */
  readonly requests: number
  readonly rss: number
}

export function startWatch(reading: ReleaseReading): ReleaseWatch {
  return { requests: reading.requests, quietSince: reading.now, baselineRss: reading.rss, spellReleased: false }
}

/** The next watch, and whether to collect now. After a release, `released` sets the new baseline. */
export function watchRelease(watch: ReleaseWatch, reading: ReleaseReading, rule: ReleaseRule): { watch: ReleaseWatch; release: boolean } {
  const baselineRss = Math.min(watch.baselineRss, reading.rss)
  if (reading.requests !== watch.requests) return { watch: { requests: reading.requests, quietSince: reading.now, baselineRss, spellReleased: false }, release: false }
  const next = { ...watch, baselineRss }
  const release = !watch.spellReleased && reading.now - watch.quietSince >= rule.quietMs && reading.rss - baselineRss >= rule.growthBytes
  return { watch: next, release }
}

/** The watch after a release that left `rssAfter`: growth is measured from there on, and this spell is done. */
export function released(watch: ReleaseWatch, rssAfter: number): ReleaseWatch {
  return { ...watch, baselineRss: rssAfter, spellReleased: true }
}
