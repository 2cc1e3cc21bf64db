/**
 * The local backend's memory check reads each instance's whole process tree from /proc, by a
 * walk of its own tree or by a scan of every process on the host, whichever reads fewer files:
 * every descendant counted, a process gone meanwhile counted as nothing, and the event loop given
 * back every so many files read, however the files are spread over instances and threads.
 */
import t, { type Test } from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { listProcesses, READS_PER_TURN, SAMPLE_TREES, scanTrees, treeResidentBytes, walkTrees, type TreeUsage } from '../../src/backends/local/memory.ts'
import { ReadBudget } from '../../src/backends/local/read-budget.ts'
import { waitFor } from '../fixtures/router.ts'
import { turnsDuring } from '../fixtures/turns.ts'

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
const commOf = (pid: number): string => {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'latin1').trim()
  } catch {
    return ''
  }
}
const rssOf = (pid: number): number => Number(readFileSync(`/proc/${pid}/statm`, 'latin1').split(' ')[1]) * 4096

/** The two ways of reading the trees, each on its own budget (by count only: the time bound is read-budget.test.ts's). */
const WAYS: Record<'walk' | 'scan', (leaders: number[], readsPerTurn?: number) => Promise<Map<number, TreeUsage>>> = {
  walk: (leaders, readsPerTurn = READS_PER_TURN) => walkTrees(leaders, new ReadBudget(readsPerTurn, { maxTurnMs: Infinity })),
  scan: async (leaders, readsPerTurn = READS_PER_TURN) => {
    const budget = new ReadBudget(readsPerTurn, { maxTurnMs: Infinity })
    return scanTrees(leaders, (await listProcesses(budget)) ?? [], budget)
  },
}

for (const [way, read] of Object.entries(WAYS)) t.test(`${way}: a tree is counted whole: the leader, its children and their children`, async (t) => {
  // sh → (subshell → sleep) and sh → sleep: four processes, one of them a grandchild.
  const sh = leader(t, '(sleep 60; true) & sleep 60 & wait')
  const pid = sh.pid as number
  // Settled: four processes, the same two readings in a row (a fork changes its RSS when it
  // execs), the leaves both sleep.
  let last = ''
  const usage = await waitFor('the tree of four, settled', async () => {
    const found = (await read([pid])).get(pid)
    const reading = JSON.stringify(found)
    const settled = found?.processes.length === 4 && reading === last && found.processes.filter(([p]) => commOf(p) === 'sleep').length === 2
    last = reading
    return settled ? found : undefined
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
  // Bytes, not pages: what /proc gives for each now, within a few pages (sh and sleep idle).
  for (const [p, bytes] of usage.processes) t.ok(bytes % 4096 === 0 && Math.abs(rssOf(p) - bytes) < 16 * 4096, `process ${p}: ${bytes} bytes, /proc now says ${rssOf(p)}`)
})

for (const [way, read] of Object.entries(WAYS)) t.test(`${way}: a leader that is gone counts as nothing, and the others are still read`, async (t) => {
  const gone = spawn('/bin/true')
  await new Promise((resolve) => gone.once('exit', resolve))
  const alive = leader(t, 'exec sleep 60')
  const usage = await read([gone.pid as number, alive.pid as number])
  t.same(usage.get(gone.pid as number), { bytes: 0, processes: [[gone.pid, 0]] })
  t.ok((usage.get(alive.pid as number)?.bytes ?? 0) > 0, 'the live one is read')
})

t.test(`walk, many instances: the event loop is given back every ${READS_PER_TURN} files read, not held for the whole check`, async (t) => {
  // Each sleep costs three reads: its statm, its task directory, its one thread's children.
  const leaders = Array.from({ length: 40 }, () => leader(t, 'exec sleep 60'))
  const pids = leaders.map((l) => l.pid as number)
  let usage = new Map<number, { bytes: number }>()
  const turns = await turnsDuring(async () => (usage = await WAYS.walk(pids, 6)))
  t.equal(usage.size, leaders.length, 'every leader read')
  t.ok([...usage.values()].every((u) => u.bytes > 0), 'each one alive and counted')
  t.ok(turns >= 19, `other work ran ${turns} times while it read 120 files six at a time`)
  t.equal(await turnsDuring(() => WAYS.walk(pids, 121)), 0, 'with a budget above the reads, it reads them all in one turn')
})

t.test('walk: one process with many threads is read a few files at a time too: the budget counts files, not processes', async (t) => {
  // A Node process: a main thread and V8's and libuv's helpers, each with its own children file.
  const node = leader(t, `exec ${process.execPath} -e "setInterval(() => {}, 1000)"`)
  const pid = node.pid as number
  const threads = await waitFor('its threads', () => {
    try {
      const count = readdirSync(`/proc/${pid}/task`).length
      return count >= 5 ? count : undefined
    } catch {
      return undefined
    }
  })
  const turns = await turnsDuring(() => WAYS.walk([pid], 2))
  // statm, the task directory and one file per thread, two at a time.
  t.ok(turns >= Math.floor((2 + threads) / 2) - 1, `other work ran ${turns} times while it read the ${threads} threads of one process`)
})

t.test('scan: one stat per process on the host, a few at a time', async (t) => {
  const sleeper = leader(t, 'exec sleep 60')
  const budget = new ReadBudget(8)
  const host = (await listProcesses(budget)) ?? []
  const turns = await turnsDuring(() => scanTrees([sleeper.pid as number], host, budget))
  t.ok(turns >= Math.floor(host.length / 8) - 1, `other work ran ${turns} times while it read the ${host.length} processes of the host eight at a time`)
})

/** A Node process doing nothing: a dozen threads, so ~14 files to walk. */
const nodeLeader = (t: Test): ChildProcess => leader(t, `exec ${process.execPath} -e "setInterval(() => {}, 1000)"`)
const threadsOf = (pid: number): number => {
  try {
    return readdirSync(`/proc/${pid}/task`).length
  } catch {
    return 0
  }
}
const shape = (usage: Map<number, TreeUsage>): unknown => [...usage].map(([leader, u]) => [leader, u.processes.map(([p]) => p)])

t.test(`a sample of ${SAMPLE_TREES} trees is walked; the rest are read from one scan when the sample says it reads fewer files`, async (t) => {
  const nodes = Array.from({ length: 12 }, () => nodeLeader(t))
  const pids = nodes.map((n) => n.pid as number)
  await waitFor('twelve Node processes with their threads', () => (pids.every((p) => threadsOf(p) >= 5) ? true : undefined))
  let how: [string, number] | undefined
  // The host as twelve processes: four trees left after the sample, ~14 files each to walk, against 12 stats and 4 statms.
  const usage = await treeResidentBytes(pids, { hostProcesses: async () => pids, observe: (way, reads) => (how = [way, reads]) })
  t.equal(how?.[0], 'scan', `many-threaded instances on a small host: the rest scanned (${how?.[1]} files in all)`)
  t.same(shape(usage), pids.map((p) => [p, [p]]), 'each leader counted alone, in the order given')
  t.ok([...usage.values()].every((u) => u.bytes > 0), 'each with its resident bytes')
  t.same(shape(await WAYS.walk(pids)), shape(usage), 'the trees a walk finds')
})

t.test('one many-threaded instance among single-threaded ones does not make the check scan a large host', async (t) => {
  const node = nodeLeader(t)
  const sleepers = Array.from({ length: 15 }, () => leader(t, 'exec sleep 60'))
  const pids = [node.pid as number, ...sleepers.map((s) => s.pid as number)]
  await waitFor('the Node process with its threads, and the sleepers', () => (threadsOf(pids[0] as number) >= 5 && pids.slice(1).every((p) => commOf(p) === 'sleep') ? true : undefined))
  // A host of 46 processes (30 of them pids above the kernel's largest, which never exist):
  // judged by the Node tree alone (~10 files), the 15 others would cost ~150 files to walk
  // against ~90 to scan; the sample of eight (~4 files a tree) says walk.
  const host = [...pids, ...Array.from({ length: 30 }, (_, i) => 4_194_400 + i)]
  let how: [string, number] | undefined
  const usage = await treeResidentBytes(pids, { hostProcesses: async () => host, observe: (way, reads) => (how = [way, reads]) })
  t.equal(how?.[0], 'walk', `walked (${how?.[1]} files), not a scan of the host's every process`)
  t.same(shape(usage), pids.map((p) => [p, [p]]))
})

t.test('no /proc listing: every tree is walked', async (t) => {
  const sleepers = Array.from({ length: 12 }, () => nodeLeader(t))
  const pids = sleepers.map((s) => s.pid as number)
  await waitFor('twelve Node processes with their threads', () => (pids.every((p) => threadsOf(p) >= 5) ? true : undefined))
  let way: string | undefined
  const usage = await treeResidentBytes(pids, { hostProcesses: async () => undefined, observe: (w) => (way = w) })
  t.equal(way, 'walk')
  t.equal(usage.size, 12)
  t.ok([...usage.values()].every((u) => u.bytes > 0))
})
