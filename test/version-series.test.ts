import t from 'tap'
import fc from 'fast-check'
import { Counter, Gauge, Histogram, Registry, exponentialBuckets } from 'prom-client'
import { VersionCounter, VersionGauge, VersionHistogram, type GaugeSeries } from '../src/version-series.ts'

const BUCKETS = exponentialBuckets(0.005, 2.5, 13)

/** The same observations in prom-client's Histogram and in ours: their texts and values. */
async function both(observations: readonly (readonly [string, number])[], removed: readonly string[] = [], seriesPerPiece = 3) {
  const registry = new Registry()
  const theirs = new Histogram({ name: 'x_seconds', help: 'Help with a \\ and a\nnewline.', labelNames: ['service'] as const, buckets: BUCKETS, registers: [registry] })
  const ours = new VersionHistogram({ name: 'x_seconds', help: 'Help with a \\ and a\nnewline.', buckets: BUCKETS })
  for (const [service, value] of observations) {
    theirs.observe({ service }, value)
    ours.observe({ service }, value)
  }
  for (const service of removed) {
    theirs.remove({ service })
    ours.remove({ service })
  }
  const pieces = [...ours.pieces(seriesPerPiece)]
  return { theirText: await registry.getSingleMetricAsString('x_seconds'), ourText: pieces.join(''), pieces, theirValues: (await theirs.get()).values, ourValues: (await ours.get()).values }
}

t.test('the text, joined from its pieces, and the values are exactly prom-client’s Histogram’s for the same observations', async (t) => {
  const service = fc.oneof(fc.constantFrom('a', 'b', 'quote"d', 'back\\slash', 'new\nline', 'é'), fc.string({ maxLength: 6 }))
  const value = fc.oneof(fc.constantFrom(0, ...BUCKETS, BUCKETS[BUCKETS.length - 1]! * 10, 1e-9), fc.double({ min: 0, max: 1e4, noNaN: true }))
  const observations = fc.array(fc.tuple(service, value), { maxLength: 60 })
  let checked = 0
  const mismatch = await fc.check(
    fc.asyncProperty(observations, fc.array(service, { maxLength: 3 }), fc.integer({ min: 1, max: 5 }), async (list, removed, perPiece) => {
      const { theirText, ourText, theirValues, ourValues } = await both(list, removed, perPiece)
      checked += 1
      t.same(ourValues, theirValues.map((v) => ({ labels: v.labels, value: v.value, metricName: v.metricName })))
      return ourText === theirText
    }),
    { numRuns: 300 },
  )
  t.notOk(mismatch.failed, mismatch.failed ? `differs for ${fc.stringify(mismatch.counterexample)}` : '300 random sets of observations')
  t.ok(checked >= 300)
})

t.test('a thousand versions are written a few at a time, not in one piece', async (t) => {
  const observations = Array.from({ length: 1000 }, (_, i) => [`v${i}`, i / 100] as const)
  const { pieces, ourText, theirText } = await both(observations, [], 128)
  t.equal(pieces.length, 1 + Math.ceil(1000 / 128), 'the HELP and TYPE lines, then 128 versions a piece')
  t.equal(ourText, theirText)
})

t.test('a value that is not a number is refused, as prom-client refuses it', async (t) => {
  const ours = new VersionHistogram({ name: 'x_seconds', help: 'h', buckets: BUCKETS })
  t.throws(() => ours.observe({ service: 'a' }, Number.NaN), TypeError)
  t.throws(() => ours.observe({ service: 'a' }, Number.POSITIVE_INFINITY), TypeError)
  t.same((await ours.get()).values, [], 'and records nothing')
})

t.test('a gauge read from the versions writes, joined from its pieces, exactly what prom-client’s Gauge writes for the same series', async (t) => {
  const version = fc.record({
    service: fc.oneof(fc.constantFrom('a', 'quote"d', 'back\\slash', 'new\nline'), fc.string({ maxLength: 6 })),
    healthy: fc.oneof(fc.nat(), fc.double({ noNaN: false })),
    reason: fc.option(fc.constantFrom('bad-command', 'a "quoted" reason'), { nil: undefined }),
  })
  const series = (v: { service: string; healthy: number; reason: string | undefined }): GaugeSeries[] => [
    { labels: { service: v.service, state: 'healthy' }, value: v.healthy },
    ...(v.reason === undefined ? [] : [{ labels: { service: v.service, reason: v.reason }, value: 1 }]),
  ]
  const mismatch = await fc.check(
    fc.asyncProperty(fc.uniqueArray(version, { selector: (v) => v.service, maxLength: 40 }), fc.integer({ min: 1, max: 5 }), async (versions, perPiece) => {
      const registry = new Registry()
      const theirs = new Gauge({ name: 'x_instances', help: 'Help, with a \\.', labelNames: ['service', 'state', 'reason'] as const, registers: [registry] })
      for (const v of versions) for (const { labels, value } of series(v)) theirs.set(labels, value)
      const ours = new VersionGauge({ name: 'x_instances', help: 'Help, with a \\.', source: () => versions, series })
      const theirText = await registry.getSingleMetricAsString('x_instances')
      const ourValues = (await ours.get()).values
      const theirValues = (await theirs.get()).values.map((v) => ({ labels: v.labels, value: v.value }))
      return [...ours.pieces(perPiece)].join('') === theirText && JSON.stringify(ourValues) === JSON.stringify(theirValues)
    }),
    { numRuns: 300 },
  )
  t.notOk(mismatch.failed, mismatch.failed ? `differs for ${fc.stringify(mismatch.counterexample)}` : '300 random sets of versions')
})

t.test('a gauge over thousands of versions is written a thousand versions a piece, each version read once', async (t) => {
  let reads = 0
  const versions = Array.from({ length: 3000 }, (_, i) => ({ service: `v${i}` }))
  const ours = new VersionGauge({ name: 'x', help: 'h', source: () => versions, series: (v) => (reads++, [{ labels: { service: v.service }, value: 1 }]) })
  t.equal([...ours.pieces(1000)].length, 1 + 3, 'HELP and TYPE, then three pieces')
  t.equal(reads, 3000)
})

t.test('a version removed and observed again while its histogram is being written appears once, not twice', async (t) => {
  const ours = new VersionHistogram({ name: 'x_seconds', help: 'h', buckets: BUCKETS })
  for (let i = 0; i < 10; i++) ours.observe({ service: `v${i}` }, 0.1)
  const pieces = ours.pieces(2)
  let text = ''
  for (let i = 0; i < 3; i++) text += pieces.next().value ?? ''
  // v0 was written; it goes (its version collected) and comes back (a request that was under way).
  ours.remove({ service: 'v0' })
  ours.observe({ service: 'v0' }, 0.2)
  for (const piece of pieces) text += piece
  t.equal(text.split('\n').filter((line) => line.startsWith('x_seconds_count{service="v0"}')).length, 1)
  t.equal(text.split('\n').filter((line) => line.startsWith('x_seconds_count{')).length, 10, 'every version once')
})

t.test('a counter by version and status class writes, joined from its pieces, exactly what prom-client’s Counter writes, in the same order', async (t) => {
  const service = fc.oneof(fc.constantFrom('a', 'b', 'quote"d', 'back\\slash', 'new\nline'), fc.string({ maxLength: 4 }))
  const code = fc.constantFrom('1xx', '2xx', '3xx', '4xx', '5xx', 'other')
  const step = fc.oneof(
    fc.record({ inc: fc.tuple(service, code, fc.option(fc.oneof(fc.nat(5), fc.double({ min: 0, max: 10, noNaN: true })), { nil: undefined })) }),
    fc.record({ remove: fc.tuple(service, code) }),
  )
  const mismatch = await fc.check(
    fc.asyncProperty(fc.array(step, { maxLength: 60 }), fc.integer({ min: 1, max: 5 }), async (steps, perPiece) => {
      const registry = new Registry()
      const theirs = new Counter({ name: 'x_total', help: 'Help \\ here.', labelNames: ['service', 'code'] as const, registers: [registry] })
      const ours = new VersionCounter({ name: 'x_total', help: 'Help \\ here.', label: 'code' })
      for (const s of steps) {
        if ('inc' in s) {
          const [svc, c, by] = s.inc
          theirs.inc({ service: svc, code: c }, by)
          ours.inc({ service: svc, code: c }, by)
        } else {
          theirs.remove({ service: s.remove[0], code: s.remove[1] })
          ours.remove({ service: s.remove[0], code: s.remove[1] })
        }
      }
      const theirValues = (await theirs.get()).values.map((v) => ({ value: v.value, labels: v.labels }))
      return [...ours.pieces(perPiece)].join('') === (await registry.getSingleMetricAsString('x_total')) && JSON.stringify((await ours.get()).values) === JSON.stringify(theirValues)
    }),
    { numRuns: 300 },
  )
  t.notOk(mismatch.failed, mismatch.failed ? `differs for ${fc.stringify(mismatch.counterexample)}` : '300 random runs of counts and removals')
  const ours = new VersionCounter({ name: 'x_total', help: 'h', label: 'code' })
  t.throws(() => ours.inc({ service: 'a', code: '2xx' }, -1), 'a counter does not go down')
  t.throws(() => ours.inc({ service: 'a', code: '2xx' }, Number.NaN), TypeError)
})
