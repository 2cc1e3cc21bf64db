import t from 'tap'
import { call, createToken, kitchenToken, startKubeRouter } from '../fixtures/router.ts'

t.test('smoke', async (t) => {
  const router = await startKubeRouter(t)
  await createToken(router, 'kk', kitchenToken())
  const started = Date.now()
  const reply = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'kk' } })
  t.equal(reply.status, 200, reply.text)
  t.comment(`took ${Date.now() - started} ms`)
  t.comment(JSON.stringify(router.sim.list('replicasets', router.namespace).map((r) => r.metadata.name)))
})
