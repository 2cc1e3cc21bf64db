/**
 * Expect: 100-continue: the client is told to send its body only once the router admitted the
 * request and holds a slot for it; every refusal of the router's comes first, final, and the
 * body is never sent for it.
 */
import t from 'tap'
import { connect } from 'node:net'
import { connect as connectH2, type ClientHttp2Session } from 'node:http2'
import { h2Request } from '../fixtures/h2.ts'
import { everyProto } from '../fixtures/protocols.ts'
import { call, createToken, kitchenToken, startRouter, waitFor, type Router } from '../fixtures/router.ts'
import { raw, statusOf } from '../fixtures/raw-http.ts'

/** Sends the head, waits for the first answer line, then (if told to continue) the body; returns all that came back. */
function exchange(router: Router, head: string, body: string): Promise<{ first: string; all: string }> {
  return new Promise((resolve) => {
    const socket = connect(Number(new URL(router.url).port), '127.0.0.1', () => socket.write(head))
    let text = ''
    let first: string | undefined
    socket.on('data', (chunk) => {
      text += chunk.toString()
      if (first === undefined && text.includes('\r\n\r\n')) {
        first = text.slice(0, text.indexOf('\r\n'))
        if (first.includes(' 100 ')) socket.write(body)
      }
    })
    socket.on('close', () => resolve({ first: first ?? '', all: text }))
    setTimeout(() => socket.end(), 5000).unref()
  })
}

const post = (token: string, body: string, path = '/request-info'): string =>
  `POST ${path} HTTP/1.1\r\nHost: x\r\nx-waiter-token: ${token}\r\ncontent-type: text/plain\r\ncontent-length: ${body.length}\r\nexpect: 100-continue\r\naccept: application/json\r\nconnection: close\r\n\r\n`

/** An HTTP/2 request with Expect: 100-continue whose body goes only when told to continue: the statuses seen, and the answer. */
function h2Expecting(session: ClientHttp2Session, headers: Record<string, string>, body: string): Promise<{ statuses: number[]; text: string }> {
  return new Promise((resolve, reject) => {
    const statuses: number[] = []
    let text = ''
    const stream = session.request({ ':method': 'POST', expect: '100-continue', 'content-type': 'text/plain', accept: 'application/json', ...headers }, { endStream: false })
    stream.on('continue', () => {
      statuses.push(100)
      stream.end(body)
    })
    stream.on('response', (h) => statuses.push(Number(h[':status'])))
    stream.on('data', (c: Buffer) => (text += c.toString()))
    stream.on('error', reject)
    stream.on('close', () => resolve({ statuses, text }))
  })
}

t.test('Expect: 100-continue is answered after admission: a refusal is final and no body is asked for; an admitted request gets 100 and its body arrives', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'kitchen', kitchenToken())
  const body = 'the body, sent only when asked'
  const refused = await exchange(router, post('nope', body), body)
  t.match(refused.first, /^HTTP\/1\.1 404 /, 'an unknown token: the final 404 first')
  t.notMatch(refused.all, / 100 Continue/, 'and no 100 Continue, ever')

  const served = await exchange(router, post('kitchen', body), body)
  t.match(served.first, /^HTTP\/1\.1 100 Continue/, 'admitted (the version started for it): told to continue')
  t.match(served.all, /HTTP\/1\.1 200 /)
  t.match(served.all, /"body":"the body, sent only when asked"/, 'the body reached the instance')
  t.match(served.all, /"expect":"100-continue"/, 'which heard the expectation itself (it could have refused)')
})

t.test('an instance that refuses before the body: its final answer reaches the client first, with no 100 Continue, and the body never reaches it (even one sent unasked); one deaf to expectations gets the body after a second', async (t) => {
  const router = await startRouter(t)
  const protos = await everyProto(router, t.testdir())
  const body = 'a body the instance does not want'
  for (const token of protos) {
    const refused = await exchange(router, post(token, body, '/refuse-body'), body)
    t.match(refused.first, /^HTTP\/1\.1 413 /, `${token}: the instance's 413 comes first`)
    t.notMatch(refused.all, / 100 Continue/, `${token}: never a 100 Continue`)
    t.match(refused.all, /"expect":"100-continue"/, `${token}: the instance heard the expectation`)
    t.match(refused.all, /\r\nconnection: close\r\n/i, `${token}: the connection closes after the answer (the unsent body cannot follow)`)
    // A client that does not wait (curl sends after a second; some send at once): the body
    // comes with the head, and still never reaches the instance that refused it.
    const eager = await exchange(router, post(token, body, '/refuse-body') + body, '')
    t.match(eager.first, /^HTTP\/1\.1 413 /, `${token}: a body sent unasked, refused all the same`)
    const counted = await call(`${router.url}/refused-bytes`, { headers: { 'x-waiter-token': token } })
    t.same(counted.json(), { bytes: 0 }, `${token}: the instance got none of either body`)
  }
  const startedAt = Date.now()
  const deaf = await exchange(router, post('http', body, '/ignore-expect'), body)
  t.match(deaf.first, /^HTTP\/1\.1 100 Continue/, 'an instance that never says 100: the router tells the client to go on')
  t.ok(Date.now() - startedAt >= 900, 'after about a second of the instance’s silence (RFC 9110 §10.1.1)')
  t.match(deaf.all, /"body":"a body the instance does not want"/, 'and the body reaches it')

  // From an HTTP/2 client, to instances of every backend-proto.
  const session = connectH2(router.url)
  t.teardown(() => session.close())
  for (const token of protos) {
    const no = await h2Expecting(session, { ':path': '/refuse-body', 'x-waiter-token': token }, body)
    t.same(no.statuses, [413], `HTTP/2 client, ${token}: the refusal alone, no 100`)
    const yes = await h2Expecting(session, { ':path': '/request-info', 'x-waiter-token': token }, body)
    t.same(yes.statuses, [100, 200], `HTTP/2 client, ${token}: 100 once the instance asked, then its answer`)
    t.equal(JSON.parse(yes.text).body, body, `HTTP/2 client, ${token}: the body arrived`)
  }
  t.equal((await call(`${router.url}/status`)).status, 200, 'and the router carries on')
})

t.test('a request queued longer than the body-idle timeout waits for its 100 Continue, not a 408; one whose client leaves meanwhile leaves the queue', async (t) => {
  const router = await startRouter(t, { 'server.bodyIdleTimeoutMs': 400 })
  await createToken(router, 'narrow', kitchenToken({ 'concurrency-level': 1, 'max-instances': 1 }))
  const warm = await exchange(router, 'GET /protocol HTTP/1.1\r\nHost: x\r\nx-waiter-token: narrow\r\nconnection: close\r\n\r\n', '')
  t.match(warm.first, /^HTTP\/1\.1 200 /)
  const holding = exchange(router, 'GET /sleep?sleep-ms=2000 HTTP/1.1\r\nHost: x\r\nx-waiter-token: narrow\r\nconnection: close\r\n\r\n', '')
  const id = (await call(`${router.url}/service-id`, { headers: { 'x-waiter-token': 'narrow' } })).text
  await waitFor('the slow request holds the one slot', async () => ((await call(`${router.url}/apps/${id}`)).json<{ 'request-metrics': { 'in-flight': number } }>()['request-metrics']['in-flight'] === 1 ? true : undefined))
  const body = 'sent after a long wait'
  const startedAt = Date.now()
  const queued = await exchange(router, post('narrow', body), body)
  const waited = Date.now() - startedAt
  t.match(queued.first, /^HTTP\/1\.1 100 Continue/, 'told to continue once the slot freed, not a 408')
  t.ok(waited > 400, `after waiting ${waited} ms in the queue, past the 400 ms body-idle bound`)
  t.match(queued.all, /"body":"sent after a long wait"/)
  await holding
})

t.test('over HTTP/2: Expect: 100-continue waits for admission too, and CONNECT is refused with a 400', async (t) => {
  const router = await startRouter(t)
  const session = connectH2(router.url)
  t.teardown(() => session.close())
  const refused = await new Promise<{ statuses: number[] }>((resolve, reject) => {
    const statuses: number[] = []
    const stream = session.request({ ':method': 'POST', ':path': '/x', 'x-waiter-token': 'nope', expect: '100-continue', accept: 'application/json' }, { endStream: false })
    stream.on('continue', () => statuses.push(100))
    stream.on('response', (h) => statuses.push(Number(h[':status'])))
    stream.on('error', reject)
    stream.on('end', () => resolve({ statuses }))
    stream.resume()
    setTimeout(() => stream.end('late body'), 500)
  })
  t.same(refused.statuses, [404], 'an unknown token: the final 404, no 100 first')
  const connected = await h2Request(session, { ':method': 'CONNECT', ':authority': 'example.com:443', accept: 'application/json' })
  t.equal(connected.status, 400, 'CONNECT over HTTP/2: 400')
  t.match(connected.body, /maitre opens no tunnels/)
  t.equal((await call(`${router.url}/status`)).status, 200, 'and the router carries on')
})

t.test('an HTTP/1.0 client’s Expect: 100-continue is ignored, as RFC 9110 says: no 1xx reaches it (it would take it for the answer), and its body goes on at once', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'kitchen', kitchenToken())
  const exchange = await raw(router.url, 'POST /request-info HTTP/1.0\r\nHost: x\r\nx-waiter-token: kitchen\r\nExpect: 100-continue\r\ncontent-length: 5\r\n\r\nhello')
  const text = await exchange.closed
  t.match(text, /^HTTP\/1\.1 200 /, 'the first thing it hears is the answer')
  t.notMatch(text, / 100 Continue/, 'never a 100 Continue')
  t.match(text, /"body":"hello"/, 'and its body reached the instance')
})

t.test('a body in a transfer coding besides chunked is refused with 501, not passed on undecoded and unsaid', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'kitchen', kitchenToken())
  const exchange = await raw(router.url, 'POST /request-info HTTP/1.1\r\nHost: x\r\nx-waiter-token: kitchen\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n')
  const text = await exchange.closed
  t.equal(statusOf(text), 501)
  t.match(text, /x-maitre-error: MAITRE_TRANSFER_CODING/)
  t.match(text, /"field": "transfer-encoding"/, 'naming the field')
})
