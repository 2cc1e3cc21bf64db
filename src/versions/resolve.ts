/**
 * Request → service version. Tokens (x-waiter-token, or the Host name) and on-the-fly headers
 * merge with Waiter's precedence into a core description whose hash is the service id. Results
 * are cached per distinct set of inputs and dropped whenever a token changes.
 */
import { LRUCache } from 'lru-cache'
import { MaitreError } from '../errors.ts'
import type { Principal } from '../auth/authenticator.ts'
import { assertMayInvoke, assertMayRunAs, assertMayRunService } from '../auth/rules.ts'
import { assertRunnable, coreParameters, effectiveParameters, misconfigured, validateParameters } from './descriptor.ts'
import type { TokenData } from './token-store.ts'
import { TOKEN_METADATA } from './parameters.ts'
import { parseWaiterHeaders, type WaiterHeaders } from './request-headers.ts'
import { serviceIdOf } from './service-id.ts'
import type { ServiceRegistry, TokenReference } from './registry.ts'
import { serviceFields, tokenEtag, type Tokens } from './tokens.ts'

export interface Resolution {
  readonly serviceId: string
  /** The explicitly given parameters (what the id covers). */
  readonly core: Readonly<Record<string, unknown>>
  /** Parameters as the service runs: core over defaults, with the run-as-user filled in. */
  readonly effective: Readonly<Record<string, unknown>>
  /** The last token of the request, as the reference that makes the version current or stale. */
  readonly source: TokenReference | undefined
  /** Every token of the request, in order (empty on the fly or by id): Waiter's source-tokens entry. */
  readonly sources: readonly TokenReference[]
  /** Reached by on-the-fly headers (Waiter's `{}` reference): no token edit makes it stale. */
  readonly direct?: boolean
  /** Token-only settings the tokens give explicitly (timeouts, fallback, maintenance); config supplies the rest. */
  readonly tokenMetadata: Readonly<Record<string, unknown>>
  /** Earlier versions of the token to route to while this one has no healthy instance, until `until`. */
  /** Waiter's fallback window: from the token's last update (`since`) until `until`, to these versions. */
  readonly fallback: { readonly since: number; readonly until: number; readonly serviceIds: readonly string[] } | undefined
  /**
   * Reached through one token that itself says `authentication: disabled` (with permitted-user
   * `*` and its own run-as-user) and nothing else: served to callers who prove nothing.
   */
  readonly authenticationDisabled: boolean
}

export interface ResolvedRequest {
  readonly resolution: Resolution
  readonly headers: WaiterHeaders
}

export interface ResolverOptions {
  /** Host names (without port) that mean this router rather than a token. */
  readonly routerHostnames: ReadonlySet<string>
  /** On-the-fly descriptions let a caller run a command on the host: off unless configured. */
  readonly allowOnTheFly: boolean
  readonly serviceIdPrefix: string
  readonly cacheSize: number
  /** Used when a token does not set fallback-period-secs. */
  readonly fallbackPeriodSecs: number
}

/** Bytes the resolution cache may hold (keys, and about a KiB per resolution). */
export const RESOLUTION_CACHE_BYTES = 64 * 1024 * 1024

/** Waiter's pseudo-token naming a service version by id. */
export const SERVICE_ID_TOKEN = '^SERVICE-ID#'


import { hostAsSent, tokenNamedByHost } from '../http/host.ts'

export class Resolver {
  readonly #tokens: Tokens
  readonly #registry: ServiceRegistry
  readonly #options: ResolverOptions
  readonly #cache: LRUCache<string, Resolution>
  /** Counts token changes: an answer computed before a change is never cached after it. */
  #generation = 0

  constructor(tokens: Tokens, registry: ServiceRegistry, options: ResolverOptions) {
    this.#tokens = tokens
    this.#registry = registry
    this.#options = options
    // Bounded in entries and in bytes: a key carries on-the-fly headers, up to the header budget.
    this.#cache = new LRUCache({ max: options.cacheSize, maxSize: RESOLUTION_CACHE_BYTES, sizeCalculation: (_resolution, key) => key.length + 1024 })
    tokens.onChange(() => {
      this.#generation += 1
      this.#cache.clear()
    })
  }

  /**
   * Resolves a request to its version and records the version in the registry. A cached answer
   * comes back synchronously: the warm data path should not pay a promise turn for a map lookup.
   */
  resolve(
    headers: Readonly<Record<string, string | string[] | undefined>>,
    principal: Principal,
  ): ResolvedRequest | Promise<ResolvedRequest> {
    const waiter = parseWaiterHeaders(headers)
    const byId = waiter.perRequest['service-id']
    if (byId !== undefined) return { resolution: this.byServiceId(byId, principal), headers: waiter }

    const tokenHeader = waiter.perRequest['token']
    // Waiter keeps each service's description under the pseudo-token ^SERVICE-ID#<id> (what its
    // CLI's `ping --service-id` sends): it names the version exactly, as x-waiter-service-id does.
    if (tokenHeader !== undefined && tokenHeader.startsWith(SERVICE_ID_TOKEN)) {
      return { resolution: this.byServiceId(tokenHeader.slice(SERVICE_ID_TOKEN.length).trim(), principal), headers: waiter }
    }
    const names = this.#tokenNames(tokenHeader, headers['host'])
    // Keyed by what the answer depends on, normalised: padding a header cannot mint new entries.
    const key = JSON.stringify([principal.user, tokenHeader !== undefined, names, waiter.onTheFly, waiter.params])
    const cached = this.#cache.get(key)
    if (cached !== undefined) return { resolution: cached, headers: waiter }

    const generation = this.#generation
    const resolution = this.#compute(names, tokenHeader !== undefined, waiter, principal)
    return this.#registry.remember(resolution.serviceId, resolution.core, resolution.source, resolution.sources, resolution.direct === true).then(() => {
      // A token changed while the record was written: this answer may be one the change
      // revokes (a narrower permitted-user, maintenance), so it is not kept for later requests.
      if (this.#generation === generation) this.#cache.set(key, resolution)
      return { resolution, headers: waiter }
    })
  }

  /**
   * The token-only settings (cors-rules, https-redirect, …) of the tokens a request names, for
   * answers given before a version is resolved (a CORS preflight carries no x-waiter-* values,
   * so its token comes from the Host). Unknown tokens contribute nothing.
   */
  tokenMetadataOf(headers: Readonly<Record<string, string | string[] | undefined>>): Record<string, unknown> {
    const header = headers['x-waiter-token']
    const names = this.#tokenNames(typeof header === 'string' ? header : undefined, headers['host'])
    const metadata: Record<string, unknown> = {}
    for (const name of names) {
      const data = this.#tokens.get(name)
      if (data === undefined) continue
      for (const key of TOKEN_METADATA.keys()) if (data[key] !== undefined) metadata[key] = data[key]
    }
    return metadata
  }

  /** The tokens a request names: x-waiter-token's list, else the Host name unless it is this router's. */
  #tokenNames(tokenHeader: string | undefined, host: string | string[] | undefined): string[] {
    if (tokenHeader !== undefined) {
      // A token named again adds nothing but its place: only its last mention counts (the merge
      // is in order, the last one wins, so `a,b,a` is `b,a`). Repeats would otherwise swell the
      // version's record, which keeps each combination of names.
      const names = tokenHeader.split(',').map((t) => t.trim()).filter((t) => t !== '')
      if (names.length < 2) return names
      // In one pass from the end (a header of thousands of names costs no more than their count).
      const seen = new Set<string>()
      const kept: string[] = []
      for (let i = names.length - 1; i >= 0; i--) {
        const name = names[i] as string
        if (seen.has(name)) continue
        seen.add(name)
        kept.push(name)
      }
      return kept.reverse()
    }
    // Looked up as sent (token names are case-sensitive), compared with the router's own names in lower case.
    const hostToken = hostAsSent(host as string | undefined)
    if (hostToken === '' || this.#options.routerHostnames.has(hostToken.toLowerCase())) return []
    return [tokenNamedByHost(hostToken, (name) => this.#tokens.get(name) !== undefined)]
  }

  /**
   * The service a token's own description runs as, or undefined when it is not a complete one.
   * A token that runs as its requester has one version per requester: `requester` says whose.
   */
  serviceIdOfToken(data: TokenData, requester?: string): string | undefined {
    return this.serviceIdOfTokens([data], requester)
  }

  /** The service tokens' descriptions, merged in order as a request naming them all merges them, run as. */
  serviceIdOfTokens(tokens: readonly TokenData[], requester?: string): string | undefined {
    const fields: Record<string, unknown> = {}
    for (const data of tokens) mergeDescription(fields, serviceFields(data))
    if (explicitUser(fields['run-as-user']) === undefined) {
      if (requester === undefined) return undefined
      runAsRequester(fields, { user: requester })
    }
    const core = coreParameters(fields)
    return validateParameters(core, { requireComplete: true }).length === 0 ? serviceIdOf(core, this.#options.serviceIdPrefix) : undefined
  }

  /** Records a resolved version again (it may have been collected since it was resolved). */
  remember(resolution: Resolution): Promise<unknown> {
    return this.#registry.remember(resolution.serviceId, resolution.core, resolution.source, resolution.sources, resolution.direct === true)
  }

  /** Drops cached resolutions to a version that was garbage-collected, so the next request records it again. */
  forget(serviceId: string): void {
    for (const [key, resolution] of this.#cache.entries()) if (resolution.serviceId === serviceId) this.#cache.delete(key)
  }

  /**
   * A precise version, addressed by its id. Whoever recorded it was allowed to run it as its
   * run-as-user (checked before anything is recorded), so a version that names both its
   * run-as-user and its permitted-user is callable by its permitted users, as Waiter's
   * ^SERVICE-ID# pseudo-token is; any other needs the caller to be able to run as it. The
   * operational settings of its tokens (maintenance, https-redirect, cors-rules) still apply.
   */
  byServiceId(serviceId: string, principal: Principal, viaToken = false): Resolution {
    // An anonymous caller reaches a version by id only through a public token it called (a
    // fallback to the token's previous version), and only if that version is public too (below).
    if (principal.anonymous === true && !viaToken) throw new MaitreError('MAITRE_UNAUTHORIZED', 'Authentication required', { details: { reason: 'anonymous-by-id' } })
    const record = this.#registry.get(serviceId)
    if (record === undefined) {
      throw new MaitreError('MAITRE_SERVICE_NOT_FOUND', `Service not found: ${serviceId}`, { details: { 'service-id': serviceId } })
    }
    // A record written before today's rules (a health-check-url that names a host, say) runs
    // only if it still passes them.
    assertRunnable(record.core)
    const runAs = explicitUser(record.core['run-as-user'])
    const vouched = runAs !== undefined && typeof record.core['permitted-user'] === 'string'
    // A record from before every version named its run-as-user runs as nobody in particular:
    // by id, only admins may call it.
    if (!vouched) assertMayRunService(principal, runAs, serviceId)
    const effective = withRunAsUser(record.core, principal)
    assertMayInvoke(principal, effective['permitted-user'], serviceId)
    const metadata: Record<string, unknown> = {}
    for (const source of record.sources) {
      const data = this.#tokens.get(source.token)
      if (data === undefined) continue
      for (const key of OPERATIONAL_METADATA) if (data[key] !== undefined) metadata[key] = data[key]
    }
    if (metadata['maintenance'] !== undefined) {
      throw new MaitreError('MAITRE_MAINTENANCE', (metadata['maintenance'] as { message: string }).message, { details: { 'service-id': serviceId } })
    }
    // Served to anonymous callers only through its token, never by id; but a public version hears
    // of no principal however it is reached.
    const authenticationDisabled = vouched && record.core['authentication'] === 'disabled' && record.core['permitted-user'] === '*'
    if (principal.anonymous === true && !authenticationDisabled) throw new MaitreError('MAITRE_UNAUTHORIZED', 'Authentication required', { details: { reason: 'anonymous-by-id' } })
    return { serviceId, core: record.core, effective, source: undefined, sources: [], tokenMetadata: metadata, fallback: undefined, authenticationDisabled }
  }

  #compute(names: readonly string[], namedByHeader: boolean, waiter: WaiterHeaders, principal: Principal): Resolution {
    const merged: Record<string, unknown> = {}
    const metadata: Record<string, unknown> = {}
    let source: TokenReference | undefined
    const sources: TokenReference[] = []
    for (const name of names) {
      const data = this.#tokens.get(name)
      if (data === undefined) {
        // A Host name that is no token simply contributes nothing; a named token must exist.
        if (namedByHeader) throw new MaitreError('MAITRE_TOKEN_NOT_FOUND', `Token not found: ${name}`, { details: { token: name } })
        continue
      }
      mergeDescription(merged, serviceFields(data))
      for (const key of TOKEN_METADATA.keys()) if (data[key] !== undefined) metadata[key] = data[key]
      source = { token: name, etag: tokenEtag(data) }
      sources.push(source)
    }
    if (metadata['maintenance'] !== undefined) {
      const message = (metadata['maintenance'] as { message: string }).message
      throw new MaitreError('MAITRE_MAINTENANCE', message, { details: { token: source?.token } })
    }

    const onTheFly = Object.keys(waiter.onTheFly).length > 0 || Object.keys(waiter.params).length > 0
    // Waiter's preauthorized token: one token, nothing on the fly but the params it allows,
    // whose own description names who it runs as and who may call it. Its writer was allowed to
    // run as that user (checked at token write), so its callers need only be permitted; anything
    // merged from several tokens or headers is judged as a whole, by who the caller may run as.
    const only = names.length === 1 && Object.keys(waiter.onTheFly).length === 0 ? this.#tokens.get(names[0] as string) : undefined
    const own = only === undefined ? undefined : serviceFields(only)
    const preauthorized = own !== undefined && explicitUser(own['run-as-user']) !== undefined && typeof own['permitted-user'] === 'string'
    // A caller who proves nothing calls the token as it is: params (each a new version) take
    // credentials, where Waiter would let anyone start versions without end.
    const authenticationDisabled = preauthorized && !onTheFly && own['authentication'] === 'disabled' && own['permitted-user'] === '*'
    if (principal.anonymous === true && !authenticationDisabled) {
      // Decided before anything is recorded: a caller who proved nothing leaves no trace.
      throw new MaitreError('MAITRE_UNAUTHORIZED', 'Authentication required', { details: { reason: 'anonymous' } })
    }
    if (Object.keys(waiter.onTheFly).length > 0) {
      if (!this.#options.allowOnTheFly) {
        const fields = Object.keys(waiter.onTheFly)
        throw new MaitreError(
          'MAITRE_ON_THE_FLY_DISABLED',
          `On-the-fly service parameters are disabled on this router (given: ${fields.join(', ')}); register a token instead, or set proxy.allowOnTheFly in the config`,
          { details: { fields } },
        )
      }
      if (waiter.onTheFly['idle-timeout-mins'] === 0) {
        throw misconfigured([{ field: 'idle-timeout-mins', message: 'idle-timeout-mins on-the-fly must be a positive integer.' }])
      }
      if (merged['authentication'] === 'disabled') {
        throw new MaitreError('MAITRE_BAD_REQUEST', 'An authentication disabled token may not be combined with on-the-fly headers', { details: { fields: Object.keys(waiter.onTheFly) } })
      }
      mergeDescription(merged, waiter.onTheFly)
      // Waiter: a description changed on the fly runs as, and is reserved for, the requester;
      // running a command as somebody else takes an admin.
      merged['run-as-user'] = waiter.onTheFly['run-as-user'] ?? principal.user
      merged['permitted-user'] = waiter.onTheFly['permitted-user'] ?? principal.user
      assertMayRunAs(principal, merged['run-as-user'], true)
    }
    if (Object.keys(waiter.params).length > 0) {
      const allowed = new Set((merged['allowed-params'] as string[] | undefined) ?? [])
      const refused = Object.keys(waiter.params).filter((p) => !allowed.has(p))
      if (refused.length > 0) {
        throw misconfigured(refused.map((p) => ({ field: `param-${p.toLowerCase()}`, message: `Some params cannot be configured: ${refused.join(', ')}` })))
      }
      merged['env'] = { ...((merged['env'] as Record<string, string> | undefined) ?? {}), ...waiter.params }
    }
    if (Object.keys(merged).length === 0) {
      throw new MaitreError('MAITRE_SERVICE_UNKNOWN', 'Unable to identify service using waiter headers/token', {
        details: { tokens: names, 'on-the-fly': onTheFly },
      })
    }
    runAsRequester(merged, principal)
    assertRunnable(merged)
    const core = coreParameters(merged)
    const serviceId = serviceIdOf(core, this.#options.serviceIdPrefix)
    if (!preauthorized) assertMayRunService(principal, core['run-as-user'], serviceId)
    const effective = withRunAsUser(core, principal)
    if (principal.anonymous !== true) assertMayInvoke(principal, effective['permitted-user'], serviceId)
    return {
      serviceId,
      core,
      effective,
      source: onTheFly ? undefined : source,
      sources: onTheFly ? [] : sources,
      ...(onTheFly && names.length === 0 ? { direct: true } : {}),
      tokenMetadata: metadata,
      fallback: !onTheFly && names.length === 1 && source !== undefined ? this.#fallbackOf(source.token, serviceId, metadata, principal) : undefined,
      authenticationDisabled,
    }
  }

  /** Waiter's fallback: the token's previous versions, for fallback-period-secs after its last update. */
  #fallbackOf(token: string, serviceId: string, metadata: Readonly<Record<string, unknown>>, principal: Principal): Resolution['fallback'] {
    const [current, ...previous] = this.#tokens.history(token)
    const updatedAt = current?.['last-update-time']
    if (typeof updatedAt !== 'number' || previous.length === 0) return undefined
    const periodSecs = typeof metadata['fallback-period-secs'] === 'number' ? metadata['fallback-period-secs'] : this.#options.fallbackPeriodSecs
    const serviceIds: string[] = []
    for (const data of previous) {
      // A delete ends the token's line: what it served before belongs to a token that is gone.
      if (data['deleted'] === true) break
      const fields = serviceFields(data)
      runAsRequester(fields, principal)
      const id = serviceIdOf(coreParameters(fields), this.#options.serviceIdPrefix)
      if (id !== serviceId && !serviceIds.includes(id)) serviceIds.push(id)
    }
    return serviceIds.length === 0 ? undefined : { since: updatedAt, until: updatedAt + periodSecs * 1000, serviceIds }
  }
}

/** Later sources win; env and metadata maps merge key by key. */
function mergeDescription(into: Record<string, unknown>, from: Readonly<Record<string, unknown>>): void {
  for (const [key, value] of Object.entries(from)) {
    if ((key === 'env' || key === 'metadata') && typeof into[key] === 'object') {
      into[key] = { ...(into[key] as object), ...(value as object) }
    } else {
      into[key] = value
    }
  }
}

/** The token settings that govern a version however it is addressed, by token or by id. */
const OPERATIONAL_METADATA = ['maintenance', 'https-redirect', 'cors-rules'] as const

function explicitUser(value: unknown): string | undefined {
  return typeof value === 'string' && value !== '*' ? value : undefined
}

/**
 * Waiter's run-as-requester: a description that names no run-as-user (or `*`) runs as, and is
 * reserved for, its requester. The requester is part of the version: each requester has its
 * own, which only it (and admins) can call or manage.
 */
export function runAsRequester(fields: Record<string, unknown>, principal: Pick<Principal, 'user'>): void {
  if (explicitUser(fields['run-as-user']) !== undefined) return
  fields['run-as-user'] = principal.user
  fields['permitted-user'] = principal.user
}

function withRunAsUser(core: Readonly<Record<string, unknown>>, principal: Principal): Record<string, unknown> {
  const effective = effectiveParameters(core)
  effective['run-as-user'] ??= principal.user
  return effective
}
