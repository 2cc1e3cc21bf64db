/** Waiter's /token, /tokens and /token-history endpoints. */
import { MaitreError } from '../errors.ts'
import type { Principal } from '../auth/authenticator.ts'
import { runAsRequester } from '../versions/resolve.ts'
import { hostAsSent, tokenNamedByHost } from '../http/host.ts'
import { serviceIdOf } from '../versions/service-id.ts'
import { globMatcher, MAX_FILTERS, type Matcher } from './glob.ts'
import { serviceFields, tokenEtag, userFields, type Tokens } from '../versions/tokens.ts'
import type { TokenData } from '../versions/token-store.ts'
import { PARAMETERS, SYSTEM_METADATA, TOKEN_METADATA } from '../versions/parameters.ts'
import { firstHeader, methodNotAllowed, queryFlag, readJsonObject, sendJson, sendJsonInPieces, type AdminRequest } from './http.ts'

export interface TokenApiDeps {
  readonly tokens: Tokens
  readonly routerHostnames: ReadonlySet<string>
  readonly serviceIdPrefix: string
  /** Principals that manage every token (auth.admins, and the one-user principal): ?can-manage-as-user= counts them. */
  readonly admins?: ReadonlySet<string>
}

/** Token fields a listing may filter on (Waiter: the token-data keys but owner and maintenance, which have their own flags), and `token` itself. */
const FILTERABLE = new Set([...PARAMETERS.keys(), ...TOKEN_METADATA.keys(), ...SYSTEM_METADATA, 'token'].filter((k) => k !== 'owner' && k !== 'maintenance'))

/** A token a request must give x-waiter-param-* to run: an allowed parameter its env sets no default for (Waiter's requires-parameters?). */
function requiresParameterValues(data: Readonly<Record<string, unknown>>): boolean {
  const allowed = data['allowed-params']
  if (!Array.isArray(allowed)) return false
  const env = typeof data['env'] === 'object' && data['env'] !== null ? (data['env'] as Record<string, unknown>) : {}
  return allowed.some((name) => typeof name === 'string' && !Object.hasOwn(env, name))
}

/** Waiter's flag parsing: "true" in any case is true, anything else false. */
const flag = (value: string): boolean => value.toLowerCase() === 'true'

function includes(url: URL, what: string): boolean {
  return url.searchParams.getAll('include').some((v) => v.split(',').includes(what))
}

/** Token name from ?token=, then x-waiter-token, then a Host that is not the router's own. */
function tokenNameOf(r: AdminRequest, deps: TokenApiDeps): string | undefined {
  const fromQuery = r.url.searchParams.get('token')
  if (fromQuery !== null && fromQuery !== '') return fromQuery
  const fromHeader = firstHeader(r.req.headers['x-waiter-token'])
  if (fromHeader !== undefined && fromHeader !== '') return fromHeader
  const host = hostAsSent(r.req.headers.host)
  return host !== '' && !deps.routerHostnames.has(host.toLowerCase()) ? tokenNamedByHost(host, (name) => deps.tokens.get(name) !== undefined) : undefined
}

/** A stored time as ISO 8601; undefined for anything that is no valid time (a reader never throws on a token). */
function isoTime(value: unknown): string | undefined {
  if (typeof value !== 'number' || !Number.isFinite(value)) return undefined
  const date = new Date(value)
  return Number.isNaN(date.getTime()) ? undefined : date.toISOString()
}

function withMetadata(data: TokenData): Record<string, unknown> {
  const out: Record<string, unknown> = { ...data }
  const time = isoTime(data['last-update-time'])
  if (time !== undefined) out['last-update-time'] = time
  if (typeof data['previous'] === 'object' && data['previous'] !== null && !Array.isArray(data['previous'])) out['previous'] = withMetadata(data['previous'] as TokenData)
  return out
}

export async function handleToken(r: AdminRequest, principal: Principal, deps: TokenApiDeps): Promise<void> {
  const { req, res, url, cid } = r
  const ifMatch = firstHeader(req.headers['if-match'])
  switch (req.method) {
    case 'GET':
    case 'HEAD': {
      const name = tokenNameOf(r, deps)
      if (name === undefined) throw new MaitreError('MAITRE_BAD_REQUEST', "Couldn't find token in request", { details: { field: 'token' } })
      const data = deps.tokens.get(name, includes(url, 'deleted'))
      if (data === undefined) throw new MaitreError('MAITRE_TOKEN_NOT_FOUND', `Couldn't find token ${name}`, { details: { token: name } })
      const body = includes(url, 'metadata') ? withMetadata(data) : userFields(data)
      return sendJson(res, 200, body, cid, { etag: tokenEtag(data) })
    }
    case 'POST': {
      const body = await readJsonObject(req)
      const fromQuery = url.searchParams.get('token')
      if (fromQuery !== null && body['token'] !== undefined) {
        throw new MaitreError('MAITRE_BAD_REQUEST', 'The token should be provided only as a query parameter or in the json payload', { details: { field: 'token' } })
      }
      const name = fromQuery ?? body['token']
      delete body['token']
      if (typeof name !== 'string' || name === '') throw new MaitreError('MAITRE_INVALID_TOKEN', 'Must provide the token', { details: { field: 'token' } })
      const updateMode = url.searchParams.get('update-mode')
      if (updateMode !== null && updateMode !== 'admin') {
        throw new MaitreError('MAITRE_BAD_REQUEST', `Invalid update-mode: ${updateMode.slice(0, 50)} (the only mode is admin)`, { details: { field: 'update-mode', allowed: ['admin'] } })
      }
      const write = await deps.tokens.upsert(name, body, { principal, ifMatch, adminMode: updateMode === 'admin' })
      const message = write.result === 'token-no-op' ? `No changes detected for ${name}` : `Successfully ${write.result === 'token-created' ? 'created' : 'updated'} ${name}`
      return sendJson(res, 200, { message, 'service-description': serviceFields(write.data) }, cid, {
        etag: write.etag,
        'x-waiter-operation-result': write.result,
      })
    }
    case 'DELETE': {
      const name = tokenNameOf(r, deps)
      if (name === undefined) throw new MaitreError('MAITRE_BAD_REQUEST', "Couldn't find token in request", { details: { field: 'token' } })
      const hard = queryFlag(url, 'hard-delete')
      const { etag } = await deps.tokens.delete(name, { principal, ifMatch, hard })
      return sendJson(res, 200, { delete: name, 'hard-delete': hard, success: true }, cid, {
        etag: ifMatch ?? etag,
        'x-waiter-operation-result': 'token-deleted',
      })
    }
    default:
      throw methodNotAllowed(req.method, ['GET', 'POST', 'DELETE'])
  }
}

export async function handleTokens(r: AdminRequest, deps: TokenApiDeps): Promise<void> {
  if (r.req.method !== 'GET') throw methodNotAllowed(r.req.method, ['GET'])
  const owners = new Set(r.url.searchParams.getAll('owner'))
  const withDeleted = includes(r.url, 'deleted')
  const withMeta = includes(r.url, 'metadata')
  // Waiter's filters: any token key (dotted for maps: env.FLAG), exact or a glob; a key given
  // twice matches either value. `parameters=K` adds those keys' values to each entry. Other
  // parameters are flags (run-as-requester, requires-parameters, can-manage-as-user, maintenance)
  // or not filters at all (Waiter ignores them: watch=false, a cache-buster).
  const given = [...r.url.searchParams.entries()].filter(([key]) => FILTERABLE.has(key.split('.')[0] as string))
  // Every value counts, a repeated key's too: each is tried against every token.
  if (given.length > MAX_FILTERS) throw new MaitreError('MAITRE_BAD_REQUEST', `At most ${MAX_FILTERS} filters`, { details: { limit: 'filters', max: MAX_FILTERS } })
  const byKey = new Map<string, Matcher[]>()
  for (const [key, wanted] of given) byKey.set(key, [...(byKey.get(key) ?? []), globMatcher(key, wanted)])
  const filters = [...byKey].map(([key, matchers]) => ({ path: key.split('.').slice(0, 4), matchers }))
  const maintenance = r.url.searchParams.get('maintenance')
  const runAsRequester = r.url.searchParams.get('run-as-requester')
  const requiresParameters = r.url.searchParams.get('requires-parameters')
  const manager = r.url.searchParams.get('can-manage-as-user')
  const shown = r.url.searchParams.getAll('parameters').slice(0, MAX_FILTERS)
  const valueAt = (data: Readonly<Record<string, unknown>>, path: readonly string[]): unknown =>
    path.reduce<unknown>((v, k) => (typeof v === 'object' && v !== null && Object.hasOwn(v, k) ? (v as Record<string, unknown>)[k] : undefined), data)
  const list: Record<string, unknown>[] = []
  for (const [token, data] of deps.tokens.entries()) {
    if (data['deleted'] === true && !withDeleted) continue
    if (owners.size > 0 && !owners.has(String(data['owner']))) continue
    const inMaintenance = data['maintenance'] !== undefined && data['maintenance'] !== null
    if (maintenance !== null && inMaintenance !== flag(maintenance)) continue
    // Waiter's predicates exactly: run-as-user "*"; an allowed parameter with no default in env.
    if (runAsRequester !== null && (data['run-as-user'] === '*') !== flag(runAsRequester)) continue
    if (requiresParameters !== null && requiresParameterValues(data) !== flag(requiresParameters)) continue
    if (manager !== null && data['owner'] !== manager && deps.admins?.has(manager) !== true) continue
    if (!filters.every(({ path, matchers }) => {
      const actual = path.length === 1 && path[0] === 'token' ? token : valueAt(data, path)
      return actual !== undefined && typeof actual !== 'object' && matchers.some((m) => m(String(actual)))
    })) continue
    const entry: Record<string, unknown> = { token, owner: data['owner'] }
    if (shown.length > 0) entry['parameters'] = Object.fromEntries(shown.filter((k) => data[k] !== undefined).map((k) => [k, data[k]]))
    // Waiter's index says whether a token is in maintenance, always, as a boolean.
    entry['maintenance'] = inMaintenance
    if (withMeta) {
      entry['deleted'] = data['deleted'] === true
      entry['etag'] = tokenEtag(data)
      entry['last-update-time'] = isoTime(data['last-update-time']) ?? null
    }
    list.push(entry)
  }
  // Code-unit order: stable, and cheap for a hundred thousand names (localeCompare is not).
  list.sort((a, b) => (String(a['token']) < String(b['token']) ? -1 : String(a['token']) > String(b['token']) ? 1 : 0))
  await sendJsonInPieces(r.res, 200, list, r.cid)
}

export function handleTokenHistory(r: AdminRequest, who: Principal, deps: TokenApiDeps): void {
  if (r.req.method !== 'GET') throw methodNotAllowed(r.req.method, ['GET'])
  const name = r.url.searchParams.get('token') ?? ''
  const history = deps.tokens.history(name)
  if (history.length === 0) throw new MaitreError('MAITRE_TOKEN_NOT_FOUND', `Token not found: ${name}`, { details: { token: name } })
  const length = Number.parseInt(r.url.searchParams.get('length') ?? '', 10)
  const entries = history.map((data) => {
    const description = serviceFields(data)
    // A token that runs as its requester has a version per requester: the caller's is shown.
    const runs = { ...description }
    runAsRequester(runs, who)
    return {
      'service-id': serviceIdOf(runs, deps.serviceIdPrefix),
      'service-description': description,
      'source-component': 'token',
      'update-time': isoTime(data['last-update-time']) ?? null,
      etag: tokenEtag(data),
      deleted: data['deleted'] === true,
    }
  })
  sendJson(r.res, 200, length > 0 ? entries.slice(0, length) : entries, r.cid)
}
