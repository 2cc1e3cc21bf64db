/**
 * The framework's connection to the master, against small hand-made masters: a master with no
 * leader, and one whose stream carries a record that is not an event.
 */
import t from 'tap'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { systemClock } from '../../src/clock.ts'
import { silentLogger } from '../../src/log.ts'
import type { Event } from '../../src/backends/mesos/protocol.ts'
import { recordOf } from '../../src/backends/mesos/recordio.ts'
import { MesosScheduler, redirectTarget } from '../../src/backends/mesos/scheduler.ts'
import { waitFor } from '../fixtures/router.ts'

async function master(t: { teardown(fn: () => void): void }, handle: (req: IncomingMessage, res: ServerResponse, body: string) => void): Promise<string> {
  const server = createServer((req, res) => {
    let body = ''
    req.on('data', (c: Buffer) => (body += c.toString()))
    req.on('end', () => handle(req, res, body))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    server.closeAllConnections()
    server.close()
  })
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`
}

t.test("a 307's Location has no scheme: the one it came over is used", async (t) => {
  t.equal(redirectTarget('http://10.0.0.1:5050', '//10.0.0.2:5050/api/v1/scheduler'), 'http://10.0.0.2:5050')
  t.equal(redirectTarget('https://m1:5050', '//m2:5050/master/state'), 'https://m2:5050')
  t.equal(redirectTarget('http://m1:5050', undefined), undefined)
})

t.test('no leader at the first master (503): the next one is asked; a record that is no event is skipped, the stream goes on', async (t) => {
  const noLeader = await master(t, (_req, res) => res.writeHead(503).end('No leader elected'))
  const calls: { streamId: string | undefined; type: string }[] = []
  const leader = await master(t, (req, res, body) => {
    const call = JSON.parse(body) as { type: string }
    if (call.type !== 'SUBSCRIBE') {
      calls.push({ streamId: req.headers['mesos-stream-id'] as string | undefined, type: call.type })
      res.writeHead(202).end()
      return
    }
    res.writeHead(200, { 'content-type': 'application/json', 'mesos-stream-id': 'stream-1' })
    res.write(recordOf(JSON.stringify({ type: 'SUBSCRIBED', subscribed: { framework_id: { value: 'fw-1' }, heartbeat_interval_seconds: 15 } })))
    res.write(recordOf('{"this is not": json'))
    res.write(recordOf(JSON.stringify({ type: 'HEARTBEAT' })))
  })
  const events: Event[] = []
  let disconnects = 0
  const scheduler = new MesosScheduler({
    masters: [noLeader, leader],
    frameworkInfo: { user: 'maitre', name: 'maitre' },
    frameworkId: undefined,
    credentials: undefined,
    requestTimeoutMs: 5000,
    clock: systemClock,
    log: silentLogger,
    onEvent: (event) => events.push(event),
    onDisconnected: () => (disconnects += 1),
  })
  t.teardown(() => scheduler.close())
  scheduler.start()
  await waitFor('the heartbeat after the bad record', () => (events.some((e) => e.type === 'HEARTBEAT') ? true : undefined))
  t.same(events.map((e) => e.type), ['SUBSCRIBED', 'HEARTBEAT'], 'the record that is not JSON was skipped')
  t.equal(disconnects, 0, 'and the stream was not dropped for it')
  t.equal(scheduler.frameworkId, 'fw-1')
  t.equal(scheduler.leader, leader, 'the master that answered leads')
  await scheduler.call({ type: 'REVIVE', revive: { roles: ['maitre'] } })
  t.same(calls, [{ streamId: 'stream-1', type: 'REVIVE' }], 'a call carries the stream id')
})
