/**
 * How long one GET /metrics holds the event loop (every request waits meanwhile), by the number
 * of versions with series: the router's own Metrics, every version with observations in its
 * four per-version latency histograms, scraped through the same chunks() the admin API sends,
 * while a 1 ms timer chain records every gap. Each size runs in a fresh process, scraped five
 * times; the figures are the longest gap in each scrape and the scrape's whole time.
 *
 *   node --max-semi-space-size=16 bench/scrape-hold.ts [versions …]   (default 1000 10000)
 */
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { Metrics, type ServiceGauges } from '../src/metrics.ts'

const sizes = process.argv.slice(2).map(Number)

if (process.env['SCRAPE_HOLD_CHILD'] === undefined) {
  for (const size of sizes.length > 0 ? sizes : [1000, 10_000]) {
    const child = spawnSync(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url), String(size)], { env: { ...process.env, SCRAPE_HOLD_CHILD: '1' }, encoding: 'utf8' })
    process.stdout.write(child.stdout)
    if (child.status !== 0) process.stderr.write(child.stderr)
  }
} else {
  const versions = sizes[0] ?? 1000
  const ids = Array.from({ length: versions }, (_, i) => `svc-${i.toString(16).padStart(32, '0')}`)
  const gauges: ServiceGauges[] = ids.map((service) => ({ service, inFlight: 1, queued: 0, healthy: 1, starting: 0, target: 1, maxInstances: 10, deploymentErrorClass: undefined }))
  const metrics = new Metrics({ services: () => gauges, tokens: () => versions, versions: () => versions }, { version: 'bench' })
  for (const service of ids) {
    for (let i = 0; i < 5; i++) {
      metrics.requestDuration.observe({ service }, Math.random())
      metrics.queueWait.observe({ service }, Math.random())
      metrics.backendResponse.observe({ service }, Math.random())
      metrics.coldStartDuration.observe({ service }, Math.random() * 10)
    }
    metrics.requests.inc({ service, code: '2xx' })
  }
  const holds: string[] = []
  for (let round = 0; round < 5; round++) {
    let longest = 0
    let last = performance.now()
    let ticking = true
    const tick = (): void => {
      const now = performance.now()
      longest = Math.max(longest, now - last)
      last = now
      if (ticking) setTimeout(tick, 1)
    }
    setTimeout(tick, 1)
    const started = performance.now()
    let chars = 0
    for await (const chunk of metrics.chunks()) chars += chunk.length
    const tookMs = performance.now() - started
    ticking = false
    await new Promise((resolve) => setTimeout(resolve, 5))
    holds.push(`${longest.toFixed(0)} ms (scrape ${tookMs.toFixed(0)} ms, ${(chars / 1e6).toFixed(1)} MB)`)
  }
  console.log(`${versions} versions: longest hold per scrape ${holds.join(', ')}`)
}
