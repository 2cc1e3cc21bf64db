import t, { type Test } from 'tap'
import { createServer, request, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { Metrics, statusClass } from '../../src/metrics.ts'
import { sendMetrics } from '../../src/admin/send-metrics.ts'

function metricsWith(versions: number): Metrics {
  const metrics = new Metrics({ services: () => [], tokens: () => 0, versions: () => 0 }, { version: 'test' })
  for (let i = 0; i < versions; i++) {
    const service = `v${i}`
    metrics.requests.inc({ service, code: statusClass(200) })
    for (const histogram of [metrics.requestDuration, metrics.queueWait, metrics.backendResponse]) histogram.observe({ service }, 0.02)
  }
  return metrics
}

async function serve(t: Test, metrics: Metrics): Promise<number> {
  const server: Server = createServer((req, res) => void sendMetrics(res, metrics, 'cid-1'))
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())))
  return (server.address() as AddressInfo).port
}

function get(port: number): Promise<{ status: number; headers: Record<string, unknown>; body: string }> {
  return new Promise((resolve, reject) => {
    request({ host: '127.0.0.1', port, path: '/metrics' }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => (body += chunk))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }))
    })
      .on('error', reject)
      .end()
  })
}

t.test('a large scrape is sent metric by metric and reads exactly as the whole text', async (t) => {
  const metrics = metricsWith(2000)
  const port = await serve(t, metrics)
  const answer = await get(port)
  t.equal(answer.status, 200)
  t.equal(answer.headers['transfer-encoding'], 'chunked', 'sent as it is written, not held whole for a length')
  t.equal(answer.headers['content-type'], metrics.registry.contentType)
  t.equal(answer.headers['x-cid'], 'cid-1')
  const series = (text: string): string[] => text.split('\n').filter((line) => line.startsWith('maitre_'))
  t.ok(answer.body.length > 1_000_000, `${answer.body.length} bytes`)
  t.same(series(answer.body), series(await metrics.render()), 'every series, in the registry’s order')
  t.ok(answer.body.endsWith('\n') && !answer.body.endsWith('\n\n'))
})

t.test('a scraper that goes away mid-answer costs the router nothing: the next scrape is whole', async (t) => {
  const metrics = metricsWith(2000)
  const port = await serve(t, metrics)
  await new Promise<void>((resolve) => {
    const req = request({ host: '127.0.0.1', port, path: '/metrics' }, (res) => {
      res.once('data', () => {
        req.destroy()
        resolve()
      })
    })
    req.on('error', () => undefined).end()
  })
  const answer = await get(port)
  t.equal(answer.status, 200)
  t.match(answer.body, 'maitre_requests_total{service="v1999",code="2xx"} 1')
})
