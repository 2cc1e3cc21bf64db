import t from 'tap'
import { isApiRequest } from '../../src/proxy/classify.ts'

const router = new Set(['localhost', '127.0.0.1'])

t.test("Waiter's rule: API call or proxied request", async (t) => {
  t.ok(isApiRequest('/apps', { host: 'localhost:9091' }, router), 'router host, no x-waiter header')
  t.ok(isApiRequest('/apps', { host: 'localhost', 'x-waiter-debug': 'true' }, router), 'x-waiter-debug does not count')
  t.ok(isApiRequest('/apps', {}, router), 'no Host at all')
  t.notOk(isApiRequest('/apps', { host: 'localhost', 'x-waiter-token': 'svc' }, router), 'any other x-waiter header proxies')
  t.notOk(isApiRequest('/apps', { host: 'svc.example.com' }, router), 'a foreign Host is a token')
  t.ok(isApiRequest('/token', { host: 'svc.example.com', 'x-waiter-token': 'svc' }, router), '/token is always the API')
  t.ok(isApiRequest('/service-id', { 'x-waiter-token': 'svc' }, router))
  t.ok(isApiRequest('/waiter-async/status/x', { host: 'svc.example.com' }, router))
})
