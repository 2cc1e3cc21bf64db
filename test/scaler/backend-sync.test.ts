import t from 'tap'
import { ManualClock } from '../fixtures/manual-clock.ts'
import { MemoryBackend } from '../fixtures/memory-backend.ts'
import { InstanceTracker } from '../../src/backends/tracker.ts'
import { followBackend } from '../../src/scaler/backend-sync.ts'
import { Metrics } from '../../src/metrics.ts'
import { silentLogger } from '../../src/log.ts'
import type { Backend, EndedInstance } from '../../src/backends/backend.ts'

t.test('a version the backend reports before any request here is routed by its own knobs from the first report', async (t) => {
  const clock = new ManualClock()
  const backend = new MemoryBackend(clock)
  const tracker = new InstanceTracker({ clock, ejectBaseMs: 1000, maxEjectMs: 8000 })
  const metrics = new Metrics({ services: () => [], tokens: () => 0, versions: () => 0 }, { version: 'test' })
  const gone: string[] = []
  const known = new Set(['with-record'])
  followBackend({ backend, tracker, metrics, log: silentLogger, routingOf: (id) => (known.has(id) ? { concurrencyLevel: 3, loadBalancing: 'oldest', maxQueueLength: 5 } : undefined), onGone: (id) => void gone.push(id) })
  backend.add('with-record', [1])
  backend.add('no-record-yet', [1])
  t.ok(tracker.isConfigured('with-record'), 'another router started it (or this one, before a restart): its record says how to route it')
  t.same([tracker.tryAcquire('with-record'), tracker.tryAcquire('with-record'), tracker.tryAcquire('with-record')].map((l) => l !== undefined), [true, true, true], 'concurrency-level 3 at once')
  t.notOk(tracker.isConfigured('no-record-yet'), 'no record yet: the defaults, until one arrives')
  known.add('no-record-yet')
  backend.setHealthy('no-record-yet', 'no-record-yet.2', true)
  t.ok(tracker.isConfigured('no-record-yet'), 'and its knobs from the next report after the record came')
  await backend.deleteService('with-record')
  t.same(gone, ['with-record'])
})

t.test('a version gone while requests wait on its start: what they record when they end is dropped from the next scrape', async (t) => {
  const clock = new ManualClock()
  const backend = new MemoryBackend(clock)
  const tracker = new InstanceTracker({ clock, ejectBaseMs: 1000, maxEjectMs: 8000 })
  const metrics = new Metrics({ services: () => [], tokens: () => 0, versions: () => 0 }, { version: 'test' })
  followBackend({ backend, tracker, metrics, log: silentLogger, routingOf: () => undefined, onGone: () => undefined, starting: (id) => id === 'waited-on' })
  backend.add('waited-on', [1])
  await backend.deleteService('waited-on')
  // (Its series removed first: one turn of the loop.)
  await new Promise((resolve) => setImmediate(resolve))
  // A request that waited on its start ends now, and records how.
  metrics.requests.inc({ service: 'waited-on', code: '5xx' })
  metrics.requestDuration.observe({ service: 'waited-on' }, 1)
  t.notMatch(await metrics.render(), 'waited-on', 'no series of the version that went')
})

t.test('every failed instance is counted once, a launch failure that repeats its id included', async (t) => {
  const clock = new ManualClock()
  const ended = (id: string, endedAt: number): EndedInstance => ({ id, serviceId: 'v', host: 'h', port: 1, startedAt: 0, endedAt, exitCode: 1, flags: new Set(), message: 'Exited with code 1', logDirectory: undefined })
  const failed: EndedInstance[] = []
  const listeners = new Set<(id: string) => void>()
  const backend = {
    state: (id: string) => (id === 'v' ? { id: 'v', instances: [], failed: [...failed], killed: [], requested: 1, deploymentError: undefined } : undefined),
    subscribe: (listener: (id: string) => void) => {
      listeners.add(listener)
      return () => listeners.delete(listener)
    },
  } as unknown as Backend
  const tracker = new InstanceTracker({ clock, ejectBaseMs: 1000, maxEjectMs: 8000 })
  const metrics = new Metrics({ services: () => [], tokens: () => 0, versions: () => 0 }, { version: 'test' })
  followBackend({ backend, tracker, metrics, log: silentLogger, routingOf: () => undefined, onGone: () => undefined })
  const report = async (): Promise<string | undefined> => {
    for (const listener of listeners) listener('v')
    return /maitre_instance_failures_total\{service="v"\} (\d+)/.exec(await metrics.render())?.[1]
  }
  failed.unshift(ended('v.1', 10))
  t.equal(await report(), '1')
  t.equal(await report(), '1', 'a report with nothing new counts nothing')
  failed.unshift(ended('v.launch-failed', 20), ended('v.launch-failed', 30))
  t.equal(await report(), '3', 'two more, one id: both counted')
})

