/**
 * The same end-to-end scenarios on every backend: the embedded local one, Kubernetes against the
 * in-repo API simulator, and Mesos against the in-repo master simulator (pods and tasks are real
 * local processes, so requests really reach them).
 */
import t, { type Test as TapTest } from 'tap'
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { call, createToken, kitchenToken, startKubeRouter, startRouter, waitFor, type KubeRouter, type Reply, type Router } from '../fixtures/router.ts'
import { startMesosRouter, type MesosRouter } from '../fixtures/mesos-router.ts'
import { realisticTiming } from '../fixtures/k8s-sim/simulator.ts'
import { capturedLog } from '../fixtures/captured-log.ts'
import type { Logger } from '../../src/log.ts'

type Test = Parameters<typeof startRouter>[0]

// Fifteen scenarios of real routers and instances on three backends: about 50 s alone, but a
// loaded machine has taken it past the suite's 120 s per file. Each scenario bounds its own waits.
t.setTimeout(240_000)

interface AppView {
  status: string
  'deployment-error-message'?: string
  'instance-counts': { 'healthy-instances': number; 'requested-instances': number }
  instances: { 'active-instances': { id: string }[]; 'failed-instances': { id: string; 'exit-code'?: number }[]; 'killed-instances'?: { id: string }[] }
}

const FAST = { 'scaler.tickMs': 250, 'scaler.burstHoldMs': 1000, 'scaler.interKillMs': 100, 'scaler.gcIntervalMs': 500 }

/**
 * The Kubernetes simulator in its realistic-timing mode, ten times faster than a cluster: a
 * container starts 100 ms after its pod, CrashLoopBackOff from 1 s, a container's end seen at
 * the next 100 ms PLEG relist, the controller's informer caches 300 ms (pods) and 100 ms behind,
 * and a PID 1 deaf to a SIGTERM it does not handle.
 */
const REALISTIC = realisticTiming(0.1)

const BACKENDS: Record<string, (t: Test, overrides?: Record<string, unknown>, log?: Logger) => Promise<Router>> = {
  local: (t, overrides = {}, log) => startRouter(t, overrides, log === undefined ? {} : { log }),
  kubernetes: (t, overrides = {}, log) => startKubeRouter(t, overrides, REALISTIC, log === undefined ? {} : { log }),
  mesos: (t, overrides = {}, log) => startMesosRouter(t, overrides, log === undefined ? {} : { log }),
}

async function appView(router: Router, id: string): Promise<AppView> {
  return (await call(`${router.url}/apps/${id}`)).json<AppView>()
}

async function serviceId(router: Router, token: string): Promise<string> {
  return (await call(`${router.url}/service-id`, { headers: { 'x-waiter-token': token } })).text
}

function message(reply: Reply): string {
  return reply.json<{ 'waiter-error': { message: string } }>()['waiter-error'].message
}

function isKube(router: Router): router is KubeRouter {
  return 'namespace' in router
}

function isMesos(router: Router): router is MesosRouter {
  return 'sim' in router && !isKube(router)
}

/** The simulated master's tasks of a version still running (or about to). */
function liveTasks(router: MesosRouter, serviceId: string): ReturnType<MesosRouter['sim']['tasks']> {
  return router.sim.tasks().filter((task) => task.id.startsWith(`${serviceId}.`) && ['TASK_STAGING', 'TASK_STARTING', 'TASK_RUNNING'].includes(task.state))
}

/** Load scales a version up; with one long request pinning an instance, it shrinks back to one, and that busy instance is the one kept. */
async function scaleDownKeepsTheBusy(t: TapTest, router: Router): Promise<void> {
  // Every instance logs each request it takes, answers and has cut (test/fixtures/kitchen.mjs).
  const logs = mkdtempSync(join(tmpdir(), 'maitre-parity-requests-'))
  t.teardown(() => rmSync(logs, { recursive: true, force: true }))
  await createToken(router, 'elastic', kitchenToken({ 'concurrency-level': 1, 'max-instances': 4, 'scale-down-factor': 0.9 }, `--request-log-dir ${logs}`))
  const h = { 'x-waiter-token': 'elastic', 'x-waiter-debug': 'true' }
  await call(`${router.url}/status`, { headers: h })
  const id = await serviceId(router, 'elastic')

  let stop = false
  // Which process is which instance, from the answers (for the instances' own logs, below).
  const instanceOfPid = new Map<string, string>()
  const clients = Promise.all(
    Array.from({ length: 3 }, async () => {
      const statuses: number[] = []
      while (!stop) {
        const reply = await call(`${router.url}/sleep?sleep-ms=200`, { headers: h })
        statuses.push(reply.status)
        if (reply.status === 200) instanceOfPid.set(String(reply.json<{ pid: number }>().pid), String(reply.headers['x-waiter-backend-id']))
      }
      return statuses
    }),
  )
  // (Should the wait fail, the clients stop too, and what they met is not left unhandled.)
  clients.catch(() => undefined)
  try {
    await waitFor('3 healthy instances', async () => ((await appView(router, id))['instance-counts']['healthy-instances'] >= 3 ? true : undefined), 30000).catch(async (err: unknown) => {
      // What the version looked like, for whoever reads a failure.
      t.comment(JSON.stringify((await appView(router, id))['instance-counts']))
      throw err
    })
  } finally {
    stop = true
  }
  t.same([...new Set((await clients).flat())], [200], 'every request during scale-up succeeded')

  // One long request pins an instance while the version shrinks back to one.
  const long = call(`${router.url}/sleep?sleep-ms=5000`, { headers: h })
  await waitFor('the scale-down to one instance', async () => ((await appView(router, id))['instance-counts']['requested-instances'] === 1 ? true : undefined), 20000)
  const reply = await long
  t.equal(reply.status, 200, 'the long request finished on its instance')
  const busy = String(reply.headers['x-waiter-backend-id'])
  const left = await waitFor('one instance left', async () => {
    const active = (await appView(router, id)).instances['active-instances']
    return active.length === 1 ? active : undefined
  }, 20000)
  t.equal(left[0]?.id, busy, 'the instance that was busy is the one kept')
  // The instances' own word: each request an instance began it answered (a kill mid-request
  // leaves a start without an end, or a cut), and none ever held two at once. What counts is a
  // kill of maitre's: an instance the backend reports failed on its own (its health checks, on
  // a machine starved of CPU) is not one, and is only reported here.
  const view = await appView(router, id)
  const failedOnItsOwn = new Set(view.instances['failed-instances'].map((i) => i.id))
  const readLogs = (): { perInstance: string[][]; unanswered: string[]; mostAtOnce: number; skipped: string[] } => {
    const files = readdirSync(logs)
    const perInstance = files.map((f) => readFileSync(join(logs, f), 'utf8').split('\n').filter((l) => / (start|end|cut|sigterm) /.test(l)).map((l) => `${l} [${f}]`))
    const unanswered: string[] = []
    const skipped: string[] = []
    let mostAtOnce = 0
    for (const [i, lines] of perInstance.entries()) {
      const instance = instanceOfPid.get((files[i] as string).replace(/\.log$/, ''))
      if (instance !== undefined && failedOnItsOwn.has(instance)) {
        skipped.push(`${instance} failed on its own (${lines.length} log lines); its requests are not a scale-down's`)
        continue
      }
      const open = new Set<string>()
      for (const line of lines) {
        const [, what, cid] = line.split(' ')
        if (what === 'start') open.add(cid as string)
        else if (what === 'end') open.delete(cid as string)
        else if (what === 'cut') unanswered.push(line)
        mostAtOnce = Math.max(mostAtOnce, open.size)
      }
      // (With the instance's whole log, to tell what ended it.)
      unanswered.push(...[...open].map((cid) => `${cid} never answered: ${lines.join(' | ')}`))
    }
    return { perInstance, unanswered, mostAtOnce, skipped }
  }
  // An instance writes a request's end once its answer is handed to the kernel ('finish'), which
  // a loaded machine can run after the client already has the answer: the last request's end
  // line is waited for (a request a kill cut never gets one, and is reported after the wait).
  let read = readLogs()
  await waitFor('every request an instance began logged as answered', () => ((read = readLogs()).unanswered.length === 0 ? true : undefined), 5000).catch(() => undefined)
  const { perInstance, unanswered, mostAtOnce } = read
  for (const line of read.skipped) t.comment(line)
  t.ok(perInstance.flat().length > 0, `the instances logged ${perInstance.flat().filter((l) => / start /.test(l)).length} requests`)
  t.same(unanswered, [], 'no request was cut by a scale-down, by the instances’ own logs')
  t.equal(mostAtOnce, 1, 'no instance ever held more than its concurrency-level of 1')
  if (isKube(router)) {
    const pods = router.sim.list('pods', router.namespace).filter((p) => p.metadata.deletionTimestamp === undefined)
    t.equal(pods.length, 1, 'the ReplicaSet holds one pod')
    t.equal(router.sim.list('replicasets', router.namespace)[0]?.spec.replicas, 1, 'replicas lowered through /scale')
  }
  if (isMesos(router)) {
    await waitFor('the master to run one task of the version', () => (liveTasks(router, id).length === 1 ? true : undefined), 20000)
    t.equal(liveTasks(router, id)[0]?.id, busy, 'the task kept is the busy instance')
  }
}

for (const [kind, start] of Object.entries(BACKENDS)) {
  t.test(`${kind}: a cold start holds the first request until an instance is ready; the next is warm`, async (t) => {
    const { log, lines } = capturedLog()
    const router = await start(t, {}, log)
    await createToken(router, 'cold', kitchenToken())
    const first = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'cold' } })
    t.equal(first.status, 200, first.text)
    const id = await serviceId(router, 'cold')
    const healthyLine = await waitFor('its instance healthy line', () => lines.find((l) => l['msg'] === 'instance healthy' && l['service'] === id))
    t.ok(typeof healthyLine['startupMs'] === 'number' && healthyLine['startupMs'] >= 0, `the log says how long it took to start (${String(healthyLine['startupMs'])} ms)`)
    t.equal(first.headers['x-maitre-cold-start'], 'true')
    const second = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'cold' } })
    t.equal(second.status, 200)
    t.equal(second.headers['x-maitre-cold-start'], undefined, 'the second request is warm')
    t.equal(second.json<{ pid: number }>().pid, first.json<{ pid: number }>().pid, 'and served by the same instance')
    if (isKube(router)) {
      const [rs] = router.sim.list('replicasets', router.namespace)
      t.equal(rs?.metadata.annotations['maitre/service-id'], await serviceId(router, 'cold'), 'one ReplicaSet, annotated with the service id')
      t.equal(rs?.spec.template.spec.containers[0].resources.limits.memory, '256Mi', 'mem becomes the memory limit')
      t.equal(rs?.spec.template.spec.containers[0].readinessProbe.httpGet.path, '/status', 'readiness probes the health check URL')
    }
    if (isMesos(router)) {
      const [task] = liveTasks(router, await serviceId(router, 'cold'))
      t.equal(task?.env['PORT0'], String(task?.ports[0]), 'one task, its first offered port exported as PORT0')
      t.equal(task?.env['HOST'], task?.host, "and its agent's host as HOST")
    }
  })

  t.test(`${kind}: load scales up; scale-down kills only idle instances, never one serving a request`, async (t) => {
    await scaleDownKeepsTheBusy(t, await start(t, FAST))
  })

  t.test(`${kind}: garbage collection deletes a stale version and everything it ran`, async (t) => {
    const router = await start(t, FAST)
    await createToken(router, 'moving', kitchenToken({ 'fallback-period-secs': 0, 'stale-timeout-mins': 0 }))
    const first = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'moving' } })
    t.equal(first.status, 200)
    const oldId = await serviceId(router, 'moving')
    await createToken(router, 'moving', kitchenToken({ version: 'v2', 'fallback-period-secs': 0, 'stale-timeout-mins': 0 }))
    t.equal((await call(`${router.url}/status`, { headers: { 'x-waiter-token': 'moving' } })).status, 200)
    await waitFor('the stale version to be collected', async () => ((await call(`${router.url}/apps/${oldId}`)).status === 404 ? true : undefined), 15000)
    if (isKube(router)) {
      await waitFor('its ReplicaSet and pods to be gone', () => {
        const sets = router.sim.list('replicasets', router.namespace).filter((r) => r.metadata.annotations['maitre/service-id'] === oldId)
        const pods = router.sim.list('pods', router.namespace).filter((p) => p.metadata.labels['maitre/service-id'] === oldId)
        return sets.length === 0 && pods.length === 0 ? true : undefined
      }, 15000)
      t.pass('the ReplicaSet was deleted and the garbage collector took its pods')
    }
    if (isMesos(router)) {
      // (Not only out of the live states: a kill reports TASK_KILLING before TASK_KILLED.)
      await waitFor('its tasks to be killed', () => (liveTasks(router, oldId).length === 0 && router.sim.tasks().some((task) => task.id.startsWith(`${oldId}.`) && task.state === 'TASK_KILLED') ? true : undefined), 15000)
      t.ok(router.sim.tasks().some((task) => task.id.startsWith(`${oldId}.`) && task.state === 'TASK_KILLED'), 'its task was killed through the master')
    }
    t.equal((await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'moving' } })).status, 200, 'the current version still serves')
  })

  t.test(`${kind}: instances that were healthy and crash together are no deployment error: the requests waiting get the relaunch`, async (t) => {
    const router = await start(t)
    await createToken(router, 'crashy', kitchenToken({ 'min-instances': 2, 'max-instances': 2, 'concurrency-level': 1 }))
    const h = { 'x-waiter-token': 'crashy', 'x-waiter-queue-timeout': '30000' }
    t.equal((await call(`${router.url}/request-info`, { headers: h })).status, 200)
    const id = await serviceId(router, 'crashy')
    await waitFor('two healthy instances', async () => ((await appView(router, id))['instance-counts']['healthy-instances'] === 2 ? true : undefined), 30_000)
    // Both instances die of a request at once (a poison request, a leak that ends after N).
    const died = await Promise.all([call(`${router.url}/die`, { headers: h }), call(`${router.url}/die`, { headers: h })])
    t.same(died.map((r) => r.status), [502, 502], 'each request that killed its instance failed')
    const next = await call(`${router.url}/request-info`, { headers: h })
    t.equal(next.status, 200, `the next request waited for the relaunch, not refused as a deployment error: ${next.text.slice(0, 200)}`)
    const view = await appView(router, id)
    t.not(view.status, 'Failing')
    t.equal(view['deployment-error-message'], undefined)
    t.ok(view.instances['failed-instances'].length >= 2, 'the two crashes are listed as failed instances')
    // What tells an operator of a crash loop that is no deployment error.
    const failures = await waitFor('the crashes counted', async () => {
      const line = (await call(`${router.url}/metrics`)).text.split('\n').find((l) => l.startsWith(`maitre_instance_failures_total{service="${id}"} `))
      const n = Number(line?.split(' ')[1])
      return n >= 2 ? n : undefined
    })
    t.ok(failures >= 2, `maitre_instance_failures_total counts them (${failures})`)
  })

  t.test(`${kind}: a bad command and an instance over its memory are Waiter's deployment errors`, async (t) => {
    const router = await start(t)
    await createToken(router, 'broken', { cmd: 'asdf-no-such-command --port $PORT0', cpus: 0.1, mem: 64, version: 'v1' })
    const broken = await call(`${router.url}/x`, { headers: { 'x-waiter-token': 'broken', 'x-waiter-queue-timeout': '20000' } })
    t.equal(broken.status, 503)
    t.equal(message(broken), 'Deployment error: Invalid startup command')
    const view = await appView(router, await serviceId(router, 'broken'))
    t.equal(view.status, 'Failing')
    t.equal(view['deployment-error-message'], 'Deployment error: Invalid startup command')
    t.equal(view.instances['failed-instances'][0]?.['exit-code'], 127)

    await createToken(router, 'hog', kitchenToken({ mem: 100 }, '--hold-mb 200 --start-up-sleep-ms 15000'))
    const hog = await call(`${router.url}/x`, { headers: { 'x-waiter-token': 'hog', 'x-waiter-queue-timeout': '20000' } })
    t.equal(hog.status, 503, hog.text)
    t.equal(message(hog), 'Deployment error: Not enough memory allocated')
  })
}

t.test('kubernetes: an image that cannot be pulled and a pod quota give the cluster’s own message', async (t) => {
  const router = await startKubeRouter(t, {}, { ...REALISTIC, images: ['docker.io/library/debian:bookworm-slim'], podQuota: 1 })
  await createToken(router, 'pull', kitchenToken({ image: 'registry.example/missing:1' }))
  const pull = await call(`${router.url}/x`, { headers: { 'x-waiter-token': 'pull', 'x-waiter-queue-timeout': '20000' } })
  t.equal(pull.status, 503)
  t.match(message(pull), /^Deployment error: (ImagePullBackOff|ErrImagePull): .*registry\.example\/missing:1/)
  t.equal((await appView(router, await serviceId(router, 'pull'))).status, 'Failing')

  // The one pod the quota allows is taken by the pull above: the next version cannot get a pod.
  await createToken(router, 'quota', kitchenToken())
  const quota = await call(`${router.url}/x`, { headers: { 'x-waiter-token': 'quota', 'x-waiter-queue-timeout': '20000' } })
  t.equal(quota.status, 503)
  t.match(message(quota), /^Deployment error: FailedCreate: Error creating: pods ".*" is forbidden: exceeded quota/)
})

t.test('kubernetes, its ReplicaSet controller’s pod cache lagging 500 ms: scale-down under load still kills only idle instances', async (t) => {
  await scaleDownKeepsTheBusy(t, await startKubeRouter(t, FAST, { ...REALISTIC, controllerLagMs: { pods: 500, replicasets: 0 } }))
})
