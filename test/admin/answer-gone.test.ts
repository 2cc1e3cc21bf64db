/**
 * A long answer (a scrape, a listing) whose reader went away stops being written and its
 * handler ends: over HTTP/1.1 when the reader left before the writing began, over HTTP/2 when
 * it cancelled the stream midway (Node's compatibility response has no `destroyed`, and a
 * write to a closed stream only returns false).
 */
import t, { type Test } from 'tap'
import { createServer, request, type IncomingMessage, type ServerResponse } from 'node:http'
import { connect, createServer as createH2Server, type Http2ServerRequest, type Http2ServerResponse } from 'node:http2'
import type { AddressInfo } from 'node:net'
import { Metrics, statusClass } from '../../src/metrics.ts'
import { sendMetrics } from '../../src/admin/send-metrics.ts'
import { sendJsonInPieces } from '../../src/admin/http.ts'

function bigMetrics(): Metrics {
  const metrics = new Metrics({ services: () => [], tokens: () => 0, versions: () => 0 }, { version: 'test' })
  for (let i = 0; i < 3000; i++) {
    const service = `v${i}`
    metrics.requests.inc({ service, code: statusClass(200) })
    for (const histogram of [metrics.requestDuration, metrics.queueWait, metrics.backendResponse]) histogram.observe({ service }, 0.02)
  }
  return metrics
}

const listing = Array.from({ length: 20_000 }, (_, i) => ({ 'service-id': `maitre-v${i}`, 'service-description': { cmd: `run ${i}`, mem: 128, env: { A: 'x'.repeat(50) } } }))

type Send = (res: ServerResponse) => Promise<void>
const senders: readonly (readonly [string, () => Send])[] = [
  ['a scrape', () => { const metrics = bigMetrics(); return (res) => sendMetrics(res, metrics, 'cid') }],
  ['a listing', () => (res) => sendJsonInPieces(res, 200, listing, 'cid')],
]

/** Resolves with whether the handler ended within the bound (a hung one never does). */
function endsWithin(handler: Promise<void>, ms: number): Promise<boolean> {
  return Promise.race([handler.then(() => true), new Promise<boolean>((resolve) => setTimeout(() => resolve(false), ms).unref())])
}

async function listen(t: Test, server: { listen: (port: number, host: string, cb: () => void) => unknown; address: () => unknown; close: (cb: () => void) => unknown }): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())))
  return (server.address() as AddressInfo).port
}

for (const [what, make] of senders) {
  t.test(`${what} for an HTTP/1.1 reader who left before it began is not written, and its handler ends`, async (t) => {
    const send = make()
    let handler!: Promise<void>
    const left = new Promise<void>((resolveLeft) => {
      const server = createServer((req: IncomingMessage, res: ServerResponse) => {
        // The answer is ready only once the reader has gone (building a large one takes a while).
        res.once('close', () => {
          handler = send(res)
          resolveLeft()
        })
        req.socket.destroy()
      })
      void listen(t, server).then((port) => request({ host: '127.0.0.1', port, path: '/' }).on('error', () => undefined).end())
    })
    await left
    t.ok(await endsWithin(handler, 5000), 'the handler ended')
  })

  t.test(`${what} for an HTTP/2 reader who cancelled midway stops, and its handler ends`, async (t) => {
    const send = make()
    let handler!: Promise<void>
    const started = new Promise<void>((resolveStarted) => {
      const server = createH2Server((req: Http2ServerRequest, res: Http2ServerResponse) => {
        handler = send(res as unknown as ServerResponse)
        resolveStarted()
      })
      void listen(t, server).then((port) => {
        const client = connect(`http://127.0.0.1:${port}`)
        client.on('error', () => undefined)
        const stream = client.request({ ':path': '/' })
        stream.on('error', () => undefined)
        // Read the first bytes, then cancel.
        stream.once('data', () => {
          stream.close()
          client.close()
        })
      })
    })
    await started
    t.ok(await endsWithin(handler, 5000), 'the handler ended')
  })
}
