/**
 * Per-version metrics whose exposition is written a few hundred versions at a time. prom-client
 * builds a metric's whole text in one piece, every request waiting meanwhile: at 1,000 versions
 * a latency histogram's 1.7 MB held the event loop 25–130 ms per scrape, 0.3–0.9 s at 10,000;
 * a per-version gauge 30–90 ms and the request counter 33–83 ms at 10,000
 * (bench/scrape-hold.ts). The text is the one prom-client writes for the same series
 * (test/version-series.test.ts compares them), and the registry reads them through get() as it
 * reads any metric.
 */

/** One version's series: counts per bucket (not cumulative), their sum and count. */
interface Series {
  readonly counts: Float64Array
  sum: number
  count: number
  /** `service="…"`, escaped once. */
  readonly label: string
}

export interface VersionHistogramOptions {
  readonly name: string
  readonly help: string
  /** Upper bounds, ascending; +Inf is added. */
  readonly buckets: readonly number[]
}

export interface HistogramValue {
  readonly labels: Record<string, string | number>
  readonly value: number
  readonly metricName: string
}

export class VersionHistogram {
  readonly name: string
  readonly help: string
  readonly type = 'histogram' as const
  readonly aggregator = 'sum' as const
  readonly labelNames: readonly string[] = ['service']
  readonly #bounds: readonly number[]
  /** version id → its series; bounded by the versions observed and not removed. */
  readonly #series = new Map<string, Series>()

  constructor(options: VersionHistogramOptions) {
    this.name = options.name
    this.help = options.help
    this.#bounds = [...options.buckets]
  }

  observe(labels: { readonly service: string }, value: number): void {
    if (!Number.isFinite(value)) throw new TypeError(`Value is not a valid number: ${value}`)
    let series = this.#series.get(labels.service)
    if (series === undefined) {
      series = { counts: new Float64Array(this.#bounds.length), sum: 0, count: 0, label: `service="${escapeLabelValue(labels.service)}"` }
      this.#series.set(labels.service, series)
    }
    const bounds = this.#bounds
    for (let i = 0; i < bounds.length; i++) {
      if (value <= (bounds[i] as number)) {
        series.counts[i] = (series.counts[i] as number) + 1
        break
      }
    }
    series.sum += value
    series.count += 1
  }

  remove(labels: { readonly service: string }): void {
    this.#series.delete(labels.service)
  }

  reset(): void {
    this.#series.clear()
  }

  /** The values as prom-client's Histogram gives them (for the registry, and whoever reads series). */
  async get(): Promise<{ name: string; help: string; type: 'histogram'; aggregator: 'sum'; values: HistogramValue[] }> {
    const values: HistogramValue[] = []
    for (const [service, series] of this.#series) {
      let cumulative = 0
      for (const [i, bound] of this.#bounds.entries()) {
        cumulative += series.counts[i] as number
        values.push({ labels: { le: bound, service }, value: cumulative, metricName: `${this.name}_bucket` })
      }
      values.push({ labels: { le: '+Inf', service }, value: series.count, metricName: `${this.name}_bucket` })
      values.push({ labels: { service }, value: series.sum, metricName: `${this.name}_sum` })
      values.push({ labels: { service }, value: series.count, metricName: `${this.name}_count` })
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values }
  }

  /**
   * The exposition text, in pieces: the HELP and TYPE lines, then `seriesPerPiece` versions'
   * lines a piece, each piece after the first beginning with a newline (joined, they are the
   * registry's text). The versions are those that have series when the first of them is
   * written; their counts are read as each piece is written.
   */
  *pieces(seriesPerPiece: number): Generator<string> {
    const bucket = `${this.name}_bucket{le="`
    const bounds = this.#bounds.map((b) => `${b}`)
    // The series as they are when the writing begins: one removed and observed again between
    // pieces would otherwise come round again at the Map's end, and be written twice.
    yield* inPieces(this, [...this.#series.values()], seriesPerPiece, (series) => {
      let text = ''
      let cumulative = 0
      for (const [i, bound] of bounds.entries()) {
        cumulative += series.counts[i] as number
        text += `\n${bucket}${bound}",${series.label}} ${cumulative}`
      }
      return `${text}\n${bucket}+Inf",${series.label}} ${series.count}\n${this.name}_sum{${series.label}} ${numberText(series.sum)}\n${this.name}_count{${series.label}} ${series.count}`
    })
  }
}

export interface VersionCounterOptions<L extends string> {
  readonly name: string
  readonly help: string
  /** The label besides `service` (a status class, say), written after it. */
  readonly label: L
}

/**
 * A counter with one series per version and value of one other label, written in pieces. Only a
 * finite count of 0 or more is taken (prom-client also takes NaN, and null as 1; nothing here
 * passes either): for those, its text is prom-client's.
 */
export class VersionCounter<L extends string> {
  readonly name: string
  readonly help: string
  readonly type = 'counter' as const
  readonly aggregator = 'sum' as const
  readonly labelNames: readonly string[]
  readonly #label: L
  /**
   * `service NUL value` → the series, in the order they were first counted (prom-client's order);
   * bounded by the versions counted and not removed, times the other label's values.
   */
  readonly #series = new Map<string, { readonly service: string; readonly value: string; count: number; readonly labels: string }>()

  constructor(options: VersionCounterOptions<L>) {
    this.name = options.name
    this.help = options.help
    this.#label = options.label
    this.labelNames = ['service', options.label]
  }

  inc(labels: { readonly service: string } & { readonly [K in L]: string }, by = 1): void {
    if (!Number.isFinite(by)) throw new TypeError(`Value is not a valid number: ${by}`)
    if (by < 0) throw new Error('It is not possible to decrease a counter')
    const value = labels[this.#label]
    const key = `${labels.service}\u0000${value}`
    const series = this.#series.get(key)
    if (series !== undefined) series.count += by
    else this.#series.set(key, { service: labels.service, value, count: by, labels: `service="${escapeLabelValue(labels.service)}",${this.#label}="${escapeLabelValue(value)}"` })
  }

  remove(labels: { readonly service: string } & { readonly [K in L]?: string }): void {
    this.#series.delete(`${labels.service}\u0000${labels[this.#label] as string}`)
  }

  reset(): void {
    this.#series.clear()
  }

  /** The values as prom-client's Counter gives them. */
  async get(): Promise<{ name: string; help: string; type: 'counter'; aggregator: 'sum'; values: { labels: Record<string, string>; value: number }[] }> {
    const values = [...this.#series.values()].map((s) => ({ value: s.count, labels: { service: s.service, [this.#label]: s.value } }))
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values }
  }

  /** The exposition text in pieces, `seriesPerPiece` series a piece, as VersionHistogram's. */
  *pieces(seriesPerPiece: number): Generator<string> {
    yield* inPieces(this, [...this.#series.values()], seriesPerPiece, (series) => `\n${this.name}{${series.labels}} ${numberText(series.count)}`)
  }
}

export interface GaugeSeries {
  /** The series' labels, `service` first, in the order they are written. */
  readonly labels: Readonly<Record<string, string>>
  readonly value: number
}

export interface VersionGaugeOptions<T> {
  readonly name: string
  readonly help: string
  /** What the gauge reads at a scrape: one entry per version. */
  readonly source: () => Iterable<T>
  /** The series an entry shows (none, one, or one per value of another label). */
  readonly series: (entry: T) => readonly GaugeSeries[]
}

/** A gauge whose series are read from the versions at scrape time, never stored. */
export class VersionGauge<T> {
  readonly name: string
  readonly help: string
  readonly type = 'gauge' as const
  readonly aggregator = 'sum' as const
  readonly #o: VersionGaugeOptions<T>

  constructor(options: VersionGaugeOptions<T>) {
    this.name = options.name
    this.help = options.help
    this.#o = options
  }

  /** Nothing is stored: a gauge read from the versions has nothing to reset. */
  reset(): void {}

  /** The values as prom-client's Gauge gives them (for the registry, and whoever reads series). */
  async get(): Promise<{ name: string; help: string; type: 'gauge'; aggregator: 'sum'; values: { labels: Record<string, string>; value: number }[] }> {
    const values: { labels: Record<string, string>; value: number }[] = []
    for (const entry of this.#o.source()) for (const { labels, value } of this.#o.series(entry)) values.push({ labels: { ...labels }, value })
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values }
  }

  /**
   * The exposition text in pieces, `entriesPerPiece` versions a piece, as VersionHistogram's;
   * `entries`: the versions to write (a scrape's own snapshot), by default what the source reads now.
   */
  *pieces(entriesPerPiece: number, entries: Iterable<T> = this.#o.source()): Generator<string> {
    yield* inPieces(this, entries, entriesPerPiece, (entry) => {
      let text = ''
      for (const { labels, value } of this.#o.series(entry)) {
        let written = ''
        for (const label in labels) written += `${written === '' ? '' : ','}${label}="${escapeLabelValue(labels[label] as string)}"`
        text += `\n${this.name}${written === '' ? '' : `{${written}}`} ${numberText(value)}`
      }
      return text
    })
  }
}

/**
 * A metric's exposition in pieces: its HELP and TYPE lines, then the lines of `perPiece` entries
 * a piece (each entry's lines begin with a newline), entries read as their piece is written.
 */
function* inPieces<T>(metric: { readonly name: string; readonly help: string; readonly type: string }, entries: Iterable<T>, perPiece: number, linesOf: (entry: T) => string): Generator<string> {
  const name = escapeString(metric.name)
  yield `# HELP ${name} ${escapeString(metric.help)}\n# TYPE ${name} ${metric.type}`
  let text = ''
  let inPiece = 0
  for (const entry of entries) {
    text += linesOf(entry)
    if (++inPiece === perPiece) {
      yield text
      text = ''
      inPiece = 0
    }
  }
  if (text !== '') yield text
}

/** As prom-client writes a value: NaN and the infinities by name. */
function numberText(value: number): string {
  if (Number.isNaN(value)) return 'Nan'
  if (!Number.isFinite(value)) return value < 0 ? '-Inf' : '+Inf'
  return `${value}`
}

function escapeString(text: string): string {
  return text.replace(/\\/g, '\\\\').replace(/\n/g, '\\n')
}

function escapeLabelValue(text: string): string {
  return escapeString(text).replace(/"/g, '\\"')
}
