import t from 'tap'
import { readFileSync } from 'node:fs'
import { DEFAULTS, etcdPrefixOf, loadConfigFile, parseConfig, redactedConfig, withOverrides } from '../src/config.ts'

t.test('config/example.yaml is exactly the defaults', async (t) => {
  t.same(loadConfigFile('config/example.yaml'), DEFAULTS)
  t.ok(readFileSync('config/example.yaml', 'utf8').split('\n').filter((l) => l.trim().startsWith('#')).length > 20, 'and it is commented')
})

t.test('an empty file is the defaults', async (t) => {
  t.same(parseConfig(''), DEFAULTS)
})

t.test('every problem is reported at once, with file:line:col and a hint', async (t) => {
  const text = 'server:\n  prot: 80\n  host: 5\nproxy:\n  queueTimeoutMs: -1\nlog:\n  level: loud\n'
  const err = (() => {
    try {
      parseConfig(text, 'bad.yaml')
    } catch (e) {
      return e as Error & { code: string }
    }
    return undefined
  })()
  t.equal(err?.code, 'MAITRE_INVALID_CONFIG')
  t.match(err?.message, 'bad.yaml:2:9: server.prot is not a known setting; did you mean port?')
  t.match(err?.message, 'bad.yaml:3:9: server.host = 5, must be a string')
  t.match(err?.message, 'bad.yaml:5:19: proxy.queueTimeoutMs = -1, must be an integer of milliseconds in [1, 2147483647]')
  t.match(err?.message, 'log.level = "loud", must be one of')
})

t.test('YAML that expands past the parser’s bound (a billion laughs) is a configuration error naming the file', async (t) => {
  const rows = ['a: &a [x, x, x, x, x, x, x, x, x]']
  for (const [name, prev] of [['b', 'a'], ['c', 'b'], ['d', 'c'], ['e', 'd']]) rows.push(`${name}: &${name} [${Array(9).fill(`*${prev}`).join(', ')}]`)
  t.throws(() => parseConfig(rows.join('\n'), 'bomb.yaml'), { code: 'MAITRE_INVALID_CONFIG', message: /bomb\.yaml: \(yaml\) Excessive alias count/ })
})

t.test('numbers with a ceiling: a timer past 2^31 - 1 ms (Node fires it after 1 ms) and a cache sized past a million are refused', async (t) => {
  t.throws(() => parseConfig('proxy:\n  queueTimeoutMs: 3000000000\n'), { message: /proxy\.queueTimeoutMs = 3000000000, must be an integer of milliseconds in \[1, 2147483647\]/ })
  t.throws(() => parseConfig('scaler:\n  gcIntervalMs: 4000000000\n'), { message: /scaler\.gcIntervalMs/ })
  t.throws(() => parseConfig('backend:\n  local:\n    minSigkillDelayMs: 2147483648\n'), { message: /in \[0, 2147483647\]/ })
  t.equal(parseConfig('proxy:\n  queueTimeoutMs: 2147483647\n').proxy.queueTimeoutMs, 2147483647, 'the ceiling itself is fine')
  t.throws(() => parseConfig('backend:\n  kubernetes:\n    watchTimeoutSecs: 2592000\n'), { message: /watchTimeoutSecs = 2592000, must be an integer of seconds in \[1, 86400\]/ }, 'a watch the router would abort after 1 ms')
  t.throws(() => parseConfig('proxy:\n  resolutionCacheSize: 50000000\n'), { message: /resolutionCacheSize = 50000000, must be an integer from 1 to 1000000/ })
  // HTTP/2 takes them as settings: past 2^32 - 1 the first HTTP/2 connection threw and took the router down.
  t.throws(() => parseConfig('server:\n  maxHeaderBytes: 8589934592\n'), { message: /server\.maxHeaderBytes = 8589934592, must be an integer in \[1, 1048576\]/ }, 'a header block of 8 GiB ("no limit")')
  t.throws(() => parseConfig('server:\n  maxHeaders: 100000\n'), { message: /server\.maxHeaders = 100000, must be an integer in \[1, 4096\]/ })
  t.equal(parseConfig('server:\n  maxHeaderBytes: 1048576\n  maxHeaders: 4096\n').server.maxHeaderBytes, 1048576, 'the ceilings themselves are fine')
})

t.test('an admin listener on the main listener’s port is refused at --check-config, not found out as EADDRINUSE', async (t) => {
  t.throws(() => parseConfig('server:\n  port: 9091\n  admin:\n    host: 127.0.0.1\n    port: 9091\n'), { message: /server\.admin\.port = 9091, the port of server\.port too/ })
  t.equal(parseConfig('server:\n  port: 0\n  admin:\n    host: 127.0.0.1\n    port: 0\n').server.admin.port, 0, 'two free ports are two ports')
  t.equal(parseConfig('server:\n  host: 127.0.0.1\n  port: 9091\n  admin:\n    host: 127.0.0.2\n    port: 9091\n').server.admin.port, 9091, 'the same port on two addresses is two listeners')
})

t.test('a local work directory that holds the data directory is refused: its sweeps would remove the tokens and the lock', async (t) => {
  t.throws(() => parseConfig('dataDir: /srv/maitre/work/data\nbackend:\n  local:\n    workDir: /srv/maitre/work\n'), { message: /backend\.local\.workDir = \/srv\/maitre\/work, which holds dataDir/ })
  t.throws(() => parseConfig('dataDir: /srv/maitre/work\nbackend:\n  local:\n    workDir: /srv/maitre/work/\n'), { message: /which holds dataDir/ }, 'the same directory too')
  t.equal(parseConfig('dataDir: /srv/maitre/data\nbackend:\n  local:\n    workDir: /srv/maitre/work\n').backend.local.workDir, '/srv/maitre/work', 'side by side is fine')
  t.equal(parseConfig('dataDir: /srv/maitre/workshop\nbackend:\n  local:\n    workDir: /srv/maitre/work\n').dataDir, '/srv/maitre/workshop', 'a name that only starts the same is no nesting')
})

t.test('strings the router hands on are checked where they are read: a cluster name is a Kubernetes label value, host names are names', async (t) => {
  t.throws(() => parseConfig('cluster: "prod east"\n'), { message: /cluster = "prod east", must be a Kubernetes label value/ })
  t.equal(parseConfig('cluster: prod-east.1\n').cluster, 'prod-east.1')
  t.throws(() => parseConfig('server:\n  hostnames: [1]\n'), { message: /server\.hostnames = \[1\], must be a list of host names/ })
  t.throws(() => parseConfig('server:\n  hostnames: [null]\n'), { message: /server\.hostnames/ })
  t.same(parseConfig('server:\n  hostnames: [maitre.example.com]\n').server.hostnames, ['maitre.example.com'])
  t.throws(() => parseConfig('server:\n  hostnames: ["maitre.example.com:9091"]\n'), { message: /without a port/ }, 'a name with a port would never match a Host (its port is stripped)')
  t.same(parseConfig('server:\n  hostnames: ["fd00::2", "[fd00::3]"]\n').server.hostnames, ['fd00::2', '[fd00::3]'], 'IPv6 addresses, bracketed or not')
})

t.test('overrides from flags are checked like the file', async (t) => {
  t.equal(withOverrides(DEFAULTS, { 'server.port': 8080, dataDir: '/tmp/x' }).server.port, 8080)
  t.throws(() => withOverrides(DEFAULTS, { 'server.port': 70000 }), { code: 'MAITRE_INVALID_CONFIG' })
  t.ok(Object.isFrozen(parseConfig('').server), 'the config is frozen')
})

t.test('cluster mode settings: endpoints, prefix and router id are checked, credentials refused', async (t) => {
  const good = parseConfig('backend:\n  kind: kubernetes\netcd:\n  endpoints: [http://10.0.0.5:2379, "http://etcd.example:2379"]\n  prefix: /maitre/blue\nrouterId: router-a\n')
  t.same(good.etcd.endpoints, ['http://10.0.0.5:2379', 'http://etcd.example:2379'])
  // The etcd client dials the text after "http://": what a URL parser would forgive, it cannot.
  for (const bad of [' http://10.0.0.6:2379', 'http://10.0.0.6:2379/', 'HTTP://10.0.0.6:2379', 'http://10.0.0.6:2379?x', 'http://etcd.example', 'http://etcd.example:']) {
    t.throws(() => withOverrides(DEFAULTS, { 'backend.kind': 'kubernetes', 'etcd.endpoints': ['http://10.0.0.5:2379', bad] }), { message: /must be scheme:\/\/host:port and nothing more/ }, `${JSON.stringify(bad)} is refused`)
  }
  t.throws(() => withOverrides(DEFAULTS, { 'backend.kind': 'kubernetes', 'etcd.endpoints': ['http://10.0.0.5:2379', 'https://etcd.example:2379'] }), { message: /must all be http:\/\/ or all https:\/\// }, 'and endpoints with and without TLS together')
  t.equal(etcdPrefixOf(good), '/maitre/blue')
  t.equal(etcdPrefixOf(parseConfig('cluster: green\n')), '/maitre/green', 'the prefix defaults to the cluster name')
  const err = (() => {
    try {
      parseConfig('etcd:\n  endpoints: ["http://user:pw@10.0.0.5:2379"]\n  prefix: maitre/\n  leaseTtlSecs: 1\nrouterId: "a b"\n', 'c.yaml')
    } catch (e) {
      return e as Error & { code: string }
    }
    return undefined
  })()
  t.equal(err?.code, 'MAITRE_INVALID_CONFIG')
  t.match(err?.message, 'etcd.endpoints = ["http://<redacted>@10.0.0.5:2379"], "http://<redacted>@10.0.0.5:2379" must not carry credentials')
  t.notMatch(err?.message, 'user:pw', 'the credential it refuses is not printed in the refusal')
  t.match(err?.message, 'etcd.prefix = "maitre/", must start with "/"')
  t.match(err?.message, 'etcd.leaseTtlSecs = 1, must be an integer in [2, 60]')
  t.match(err?.message, 'routerId = "a b", must be 1-63 letters')
  t.throws(() => withOverrides(DEFAULTS, { 'etcd.endpoints': ['etcd:2379'] }), { message: /must be an http:\/\/ or https:\/\/ URL/ })
  t.equal(parseConfig('server:\n  advertiseUrl: "http://10.1.2.3:9091"\n').server.advertiseUrl, 'http://10.1.2.3:9091')
  for (const bad of ['10.1.2.3:9091', 'http://10.1.2.3:9091/path', 'http://user:pw@10.1.2.3']) {
    t.throws(() => withOverrides(DEFAULTS, { 'server.advertiseUrl': bad }), { message: /server.advertiseUrl = .*no path or credentials/ }, `advertiseUrl ${bad} is refused`)
  }
  t.throws(() => withOverrides(DEFAULTS, { 'etcd.endpoints': ['http://127.0.0.1:2379'] }), { message: /cluster mode, which needs a backend every router shares \(backend.kind: kubernetes or mesos\)/ }, 'the local backend cannot be shared')
  const tlsCluster = { 'etcd.endpoints': ['http://127.0.0.1:2379'], 'backend.kind': 'kubernetes', 'server.tls.cert': '/etc/maitre/tls.crt', 'server.tls.key': '/etc/maitre/tls.key' }
  t.throws(() => withOverrides(DEFAULTS, tlsCluster), { message: /server\.tls\.cert[\s\S]*needs server\.advertiseUrl to be an https:\/\/ URL[\s\S]*terminate TLS in front/ }, 'the router’s own TLS in cluster mode, advertised over http: refused, its peers could not call it')
  t.throws(() => withOverrides(DEFAULTS, { ...tlsCluster, 'server.advertiseUrl': 'http://10.1.2.3:9091' }), { message: /needs server\.advertiseUrl to be an https:\/\/ URL/ }, 'also with an http advertiseUrl')
  t.doesNotThrow(() => withOverrides(DEFAULTS, { ...tlsCluster, 'server.advertiseUrl': 'https://router-1.example:9091' }), 'accepted with an https advertiseUrl')
  t.doesNotThrow(() => withOverrides(DEFAULTS, { ...tlsCluster, 'etcd.endpoints': [] }), 'and on a router of its own')
})

t.test('memory release: on by default after 60 s of quiet, off with 0, else a quiet spell of at least a second and a growth of at least 1 MB', async (t) => {
  t.same(parseConfig('').server.memoryRelease, { quietMs: 60_000, growthMb: 32 }, 'a router hands a burst\'s memory back 60 s after its traffic stops, unless told otherwise')
  t.equal(withOverrides(DEFAULTS, { 'server.memoryRelease.quietMs': 0 }).server.memoryRelease.quietMs, 0, '0 turns it off')
  t.equal(parseConfig('server:\n  memoryRelease:\n    quietMs: 60000\n').server.memoryRelease.growthMb, 32, 'the other key keeps its default')
  t.throws(() => withOverrides(DEFAULTS, { 'server.memoryRelease.quietMs': 500 }), { message: /server.memoryRelease.quietMs = 500, must be 0 \(never release\) or an integer of milliseconds in \[1000, 86400000\]/ }, 'a pause every half second of quiet is no quiet')
  t.throws(() => withOverrides(DEFAULTS, { 'server.memoryRelease.growthMb': 0 }), { message: /server.memoryRelease.growthMb = 0, must be an integer of MB in \[1, 65536\]/ }, 'no growth at all would collect at every quiet spell')
})

t.test('mesos settings: masters are URLs, credentials go in pairs, and cluster mode is taken', async (t) => {
  const good = parseConfig('backend:\n  kind: mesos\n  mesos:\n    master: "http://m1:5050, http://m2:5050"\n    principal: maitre\n    secret: s3cret\n')
  t.equal(good.backend.kind, 'mesos')
  t.equal(good.backend.mesos.master, 'http://m1:5050, http://m2:5050')
  t.throws(() => withOverrides(DEFAULTS, { 'backend.kind': 'mesos', 'backend.mesos.master': 'zk://zk1:2181/mesos' }), { message: /backend.mesos.master = "zk:\/\/zk1:2181\/mesos", must be a master URL/ }, 'a ZooKeeper URL is not a master')
  t.throws(() => withOverrides(DEFAULTS, { 'backend.kind': 'mesos', 'backend.mesos.principal': 'maitre' }), { message: /backend.mesos.secret is required with the other/ }, 'a principal without its secret')
  t.throws(() => withOverrides(DEFAULTS, { 'backend.kind': 'mesos', 'backend.mesos.failoverTimeoutSecs': 0 }), { message: /backend.mesos.failoverTimeoutSecs = 0, must be at least 60/ }, "Mesos's default of 0 would kill every task at the first disconnect")
  t.equal(withOverrides(DEFAULTS, { 'backend.kind': 'mesos', 'etcd.endpoints': ['http://127.0.0.1:2379'] }).etcd.endpoints.length, 1, 'the leader drives the framework; the others go through it')
  t.throws(() => withOverrides(DEFAULTS, { 'backend.kind': 'marathon' }), { message: /must be 'local', 'kubernetes' or 'mesos'/ })
})

t.test('a YAML syntax error says where it is without quoting the line, which may hold a secret', async (t) => {
  const err = (() => {
    try {
      parseConfig('log:\n  level: info\nsecret: "unclosed-secret-value-0123456789\n', 'bad.yaml')
    } catch (e) {
      return (e as Error).message
    }
    return ''
  })()
  t.match(err, /bad\.yaml:\d+:\d+: \(yaml\) Missing closing "quote/)
  t.notMatch(err, 'unclosed-secret-value')
  // Nor the value a message would quote: a secret that starts like a block scalar or an alias.
  for (const text of ['secret: |Xy9-planted-secret\n', 'secret: >Xy9-planted-secret\n', 'secret: *planted-secret-alias\n', 'secret: "ab\\qplanted"\n']) {
    const message = (() => {
      try {
        parseConfig(text, 'bad.yaml')
      } catch (e) {
        return (e as Error).message
      }
      return ''
    })()
    t.match(message, /bad\.yaml.*\(yaml\)/, `${JSON.stringify(text)}: refused`)
    t.notMatch(message, /planted|Xy9|\\q/, `${JSON.stringify(text)}: without the value (${message})`)
  }
})

t.test('a Mesos master URL with user:password@ is refused, pointing at principal and secret, and the refusal does not print the password', async (t) => {
  const err = (() => {
    try {
      withOverrides(DEFAULTS, { 'backend.kind': 'mesos', 'backend.mesos.master': 'http://m1:5050, http://maitre:s3cret-pw@m2:5050' })
    } catch (e) {
      return (e as Error).message
    }
    return ''
  })()
  t.match(err, /backend\.mesos\.master = .*must carry no credentials: set backend\.mesos\.principal and backend\.mesos\.secret/)
  t.notMatch(err, 's3cret-pw')
})

t.test('authentication settings: one-user refuses a non-loopback address unless told, jwt needs its keys, issuer and audience', async (t) => {
  t.throws(() => parseConfig('server:\n  host: 0.0.0.0\n', 'a.yaml'), { code: 'MAITRE_INVALID_CONFIG', message: /a\.yaml:2:9: server\.host = "0\.0\.0\.0", not a loopback address: with auth\.kind one-user every caller would be the admin/ })
  t.throws(() => withOverrides(DEFAULTS, { 'server.host': '10.1.2.3' }), { message: /not a loopback address/ }, 'a --host flag is checked as well')
  t.equal(parseConfig('server:\n  host: 0.0.0.0\nauth:\n  allowRemoteOneUser: true\n').server.host, '0.0.0.0', 'allowed on purpose')
  for (const host of ['127.0.0.1', '127.0.0.2', '::1', 'localhost']) t.equal(withOverrides(DEFAULTS, { 'server.host': host }).server.host, host, `${host} is loopback`)
  t.throws(() => parseConfig('auth:\n  kind: jwt\n'), { message: /auth\.jwt needs exactly one of jwksFile and jwksUrl[\s\S]*auth\.jwt\.issuer is required[\s\S]*auth\.jwt\.audience is required/ })
  t.throws(() => parseConfig('auth:\n  kind: jwt\n  jwt:\n    jwksFile: /k.json\n    jwksUrl: https://k\n    issuer: i\n    audience: a\n'), { message: /exactly one of jwksFile and jwksUrl/ })
  t.throws(() => parseConfig('auth:\n  kind: kerberos\n'), { message: /auth\.kind = "kerberos", must be 'one-user' or 'jwt'/ })
  t.throws(() => parseConfig('auth:\n  admins: [""]\n'), { message: /auth\.admins .* must be a list of principal names/ })
  // A principal travels in headers to instances: one no header can carry is refused at start, not
  // found out on every request (a 400 that blames the caller for the router's setting).
  t.throws(() => parseConfig('auth:\n  user: "łukasz"\n'), { message: /auth\.user = "łukasz", must be a user name \(printable ASCII/ })
  t.throws(() => parseConfig('auth:\n  admins: ["ok", " padded"]\n'), { message: /auth\.admins/ })
  const jwt = parseConfig('server:\n  host: 0.0.0.0\nauth:\n  kind: jwt\n  admins: [root]\n  jwt:\n    jwksUrl: https://idp.example/jwks\n    issuer: https://idp.example\n    audience: maitre\n')
  t.match(jwt.auth, { kind: 'jwt', admins: ['root'], jwt: { jwksUrl: 'https://idp.example/jwks', clockSkewSecs: 60, subjectClaim: 'sub' } }, 'a JWT router may listen on every address')
})

t.test('a router secret that anyone could guess is refused: empty, blank or shorter than 16 characters (cookies, instance passwords and peer keys derive from it)', async (t) => {
  for (const bad of ['""', '"   "', 'short-secret']) {
    t.throws(() => parseConfig(`secret: ${bad}\n`), { code: 'MAITRE_INVALID_CONFIG', message: /secret = <redacted>, must be at least 16 characters/ }, `secret: ${bad}`)
  }
  const refusal = (() => {
    try {
      parseConfig('secret: short-secret\n')
    } catch (e) {
      return (e as Error).message
    }
    return ''
  })()
  t.notMatch(refusal, 'short-secret', 'the refused secret is not printed')
  t.throws(() => parseConfig('backend:\n  mesos:\n    secret: 5\n'), { message: /backend\.mesos\.secret = <redacted>, must be a string or null/ })
  t.equal(parseConfig('secret: a-long-enough-secret\n').secret, 'a-long-enough-secret')
  t.equal(parseConfig('secret: null\n').secret, null, 'null: one is generated')
})

t.test('/settings shows no credential, wherever it sits: the router secret and the Mesos framework\'s password alike', async (t) => {
  const config = withOverrides(DEFAULTS, { secret: 'PLANTED-router-secret', 'backend.kind': 'mesos', 'backend.mesos.principal': 'maitre', 'backend.mesos.secret': 'PLANTED-mesos' })
  const shown = redactedConfig(config) as { secret: unknown; backend: { mesos: { secret: unknown; principal: unknown } } }
  t.notMatch(JSON.stringify(shown), /PLANTED/, 'neither value appears')
  t.equal(shown.secret, '<redacted>', 'a set secret is said to be set')
  t.equal(shown.backend.mesos.secret, '<redacted>')
  t.equal(shown.backend.mesos.principal, 'maitre', 'the principal (a name, not a credential) is shown')
  t.equal((redactedConfig(DEFAULTS) as { secret: unknown }).secret, null, 'an unset secret reads null')
  const inUrls = withOverrides(DEFAULTS, { 'auth.kind': 'jwt', 'auth.jwt.jwksUrl': 'https://jwks:PLANTED-jwks@idp.example/keys', 'auth.jwt.issuer': 'i', 'auth.jwt.audience': 'a' })
  const urls = redactedConfig(inUrls) as { auth: { jwt: { jwksUrl: string } } }
  t.notMatch(JSON.stringify(urls), /PLANTED/, 'nor does one written into a URL')
  t.equal(urls.auth.jwt.jwksUrl, 'https://<redacted>@idp.example/keys')
  const odd = redactedConfig(withOverrides(DEFAULTS, { 'auth.kind': 'jwt', 'auth.jwt.jwksUrl': 'https://u:PLANTED,a@b@idp.example/keys', 'auth.jwt.issuer': 'i', 'auth.jwt.audience': 'a' })) as { auth: { jwt: { jwksUrl: string } } }
  t.equal(odd.auth.jwt.jwksUrl, 'https://<redacted>@idp.example/keys', 'a password with a comma or an @ in it too')
  t.same((redactedConfig(config) as { backend: unknown }).backend, { ...config.backend, mesos: { ...config.backend.mesos, secret: '<redacted>' } }, 'everything else is shown as configured')
})
