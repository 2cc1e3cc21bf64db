// Loaded into a router under measurement with `node --import bench/memory-probe.mjs` (bench/memory.ts,
// bench/control-plane.ts with BENCH_HEAP=1): on SIGUSR2 it writes V8's view of the process to the
// file named by MEM_PROBE_OUT, so the bench can split the RSS it reads into the heap's spaces,
// what V8 mallocs outside them, and the rest (code, the allocator's free lists, thread stacks).
// With MEM_PROBE_GC=1 the signal first runs a full collection (needs --expose-gc): the live heap.
import { getHeapSpaceStatistics, getHeapStatistics } from 'node:v8'
import { writeFileSync } from 'node:fs'
import { constants, PerformanceObserver } from 'node:perf_hooks'

const out = process.env.MEM_PROBE_OUT
const mb = (bytes) => Math.round(bytes / 104857.6) / 10

if (out !== undefined) {
  // GCs by kind since start: count and total pause (ms), from the gc performance entries.
  const gcs = { minor: [0, 0], major: [0, 0], incremental: [0, 0], weakcb: [0, 0] }
  const kinds = { [constants.NODE_PERFORMANCE_GC_MINOR]: 'minor', [constants.NODE_PERFORMANCE_GC_MAJOR]: 'major', [constants.NODE_PERFORMANCE_GC_INCREMENTAL]: 'incremental', [constants.NODE_PERFORMANCE_GC_WEAKCB]: 'weakcb' }
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      const kind = gcs[kinds[entry.detail?.kind]]
      if (kind !== undefined) {
        kind[0] += 1
        kind[1] += entry.duration
      }
    }
  }).observe({ entryTypes: ['gc'] })
  process.on('SIGUSR2', () => {
    if (process.env.MEM_PROBE_GC === '1' && typeof globalThis.gc === 'function') globalThis.gc()
    const usage = process.memoryUsage()
    const heap = getHeapStatistics()
    const spaces = {}
    for (const s of getHeapSpaceStatistics()) {
      if (s.physical_space_size > 0) spaces[s.space_name.replace(/_space$/, '')] = { committed: mb(s.physical_space_size), used: mb(s.space_used_size) }
    }
    writeFileSync(out, `${JSON.stringify({
      at: Date.now(),
      rss: mb(usage.rss),
      heapCommitted: mb(heap.total_physical_size),
      heapUsed: mb(heap.used_heap_size),
      external: mb(usage.external),
      malloced: mb(heap.malloced_memory),
      spaces,
      gcs: Object.fromEntries(Object.entries(gcs).map(([k, [n, ms]]) => [k, { count: n, ms: Math.round(ms) }])),
    })}\n`)
  })
}
