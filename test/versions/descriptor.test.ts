import t from 'tap'
import { effectiveParameters, MISCONFIGURED, misconfigured, validateParameters } from '../../src/versions/descriptor.ts'
import { defaultParameters, PARAMETERS } from '../../src/versions/parameters.ts'

const valid = { cmd: 'node app.js', cpus: 0.5, mem: 256, version: 'v1' }

t.test('a complete description passes', async (t) => {
  t.same(validateParameters(valid, { requireComplete: true }), [])
})

t.test('missing required parameters are each named', async (t) => {
  const issues = validateParameters({ cpus: 1 }, { requireComplete: true })
  t.same(issues.map((i) => i.field).sort(), ['cmd', 'mem', 'version'])
  t.same(validateParameters({ cpus: 1 }, { requireComplete: false }), [], 'a token may be partial')
})

t.test("Waiter's messages for type and range violations", async (t) => {
  const issues = validateParameters(
    { ...valid, cpus: 'bad-cpus', 'concurrency-level': 0, 'scale-up-factor': 1, 'load-balancing': 'round-robin', 'jitter-threshold': 1 },
    { requireComplete: true },
  )
  const byField = Object.fromEntries(issues.map((i) => [i.field, i.message]))
  t.equal(byField['cpus'], 'cpus must be a positive number.')
  t.equal(byField['concurrency-level'], 'concurrency-level must be an integer in the range [1, 10000].')
  t.equal(byField['scale-up-factor'], 'scale-up-factor must be a double in the range (0, 1).')
  t.equal(byField['load-balancing'], "load-balancing must be one of: 'oldest', 'youngest', 'random'.")
  t.equal(byField['jitter-threshold'], 'jitter-threshold must be a double in the range [0, 1).')
})

t.test('limits and cross-field rules', async (t) => {
  const over = validateParameters({ ...valid, cpus: 33 }, { requireComplete: true })
  t.match(over[0]?.message, 'The following fields exceed their allowed limits: cpus is 33 but the max allowed is 32')
  const longCmd = validateParameters({ ...valid, cmd: 'x'.repeat(1201) }, { requireComplete: true })
  t.match(longCmd[0]?.message, 'cmd must be at most 1200 characters')
  const minMax = validateParameters({ ...valid, 'min-instances': 10, 'max-instances': 5 }, { requireComplete: true })
  t.equal(minMax[0]?.message, 'min-instances (10) must be less than or equal to max-instances (5)')
  const port = validateParameters({ ...valid, 'health-check-port-index': 2 }, { requireComplete: true })
  t.equal(port[0]?.message, 'The health check port index (2) must be smaller than ports (1)')
  const proto = validateParameters({ ...valid, 'backend-proto': 'h2c', 'health-check-proto': 'http' }, { requireComplete: true })
  t.equal(proto[0]?.message, 'The backend-proto (h2c) and health check proto (http) must match when health-check-port-index is zero')
  const ns = validateParameters({ ...valid, 'run-as-user': 'alice', namespace: 'bob' }, { requireComplete: true })
  t.equal(ns[0]?.message, 'Service namespace must either be omitted or match the run-as-user.')
})

t.test('env rules', async (t) => {
  const reserved = validateParameters({ ...valid, env: { HOME: '/x', PORT0: '1', WAITER_CONFIG_OK: 'y' } }, { requireComplete: true })
  t.equal(reserved[0]?.message, 'The following environment variable keys are reserved: HOME, PORT0.')
  const invalid = validateParameters({ ...valid, env: { '1BAD': 'x' } }, { requireComplete: true })
  t.equal(invalid[0]?.message, 'The following environment variable keys are invalid: 1BAD.')
  const nul = validateParameters({ ...valid, env: { A: 'x\0y', B: 'fine' } }, { requireComplete: true })
  t.same(nul.map((i) => [i.field, i.message]), [['env', 'Environment variable values must not contain a NUL character: A.']], 'refused when written, not at launch')
})

t.test('a NUL character in a string no process can take is refused when written, naming the field', async (t) => {
  for (const field of ['cmd', 'run-as-user', 'version']) {
    const issues = validateParameters({ ...valid, [field]: 'a\0b' }, { requireComplete: true })
    t.same(issues.map((i) => [i.field, i.message]), [[field, `${field} must not contain a NUL character.`]], field)
  }
})

t.test('the 400 error names every offending field', async (t) => {
  const err = misconfigured(validateParameters({ cpus: -1, mem: 'lots' }, { requireComplete: true }))
  t.equal(err.status, 400)
  t.ok(err.message.startsWith(`${MISCONFIGURED}\n`))
  t.same((err.details['fields'] as string[]).sort(), ['cmd', 'cpus', 'mem', 'version'])
})

t.test("defaults follow Waiter's code, except max-queue-length", async (t) => {
  const d = defaultParameters()
  t.equal(d['idle-timeout-mins'], 30)
  t.equal(d['max-queue-length'], 1000)
  t.equal(d['scale-up-factor'], 0.1)
  t.equal(d['scale-down-factor'], 0.001)
  t.equal(d['concurrency-level'], 1)
  t.equal(d['max-instances'], 500)
  t.equal(d['health-check-url'], '/status')
  const effective = effectiveParameters(valid)
  t.equal(effective['liveness-check-url'], '/status', 'liveness falls back to the health check')
  t.equal(effective['health-check-proto'], 'http')
  t.ok([...PARAMETERS.values()].every((p) => p.default === undefined || p.check(p.name, p.default) === undefined), 'every default passes its own rule')
})
