import t from 'tap'
import { PassThrough } from 'node:stream'
import { createApp } from '../../src/app.ts'
import { DEFAULTS, withOverrides } from '../../src/config.ts'
import { createLogger } from '../../src/log.ts'
import { call, createToken, kitchenToken, waitFor, type Router } from '../fixtures/router.ts'

t.test('JSON log lines: one access line per request, and lifecycle lines', async (t) => {
  const lines: Record<string, unknown>[] = []
  const out = new PassThrough()
  out.on('data', (chunk: Buffer) => {
    for (const line of chunk.toString().split('\n')) if (line !== '') lines.push(JSON.parse(line) as Record<string, unknown>)
  })
  const config = withOverrides(DEFAULTS, { 'server.port': 0, dataDir: t.testdir(), 'backend.local.portRange': [32100, 32199] })
  const app = await createApp(config, { log: createLogger('info', out) })
  const port = await app.start()
  t.teardown(() => app.stop())
  const router = { url: `http://127.0.0.1:${port}` } as Router
  await createToken(router, 'kitchen', kitchenToken())
  await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'kitchen', 'x-cid': 'log-test-1' } })
  await waitFor('the access line', () => lines.find((l) => l['cid'] === 'log-test-1' && l['msg'] === 'request completed'))
  const access = lines.find((l) => l['cid'] === 'log-test-1' && l['msg'] === 'request completed') as Record<string, unknown>
  t.match(access, { level: 30, token: 'kitchen', status: 200, coldStart: true, method: 'GET', path: '/request-info' })
  t.match(access['service'], /^maitre-/)
  t.match(access['instance'], /^maitre-.*\.[0-9a-f]+$/)
  for (const field of ['queueMs', 'backendMs', 'totalMs', 'time', 'pid']) t.type(access[field], 'number', field)
  const messages = new Set(lines.map((l) => l['msg']))
  for (const msg of ['maitre listening', 'cold start: creating service', 'instance started', 'instance healthy']) t.ok(messages.has(msg), `logs "${msg}"`)
})
