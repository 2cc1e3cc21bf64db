import t from 'tap'
import { createServer, type Server } from 'node:net'
import { PortAllocator } from '../../src/backends/local/ports.ts'

function listening(): Promise<Server> {
  return new Promise((resolve) => {
    const server = createServer()
    server.listen(0, '127.0.0.1', () => resolve(server))
  })
}

t.test('a port is handed out only when nothing listens on it, no instance holds it and its rest is over; a range with none says why of each', async (t) => {
  const taken = await listening()
  const port = (taken.address() as { port: number }).port
  let now = 0
  const ports = new PortAllocator([port, port], '127.0.0.1', 1000, () => now)
  await t.rejects(ports.reserve(1), { message: `No free ports left in the range ${port}-${port} (EADDRINUSE: 1)` }, 'another process listens there')
  await new Promise<void>((resolve) => taken.close(() => resolve()))
  t.same(await ports.reserve(1), [port], 'free once it stopped listening')
  await t.rejects(ports.reserve(1), { message: /\(held by an instance: 1\)$/ }, 'never handed out twice')
  ports.release([port])
  await t.rejects(ports.reserve(1), { message: /\(resting after release: 1\)$/ }, 'a released port rests')
  now = 1000
  t.same(await ports.reserve(1), [port], 'and comes back after its rest')
})
