import t from 'tap'
import { readFileSync } from 'node:fs'
import { DEFAULTS, loadConfigFile, parseConfig, withOverrides } from '../src/config.ts'

t.test('config/example.yaml is exactly the defaults', async (t) => {
  t.same(loadConfigFile('config/example.yaml'), DEFAULTS)
  t.ok(readFileSync('config/example.yaml', 'utf8').split('\n').filter((l) => l.trim().startsWith('#')).length > 20, 'and it is commented')
})

t.test('an empty file is the defaults', async (t) => {
  t.same(parseConfig(''), DEFAULTS)
})

t.test('every problem is reported at once, with file:line:col and a hint', async (t) => {
  const text = 'server:\n  prot: 80\n  host: 5\nproxy:\n  queueTimeoutMs: -1\nlog:\n  level: loud\n'
  const err = (() => {
    try {
      parseConfig(text, 'bad.yaml')
    } catch (e) {
      return e as Error & { code: string }
    }
    return undefined
  })()
  t.equal(err?.code, 'MAITRE_INVALID_CONFIG')
  t.match(err?.message, 'bad.yaml:2:9: server.prot is not a known setting; did you mean port?')
  t.match(err?.message, 'bad.yaml:3:9: server.host = 5, must be a string')
  t.match(err?.message, 'bad.yaml:5:19: proxy.queueTimeoutMs = -1, must be a positive integer')
  t.match(err?.message, 'log.level = "loud", must be one of')
})

t.test('overrides from flags are checked like the file', async (t) => {
  t.equal(withOverrides(DEFAULTS, { 'server.port': 8080, dataDir: '/tmp/x' }).server.port, 8080)
  t.throws(() => withOverrides(DEFAULTS, { 'server.port': 70000 }), { code: 'MAITRE_INVALID_CONFIG' })
  t.ok(Object.isFrozen(parseConfig('').server), 'the config is frozen')
})
