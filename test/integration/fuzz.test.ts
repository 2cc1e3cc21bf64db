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
const tokenDocument = fc.record({
  base: fc.boolean(),
  fields: fc.dictionary(fc.oneof(fc.constantFrom(...parameterNames), fc.constantFrom(...hostileKeys), fc.string({ maxLength: 12 })), fc.oneof(jsonish, tower), { maxKeys: 8 }),
})

t.test('generated token documents: accepted ones read back; refused ones change nothing on disk', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'anchor', kitchenToken())
  const accepted = new Map<string, string>()
  await fc.assert(
    fc.asyncProperty(fc.integer({ min: 0, max: 9 }), tokenDocument, async (slot, doc) => {
      const name = `fuzz${slot}`
      const body = JSON.stringify({ ...(doc.base ? kitchenToken() : {}), ...doc.fields, token: name })
      const before = storeDigest(router)
      const reply = await call(`${router.url}/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body })
      checkAnswer(reply, `POST /token ${body.slice(0, 200)}`)
      if (reply.status !== 200) {
        if (storeDigest(router) !== before) throw new Error(`a refused write changed the store: ${body.slice(0, 200)}`)
        return
      }
      const back = await call(`${router.url}/token?token=${name}&include=metadata`)
      if (back.status !== 200) throw new Error(`an accepted token does not read back: ${back.status}`)
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

t.test('generated x-waiter-* headers and /apps filters: answers, never 5xx', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'target', kitchenToken())
  const headerNames = [...[...PARAMETERS.keys()].map((k) => `x-waiter-${k}`), 'x-waiter-token', 'x-waiter-timeout', 'x-waiter-queue-timeout', 'x-waiter-streaming-timeout', 'x-waiter-service-id', 'x-waiter-debug', 'x-waiter-param-FOO', 'x-waiter-']
  const headerValue = fc.string({ unit: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)), maxLength: 300 })
  await fc.assert(
    fc.asyncProperty(fc.dictionary(fc.constantFrom(...headerNames), headerValue, { minKeys: 1, maxKeys: 5 }), async (headers) => {
      // Served (the target's instance) or refused, but never a failure of ours. A cold start may be
      // refused with 503 only when the generated queue timeout is that short.
      const reply = await call(`${router.url}/fuzz`, { headers: { 'x-waiter-token': 'target', ...headers, 'x-waiter-queue-timeout': '5000' } })
      if (reply.status === 503 && reply.headers['x-maitre-error'] === 'MAITRE_QUEUE_TIMEOUT') return
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
      exchange.socket.destroy()
      if (answered === 'hung') throw new Error(`no answer and no close: ${JSON.stringify(text)}`)
      const status = statusOf(exchange.received())
      if (status !== undefined && status >= 500 && status !== 503) throw new Error(`${status} for ${JSON.stringify(text)}: ${exchange.received().slice(0, 200)}`)
    }),
    { seed: SEED, numRuns: 300 },
  )
  t.equal((await call(`${router.url}/status`)).status, 200, 'the router is unharmed')
})
