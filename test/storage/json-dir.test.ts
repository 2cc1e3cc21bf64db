/** The JSON document store: a failed write changes nothing, temporaries never collide with keys, the sweep removes only its own. */
import t from 'tap'
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { JsonDirectory } from '../../src/storage/json-dir.ts'

t.test('a key that looks like a temporary file is a key like any other, across restarts', async (t) => {
  const dir = t.testdir()
  const store = JsonDirectory.open<{ v: number }>(dir, 'thing')
  await store.put('web.json.tmp-123-deadbeef', { v: 1 })
  await store.put('a.tmp-b', { v: 2 })
  const reopened = JsonDirectory.open<{ v: number }>(dir, 'thing')
  t.same(reopened.get('web.json.tmp-123-deadbeef'), { v: 1 })
  t.same(reopened.get('a.tmp-b'), { v: 2 })
})

t.test('the start-up sweep removes only its own temporaries', async (t) => {
  const dir = t.testdir({
    '.tmp': { 'k.json.123-abcd0123.tmp': '{"half": ' },
    'old.json.tmp-42-0123abcd': '{"interrupted": ',
    'kept.json': '{"v": 3}',
    'notes.txt': 'an operator’s file',
  })
  const store = JsonDirectory.open<{ v: number }>(dir, 'thing')
  t.same(store.get('kept'), { v: 3 })
  t.same(readdirSync(join(dir, '.tmp')), [], 'interrupted writes of this version are gone')
  t.notOk(existsSync(join(dir, 'old.json.tmp-42-0123abcd')), 'and those of the previous layout')
  t.ok(existsSync(join(dir, 'notes.txt')), 'anything else is left alone')
})

t.test('a write that fails leaves memory and disk on the previous version, and no temporary file', async (t) => {
  const dir = t.testdir()
  const store = JsonDirectory.open<{ v: number }>(dir, 'thing')
  await store.put('k', { v: 1 })
  await store.delete('k')
  // The rename onto the document cannot happen: its place is taken by a non-empty directory.
  mkdirSync(join(dir, 'k.json', 'blocker'), { recursive: true })
  await t.rejects(store.put('k', { v: 2 }), { code: 'MAITRE_STORE_WRITE', status: 503 })
  t.equal(store.get('k'), undefined, 'memory still says what the disk says')
  t.same(readdirSync(join(dir, '.tmp')), [], 'the partial temporary file was removed')
})

t.test('a store that cannot write at all keeps serving what it has', async (t) => {
  const dir = t.testdir()
  const store = JsonDirectory.open<{ v: number }>(dir, 'thing')
  await store.put('k', { v: 5 })
  // Its temporary directory is replaced by a file: no write can even start (as on a read-only disk).
  rmSync(join(dir, '.tmp'), { recursive: true })
  writeFileSync(join(dir, '.tmp'), 'in the way')
  await t.rejects(store.put('k', { v: 6 }), { code: 'MAITRE_STORE_WRITE' })
  t.same(store.get('k'), { v: 5 }, 'the previous version stays in memory')
  t.same(JSON.parse(readFileSync(join(dir, 'k.json'), 'utf8')), { v: 5 }, 'and on disk')
})

t.test('a key too long for the file system is refused, and nothing changes', async (t) => {
  const dir = t.testdir()
  const store = JsonDirectory.open<{ v: number }>(dir, 'thing')
  await t.rejects(store.put('k'.repeat(300), { v: 1 }), { code: 'MAITRE_STORE_WRITE', message: /ENAMETOOLONG/ })
  t.equal(store.size, 0)
  t.same(readdirSync(join(dir, '.tmp')), [])
})

t.test('a change made whose directory then cannot be synced shows, is what callers are told was done, and the operator hears it may not be durable', async (t) => {
  const dir = t.testdir()
  let failSync = false
  const told: string[] = []
  const store = JsonDirectory.open<{ v: number }>(dir, 'thing', undefined, {
    syncDirectory: async () => {
      if (failSync) throw Object.assign(new Error('EIO: i/o error, fsync'), { code: 'EIO' })
    },
    onNotDurable: ({ store, key, verb, err }) => told.push(`${store} ${key} ${verb} ${(err as NodeJS.ErrnoException).code}`),
  })
  await store.put('k', { v: 1 })
  failSync = true
  await store.put('k', { v: 2 })
  t.same(store.get('k'), { v: 2 }, 'memory says what the disk says')
  t.same(JSON.parse(readFileSync(join(dir, 'k.json'), 'utf8')), { v: 2 }, 'the new version is on disk')
  await store.delete('k')
  t.equal(store.get('k'), undefined, 'a delete likewise')
  t.notOk(existsSync(join(dir, 'k.json')))
  t.same(told, ['thing k written EIO', 'thing k deleted EIO'], 'the operator is told of each')
  failSync = false
  await store.put('k', { v: 3 })
  t.equal(told.length, 2, 'and of nothing once the disk syncs again')
})
