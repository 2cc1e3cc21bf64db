import t from 'tap'
import { isDnsLabel, serviceIdOf } from '../../src/versions/service-id.ts'

const description = { cmd: 'node app.js', cpus: 0.5, mem: 256, version: 'v1', name: 'My App!', env: { B: '2', A: '1' } }

t.test('golden ids never change', async (t) => {
  // The hashes are md5 of the canonical JSON, computed outside the code (echo -n '{...}' | md5sum).
  // If this fails, every running service would be renamed: only change it on purpose.
  t.equal(serviceIdOf(description), 'maitre-myapp-6f926f40bdc3f2c609bbda10bb48eb26')
  t.equal(serviceIdOf({ cmd: 'sleep 1', cpus: 1, mem: 1, version: 'x' }), 'maitre-bdd49418806d1fecc9a865eba9954d23')
})

t.test('key order and non-service keys do not matter; explicit defaults do', async (t) => {
  const reordered = { env: { A: '1', B: '2' }, version: 'v1', name: 'My App!', mem: 256, cpus: 0.5, cmd: 'node app.js' }
  t.equal(serviceIdOf(reordered), serviceIdOf(description))
  t.equal(serviceIdOf({ ...description, owner: 'bob', 'queue-timeout-ms': 5 }), serviceIdOf(description), 'token metadata is excluded')
  t.not(serviceIdOf({ ...description, 'concurrency-level': 1 }), serviceIdOf(description), 'an explicit default is a different service')
  t.not(serviceIdOf({ ...description, cpus: 1 }), serviceIdOf(description))
})

t.test('ids are DNS-1123 labels even with long names', async (t) => {
  const id = serviceIdOf({ ...description, name: 'A very long service name that goes on and on' })
  t.ok(isDnsLabel(id), id)
  t.ok(id.length <= 63)
  t.ok(isDnsLabel(serviceIdOf({ cmd: 'x', cpus: 1, mem: 1, version: '1' }, 'prefix-')))
})
