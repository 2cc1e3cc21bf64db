/**
 * The local backend's memory check reads each instance's whole process tree from /proc: every
 * descendant counted, a process gone meanwhile counted as nothing, and the event loop given back
 * while it reads many.
 */
import t, { type Test } from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { PROCESSES_PER_TURN, treeResidentBytes } from '../../src/backends/local/memory.ts'
import { waitFor } from '../fixtures/router.ts'

function leader(t: Test, script: string): ChildProcess {
  const child = spawn('/bin/sh', ['-c', script], { detached: true, stdio: 'ignore' })
  t.teardown(() => {
    try {
      process.kill(-(child.pid as number), 'SIGKILL')
    } catch {
      // gone
    }
  })
  return child
}

const parentOf = (pid: number): number => {
  const stat = readFileSync(`/proc/${pid}/stat`, 'latin1')
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
}
const rssOf = (pid: number): number => Number(readFileSync(`/proc/${pid}/statm`, 'latin1').split(' ')[1]) * 4096

t.test('a tree is counted whole: the leader, its children and their children', async (t) => {
  // sh → (subshell → sleep) and sh → sleep: four processes, one of them a grandchild.
  const sh = leader(t, '(sleep 60; true) & sleep 60 & wait')
  const pid = sh.pid as number
  const usage = await waitFor('four processes in the tree', async () => {
    const found = (await treeResidentBytes([pid])).get(pid)
    return found?.processes.length === 4 ? found : undefined
  })
  const pids = usage.processes.map(([p]) => p)
  t.equal(pids[0], pid, 'the leader first')
  t.equal(new Set(pids).size, 4, 'each process once')
  for (const p of pids.slice(1)) {
    const up = parentOf(p)
    t.ok(up === pid || pids.includes(up), `process ${p} descends from the leader (its parent is ${up})`)
  }
  t.ok(pids.some((p) => parentOf(p) !== pid), 'a grandchild is among them')
  for (const [p, bytes] of usage.processes) t.ok(bytes > 0, `process ${p} has its resident bytes (${bytes})`)
  t.equal(usage.bytes, usage.processes.reduce((sum, [, bytes]) => sum + bytes, 0), 'the total is the sum of its processes')
  // Bytes, not pages: a whole number of pages, the size /proc gives for it now, within a few pages
  // (a process just started may still be touching pages).
  for (const [p, bytes] of usage.processes) t.ok(bytes % 4096 === 0 && Math.abs(rssOf(p) - bytes) < 64 * 4096, `process ${p}: ${bytes} bytes, /proc now says ${rssOf(p)}`)
})

t.test('a leader that is gone counts as nothing, and the others are still read', async (t) => {
  const gone = spawn('/bin/true')
  await new Promise((resolve) => gone.once('exit', resolve))
  const alive = leader(t, 'exec sleep 60')
  const usage = await treeResidentBytes([gone.pid as number, alive.pid as number])
  t.same(usage.get(gone.pid as number), { bytes: 0, processes: [[gone.pid, 0]] })
  t.ok((usage.get(alive.pid as number)?.bytes ?? 0) > 0, 'the live one is read')
})

t.test(`many instances: the event loop is given back every ${PROCESSES_PER_TURN} processes, not held for the whole check`, async (t) => {
  const leaders = Array.from({ length: PROCESSES_PER_TURN + 8 }, () => leader(t, 'exec sleep 60'))
  let turns = 0
  let counting = true
  const count = (): void => {
    if (!counting) return
    turns++
    setImmediate(count)
  }
  setImmediate(count)
  const usage = await treeResidentBytes(leaders.map((l) => l.pid as number))
  counting = false
  t.equal(usage.size, leaders.length, 'every leader read')
  t.ok([...usage.values()].every((u) => u.bytes > 0), 'each one alive and counted')
  t.ok(turns >= 1, `other work ran ${turns} times while it read ${leaders.length} processes`)
  // With every process in one turn, nothing else runs until the check is done.
  turns = 0
  counting = true
  setImmediate(count)
  await treeResidentBytes(leaders.map((l) => l.pid as number), leaders.length + 1)
  counting = false
  t.equal(turns, 0, 'with a budget above the count, it reads them all in one turn')
})
