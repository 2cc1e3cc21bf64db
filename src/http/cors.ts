/**
 * A token's `cors-rules` (Waiter's token-parameter CORS validator): which other origins a browser
 * may call the token's service from, on which paths, with which methods. The rules are the token
 * owner's regular expressions, run on every cross-origin request: each must be a full match, and
 * patterns that can backtrack without bound (a quantified group that holds a quantifier, such as
 * `(a+)+`) are refused when the token is written, so no owner can stall the router.
 */

export interface CorsRule {
  readonly 'origin-regex': string
  readonly 'target-path-regex'?: string
  readonly methods?: readonly string[]
}

export const MAX_CORS_RULES = 100
const MAX_PATTERN_CHARS = 1024
/** Longest origin and path a rule is tried on: a longer one is refused, not matched. */
const MAX_ORIGIN_CHARS = 512
const MAX_PATH_CHARS = 4096
/** Waiter's nine methods, what a preflight allows when the rule names none. */
export const ALL_METHODS = ['CONNECT', 'DELETE', 'GET', 'HEAD', 'OPTIONS', 'PATCH', 'POST', 'PUT', 'TRACE'] as const

/** Whether a pattern nests quantifiers (star height above one): the shape of catastrophic backtracking. */
export function nestsQuantifiers(pattern: string): boolean {
  // For each open group: whether a quantifier appeared inside it.
  const stack: boolean[] = []
  let inClass = false
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]
    if (c === '\\') {
      i++
      continue
    }
    if (inClass) {
      if (c === ']') inClass = false
      continue
    }
    if (c === '[') inClass = true
    else if (c === '(') stack.push(false)
    else if (c === ')') {
      const inner = stack.pop() ?? false
      const next = pattern[i + 1]
      const quantified = next === '*' || next === '+' || next === '?' || next === '{'
      if (inner && quantified) return true
      if ((inner || quantified) && stack.length > 0) stack[stack.length - 1] = true
    } else if ((c === '*' || c === '+' || c === '{' || c === '?') && stack.length > 0 && pattern[i - 1] !== '(') {
      stack[stack.length - 1] = true
    }
  }
  return false
}

function patternProblem(name: string, key: string, value: unknown): string | undefined {
  if (typeof value !== 'string') return `${name} ${key} must be a string.`
  if (value.length > MAX_PATTERN_CHARS) return `${name} ${key} must be at most ${MAX_PATTERN_CHARS} characters.`
  try {
    new RegExp(value)
  } catch {
    return `${name} ${key} ${JSON.stringify(value)} is not a valid regular expression.`
  }
  if (nestsQuantifiers(value)) return `${name} ${key} ${JSON.stringify(value)} nests quantifiers (like (a+)+), which can backtrack without bound.`
  return undefined
}

/** What is wrong with a token's cors-rules, in Waiter's words; undefined when nothing is. */
export function corsRulesProblem(name: string, value: unknown): string | undefined {
  if (!Array.isArray(value)) return `${name} must be a list of rules.`
  if (value.length > MAX_CORS_RULES) return `${name} must have at most ${MAX_CORS_RULES} rules.`
  for (const rule of value as unknown[]) {
    if (typeof rule !== 'object' || rule === null || Array.isArray(rule)) return `${name} entries must be objects.`
    const r = rule as Record<string, unknown>
    const unknown = Object.keys(r).filter((k) => !['origin-regex', 'target-path-regex', 'methods'].includes(k))
    if (unknown.length > 0) return `${name} entries take origin-regex, target-path-regex and methods only (given: ${unknown.join(', ')}).`
    if (r['origin-regex'] === undefined) return `${name} entries need an origin-regex string.`
    const problem = patternProblem(name, 'origin-regex', r['origin-regex']) ?? (r['target-path-regex'] === undefined ? undefined : patternProblem(name, 'target-path-regex', r['target-path-regex']))
    if (problem !== undefined) return problem
    const methods = r['methods']
    if (methods !== undefined && !(Array.isArray(methods) && methods.length > 0 && methods.every((m) => typeof m === 'string' && (ALL_METHODS as readonly string[]).includes(m)))) {
      return `${name} methods must be a non-empty list of upper-case HTTP methods (${ALL_METHODS.join(', ')}).`
    }
  }
  return undefined
}

const compiled = new Map<string, RegExp>()
/** Compiled full-match patterns, kept for the patterns tokens hold (bounded: dropped wholesale past a size). */
function fullMatch(pattern: string, text: string): boolean {
  let re = compiled.get(pattern)
  if (re === undefined) {
    if (compiled.size >= 10_000) compiled.clear()
    re = new RegExp(`^(?:${pattern})$`)
    compiled.set(pattern, re)
  }
  return re.test(text)
}

/** The rule that lets `origin` call `path` with `method`, if any does. */
export function matchingRule(rules: unknown, origin: string, path: string, method: string): CorsRule | undefined {
  if (!Array.isArray(rules) || origin.length > MAX_ORIGIN_CHARS || path.length > MAX_PATH_CHARS) return undefined
  for (const rule of rules as CorsRule[]) {
    if (!fullMatch(rule['origin-regex'], origin)) continue
    if (rule['target-path-regex'] !== undefined && !fullMatch(rule['target-path-regex'], path)) continue
    if (rule.methods !== undefined && !rule.methods.includes(method)) continue
    return rule
  }
  return undefined
}

/** A request from the page's own origin (its scheme://host is the request's own) needs no rule. */
export function isSameOrigin(origin: string, host: string | undefined, proto: string): boolean {
  if (host === undefined) return false
  return origin.toLowerCase() === `${proto}://${host.toLowerCase()}`
}

/** Whether a request is a CORS preflight (answered before authentication: a browser sends no credentials with it). */
export function isPreflight(method: string | undefined, headers: Readonly<Record<string, string | string[] | undefined>>): boolean {
  return method === 'OPTIONS' && typeof headers['origin'] === 'string' && typeof headers['access-control-request-method'] === 'string'
}

/** The request's scheme as the client used it (a TLS terminator in front says so in x-forwarded-proto). */
export function requestProto(headers: Readonly<Record<string, string | string[] | undefined>>): string {
  const forwarded = headers['x-forwarded-proto']
  return typeof forwarded === 'string' ? (forwarded.split(',')[0] ?? '').trim().toLowerCase() : 'http'
}

/** Waiter's answer to an allowed preflight. */
export function preflightHeaders(origin: string, rule: CorsRule | undefined, requestedHeaders: string | undefined): Record<string, string> {
  return {
    'access-control-allow-credentials': 'true',
    'access-control-allow-headers': requestedHeaders ?? '*',
    'access-control-allow-methods': (rule?.methods ?? ALL_METHODS).join(', '),
    'access-control-allow-origin': origin,
    'access-control-max-age': '3600',
    vary: 'Origin',
  }
}

/** Headers that let the browser hand an allowed cross-origin answer to the page. */
export function allowedRequestHeaders(origin: string, exposeApiHeaders: boolean): Record<string, string> {
  return {
    'access-control-allow-credentials': 'true',
    'access-control-allow-origin': origin,
    ...(exposeApiHeaders ? { 'access-control-expose-headers': 'etag, x-cid' } : {}),
    vary: 'Origin',
  }
}
