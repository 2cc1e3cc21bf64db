import t, { type Test } from 'tap'
import fc from 'fast-check'
import { createServer, request } from 'node:http'
import type { AddressInfo } from 'node:net'
import { jsonPieces } from '../../src/admin/json-pieces.ts'
import { sendJsonInPieces } from '../../src/admin/http.ts'

const joined = (value: unknown): string => [...jsonPieces(value)].join('')

t.test('the pieces, joined, are exactly JSON.stringify’s text with two-space indentation', async (t) => {
  const anything = fc.anything({ withDate: true, withMap: true, withSet: true, withBoxedValues: true, withNullPrototype: true, withTypedArray: true, withSparseArray: true, maxDepth: 4 })
  const mismatch = fc.check(fc.property(anything, (value) => joined(value) === (JSON.stringify(value, null, 2) ?? 'null')), { numRuns: 2000 })
  t.notOk(mismatch.failed, mismatch.failed ? `differs for ${fc.stringify(mismatch.counterexample)}` : '2,000 random values')
  const awkward = {
    skipped: undefined,
    fn: () => 1,
    list: [undefined, () => 1, Symbol('s'), { toJSON: () => undefined }, new Date(0), 'a\nb'],
    toJSONs: { whole: { toJSON: (key: string) => `named ${key}` }, gone: { toJSON: () => undefined } },
    nested: { deeper: { deepest: [1, { x: [] }], empty: {} } },
    empty: [],
    deep: { state: { services: Array.from({ length: 40 }, (_, i) => ({ id: i, gone: undefined, tags: ['x', undefined], map: Object.fromEntries(Array.from({ length: 20 }, (_, j) => [`k${j}`, j])) })) } },
  }
  t.equal(joined(awkward), JSON.stringify(awkward, null, 2), 'entries JSON skips, toJSON with its key, escaped newlines')
  t.equal(joined({ toJSON: () => ({ a: [1, 2] }) }), JSON.stringify({ toJSON: () => ({ a: [1, 2] }) }, null, 2), 'a toJSON at the top')
})

t.test('a listing over many entries is written in many pieces, entry by entry', async (t) => {
  const tracker = { 'router-id': 'r1', state: Object.fromEntries(Array.from({ length: 1000 }, (_, i) => [`v${i}`, { load: { inFlight: i }, slots: [i, i + 1] }])) }
  t.ok([...jsonPieces(tracker)].length > 2000, 'a map at the second level: a piece or two per entry')
  const scheduler = { 'router-id': 'r1', state: { kind: 'local', services: Array.from({ length: 1000 }, (_, i) => ({ id: `v${i}`, instances: [] })) } }
  t.ok([...jsonPieces(scheduler)].length > 2000, 'a list at the third level too')
})

async function serve(t: Test, body: unknown): Promise<number> {
  const server = createServer((req, res) => void sendJsonInPieces(res, 200, body, 'cid-1'))
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())))
  return (server.address() as AddressInfo).port
}

t.test('a large answer is sent chunked as it is written and reads as sendJson’s', async (t) => {
  const body = Array.from({ length: 5000 }, (_, i) => ({ 'service-id': `maitre-v${i}`, 'service-description': { cmd: `run ${i}`, mem: 128 } }))
  const port = await serve(t, body)
  const answer = await new Promise<{ headers: Record<string, unknown>; text: string }>((resolve, reject) => {
    request({ host: '127.0.0.1', port, path: '/apps' }, (res) => {
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => (text += chunk))
      res.on('end', () => resolve({ headers: res.headers, text }))
    }).on('error', reject).end()
  })
  t.equal(answer.headers['transfer-encoding'], 'chunked')
  t.equal(answer.headers['content-type'], 'application/json; charset=utf-8')
  t.equal(answer.headers['x-cid'], 'cid-1')
  t.equal(answer.text, `${JSON.stringify(body, null, 2)}\n`)
})

t.test('a large answer lets requests be served while it is written', async (t) => {
  const body = Array.from({ length: 5000 }, (_, i) => ({ id: i }))
  let written = false
  let servedMeanwhile = false
  const res = { writeHead: () => res, write: () => true, end: () => (written = true), destroyed: false, on: () => res, off: () => res }
  const sending = sendJsonInPieces(res as never, 200, body, 'cid')
  setImmediate(() => (servedMeanwhile = !written))
  await sending
  t.ok(written && servedMeanwhile)
})
