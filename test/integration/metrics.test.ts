import t from 'tap'
import { request as httpRequest } from 'node:http'
import { capturedLog } from '../fixtures/captured-log.ts'
import { call, createToken, kitchenToken, startRouter, waitFor, type Router } from '../fixtures/router.ts'

async function scrape(router: Router): Promise<string> {
  const reply = await call(`${router.url}/metrics`, { headers: { accept: 'text/plain' } })
  t.match(reply.headers['content-type'], 'text/plain')
  return reply.text
}

/** The value of one series, or undefined when it is absent. */
function value(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `))
  return line === undefined ? undefined : Number(line.slice(series.length + 1))
}

t.test('/metrics tells what happened, in Prometheus text format', async (t) => {
  const router = await startRouter(t)
  t.equal(value(await scrape(router), 'maitre_router_cold_start_duration_seconds_count'), 0, 'the router-wide cold-start series is there from the start, at 0')
  await createToken(router, 'kitchen', kitchenToken({ 'min-instances': 2 }))
  const h = { 'x-waiter-token': 'kitchen' }
  t.equal((await call(`${router.url}/request-info`, { headers: h })).status, 200)
  const id = (await call(`${router.url}/service-id`, { headers: h })).text
  // A 503 never ejects the last routable instance, so the busy answer waits for the second one.
  await waitFor('two healthy instances', async () => (value(await scrape(router), `maitre_instances{service="${id}",state="healthy"}`) === 2 ? true : undefined))
  await call(`${router.url}/request-info`, { headers: { ...h, 'x-kitchen-act-busy': 'true' } })
  await createToken(router, 'broken', { cmd: 'exit 2', cpus: 0.1, mem: 64, version: 'v1' })
  await call(`${router.url}/x`, { headers: { 'x-waiter-token': 'broken' } })

  const text = await scrape(router)
  const s = `service="${id}"`
  t.equal(value(text, `maitre_requests_total{${s},code="2xx"}`), 1)
  t.equal(value(text, `maitre_requests_total{${s},code="5xx"}`), 1, 'the backend’s 503')
  t.equal(value(text, `maitre_cold_starts_total{${s}}`), 1)
  t.equal(value(text, `maitre_cold_start_duration_seconds_count{${s}}`), 1)
  t.equal(value(text, `maitre_request_duration_seconds_count{${s}}`), 2)
  t.equal(value(text, `maitre_backend_response_seconds_count{${s}}`), 2)
  t.equal(value(text, `maitre_ejections_total{${s}}`), 1, 'the 503 ejected its instance')
  t.equal(value(text, `maitre_outstanding_requests{${s}}`), 0)
  t.equal(value(text, `maitre_queued_requests{${s}}`), 0)
  t.equal(value(text, 'maitre_backend_operations_total{backend="local",operation="ensureService",result="ok"}'), 2)
  t.ok((value(text, 'maitre_backend_operation_duration_seconds_count{backend="local",operation="ensureService"}') ?? 0) >= 2)
  t.equal(value(text, 'maitre_tokens'), 2)
  t.equal(value(text, 'maitre_services'), 2)
  t.match(text, /maitre_deployment_errors_total\{service="maitre-[0-9a-f]{32}",reason="invalid-startup-command"\} 1/, "the reason is the error's class, a bounded label")
  t.match(text, /maitre_queue_rejections_total\{service="maitre-[0-9a-f]{32}",reason="deployment-error"\} 1/)
  // For alerts: a state that holds while the version fails (a counter born at 1 is a series
  // increase() never sees move), and a cold-start histogram that exists from the router's start.
  t.match(text, /maitre_deployment_error\{service="maitre-[0-9a-f]{32}",reason="invalid-startup-command"\} 1/, 'the deployment error as a state')
  t.notMatch(text, new RegExp(`maitre_deployment_error\\{${s}`), 'none for the healthy version')
  t.equal(value(text, 'maitre_router_cold_start_duration_seconds_count'), 1, 'the router-wide cold-start histogram counts it')
  t.equal(value(text, `maitre_max_instances{${s}}`), 500, 'the ceiling its target is held to')
  t.ok((value(text, `maitre_target_instances{${s}}`) ?? 0) >= 1, 'the single router decides, so it exports the target')
  t.match(text, /maitre_build_info\{version="\d+\.\d+\.\d+",node_version="v24\.[^"]+"\} 1/)
  t.match(text, /^process_cpu_seconds_total /m, 'Node process metrics')
  t.match(text, /^nodejs_eventloop_lag_seconds /m)
  const buckets = [...text.matchAll(new RegExp(`maitre_queue_wait_seconds_bucket\\{le="([0-9.]+)",${s.replace(/[-]/g, '\\-')}\\}`, 'g'))].map((m) => Number(m[1]))
  t.ok(Math.max(...buckets) >= 120, `histogram buckets reach two minutes (${Math.max(...buckets)} s)`)
  for (const line of text.split('\n').filter((l) => l.startsWith('# TYPE maitre_'))) {
    const [, , name, type] = line.split(' ')
    if (type === 'counter') t.ok(name?.endsWith('_total'), `${name} is a _total counter`)
    if (type === 'histogram') t.ok(name?.endsWith('_seconds'), `${name} is in seconds`)
  }
})

t.test('a cold start longer than the queue timeout is in the cold-start histograms with the time it waited: the slowest cold starts are not the ones they miss', async (t) => {
  const router = await startRouter(t)
  // The token's queue timeout (the service owner's), 700 ms.
  await createToken(router, 'slow', kitchenToken({ 'queue-timeout-ms': 700 }, '--start-up-sleep-ms 20000'))
  const h = { 'x-waiter-token': 'slow' }
  const reply = await call(`${router.url}/request-info`, { headers: h })
  t.equal(reply.status, 503, 'it ran out of queue time')
  const id = (await call(`${router.url}/service-id`, { headers: h })).text
  const text = await scrape(router)
  const s = `service="${id}"`
  t.equal(value(text, `maitre_cold_starts_total{${s}}`), 1)
  t.equal(value(text, `maitre_cold_start_duration_seconds_count{${s}}`), 1, 'the version’s histogram has it')
  t.ok((value(text, `maitre_cold_start_duration_seconds_sum{${s}}`) ?? 0) >= 0.7, 'with the time it waited, at least the queue timeout')
  t.equal(value(text, 'maitre_router_cold_start_duration_seconds_count'), 1, 'and the router-wide one, which the slow-cold-start alert reads')
  // A client that chose a short wait (polling) says little of how long the start takes: not observed.
  t.equal((await call(`${router.url}/request-info`, { headers: { ...h, 'x-waiter-queue-timeout': '100' } })).status, 503)
  const after = await scrape(router)
  t.equal(value(after, `maitre_cold_starts_total{${s}}`), 2, 'counted as a cold start')
  t.equal(value(after, `maitre_cold_start_duration_seconds_count{${s}}`), 1, 'but not in the duration histogram')
})

t.test('an answer cut after its status line went (the instance died mid-answer) counts as the failure it was, 5xx, and is logged with its cid, not as a 2xx success', async (t) => {
  const { log, lines } = capturedLog()
  const router = await startRouter(t, {}, { log })
  await createToken(router, 'dies', kitchenToken({ 'min-instances': 2 }))
  const h = { 'x-waiter-token': 'dies', 'x-cid': 'cut-cid' }
  const id = (await call(`${router.url}/service-id`, { headers: h })).text
  const cut = await new Promise<string>((resolve) => {
    const req = httpRequest(`${router.url}/die-mid-answer`, { headers: h }, (res) => {
      res.resume()
      res.on('error', () => resolve(`cut after ${res.statusCode}`))
      res.on('end', () => resolve('complete'))
    })
    req.on('error', (err) => resolve(`error ${err.message}`))
    req.end()
  })
  t.equal(cut, 'cut after 200', 'the client saw a 200, then its answer cut')
  const text = await scrape(router)
  t.equal(value(text, `maitre_requests_total{service="${id}",code="5xx"}`), 1, 'counted as a failure')
  t.equal(value(text, `maitre_requests_total{service="${id}",code="2xx"}`), undefined, 'not as a success')
  const failed = await waitFor('the failure logged', () => lines.find((l) => l['msg'] === 'request failed' && l['cid'] === 'cut-cid'), 5000)
  t.match(failed, { cut: true, sent: 200, status: 502, instance: /./ }, 'with the status the client saw and what it should have been')
})

t.test('no series of a garbage-collected version remains', async (t) => {
  const router = await startRouter(t, { 'scaler.gcIntervalMs': 300 })
  const meta = { 'fallback-period-secs': 0, 'stale-timeout-mins': 0 }
  await createToken(router, 'moving', kitchenToken(meta))
  const h = { 'x-waiter-token': 'moving' }
  await call(`${router.url}/request-info`, { headers: h })
  const oldId = (await call(`${router.url}/service-id`, { headers: h })).text
  t.match(await scrape(router), `service="${oldId}"`, 'the version has series while it lives')
  await createToken(router, 'moving', kitchenToken({ ...meta, version: 'v2' }))
  await call(`${router.url}/request-info`, { headers: h })
  await waitFor('the old version to be collected', async () => ((await call(`${router.url}/apps/${oldId}`)).status === 404 ? true : undefined), 10000)
  // The record goes first; the series once the collection is over.
  const text = await waitFor('the collection to be counted', async () => {
    const scraped = await scrape(router)
    return value(scraped, 'maitre_gc_deletions_total{reason="stale"}') === 1 ? scraped : undefined
  })
  t.notMatch(text, oldId, 'no series mentions the collected version')
})

t.test('DELETE /apps/{id} removes the version\'s series as GC does', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'doomed', kitchenToken())
  const h = { 'x-waiter-token': 'doomed' }
  await call(`${router.url}/request-info`, { headers: h })
  const id = (await call(`${router.url}/service-id`, { headers: h })).text
  t.match(await scrape(router), `service="${id}"`, 'the version has series while it runs')
  t.equal((await call(`${router.url}/apps/${id}`, { method: 'DELETE' })).status, 200)
  const text = await waitFor('its series to go', async () => {
    const scraped = await scrape(router)
    return scraped.includes(id) ? undefined : scraped
  })
  t.notMatch(text, id, 'no series mentions the deleted version')
})

t.test('DELETE /apps/{id} of a version that never ran (suspended before its first request) removes the series its refused requests made', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'held', kitchenToken())
  const h = { 'x-waiter-token': 'held' }
  const id = (await call(`${router.url}/service-id`, { headers: h })).text
  t.equal((await call(`${router.url}/apps/${id}/suspend`, { method: 'POST' })).status, 200)
  t.equal((await call(`${router.url}/request-info`, { headers: h })).status, 503, 'refused: suspended')
  t.match(await scrape(router), `maitre_requests_total{service="${id}",code="5xx"} 1`, 'the refusal made series')
  t.equal((await call(`${router.url}/apps/${id}`, { method: 'DELETE' })).status, 404, 'Waiter’s answer for a version that was not running')
  // The backend never ran it, so no report of it gone comes to remove them.
  t.notMatch(await scrape(router), id, 'no series mentions the deleted version')
})

t.test('a version deleted with a request under way: what that request records when it ends does not bring the version’s series back; a version started again has its series again', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'doomed', kitchenToken())
  const h = { 'x-waiter-token': 'doomed' }
  t.equal((await call(`${router.url}/request-info`, { headers: h })).status, 200)
  const id = (await call(`${router.url}/service-id`, { headers: h })).text
  const pending = call(`${router.url}/sleep?sleep-ms=1500`, { headers: h })
  await waitFor('the request under way', async () => ((await call(`${router.url}/apps/${id}`)).json<{ 'request-metrics': { 'in-flight': number } }>()['request-metrics']['in-flight'] === 1 ? true : undefined))
  t.equal((await call(`${router.url}/apps/${id}`, { method: 'DELETE' })).status, 200)
  await pending // it ended (cut off with its instance) and recorded what it did
  t.notMatch(await scrape(router), id, 'no series mentions the deleted version')
  t.equal((await call(`${router.url}/request-info`, { headers: h })).status, 200, 'a request starts it again')
  t.equal(value(await scrape(router), `maitre_requests_total{service="${id}",code="2xx"}`), 1, 'and its series count from there')
})
