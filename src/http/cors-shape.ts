/** The shape of a token's cors-rules, checked without compiling anything (the parameter table is pure). */

const MAX_CORS_RULES = 100
const MAX_PATTERN_CHARS = 1024
/** Waiter's nine methods, what a preflight allows when the rule names none. */
export const ALL_METHODS = ['CONNECT', 'DELETE', 'GET', 'HEAD', 'OPTIONS', 'PATCH', 'POST', 'PUT', 'TRACE'] as const

/** What is wrong with the shape of a token's cors-rules, in Waiter's words; undefined when nothing is. */
export function corsRulesShapeProblem(name: string, value: unknown): string | undefined {
  if (!Array.isArray(value)) return `${name} must be a list of rules.`
  if (value.length > MAX_CORS_RULES) return `${name} must have at most ${MAX_CORS_RULES} rules.`
  for (const rule of value as unknown[]) {
    if (typeof rule !== 'object' || rule === null || Array.isArray(rule)) return `${name} entries must be objects.`
    const r = rule as Record<string, unknown>
    const unknown = Object.keys(r).filter((k) => !['origin-regex', 'target-path-regex', 'methods'].includes(k))
    if (unknown.length > 0) return `${name} entries take origin-regex, target-path-regex and methods only (given: ${unknown.join(', ')}).`
    if (r['origin-regex'] === undefined) return `${name} entries need an origin-regex string.`
    for (const key of ['origin-regex', 'target-path-regex']) {
      const pattern = r[key]
      if (pattern === undefined) continue
      if (typeof pattern !== 'string') return `${name} ${key} must be a string.`
      if (pattern.length > MAX_PATTERN_CHARS) return `${name} ${key} must be at most ${MAX_PATTERN_CHARS} characters.`
    }
    const methods = r['methods']
    if (methods !== undefined && !(Array.isArray(methods) && methods.length > 0 && methods.every((m) => typeof m === 'string' && (ALL_METHODS as readonly string[]).includes(m)))) {
      return `${name} methods must be a non-empty list of upper-case HTTP methods (${ALL_METHODS.join(', ')}).`
    }
  }
  return undefined
}
