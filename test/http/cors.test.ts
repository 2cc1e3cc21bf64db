import t from 'tap'
import { corsRulesProblem, matchingRule, MAX_PROGRAM } from '../../src/http/cors.ts'

t.test('cors-rules: patterns run on RE2 with bounded programs, so no rule can stall the router', async (t) => {
  t.equal(corsRulesProblem('cors-rules', [{ 'origin-regex': 'https://(app|www)\\.example\\.com', 'target-path-regex': '/api/.*', methods: ['GET'] }]), undefined)
  t.match(corsRulesProblem('cors-rules', [{ 'origin-regex': '(a)\\1' }]), /not a valid regular expression \(RE2 syntax/, 'no backreferences')
  t.match(corsRulesProblem('cors-rules', [{ 'origin-regex': '(?=a)b' }]), /RE2 syntax/, 'no lookaround')
  const counted = '[\\s\\S]{0,1000}'.repeat(3) + 'Q'
  t.match(corsRulesProblem('cors-rules', [{ 'origin-regex': counted }]), new RegExp(`too complex: \\d+ RE2 instructions, at most ${MAX_PROGRAM}`), 'a large counted repeat is refused')
  const many = Array.from({ length: 20 }, () => ({ 'origin-regex': '[a-z]{0,100}\\.example' })) // 210 instructions each
  t.match(corsRulesProblem('cors-rules', many), /too complex in all/, 'and so are too many costly patterns together')
  // A rule stored before the size limit is never run: it matches nothing (and costs nothing).
  t.equal(matchingRule([{ 'origin-regex': counted }], 'Q', '/', 'GET'), undefined)
  for (const pattern of ['(a|a)*b', '(a+)+b', 'a*a*a*a*a*a*b']) {
    t.equal(matchingRule([{ 'origin-regex': pattern }], 'a'.repeat(255), '/', 'GET'), undefined, `${pattern} on 255 a's: no match, at once`)
    t.ok(matchingRule([{ 'origin-regex': pattern }], `${'a'.repeat(200)}b`, '/', 'GET') !== undefined, `${pattern} matches where it should`)
  }
  t.equal(matchingRule([{ 'origin-regex': '.*' }], 'x'.repeat(300), '/', 'GET'), undefined, 'an origin longer than any real one matches no rule')
  t.equal(matchingRule([{ 'origin-regex': '.*', 'target-path-regex': '/.*' }], 'https://a', `/${'p'.repeat(2000)}`, 'GET'), undefined, 'nor does a path beyond the bound')
  t.ok(matchingRule([{ 'origin-regex': 'https://a\\.example', methods: ['GET'] }], 'https://a.example', '/x', 'GET') !== undefined)
  t.equal(matchingRule([{ 'origin-regex': 'https://a\\.example' }], 'https://a.example.evil', '/x', 'GET'), undefined, 'a full match, not a prefix')
})
