/**
 * Request trailers reach the instance: after an HTTP/1.1 chunked body (announced or not), and
 * after an HTTP/2 body (to an h2c instance always; to an HTTP/1.1 one when announced).
 */
import t from 'tap'
import { request as httpRequest } from 'node:http'
import { connect as connectH2, type ClientHttp2Session } from 'node:http2'
import { createToken, kitchenToken, startRouter, type Router } from '../fixtures/router.ts'

const h2cToken = (): Record<string, unknown> => kitchenToken({ 'backend-proto': 'h2c', 'health-check-proto': 'h2c', version: 'h2c' }, '--h2c')

interface Seen {
  readonly body: string
  readonly trailers: Record<string, string>
  readonly httpVersion: string
}

/** A chunked HTTP/1.1 POST whose body ends with trailers; announced with a Trailer field or not. */
function chunkedWithTrailers(router: Router, token: string, trailers: Record<string, string>, announce: boolean): Promise<Seen> {
  return new Promise((resolve, reject) => {
    const { port } = new URL(router.url)
    const headers: Record<string, string> = { 'x-waiter-token': token, 'content-type': 'text/plain' }
    if (announce) headers['trailer'] = Object.keys(trailers).join(', ')
    const req = httpRequest({ host: '127.0.0.1', port, method: 'POST', path: '/request-info', headers }, (res) => {
      let text = ''
      res.on('data', (c: Buffer) => (text += c.toString()))
      res.on('end', () => (res.statusCode === 200 ? resolve(JSON.parse(text) as Seen) : reject(new Error(`${res.statusCode}: ${text}`))))
    })
    req.on('error', reject)
    req.write('part one, ')
    req.write('part two')
    req.addTrailers(trailers)
    req.end()
  })
}

t.test('an HTTP/1.1 chunked body’s trailers reach HTTP/1.1 and h2c instances, announced or not; hop-by-hop fields among them do not', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'ones', kitchenToken())
  await createToken(router, 'twos', h2cToken())
  for (const token of ['ones', 'twos']) {
    for (const announce of [true, false]) {
      const seen = await chunkedWithTrailers(router, token, { 'x-checksum': 'sha256=abc', 'x-row-count': '2' }, announce)
      t.equal(seen.body, 'part one, part two', `${token}, ${announce ? 'announced' : 'unannounced'}: the body whole`)
      t.same(seen.trailers, { 'x-checksum': 'sha256=abc', 'x-row-count': '2' }, `${token}, ${announce ? 'announced' : 'unannounced'}: the trailers after it`)
    }
  }
  const filtered = await chunkedWithTrailers(router, 'ones', { 'x-kept': 'yes', 'keep-alive': 'timeout=5' }, false)
  t.same(filtered.trailers, { 'x-kept': 'yes' }, 'a connection-specific trailer field is not relayed')
})

/** An HTTP/2 POST whose body ends with trailers, announced with a Trailer field or not. */
function h2WithTrailers(session: ClientHttp2Session, token: string, announce: boolean): Promise<Seen> {
  return new Promise<Seen>((resolve, reject) => {
    const headers: Record<string, string> = { ':method': 'POST', ':path': '/request-info', 'x-waiter-token': token, 'content-type': 'text/plain', 'content-length': '11' }
    if (announce) headers['trailer'] = 'x-digest'
    const stream = session.request(headers, { waitForTrailers: true })
    stream.on('wantTrailers', () => stream.sendTrailers({ 'x-digest': 'md5=xyz' }))
    let text = ''
    stream.on('data', (c: Buffer) => (text += c.toString()))
    stream.on('end', () => resolve(JSON.parse(text) as Seen))
    stream.on('error', reject)
    stream.end('over http/2')
  })
}

t.test('an HTTP/2 body’s trailers reach h2c instances always, and HTTP/1.1 ones (as a chunked body) when announced', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'ones', kitchenToken())
  await createToken(router, 'twos', h2cToken())
  const session = connectH2(router.url)
  t.teardown(() => session.close())
  for (const token of ['ones', 'twos']) {
    const seen = await h2WithTrailers(session, token, true)
    t.equal(seen.body, 'over http/2', `${token}: the body`)
    t.same(seen.trailers, { 'x-digest': 'md5=xyz' }, `${token}, announced: the trailers, spoken ${seen.httpVersion === '2.0' ? 'HTTP/2' : 'HTTP/1.1'} to the instance`)
  }
  const unannounced = await h2WithTrailers(session, 'twos', false)
  t.same(unannounced.trailers, { 'x-digest': 'md5=xyz' }, 'twos, unannounced: HTTP/2 to HTTP/2 carries them all the same')
  const dropped = await h2WithTrailers(session, 'ones', false)
  t.equal(dropped.body, 'over http/2', 'ones, unannounced: the body arrives (with its length, sent as it came)')
  t.same(dropped.trailers, {}, 'and the unannounced trailers are dropped, as RFC 9110 §6.5.1 allows (documented)')
})
