/** Starting an instance when the router is out of file descriptors fails that launch, and nothing else. */
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

const PROCESS_GROUP = fileURLToPath(new URL('../../src/backends/local/process-group.ts', import.meta.url))

t.test('a spawn that fails with EMFILE is a thrown error of the launch, never a crash of the router', async (t) => {
  const dir = t.testdir()
  // In a process of its own: it uses up every descriptor it may have.
  const script = join(dir, 'emfile.ts')
  writeFileSync(script, `
import { closeSync, openSync } from 'node:fs'
import { startProcessGroup } from ${JSON.stringify(PROCESS_GROUP)}
const fds: number[] = []
try { for (;;) fds.push(openSync('/dev/null', 'r')) } catch {}
// Two free: the sandbox's stdout and stderr open, the spawn's own pipes cannot.
closeSync(fds.pop() as number)
closeSync(fds.pop() as number)
let outcome = 'started'
try {
  startProcessGroup('/bin/true', ${JSON.stringify(dir)}, {})
} catch (err) {
  outcome = 'threw: ' + (err as Error).message
}
setTimeout(() => console.log(JSON.stringify({ outcome, alive: true })), 200)
`)
  const run = spawnSync(process.execPath, [script], { encoding: 'utf8', timeout: 20_000 })
  t.equal(run.status, 0, `the process lived on (stderr: ${run.stderr.slice(0, 300)})`)
  const report = JSON.parse(run.stdout.trim().split('\n').at(-1) ?? '{}') as { outcome?: string; alive?: boolean }
  t.match(report.outcome, /^threw: the instance process could not be started/, 'the launch failed with an error of its own')
  t.equal(report.alive, true)
})
