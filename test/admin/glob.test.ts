import t from 'tap'
import { globMatcher } from '../../src/admin/glob.ts'

t.test('globs: exact values, * for any run, everything else literal', async (t) => {
  const m = (pattern: string, text: string): boolean => globMatcher('f', pattern)(text)
  t.ok(m('web', 'web'))
  t.notOk(m('web', 'web2'))
  t.ok(m('web*', 'web-api'))
  t.ok(m('*api', 'web-api'))
  t.ok(m('w*b*i', 'web-api'))
  t.ok(m('*', ''))
  t.ok(m('a*a', 'aa'))
  t.notOk(m('a*a', 'a'), 'pieces may not overlap')
  t.notOk(m('ab*ba', 'aba'))
  t.ok(m('v.*', 'v.*'), 'regex syntax is literal')
  t.notOk(m('v.*', 'v1'))
  t.ok(m('*x*y*', 'axbyc'))
  t.notOk(m('*y*x*', 'axbyc'), 'pieces are found in order')
})

t.test('patterns are bounded in length and in stars', async (t) => {
  t.notOk(globMatcher('f', `${'*a'.repeat(16)}b`)('a'.repeat(4096)), 'the worst case for backtracking is a plain miss')
  t.throws(() => globMatcher('f', '*'.repeat(17)), { code: 'MAITRE_BAD_REQUEST' })
  t.throws(() => globMatcher('f', 'x'.repeat(257)), { code: 'MAITRE_BAD_REQUEST' })
})
