/** A version's parameters are built once and kept until its overrides change; a token's etag once per token version. */
import t from 'tap'
import { systemClock } from '../../src/clock.ts'
import { fileStores } from '../../src/storage/json-dir.ts'
import { Overrides } from '../../src/versions/overrides.ts'
import { tokenEtag } from '../../src/versions/tokens.ts'

const core = { cmd: 'x', cpus: 1, mem: 128, version: 'v1', 'run-as-user': 'alice', 'permitted-user': 'alice' }

t.test('a version’s parameters follow its overrides as they are set, changed and cleared', async (t) => {
  const overrides = await Overrides.open(fileStores(t.testdir()), systemClock)
  const first = overrides.parameters('maitre-v1', core)
  t.equal(first['min-instances'], 1, 'the default')
  t.equal(overrides.parameters('maitre-v1', core), first, 'the same parameters, read again, are not built again')
  t.ok(Object.isFrozen(first), 'shared, so nobody may change them')
  await overrides.set('maitre-v1', core, { 'min-instances': 2 }, 'alice')
  t.equal(overrides.parameters('maitre-v1', core)['min-instances'], 2, 'an override applies at the next read')
  t.equal(overrides.parameters('maitre-v1', core), overrides.parameters('maitre-v1', core), 'and is kept while it stands')
  await overrides.set('maitre-v1', core, { 'min-instances': 3 }, 'alice')
  t.equal(overrides.parameters('maitre-v1', core)['min-instances'], 3, 'and a changed one')
  await overrides.clear('maitre-v1')
  t.equal(overrides.parameters('maitre-v1', core)['min-instances'], 1, 'cleared: the default again')
  t.equal(overrides.parameters('maitre-v2', core)['min-instances'], 1, 'another version with an equal description has its own')
  await overrides.set('maitre-v2', core, { 'min-instances': 4 }, 'alice')
  t.equal(overrides.parameters('maitre-v2', core)['min-instances'], 4)
  t.equal(overrides.parameters('maitre-v1', core)['min-instances'], 1, 'and its overrides are its own')
})

t.test('a token’s etag is its content’s, and the token cannot change under it', async (t) => {
  const token = { cmd: 'x', version: 'v1', owner: 'alice', previous: { cmd: 'old' } }
  const etag = tokenEtag(token)
  t.equal(tokenEtag({ ...token }), etag, 'an equal token, another object: the same etag')
  t.equal(tokenEtag({ ...token, previous: undefined }), etag, 'its history is not part of it')
  t.not(tokenEtag({ ...token, version: 'v2' }), etag, 'another content, another etag')
  t.throws(() => {
    ;(token as Record<string, unknown>)['version'] = 'v3'
  }, TypeError, 'frozen once its etag is known')
  t.equal(tokenEtag(token), etag)
})
