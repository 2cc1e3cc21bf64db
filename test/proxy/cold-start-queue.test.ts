/**
 * Requests that wait for a version to start count against its max-queue-length, as Waiter queues
 * them from their arrival: a long cold start (a Kubernetes image pull) cannot gather requests
 * without bound.
 */
import t from 'tap'
import { harness, ok } from '../fixtures/proxy-harness.ts'

t.test('a cold start holds at most max-queue-length requests; the rest get the queue-full 503 at once, and those held are served', async (t) => {
  const h = await harness(t, async (instance, _req, res) => ok(res, `served by ${instance.id}`), { core: { 'max-queue-length': 3 } })
  let open = (): void => undefined
  h.backend.ensureGate = new Promise<void>((resolve) => (open = resolve))
  const held = [h.get(), h.get(), h.get()]
  // Every held request is waiting on the start before more arrive.
  while (h.backend.calls.length === 0) await new Promise((r) => setImmediate(r))
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r))
  const refused = await Promise.all([h.getJson(), h.getJson()])
  for (const reply of refused) {
    t.equal(reply.status, 503)
    t.equal(reply.code, 'MAITRE_QUEUE_FULL')
    t.equal(reply.error['message'], 'Max queue length exceeded')
    t.equal(reply.details['current-queue-length'], 3, 'the three waiting for the start are the queue')
    t.equal(reply.details['max-queue-length'], 3)
  }
  open()
  const served = await Promise.all(held)
  t.same(served.map((r) => r.status), [200, 200, 200], 'the requests that waited for the start are all served')
  // Their places are given back: the queue bound is whole again.
  const after = await Promise.all([h.get(), h.get(), h.get()])
  t.same(after.map((r) => r.status), [200, 200, 200])
})

t.test('a request whose wait for the start times out gives its place back', async (t) => {
  const h = await harness(t, async (instance, _req, res) => ok(res, `served by ${instance.id}`), { core: { 'max-queue-length': 1 }, queueTimeoutMs: 200 })
  h.backend.ensureGate = new Promise<void>(() => undefined)
  const first = h.getJson()
  while (h.backend.calls.length === 0) await new Promise((r) => setImmediate(r))
  t.equal((await h.getJson()).code, 'MAITRE_QUEUE_FULL', 'the one place is taken')
  t.equal((await first).code, 'MAITRE_QUEUE_TIMEOUT')
  t.equal((await h.getJson()).code, 'MAITRE_QUEUE_TIMEOUT', 'the next request took the place the first gave back, and waited')
})
