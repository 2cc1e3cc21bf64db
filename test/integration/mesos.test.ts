/**
 * The Mesos backend against the in-repo master simulator (real HTTP, RecordIO, real task
 * processes on per-agent loopback IPs): what only Mesos has — offers and their filters, bin-packing,
 * acknowledgements, failover, master restarts and redirects, lost agents. The scenarios every
 * backend shares (cold start, scaling, GC, deployment errors) are in backend-parity.test.ts.
 */
import t from 'tap'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { call, createToken, kitchenToken, ownDir, waitFor, type Router } from '../fixtures/router.ts'
import { startMesosRouter, startMesosSimulatorFor, type MesosRouter } from '../fixtures/mesos-router.ts'
import { startMesosSimulator } from '../fixtures/mesos-sim/master.ts'

const LIVE = ['TASK_STAGING', 'TASK_STARTING', 'TASK_RUNNING']

async function serviceId(router: Router, token: string): Promise<string> {
  return (await call(`${router.url}/service-id`, { headers: { 'x-waiter-token': token } })).text
}

function liveTasks(router: MesosRouter, id: string): ReturnType<MesosRouter['sim']['tasks']> {
  return router.sim.tasks().filter((task) => task.id.startsWith(`${id}.`) && LIVE.includes(task.state))
}

async function served(router: Router, token: string): Promise<{ status: number; pid: number | undefined }> {
  const reply = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': token, 'x-waiter-queue-timeout': '20000' } })
  return { status: reply.status, pid: reply.status === 200 ? reply.json<{ pid: number }>().pid : undefined }
}

t.test('offers are taken only when wanted: unused ones declined, suppressed with nothing to launch, every update with a uuid acknowledged', async (t) => {
  const router = await startMesosRouter(t)
  await createToken(router, 'calm', kitchenToken())
  t.equal((await served(router, 'calm')).status, 200, 'the cold start launched a task on an offer')
  const calls = (): string[] => router.sim.calls().map((c) => c.type)
  await waitFor('the framework to suppress offers once its one instance runs', () => (router.sim.frameworks()[0]?.suppressed === true ? true : undefined))
  t.ok(calls().includes('ACCEPT'), 'the offer that fitted was accepted')
  t.ok(calls().includes('DECLINE'), 'the other agents’ offers were declined, not held')
  t.ok(calls().includes('REVIVE'), 'offers were revived when the demand appeared')
  await waitFor('STARTING, RUNNING and healthy RUNNING acknowledged', () => (calls().filter((c) => c === 'ACKNOWLEDGE').length >= 3 ? true : undefined))
  await waitFor('no update left unacknowledged', () => (router.sim.unacknowledged() === 0 ? true : undefined))
  t.pass('each status update with a uuid was acknowledged: the master holds none back')
  t.ok(calls().includes('RECONCILE'), 'tasks were reconciled after subscribing')
})

t.test('bin-packing: small versions fill one agent before the next is used; one version’s instances spread over agents', async (t) => {
  const router = await startMesosRouter(t, {}, { simOptions: { agents: 3, agentCpus: 1, agentMemMb: 1024 } })
  for (const name of ['pack-a', 'pack-b', 'pack-c']) {
    await createToken(router, name, kitchenToken({ cpus: 0.25, mem: 128 }))
    t.equal((await served(router, name)).status, 200, `${name} started`)
  }
  const agentsUsed = new Set(router.sim.tasks().filter((task) => LIVE.includes(task.state)).map((task) => task.agentId))
  t.equal(agentsUsed.size, 1, 'three small versions share one agent (it fits 4 of them)')

  await createToken(router, 'spread', kitchenToken({ cpus: 0.1, mem: 128, 'min-instances': 3 }))
  const spreadReply = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'spread', 'x-waiter-queue-timeout': '20000' } })
  t.equal(spreadReply.status, 200, 'the spread version started')
  const id = await serviceId(router, 'spread')
  const spread = await waitFor('three tasks of the spread version', () => {
    const live = liveTasks(router, id)
    return live.length === 3 ? live : undefined
  }, 20000)
  t.equal(new Set(spread.map((task) => task.agentId)).size, 3, 'one per agent')
})

t.test('a router restart re-subscribes as the same framework and adopts the running task instead of launching another', async (t) => {
  const sim = await startMesosSimulatorFor(t)
  const dataDir = mkdtempSync(join(tmpdir(), 'maitre-mesos-router-'))
  t.teardown(() => rmSync(dataDir, { recursive: true, force: true }))
  const first = await startMesosRouter(t, {}, { sim, dataDir })
  await createToken(first, 'kept', kitchenToken())
  const before = await served(first, 'kept')
  t.equal(before.status, 200)
  const frameworkId = sim.frameworks()[0]?.id
  await first.app.stop()
  t.equal(sim.frameworks()[0]?.connected, false, 'the stopped router left its framework disconnected, its task running')

  const second = await startMesosRouter(t, {}, { sim, dataDir })
  await waitFor('the new router to subscribe', () => (sim.frameworks().some((f) => f.connected) ? true : undefined))
  t.equal(sim.frameworks().find((f) => f.connected)?.id, frameworkId, 'with the framework id the first one kept')
  const after = await served(second, 'kept')
  t.equal(after.status, 200, 'served without a cold start')
  t.equal(after.pid, before.pid, 'by the very same task process')
  const id = await serviceId(second, 'kept')
  t.equal(sim.tasks().filter((task) => task.id.startsWith(`${id}.`)).length, 1, 'no second task was ever launched')

  // The master's state, which it shows whoever reads it, holds no credential: the adopting
  // router found what the version runs with in its record.
  const state = await (await fetch(`${sim.url}/master/state`)).text()
  const [task] = sim.tasks().filter((k) => k.id.startsWith(`${id}.`))
  t.ok(task?.env['WAITER_PASSWORD'], 'the task runs with its password')
  t.notMatch(state, task?.env['WAITER_PASSWORD'] as string, 'which the master state never shows')
  t.notMatch(state, /"authorization"|Basic /, 'nor the Authorization the router sends it')
  if (task === undefined) throw new Error('no task')
  sim.loseAgent(task.agentId)
  await waitFor('the adopted version replaced on another agent', () => sim.tasks().find((k) => k.id.startsWith(`${id}.`) && k.state === 'TASK_RUNNING' && k.healthy === true && k.id !== task.id), 20_000)
  const replaced = await served(second, 'kept')
  t.equal(replaced.status, 200, 'and its replacement, launched from the record, takes the router’s credentials')
})

t.test('the master restarts, and a standby redirects to the leader: the framework follows and its instance serves on', async (t) => {
  const sim = await startMesosSimulatorFor(t)
  const standby = await startMesosSimulator({ workDir: ownDir(t, 'maitre-mesos-standby-'), agents: 0, leader: sim.url })
  t.teardown(() => standby.close())
  // The standby first in the list: the leader is found through its 307 (a scheme-less Location).
  const router = await startMesosRouter(t, { 'backend.mesos.master': `${standby.url},${sim.url}` }, { sim })
  await createToken(router, 'steady', kitchenToken())
  const before = await served(router, 'steady')
  t.equal(before.status, 200, 'reached through the redirect')
  const streamBefore = sim.frameworks()[0]?.streamId

  await sim.restart()
  await waitFor('a new subscription after the master restart', () => {
    const framework = sim.frameworks()[0]
    return framework?.connected === true && framework.streamId !== streamBefore ? true : undefined
  }, 20000)
  const after = await served(router, 'steady')
  t.equal(after.status, 200)
  t.equal(after.pid, before.pid, 'the same task serves: it was reconciled, not relaunched')
})

t.test('a silent stream (no heartbeats for five intervals) is dropped and subscribed again', async (t) => {
  const router = await startMesosRouter(t)
  await createToken(router, 'hb', kitchenToken())
  t.equal((await served(router, 'hb')).status, 200)
  const streamBefore = router.sim.frameworks()[0]?.streamId
  router.sim.muteHeartbeats(true)
  await waitFor('a new stream', () => {
    const framework = router.sim.frameworks()[0]
    return framework?.connected === true && framework.streamId !== streamBefore ? true : undefined
  }, 15000)
  router.sim.muteHeartbeats(false)
  t.equal((await served(router, 'hb')).status, 200, 'and the instance serves on')
})

t.test('an agent lost: its task is replaced on another agent', async (t) => {
  const router = await startMesosRouter(t)
  await createToken(router, 'moved', kitchenToken())
  const before = await served(router, 'moved')
  t.equal(before.status, 200)
  const id = await serviceId(router, 'moved')
  const [task] = liveTasks(router, id)
  if (task === undefined) throw new Error('no task')
  router.sim.loseAgent(task.agentId)
  const replacement = await waitFor('a replacement task on another agent', () => liveTasks(router, id).find((k) => k.state === 'TASK_RUNNING' && k.healthy === true), 20000)
  t.not(replacement.agentId, task.agentId, 'not on the lost agent')
  const after = await served(router, 'moved')
  t.equal(after.status, 200, 'requests reach the replacement')
  t.not(after.pid, before.pid)
  const view = (await call(`${router.url}/apps/${id}`)).json<{ status: string }>()
  t.not(view.status, 'Failing', 'a lost agent is no deployment error')
})

t.test('offers rescinded before the framework accepts them: the tasks come back LOST (invalid offers) and are placed again', async (t) => {
  const router = await startMesosRouter(t)
  await createToken(router, 'rescinded', kitchenToken())
  // Rescind every offer as it is made, for a while: ACCEPTs race the rescinds, and the ones that lose are LOST.
  let rescinding = true
  const rescinder = (async () => {
    while (rescinding) {
      router.sim.rescindOffers()
      await new Promise((resolve) => setImmediate(resolve))
    }
  })()
  const pending = served(router, 'rescinded')
  const id = await serviceId(router, 'rescinded')
  type Failed = { instances: { 'failed-instances': { message: string }[] } }
  const lost = await waitFor('a launch on a rescinded offer', async () => {
    const failed = (await call(`${router.url}/apps/${id}`)).json<Failed>().instances['failed-instances']
    return failed.find((f) => f.message.includes('REASON_INVALID_OFFERS'))
  }, 10000).finally(() => {
    rescinding = false
  })
  await rescinder
  t.match(lost.message, /^TASK_LOST \(REASON_INVALID_OFFERS\)/, 'the master said the launch used offers it had rescinded')
  t.equal((await pending).status, 200, 'the request still got an instance, launched on a later offer')
  const view = (await call(`${router.url}/apps/${id}`)).json<{ status: string }>()
  t.not(view.status, 'Failing', 'a lost launch is no deployment error')
})

t.test('a health check that never passes: the master kills the task after its grace, and the version fails with Waiter’s message', async (t) => {
  // One failed task is enough to tell (two by default): the test waits out one grace and 5 s of failed checks, not two.
  const router = await startMesosRouter(t, { 'backend.mesos.minFailedInstances': 1 })
  await createToken(router, 'sick', kitchenToken({ 'health-check-url': '/no-such-page', 'grace-period-secs': 1, 'health-check-interval-secs': 5, 'health-check-max-consecutive-failures': 1 }))
  const reply = await call(`${router.url}/request-info`, { headers: { 'x-waiter-token': 'sick', 'x-waiter-queue-timeout': '20000' } })
  t.equal(reply.status, 503)
  t.equal(reply.json<{ 'waiter-error': { message: string } }>()['waiter-error'].message, 'Deployment error: Health check returned an invalid response')
  const id = await serviceId(router, 'sick')
  t.ok(router.sim.tasks().some((task) => task.id.startsWith(`${id}.`) && task.state === 'TASK_KILLED'), 'the master’s health checks killed the task')
})
