/** One router per data directory, even when several start at once on a lock a crashed router left. */
import t from 'tap'
import { spawn } from 'node:child_process'
import { writeFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { lockDataDir } from '../../src/storage/lock.ts'

const LOCK = fileURLToPath(new URL('../../src/storage/lock.ts', import.meta.url))

/**
 * Processes that wait for `at` (epoch ms), try the lock, say HELD or REFUSED, and live on (a
 * holder keeps its lock) until every one has answered: a holder that died first would make its
 * lock stale, and a late racer would then rightly take it over.
 */
async function race(dir: string, at: number, count: number): Promise<string[]> {
  // Asleep until just before the moment, then spinning for it (all of it spun, three processes
  // on two cores burnt 20 s of CPU per run of this file).
  const script = `import { lockDataDir } from ${JSON.stringify(LOCK)}
await new Promise((resolve) => setTimeout(resolve, Math.max(0, ${at} - Date.now() - 100)))
while (Date.now() < ${at}) {}
try { lockDataDir(${JSON.stringify(dir)}); console.log('HELD') } catch (e) { console.log('REFUSED ' + (e.code ?? e.message)) }
process.stdin.resume()
process.stdin.on('end', () => process.exit(0))`
  const children = Array.from({ length: count }, () => spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['pipe', 'pipe', 'inherit'] }))
  const answers = await Promise.all(children.map((child) => new Promise<string>((resolve, reject) => {
    let out = ''
    child.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString()
      if (out.includes('\n')) resolve(out.trim())
    })
    child.once('error', reject)
    child.once('exit', () => resolve(out.trim()))
  })))
  await Promise.all(children.map((child) => new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve(undefined)
    child.once('exit', resolve)
    child.stdin.end()
  })))
  return answers
}

t.test('three routers starting at once on a stale lock: exactly one takes it, the others refuse (no two ever hold it)', async (t) => {
  for (let trial = 0; trial < 6; trial++) {
    const dir = t.testdir({ [`trial-${trial}`]: {} })
    const data = join(dir, `trial-${trial}`)
    writeFileSync(join(data, 'router.lock'), '999999999\n') // a pid no process has
    // All three past their start-up, spinning for the same moment.
    const at = Date.now() + 1500
    const outcomes = await race(data, at, 3)
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
  // A release removes only its own lock: one that is another router's by then stays.
  const third = lockDataDir(dir)
  writeFileSync(join(dir, 'router.lock'), '1 another-routers-nonce\n')
  third()
  t.same(readdirSync(dir), ['router.lock'], 'another router’s lock is left in place')
})
