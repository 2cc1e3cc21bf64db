/**
 * Every Prometheus metric maitre exports, in one registry (not prom-client's global one, so each
 * router and each test has its own). Prefix maitre_, base units, _total counters, _seconds
 * histograms whose buckets reach two minutes. Point-in-time values (outstanding, instances,
 * target) are read at scrape time, so a deleted version simply stops appearing; per-service
 * counters and histograms are removed explicitly when a version is collected.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics, exponentialBuckets, type Metric } from 'prom-client'
import { VersionCounter, VersionGauge, VersionHistogram, type GaugeSeries } from './version-series.ts'

/** 5 ms … ~300 s (past two minutes): covers proxied requests and cold starts alike. */
const LATENCY_BUCKETS = exponentialBuckets(0.005, 2.5, 13)

export interface ServiceGauges {
  readonly service: string
  readonly inFlight: number
  readonly queued: number
  readonly healthy: number
  readonly starting: number
  /** The autoscaler's target, from the router that decides (undefined elsewhere: a follower's would only echo the count). */
  readonly target: number | undefined
  /** The version's max-instances, when its record is known here. */
  readonly maxInstances: number | undefined
  /** The class of the version's deployment error while it has one (a bounded set: a label). */
  readonly deploymentErrorClass: string | undefined
}

export interface GaugeSources {
  readonly services: () => Iterable<ServiceGauges>
  readonly tokens: () => number
  readonly versions: () => number
  /** WebSockets relayed right now (absent: none are). */
  readonly websockets?: () => number
  /** Client connections open right now (absent: none are). */
  readonly connections?: () => number
}

/** The code label's whole range: what statusClass gives. */
export const STATUS_CLASSES = ['1xx', '2xx', '3xx', '4xx', '5xx', 'other'] as const
export type StatusClass = (typeof STATUS_CLASSES)[number]

export function statusClass(status: number): StatusClass {
  return status >= 100 && status < 600 ? (`${Math.floor(status / 100)}xx` as StatusClass) : 'other'
}

const QUEUE_REJECTIONS = ['full', 'timeout', 'deployment-error'] as const

/** The reason label of maitre_queue_rejections_total for a request refused with this error, if it is one. */
export function queueRejectionOf(code: string | undefined): (typeof QUEUE_REJECTIONS)[number] | undefined {
  return code === 'MAITRE_QUEUE_FULL' ? 'full' : code === 'MAITRE_QUEUE_TIMEOUT' ? 'timeout' : code === 'MAITRE_DEPLOYMENT' ? 'deployment-error' : undefined
}

/**
 * A per-version metric and, when it has a label besides `service`, that label's whole range:
 * a version's series are removed one by one by their labels. (Reading every series to find
 * them took 50–110 ms per version at 1,000 versions and ~0.5–1.4 s at 10,000, all of it
 * blocking the event loop, once per version collected.) A label whose range this module does
 * not know (`values` absent) is read from the metric's own series: only for a metric few
 * versions have (versions with a deployment error).
 */
interface PerServiceMetric {
  readonly metric: Metric<string> | VersionHistogram | VersionCounter<string>
  readonly other?: { readonly label: string; readonly values?: readonly string[] }
}

/** Versions whose series one turn of the event loop removes (~20 removals each). */
const REMOVALS_PER_TURN = 512

/** Versions whose histogram series one piece of a scrape writes (~1.7 KB each: ~200 KB, a few ms). */
const HISTOGRAM_VERSIONS_PER_PIECE = 128
/** Versions whose gauge series one piece writes (a line or two each: ~100 KB). */
const GAUGE_VERSIONS_PER_PIECE = 1024
/** Counter series (one line each) one piece writes: ~150 KB. */
const COUNTER_SERIES_PER_PIECE = 2048

/** A metric's text this long lets the event loop go before the next is written (a few hundred series). */
const YIELD_AFTER_CHARS = 16_384

/** Versions remembered as gone with requests under way, for the series those record after they went. */
const MAX_RETIRED = 10_000

export class Metrics {
  readonly registry = new Registry()
  readonly requests: VersionCounter<'code'>
  readonly requestDuration: VersionHistogram
  readonly queueWait: VersionHistogram
  readonly backendResponse: VersionHistogram
  readonly scalingDecisions: Counter<'service' | 'direction'>
  readonly killVetoes: Counter<'service'>
  readonly peerSyncs: Counter<'outcome'>
  readonly keepAliveNotes: Counter<'outcome'>
  readonly coldStarts: Counter<'service'>
  readonly prewarms: Counter
  readonly prewarmHits: Counter
  readonly prewarmMisses: Counter
  readonly coldStartDuration: VersionHistogram
  readonly routerColdStartDuration: Histogram
  readonly deploymentErrors: Counter<'service' | 'reason'>
  readonly queueRejections: Counter<'service' | 'reason'>
  readonly ejections: Counter<'service'>
  readonly instanceFailures: Counter<'service'>
  readonly gcDeletions: Counter<'reason'>
  readonly backendOperations: Counter<'backend' | 'operation' | 'result'>
  readonly backendOperationDuration: Histogram<'backend' | 'operation'>
  readonly memoryReleases: Counter
  readonly connectionsRefused: Counter<'limit'>
  readonly memoryReleasedBytes: Counter
  readonly #perService: readonly PerServiceMetric[]
  /**
   * Versions that stopped running with requests still under way, until they run again: what
   * those requests record afterwards is removed at each scrape (which then reads every series
   * by their labels: a few dozen removals per version remembered). At most MAX_RETIRED, the
   * oldest forgotten first.
   */
  readonly #retired = new Set<string>()
  /** Every version's gauge values, gathered once when a scrape begins, until it ends (seven gauges read them). */
  #scraped: readonly ServiceGauges[] | undefined
  readonly #sources: GaugeSources

  constructor(sources: GaugeSources, build: { version: string }) {
    this.#sources = sources
    const registers = [this.registry]
    // Seven gauges read every version's values: during a scrape they are gathered once.
    const services = (): Iterable<ServiceGauges> => this.#scraped ?? sources.services()
    const service = ['service'] as const
    // Kept in the registry as any metric (it reads them through get(); prom-client's types name
    // only its own classes), and written a piece at a time by chunks().
    const versionHistogram = (options: ConstructorParameters<typeof VersionHistogram>[0]): VersionHistogram => {
      const histogram = new VersionHistogram(options)
      this.registry.registerMetric(histogram as unknown as Metric)
      return histogram
    }
    this.requests = new VersionCounter({ name: 'maitre_requests_total', help: 'Proxied requests by service version and status class (2xx…5xx).', label: 'code' })
    this.registry.registerMetric(this.requests as unknown as Metric)
    this.requestDuration = versionHistogram({ name: 'maitre_request_duration_seconds', help: 'End-to-end time of proxied requests, queueing included.', buckets: LATENCY_BUCKETS })
    this.queueWait = versionHistogram({ name: 'maitre_queue_wait_seconds', help: 'Time requests waited for an instance slot (cold starts included).', buckets: LATENCY_BUCKETS })
    this.backendResponse = versionHistogram({ name: 'maitre_backend_response_seconds', help: 'Time from forwarding a request to the instance until its response ended.', buckets: LATENCY_BUCKETS })
    this.killVetoes = new Counter({ name: 'maitre_kill_vetoes_total', help: 'Scale-down kills another router vetoed because it carried a request on the instance (cluster mode).', labelNames: ['service'] as const, registers })
    this.peerSyncs = new Counter({ name: 'maitre_peer_syncs_total', help: 'Peers told of a write to the shared state, by outcome: confirmed (it read the write before the writer answered) or unconfirmed (no answer within 1 s; its watch brings the write later). Cluster mode.', labelNames: ['outcome'] as const, registers })
    this.keepAliveNotes = new Counter({ name: 'maitre_keep_alive_notes_total', help: 'Requests to adaptive versions told to a peer so that its keep-alive learns of them, per peer, by outcome: sent, failed (the peer did not take them), dropped (too many waiting, or too large). Cluster mode.', labelNames: ['outcome'] as const, registers })
    this.scalingDecisions = new Counter({ name: 'maitre_scaling_decisions_total', help: 'Scaling decisions that changed the instance count, by direction.', labelNames: ['service', 'direction'] as const, registers })
    this.prewarms = new Counter({ name: 'maitre_prewarms_total', help: 'Versions started by their adaptive keep-alive before an expected request.', registers })
    this.prewarmHits = new Counter({ name: 'maitre_prewarm_hits_total', help: 'Pre-warms whose next request found an instance healthy (it waited for no start).', registers })
    this.prewarmMisses = new Counter({ name: 'maitre_prewarm_misses_total', help: 'Pre-warms that spared no start: let go unused, still starting when the request came, or failed.', registers })
    this.coldStarts = new Counter({ name: 'maitre_cold_starts_total', help: 'Requests that waited for a version with no healthy instance.', labelNames: service, registers })
    this.coldStartDuration = versionHistogram({ name: 'maitre_cold_start_duration_seconds', help: 'How long cold-start requests waited for their first instance.', buckets: LATENCY_BUCKETS })
    // A version's own series are born at its first cold start, already at 1: rate() and increase()
    // never see that one. This one lives as long as the router, so alerts see every cold start.
    this.routerColdStartDuration = new Histogram({ name: 'maitre_router_cold_start_duration_seconds', help: 'How long cold-start requests waited for their first instance, every version together (a series that exists from the router\'s start, for rates and alerts).', buckets: LATENCY_BUCKETS, registers })
    this.deploymentErrors = new Counter({ name: 'maitre_deployment_errors_total', help: 'Times a version was found unable to start, by Waiter deployment-error message.', labelNames: ['service', 'reason'] as const, registers })
    this.queueRejections = new Counter({ name: 'maitre_queue_rejections_total', help: 'Requests refused with 503 for want of an instance, by reason (full, timeout, deployment-error).', labelNames: ['service', 'reason'] as const, registers })
    this.instanceFailures = new Counter({ name: 'maitre_instance_failures_total', help: 'Instances that failed (exited, crashed, were killed by a failed check), whether or not they had passed their health checks: the signal of a version crashing in a loop.', labelNames: service, registers })
    this.ejections = new Counter({ name: 'maitre_ejections_total', help: 'Instances taken out of rotation after a connect error, a failure or a 503.', labelNames: service, registers })
    this.gcDeletions = new Counter({ name: 'maitre_gc_deletions_total', help: 'Versions garbage-collected, by reason (idle, stale, broken, orphaned).', labelNames: ['reason'] as const, registers })
    this.backendOperations = new Counter({ name: 'maitre_backend_operations_total', help: 'Calls to the cluster backend by operation and result (ok, error).', labelNames: ['backend', 'operation', 'result'] as const, registers })
    this.backendOperationDuration = new Histogram({ name: 'maitre_backend_operation_duration_seconds', help: 'Duration of calls to the cluster backend.', labelNames: ['backend', 'operation'] as const, buckets: LATENCY_BUCKETS, registers })
    this.connectionsRefused = new Counter({ name: 'maitre_connections_refused_total', help: 'Client connections refused at a connection limit (server.maxConnections: 503; server.maxConnectionsPerClient: 429), by limit.', labelNames: ['limit'] as const, registers })
    for (const limit of ['connections', 'connections-per-client']) this.connectionsRefused.inc({ limit }, 0)
    this.memoryReleases = new Counter({ name: 'maitre_memory_releases_total', help: 'Memory-reducing collections run once traffic went quiet (server.memoryRelease).', registers })
    this.memoryReleasedBytes = new Counter({ name: 'maitre_memory_released_bytes_total', help: 'Resident memory those collections handed back to the system.', registers })

    // Read from the versions at the scrape (one walk, shared), written a piece at a time.
    const versionGauge = (name: string, help: string, series: (s: ServiceGauges) => readonly GaugeSeries[]): void =>
      this.registry.registerMetric(new VersionGauge({ name, help, source: services, series }) as unknown as Metric)
    const perServiceGauge = (name: string, help: string, value: (s: ServiceGauges) => number | undefined): void =>
      versionGauge(name, help, (s) => {
        const v = value(s)
        return v === undefined ? [] : [{ labels: { service: s.service }, value: v }]
      })
    perServiceGauge('maitre_outstanding_requests', 'In-flight plus queued requests: the scaling signal.', (s) => s.inFlight + s.queued)
    perServiceGauge('maitre_in_flight_requests', 'Requests being served by an instance.', (s) => s.inFlight)
    perServiceGauge('maitre_queued_requests', 'Requests waiting for an instance slot.', (s) => s.queued)
    perServiceGauge('maitre_target_instances', 'The autoscaler\'s smoothed target instance count (exported by the router that decides: the single router, or the cluster\'s leader).', (s) => s.target)
    perServiceGauge('maitre_max_instances', 'The version\'s max-instances: the ceiling its target is held to.', (s) => s.maxInstances)
    versionGauge('maitre_deployment_error', '1 while the version cannot start (requests to it get 503 "Deployment error"), by the error\'s class; absent otherwise.', (s) =>
      s.deploymentErrorClass === undefined ? [] : [{ labels: { service: s.service, reason: s.deploymentErrorClass }, value: 1 }],
    )
    versionGauge('maitre_instances', 'Live instances by state: healthy, or starting (not passing health checks: not yet, or no longer).', (s) => [
      { labels: { service: s.service, state: 'healthy' }, value: s.healthy },
      { labels: { service: s.service, state: 'starting' }, value: s.starting },
    ])
    new Gauge({ name: 'maitre_tokens', help: 'Tokens stored (soft-deleted ones included).', registers, collect() { this.set(sources.tokens()) } })
    new Gauge({ name: 'maitre_services', help: 'Service versions known to this router.', registers, collect() { this.set(sources.versions()) } })
    new Gauge({ name: 'maitre_open_connections', help: 'Client connections open on the router\'s listener right now (a separate admin listener\'s not counted).', registers, collect() { this.set(sources.connections?.() ?? 0) } })
    new Gauge({ name: 'maitre_websockets_open', help: 'WebSockets relayed right now (each holds its slot).', registers, collect() { this.set(sources.websockets?.() ?? 0) } })
    new Gauge({ name: 'maitre_build_info', help: 'maitre version and Node.js runtime.', labelNames: ['version', 'node_version'] as const, registers }).set({ version: build.version, node_version: process.version }, 1)
    collectDefaultMetrics({ register: this.registry })

    const only = (metric: Metric<string> | VersionHistogram | VersionCounter<string>): PerServiceMetric => ({ metric })
    this.#perService = [
      { metric: this.requests, other: { label: 'code', values: STATUS_CLASSES } },
      { metric: this.scalingDecisions, other: { label: 'direction', values: ['up', 'down'] } },
      { metric: this.deploymentErrors, other: { label: 'reason' } },
      { metric: this.queueRejections, other: { label: 'reason', values: QUEUE_REJECTIONS } },
      ...[this.requestDuration, this.queueWait, this.backendResponse, this.killVetoes, this.coldStarts, this.coldStartDuration, this.ejections, this.instanceFailures].map(only),
    ]
  }

  /**
   * Drops every series of a deleted version, so dead versions do not pile up in Prometheus;
   * `requestsUnderWay`: some of its requests have yet to record how they ended.
   */
  async removeService(serviceId: string, requestsUnderWay = false): Promise<void> {
    if (requestsUnderWay) {
      this.#retired.delete(serviceId)
      this.#retired.add(serviceId)
      if (this.#retired.size > MAX_RETIRED) this.#retired.delete(this.#retired.values().next().value as string)
    }
    await this.#removeSeries([serviceId])
  }

  /** The version runs (again): its series are kept from now on. */
  revive(serviceId: string): void {
    if (this.#retired.size > 0) this.#retired.delete(serviceId)
  }

  /** The text a scrape gets, whole (see chunks). */
  async render(): Promise<string> {
    let text = ''
    for await (const chunk of this.chunks()) text += chunk
    return text
  }

  /**
   * The text a scrape gets (the registry's own), metric by metric, to be sent as it comes: first,
   * the series that versions gone recorded since they went are dropped. The event loop is let go
   * after each large metric: at 1,000 versions the exposition is ~4.6 MB, and writing it at
   * once held the loop for ~120-250 ms (~1.5 s at 10,000, with the whole text joined and
   * encoded in one piece), every request waiting meanwhile; now a wait is one metric's text.
   */
  async *chunks(): AsyncGenerator<string> {
    if (this.#retired.size > 0) await this.#removeSeries([...this.#retired])
    // The per-version gauges all show the moment the scrape began (another scrape that begins
    // meanwhile brings a later one for both).
    const scraped = [...this.#sources.services()]
    this.#scraped = scraped
    try {
      let first = true
      for (const metric of this.registry.getMetricsAsArray() as readonly unknown[]) {
        if (metric instanceof VersionHistogram || metric instanceof VersionGauge || metric instanceof VersionCounter) {
          // One version's series after another, the event loop let go between pieces. (Only the
          // metric's first piece is set apart from the metric before; the rest begin with a newline.)
          // The gauges write this scrape's own snapshot, whatever another scrape does meanwhile.
          const pieces =
            metric instanceof VersionHistogram ? metric.pieces(HISTOGRAM_VERSIONS_PER_PIECE)
            : metric instanceof VersionCounter ? metric.pieces(COUNTER_SERIES_PER_PIECE)
            : (metric as VersionGauge<ServiceGauges>).pieces(GAUGE_VERSIONS_PER_PIECE, scraped)
          let metricBegins = true
          for (const piece of pieces) {
            yield first ? piece : metricBegins ? `\n\n${piece}` : piece
            first = false
            metricBegins = false
            await new Promise((resolve) => setImmediate(resolve))
          }
          continue
        }
        const text = await this.registry.getSingleMetricAsString((metric as { name: string }).name)
        yield first ? text : `\n\n${text}`
        first = false
        if (text.length >= YIELD_AFTER_CHARS) await new Promise((resolve) => setImmediate(resolve))
      }
      yield '\n'
    } finally {
      if (this.#scraped === scraped) this.#scraped = undefined
    }
  }

  /** Removes these versions' series, REMOVALS_PER_TURN versions per turn of the event loop. */
  async #removeSeries(services: readonly string[]): Promise<void> {
    const gone = new Set(services)
    // A label whose range is not known here: its values read once, from the metric's own series.
    const unlisted = new Map<PerServiceMetric, Map<string, Set<string>>>()
    for (const entry of this.#perService) if (entry.other !== undefined && entry.other.values === undefined) unlisted.set(entry, await labelValuesOf(entry.metric, entry.other.label, gone))
    for (const [i, service] of services.entries()) {
      if (i > 0 && i % REMOVALS_PER_TURN === 0) await new Promise((resolve) => setImmediate(resolve))
      for (const entry of this.#perService) {
        const { metric, other } = entry
        if (other === undefined) metric.remove({ service })
        else for (const value of other.values ?? unlisted.get(entry)?.get(service) ?? []) metric.remove({ service, [other.label]: value })
      }
    }
  }
}

/** The values of `label` in the metric's series of these versions, by version. */
async function labelValuesOf(metric: Metric<string> | VersionHistogram | VersionCounter<string>, label: string, services: ReadonlySet<string>): Promise<Map<string, Set<string>>> {
  const values = new Map<string, Set<string>>()
  for (const { labels } of (await metric.get()).values) {
    const service = labels['service']
    const value = labels[label]
    if (typeof service !== 'string' || !services.has(service) || value === undefined) continue
    let ofService = values.get(service)
    if (ofService === undefined) values.set(service, (ofService = new Set()))
    ofService.add(String(value))
  }
  return values
}
