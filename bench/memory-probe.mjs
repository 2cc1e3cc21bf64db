// Loaded into a router under measurement with `node --import bench/memory-probe.mjs` (bench/memory.ts,
// bench/control-plane.ts with BENCH_HEAP=1): on SIGUSR2 it writes V8's view of the process to the
// file named by MEM_PROBE_OUT, so the bench can split the RSS it reads into the heap's spaces,
// what V8 mallocs outside them, and the rest (code, the allocator's free lists, thread stacks).
// With MEM_PROBE_GC=1 the signal first runs a full collection (needs --expose-gc): the live heap.
// With MEM_PROBE_SNAPSHOT=FILE it also writes a heap snapshot there (what holds the heap, by kind).
import { getHeapSpaceStatistics, getHeapStatistics, writeHeapSnapshot } from 'node:v8'
import { readFileSync, renameSync, writeFileSync } from 'node:fs'
import { constants, PerformanceObserver } from 'node:perf_hooks'

const out = process.env.MEM_PROBE_OUT
const mb = (bytes) => Math.round(bytes / 104857.6) / 10

/**
 * The resident set by kind of mapping, MB, from /proc/self/smaps (Linux): glibc's main heap
 * ([heap], what malloc serves from brk), files (node's own binary and libraries: code), and the
 * anonymous rest (V8's pages, malloc's mmapped chunks and other arenas, thread stacks).
 */
function residentByKind() {
  const kinds = { mallocHeap: 0, files: 0, anonymous: 0 }
  let kind = 'anonymous'
  try {
    for (const line of readFileSync('/proc/self/smaps', 'latin1').split('\n')) {
      const head = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$/.exec(line)
      if (head !== null) kind = head[1] === '[heap]' ? 'mallocHeap' : head[1].startsWith('/') ? 'files' : 'anonymous'
      else if (line.startsWith('Rss:')) kinds[kind] += Number(line.split(/\s+/)[1]) * 1024
    }
  } catch {
    return undefined // not Linux
  }
  return { mallocHeap: mb(kinds.mallocHeap), files: mb(kinds.files), anonymous: mb(kinds.anonymous) }
}

if (out !== undefined) {
  // GCs by kind since start: count, total and longest pause (ms), from the gc performance entries.
  const gcs = { minor: [0, 0, 0], major: [0, 0, 0], incremental: [0, 0, 0], weakcb: [0, 0, 0] }
  const kinds = { [constants.NODE_PERFORMANCE_GC_MINOR]: 'minor', [constants.NODE_PERFORMANCE_GC_MAJOR]: 'major', [constants.NODE_PERFORMANCE_GC_INCREMENTAL]: 'incremental', [constants.NODE_PERFORMANCE_GC_WEAKCB]: 'weakcb' }
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      const kind = gcs[kinds[entry.detail?.kind]]
      if (kind !== undefined) {
        kind[0] += 1
        kind[1] += entry.duration
        kind[2] = Math.max(kind[2], entry.duration)
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
      resident: residentByKind(),
      spaces,
      gcs: Object.fromEntries(Object.entries(gcs).map(([k, [n, ms, max]]) => [k, { count: n, ms: Math.round(ms), maxMs: Math.round(max * 10) / 10 }])),
    })}\n`)
    // After the figures, so they do not count the snapshot's own allocations; renamed when whole.
    const snapshot = process.env.MEM_PROBE_SNAPSHOT
    if (snapshot) {
      try {
        renameSync(writeHeapSnapshot(`${snapshot}.part`), snapshot)
      } catch (err) {
        // Not the router's end: the bench finds the reason in place of the snapshot.
        writeFileSync(snapshot, `heap snapshot failed: ${err?.message ?? err}\n`)
      }
    }
  })
}
