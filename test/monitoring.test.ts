import t from 'tap'
import { readFileSync } from 'node:fs'
import { parse } from 'yaml'
import { Metrics } from '../src/metrics.ts'

const metrics = new Metrics({ services: () => [], tokens: () => 0, versions: () => 0 }, { version: '0.0.0' })
const known = new Set(metrics.registry.getMetricsAsArray().map((m) => m.name))

/** Metric names a PromQL expression uses, with histogram suffixes mapped to their family. */
function metricNames(expr: string): string[] {
  return [...expr.matchAll(/\b((?:maitre|process|nodejs)_[a-z_]+)\b/g)].map((m) => (m[1] as string).replace(/_(bucket|sum|count)$/, ''))
}

t.test('every metric the Grafana dashboard uses exists', async (t) => {
  const dashboard = JSON.parse(readFileSync('k8s/monitoring/dashboard.json', 'utf8')) as { panels: { title: string; targets: { expr: string }[] }[]; templating: { list: { query: string }[] } }
  const exprs = [...dashboard.panels.flatMap((p) => p.targets.map((x) => x.expr)), ...dashboard.templating.list.map((v) => v.query)]
  const used = new Set(exprs.flatMap(metricNames))
  t.ok(used.size >= 15, `${used.size} metrics on the dashboard`)
  for (const name of used) t.ok(known.has(name), `${name} exists`)
  for (const needed of ['Request rate', 'Error', 'Latency percentiles', 'Queue', 'Instances vs target', 'Cold starts']) {
    t.ok(dashboard.panels.some((p) => p.title.includes(needed)), `a panel for ${needed}`)
  }
  t.ok(exprs.some((e) => e.includes('$service')), 'panels filter per version')
})

t.test('every metric the alert rules use exists, and the rules are well-formed', async (t) => {
  const rule = parse(readFileSync('k8s/monitoring/prometheusrule.yaml', 'utf8')) as { kind: string; spec: { groups: { rules: { alert: string; expr: string; labels: { severity: string } }[] }[] } }
  t.equal(rule.kind, 'PrometheusRule')
  const rules = rule.spec.groups.flatMap((g) => g.rules)
  t.same(
    ['MaitreDeploymentError', 'MaitreQueueRejections', 'MaitreScalingAtMaxInstances', 'MaitreSlowColdStarts'].filter((a) => !rules.some((r) => r.alert === a)),
    [],
    'alerts for deployment errors, queue rejections, scaling at max and slow cold starts',
  )
  for (const r of rules) {
    t.ok(['info', 'warning', 'critical'].includes(r.labels.severity), `${r.alert} has a severity`)
    for (const name of metricNames(r.expr)) t.ok(known.has(name), `${r.alert}: ${name} exists`)
  }
})

t.test('alerts that must fire on a version\'s first event read series that exist before it', async (t) => {
  // A per-version counter or histogram is born with the version's first event, already past 0:
  // increase() and rate() never see that first sample move, so an alert on them stays silent
  // for a version that fails once, or cold-starts once.
  const rule = parse(readFileSync('k8s/monitoring/prometheusrule.yaml', 'utf8')) as { spec: { groups: { rules: { alert: string; expr: string }[] }[] } }
  const rules = new Map(rule.spec.groups.flatMap((g) => g.rules).map((r) => [r.alert, r.expr]))
  const bornWithEvent = /(?:rate|increase)\(\s*maitre_(?:deployment_errors_total|cold_starts_total|cold_start_duration_seconds_bucket)\b/
  for (const alert of ['MaitreDeploymentError', 'MaitreSlowColdStarts']) {
    const expr = rules.get(alert) ?? ''
    t.notMatch(expr, bornWithEvent, `${alert} does not rate a per-version series born with the event`)
  }
  t.match(rules.get('MaitreDeploymentError'), /maitre_deployment_error\b/, 'the deployment error alert reads the state gauge')
  t.match(rules.get('MaitreSlowColdStarts'), /maitre_router_cold_start_duration_seconds_bucket/, 'slow cold starts read the router-wide histogram')
  const registry = new Metrics({ services: () => [], tokens: () => 0, versions: () => 0 }, { version: '0.0.0' })
  t.match(await registry.render(), /^maitre_router_cold_start_duration_seconds_count 0$/m, 'which a router exports from its start')
})
