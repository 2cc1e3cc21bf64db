/**
 * Sandboxes go whatever their instance left in them: a directory it made read-only (Go's module
 * cache is) stops a plain recursive removal with EACCES for any router not running as root. The
 * removal runs as an unprivileged user (nobody, through setpriv, when the tests run as root).
 */
import t from 'tap'
import { execFileSync } from 'node:child_process'
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

const NOBODY = 65534
const MODULE = fileURLToPath(new URL('../../src/backends/local/remove-tree.ts', import.meta.url))

/** Runs `script` (an ES module body) as an unprivileged user; returns what it printed. */
function asUnprivileged(script: string): string {
  const args = ['--input-type=module', '-e', script]
  // Nothing of the test runner's (its NODE_OPTIONS would have the child write where nobody may).
  const options = { encoding: 'utf8' as const, env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin' } }
  if (process.getuid?.() !== 0) return execFileSync(process.execPath, args, options)
  return execFileSync('setpriv', [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', process.execPath, ...args], options)
}

t.test('a sandbox holding read-only directories is removed whole, and nothing outside it is touched', async (t) => {
  const parent = mkdtempSync(join(tmpdir(), 'maitre-remove-tree-'))
  t.teardown(() => {
    execFileSync('chmod', ['-R', 'u+rwx', parent])
    rmSync(parent, { recursive: true, force: true })
  })
  const outside = join(parent, 'outside')
  mkdirSync(outside)
  writeFileSync(join(outside, 'kept'), 'x')
  if (process.getuid?.() === 0) {
    chownSync(parent, NOBODY, NOBODY)
    chmodSync(parent, 0o755)
  }
  chmodSync(outside, 0o555)
  const sandbox = join(parent, 'sandbox')
  const made = asUnprivileged(`
    import { mkdirSync, writeFileSync, chmodSync, symlinkSync, rmSync } from 'node:fs'
    import { join } from 'node:path'
    const sandbox = ${JSON.stringify(sandbox)}
    const deep = join(sandbox, 'go', 'pkg', 'mod', 'example.com@v1')
    mkdirSync(deep, { recursive: true })
    writeFileSync(join(deep, 'go.mod'), 'module example.com')
    symlinkSync(${JSON.stringify(outside)}, join(deep, 'link-out'))
    for (const dir of [deep, join(sandbox, 'go', 'pkg', 'mod'), join(sandbox, 'go', 'pkg')]) chmodSync(dir, 0o555)
    let plain = 'removed'
    try { rmSync(sandbox, { recursive: true, force: true }) } catch (err) { plain = err.code }
    console.log(plain)
  `).trim()
  t.equal(made, 'EACCES', 'a plain recursive removal fails on it')
  t.ok(existsSync(sandbox))
  const removed = asUnprivileged(`
    import { removeTree } from ${JSON.stringify(MODULE)}
    await removeTree(${JSON.stringify(sandbox)})
    console.log('done')
  `).trim()
  t.equal(removed, 'done')
  t.notOk(existsSync(sandbox), 'the sandbox is gone')
  t.ok(existsSync(join(outside, 'kept')), 'what a link in it pointed at is still there')
  t.equal(statSync(outside).mode & 0o777, 0o555, 'and was not made writable')
})
