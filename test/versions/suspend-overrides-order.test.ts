/**
 * A resume (or an override clear) sent while the suspend (or the override) is still being written
 * comes after it: the later request wins, as it would had the first one answered already.
 */
import t from 'tap'
import { systemClock } from '../../src/clock.ts'
import { fileStores } from '../../src/storage/json-dir.ts'
import { Overrides } from '../../src/versions/overrides.ts'
import { Suspensions } from '../../src/versions/suspensions.ts'

t.test('a resume right behind a suspend still being written resumes the version', async (t) => {
  const suspensions = await Suspensions.open(fileStores(t.testdir()), systemClock)
  for (let i = 0; i < 5; i++) {
    const id = `maitre-v${i}`
    const suspending = suspensions.suspend(id, 'alice')
    const resuming = suspensions.resume(id)
    await Promise.all([suspending, resuming])
    t.equal(suspensions.get(id), undefined, `${id} is not left suspended`)
  }
  t.equal(suspensions.get('maitre-never'), undefined)
  await suspensions.resume('maitre-never') // nothing to resume: no error
})

t.test('an override clear right behind the override still being written clears it', async (t) => {
  const overrides = await Overrides.open(fileStores(t.testdir()), systemClock)
  const core = { cmd: 'x', cpus: 1, mem: 128, version: 'v1', 'run-as-user': 'alice', 'permitted-user': 'alice' }
  const setting = overrides.set('maitre-v1', core, { 'min-instances': 2 }, 'alice')
  const clearing = overrides.clear('maitre-v1')
  await Promise.all([setting, clearing])
  t.equal(overrides.get('maitre-v1'), undefined, 'no override left')
})
