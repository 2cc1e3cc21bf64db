/**
 * JSON.stringify(value, null, 2), in pieces: the value's top levels, and any list or map of many
 * entries a little deeper (`{ state: { services: [ 10,000 versions ] } }`), are walked entry by
 * entry, and what lies below is written whole, so a listing of 10,000 versions can be written
 * with the event loop let go between entries (sendJsonInPieces). Joined, the pieces are exactly
 * JSON.stringify's text: the same entries skipped, the same `toJSON` calls, the same spacing.
 */

/** Levels always walked entry by entry. */
const WALKED_LEVELS = 2
/** Below those, a list or map is walked down to this level if it has more than MANY entries. */
const DEEPEST_WALKED_LEVEL = 4
const MANY = 16

export function* jsonPieces(value: unknown): Generator<string, void, undefined> {
  const whole = yield* piecesOf(value, '', '', 0)
  if (!whole) yield 'null'
}

/** Yields the value's text at `indent`; false when JSON has no text for it (undefined, a function, a symbol). */
function* piecesOf(value: unknown, key: string, indent: string, level: number): Generator<string, boolean, undefined> {
  let v = value
  if (v !== null && typeof v === 'object' && typeof (v as { toJSON?: unknown }).toJSON === 'function') v = (v as { toJSON: (key: string) => unknown }).toJSON(key)
  if (v === null || typeof v !== 'object' || isBoxed(v) || !walked(v, level)) {
    const text = JSON.stringify(v, null, 2) as string | undefined
    if (text === undefined) return false
    yield indent === '' ? text : text.replaceAll('\n', `\n${indent}`)
    return true
  }
  const inner = `${indent}  `
  if (Array.isArray(v)) {
    if (v.length === 0) {
      yield '[]'
      return true
    }
    yield '['
    for (let i = 0; i < v.length; i++) {
      yield i === 0 ? `\n${inner}` : `,\n${inner}`
      if (!(yield* piecesOf(v[i], String(i), inner, level + 1))) yield 'null'
    }
    yield `\n${indent}]`
    return true
  }
  let first = true
  for (const k of Object.keys(v)) {
    const entry = (v as Record<string, unknown>)[k]
    if (!hasText(entry)) continue
    yield `${first ? '{' : ','}\n${inner}${JSON.stringify(k)}: `
    first = false
    yield* piecesOf(entry, k, inner, level + 1)
  }
  yield first ? '{}' : `\n${indent}}`
  return true
}

function walked(value: object, level: number): boolean {
  if (level < WALKED_LEVELS) return true
  if (level >= DEEPEST_WALKED_LEVEL) return false
  return Array.isArray(value) ? value.length > MANY : Object.keys(value).length > MANY
}

/** Whether JSON writes an object's property holding this (it skips undefined, functions and symbols, unless a toJSON says otherwise). */
function hasText(value: unknown): boolean {
  if (value === undefined || typeof value === 'function' || typeof value === 'symbol') return false
  if (value !== null && typeof value === 'object' && typeof (value as { toJSON?: unknown }).toJSON === 'function') return JSON.stringify(value) !== undefined
  return true
}

/** A Number, String, Boolean or BigInt object: JSON writes its primitive. */
function isBoxed(value: object): boolean {
  return value instanceof Number || value instanceof String || value instanceof Boolean || value instanceof BigInt
}
