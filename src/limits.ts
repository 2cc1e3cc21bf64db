/** Bounds that more than one layer applies to what callers send. Each is in README's Limits table. */

/** Deepest nesting of arrays and objects any JSON a caller sends may have (bodies and x-waiter-* values). */
export const MAX_JSON_DEPTH = 32

/** Longest any timeout a caller chooses may be. */
export const MAX_TIMEOUT_MS = 3_600_000

/** Nesting depth of a parsed JSON value, without recursion (the value may be hostile); stops counting past the limit. */
export function jsonDepth(value: unknown): number {
  let deepest = 0
  const stack: [unknown, number][] = [[value, 0]]
  while (stack.length > 0) {
    const [node, depth] = stack.pop() as [unknown, number]
    if (typeof node !== 'object' || node === null) continue
    deepest = Math.max(deepest, depth + 1)
    if (deepest > MAX_JSON_DEPTH) return deepest
    for (const child of Object.values(node)) stack.push([child, depth + 1])
  }
  return deepest
}
