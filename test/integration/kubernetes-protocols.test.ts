/**
 * gRPC and WebSockets on the Kubernetes backend (the in-repo API simulator; pods are local
 * processes on their own IPs): the same relay as on the local backend, to pods.
 */
import t from 'tap'
import * as grpc from '@grpc/grpc-js'
import { WebSocket } from 'ws'
import { echoOnce, grpcToken } from '../fixtures/grpc-service.ts'
import { createToken, kitchenToken, startKubeRouter } from '../fixtures/router.ts'

t.test('a gRPC call and a WebSocket through a Kubernetes-backed router', async (t) => {
  const router = await startKubeRouter(t)
  await createToken(router, 'grpc', grpcToken())
  await createToken(router, 'chat', kitchenToken())
  const echoed = await echoOnce(new URL(router.url).host, grpc.credentials.createInsecure(), 'grpc', 'to a pod')
  t.equal(echoed, 'to a pod', 'gRPC over h2c to a pod (its health check on its HTTP port, as the kubelet probes)')

  const ws = new WebSocket(`${router.url.replace('http://', 'ws://')}/`, { headers: { 'x-waiter-token': 'chat' } })
  await new Promise((resolve, reject) => {
    ws.once('open', resolve)
    ws.once('error', reject)
  })
  const reply = new Promise<string>((resolve) => ws.once('message', (d) => resolve(d.toString())))
  ws.send('to a pod too')
  t.equal(await reply, 'to a pod too', 'a WebSocket to a pod')
  const closed = new Promise<number>((resolve) => ws.once('close', (code) => resolve(code)))
  ws.close(1000)
  t.equal(await closed, 1000)
})
