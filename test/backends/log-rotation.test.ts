/**
 * Instances' stdout and stderr kept under backend.local.maxLogBytes: what is rotated, what is
 * left alone, and the event loop given back while a thousand instances' files are looked at.
 */
import t from 'tap'
import { existsSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { rotateOversizedLogs, STATS_PER_TURN } from '../../src/backends/local/log-rotation.ts'
import { turnsDuring } from '../fixtures/turns.ts'

t.test('a file past the bound has its last bound’s worth copied to <file>.1 and is emptied; files at or under it, and files gone, are left alone', async (t) => {
  const dir = t.testdir({ big: 'x'.repeat(101), exact: 'y'.repeat(100), small: 'z' })
  const files = ['big', 'exact', 'small', 'gone'].map((name) => join(dir, name))
  t.same(await rotateOversizedLogs(files, 100), [join(dir, 'big')], 'only the file over the bound')
  t.equal(readFileSync(join(dir, 'big.1'), 'utf8'), 'x'.repeat(100), 'its last 100 bytes are kept in big.1')
  t.equal(statSync(join(dir, 'big')).size, 0, 'and the file itself starts again empty')
  t.equal(readFileSync(join(dir, 'exact'), 'utf8'), 'y'.repeat(100), 'a file exactly at the bound stays')
  t.notOk(existsSync(join(dir, 'exact.1')))
  t.notOk(existsSync(join(dir, 'gone.1')), 'a file gone meanwhile is skipped, not an error')

  // The next time past the bound, big.1 holds the newer output, not both.
  writeFileSync(join(dir, 'big'), `${'v'.repeat(5000)}${'w'.repeat(100)}`)
  t.same(await rotateOversizedLogs(files, 100), [join(dir, 'big')])
  t.equal(readFileSync(join(dir, 'big.1'), 'utf8'), 'w'.repeat(100), 'the previous rotation is replaced, and an instance that wrote 50 times the bound since leaves only the bound in big.1')
})

t.test('a file that cannot be read (a link looping on itself, which an instance can make of its own stdout) is skipped, and the files after it still rotated', async (t) => {
  const dir = t.testdir({ big: 'x'.repeat(101) })
  symlinkSync(join(dir, 'stdout'), join(dir, 'stdout'))
  t.same(await rotateOversizedLogs([join(dir, 'stdout'), join(dir, 'big')], 100), [join(dir, 'big')])
  t.equal(readFileSync(join(dir, 'big.1'), 'utf8'), 'x'.repeat(100))
})

t.test(`many files: the event loop is given back every ${STATS_PER_TURN} sizes read, not held for the whole round`, async (t) => {
  const dir = t.testdir(Object.fromEntries(Array.from({ length: 60 }, (_, i) => [`f${i}`, 'small'])))
  const files = Array.from({ length: 60 }, (_, i) => join(dir, `f${i}`))
  const turns = await turnsDuring(() => rotateOversizedLogs(files, 1000, 5, Infinity))
  t.ok(turns >= 11, `other work ran ${turns} times while 60 files were looked at five at a time`)
  t.equal(await turnsDuring(() => rotateOversizedLogs(files, 1000, 61, Infinity)), 0, 'with a budget above the files, and no time bound, one turn for all')
})
