/** One router per data directory, even when several start at once on a lock a crashed router left. */
import t from 'tap'
import { spawn } from 'node:child_process'
import { writeFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { lockDataDir } from '../../src/storage/lock.ts'

const LOCK = fileURLToPath(new URL('../../src/storage/lock.ts', import.meta.url))

/** A process that waits for `at` (epoch ms), tries the lock, says HELD or REFUSED, and holds it a while. */
function racer(dir: string, at: number): Promise<string> {
  const script = `import { lockDataDir } from ${JSON.stringify(LOCK)}
while (Date.now() < ${at}) {}
try { lockDataDir(${JSON.stringify(dir)}); console.log('HELD') } catch (e) { console.log('REFUSED ' + (e.code ?? e.message)) }
setTimeout(() => {}, 400)`
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()))
    child.once('error', reject)
    child.once('exit', () => resolve(out.trim()))
  })
}

t.test('three routers starting at once on a stale lock: exactly one takes it, the others refuse', async (t) => {
  for (let trial = 0; trial < 6; trial++) {
    const dir = t.testdir({ [`trial-${trial}`]: {} })
    const data = join(dir, `trial-${trial}`)
    writeFileSync(join(data, 'router.lock'), '999999999\n') // a pid no process has
    // All three past their start-up, spinning for the same moment.
    const at = Date.now() + 1500
    const outcomes = await Promise.all([0, 1, 2].map(() => racer(data, at)))
    t.equal(outcomes.filter((o) => o === 'HELD').length, 1, `trial ${trial}: one holder (${outcomes.join(', ')})`)
    t.equal(outcomes.filter((o) => o === 'REFUSED MAITRE_DATA_DIR_IN_USE').length, 2, 'two refusals naming the directory in use')
    t.same(readdirSync(data).filter((f) => f !== 'router.lock'), [], 'no draft or moved-aside file left behind')
  }
})

t.test('a live holder keeps the lock; once released it can be taken again', async (t) => {
  const dir = t.testdir()
  const release = lockDataDir(dir)
  t.throws(() => lockDataDir(dir), { code: 'MAITRE_DATA_DIR_IN_USE' }, 'a second router in this process is refused')
  release()
  const again = lockDataDir(dir)
  t.same(readdirSync(dir), ['router.lock'])
  again()
  t.same(readdirSync(dir), [], 'released: the file is gone')
})
