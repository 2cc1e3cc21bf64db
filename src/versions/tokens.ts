/**
 * Token semantics (Waiter's /token): validation, etags, optimistic concurrency, owner, soft and
 * hard delete, and a history of the previous versions. Storage is delegated to a TokenStore.
 */
import { createHash } from 'node:crypto'
import { MaitreError } from '../errors.ts'
import type { Principal } from '../auth/authenticator.ts'
import { assertAdmin, assertMayAssignOwner, assertMayDeleteToken, assertMayEditToken, assertMayRunAs, OWNER_ONLY_TOKEN_KEYS } from '../auth/rules.ts'
import type { Clock } from '../clock.ts'
import { corsRulesProblem } from '../http/cors.ts'
import { misconfigured, validateParameters, type Issue } from './descriptor.ts'
import { MAX_STRING_LENGTH, PARAMETERS, REQUIRED_PARAMETERS, SYSTEM_METADATA, TOKEN_METADATA } from './parameters.ts'
import { canonicalJson } from './service-id.ts'
import type { TokenData, TokenStore } from './token-store.ts'
import { fileNameOf, MAX_FILE_NAME_BYTES } from '../storage/json-dir.ts'
import { PerKeyQueue } from '../storage/per-key-queue.ts'

export const HISTORY_LENGTH = 5
/** Writes of one token computed again after another router's write got in first, before giving up. */
const CONFLICT_ATTEMPTS = 5
const TOKEN_NAME = /^[a-zA-Z][a-zA-Z0-9\-_$.]+$/
/** Longest token name: it is a file name on disk (a `$` takes three bytes there), and a Host name. */
export const MAX_TOKEN_NAME = 200

export type TokenWriteResult = 'token-created' | 'token-updated' | 'token-no-op'

export interface TokenWrite {
  readonly result: TokenWriteResult
  readonly etag: string
  readonly data: TokenData
}

/**
 * A token version's etag, worked out once per token object: the GC and the autoscaler ask
 * whether each version is still what its tokens lead to, every round (an md5 of the whole token
 * each time was a third of an autoscaler tick at 10,000 versions). The object is frozen then, so
 * that nothing can change it under its etag.
 */
export function tokenEtag(data: TokenData): string {
  let etag = ETAGS.get(data)
  if (etag === undefined) {
    const { previous: _previous, ...rest } = data
    etag = `E-${createHash('md5').update(canonicalJson(rest)).digest('hex')}`
    ETAGS.set(Object.freeze(data), etag)
  }
  return etag
}

const ETAGS = new WeakMap<TokenData, string>()

/** The user-facing part of a token: service parameters and user metadata. */
export function userFields(data: TokenData): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  for (const [key, value] of Object.entries(data)) if (!SYSTEM_METADATA.includes(key)) out[key] = value
  return out
}

/** Only the service-description parameters of a token. */
export function serviceFields(data: TokenData): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  for (const [key, value] of Object.entries(data)) if (PARAMETERS.has(key)) out[key] = value
  return out
}

export function validateTokenName(name: unknown): string {
  if (typeof name !== 'string' || name === '') throw new MaitreError('MAITRE_INVALID_TOKEN', 'Must provide the token', { details: { field: 'token' } })
  const tooLong = (): MaitreError => new MaitreError('MAITRE_INVALID_TOKEN', `Token must be at most ${MAX_TOKEN_NAME} characters (fewer with $)`, { details: { field: 'token', limit: MAX_TOKEN_NAME, length: name.length } })
  if (name.length > MAX_TOKEN_NAME) throw tooLong()
  if (!TOKEN_NAME.test(name)) {
    // Waiter's two messages: "#" (its pseudo-tokens' mark) is named; any other break of the pattern cites it.
    const message = name.includes('#') ? 'Token contains invalid character: "#"' : 'Token must match pattern'
    const bad = [...name].find((c, i) => (i === 0 ? !/[a-zA-Z]/.test(c) : !/[a-zA-Z0-9\-_$.]/.test(c)))
    throw new MaitreError('MAITRE_INVALID_TOKEN', message, { details: { field: 'token', token: name.slice(0, 200), pattern: TOKEN_NAME.source, ...(bad === undefined ? {} : { 'invalid-character': bad }) } })
  }
  // Only once the pattern holds: a name with a lone surrogate cannot be percent-encoded at all.
  if (Buffer.byteLength(fileNameOf(name)) > MAX_FILE_NAME_BYTES) throw tooLong()
  return name
}

export interface UpsertOptions {
  readonly principal: Principal
  readonly ifMatch?: string | undefined
  readonly adminMode?: boolean
}

export interface DeleteOptions {
  readonly principal: Principal
  readonly ifMatch?: string | undefined
  readonly hard?: boolean
}

export type TokenListener = (name: string) => void

export interface TokenLimits {
  /** Tokens stored, soft-deleted ones included. */
  readonly maxTokens?: number
  /** Live tokens one owner may hold (Waiter's limit-per-owner); admin-mode writes are not held to it. */
  readonly maxTokensPerOwner?: number
  /**
   * The router's own host names (lower case), which a Host header never reads as a token: a
   * token of that name could never be reached by Host, so none is made.
   */
  readonly reservedNames?: ReadonlySet<string>
}

export class Tokens {
  readonly #store: TokenStore
  readonly #clock: Clock
  readonly #cluster: string
  readonly #listeners = new Set<TokenListener>()
  /** Changes to one token run one after the other: each reads what the previous one wrote. */
  readonly #changing = new PerKeyQueue()

  readonly #maxTokens: number
  readonly #maxTokensPerOwner: number
  /** Creations (or hand-overs) under way: the names, by the owner they give a token to. */
  readonly #claimed = new Map<string, Set<string>>()
  readonly #reservedNames: ReadonlySet<string>

  constructor(store: TokenStore, clock: Clock, cluster: string, limits: TokenLimits = {}) {
    this.#store = store
    this.#clock = clock
    this.#cluster = cluster
    this.#maxTokens = limits.maxTokens ?? Number.POSITIVE_INFINITY
    this.#maxTokensPerOwner = limits.maxTokensPerOwner ?? Number.POSITIVE_INFINITY
    this.#reservedNames = limits.reservedNames ?? new Set()
    // Another router's write: caches keyed by this token must forget it, as after our own.
    store.onChange((name) => this.#emit(name))
  }

  onChange(listener: TokenListener): () => void {
    this.#listeners.add(listener)
    return () => this.#listeners.delete(listener)
  }

  /** The stored token, soft-deleted ones only when asked for. */
  get(name: string, includeDeleted = false): TokenData | undefined {
    const data = this.#store.get(name)
    if (data === undefined || (data['deleted'] === true && !includeDeleted)) return undefined
    return data
  }

  entries(): Iterable<readonly [string, TokenData]> {
    return this.#store.entries()
  }

  async upsert(name: string, body: Record<string, unknown>, options: UpsertOptions): Promise<TokenWrite> {
    validateTokenName(name)
    return this.#changing.run(name, () => this.#retryingConflicts(options.ifMatch, () => this.#upsert(name, body, options)))
  }

  async #upsert(name: string, body: Record<string, unknown>, options: UpsertOptions): Promise<TokenWrite> {
    const admin = options.adminMode === true
    if (admin) assertAdmin(options.principal, 'Only admins may use update-mode=admin')
    const current = this.#store.get(name)
    const currentLive = current !== undefined && current['deleted'] !== true ? current : undefined
    if (current === undefined && this.#reservedNames.has(name.toLowerCase())) {
      throw new MaitreError('MAITRE_TOKEN_NAME_RESERVED', 'Token name is reserved', { details: { token: name, rule: 'a host name of this router' } })
    }

    const issues: Issue[] = []
    const unknown = Object.keys(body).filter((k) => !PARAMETERS.has(k) && !TOKEN_METADATA.has(k) && !SYSTEM_METADATA.includes(k))
    if (unknown.length > 0) {
      for (const key of unknown) issues.push({ field: key, message: `Unsupported key(s) in token: ${unknown.join(', ')}` })
    }
    if (!admin) {
      // `cluster` a user may set, as Waiter allows (its CLI does); the rest the router keeps.
      for (const key of SYSTEM_METADATA.filter((k) => k in body && k !== 'cluster')) {
        issues.push({ field: key, message: `Cannot modify ${key} token metadata` })
      }
      const cluster = body['cluster']
      if (cluster !== undefined && !(typeof cluster === 'string' && cluster !== '' && cluster.length <= MAX_STRING_LENGTH)) {
        issues.push({ field: 'cluster', message: `cluster must be a non-empty string of at most ${MAX_STRING_LENGTH} characters.` })
      }
    } else {
      // An admin may write system metadata (a migration, a restore), but only what every reader
      // of a token can read back: times that are times, names that are strings, a history of tokens.
      issues.push(...systemMetadataIssues(body, HISTORY_LENGTH))
    }
    for (const [key, value] of Object.entries(body)) {
      const spec = TOKEN_METADATA.get(key)
      const message = spec?.check(key, value)
      if (message !== undefined) issues.push({ field: key, message })
    }
    issues.push(...validateParameters(body, { requireComplete: false }))
    if (body['authentication'] === 'disabled') issues.push(...authenticationDisabledIssues(body))
    // Waiter: an interstitial page waits for the version a token runs, so the token must name one whole.
    const missingForInterstitial = typeof body['interstitial-secs'] === 'number' && body['interstitial-secs'] > 0 ? missingRequired(body) : []
    if (missingForInterstitial.length > 0) {
      issues.push({ field: 'interstitial-secs', message: `Tokens with missing required parameters cannot use interstitial support. Missing parameters: ${missingForInterstitial.join(', ')}` })
    }
    // The patterns themselves (the parameter table checked their shape): RE2 must compile each.
    const cors = body['cors-rules'] === undefined || issues.some((i) => i.field === 'cors-rules') ? undefined : corsRulesProblem('cors-rules', body['cors-rules'])
    if (cors !== undefined) issues.push({ field: 'cors-rules', message: cors })
    if (issues.length > 0) throw misconfigured(issues, { token: name })
    if (!Object.keys(body).some((k) => PARAMETERS.has(k) || (TOKEN_METADATA.has(k) && k !== 'owner'))) {
      throw new MaitreError('MAITRE_INVALID_TOKEN', `No parameters provided for ${name}`, { details: { token: name } })
    }

    // `If-Match: ""` is what Waiter's CLI sends for a token it believes new: it holds for a token
    // that does not exist (or was soft-deleted), and is stale against one that does.
    const stale = options.ifMatch === '' ? currentLive !== undefined : options.ifMatch !== undefined && (current === undefined || tokenEtag(current) !== options.ifMatch)
    if (stale) {
      throw new MaitreError('MAITRE_STALE_TOKEN', 'Cannot modify stale token', { details: { token: name } })
    }
    if (admin && current !== undefined && options.ifMatch === undefined) {
      throw new MaitreError('MAITRE_BAD_REQUEST', 'Must specify if-match header for admin mode token updates', { details: { token: name } })
    }
    const owner = typeof body['owner'] === 'string' ? body['owner'] : ((currentLive?.['owner'] as string | undefined) ?? options.principal.user)
    if (currentLive !== undefined) {
      const changed = OWNER_ONLY_TOKEN_KEYS.filter((k) => canonicalJson(k === 'owner' ? owner : body[k]) !== canonicalJson(currentLive[k]))
      assertMayEditToken(options.principal, name, { owner: currentLive['owner'], editor: currentLive['editor'] }, changed)
    } else {
      assertMayAssignOwner(options.principal, name, owner)
    }
    // Waiter: an editor cannot change run-as-user (checked above), so its run-as rule is not asked again.
    const editing = currentLive !== undefined && !options.principal.admin && currentLive['owner'] !== options.principal.user && currentLive['editor'] === options.principal.user
    if (!editing) assertMayRunAs(options.principal, body['run-as-user'], admin)

    // Waiter's limit, checked where a token comes to its owner (created, created again after a
    // soft delete, or handed over): an owner over it, since the limit was lowered, still edits
    // what it holds.
    const claim = !admin && currentLive?.['owner'] !== owner ? this.#claimOneFor(owner, name) : undefined
    try {
      return await this.#write(name, body, options, { admin, current, currentLive, owner })
    } finally {
      claim?.()
    }
  }

  async #write(name: string, body: Record<string, unknown>, options: UpsertOptions, found: { admin: boolean; current: TokenData | undefined; currentLive: TokenData | undefined; owner: string }): Promise<TokenWrite> {
    const { admin, current, currentLive, owner } = found
    if (current === undefined && this.#store.size() >= this.#maxTokens) {
      throw new MaitreError('MAITRE_STORE_FULL', `The token store holds ${this.#maxTokens} tokens, the most it takes; hard-delete some first`, { details: { limit: 'tokens', max: this.#maxTokens } })
    }
    const fields: Record<string, unknown> = { ...body, owner }
    const clusterChanges = typeof body['cluster'] === 'string' && body['cluster'] !== currentLive?.['cluster']
    if (!admin && currentLive !== undefined && !clusterChanges && canonicalJson(userFields(currentLive)) === canonicalJson(userFields(fields))) {
      return { result: 'token-no-op', etag: tokenEtag(currentLive), data: currentLive }
    }
    // A token created again after a soft delete starts afresh, as in Waiter: no history, root or
    // cluster of the deleted one (an admin's write, token sync's, continues what is stored).
    const base = admin ? current : currentLive
    const next: Record<string, unknown> = {
      ...fields,
      'last-update-time': this.#clock.now(),
      'last-update-user': options.principal.user,
      cluster: typeof body['cluster'] === 'string' ? body['cluster'] : ((base?.['cluster'] as string | undefined) ?? this.#cluster),
      root: (base?.['root'] as string | undefined) ?? this.#cluster,
    }
    if (admin) for (const key of SYSTEM_METADATA) if (key in body) next[key] = body[key]
    if (next['deleted'] !== true) delete next['deleted']
    // Waiter's first version carries an empty history, `"previous": {}`. An admin's write (a sync
    // or restore from another cluster) brings its own history, as it brings the other metadata.
    const given = admin ? body['previous'] : undefined
    if (typeof given === 'object' && given !== null && !Array.isArray(given)) next['previous'] = trimHistory(given as TokenData, HISTORY_LENGTH - 1)
    else next['previous'] = base === undefined ? {} : trimHistory(base, HISTORY_LENGTH - 1)
    try {
      await this.#store.put(name, next, current ?? null)
    } finally {
      // Caches of the token are dropped whatever the write reported (an etcd transaction whose
      // answer was lost may have gone through): at worst one resolution more.
      this.#emit(name)
    }
    return { result: currentLive === undefined ? 'token-created' : 'token-updated', etag: tokenEtag(next), data: next }
  }

  /**
   * One more token for `owner`, within its limit: its live tokens are counted over the store (at
   * most `maxTokens` entries, a few ms at 100,000: no index to drift from what other routers
   * write), plus the creations for it this router has under way (writes to other names run at
   * the same time). Returns what gives the claim back once the write is over. Across routers,
   * two creations at once may both pass at the limit, as in Waiter.
   */
  #claimOneFor(owner: string, name: string): (() => void) | undefined {
    if (!Number.isFinite(this.#maxTokensPerOwner)) return undefined
    const claimed = this.#claimed.get(owner) ?? new Set<string>()
    let owned = 0
    // (A claimed token the store already holds, its write still confirming, counts once.)
    for (const [key, data] of this.#store.entries()) if (data['owner'] === owner && data['deleted'] !== true && !claimed.has(key)) owned += 1
    owned += claimed.size
    if (owned >= this.#maxTokensPerOwner) {
      throw new MaitreError('MAITRE_TOKEN_LIMIT', 'You have reached the limit of number of tokens allowed. Please delete at least one of your existing tokens to create this token.', {
        details: { 'allowed-owned-tokens': this.#maxTokensPerOwner, 'num-owned-tokens': owned, owner },
      })
    }
    claimed.add(name)
    this.#claimed.set(owner, claimed)
    return () => {
      claimed.delete(name)
      if (claimed.size === 0 && this.#claimed.get(owner) === claimed) this.#claimed.delete(owner)
    }
  }

  delete(name: string, options: DeleteOptions): Promise<{ etag: string }> {
    return this.#changing.run(name, () => this.#retryingConflicts(options.ifMatch, () => this.#delete(name, options)))
  }

  /**
   * Another router wrote the token between our read and our write (the store refused the
   * compare-and-set). With If-Match, the caller's version is stale: 412, as if it had been seen
   * stale at once. Without, the change is computed again on the newer version, so neither
   * write is lost (both stay in the history); a token rewritten that often gives up with 409.
   */
  async #retryingConflicts<T>(ifMatch: string | undefined, change: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await change()
      } catch (err) {
        if (!(err instanceof MaitreError) || err.code !== 'MAITRE_STORE_CONFLICT') throw err
        if (ifMatch !== undefined) throw new MaitreError('MAITRE_STALE_TOKEN', 'Cannot modify stale token', { details: err.details })
        if (attempt >= CONFLICT_ATTEMPTS) throw err
      }
    }
  }

  async #delete(name: string, options: DeleteOptions): Promise<{ etag: string }> {
    const current = this.#store.get(name)
    if (current === undefined || (current['deleted'] === true && options.hard !== true)) {
      throw new MaitreError('MAITRE_TOKEN_NOT_FOUND', `Token ${name} does not exist`, { details: { token: name } })
    }
    assertMayDeleteToken(options.principal, name, current['owner'])
    const etag = tokenEtag(current)
    if (options.ifMatch !== undefined && options.ifMatch !== etag) {
      throw new MaitreError('MAITRE_STALE_TOKEN', 'Cannot modify stale token', { details: { token: name } })
    }
    try {
      await this.#deleteStored(name, current, options)
    } finally {
      this.#emit(name)
    }
    return { etag }
  }

  async #deleteStored(name: string, current: TokenData, options: DeleteOptions): Promise<void> {
    if (options.hard === true) {
      assertAdmin(options.principal, 'Cannot hard-delete token')
      if (options.ifMatch === undefined && current['deleted'] !== true) {
        throw new MaitreError('MAITRE_BAD_REQUEST', 'Must specify if-match header for token hard deletes', { details: { token: name } })
      }
      await this.#store.remove(name, current)
    } else {
      await this.#store.put(name, {
        ...userFields(current),
        cluster: current['cluster'],
        root: current['root'],
        deleted: true,
        'last-update-time': this.#clock.now(),
        'last-update-user': options.principal.user,
        previous: trimHistory(current, HISTORY_LENGTH - 1),
      }, current)
    }
  }

  /** The current version and its predecessors, newest first. */
  history(name: string): TokenData[] {
    const out: TokenData[] = []
    let cursor: unknown = this.#store.get(name)
    // The first version's `previous` is an empty object: the end of the history, not a version.
    while (typeof cursor === 'object' && cursor !== null && !Array.isArray(cursor) && Object.keys(cursor).length > 0 && out.length <= HISTORY_LENGTH) {
      out.push(cursor as TokenData)
      cursor = (cursor as TokenData)['previous']
    }
    return out
  }

  #emit(name: string): void {
    for (const listener of this.#listeners) listener(name)
  }
}

/** Latest time a Date can hold (ms since the epoch). */
const MAX_TIME_MS = 8.64e15

/**
 * Waiter's rules for a token served without authentication: anyone may call it, so it must say
 * who it runs as and be complete in itself (no caller's headers fill it in).
 */
/** The parameters a whole description needs that a token does not give. */
function missingRequired(body: Readonly<Record<string, unknown>>): string[] {
  return REQUIRED_PARAMETERS.filter((name) => body[name] === undefined)
}

function authenticationDisabledIssues(body: Readonly<Record<string, unknown>>): Issue[] {
  const issues: Issue[] = []
  if (body['permitted-user'] !== '*') {
    issues.push({ field: 'permitted-user', message: `Tokens with authentication disabled must specify permitted-user as *, instead provided ${body['permitted-user'] === undefined ? 'nothing' : String(body['permitted-user'])}` })
  }
  if (typeof body['run-as-user'] !== 'string' || body['run-as-user'] === '*') {
    issues.push({ field: 'run-as-user', message: 'Tokens with authentication disabled must specify an explicit run-as-user (not *)' })
  }
  const missing = missingRequired(body)
  if (missing.length > 0) {
    issues.push(...missing.map((field) => ({ field, message: `Tokens with authentication disabled must specify all required parameters. Missing parameters: ${missing.join(', ')}` })))
  }
  return issues
}

/** What is wrong with the system metadata of a token document written in admin mode, and of its `previous` chain. */
function systemMetadataIssues(doc: Readonly<Record<string, unknown>>, depthLeft: number, path = ''): Issue[] {
  const issues: Issue[] = []
  const field = (key: string): string => `${path}${key}`
  const time = doc['last-update-time']
  if (time !== undefined && !(typeof time === 'number' && Number.isFinite(time) && time >= 0 && time <= MAX_TIME_MS)) {
    issues.push({ field: field('last-update-time'), message: `${field('last-update-time')} must be a time in milliseconds since the epoch.` })
  }
  for (const key of ['last-update-user', 'root', 'cluster']) {
    const value = doc[key]
    if (value !== undefined && !(typeof value === 'string' && value !== '' && value.length <= MAX_STRING_LENGTH)) {
      issues.push({ field: field(key), message: `${field(key)} must be a non-empty string of at most ${MAX_STRING_LENGTH} characters.` })
    }
  }
  if (doc['deleted'] !== undefined && typeof doc['deleted'] !== 'boolean') issues.push({ field: field('deleted'), message: `${field('deleted')} must be a boolean.` })
  const previous = doc['previous']
  if (previous !== undefined) {
    if (typeof previous !== 'object' || previous === null || Array.isArray(previous)) {
      issues.push({ field: field('previous'), message: `${field('previous')} must be a token (an object).` })
    } else if (depthLeft <= 0) {
      issues.push({ field: field('previous'), message: `previous may hold at most ${HISTORY_LENGTH} older versions.` })
    } else {
      issues.push(...systemMetadataIssues(previous as Record<string, unknown>, depthLeft - 1, `${field('previous')}.`))
    }
  }
  return issues
}

/** A copy of `data` whose `previous` chain holds at most `depth` older versions. */
function trimHistory(data: TokenData, depth: number): TokenData {
  const { previous, ...rest } = data
  if (typeof previous === 'object' && previous !== null && Object.keys(previous).length === 0) return { ...rest, previous: {} }
  if (depth <= 0 || typeof previous !== 'object' || previous === null) return rest
  return { ...rest, previous: trimHistory(previous as TokenData, depth - 1) }
}
