/**
 * gRPC through the router: @grpc/grpc-js clients (h2c, prior knowledge) to a @grpc/grpc-js
 * server instance (h2c), every kind of call, trailers, deadlines, and maitre's own refusals as
 * gRPC statuses.
 */
import t from 'tap'
import * as grpc from '@grpc/grpc-js'
import { grpcToken, KITCHEN_SERVICE } from '../fixtures/grpc-service.ts'
import { call, createToken, startRouter, waitFor, within, type Router } from '../fixtures/router.ts'

const KitchenClient = grpc.makeGenericClientConstructor(KITCHEN_SERVICE, 'Kitchen')
type Callback<T> = (err: grpc.ServiceError | null, value?: T) => void
interface Kitchen extends grpc.Client {
  echo(request: unknown, metadata: grpc.Metadata, options: grpc.CallOptions, callback: Callback<{ text: string; metadata: Record<string, string> }>): grpc.ClientUnaryCall
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

function unary(c: Kitchen, request: unknown, metadata: grpc.Metadata, options: grpc.CallOptions = {}): Promise<{ err: grpc.ServiceError | null; value: { text: string; metadata: Record<string, string> } | undefined; trailers: grpc.Metadata | undefined }> {
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
  const router = await startRouter(t, { 'proxy.streamingTimeoutMs': 400 })
  await createToken(router, 'grpc', grpcToken({ 'socket-timeout-ms': 300 }))
  const c = client(t, router)
  t.equal((await unary(c, { text: 'warm' }, meta('grpc'))).err, null)
  const counted = await countdown(c, { from: 10, intervalMs: 100 })
  t.equal(counted.length, 10, 'a second of messages 100 ms apart: past the 300 ms socket timeout, never 400 ms apart')
  const summed = await new Promise<{ err: grpc.ServiceError | null; value: { sum: number; count: number } | undefined }>((resolve) => {
    const upload = c.sum(meta('grpc'), {}, (err, value) => resolve({ err, value }))
    let n = 0
    const next = (): void => {
      n += 1
      upload.write({ n })
      if (n === 10) upload.end()
      else setTimeout(next, 100)
    }
    next()
  })
  t.equal(summed.err, null, 'a client-streaming call sending for a second, 100 ms apart: not cut at the 300 ms socket timeout')
  t.same(summed.value, { sum: 55, count: 10 }, 'and every message counted')
  const stalled = await new Promise<grpc.ServiceError>((resolve) => {
    const stream = c.countdown({ from: 3, intervalMs: 1000 }, meta('grpc'))
    stream.on('data', () => undefined)
    stream.on('error', resolve)
  })
  t.equal(stalled.code, grpc.status.DEADLINE_EXCEEDED, 'a second between messages exceeds the 400 ms streaming timeout: DEADLINE_EXCEEDED, in trailers')
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
