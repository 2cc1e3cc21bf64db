/**
 * Generated hostile input against a real router (fast-check, seeded so a failure replays):
 * token documents and names, x-waiter-* headers, /apps filters and raw malformed HTTP. Whatever
 * comes in: no crash, no hang, no 5xx; every refusal a 4xx whose JSON body names the field or the
 * limit; a refused write leaves the token store byte for byte as it was; and every token the
 * router accepted reads back, the same, after a restart.
 */
import t from 'tap'
import fc from 'fast-check'
import { createHash } from 'node:crypto'
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { call, createToken, kitchenToken, startRouter, type Reply, type Router } from '../fixtures/router.ts'
import { raw, statusOf } from '../fixtures/raw-http.ts'
import { PARAMETERS, TOKEN_METADATA } from '../../src/versions/parameters.ts'

const SEED = 20261130

type WaiterError = { 'waiter-error'?: { code?: string; message?: string; details?: Record<string, unknown> } }

/** A refusal must be a 4xx whose JSON names what was wrong; anything else fails the property. */
function checkAnswer(reply: Reply, what: string): void {
  if (reply.status >= 500) throw new Error(`${what}: ${reply.status} ${reply.text.slice(0, 300)}`)
  if (reply.status < 400) return
  let body: WaiterError
  try {
    body = reply.json<WaiterError>()
  } catch {
    throw new Error(`${what}: a ${reply.status} without a JSON body: ${reply.text.slice(0, 200)}`)
  }
  const error = body['waiter-error']
  const details = error?.details ?? {}
  if (error?.message === undefined || error.message === '' || Object.keys(details).length === 0) {
    throw new Error(`${what}: a ${reply.status} that names nothing: ${reply.text.slice(0, 300)}`)
  }
}

/** The token store on disk, as name → digest of its bytes (its temporaries included, which must not linger). */
function storeDigest(router: Router): string {
  const dir = join(router.dataDir, 'tokens')
  const files = [...readdirSync(dir).filter((f) => f !== '.tmp'), ...readdirSync(join(dir, '.tmp')).map((f) => `.tmp/${f}`)].sort()
  return files.map((f) => `${f}:${createHash('sha256').update(readFileSync(join(dir, f))).digest('hex')}`).join('\n')
}

const parameterNames = [...PARAMETERS.keys(), ...TOKEN_METADATA.keys()]
const hostileKeys = ['__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', 'previous', 'last-update-time', 'deleted', 'root']
/** JSON values from flat to deeply nested, unicode strings included. */
const jsonish = fc.letrec((tie) => ({
  value: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.string({ unit: 'grapheme', maxLength: 40 }),
    fc.string({ maxLength: 5000 }),
    fc.integer(),
    fc.double({ noNaN: false }),
    fc.boolean(),
    fc.constant(null),
    fc.array(tie('value'), { maxLength: 4 }),
    fc.dictionary(fc.oneof(fc.string({ maxLength: 10 }), fc.constantFrom(...hostileKeys)), tie('value'), { maxKeys: 4 }),
  ),
})).value
/** A nesting tower, shallower and deeper than the 32-level limit. */
const tower = fc.integer({ min: 1, max: 4000 }).map((depth) => {
  let value: unknown = 'bottom'
  for (let i = 0; i < depth; i++) value = i % 2 === 0 ? { n: value } : [value]
  return value
})
const systemMetadata = fc.record({
  'last-update-time': fc.oneof(fc.integer(), fc.double(), fc.constant(1e300), fc.string({ maxLength: 10 })),
  previous: fc.oneof(jsonish, fc.constant({ version: 'v0', 'last-update-time': 1_600_000_000_000 })),
  root: fc.oneof(fc.string({ maxLength: 10 }), fc.integer()),
  deleted: fc.oneof(fc.boolean(), fc.constant('yes')),
}, { requiredKeys: [] })
const tokenDocument = fc.record({
  base: fc.boolean(),
  admin: fc.boolean(),
  system: systemMetadata,
  fields: fc.dictionary(fc.oneof(fc.constantFrom(...parameterNames), fc.constantFrom(...hostileKeys), fc.string({ maxLength: 12 })), fc.oneof(jsonish, tower), { maxKeys: 8 }),
})

t.test('generated token documents: accepted ones read back; refused ones change nothing on disk', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'anchor', kitchenToken())
  const accepted = new Map<string, string>()
  await fc.assert(
    fc.asyncProperty(fc.integer({ min: 0, max: 9 }), tokenDocument, async (slot, doc) => {
      const name = `fuzz${slot}`
      const body = JSON.stringify({ ...(doc.base ? kitchenToken() : {}), ...doc.fields, ...(doc.admin ? doc.system : {}), token: name })
      const before = storeDigest(router)
      const reply = await call(`${router.url}/token${doc.admin ? '?update-mode=admin' : ''}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body })
      checkAnswer(reply, `POST /token ${body.slice(0, 200)}`)
      if (reply.status !== 200) {
        if (storeDigest(router) !== before) throw new Error(`a refused write changed the store: ${body.slice(0, 200)}`)
        return
      }
      // Everything that reads a token reads this one.
      for (const path of [`/token?token=${name}&include=metadata`, '/tokens?include=metadata', `/token-history?token=${name}`]) {
        const back = await call(`${router.url}${path}`)
        if (back.status !== 200) throw new Error(`${path} does not read an accepted token: ${back.status} ${back.text.slice(0, 200)} (${body.slice(0, 200)})`)
      }
      accepted.set(name, (await call(`${router.url}/token?token=${name}`)).text)
    }),
    { seed: SEED, numRuns: 600 },
  )
  t.ok(accepted.size > 0, `${accepted.size} of the generated tokens were accepted (the rest refused cleanly)`)

  await router.app.stop()
  const restarted = await startRouter(t, {}, { dataDir: router.dataDir })
  for (const [name, text] of accepted) {
    const back = await call(`${restarted.url}/token?token=${name}`)
    t.equal(back.text, text, `${name} reads back the same after a restart`)
  }
})

t.test('generated token names: valid ones round-trip through a restart, the rest are 400s naming the token', async (t) => {
  const router = await startRouter(t)
  const created: string[] = []
  await fc.assert(
    fc.asyncProperty(
      fc.oneof(fc.string({ unit: 'grapheme', maxLength: 30 }), fc.string({ minLength: 180, maxLength: 260 }), fc.stringMatching(/^[a-z][a-z0-9.$_-]{0,240}$/)),
      async (name) => {
        const reply = await call(`${router.url}/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...kitchenToken(), token: name }) })
        checkAnswer(reply, `token name ${JSON.stringify(name).slice(0, 100)}`)
        if (reply.status === 200) created.push(name)
        else if (reply.json<WaiterError>()['waiter-error']?.details?.['field'] !== 'token') throw new Error(`a refused name does not name the token field: ${reply.text.slice(0, 200)}`)
      },
    ),
    { seed: SEED, numRuns: 400 },
  )
  t.ok(created.length > 0, `${created.length} names accepted`)
  await router.app.stop()
  const restarted = await startRouter(t, {}, { dataDir: router.dataDir })
  let readable = 0
  for (const name of created) if ((await call(`${restarted.url}/token?token=${encodeURIComponent(name)}`)).status === 200) readable += 1
  t.equal(readable, created.length, 'every accepted name reads back after a restart')
})

t.test('generated x-waiter-* headers and /apps filters: answers, never 5xx, and no instance ejected', async (t) => {
  // On-the-fly descriptions allowed: the headers reach the resolver and the schema, not only the refusal.
  const router = await startRouter(t, { 'proxy.allowOnTheFly': true })
  await createToken(router, 'target', kitchenToken({ 'concurrency-level': 10 }))
  const headerNames = [...[...PARAMETERS.keys()].map((k) => `x-waiter-${k}`), 'x-waiter-token', 'x-waiter-timeout', 'x-waiter-queue-timeout', 'x-waiter-streaming-timeout', 'x-waiter-service-id', 'x-waiter-debug', 'x-waiter-param-FOO', 'x-waiter-']
  const printable = fc.string({ unit: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)), maxLength: 300 })
  const headerValue = fc.oneof(
    printable,
    fc.integer({ min: -10, max: 100_000_000_000 }).map(String),
    jsonish.map((v) => JSON.stringify(v)).filter((s) => s.length < 8000 && /^[\x20-\x7e]*$/.test(s)),
    fc.integer({ min: 1, max: 3000 }).map((depth) => `${'['.repeat(depth)}1${']'.repeat(depth)}`),
  )
  await fc.assert(
    fc.asyncProperty(fc.dictionary(fc.constantFrom(...headerNames), headerValue, { minKeys: 1, maxKeys: 5 }), async (headers) => {
      // Served or refused, never a failure of ours. A generated on-the-fly description may be valid
      // and start (its command does not exist: a deployment error), or time out in the queue.
      const reply = await call(`${router.url}/fuzz`, { headers: { 'x-waiter-token': 'target', ...headers } })
      if (reply.status === 503 && ['MAITRE_QUEUE_TIMEOUT', 'MAITRE_DEPLOYMENT'].includes(String(reply.headers['x-maitre-error']))) return
      checkAnswer(reply, `headers ${JSON.stringify(headers).slice(0, 300)}`)
    }),
    { seed: SEED, numRuns: 500 },
  )
  const filterKey = fc.oneof(fc.constantFrom(...PARAMETERS.keys(), 'env.FOO', 'metadata.a.b.c.d.e', 'constructor', '__proto__'), fc.string({ maxLength: 20 }))
  await fc.assert(
    fc.asyncProperty(fc.array(fc.tuple(filterKey, fc.string({ maxLength: 300 })), { maxLength: 20 }), async (filters) => {
      const query = new URLSearchParams(filters).toString()
      const reply = await call(`${router.url}/apps?${query}`)
      checkAnswer(reply, `/apps?${query.slice(0, 300)}`)
    }),
    { seed: SEED, numRuns: 500 },
  )
  const targetId = (await call(`${router.url}/service-id`, { headers: { 'x-waiter-token': 'target' } })).text
  const slots = (await call(`${router.url}/apps/${targetId}`)).json<{ slots: { ejectedUntil: number }[] }>().slots
  t.ok(slots.every((s) => s.ejectedUntil === 0), 'whatever the headers asked, no instance was ejected')
  t.equal((await call(`${router.url}/status`)).status, 200, 'the router is unharmed')
})

t.test('generated malformed HTTP on raw sockets: an answer of 4xx or a close, never a 5xx or a hang', async (t) => {
  const router = await startRouter(t, { 'server.headersTimeoutMs': 1000 })
  const methods = ['GET', 'POST', 'OPTIONS', 'CONNECT', 'PUT', 'G\x00T', '', 'GET GET', 'PRI']
  const targets = ['/', '*', '/status', 'http://x/', '//', '/%zz', '/apps/%E0%A4%A', '\x7f', ' ', '/'.repeat(100)]
  const versions = ['HTTP/1.1', 'HTTP/1.0', 'HTTP/2.0', 'HTTP/0.9', '', 'HTTP/1.1 extra', 'HTTP/9.9']
  const headerLine = fc.oneof(
    fc.constantFrom('host: 127.0.0.1', 'content-length: 5', 'content-length: -1', 'content-length: 1, 2', 'transfer-encoding: chunked', 'transfer-encoding: gzip, chunked', 'x-waiter-token: target', 'expect: 100-continue', 'connection: upgrade', 'upgrade: websocket', 'x-a:\tb', 'bad header', ': empty', 'x-cid: \x01'),
    fc.string({ maxLength: 60 }).map((s) => s.replace(/[\r\n]/g, '')),
  )
  const request = fc.record({
    method: fc.constantFrom(...methods),
    target: fc.constantFrom(...targets),
    version: fc.constantFrom(...versions),
    headers: fc.array(headerLine, { maxLength: 6 }),
    body: fc.string({ maxLength: 40 }),
    ending: fc.constantFrom('\r\n\r\n', '\n\n', '\r\n', ''),
  })
  await createToken(router, 'target', kitchenToken())
  await fc.assert(
    fc.asyncProperty(request, async (r) => {
      const text = `${r.method} ${r.target} ${r.version}\r\n${r.headers.join('\r\n')}${r.ending}${r.body}`
      const exchange = await raw(router.url, text)
      // An answer, or a close, well within the 1 s header deadline plus a second.
      const answered = await Promise.race([
        exchange.closed.then(() => 'closed'),
        new Promise<string>((resolve) => {
          const poll = setInterval(() => {
            if (statusOf(exchange.received()) !== undefined) {
              clearInterval(poll)
              resolve('answered')
            }
          }, 10)
          setTimeout(() => {
            clearInterval(poll)
            resolve('hung')
          }, 3000)
        }),
      ])
      if (answered === 'answered') await Promise.race([exchange.closed, new Promise((r) => setTimeout(r, 500))])
      exchange.socket.destroy()
      if (answered === 'hung') throw new Error(`no answer and no close: ${JSON.stringify(text)}`)
      const received = exchange.received()
      const status = statusOf(received)
      if (status === undefined) return // closed without an answer: HTTP/0.9, or nothing to answer
      // The first answer: a 2xx/3xx for what happened to be a valid request, or a refusal that is a
      // 4xx (never a 5xx) naming the problem in JSON.
      if (status >= 500) throw new Error(`${status} for ${JSON.stringify(text)}: ${received.slice(0, 200)}`)
      if (status >= 400) {
        // JSON, unless the request reached a handler and asked for nothing (no Accept): then
        // Waiter's error body is negotiated to text, which must still say what was wrong.
        const head = received.slice(0, received.indexOf('\r\n\r\n'))
        const body = received.slice(received.indexOf('\r\n\r\n') + 4)
        if (/content-type: application\/json/i.test(head)) {
          const firstLine = body.indexOf('\n') === -1 ? body : body.slice(0, body.indexOf('\n'))
          let parsed: WaiterError
          try {
            parsed = JSON.parse(firstLine) as WaiterError
          } catch {
            throw new Error(`a ${status} with a broken JSON body for ${JSON.stringify(text)}: ${received.slice(0, 300)}`)
          }
          if (parsed['waiter-error']?.message === undefined) throw new Error(`a ${status} naming nothing for ${JSON.stringify(text)}`)
        } else if (!/content-type: text\/plain/i.test(head) || body.trim() === '') {
          throw new Error(`a ${status} that says nothing for ${JSON.stringify(text)}: ${received.slice(0, 300)}`)
        }
      }
    }),
    { seed: SEED, numRuns: 300 },
  )
  t.equal((await call(`${router.url}/status`)).status, 200, 'the router is unharmed')
})
