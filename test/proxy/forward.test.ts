/** Whose fault a failed forward is decides who pays: the client, the instance (ejection), or the router itself. */
import t from 'tap'
import { errors as undiciErrors } from 'undici'
import { classify } from '../../src/proxy/forward.ts'
import { MaitreError } from '../../src/errors.ts'

const withCode = (code: string, message = code): Error => Object.assign(new Error(message), { code })

t.test('the router out of descriptors or memory: a 503 of its own, the instance not charged', async (t) => {
  for (const code of ['EMFILE', 'ENFILE', 'ENOBUFS', 'ENOMEM']) {
    const { outcome, error } = classify(withCode(code), false)
    t.equal(outcome, 'generic-error', `${code}: no ejection`)
    t.match(error, { code: 'MAITRE_ROUTER_OVERLOADED', status: 503, headers: { 'retry-after': '1' } })
  }
})

t.test('what undici refuses to carry, and a body the client let go idle, are the client’s', async (t) => {
  const invalid = classify(new undiciErrors.InvalidArgumentError('invalid header value'), false)
  t.equal(invalid.outcome, 'client-error')
  t.match(invalid.error, { code: 'MAITRE_BAD_REQUEST', status: 400 })
  const unsupported = classify(new undiciErrors.NotSupportedError('expect header not supported'), false)
  t.equal(unsupported.outcome, 'client-error')
  const idle = new MaitreError('MAITRE_CLIENT_TIMEOUT', 'The request body sent nothing for 30000 ms')
  t.same(classify(idle, false), { outcome: 'client-error', error: idle })
})

t.test('the instance’s own failures are the instance’s', async (t) => {
  t.match(classify(withCode('ECONNREFUSED'), false), { outcome: 'instance-error', error: { code: 'MAITRE_UPSTREAM_CONNECT', status: 502 } })
  t.match(classify(withCode('UND_ERR_HEADERS_TIMEOUT'), false), { outcome: 'instance-error', error: { code: 'MAITRE_UPSTREAM_TIMEOUT', status: 504 } })
  t.match(classify(withCode('ECONNRESET'), false), { outcome: 'instance-error', error: { code: 'MAITRE_UPSTREAM', status: 502 } })
  t.match(classify(withCode('ECONNRESET'), true), { outcome: 'client-error' }, 'unless the client left first')
})
