/**
 * `/apps` filter values: an exact value, or a glob where `*` matches any run of characters.
 * No caller-supplied regular expression ever runs on the router: a glob is cut at its stars and
 * its pieces are found left to right with indexOf, so one match costs about the length of the
 * text whatever the pattern, and patterns themselves are bounded.
 */
import { MaitreError } from '../errors.ts'

export const MAX_FILTER_LENGTH = 256
export const MAX_FILTERS = 16
const MAX_STARS = 16

export type Matcher = (text: string) => boolean

export function globMatcher(field: string, pattern: string): Matcher {
  if (pattern.length > MAX_FILTER_LENGTH) {
    throw new MaitreError('MAITRE_BAD_REQUEST', `The ${field} filter is longer than ${MAX_FILTER_LENGTH} characters`, { details: { field, limit: 'filter-length', max: MAX_FILTER_LENGTH } })
  }
  const pieces = pattern.split('*')
  if (pieces.length === 1) return (text) => text === pattern
  if (pieces.length - 1 > MAX_STARS) {
    throw new MaitreError('MAITRE_BAD_REQUEST', `The ${field} filter has more than ${MAX_STARS} *`, { details: { field, limit: 'filter-stars', max: MAX_STARS } })
  }
  const first = pieces[0] as string
  const last = pieces[pieces.length - 1] as string
  const middle = pieces.slice(1, -1).filter((p) => p !== '')
  return (text) => {
    if (text.length < first.length + last.length || !text.startsWith(first) || !text.endsWith(last)) return false
    let at = first.length
    const end = text.length - last.length
    for (const piece of middle) {
      const found = text.indexOf(piece, at)
      if (found === -1 || found + piece.length > end) return false
      at = found + piece.length
    }
    return true
  }
}
