/**
 * The manifests in k8s/ that deploy maitre itself: each parses, uses only fields its kind has,
 * hangs together (selectors, ports, names), is hardened, and the Role grants exactly what the
 * Kubernetes backend calls.
 */
import t from 'tap'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { join, relative, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseAllDocuments } from 'yaml'
import { PERMISSIONS } from '../src/backends/kubernetes/api.ts'
import { loadConfigFile } from '../src/config.ts'

const K8S = fileURLToPath(new URL('../k8s/base/', import.meta.url))
const DEPLOY = fileURLToPath(new URL('../k8s/', import.meta.url))
const ROOT = fileURLToPath(new URL('../', import.meta.url))

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Obj = Record<string, any>

/** The fields each kind may carry (from the Kubernetes API reference), one level per path. */
const FIELDS: Record<string, Record<string, readonly string[]>> = {
  'v1/ServiceAccount': { '': ['apiVersion', 'kind', 'metadata', 'automountServiceAccountToken', 'imagePullSecrets', 'secrets'] },
  'rbac.authorization.k8s.io/v1/Role': { '': ['apiVersion', 'kind', 'metadata', 'rules'], 'rules[]': ['apiGroups', 'resources', 'verbs', 'resourceNames'] },
  'rbac.authorization.k8s.io/v1/RoleBinding': { '': ['apiVersion', 'kind', 'metadata', 'roleRef', 'subjects'], roleRef: ['apiGroup', 'kind', 'name'], 'subjects[]': ['kind', 'name', 'namespace', 'apiGroup'] },
  'v1/PersistentVolumeClaim': { '': ['apiVersion', 'kind', 'metadata', 'spec'], spec: ['accessModes', 'resources', 'storageClassName', 'volumeMode', 'selector', 'volumeName'] },
  'v1/Service': { '': ['apiVersion', 'kind', 'metadata', 'spec'], spec: ['selector', 'ports', 'type', 'clusterIP'], 'spec.ports[]': ['name', 'port', 'targetPort', 'protocol', 'appProtocol', 'nodePort'] },
  'policy/v1/PodDisruptionBudget': { '': ['apiVersion', 'kind', 'metadata', 'spec'], spec: ['maxUnavailable', 'minAvailable', 'selector', 'unhealthyPodEvictionPolicy'] },
  'monitoring.coreos.com/v1/ServiceMonitor': { '': ['apiVersion', 'kind', 'metadata', 'spec'], spec: ['selector', 'endpoints', 'namespaceSelector', 'jobLabel'], 'spec.endpoints[]': ['port', 'path', 'interval', 'scrapeTimeout', 'scheme'] },
  'apps/v1/Deployment': {
    '': ['apiVersion', 'kind', 'metadata', 'spec'],
    spec: ['replicas', 'strategy', 'selector', 'template', 'revisionHistoryLimit', 'minReadySeconds', 'progressDeadlineSeconds'],
    'spec.template.spec': ['serviceAccountName', 'automountServiceAccountToken', 'enableServiceLinks', 'terminationGracePeriodSeconds', 'securityContext', 'containers', 'volumes', 'affinity', 'nodeSelector', 'tolerations'],
    'spec.template.spec.securityContext': ['runAsNonRoot', 'runAsUser', 'runAsGroup', 'fsGroup', 'seccompProfile'],
    'spec.template.spec.containers[]': ['name', 'image', 'args', 'command', 'env', 'ports', 'readinessProbe', 'livenessProbe', 'startupProbe', 'lifecycle', 'resources', 'securityContext', 'volumeMounts'],
    'spec.template.spec.containers[].securityContext': ['allowPrivilegeEscalation', 'readOnlyRootFilesystem', 'capabilities', 'runAsNonRoot', 'privileged'],
    'spec.template.spec.containers[].readinessProbe': ['httpGet', 'periodSeconds', 'failureThreshold', 'initialDelaySeconds', 'timeoutSeconds', 'successThreshold'],
    'spec.template.spec.containers[].livenessProbe': ['httpGet', 'periodSeconds', 'failureThreshold', 'initialDelaySeconds', 'timeoutSeconds'],
    'spec.template.spec.volumes[]': ['name', 'configMap', 'persistentVolumeClaim', 'emptyDir', 'secret'],
  },
}

function at(object: Obj, path: string): Obj[] {
  let nodes: Obj[] = [object]
  for (const part of path.split('.').filter((p) => p !== '')) {
    const list = part.endsWith('[]')
    const key = list ? part.slice(0, -2) : part
    nodes = nodes.flatMap((n) => {
      const v = n[key]
      return v === undefined ? [] : list ? (v as Obj[]) : [v as Obj]
    })
  }
  return nodes
}

function manifests(): Obj[] {
  const files = readdirSync(K8S).filter((f) => f.endsWith('.yaml') && f !== 'kustomization.yaml')
  return files.flatMap((file) =>
    parseAllDocuments(readFileSync(join(K8S, file), 'utf8')).map((doc) => {
      if (doc.errors.length > 0) throw new Error(`${file}: ${doc.errors[0]?.message ?? ''}`)
      return { ...(doc.toJS() as Obj), file }
    }),
  )
}

const all = manifests()
const byKind = (kind: string): Obj => {
  const found = all.find((o) => o['kind'] === kind)
  if (found === undefined) throw new Error(`no ${kind} in k8s/`)
  return found
}

t.test('every manifest parses, is listed in the kustomization, and uses only its kind’s fields', async (t) => {
  const kustomization = parseAllDocuments(readFileSync(join(K8S, 'kustomization.yaml'), 'utf8'))[0]?.toJS() as Obj
  t.same(new Set(kustomization['resources']), new Set(all.map((o) => o['file'])), 'kustomization lists each manifest')
  for (const object of all) {
    const key = `${String(object['apiVersion'])}/${String(object['kind'])}`
    const fields = FIELDS[key]
    t.ok(fields !== undefined, `${String(object['file'])}: ${key} is a known kind`)
    t.match(object['metadata'], { name: /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/ }, `${key} has a DNS name`)
    for (const [path, allowed] of Object.entries(fields ?? {})) {
      for (const node of at(object, path)) {
        const unknown = Object.keys(node).filter((k) => k !== 'file' && !allowed.includes(k))
        t.same(unknown, [], `${key} ${path || '(top)'} has no unknown fields`)
      }
    }
  }
})

t.test('the Deployment is hardened, probes /readyz and /livez, and its parts line up', async (t) => {
  const deployment = byKind('Deployment')
  const pod = deployment['spec'].template
  const container = pod.spec.containers[0]
  t.same(deployment['spec'].selector.matchLabels, Object.fromEntries(Object.entries(pod.metadata.labels).filter(([k]) => k in deployment['spec'].selector.matchLabels)), 'selector matches the template')
  t.equal(pod.spec.securityContext.runAsNonRoot, true)
  t.not(pod.spec.securityContext.runAsUser, 0)
  t.equal(pod.spec.securityContext.seccompProfile.type, 'RuntimeDefault')
  t.same(container.securityContext, { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } })
  t.equal(container.readinessProbe.httpGet.path, '/readyz')
  t.equal(container.livenessProbe.httpGet.path, '/livez')
  t.ok(container.lifecycle.preStop.exec.command.includes('sleep'), 'preStop sleep')
  t.ok(container.resources.requests.cpu !== undefined && container.resources.requests.memory !== undefined && container.resources.limits.memory !== undefined, 'resources set')
  t.equal(pod.spec.serviceAccountName, byKind('ServiceAccount')['metadata'].name)

  const config = loadConfigFile(join(K8S, 'config', 'maitre.yaml'))
  t.equal(config.backend.kind, 'kubernetes', 'the ConfigMap runs the Kubernetes backend')
  t.equal(container.ports[0].containerPort, config.server.port, 'the container port is the one maitre listens on')
  t.equal(config.server.host, '0.0.0.0')
  t.equal(config.auth.kind, 'jwt', 'reachable from the cluster: callers prove who they are')
  const jwksMount = container.volumeMounts.find((m: Obj) => String(config.auth.jwt.jwksFile).startsWith(`${String(m['mountPath'])}/`))
  t.ok(jwksMount !== undefined, 'the JWKS file is on a mounted volume')
  t.equal(pod.spec.volumes.find((v: Obj) => v['name'] === jwksMount?.['name'])?.secret?.secretName, 'maitre-jwks', 'from the Secret maitre-jwks')
  const mounts = new Map(container.volumeMounts.map((m: Obj) => [m['name'], m['mountPath']]))
  t.equal(mounts.get('data'), config.dataDir, 'the data directory is on the volume')
  t.ok(container.args.join(' ').includes(`${String(mounts.get('config'))}/maitre.yaml`), 'maitre reads the mounted config')
  t.same(pod.spec.volumes.find((v: Obj) => v['name'] === 'data').emptyDir, {}, 'shared state is in etcd: the data directory is the pod’s own')
  t.ok(pod.spec.terminationGracePeriodSeconds * 1000 >= config.server.shutdownTimeoutMs + 5000, 'grace covers preStop + draining')

  const service = byKind('Service')
  t.same(service['spec'].selector, deployment['spec'].selector.matchLabels, 'the Service selects the router pods')
  // A Service named maitre would give each pod MAITRE_PORT=tcp://… (a Docker link variable).
  if (/^maitre$/i.test(String(service['metadata'].name))) t.equal(pod.spec.enableServiceLinks, false, 'the pods get no Service link variables, whose MAITRE_PORT maitre would read')
  t.equal(service['spec'].ports[0].targetPort, container.ports[0].name)
  t.same(byKind('PodDisruptionBudget')['spec'].selector.matchLabels, deployment['spec'].selector.matchLabels)
  t.equal(byKind('ServiceMonitor')['spec'].endpoints[0].port, service['spec'].ports[0].name)
  t.equal(byKind('ServiceMonitor')['spec'].endpoints[0].path, '/metrics')
})

t.test('three routers in cluster mode: rolling updates that never drop below three, two kept through drains, spread over nodes', async (t) => {
  const deployment = byKind('Deployment')
  const spec = deployment['spec']
  t.equal(spec.replicas, 3)
  t.same(spec.strategy, { type: 'RollingUpdate', rollingUpdate: { maxSurge: 1, maxUnavailable: 0 } })
  const pdb = byKind('PodDisruptionBudget')['spec']
  t.equal(pdb.minAvailable, 2, 'a drain leaves two routers serving')
  t.equal(pdb.maxUnavailable, undefined)
  const term = spec.template.spec.affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].podAffinityTerm
  t.equal(term.topologyKey, 'kubernetes.io/hostname')
  t.same(term.labelSelector.matchLabels, spec.selector.matchLabels, 'the anti-affinity selects the router pods themselves')
  const config = loadConfigFile(join(K8S, 'config', 'maitre.yaml'))
  t.ok(config.etcd.endpoints.length > 0, `cluster mode: etcd at ${config.etcd.endpoints.join(', ')}`)
  t.equal(config.server.advertiseUrl, null, 'peers dial the pod IP, picked at start')
})

t.test('k8s/single/ turns it into one router on a volume, without etcd', async (t) => {
  const dir = join(DEPLOY, 'single')
  const kustomization = parseAllDocuments(readFileSync(join(dir, 'kustomization.yaml'), 'utf8'))[0]?.toJS() as Obj
  t.same(kustomization['resources'], ['../base', 'pvc.yaml'])
  const doc = (file: string): Obj => parseAllDocuments(readFileSync(join(dir, file), 'utf8'))[0]?.toJS() as Obj
  const patches = (kustomization['patches'] as Obj[]).map((p) => doc(p['path'] as string))
  const deployment = patches.find((p) => p['kind'] === 'Deployment') as Obj
  t.equal(deployment['spec'].replicas, 1)
  t.same(deployment['spec'].strategy, { type: 'Recreate', rollingUpdate: null }, 'never two routers at once: both would scale the same ReplicaSets')
  const pvc = doc('pvc.yaml')
  t.equal(pvc['kind'], 'PersistentVolumeClaim')
  t.same(Object.keys(pvc['spec']).filter((k) => !FIELDS['v1/PersistentVolumeClaim']?.['spec']?.includes(k)), [], 'the claim uses only its kind’s fields')
  t.same(deployment['spec'].template.spec.volumes, [{ name: 'data', emptyDir: null, persistentVolumeClaim: { claimName: pvc['metadata'].name } }], 'the data directory moves onto the claim')
  t.same(patches.find((p) => p['kind'] === 'PodDisruptionBudget')?.['spec'], { minAvailable: null, maxUnavailable: 1 })
  t.same(kustomization['configMapGenerator'], [{ name: 'maitre-config', behavior: 'replace', files: ['maitre.yaml=maitre.yaml'] }])
  const config = loadConfigFile(join(dir, 'maitre.yaml'))
  t.same(config.etcd.endpoints, [], 'no etcd: a single router')
  t.equal(config.backend.kind, 'kubernetes')
  t.equal(config.dataDir, loadConfigFile(join(K8S, 'config', 'maitre.yaml')).dataDir, 'the same data directory, now on the claim')
})

t.test('each deployment is a kustomization of the base that kustomize can build: none names a folder that holds it', async (t) => {
  // kustomize refuses a resource folder that contains the kustomization naming it (a cycle):
  // k8s/ and k8s/single/ both build on k8s/base/, a sibling of the overlay, never its parent.
  for (const [root, expected] of [[DEPLOY, ['base']], [join(DEPLOY, 'single'), ['../base', 'pvc.yaml']]] as const) {
    const resources = (parseAllDocuments(readFileSync(join(root, 'kustomization.yaml'), 'utf8'))[0]?.toJS() as Obj)['resources'] as string[]
    t.same(resources, expected)
    for (const resource of resources) {
      const target = resolve(root, resource)
      t.notOk(`${root}/`.startsWith(`${target}/`), `${relative(DEPLOY, root) || 'k8s'}: ${resource} does not hold the kustomization that names it`)
    }
  }
})

t.test('the Role grants exactly the verbs the backend calls, bound to maitre’s ServiceAccount', async (t) => {
  const groupOf = (resource: string): string => (resource.startsWith('replicasets') ? 'apps' : '')
  const granted = byKind('Role')['rules'].flatMap((r: Obj) => (r['resources'] as string[]).flatMap((res) => (r['verbs'] as string[]).map((v) => `${(r['apiGroups'] as string[]).join(',')}|${res}|${v}`)))
  const used = Object.entries(PERMISSIONS).flatMap(([res, verbs]) => verbs.map((v) => `${groupOf(res)}|${res}|${v}`))
  t.same(new Set(granted), new Set(used))
  t.equal(granted.length, used.length, 'nothing granted twice')
  const binding = byKind('RoleBinding')
  t.same(binding['roleRef'], { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: byKind('Role')['metadata'].name })
  t.same(binding['subjects'], [{ kind: 'ServiceAccount', name: byKind('ServiceAccount')['metadata'].name }])
})

t.test('the Dockerfile builds on node:24-slim and runs as a non-root user', async (t) => {
  const dockerfile = readFileSync(join(ROOT, 'Dockerfile'), 'utf8')
  const froms = [...dockerfile.matchAll(/^FROM\s+(\S+)/gm)].map((m) => m[1])
  t.ok(froms.length > 0 && froms.every((f) => f === 'node:24-slim'), `FROM ${froms.join(', ')}`)
  const user = /^USER\s+(\S+)/m.exec(dockerfile)?.[1] ?? 'root'
  t.notOk(/^(root|0)(:|$)/.test(user), `USER ${user}`)
  t.match(dockerfile, /ENTRYPOINT \["\/usr\/bin\/tini", "--", "node", "--max-semi-space-size=16", "src\/main\.ts"\]/)
  t.match(dockerfile, /apt-get install [^\n]*tini/, 'tini is PID 1: it reaps what is reparented to it (each ended instance’s watchdog), which Node would not')
  t.match(dockerfile, /npm ci --omit=dev/)
  t.match(dockerfile, /apt-get install [^\n]*libjemalloc2/, 'jemalloc is installed')
  t.match(dockerfile, /^ENV LD_PRELOAD=\/usr\/local\/lib\/libjemalloc\.so\.2$/m, 'and preloaded: RSS stays flat (RESULTS.md, Soak)')
})

t.test('maitre runs with the same V8 flags and malloc settings however it is launched: the bin’s shebang, npm start, the image, the benchmarks', async (t) => {
  const { MAITRE_ENV, MAITRE_NODE_FLAGS } = await import('../bench/tools.ts')
  const flags = MAITRE_NODE_FLAGS.join(' ')
  const env = Object.entries(MAITRE_ENV).map(([name, value]) => `${name}=${value}`).join(' ')
  t.equal(env, 'MALLOC_ARENA_MAX=2', 'glibc malloc keeps two arenas (RESULTS.md, "Memory: two malloc arenas")')
  t.equal(readFileSync(join(ROOT, 'src', 'main.ts'), 'utf8').split('\n')[0], `#!/usr/bin/env -S ${env} node ${flags}`, 'the shebang of the maitre bin')
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> }
  t.equal(pkg.scripts['start'], `${env} exec node ${flags} src/main.ts serve`, 'npm start')
  t.match(readFileSync(join(ROOT, 'Dockerfile'), 'utf8'), `ENTRYPOINT ["/usr/bin/tini", "--", "node", ${MAITRE_NODE_FLAGS.map((f) => JSON.stringify(f)).join(', ')}, "src/main.ts"]`, 'the image')
})

t.test('maitre starts from Node’s compile cache: the image fills it at build time as the user it runs as; elsewhere it is the user’s own directory, never a shared one', async (t) => {
  const dockerfile = readFileSync(join(ROOT, 'Dockerfile'), 'utf8')
  t.match(dockerfile, /^ENV NODE_COMPILE_CACHE=\/app\/\.node-compile-cache$/m, 'the image sets the cache before Node starts, so even main.ts is read from it')
  const user = dockerfile.indexOf('USER 10001:10001')
  const warm = dockerfile.indexOf('RUN node src/main.ts --version')
  t.ok(user >= 0 && warm > user, 'and fills it as the user the router runs as (Node keeps a directory per user)')
  t.ok(warm < dockerfile.indexOf('ENTRYPOINT'), 'before the entry point')
  // Run as a user with its own home: the cache goes there.
  const home = t.testdir()
  const env: NodeJS.ProcessEnv = { ...process.env, HOME: home }
  delete env['NODE_COMPILE_CACHE']
  const { stdout } = await promisify(execFile)(process.execPath, [join(ROOT, 'src', 'main.ts'), '--version'], { env, timeout: 30_000 })
  t.match(stdout, /^\d+\.\d+\.\d+/)
  const dir = join(home, '.cache', 'maitre', 'node-compile-cache')
  t.ok(existsSync(dir) && readdirSync(dir).length > 0, `a start without NODE_COMPILE_CACHE keeps its cache in ${dir}`)
})
