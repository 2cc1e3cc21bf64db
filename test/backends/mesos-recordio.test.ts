import t from 'tap'
import fc from 'fast-check'
import { RecordIoParser, recordOf } from '../../src/backends/mesos/recordio.ts'

const heartbeat = '{"type":"HEARTBEAT"}'

t.test("the reference's example: 20\\n and a heartbeat", async (t) => {
  const parser = new RecordIoParser()
  t.same(parser.push(Buffer.from(`20\n${heartbeat}`)), [heartbeat])
  t.equal(parser.pendingBytes, 0)
})

t.test('a record split across chunks, in its length and in its body, comes out whole once', async (t) => {
  const parser = new RecordIoParser()
  const bytes = recordOf(heartbeat)
  t.same(parser.push(bytes.subarray(0, 1)), [], 'half a length line: nothing yet')
  t.same(parser.push(bytes.subarray(1, 8)), [], 'length in, body not whole')
  t.same(parser.push(bytes.subarray(8)), [heartbeat])
})

t.test('several records in one chunk, and one left half-read for the next', async (t) => {
  const parser = new RecordIoParser()
  const offers = '{"type":"OFFERS","offers":{"offers":[]}}'
  const all = Buffer.concat([recordOf(heartbeat), recordOf(offers), recordOf(heartbeat)])
  t.same(parser.push(all.subarray(0, all.length - 3)), [heartbeat, offers])
  t.same(parser.push(all.subarray(all.length - 3)), [heartbeat])
})

t.test('the length counts UTF-8 bytes, and a multi-byte character split across chunks decodes whole', async (t) => {
  const parser = new RecordIoParser()
  const text = '{"type":"ERROR","error":{"message":"café ☕ 𝄞"}}'
  const bytes = recordOf(text)
  t.equal(Number(bytes.toString('latin1').split('\n')[0]), Buffer.byteLength(text), 'bytes, not characters')
  const cut = bytes.indexOf(Buffer.from('☕')) + 1 // inside the 3-byte character
  t.same(parser.push(bytes.subarray(0, cut)), [])
  t.same(parser.push(bytes.subarray(cut)), [text])
})

t.test('a stream that is not RecordIO is refused, never read as records', async (t) => {
  t.throws(() => new RecordIoParser().push(Buffer.from('HTTP/1.1 200 OK\r\n')), { name: 'RecordIoError' }, 'a length line that is not digits')
  t.throws(() => new RecordIoParser().push(Buffer.from('0\n')), { name: 'RecordIoError' }, 'a zero length')
  t.throws(() => new RecordIoParser().push(Buffer.from('9'.repeat(30))), { name: 'RecordIoError' }, 'a length line with no end in sight')
})

t.test('any records, cut at any points, parse to the same records in order', async (t) => {
  fc.assert(
    fc.property(fc.array(fc.string({ minLength: 1, unit: 'binary' }), { minLength: 1, maxLength: 8 }), fc.array(fc.nat(), { maxLength: 10 }), (records, cuts) => {
      const stream = Buffer.concat(records.map(recordOf))
      const points = [...new Set(cuts.map((c) => c % (stream.length + 1)))].sort((a, b) => a - b)
      const parser = new RecordIoParser()
      const out: string[] = []
      let from = 0
      for (const point of [...points, stream.length]) {
        out.push(...parser.push(stream.subarray(from, point)))
        from = point
      }
      return JSON.stringify(out) === JSON.stringify(records) && parser.pendingBytes === 0
    }),
    { numRuns: 300 },
  )
  t.pass('300 random streams and cuts')
})
