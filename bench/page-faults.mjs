#!/usr/bin/env node
// What taking memory back costs on this machine (bench/RESULTS.md, "Memory after a burst"):
//   node bench/page-faults.mjs
// 1. The cost of a minor page fault: a fresh 200 MB Buffer touched once per 4 KiB page.
// 2. An allocating loop timed in 5 chunks right after one V8 collection of each kind (in a fresh
//    process each, warmed first): none, a regular major one, and the last-resort one maitre's
//    memory release runs, which hands V8's pooled pages back; and that last with a young
//    generation pinned at 16 MB.
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'

const faults = () => process.resourceUsage().minorPageFault

function allocating(n) {
  let sum = 0
  for (let i = 0; i < n; i++) {
    const o = { a: i, b: String(i), c: [i, i + 1] }
    sum += o.b.length + o.c[1] + JSON.stringify(o).length
  }
  return sum
}

function chunkMs() {
  const start = process.hrtime.bigint()
  allocating(20_000)
  return Number(process.hrtime.bigint() - start) / 1e6
}

if (process.argv[2] === '--chunks') {
  const flavor = process.argv[3]
  setFlagsFromString('--expose-gc')
  const gc = runInNewContext('gc')
  setFlagsFromString('--no-expose-gc')
  for (let i = 0; i < 200; i++) chunkMs()
  if (flavor !== 'none') gc({ type: 'major', execution: 'sync', flavor })
  const before = faults()
  const chunks = Array.from({ length: 5 }, chunkMs)
  console.log(JSON.stringify({ chunks, faults: faults() - before }))
} else {
  const usage0 = process.resourceUsage()
  const started = process.hrtime.bigint()
  const buffer = Buffer.allocUnsafe(200 * 1024 * 1024)
  for (let i = 0; i < buffer.length; i += 4096) buffer[i] = 1
  const ms = Number(process.hrtime.bigint() - started) / 1e6
  const usage1 = process.resourceUsage()
  const count = usage1.minorPageFault - usage0.minorPageFault
  const cpuMs = (usage1.userCPUTime - usage0.userCPUTime + usage1.systemCPUTime - usage0.systemCPUTime) / 1000
  console.log(`fresh 200 MB touched: ${count} minor faults in ${ms.toFixed(0)} ms (CPU ${cpuMs.toFixed(0)} ms, of it system ${((usage1.systemCPUTime - usage0.systemCPUTime) / 1000).toFixed(0)} ms): ${((ms * 1000) / count).toFixed(1)} µs a fault`)
  console.log('\n| collection before the timed chunks | chunk times, ms | minor faults during them |\n|---|---|---|')
  const self = fileURLToPath(import.meta.url)
  for (const [label, flags, flavor] of [
    ['none', [], 'none'],
    ['regular major', [], 'regular'],
    ['last-resort (what the release runs)', [], 'last-resort'],
    ['last-resort, --min-semi-space-size=16', ['--min-semi-space-size=16'], 'last-resort'],
  ]) {
    const run = spawnSync(process.execPath, [...flags, self, '--chunks', flavor], { encoding: 'utf8' })
    if (run.status !== 0) throw new Error(`${label}: ${run.stderr}`)
    const { chunks, faults: during } = JSON.parse(run.stdout)
    console.log(`| ${label} | ${chunks.map((c) => c.toFixed(1)).join(', ')} | ${during} |`)
  }
}
