import t from 'tap'
import { Metrics, STATUS_CLASSES, queueRejectionOf, statusClass } from '../src/metrics.ts'
import { DEPLOYMENT_ERRORS, deploymentErrorClass } from '../src/backends/deployment-error.ts'

const newMetrics = (): Metrics => new Metrics({ services: () => [], tokens: () => 0, versions: () => 0 }, { version: 'test' })

/** Every series a version can have: each per-version metric, with every value its other label can take. */
function recordEverything(metrics: Metrics, service: string): void {
  for (let status = 0; status <= 1000; status++) metrics.requests.inc({ service, code: statusClass(status) })
  for (const histogram of [metrics.requestDuration, metrics.queueWait, metrics.backendResponse, metrics.coldStartDuration]) histogram.observe({ service }, 0.2)
  for (const counter of [metrics.killVetoes, metrics.coldStarts, metrics.ejections, metrics.instanceFailures]) counter.inc({ service })
  for (const direction of ['up', 'down']) metrics.scalingDecisions.inc({ service, direction })
  for (const code of ['MAITRE_QUEUE_FULL', 'MAITRE_QUEUE_TIMEOUT', 'MAITRE_DEPLOYMENT', 'MAITRE_OTHER']) {
    const reason = queueRejectionOf(code)
    if (reason !== undefined) metrics.queueRejections.inc({ service, reason })
  }
  const messages = [
    ...Object.values(DEPLOYMENT_ERRORS),
    ...['ImagePullBackOff', 'ErrImagePull', 'InvalidImageName', 'CreateContainerConfigError', 'CreateContainerError', 'Unschedulable', 'FailedCreate'].map((reason) => `${reason}: pod p-1 of image registry.example/app`),
    'The cluster refused to create the ReplicaSet: quota',
    'something nobody foresaw',
  ]
  for (const message of messages) metrics.deploymentErrors.inc({ service, reason: deploymentErrorClass(message) })
}

t.test('a collected version leaves no series behind, whatever its requests recorded, and other versions keep theirs', async (t) => {
  const metrics = newMetrics()
  recordEverything(metrics, 'gone')
  recordEverything(metrics, 'kept')
  const before = await metrics.render()
  const seriesOf = (text: string, service: string): string[] => text.split('\n').filter((line) => line.includes(`service="${service}"`))
  t.ok(seriesOf(before, 'gone').length > 50, 'the version had series of every kind')
  await metrics.removeService('gone')
  const after = await metrics.render()
  t.same(seriesOf(after, 'gone'), [], 'none left')
  t.equal(seriesOf(after, 'kept').length, seriesOf(before, 'kept').length, 'the other version keeps all of its own')
})

t.test('a version gone with requests under way: what they record afterwards leaves at the next scrape, until it runs again', async (t) => {
  const metrics = newMetrics()
  recordEverything(metrics, 'gone')
  await metrics.removeService('gone', true)
  recordEverything(metrics, 'gone')
  t.notMatch(await metrics.render(), 'service="gone"', 'dropped at the scrape')
  metrics.revive('gone')
  metrics.requests.inc({ service: 'gone', code: '2xx' })
  t.match(await metrics.render(), 'maitre_requests_total{service="gone",code="2xx"} 1', 'it runs again: its series are kept')
})

t.test('a scrape written piece by piece reads exactly as the registry writes it at once, blank lines and HELP lines included', async (t) => {
  // Enough versions for several pieces of every per-version histogram (128 a piece) and gauge (1,024).
  const versions = Array.from({ length: 2100 }, (_, i) => ({ service: `v${i}`, inFlight: i % 3, queued: i % 2, healthy: 1, starting: i % 2, target: i % 4, maxInstances: 5, deploymentErrorClass: i % 7 === 0 ? 'bad-command' : undefined }))
  const metrics = new Metrics({ services: () => versions, tokens: () => 0, versions: () => versions.length }, { version: 'test' })
  // (350 versions: 2,100 request-counter series, more than one piece of 2,048.)
  for (let i = 0; i < 350; i++) recordEverything(metrics, `v${i}`)
  const rendered = await metrics.render()
  t.ok(rendered.length > 16_384 * 4, 'large enough to be written in several turns')
  // (The process metrics move between the two reads; every maitre metric must match whole.)
  const stable = (text: string): string[] => text.split('\n\n').filter((block) => block.startsWith('# HELP maitre_'))
  const blocks = stable(rendered)
  t.ok(blocks.length >= 30, `every maitre metric (${blocks.length})`)
  t.same(blocks, stable(await metrics.registry.metrics()))
  t.notMatch(rendered, '\n\n\n', 'no blank line inside a metric')
  t.ok(rendered.endsWith('\n') && !rendered.endsWith('\n\n'))
})

t.test('a large scrape lets requests be served while it is written', async (t) => {
  const metrics = newMetrics()
  for (let i = 0; i < 300; i++) recordEverything(metrics, `v${i}`)
  let written = false
  let servedMeanwhile = false
  const scrape = metrics.render().then(() => (written = true))
  setImmediate(() => (servedMeanwhile = !written))
  await scrape
  t.ok(servedMeanwhile, 'the event loop ran other work before the scrape was done')
})

t.test('a scrape over a thousand versions writes no piece larger than a few hundred KB: each waits for the event loop, none holds it for a whole histogram', async (t) => {
  const metrics = newMetrics()
  for (let i = 0; i < 1000; i++) for (const histogram of [metrics.requestDuration, metrics.queueWait, metrics.backendResponse, metrics.coldStartDuration]) histogram.observe({ service: `version-${i}` }, i / 100)
  // And every status class of each: 6,000 counter series, ~400 KB.
  for (let i = 0; i < 1000; i++) for (const code of STATUS_CLASSES) metrics.requests.inc({ service: `version-${i}`, code })
  let largest = 0
  let whole = 0
  for await (const chunk of metrics.chunks()) {
    largest = Math.max(largest, chunk.length)
    whole += chunk.length
  }
  t.ok(whole > 4 * 1_000_000, `four histograms of ~1.1 MB each (${whole} characters in all)`)
  t.ok(largest < 256 * 1024, `the largest piece is ${largest} characters (before: one histogram's whole text, ~1.3 MB)`)
})

t.test('two scrapes at once each gather the versions once: one that ends first leaves the other its snapshot', async (t) => {
  let gathered = 0
  const versions = [{ service: 'v1', inFlight: 2, queued: 3, healthy: 1, starting: 1, target: 2, maxInstances: 5, deploymentErrorClass: undefined }]
  const metrics = new Metrics({ services: () => (gathered++, versions), tokens: () => 0, versions: () => 1 }, { version: 'test' })
  const slow = metrics.chunks()
  let slowText = (await slow.next()).value ?? ''
  const quick = await metrics.render()
  for await (const chunk of slow) slowText += chunk
  t.equal(gathered, 2, 'one walk over the versions per scrape')
  t.match(slowText, 'maitre_instances{service="v1",state="starting"} 1')
  t.match(quick, 'maitre_outstanding_requests{service="v1"} 5')
})

t.test('a scrape gathers every version’s gauge values once, not once per gauge', async (t) => {
  let gathered = 0
  const versions = [{ service: 'v1', inFlight: 2, queued: 3, healthy: 1, starting: 1, target: 2, maxInstances: 5, deploymentErrorClass: undefined }]
  const metrics = new Metrics({ services: () => (gathered++, versions), tokens: () => 0, versions: () => 1 }, { version: 'test' })
  const text = await metrics.render()
  t.equal(gathered, 1, 'seven gauges, one walk over the versions')
  t.match(text, 'maitre_outstanding_requests{service="v1"} 5')
  t.match(text, 'maitre_instances{service="v1",state="starting"} 1')
  versions[0] = { ...versions[0]!, queued: 0 }
  t.match(await metrics.render(), 'maitre_outstanding_requests{service="v1"} 2', 'the next scrape gathers them afresh')
})

t.test('a scrape that drops many gone versions’ late series lets requests be served meanwhile', async (t) => {
  const metrics = newMetrics()
  for (let i = 0; i < 2000; i++) await metrics.removeService(`gone-${i}`, true)
  metrics.requests.inc({ service: 'gone-1999', code: '5xx' })
  metrics.deploymentErrors.inc({ service: 'gone-1999', reason: 'other' })
  let written = false
  let servedMeanwhile = false
  const scrape = metrics.render().then((text) => {
    written = true
    return text
  })
  setImmediate(() => (servedMeanwhile = !written))
  t.notMatch(await scrape, 'gone-1999', 'their series dropped')
  t.ok(servedMeanwhile, 'the event loop ran other work before the scrape was done')
})
