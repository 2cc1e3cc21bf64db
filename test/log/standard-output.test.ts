/**
 * maitre's log on standard output, in a child process as the router runs it: what waits for a
 * reader that stalled is bounded, saying so never stops the router, and nothing waiting is lost
 * at exit.
 */
import t from 'tap'
import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { waitFor } from '../fixtures/router.ts'

const LOG = fileURLToPath(new URL('../../src/log.ts', import.meta.url))

interface Run {
  readonly lines: Record<string, unknown>[]
  readonly report: Record<string, unknown>
  readonly stderr: string
}

/**
 * Runs `body` in a child whose logger is createLogger('info'); the child reports through stderr
 * as JSON. With `stalled`, nothing is read of its standard output until the child reports.
 */
function run(body: string, stalled = false): Promise<Run> {
  const script = `
    import { pino } from 'pino'
    import { createLogger } from ${JSON.stringify(LOG)}
    const log = createLogger('info')
    const stream = log[pino.symbols.streamSym]
    const report = (data) => process.stderr.write(JSON.stringify(data) + '\\n')
    ${body}
  `
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { cwd: fileURLToPath(new URL('../..', import.meta.url)), stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    let err = ''
    const read = (): void => void child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()))
    if (!stalled) read()
    child.stderr.on('data', (chunk: Buffer) => {
      err += chunk.toString()
      if (stalled && err.includes('"reported"')) read()
    })
    child.once('error', reject)
    child.once('exit', (code) => {
      if (code !== 0) return reject(new Error(`child exited ${String(code)}: ${err}`))
      const lines = out.split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as Record<string, unknown>)
      const report = JSON.parse(err.trim().split('\n').at(-1) ?? '{}') as Record<string, unknown>
      resolve({ lines, report, stderr: err })
    })
  })
}

t.test('lines waiting at exit are written', async (t) => {
  const { lines } = await run(`
    for (let i = 0; i < 1000; i++) log.info({ i }, 'before exit')
    report({})
    process.exit(0)
  `)
  t.same(lines.map((l) => l['i']), [...Array(1000).keys()], 'every line, in order, the last logged just before exit included')
})

t.test('standard output not read: what waits is bounded (32 MB), the rest dropped and said once on stderr', async (t) => {
  const { lines, report, stderr } = await run(`
    const line = 'x'.repeat(1000)
    let dropped = 0
    stream.on('drop', () => (dropped += 1))
    for (let i = 0; i < 40_000; i++) log.info({ i, line })
    report({ reported: true, dropped })
  `, true)
  const dropped = report['dropped'] as number
  t.ok(dropped > 3000, `of 40 000 lines of 1 KB, ${dropped} were dropped rather than held`)
  t.equal(stderr.split('standard output is not being read').length - 1, 1, 'the operator is told once, on stderr')
  t.ok(lines.length >= 40_000 - dropped - 100 && lines.length <= 40_000 - dropped, `the ${lines.length} kept reached standard output once it was read`)
})

t.test('standard output and stderr on a terminal nobody reads: the router goes on', async (t) => {
  const beats = join(t.testdir(), 'beats')
  const script = `
    import { writeFileSync } from 'node:fs'
    import { pino } from 'pino'
    import { createLogger } from ${JSON.stringify(LOG)}
    const log = createLogger('info')
    const stream = log[pino.symbols.streamSym]
    let dropped = false
    stream.on('drop', () => (dropped = true))
    const line = 'x'.repeat(1000)
    // A router at work: lines faster than anyone reads them, and an event loop that must keep turning.
    const busy = setInterval(() => { for (let i = 0; i < 200; i++) log.info({ line }) }, 1)
    let n = 0
    const beat = setInterval(() => writeFileSync(${JSON.stringify(beats)}, JSON.stringify({ n: ++n, dropped, pid: process.pid })), 20)
  `
  // A terminal (util-linux's script makes one) whose output nobody reads: script copies it to a
  // pipe this test leaves unread, so the terminal fills. Node writes to a terminal synchronously.
  const child = spawn('script', ['-qfec', `exec ${JSON.stringify(process.execPath)} --input-type=module -e "$MAITRE_SCRIPT"`, '/dev/null'], {
    cwd: fileURLToPath(new URL('../..', import.meta.url)),
    stdio: ['pipe', 'pipe', 'inherit'],
    env: { ...process.env, MAITRE_SCRIPT: script },
  })
  let pid: number | undefined
  const read = (): { n: number; dropped: boolean; pid: number } | undefined => {
    try {
      const beat = JSON.parse(readFileSync(beats, 'utf8')) as { n: number; dropped: boolean; pid: number }
      pid = beat.pid
      return beat
    } catch {
      return undefined
    }
  }
  t.teardown(() => {
    // The child itself too: one frozen in a terminal write may outlive its terminal.
    if (pid !== undefined) {
      try {
        process.kill(pid, 'SIGKILL')
      } catch {}
    }
    if (child.exitCode === null) child.kill('SIGKILL')
  })
  const atDrop = await waitFor('lines to be dropped', () => (read()?.dropped === true ? read() : undefined), 15_000)
  const later = await waitFor('the event loop to keep turning after the drop', () => ((read()?.n ?? 0) >= atDrop.n + 25 ? read() : undefined), 5000).catch(() => read())
  t.ok((later?.n ?? 0) >= atDrop.n + 25, `it beat ${(later?.n ?? 0) - atDrop.n} times in the seconds after it dropped lines`)
  // (Its exit would write the 32 MB waiting first, at the pace of pino's retries: not this test's business.)
  child.stdout.resume()
  child.kill('SIGKILL')
  await new Promise((resolve) => child.once('exit', resolve))
})
