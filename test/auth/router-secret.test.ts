/**
 * The router secret kept in the data directory: generated once and read back the same, and a
 * kept file that holds no usable secret (emptied, truncated) refused rather than used: a secret
 * of '' would let anyone seal an admin's login cookie.
 */
import t from 'tap'
import { readFileSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { loadRouterSecret } from '../../src/auth/router-secret.ts'

t.test('generated once, kept with mode 0600, read back the same on the next start', async (t) => {
  const dir = t.testdir()
  const first = await loadRouterSecret(null, dir)
  t.ok(first.length >= 32, 'a long random secret')
  t.equal(statSync(join(dir, 'router-secret')).mode & 0o777, 0o600)
  t.equal(await loadRouterSecret(null, dir), first)
  t.equal(await loadRouterSecret('configured-secret-wins', dir), 'configured-secret-wins', 'a configured secret is used as it is')
})

t.test('a kept file that is empty or too short stops the start with an error naming it, and is left as it was', async (t) => {
  for (const content of ['', '\n', 'abc\n']) {
    const dir = t.testdir()
    writeFileSync(join(dir, 'router-secret'), content)
    await t.rejects(loadRouterSecret(null, dir), { code: 'MAITRE_STORE_CORRUPT', message: /router-secret holds no router secret of at least 16 characters/ }, JSON.stringify(content))
    t.equal(readFileSync(join(dir, 'router-secret'), 'utf8'), content, 'not replaced: instances may have been started with it')
  }
})
