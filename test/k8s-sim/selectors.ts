/** Label and field selectors as the API server parses them (the subset kubectl and clients send). */

type LabelTest = (labels: Record<string, string>) => boolean

/** Splits on commas outside parentheses: `a in (x,y),b=c` is two requirements. */
function requirements(selector: string): string[] {
  const out: string[] = []
  let depth = 0
  let current = ''
  for (const ch of selector) {
    if (ch === '(') depth++
    if (ch === ')') depth--
    if (ch === ',' && depth === 0) {
      out.push(current.trim())
      current = ''
    } else {
      current += ch
    }
  }
  if (current.trim() !== '') out.push(current.trim())
  return out
}

export class SelectorError extends Error {}

function requirement(text: string): LabelTest {
  let m = /^([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)$/.exec(text)
  if (m !== null) {
    const [, key, op, list] = m as unknown as [string, string, string, string]
    const values = new Set(list.split(',').map((v) => v.trim()))
    return op === 'in' ? (l) => l[key] !== undefined && values.has(l[key]) : (l) => l[key] === undefined || !values.has(l[key])
  }
  m = /^([\w./-]+)\s*(==|=|!=)\s*([\w./-]*)$/.exec(text)
  if (m !== null) {
    const [, key, op, value] = m as unknown as [string, string, string, string]
    return op === '!=' ? (l) => l[key] !== value : (l) => l[key] === value
  }
  m = /^(!?)([\w./-]+)$/.exec(text)
  if (m !== null) {
    const [, not, key] = m as unknown as [string, string, string]
    return not === '!' ? (l) => l[key] === undefined : (l) => l[key] !== undefined
  }
  throw new SelectorError(`unable to parse requirement: ${JSON.stringify(text)}`)
}

export function labelSelector(selector: string | null): LabelTest {
  if (selector === null || selector.trim() === '') return () => true
  const tests = requirements(selector).map(requirement)
  return (labels) => tests.every((t) => t(labels))
}

function pathValue(object: unknown, path: string): string {
  let node: unknown = object
  for (const key of path.split('.')) node = (node as Record<string, unknown> | undefined)?.[key]
  return node === undefined || node === null ? '' : String(node)
}

export function fieldSelector(selector: string | null): (object: unknown) => boolean {
  if (selector === null || selector.trim() === '') return () => true
  const tests = selector.split(',').map((text) => {
    const m = /^([\w.]+)\s*(==|=|!=)\s*(.*)$/.exec(text.trim())
    if (m === null) throw new SelectorError(`invalid field selector: ${JSON.stringify(text)}`)
    const [, path, op, value] = m as unknown as [string, string, string, string]
    return (o: unknown) => (pathValue(o, path) === value) === (op !== '!=')
  })
  return (object) => tests.every((t) => t(object))
}
