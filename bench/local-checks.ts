/**
 * node bench/local-checks.ts [N]
 *
 * What the local backend's per-second checks cost with N instances (default 100): the memory
 * check (src/backends/local/memory.ts) walking every instance's process tree against the shipped
 * choice (the first tree walked, the rest from one scan of the host when that reads fewer files),
 * and the log-size check (log-rotation.ts) through fs/promises against the shipped synchronous
 * stats. Each instance is what the local backend starts: a bash launcher and a Node process.
 * Prints the CPU of each, ROUNDS rounds (3).
 */
import { spawn } from 'node:child_process'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { rotateOversizedLogs } from '../src/backends/local/log-rotation.ts'
import { listProcesses, scanTrees, treeResidentBytes, walkTrees } from '../src/backends/local/memory.ts'
import { ReadBudget } from '../src/backends/local/read-budget.ts'

const N = Number(process.argv[2] ?? 100)
const ROUNDS = Number(process.env.ROUNDS ?? 3)

async function cpuMs(work: () => Promise<unknown>): Promise<number> {
  const before = process.cpuUsage()
  await work()
  const spent = process.cpuUsage(before)
  return (spent.user + spent.system) / 1000
}

const dir = mkdtempSync(join(tmpdir(), 'maitre-local-checks-'))
const files: string[] = []
for (let i = 0; i < N; i++) {
  mkdirSync(join(dir, String(i)))
  for (const name of ['stdout', 'stderr']) {
    const file = join(dir, String(i), name)
    writeFileSync(file, 'a line\n')
    files.push(file)
  }
}
const launchers = Array.from({ length: N }, () => spawn('/bin/bash', ['-c', `${process.execPath} -e "setInterval(() => {}, 1000)"; true`], { detached: true, stdio: 'ignore' }))
const leaders = launchers.map((l) => l.pid as number)
try {
  // Every launcher with its Node child up and past its start-up threads.
  for (const deadline = Date.now() + 60_000; ; ) {
    const usage = await walkTrees(leaders, new ReadBudget(256))
    if ([...usage.values()].every((u) => u.processes.length === 2 && u.processes.every(([, bytes]) => bytes > 0))) break
    if (Date.now() > deadline) throw new Error('the instances did not start within 60 s')
    await new Promise((resolve) => setTimeout(resolve, 250))
  }
  await new Promise((resolve) => setTimeout(resolve, 1000))
  console.log(`${N} instances (bash launcher + Node), ${(await listProcesses(new ReadBudget(1 << 30)))?.length} processes on the host`)
  for (let round = 1; round <= ROUNDS; round++) {
    const budget = new ReadBudget(256)
    const walk = await cpuMs(() => walkTrees(leaders, budget))
    const scanBudget = new ReadBudget(256)
    const scan = await cpuMs(async () => scanTrees(leaders, (await listProcesses(scanBudget)) ?? [], scanBudget))
    let way = ''
    const chosen = await cpuMs(() => treeResidentBytes(leaders, { observe: (w) => (way = w) }))
    const promises = await cpuMs(() => Promise.all(files.map(async (file) => (await stat(file).catch(() => undefined))?.size ?? 0)))
    const sync = await cpuMs(() => rotateOversizedLogs(files, 1 << 20))
    console.log(`round ${round}: memory walk ${walk.toFixed(1)} ms (${budget.reads} files), scan ${scan.toFixed(1)} ms (${scanBudget.reads} files), shipped ${chosen.toFixed(1)} ms (${way}); log sizes fs/promises ${promises.toFixed(1)} ms, shipped ${sync.toFixed(1)} ms (${files.length} files)`)
  }
} finally {
  for (const pid of leaders) {
    try {
      process.kill(-pid, 'SIGKILL')
    } catch {
      // gone
    }
  }
  rmSync(dir, { recursive: true, force: true })
}
