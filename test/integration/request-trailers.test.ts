/**
 * Request trailers reach the instance: after an HTTP/1.1 chunked body (announced or not), and
 * after an HTTP/2 body (to an HTTP/2 instance always; to an HTTP/1.1 one when announced); the
 * fields a trailer section may not carry, and those the router sets itself, never do. A body
 * without a length stays framed whatever the method: nothing in it can pass for a request.
 */
import t from 'tap'
import { request as httpRequest } from 'node:http'
import { connect as connectH2, type ClientHttp2Session } from 'node:http2'
import { connect } from 'node:net'
import { everyProto } from '../fixtures/protocols.ts'
import { startRouter, type Router } from '../fixtures/router.ts'

interface Seen {
  readonly method: string
  readonly body: string
  readonly trailers: Record<string, string>
  readonly headers: Record<string, string>
  readonly httpVersion: string
}

/** A chunked HTTP/1.1 request whose body ends with trailers; announced with a Trailer field or not. */
function chunkedWithTrailers(router: Router, token: string, trailers: Record<string, string>, announce: boolean, method = 'POST'): Promise<Seen> {
  return new Promise((resolve, reject) => {
    const { port } = new URL(router.url)
    const headers: Record<string, string> = { 'x-waiter-token': token, 'content-type': 'text/plain', 'transfer-encoding': 'chunked' }
    if (announce) headers['trailer'] = Object.keys(trailers).join(', ')
    const req = httpRequest({ host: '127.0.0.1', port, method, path: '/request-info', headers }, (res) => {
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

t.test('an HTTP/1.1 chunked body’s trailers reach instances of every backend-proto, announced or not', async (t) => {
  const router = await startRouter(t)
  for (const token of await everyProto(router, t.testdir())) {
    for (const announce of [true, false]) {
      const seen = await chunkedWithTrailers(router, token, { 'x-checksum': 'sha256=abc', 'x-row-count': '2' }, announce)
      t.equal(seen.body, 'part one, part two', `${token}, ${announce ? 'announced' : 'unannounced'}: the body whole`)
      t.same(seen.trailers, { 'x-checksum': 'sha256=abc', 'x-row-count': '2' }, `${token}, ${announce ? 'announced' : 'unannounced'}: the trailers after it`)
    }
  }
})

t.test('trailers cannot carry what RFC 9110 keeps out of them, nor forge what the router sets: principal, credentials, x-cid, forwarding', async (t) => {
  const router = await startRouter(t)
  await everyProto(router, t.testdir())
  const forged = {
    'x-kept': 'yes',
    'x-waiter-auth-principal': 'root',
    'x-waiter-token': 'other',
    authorization: 'Basic bWFsbG9yeTp4',
    cookie: 'x-waiter-auth=stolen',
    'x-cid': 'forged',
    host: 'elsewhere',
    'x-forwarded-for': '10.0.0.1',
    via: '1.1 nowhere',
    'content-type': 'text/evil',
    'keep-alive': 'timeout=5',
  }
  for (const token of ['http', 'h2c']) {
    const seen = await chunkedWithTrailers(router, token, forged, false)
    t.same(seen.trailers, { 'x-kept': 'yes' }, `${token}: only the harmless field arrives as a trailer`)
    t.not(seen.headers['x-cid'], 'forged', `${token}: x-cid is the router’s`)
  }
})

/** Raw bytes of one request on a fresh connection, and what came back by the time it closed. */
function raw(router: Router, bytes: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(Number(new URL(router.url).port), '127.0.0.1', () => socket.write(bytes))
    let text = ''
    socket.on('data', (c: Buffer) => (text += c.toString()))
    socket.on('close', () => resolve(text))
    socket.on('error', reject)
  })
}

t.test('a chunked body on a GET, DELETE or OPTIONS stays one request’s body: a request written inside it reaches no instance', async (t) => {
  const router = await startRouter(t)
  await everyProto(router, t.testdir())
  const smuggled = 'GET /request-info?smuggled=yes HTTP/1.1\r\nHost: x\r\nx-cid: SMUGGLED\r\nx-waiter-auth-principal: mallory\r\n\r\n'
  for (const method of ['GET', 'DELETE', 'OPTIONS']) {
    const chunk = `${smuggled.length.toString(16)}\r\n${smuggled}\r\n0\r\n\r\n`
    const answer = await raw(router, `${method} /request-info HTTP/1.1\r\nHost: x\r\nx-waiter-token: http\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n${chunk}`)
    const seen = JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4).replace(/^[0-9a-f]+\r\n/, '').replace(/\r\n0\r\n\r\n$/, '')) as Seen
    t.equal(seen.method, method, `${method}: the method as sent`)
    t.equal(seen.body, smuggled, `${method}: the inner "request" arrived as the body it is`)
    // The instance's next request on the router's kept-alive connection is a request of ours, answered as such.
    const next = await chunkedWithTrailers(router, 'http', { 'x-after': method }, false)
    t.equal(next.body, 'part one, part two', `${method}: the next request gets its own answer`)
    t.notMatch(next.headers['x-cid'] ?? '', /SMUGGLED/)
  }
})

/** An HTTP/2 request whose body ends with trailers, announced with a Trailer field or not. */
function h2WithTrailers(session: ClientHttp2Session, token: string, announce: boolean, method = 'POST'): Promise<Seen> {
  return new Promise<Seen>((resolve, reject) => {
    const headers: Record<string, string> = { ':method': method, ':path': '/request-info', 'x-waiter-token': token, 'content-type': 'text/plain', 'content-length': '11' }
    if (announce) headers['trailer'] = 'x-digest'
    const stream = session.request(headers, { waitForTrailers: true, endStream: false })
    stream.on('wantTrailers', () => stream.sendTrailers({ 'x-digest': 'md5=xyz' }))
    let text = ''
    stream.on('data', (c: Buffer) => (text += c.toString()))
    stream.on('end', () => resolve(JSON.parse(text) as Seen))
    stream.on('error', reject)
    stream.end('over http/2')
  })
}

t.test('an HTTP/2 body’s trailers reach HTTP/2 instances always, and HTTP/1.1 ones (as a chunked body) when announced', async (t) => {
  const router = await startRouter(t)
  const protos = await everyProto(router, t.testdir())
  const session = connectH2(router.url)
  t.teardown(() => session.close())
  for (const token of protos) {
    const seen = await h2WithTrailers(session, token, true)
    t.equal(seen.body, 'over http/2', `${token}: the body`)
    t.same(seen.trailers, { 'x-digest': 'md5=xyz' }, `${token}, announced: the trailers, spoken ${seen.httpVersion === '2.0' ? 'HTTP/2' : 'HTTP/1.1'} to the instance`)
  }
  const deleted = await h2WithTrailers(session, 'http', true, 'DELETE')
  t.equal(deleted.method, 'DELETE')
  t.equal(deleted.body, 'over http/2', 'a DELETE with a length and announced trailers: sent chunked, its body whole')
  t.same(deleted.trailers, { 'x-digest': 'md5=xyz' })
  for (const token of ['h2c', 'h2']) {
    const unannounced = await h2WithTrailers(session, token, false)
    t.same(unannounced.trailers, { 'x-digest': 'md5=xyz' }, `${token}, unannounced: HTTP/2 to HTTP/2 carries them all the same`)
  }
  for (const token of ['http', 'https']) {
    const dropped = await h2WithTrailers(session, token, false)
    t.equal(dropped.body, 'over http/2', `${token}, unannounced: the body arrives (with its length, sent as it came)`)
    t.same(dropped.trailers, {}, `${token}, unannounced: the trailers are dropped, as RFC 9110 §6.5.1 allows (documented)`)
  }
})
