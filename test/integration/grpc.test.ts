/**
 * gRPC through the router: @grpc/grpc-js clients (h2c, prior knowledge) to a @grpc/grpc-js
 * server instance (h2c), every kind of call, trailers, deadlines, and maitre's own refusals as
 * gRPC statuses.
 */
import t from 'tap'
import * as grpc from '@grpc/grpc-js'
import type { IncomingHttpHeaders } from 'node:http'
import { connect as connectH2, constants as h2constants, type ClientHttp2Session } from 'node:http2'
import { grpcToken, KITCHEN_SERVICE } from '../fixtures/grpc-service.ts'
import { call, createToken, startRouter, waitFor, within, type Router } from '../fixtures/router.ts'

const KitchenClient = grpc.makeGenericClientConstructor(KITCHEN_SERVICE, 'Kitchen')
type Callback<T> = (err: grpc.ServiceError | null, value?: T) => void
interface Kitchen extends grpc.Client {
  echo(request: unknown, metadata: grpc.Metadata, options: grpc.CallOptions, callback: Callback<{ text: string; metadata: Record<string, string>; peer: string }>): grpc.ClientUnaryCall
  countdown(request: unknown, metadata: grpc.Metadata, options?: grpc.CallOptions): grpc.ClientReadableStream<{ n: number }>
  sum(metadata: grpc.Metadata, options: grpc.CallOptions, callback: Callback<{ sum: number; count: number }>): grpc.ClientWritableStream<{ n: number }>
  chat(metadata: grpc.Metadata, options?: grpc.CallOptions): grpc.ClientDuplexStream<{ text: string }, { text: string }>
}

function client(t: { teardown(fn: () => void): void }, router: Router): Kitchen {
  const c = new KitchenClient(new URL(router.url).host, grpc.credentials.createInsecure()) as unknown as Kitchen
  t.teardown(() => c.close())
  return c
}

function meta(token: string, extra: Record<string, string> = {}): grpc.Metadata {
  const m = new grpc.Metadata()
  m.set('x-waiter-token', token)
  for (const [k, v] of Object.entries(extra)) m.set(k, v)
  return m
}

function unary(c: Kitchen, request: unknown, metadata: grpc.Metadata, options: grpc.CallOptions = {}): Promise<{ err: grpc.ServiceError | null; value: { text: string; metadata: Record<string, string>; peer: string } | undefined; trailers: grpc.Metadata | undefined }> {
  return new Promise((resolve) => {
    let trailers: grpc.Metadata | undefined
    const callRef = c.echo(request, metadata, options, (err, value) => setImmediate(() => resolve({ err, value, trailers })))
    callRef.on('status', (status: grpc.StatusObject) => (trailers = status.metadata))
  })
}

/** A server-streaming call to its end: every number received. */
function countdown(c: Kitchen, request: { from: number; intervalMs: number }): Promise<number[]> {
  return new Promise((resolve, reject) => {
    const got: number[] = []
    const stream = c.countdown(request, meta('grpc'))
    stream.on('data', (m: { n: number }) => got.push(m.n))
    stream.on('end', () => resolve(got))
    stream.on('error', reject)
  })
}

t.test('every kind of gRPC call through the router, with trailers intact', async (t) => {
  const router = await startRouter(t, { 'auth.user': 'alice' })
  await createToken(router, 'grpc', grpcToken())
  const c = client(t, router)

  const first = await unary(c, { text: 'hello' }, meta('grpc'))
  t.equal(first.err, null)
  t.equal(first.value?.text, 'hello', 'unary (the version cold-started for it)')
  t.match(first.value?.metadata, { 'x-waiter-auth-principal': 'alice', 'x-cid': String }, 'the instance sees Waiter’s headers')
  t.notOk(Object.keys(first.value?.metadata ?? {}).includes('x-waiter-token'), 'and no x-waiter-*')
  t.same(first.trailers?.get('x-kitchen-trailer'), ['echoed'], 'custom trailers arrive')

  const failed = await unary(c, { text: 'x', fail: { code: grpc.status.FAILED_PRECONDITION, message: 'not today: ünïcode' } }, meta('grpc'))
  t.equal(failed.err?.code, grpc.status.FAILED_PRECONDITION, 'the instance’s grpc-status')
  t.equal(failed.err?.details, 'not today: ünïcode', 'and grpc-message, percent-encoding and all')
  t.same(failed.trailers?.get('x-kitchen-trailer'), ['failed on purpose'])

  const counted = await countdown(c, { from: 5, intervalMs: 10 })
  t.same(counted, [5, 4, 3, 2, 1], 'server streaming')

  const summed = await new Promise<{ sum: number; count: number } | undefined>((resolve, reject) => {
    const stream = c.sum(meta('grpc'), {}, (err, value) => (err ? reject(err) : resolve(value)))
    for (let n = 1; n <= 10; n++) stream.write({ n })
    stream.end()
  })
  t.same(summed, { sum: 55, count: 10 }, 'client streaming')

  const chat = c.chat(meta('grpc'))
  const replies: string[] = []
  let chatTrailers: grpc.Metadata | undefined
  chat.on('status', (s: grpc.StatusObject) => (chatTrailers = s.metadata))
  const ended = new Promise<void>((resolve) => chat.on('end', () => resolve()))
  for (const text of ['one', 'two', 'three']) {
    const reply = new Promise<string>((resolve) => chat.once('data', (m: { text: string }) => resolve(m.text)))
    chat.write({ text })
    replies.push(await reply)
  }
  chat.write({ text: 'end' })
  await ended
  await new Promise((r) => setImmediate(r))
  t.same(replies, ['one', 'two', 'three'], 'bidirectional, message by message')
  t.same(chatTrailers?.get('x-chat-ended'), ['by request'], 'the stream’s own trailers')
})

t.test('maitre’s own refusals reach a gRPC client as gRPC statuses, in trailers', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'grpc', grpcToken())
  await createToken(router, 'narrow', grpcToken({ version: 'narrow', 'concurrency-level': 1, 'max-instances': 1, 'max-queue-length': 1 }))
  const c = client(t, router)

  const unknown = await unary(c, { text: 'x' }, meta('nope'))
  t.equal(unknown.err?.code, grpc.status.NOT_FOUND, 'an unknown token: NOT_FOUND')
  t.match(unknown.err?.details, /nope/)

  // The only slot is held by a slow call; the next queues past its deadline.
  t.equal((await unary(c, { text: 'warm' }, meta('narrow'))).err, null, 'narrow runs')
  const narrowId = (await call(`${router.url}/service-id`, { headers: { 'x-waiter-token': 'narrow' } })).text
  const load = async (): Promise<{ 'in-flight': number; queued: number }> => (await call(`${router.url}/apps/${narrowId}`)).json<{ 'request-metrics': { 'in-flight': number; queued: number } }>()['request-metrics']
  const slow = unary(c, { text: 'slow', sleepMs: 3000 }, meta('narrow'))
  await waitFor('the slow call holds the one slot', async () => ((await load())['in-flight'] === 1 ? true : undefined))
  const queuedAt = Date.now()
  const late = await unary(c, { text: 'late' }, meta('narrow'), { deadline: Date.now() + 300 })
  t.equal(late.err?.code, grpc.status.DEADLINE_EXCEEDED, 'grpc-timeout is the queue timeout: DEADLINE_EXCEEDED when it runs out')
  t.ok(Date.now() - queuedAt < 1200, `within its deadline, not after the slow call (${Date.now() - queuedAt} ms)`)
  const queued = unary(c, { text: 'queued' }, meta('narrow'))
  await waitFor('a call waits in the queue of one', async () => ((await load()).queued === 1 ? true : undefined))
  const full = await unary(c, { text: 'full' }, meta('narrow'))
  t.equal(full.err?.code, grpc.status.UNAVAILABLE, 'a full queue: UNAVAILABLE')
  t.match(full.err?.details, /queue/i)
  t.equal((await slow).err, null)
  t.equal((await queued).err, null, 'the queued call was served once the slot freed')

  // A call the client cancels mid-stream gives its slot back: the next call on the one slot is served.
  const cancelled = c.countdown({ from: 50, intervalMs: 50 }, meta('narrow'))
  await new Promise<void>((resolve) => cancelled.once('data', () => resolve()))
  cancelled.on('error', () => undefined)
  cancelled.cancel()
  const afterCancel = await unary(c, { text: 'after cancel' }, meta('narrow'), { deadline: Date.now() + 2000 })
  t.equal(afterCancel.err, null, 'a cancelled stream’s slot serves the next call')

  const timedOut = await unary(c, { text: 'x', sleepMs: 2000 }, meta('grpc', { 'x-waiter-timeout': '300' }))
  t.equal(timedOut.err?.code, grpc.status.DEADLINE_EXCEEDED, 'the instance too slow for x-waiter-timeout: DEADLINE_EXCEEDED')
  t.match(timedOut.err?.details, /timed out/)

  const id = (await call(`${router.url}/service-id`, { headers: { 'x-waiter-token': 'grpc' } })).text
  t.equal((await call(`${router.url}/apps/${id}/suspend`, { method: 'POST' })).status, 200)
  const suspended = await unary(c, { text: 'x' }, meta('grpc'))
  t.equal(suspended.err?.code, grpc.status.UNAVAILABLE, 'a suspended service: UNAVAILABLE')
})

t.test('a stream that keeps moving outlives the socket timeout, either way; the streaming timeout applies between messages (DEADLINE_EXCEEDED)', async (t) => {
  // Bounds ten times the gaps between messages: a machine loaded enough to stall a process for
  // a few hundred ms (a CI run once did, with 300/400 ms bounds) must not turn a gap into a cut.
  const router = await startRouter(t, { 'proxy.streamingTimeoutMs': 1500 })
  await createToken(router, 'grpc', grpcToken({ 'socket-timeout-ms': 1000 }))
  const c = client(t, router)
  t.equal((await unary(c, { text: 'warm' }, meta('grpc'))).err, null)
  const counted = await countdown(c, { from: 20, intervalMs: 100 })
  t.equal(counted.length, 20, 'two seconds of messages 100 ms apart: past the 1 s socket timeout, never 1.5 s apart')
  const summed = await new Promise<{ err: grpc.ServiceError | null; value: { sum: number; count: number } | undefined }>((resolve) => {
    const upload = c.sum(meta('grpc'), {}, (err, value) => resolve({ err, value }))
    let n = 0
    const next = (): void => {
      n += 1
      upload.write({ n })
      if (n === 20) upload.end()
      else setTimeout(next, 100)
    }
    next()
  })
  t.equal(summed.err, null, 'a client-streaming call sending for two seconds, 100 ms apart: not cut at the 1 s socket timeout')
  t.same(summed.value, { sum: 210, count: 20 }, 'and every message counted')
  const stalled = await new Promise<grpc.ServiceError>((resolve) => {
    const stream = c.countdown({ from: 3, intervalMs: 4000 }, meta('grpc'))
    stream.on('data', () => undefined)
    stream.on('error', resolve)
  })
  t.equal(stalled.code, grpc.status.DEADLINE_EXCEEDED, 'four seconds between messages exceed the 1.5 s streaming timeout: DEADLINE_EXCEEDED, in trailers')
})

// A router of its own: the stalled stream above ejects its instance for 10 s (Waiter's rule for
// an instance's failure), which a call right after it would wait out in the queue.
t.test('an instance that dies mid-stream ends the call with UNAVAILABLE', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'grpc', grpcToken())
  const c = client(t, router)
  const chat = c.chat(meta('grpc'))
  const gone = new Promise<grpc.ServiceError>((resolve) => chat.on('error', resolve))
  // An answer under way (its headers and a message relayed) when the instance dies.
  const echoed = new Promise<void>((resolve) => chat.once('data', () => resolve()))
  chat.on('data', () => undefined)
  chat.write({ text: 'hello' })
  // Raced with the call's end: a call that failed first shows its status rather than hanging.
  const early = await within('the chat’s first message (a cold start) or its end', Promise.race([echoed.then(() => undefined), gone]), 30_000)
  t.equal(early, undefined, 'the chat’s first message came back before anything failed')
  chat.write({ text: 'die' })
  const err = await within('the chat to end once its instance died', gone)
  t.equal(err.code, grpc.status.UNAVAILABLE, 'the instance died: the call ends with UNAVAILABLE, as gRPC says it (not a reset stream)')
})

/** A gRPC message frame (uncompressed) holding `value` as the test service's JSON. */
function frame(value: unknown): Buffer {
  const bytes = Buffer.from(JSON.stringify(value))
  const prefix = Buffer.alloc(5)
  prefix.writeUInt32BE(bytes.length, 1)
  return Buffer.concat([prefix, bytes])
}

/**
 * One raw gRPC call over node:http2, which keeps no deadline of its own (unlike grpc-js): what
 * the router alone did to it. `open`: the request side stays open after the messages.
 */
function rawCall(session: ClientHttp2Session, method: string, headers: Record<string, string>, messages: unknown[], open = false): Promise<{ headers: IncomingHttpHeaders; trailers: IncomingHttpHeaders; rstCode: number | undefined; ms: number }> {
  const started = Date.now()
  return new Promise((resolve) => {
    const stream = session.request({ ':method': 'POST', ':path': `/kitchen.Kitchen/${method}`, 'content-type': 'application/grpc', te: 'trailers', ...headers }, { endStream: false })
    let head: IncomingHttpHeaders = {}
    let trailers: IncomingHttpHeaders = {}
    stream.on('response', (h) => (head = h))
    stream.on('trailers', (h) => (trailers = h))
    stream.on('error', () => undefined)
    stream.resume()
    stream.on('close', () => resolve({ headers: head, trailers, rstCode: stream.rstCode, ms: Date.now() - started }))
    for (const m of messages) stream.write(frame(m))
    if (!open) stream.end()
  })
}

t.test('grpc-timeout alone (no deadline kept by the client) bounds the wait in the queue and the wait for the answer', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'narrow', grpcToken({ version: 'narrow', 'concurrency-level': 1, 'max-instances': 1 }))
  const c = client(t, router)
  t.equal((await unary(c, { text: 'warm' }, meta('narrow'))).err, null, 'narrow runs')
  const session = connectH2(router.url)
  t.teardown(() => session.close())

  const slow = rawCall(session, 'Echo', { 'x-waiter-token': 'narrow' }, [{ text: 'slow', sleepMs: 3000 }])
  const narrowId = (await call(`${router.url}/service-id`, { headers: { 'x-waiter-token': 'narrow' } })).text
  await waitFor('the slow call holds the one slot', async () => ((await call(`${router.url}/apps/${narrowId}`)).json<{ 'request-metrics': { 'in-flight': number } }>()['request-metrics']['in-flight'] === 1 ? true : undefined))
  const queued = await rawCall(session, 'Echo', { 'x-waiter-token': 'narrow', 'grpc-timeout': '300m' }, [{ text: 'late' }])
  t.equal(queued.trailers['grpc-status'], String(grpc.status.DEADLINE_EXCEEDED), 'queued past its grpc-timeout: DEADLINE_EXCEEDED, in trailers')
  t.equal(queued.headers['x-maitre-error'], 'MAITRE_QUEUE_TIMEOUT', 'said by the router, as its queue timeout')
  t.ok(queued.ms < 1500, `within its 300 ms, not once the slow call freed the slot (${queued.ms} ms)`)
  t.equal((await slow).trailers['grpc-status'], '0', 'the slow call was not disturbed')

  const tooSlow = await rawCall(session, 'Echo', { 'x-waiter-token': 'narrow', 'grpc-timeout': '400m' }, [{ text: 'slow', sleepMs: 10_000 }])
  t.equal(tooSlow.trailers['grpc-status'], String(grpc.status.DEADLINE_EXCEEDED), 'an instance slower than grpc-timeout: DEADLINE_EXCEEDED')
  // The deadline is forwarded too, so the instance's gRPC server may end the call at the same
  // moment (a loaded CI run saw it win the race); the router's own answer, when it is first, says so.
  t.ok([undefined, 'MAITRE_UPSTREAM_TIMEOUT'].includes(tooSlow.headers['x-maitre-error'] as string | undefined), `said by the router as its socket timeout, or by the instance's own server (${String(tooSlow.headers['x-maitre-error'])})`)
  t.ok(tooSlow.ms < 4000, `after its 400 ms, not the instance’s 10 s (${tooSlow.ms} ms)`)
})

t.test('a deployment error, and an instance gone before it answers, are UNAVAILABLE with the reason in grpc-message', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'broken', grpcToken({ version: 'broken', cmd: 'asdf-no-such-command --port $PORT0' }))
  await createToken(router, 'grpc', grpcToken())
  const c = client(t, router)

  const broken = await unary(c, { text: 'x' }, meta('broken'))
  t.equal(broken.err?.code, grpc.status.UNAVAILABLE, 'a deployment error: UNAVAILABLE')
  t.equal(broken.err?.details, 'Deployment error: Invalid startup command', 'Waiter’s message, in grpc-message')

  // The instance dies on the chat's first message, before its answer has begun.
  const chat = c.chat(meta('grpc'))
  chat.on('data', () => undefined)
  const gone = new Promise<grpc.ServiceError>((resolve) => chat.on('error', resolve))
  chat.write({ text: 'die' })
  const err = await within('the chat to end once its instance died', gone, 30_000)
  t.equal(err.code, grpc.status.UNAVAILABLE, 'the instance gone before answering: UNAVAILABLE')
  t.equal(err.details, 'Request to service backend failed', 'the router’s reason, in grpc-message')
})

t.test('an admitted gRPC call may go quiet past the body-idle bound; the streaming timeout ends one quiet both ways with DEADLINE_EXCEEDED and ejects nothing', async (t) => {
  const router = await startRouter(t, { 'server.bodyIdleTimeoutMs': 300, 'proxy.streamingTimeoutMs': 1500 })
  await createToken(router, 'grpc', grpcToken())
  const c = client(t, router)
  t.equal((await unary(c, { text: 'warm' }, meta('grpc'))).err, null)
  const quiet = (): Promise<void> => new Promise((r) => setTimeout(r, 900)) // three body-idle bounds, under the streaming timeout

  // Bidirectional: the answer has begun; then nothing either way for a while.
  const chat = c.chat(meta('grpc'))
  const replies: string[] = []
  const chatEnded = new Promise<grpc.ServiceError | 'end'>((resolve) => {
    chat.on('error', resolve)
    chat.on('end', () => resolve('end'))
  })
  for (const text of ['one', 'two']) {
    const reply = new Promise<string>((resolve) => chat.once('data', (m: { text: string }) => resolve(m.text)))
    chat.write({ text })
    replies.push(await within(`the echo of ${text}`, Promise.race([reply, chatEnded.then((e) => `ended: ${JSON.stringify(e)}`)])))
    await quiet()
  }
  chat.write({ text: 'end' })
  t.equal(await within('the chat to end', chatEnded), 'end', 'a quiet bidirectional call ends as its server ended it')
  t.same(replies, ['one', 'two'], 'every message answered')

  // Client streaming: nothing answered until the client is done.
  const summed = await new Promise<{ err: grpc.ServiceError | null; value: { sum: number; count: number } | undefined }>((resolve) => {
    const upload = c.sum(meta('grpc'), {}, (err, value) => resolve({ err, value }))
    upload.write({ n: 1 })
    void quiet().then(() => upload.end({ n: 2 }))
  })
  t.equal(summed.err, null, 'a client-streaming call quiet before its answer is not cut at body-idle')
  t.same(summed.value, { sum: 3, count: 2 })

  // Quiet both ways past the streaming timeout before the answer: the router answers for it.
  const session = connectH2(router.url)
  t.teardown(() => session.close())
  const stalledUpload = await within('the stalled upload to end', rawCall(session, 'Sum', { 'x-waiter-token': 'grpc' }, [{ n: 1 }], true))
  t.equal(stalledUpload.trailers['grpc-status'], String(grpc.status.DEADLINE_EXCEEDED), 'quiet past the streaming timeout: DEADLINE_EXCEEDED, a gRPC status in trailers (not a bare reset)')
  t.match(stalledUpload.trailers['grpc-message'], /streaming timeout/)
  t.equal(stalledUpload.headers['x-maitre-error'], 'MAITRE_CLIENT_TIMEOUT')
  t.ok(stalledUpload.ms >= 1400, `not before the streaming timeout (${stalledUpload.ms} ms)`)

  // Quiet both ways past the streaming timeout after the answer began: the forwarder's timeout.
  const stalledChat = c.chat(meta('grpc'))
  const stalled = new Promise<grpc.ServiceError>((resolve) => stalledChat.on('error', resolve))
  const first = new Promise<void>((resolve) => stalledChat.once('data', () => resolve()))
  stalledChat.write({ text: 'hello' })
  await within('the first echo', first)
  const err = await within('the quiet chat to end', stalled)
  t.equal(err.code, grpc.status.DEADLINE_EXCEEDED, 'a chat quiet both ways past the streaming timeout: DEADLINE_EXCEEDED')
  t.match(err.details, /sent nothing for 1500 ms/)
  const at = Date.now()
  const next = await unary(c, { text: 'next' }, meta('grpc'), { deadline: Date.now() + 3000 })
  t.equal(next.err, null, `its instance was not ejected: the next call served at once (${Date.now() - at} ms)`)
})

t.test('calls to one h2c instance share one pooled HTTP/2 connection, whichever client connection they came on', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'grpc', grpcToken({ 'concurrency-level': 20 }))
  const first = client(t, router)
  const second = client(t, router)
  const warm = await unary(first, { text: 'warm' }, meta('grpc'))
  t.equal(warm.err, null)
  const peer = warm.value?.peer
  t.match(peer, /:\d+$/, `the instance saw the router at ${String(peer)}`)
  // Concurrent calls from two client connections, then one after another.
  const together = await Promise.all(Array.from({ length: 10 }, (_, i) => unary(i % 2 === 0 ? first : second, { text: `n${i}`, sleepMs: 50 }, meta('grpc'))))
  const after = [await unary(second, { text: 'a' }, meta('grpc')), await unary(first, { text: 'b' }, meta('grpc'))]
  const peers = new Set([...together, ...after].map((r) => r.value?.peer))
  t.same([...peers], [peer], 'every call came over the same router→instance connection')
})

t.test('a gRPC call whose client stops reading gives its slot back after the client-stall bound, its request ended or open, and ejects nobody', async (t) => {
  const router = await startRouter(t, { 'proxy.streamingTimeoutMs': 1000, 'proxy.clientStallTimeoutMs': 1000 })
  await createToken(router, 'narrow', grpcToken({ version: 'narrow', 'concurrency-level': 1, 'max-instances': 1 }))
  const c = client(t, router)
  t.equal((await unary(c, { text: 'warm' }, meta('narrow'))).err, null, 'narrow runs')
  const narrowId = (await call(`${router.url}/service-id`, { headers: { 'x-waiter-token': 'narrow' } })).text
  const inFlight = async (): Promise<number> => (await call(`${router.url}/apps/${narrowId}`)).json<{ 'request-metrics': { 'in-flight': number } }>()['request-metrics']['in-flight']
  const session = connectH2(router.url)
  t.teardown(() => session.destroy())
  /** A raw call whose answer is never read: its stream's reset code once it closes. */
  const unread = (method: string, messages: unknown[], open: boolean): Promise<number | undefined> => {
    const stream = session.request({ ':method': 'POST', ':path': `/kitchen.Kitchen/${method}`, 'content-type': 'application/grpc', te: 'trailers', 'x-waiter-token': 'narrow' }, { endStream: false })
    stream.on('error', () => undefined)
    stream.pause()
    for (const m of messages) stream.write(frame(m))
    if (!open) stream.end()
    return new Promise((resolve) => stream.once('close', () => resolve(stream.rstCode)))
  }
  const cases: [string, Promise<number | undefined>][] = []
  for (const [what, start] of [
    // 8 MB of messages asked for, the request ended.
    ['server-streaming, request ended', () => unread('Countdown', [{ from: 2000, intervalMs: 0, padBytes: 4096 }], false)],
    // 1 MB echoed back, the request side left open.
    ['bidirectional, request open', () => unread('Chat', Array.from({ length: 16 }, () => ({ text: 'x'.repeat(65536) })), true)],
  ] as const) {
    const closed = start()
    cases.push([what, closed])
    await waitFor(`the unread ${what} call to hold the slot`, async () => ((await inFlight()) === 1 ? true : undefined))
    await waitFor(`the unread ${what} call’s slot to come back`, async () => ((await inFlight()) === 0 ? true : undefined))
    t.equal(await within(`the ${what} stream to close`, closed), h2constants.NGHTTP2_CANCEL, `${what}: its stream is cancelled`)
    const next = await unary(c, { text: 'next' }, meta('narrow', { 'x-waiter-queue-timeout': '2000' }))
    t.equal(next.err, null, `${what}: the one instance serves the next call at once (not ejected)`)
  }
})

t.test('a gRPC call queued behind another may send nothing past the body-idle bound, and is served', async (t) => {
  const router = await startRouter(t, { 'server.bodyIdleTimeoutMs': 300, 'proxy.streamingTimeoutMs': 5000 })
  await createToken(router, 'narrow', grpcToken({ version: 'narrow', 'concurrency-level': 1, 'max-instances': 1 }))
  const c = client(t, router)
  t.equal((await unary(c, { text: 'warm' }, meta('narrow'))).err, null, 'narrow runs')
  const narrowId = (await call(`${router.url}/service-id`, { headers: { 'x-waiter-token': 'narrow' } })).text
  const metrics = async (): Promise<{ 'in-flight': number; queued: number }> => (await call(`${router.url}/apps/${narrowId}`)).json<{ 'request-metrics': { 'in-flight': number; queued: number } }>()['request-metrics']
  const slow = unary(c, { text: 'slow', sleepMs: 1500 }, meta('narrow'))
  await waitFor('the slow call to hold the one slot', async () => ((await metrics())['in-flight'] === 1 ? true : undefined))
  const session = connectH2(router.url)
  t.teardown(() => session.destroy())
  // A chat that sends nothing at all until it has been served.
  const chat = session.request({ ':method': 'POST', ':path': '/kitchen.Kitchen/Chat', 'content-type': 'application/grpc', te: 'trailers', 'x-waiter-token': 'narrow' }, { endStream: false })
  chat.on('error', () => undefined)
  let body = Buffer.alloc(0)
  let trailers: IncomingHttpHeaders = {}
  chat.on('data', (chunk: Buffer) => (body = Buffer.concat([body, chunk])))
  chat.on('trailers', (h) => (trailers = h))
  const closed = new Promise<void>((resolve) => chat.once('close', () => resolve()))
  await waitFor('the chat to be queued', async () => ((await metrics()).queued === 1 ? true : undefined))
  t.equal((await within('the slow call', slow)).err, null, 'the slow call is answered')
  await waitFor('the chat to take the slot', async () => ((await metrics()).queued === 0 ? true : undefined))
  t.equal(chat.closed, false, 'the chat, silent well past the 300 ms body-idle bound while queued, is still open')
  chat.write(frame({ text: 'hi' }))
  await waitFor('the echo', () => (body.length >= 5 ? true : undefined))
  t.same(JSON.parse(body.subarray(5).toString()), { text: 'hi' }, 'and served: its message echoed')
  chat.end(frame({ text: 'end' }))
  await within('the chat to end', closed)
  t.equal(trailers['grpc-status'], '0', 'it ends OK')
  t.equal(trailers['x-chat-ended'], 'by request', 'with the instance’s own trailers')
})

t.test('calls still open when a drain runs out of time end with UNAVAILABLE, which a client may retry elsewhere, not with a cut that reads INTERNAL', async (t) => {
  const router = await startRouter(t, { 'server.shutdownTimeoutMs': 1000 })
  await createToken(router, 'grpc', grpcToken())
  const c = client(t, router)
  const chat = c.chat(meta('grpc'))
  chat.on('error', () => undefined)
  chat.write({ text: 'hi' })
  await within('the chat under way', new Promise((resolve) => chat.once('data', resolve)))
  const count = c.countdown({ from: 1000, intervalMs: 100 }, meta('grpc'))
  count.on('error', () => undefined)
  await within('the countdown under way', new Promise((resolve) => count.once('data', resolve)))
  count.on('data', () => undefined)
  const statusOf = (call: grpc.ClientDuplexStream<unknown, unknown> | grpc.ClientReadableStream<unknown>): Promise<grpc.StatusObject> => new Promise((resolve) => call.on('status', resolve))
  const ended = Promise.all([statusOf(chat), statusOf(count)])
  const stopping = router.app.stop()
  const [chatStatus, countStatus] = await within('both calls to end', ended, 15_000)
  for (const [name, status] of [['bidirectional', chatStatus], ['server-streaming', countStatus]] as const) {
    t.equal(status.code, grpc.status.UNAVAILABLE, `${name}: UNAVAILABLE (${status.code}: ${status.details})`)
    t.match(status.details, /shutting down/, `${name}: saying why`)
  }
  await stopping
})
