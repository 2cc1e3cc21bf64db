/**
 * A token's `cors-rules` (Waiter's token-parameter CORS validator): which other origins a browser
 * may call the token's service from, on which paths, with which methods. The rules are the token
 * owner's regular expressions, run on every cross-origin request, each a full match. They run on
 * RE2 (re2js: linear in the input, no backtracking), so no pattern an owner writes can stall the
 * router; RE2's syntax is Waiter's (Java's) without backreferences and lookaround.
 */
import { RE2JS } from 're2js'
import { ALL_METHODS, corsRulesShapeProblem } from './cors-shape.ts'

export interface CorsRule {
  readonly 'origin-regex': string
  readonly 'target-path-regex'?: string
  readonly methods?: readonly string[]
}

/**
 * RE2 matches in time proportional to its program's size times the input's length, so both are
 * bounded: a pattern compiles to at most MAX_PROGRAM instructions (a counted repeat such as
 * `.{0,1000}` compiles to thousands and is refused), a token's patterns to MAX_TOKEN_PROGRAM in
 * all, and a rule is tried on an origin of at most MAX_ORIGIN_CHARS and a path of at most
 * MAX_PATH_CHARS (longer ones match no rule). One preflight thus costs at most about
 * MAX_TOKEN_PROGRAM × MAX_PATH_CHARS steps (~4 million: tens of milliseconds).
 */
export const MAX_PROGRAM = 1000
export const MAX_TOKEN_PROGRAM = 4000
const MAX_ORIGIN_CHARS = 256
const MAX_PATH_CHARS = 1024

/** What is wrong with a token's cors-rules, in Waiter's words (shape, then each pattern compiled by RE2); undefined when nothing is. */
export function corsRulesProblem(name: string, value: unknown): string | undefined {
  const shape = corsRulesShapeProblem(name, value)
  if (shape !== undefined) return shape
  let total = 0
  for (const rule of value as Record<string, unknown>[]) {
    for (const key of ['origin-regex', 'target-path-regex']) {
      const pattern = rule[key]
      if (typeof pattern !== 'string') continue
      let size: number
      try {
        size = RE2JS.compile(pattern).programSize()
      } catch (err) {
        return `${name} ${key} ${JSON.stringify(pattern)} is not a valid regular expression (RE2 syntax: ${(err as Error).message}).`
      }
      if (size > MAX_PROGRAM) return `${name} ${key} ${JSON.stringify(pattern.slice(0, 100))} is too complex: ${size} RE2 instructions, at most ${MAX_PROGRAM} (large counted repeats like {0,1000} cost the most).`
      total += size
    }
  }
  if (total > MAX_TOKEN_PROGRAM) return `${name} are too complex in all: ${total} RE2 instructions, at most ${MAX_TOKEN_PROGRAM}.`
  return undefined
}

const compiled = new Map<string, RE2JS | null>()
/**
 * Whether `pattern` matches all of `text`. Compiled once per pattern (bounded: dropped wholesale
 * past a size); a pattern that does not compile (a token stored before this rule) matches nothing.
 */
function fullMatch(pattern: string, text: string): boolean {
  let re = compiled.get(pattern)
  if (re === undefined) {
    if (compiled.size >= 10_000) compiled.clear()
    try {
      re = RE2JS.compile(pattern)
      // A pattern stored before the size rule: too costly to run, so it matches nothing.
      if (re.programSize() > MAX_PROGRAM) re = null
    } catch {
      re = null
    }
    compiled.set(pattern, re)
  }
  return re !== null && re.matches(text)
}

/** The rule that lets `origin` call `path` with `method`, if any does. */
export function matchingRule(rules: unknown, origin: string, path: string, method: string): CorsRule | undefined {
  if (!Array.isArray(rules) || origin.length > MAX_ORIGIN_CHARS || path.length > MAX_PATH_CHARS) return undefined
  for (const rule of rules as CorsRule[]) {
    if (!fullMatch(rule['origin-regex'], origin)) continue
    if (rule['target-path-regex'] !== undefined && !fullMatch(rule['target-path-regex'], path)) continue
    if (rule.methods !== undefined && !(Array.isArray(rule.methods) && rule.methods.includes(method))) continue
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
