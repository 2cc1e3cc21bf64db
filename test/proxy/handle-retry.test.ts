/**
 * A request an instance never received (its connection refused) goes to another instance in
 * rotation, whether or not the backend has already dropped the refusing one.
 */
import t from 'tap'
import { harness, ok } from '../fixtures/proxy-harness.ts'
import { MaitreError } from '../../src/errors.ts'

const refused = { outcome: 'instance-error' as const, status: undefined, notDelivered: true, error: new MaitreError('MAITRE_UPSTREAM_CONNECT', 'Request failed to connect to service backend') }

t.test('a refused request goes to the other instance even when the backend dropped the dead one before the refusal came back (a slow connect failure to a vanished pod)', async (t) => {
  let drop = (): void => undefined
  const h = await harness(t, async (instance, _req, res) => {
    if (instance.id !== 's.1') return ok(res, `served by ${instance.id}`)
    drop()
    return refused
  })
  drop = () => h.backend.setHealthy('s', 's.1', false)
  h.backend.add('s', [1, 2])
  h.tracker.configure('s', { concurrencyLevel: 1, loadBalancing: 'oldest', maxQueueLength: 10 })
  const reply = await h.get()
  t.same(h.forwarded, ['s.1', 's.2'], 'tried s.1, then s.2')
  t.equal(reply.status, 200)
  t.equal(reply.body, 'served by s.2')
})

t.test('and, as before, when the backend has not noticed yet', async (t) => {
  const h = await harness(t, async (instance, _req, res) => (instance.id === 's.1' ? refused : ok(res, `served by ${instance.id}`)))
  h.backend.add('s', [1, 2])
  h.tracker.configure('s', { concurrencyLevel: 1, loadBalancing: 'oldest', maxQueueLength: 10 })
  const reply = await h.get()
  t.same(h.forwarded, ['s.1', 's.2'])
  t.equal(reply.status, 200)
})

t.test('with no other instance in rotation, the 502 says what happened', async (t) => {
  const h = await harness(t, async () => refused)
  h.backend.add('s', [1])
  h.tracker.configure('s', { concurrencyLevel: 1, loadBalancing: 'oldest', maxQueueLength: 10 })
  const reply = await h.get()
  t.same(h.forwarded, ['s.1'])
  t.equal(reply.status, 502)
  t.match(reply.body, 'Request failed to connect to service backend')
})
