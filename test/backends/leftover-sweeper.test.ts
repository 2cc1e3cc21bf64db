/**
 * What escaped ended instances is killed by sweeps of /proc, one scan for every instance that
 * ended while the scan before it ran: a router stopping hundreds of instances reads the host's
 * processes a few times, not once per instance, and no sweep is answered from a scan older than it.
 */
import t from 'tap'
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { LocalBackend } from '../../src/backends/local/local-backend.ts'
import { systemClock } from '../../src/clock.ts'
import { DEFAULTS } from '../../src/config.ts'
import { silentLogger } from '../../src/log.ts'
import { LeftoverSweeper, SandboxScanner } from '../../src/backends/local/leftovers.ts'
import { processAlive, waitFor } from '../fixtures/router.ts'

/** A scan the test answers by hand: each call waits for `answer`. */
function manualScan(): { scan: (roots: readonly string[]) => Promise<ReadonlyMap<number, string>>; calls: (readonly string[])[]; answer: (found: ReadonlyMap<number, string> | Error) => void } {
  const calls: (readonly string[])[] = []
  const pending: ((found: ReadonlyMap<number, string> | Error) => void)[] = []
  return {
    calls,
    scan: (roots) => {
      calls.push(roots)
      return new Promise((resolve, reject) => pending.push((found) => (found instanceof Error ? reject(found) : resolve(found))))
    },
    answer: (found) => pending.shift()?.(found),
  }
}

// Pids above the kernel's largest never exist: SIGKILL finds nothing (ESRCH), and their group reads as unknown.
const PID = 4_194_400

t.test('fifty instances ending at once: one scan, each sweep answered with what lies under its own sandbox', async (t) => {
  const manual = manualScan()
  const sweeper = new LeftoverSweeper(manual.scan)
  const roots = Array.from({ length: 50 }, (_, i) => `/w/svc/${i}`)
  const results = roots.map((root) => sweeper.sweep(root))
  t.same(manual.calls, [], 'the scan starts a turn later, so the sweeps asked together share it')
  await waitFor('the scan', () => (manual.calls.length === 1 ? true : undefined))
  t.same(manual.calls[0], roots, 'one scan for the fifty')
  manual.answer(new Map([[PID, '/w/svc/0'], [PID + 1, '/w/svc/7/tmp'], [PID + 2, '/w/svc/49'], [PID + 3, '/elsewhere']]))
  const found = await Promise.all(results)
  t.same(found[0], [PID])
  t.same(found[7], [PID + 1], 'a process in a folder of the sandbox belongs to it')
  t.same(found[49], [PID + 2])
  t.same(found.filter((pids) => pids.length > 0).length, 3, 'the rest found nothing')
  t.equal(sweeper.scans, 1)
})

t.test('a sweep asked while a scan runs is answered by the next scan, never by the one that may have passed its processes', async (t) => {
  const manual = manualScan()
  const sweeper = new LeftoverSweeper(manual.scan)
  const first = sweeper.sweep('/w/a')
  await waitFor('the first scan', () => (manual.calls.length === 1 ? true : undefined))
  const late = sweeper.sweep('/w/b')
  let lateAnswer: number[] | undefined
  void late.then((pids) => (lateAnswer = pids))
  // The running scan saw a process of /w/b, but it began before /w/b's sweep was asked for.
  manual.answer(new Map([[PID, '/w/a'], [PID + 1, '/w/b']]))
  t.same(await first, [PID])
  t.equal(lateAnswer, undefined, 'not answered from the older scan')
  await waitFor('the next scan', () => (manual.calls.length === 2 ? true : undefined))
  t.same(manual.calls[1], ['/w/b'])
  manual.answer(new Map([[PID + 5, '/w/b']]))
  t.same(await late, [PID + 5], 'answered from the scan that began after it was asked')
})

t.test('a failed scan fails only the sweeps it was for: one waiting for the next scan is answered by it', async (t) => {
  const manual = manualScan()
  const sweeper = new LeftoverSweeper(manual.scan)
  const failing = sweeper.sweep('/w/a')
  await waitFor('the first scan', () => (manual.calls.length === 1 ? true : undefined))
  const waiting = sweeper.sweep('/w/b')
  manual.answer(new Error('EMFILE'))
  await t.rejects(failing, /EMFILE/)
  await waitFor('the next scan', () => (manual.calls.length === 2 ? true : undefined))
  manual.answer(new Map([[PID, '/w/b']]))
  t.same(await waiting, [PID])
  t.equal(sweeper.scans, 2)
})

t.test('a scan that throws at once fails its sweeps, and the next sweep scans again', async (t) => {
  let calls = 0
  const sweeper = new LeftoverSweeper((roots) => {
    calls++
    if (calls === 1) throw new Error('no /proc')
    return Promise.resolve(new Map([[PID, roots[0] as string]]))
  })
  await t.rejects(sweeper.sweep('/w/a'), /no \/proc/)
  t.same(await sweeper.sweep('/w/b'), [PID], 'not stuck behind the failure')
})

t.test('on real processes: escaped processes of two instances killed by one scan, the members of a group being killed spared', async (t) => {
  const root = t.testdir({ a: {}, b: {} })
  const escaped = (sandbox: string) => spawn('sleep', ['60'], { detached: true, stdio: 'ignore', env: { ...process.env, WAITER_SANDBOX: sandbox } })
  const a = escaped(join(root, 'a'))
  const b = escaped(join(root, 'b'))
  const spared = escaped(join(root, 'b'))
  t.teardown(() => {
    for (const child of [a, b, spared]) {
      try {
        process.kill(child.pid as number, 'SIGKILL')
      } catch {
        // gone
      }
    }
  })
  const sweeper = new LeftoverSweeper()
  const [fromA, fromB] = await Promise.all([sweeper.sweep(join(root, 'a')), sweeper.sweep(join(root, 'b'), spared.pid)])
  t.same(fromA, [a.pid])
  t.same(fromB, [b.pid], 'the process whose group is being killed as a whole is left to that')
  t.equal(sweeper.scans, 1, 'asked in the same turn, both answered by one scan')
  await waitFor('both killed', () => (!processAlive(a.pid as number) && !processAlive(b.pid as number) ? true : undefined))
  t.ok(processAlive(spared.pid as number), 'the spared one lives')
})

t.test('a read that does not answer (a process stuck in the kernel) is given up, the scan goes on, and that process is skipped until the read answers', async (t) => {
  const reads: number[] = []
  let unstick: ((sandbox: string | undefined) => void) | undefined
  const givenUp: (number | string)[] = []
  const scanner = new SandboxScanner({
    list: async () => [100, 101, 102],
    read: (pid) => {
      reads.push(pid)
      if (pid === 101 && unstick === undefined) return new Promise<string | undefined>((resolve) => (unstick = resolve))
      return Promise.resolve(`/w/${pid}`)
    },
    timeoutMs: 50,
    onGiveUp: (pid) => givenUp.push(pid),
  })
  const first = await scanner.scan(['/w'])
  t.same([...first], [[100, '/w/100'], [102, '/w/102']], 'the others are found')
  t.same([...scanner.stuck], [101])
  t.same(givenUp, [101], 'told, once')
  reads.length = 0
  t.same([...(await scanner.scan(['/w']))].map(([pid]) => pid), [100, 102])
  t.same(reads, [100, 102], 'not read again while its read waits: no second thread of the pool held by it')
  unstick?.('/w/101')
  await new Promise((resolve) => setImmediate(resolve))
  t.same([...scanner.stuck], [], 'its read answered at last: its thread is free')
  t.same([...first], [[100, '/w/100'], [102, '/w/102']], 'the answer already given is not changed by it')
  reads.length = 0
  t.same([...(await scanner.scan(['/w']))].map(([pid]) => pid), [100, 101, 102], 'read again, and found')
})

t.test('reads that answer slowly but steadily are not given up: the bound is on a batch in which nothing answers', async (t) => {
  const pids = Array.from({ length: 10 }, (_, i) => 200 + i)
  const scanner = new SandboxScanner({
    list: async () => pids,
    // One answer every 40 ms: the batch takes ~400 ms, four times the bound.
    read: (pid) => new Promise((resolve) => setTimeout(() => resolve(`/w/${pid}`), 40 * (pid - 199))),
    timeoutMs: 100,
  })
  const found = await scanner.scan(['/w'])
  t.equal(found.size, 10, 'every one read')
  t.same([...scanner.stuck], [])
})

t.test('an event loop held past the bound (a long pause) does not make a read that answers right after count as stuck', async (t) => {
  const scanner = new SandboxScanner({
    list: async () => [300],
    read: () => new Promise((resolve) => setTimeout(() => resolve('/w/300'), 60)),
    timeoutMs: 50,
  })
  const scanning = scanner.scan(['/w'])
  // Let the scan start its read, then hold the loop for 200 ms: both timers are due when it is free.
  await new Promise((resolve) => setImmediate(resolve))
  const until = performance.now() + 200
  while (performance.now() < until) {
    // held
  }
  t.same([...(await scanning)], [[300, '/w/300']])
  t.same([...scanner.stuck], [], 'the late timer was armed again, and the read answered')
})

t.test('a read that fails counts as no sandbox, not as stuck; a listing that fails, as no processes', async (t) => {
  const failing = new SandboxScanner({ list: async () => [400, 401], read: async (pid) => (pid === 400 ? Promise.reject(new Error('EACCES')) : '/w/401'), timeoutMs: 50 })
  t.same([...(await failing.scan(['/w']))], [[401, '/w/401']])
  t.same([...failing.stuck], [])
  const told: (number | string)[] = []
  const unlisted = new SandboxScanner({ list: () => new Promise(() => undefined), timeoutMs: 50, onGiveUp: (what) => told.push(what) })
  t.same([...(await unlisted.scan(['/w']))], [], 'a listing that never answers is given up too')
  t.same(told, ['listing'], 'and told')
})

t.test('a sweeper on a scanner with a stuck process still answers every sweep', async (t) => {
  const scanner = new SandboxScanner({
    list: async () => [PID, PID + 1],
    read: (pid) => (pid === PID ? new Promise<string | undefined>(() => undefined) : Promise.resolve('/w/b')),
    timeoutMs: 50,
  })
  const sweeper = new LeftoverSweeper(scanner.scan)
  t.same(await Promise.all([sweeper.sweep('/w/a'), sweeper.sweep('/w/b')]), [[], [PID + 1]])
})

t.test('the local backend’s start-up sweep finds what a dead router left even when workDir is given with a trailing slash', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'maitre-sweep-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const left = spawn('sleep', ['60'], { detached: true, stdio: 'ignore', env: { ...process.env, WAITER_SANDBOX: join(dir, 'svc', 'inst') } })
  t.teardown(() => {
    try {
      process.kill(left.pid as number, 'SIGKILL')
    } catch {
      // gone
    }
  })
  const backend = new LocalBackend({ ...DEFAULTS.backend.local, workDir: `${dir}/`, portRange: [47000, 47009], clock: systemClock, log: silentLogger })
  t.teardown(() => backend.close())
  await backend.ready()
  await waitFor('the leftover killed', () => (processAlive(left.pid as number) ? undefined : true))
  t.notOk(processAlive(left.pid as number), 'killed at start-up')
})
