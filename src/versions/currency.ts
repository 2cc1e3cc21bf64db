/**
 * Whether a recorded version is still what its tokens lead to, and if not, since when: the GC's
 * test of a stale version and the keep-alive runner's test before a pre-warm. Judged per token
 * combination a request reached it through (`x-waiter-token: a,b` is one): the version is current
 * while any combination still leads to it, and it moved on when the last of them stopped.
 */
import type { ServiceRecord, TokenReference } from './registry.ts'
import type { TokenData } from './token-store.ts'
import { tokenEtag } from './tokens.ts'

export interface Currency {
  /** Some combination of tokens still leads to the version. */
  readonly current: boolean
  /** When the last combination stopped leading here (its tokens' update times); undefined while current or when only deleted tokens made it stale. */
  readonly movedOnAt: number | undefined
  /** A token of some combination is gone (deleted): when that happened the caller tracks. */
  readonly orphaned: boolean
  /** The edited tokens that took their combinations elsewhere (their fallback and stale settings apply). */
  readonly movedBy: readonly TokenData[]
}

export interface CurrencyDeps {
  readonly token: (name: string) => TokenData | undefined
  /** The version these tokens' descriptions, merged in order, run as for `requester` (undefined when incomplete). */
  readonly serviceIdOfTokens: (tokens: readonly TokenData[], requester: string | undefined) => string | undefined
  /** When the token's update time is missing. */
  readonly now: number
}

/** The combinations a version was reached through (a record from before they were kept: its tokens, one each). */
export function sourceSetsOf(record: ServiceRecord): readonly (readonly TokenReference[])[] {
  return record.sourceSets ?? record.sources.map((s) => [s])
}

export function currencyOf(record: ServiceRecord, deps: CurrencyDeps): Currency {
  // Reached by on-the-fly headers: no token edit moves those callers on (Waiter's `{}` reference).
  if (record.direct === true) return { current: true, movedOnAt: undefined, orphaned: false, movedBy: [] }
  const requester = typeof record.core['run-as-user'] === 'string' ? record.core['run-as-user'] : undefined
  let movedOnAt: number | undefined
  let orphaned = false
  let judged = false
  const movedBy: TokenData[] = []
  for (const set of sourceSetsOf(record)) {
    if (set.length === 0) continue
    judged = true
    const tokens = set.map((source) => deps.token(source.token))
    if (tokens.some((data) => data === undefined)) {
      orphaned = true
      continue
    }
    const present = tokens as TokenData[]
    // Current if every token is still at that version, or the combination was edited without
    // changing what runs (a timeout, the owner) and so still resolves to this version.
    if (present.every((data, i) => tokenEtag(data) === set[i]?.etag) || deps.serviceIdOfTokens(present, requester) === record.id) {
      return { current: true, movedOnAt: undefined, orphaned: false, movedBy: [] }
    }
    // The combination left when its edited tokens did; the latest of them, as the last edit
    // is the one that may have made the difference.
    let left = 0
    for (const [i, data] of present.entries()) {
      const source = set[i] as TokenReference
      if (tokenEtag(data) === source.etag) continue
      movedBy.push(data)
      // Alone, a token's older versions can be resolved one by one; within a combination only
      // its recorded version is known to have led here.
      const leadsHere = set.length === 1 ? (version: TokenData) => deps.serviceIdOfTokens([version], requester) === record.id : () => false
      left = Math.max(left, movedOffAt(data, source.etag, leadsHere, deps.now))
    }
    movedOnAt = Math.max(movedOnAt ?? 0, left)
  }
  // Reached through no token at all (headers only, or by id): nothing it came from can move on.
  if (!judged) return { current: true, movedOnAt: undefined, orphaned: false, movedBy: [] }
  return { current: false, movedOnAt, orphaned, movedBy }
}

/**
 * When a token stopped leading to a version: the update time of the oldest of its newest
 * versions that do not (walking its history back to the recorded version, or to one that still
 * led there). Edits since then that changed nothing do not postpone it. History is kept to a
 * few versions: past its end, the oldest known version's time (later than the truth, never earlier).
 */
function movedOffAt(current: TokenData, recordedEtag: string, leadsHere: (version: TokenData) => boolean, now: number): number {
  let at = updateTime(current, now)
  let version = current['previous']
  while (isVersion(version)) {
    if (tokenEtag(version) === recordedEtag || leadsHere(version)) break
    at = updateTime(version, at)
    version = version['previous']
  }
  return at
}

function isVersion(value: unknown): value is TokenData {
  // The first version's `previous` is an empty object: the end of the history.
  return typeof value === 'object' && value !== null && !Array.isArray(value) && Object.keys(value).length > 0
}

function updateTime(data: TokenData, fallback: number): number {
  const at = data['last-update-time']
  return typeof at === 'number' && Number.isFinite(at) ? at : fallback
}
