/**
 * The real kubectl against the in-repo Kubernetes API simulator, unchanged: discovery, TLS with
 * the simulator's own CA, a bearer token, and the commands an operator of a maitre cluster uses.
 * kubectl is installed by .ci/run (Debian's kubernetes-client when none is present).
 */
import t from 'tap'
import { execFile, spawn } from 'node:child_process'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { promisify } from 'node:util'
import { startKubeSimulator } from '../fixtures/k8s-sim/simulator.ts'
import { SIM_TOKEN, waitFor, writeKubeconfig } from '../fixtures/router.ts'

const run = promisify(execFile)

const RS = `apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: demo
  labels: {app: demo}
spec:
  replicas: 2
  selector:
    matchLabels: {app: demo}
  template:
    metadata:
      labels: {app: demo}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: app
        image: maitre-app
        command: ["/bin/sh", "-c", "exec sleep 300"]
`

const LEASE = `apiVersion: coordination.k8s.io/v1
kind: Lease
metadata:
  name: maitre-leader
spec:
  holderIdentity: router-1
  leaseDurationSeconds: 15
  renewTime: "2026-01-02T03:04:05.123456Z"
`

t.test('kubectl works against the simulator unchanged: discovery, TLS with its CA, a bearer token, get/describe/watch/scale/patch/delete/create, events and leases', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'maitre-kubectl-'))
  const sim = await startKubeSimulator({ token: SIM_TOKEN, workDir: join(dir, 'sim'), podQuota: 4 })
  t.teardown(async () => {
    await sim.close()
    rmSync(dir, { recursive: true, force: true })
  })
  const kubeconfig = writeKubeconfig(dir, sim.url, sim.ca)
  const kubectl = async (...args: string[]): Promise<string> => (await run('kubectl', ['--kubeconfig', kubeconfig, ...args], { timeout: 20_000 })).stdout
  const podNames = async (): Promise<string[]> => (await kubectl('get', 'pods', '-o', 'jsonpath={.items[*].metadata.name}')).split(' ').filter((n) => n !== '')

  const version = JSON.parse(await kubectl('version', '-o', 'json')) as { serverVersion: { gitVersion: string } }
  t.equal(version.serverVersion.gitVersion, 'v1.32.0-maitre-sim', 'the server version, over TLS trusted through the kubeconfig’s CA')
  const resources = (await kubectl('api-resources', '-o', 'name')).split('\n')
  t.same(['events', 'pods', 'replicasets.apps', 'leases.coordination.k8s.io'].filter((r) => !resources.includes(r)), [], 'discovery lists every resource the backend uses')

  t.match(await kubectl('create', '-f', write(dir, 'rs.yaml', RS), '--validate=false'), /replicaset.apps\/demo created/)
  await waitFor('two pods', async () => ((await podNames()).length === 2 ? true : undefined))
  t.match(await kubectl('get', 'rs', 'demo', '-o', 'yaml'), /replicas: 2/, 'get -o yaml')
  t.match(await kubectl('describe', 'rs', 'demo'), /Replicas:\s+2 current \/ 2 desired/, 'describe')

  // A watch sees the pod a scale-up adds.
  const watch = spawn('kubectl', ['--kubeconfig', kubeconfig, 'get', 'pods', '-w', '-o', 'name'])
  t.teardown(() => watch.kill())
  const seen: string[] = []
  createInterface({ input: watch.stdout }).on('line', (line) => seen.push(line))
  await waitFor('the watch lists the pods', () => (seen.length >= 2 ? true : undefined))
  t.match(await kubectl('scale', 'rs', 'demo', '--replicas=3'), /scaled/)
  await waitFor('a third pod', async () => ((await podNames()).length === 3 ? true : undefined))
  await waitFor('the watch sees the new pod', () => (new Set(seen).size >= 3 ? true : undefined))
  watch.kill()

  const [first] = await podNames()
  const victim = String(first)
  await kubectl('patch', 'pod', victim, '-p', '{"metadata":{"annotations":{"controller.kubernetes.io/pod-deletion-cost":"-5"}}}')
  t.equal(await kubectl('get', 'pod', victim, '-o', 'jsonpath={.metadata.annotations.controller\\.kubernetes\\.io/pod-deletion-cost}'), '-5', 'a strategic-merge patch')
  const invalid = await kubectl('patch', 'pod', victim, '-p', '{"metadata":{"annotations":{"controller.kubernetes.io/pod-deletion-cost":"lots"}}}').catch((err: { stderr: string }) => err.stderr)
  t.match(invalid, /pod-deletion-cost\]: must be a 32bit integer/, 'an invalid deletion cost is refused, as by the API server')
  t.match(await kubectl('delete', 'pod', victim, '--grace-period=1'), new RegExp(`pod "${victim}" deleted`))
  await waitFor('the ReplicaSet replaces it', async () => {
    const names = await podNames()
    return names.length === 3 && !names.includes(victim) ? true : undefined
  })

  // Past the namespace's pod quota (4), the controller records why in an Event.
  await kubectl('scale', 'rs', 'demo', '--replicas=5')
  await waitFor('a FailedCreate event', async () => ((await kubectl('get', 'events', '-o', 'json')).includes('FailedCreate') ? true : undefined))
  t.match(await kubectl('get', 'events', '-o', 'jsonpath={.items[*].message}'), /exceeded quota/, 'get events')

  t.match(await kubectl('create', '-f', write(dir, 'lease.yaml', LEASE), '--validate=false'), /lease.coordination.k8s.io\/maitre-leader created/)
  t.equal(await kubectl('get', 'lease', 'maitre-leader', '-o', 'jsonpath={.spec.holderIdentity}'), 'router-1', 'get lease')

  // --cascade=orphan: the ReplicaSet goes, its pods stay, owned by nothing.
  await kubectl('scale', 'rs', 'demo', '--replicas=2')
  await waitFor('two pods again', async () => ((await podNames()).length === 2 ? true : undefined))
  t.match(await kubectl('delete', 'rs', 'demo', '--cascade=orphan'), /replicaset.apps "demo" deleted/)
  t.equal(await kubectl('get', 'rs', '-o', 'name'), '', 'the ReplicaSet is gone')
  t.equal((await podNames()).length, 2, 'its pods stay')
  t.equal(await kubectl('get', 'pods', '-o', 'jsonpath={.items[*].metadata.ownerReferences}'), '', 'owned by nothing')
  await kubectl('delete', 'pods', '--all', '--grace-period=1')
  t.same(await podNames(), [], 'deleted one by one')

  mkdirSync(join(dir, 'wrong'))
  const wrong = writeKubeconfig(join(dir, 'wrong'), sim.url, sim.ca, 'not-the-token')
  const refused = await run('kubectl', ['--kubeconfig', wrong, 'get', 'pods'], { timeout: 20_000 }).catch((err: { stderr: string }) => err.stderr)
  t.match(refused, /Unauthorized|must be logged in/, 'a wrong bearer token is refused')
})

function write(dir: string, name: string, text: string): string {
  const path = join(dir, name)
  writeFileSync(path, text)
  return path
}
