/**
 * How long the memory release (src/memory/release.ts) stops the event loop, by live heap size:
 * each size in a fresh process, which builds that much live data (small objects, as tokens and
 * service records are), churns short-lived garbage as requests do, then times one release.
 *
 *   node --max-semi-space-size=16 bench/release-pause.ts [liveMb …]   (default 2 20 60 200)
 */
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { collectForRelease } from '../src/memory/release.ts'

const MB = 1024 * 1024
const sizes = process.argv.slice(2).map(Number)

if (process.env['RELEASE_PAUSE_CHILD'] === undefined) {
  for (const size of sizes.length > 0 ? sizes : [2, 20, 60, 200]) {
    const child = spawnSync(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url), String(size)], { env: { ...process.env, RELEASE_PAUSE_CHILD: '1' }, encoding: 'utf8' })
    process.stdout.write(child.stdout)
    if (child.status !== 0) process.stderr.write(child.stderr)
  }
} else {
  const live: unknown[] = []
  // ~10,000 objects a MB of live heap (an object, its string and its array: ~100 bytes).
  for (let i = 0; i < (sizes[0] ?? 20) * 10_000; i++) live.push({ id: i, name: `token-${i}-xxxxxxxxxxxxxxxx`, v: [i] })
  let churn: unknown[] = []
  for (let round = 0; round < 200; round++) {
    for (let i = 0; i < 20_000; i++) churn.push({ a: `req${i}${round}`, b: [1, 2, 3] })
    if (churn.length > 400_000) churn = []
  }
  churn = []
  const rssBefore = process.memoryUsage.rss()
  const started = performance.now()
  collectForRelease()
  const pauseMs = performance.now() - started
  const liveAfter = process.memoryUsage().heapUsed
  console.log(`live heap ${(liveAfter / MB).toFixed(0)} MB (${live.length} objects): release paused ${pauseMs.toFixed(0)} ms, RSS ${(rssBefore / MB).toFixed(0)} -> ${(process.memoryUsage.rss() / MB).toFixed(0)} MB`)
}
