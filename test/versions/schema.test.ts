import t from 'tap'
import { readFileSync } from 'node:fs'
import { Ajv2020 } from 'ajv/dist/2020.js'
import { validateParameters } from '../../src/versions/descriptor.ts'
import { PARAMETERS } from '../../src/versions/parameters.ts'

const schema = JSON.parse(readFileSync('schema/service-descriptor.schema.json', 'utf8')) as { properties: Record<string, unknown> }
const ajv = new Ajv2020({ allErrors: true, strict: false })
const schemaAccepts = ajv.compile(schema)

const base = { cmd: 'node app.js --port $PORT0', cpus: 0.5, mem: 256, version: 'v1' }

const VALID: Record<string, unknown>[] = [
  base,
  { ...base, 'concurrency-level': 10000, 'min-instances': 2, 'max-instances': 2, ports: 3, 'health-check-port-index': 2 },
  { ...base, env: { FOO_BAR: 'x', WAITER_CONFIG_X: 'y' }, metadata: { team: 'core' }, 'allowed-params': ['FOO'] },
  { ...base, 'scale-up-factor': 0.5, 'scale-down-factor': 0.01, 'jitter-threshold': 0, 'expired-instance-restart-rate': 1, 'scale-factor': 2 },
  { ...base, 'load-balancing': 'random', 'backend-proto': 'https', 'health-check-proto': 'https', 'idle-timeout-mins': 0, 'metric-group': 'web_api', 'keep-alive': 'adaptive' },
]

const INVALID: [string, Record<string, unknown>][] = [
  ['missing cmd', { cpus: 1, mem: 1, version: 'v' }],
  ['negative cpus', { ...base, cpus: -1 }],
  ['cpus over the limit', { ...base, cpus: 33 }],
  ['concurrency 0', { ...base, 'concurrency-level': 0 }],
  ['fractional concurrency', { ...base, 'concurrency-level': 1.5 }],
  ['unknown balancing', { ...base, 'load-balancing': 'round-robin' }],
  ['unknown keep-alive policy', { ...base, 'keep-alive': 'forever' }],
  ['reserved env', { ...base, env: { HOME: '/root' } }],
  ['bad env key', { ...base, env: { '9LIVES': 'x' } }],
  ['scale-up-factor 1', { ...base, 'scale-up-factor': 1 }],
  ['jitter 1', { ...base, 'jitter-threshold': 1 }],
  ['blank version', { ...base, version: ' ' }],
  ['long cmd', { ...base, cmd: 'x'.repeat(1201) }],
  ['bad metric group', { ...base, 'metric-group': 'X' }],
  ['ports 11', { ...base, ports: 11 }],
  ['a health-check-url that names another host', { ...base, 'health-check-url': '@evil.example:80/x' }],
  ['a liveness-check-url that is not a path', { ...base, 'liveness-check-url': 'status' }],
  ['a health-check-url with a space', { ...base, 'health-check-url': '/a b' }],
  ['a version of 4097 characters', { ...base, version: 'v'.repeat(4097) }],
]

t.test('the schema and the validator cover the same parameters', async (t) => {
  t.same(Object.keys(schema.properties).sort(), [...PARAMETERS.keys()].sort())
})

t.test('valid examples pass both', async (t) => {
  for (const example of VALID) {
    t.ok(schemaAccepts(example), `schema accepts ${JSON.stringify(example)}: ${ajv.errorsText(schemaAccepts.errors)}`)
    t.same(validateParameters(example, { requireComplete: true }), [], 'validator accepts it')
  }
})

t.test('invalid examples fail both', async (t) => {
  for (const [why, example] of INVALID) {
    t.notOk(schemaAccepts(example), `schema rejects: ${why}`)
    t.not(validateParameters(example, { requireComplete: true }).length, 0, `validator rejects: ${why}`)
  }
})
