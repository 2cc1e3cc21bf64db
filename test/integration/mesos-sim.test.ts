/**
 * The in-repo Mesos master simulator, driven as a framework drives a real master: over HTTP,
 * reading the RecordIO event stream. What it must get right is what maitre's Mesos backend
 * relies on (../shared/reference/mesos-scheduler-api.md).
 */
import t, { type Test } from 'tap'
import { spawn } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createInterface } from 'node:readline'
import { request } from 'undici'
import type { Event, Offer, Resource, TaskInfo, TaskStatus } from '../../src/backends/mesos/protocol.ts'
import { startMesosSimulator, type MesosSim, type MesosSimOptions } from '../fixtures/mesos-sim/master.ts'
import { RecordIOReader } from '../fixtures/mesos-sim/recordio.ts'
import { ownDir } from '../fixtures/own-dir.ts'

// Not from router-process.ts: that pulls in the whole router, unneeded here.
const REPO = fileURLToPath(new URL('../..', import.meta.url))
const JSON_HEADERS = { 'content-type': 'application/json', accept: 'application/json' }
const KITCHEN = join(REPO, 'test/fixtures/kitchen.mjs')

async function until<T>(what: string, probe: () => T | undefined | Promise<T | undefined>, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = await probe()
    if (value !== undefined && value !== false) return value
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}

async function sim(t: Test, options: Partial<MesosSimOptions> = {}): Promise<MesosSim> {
  const s = await startMesosSimulator({ workDir: ownDir(t, 'maitre-mesos-sim-'), heartbeatIntervalSeconds: 0.2, offerIntervalMs: 20, ...options })
  t.teardown(() => s.close())
  return s
}

async function post(url: string, body: unknown, headers: Record<string, string> = {}): Promise<{ status: number; text: string; headers: Record<string, unknown> }> {
  const res = await request(`${url}/api/v1/scheduler`, { method: 'POST', headers: { ...JSON_HEADERS, ...headers }, body: typeof body === 'string' ? body : JSON.stringify(body) })
  return { status: res.statusCode, text: await res.body.text(), headers: res.headers }
}

/** A framework's side of one subscription: the event stream read in the background. */
class Subscriber {
  readonly events: Event[] = []
  ended = false
  streamId = ''
  frameworkId = ''
  status = 0
  headers: Record<string, unknown> = {}
  readonly #url: string

  constructor(url: string) {
    this.#url = url
  }

  static async open(t: Test, url: string, info: Record<string, unknown> = {}, frameworkId?: string): Promise<Subscriber> {
    const sub = new Subscriber(url)
    const frameworkInfo = { user: 'maitre', name: 'maitre-test', roles: ['maitre'], capabilities: [{ type: 'MULTI_ROLE' }], failover_timeout: 3600, ...info, ...(frameworkId === undefined ? {} : { id: { value: frameworkId } }) }
    const res = await request(`${url}/api/v1/scheduler`, { method: 'POST', headers: JSON_HEADERS, body: JSON.stringify({ type: 'SUBSCRIBE', ...(frameworkId === undefined ? {} : { framework_id: { value: frameworkId } }), subscribe: { framework_info: frameworkInfo } }) })
    sub.status = res.statusCode
    sub.headers = res.headers
    sub.streamId = String(res.headers['mesos-stream-id'] ?? '')
    const reader = new RecordIOReader()
    const body = res.body
    t.teardown(() => body.destroy())
    void (async () => {
      try {
        for await (const chunk of body) sub.events.push(...(reader.push(chunk as Buffer) as Event[]))
      } catch {
        // destroyed by the teardown or cut by the master
      }
      sub.ended = true
    })()
    const first = await sub.next((e) => e.type === 'SUBSCRIBED' || e.type === 'ERROR', 0)
    if (first.subscribed !== undefined) sub.frameworkId = first.subscribed.framework_id.value
    return sub
  }

  /** The first event from index `from` on that matches. */
  next(match: (e: Event) => boolean, from: number, timeoutMs = 10_000): Promise<Event> {
    return until(`an event after #${from}`, () => this.events.slice(from).find(match), timeoutMs)
  }

  updates(taskId: string, from = 0): TaskStatus[] {
    return this.events.slice(from).flatMap((e) => (e.update !== undefined && e.update.status.task_id.value === taskId ? [e.update.status] : []))
  }

  nextUpdate(taskId: string, state: string, from = 0, timeoutMs = 10_000): Promise<TaskStatus> {
    return until(`${taskId} ${state}`, () => this.updates(taskId, from).find((s) => s.state === state), timeoutMs)
  }

  async nextOffers(from = this.events.length): Promise<Offer[]> {
    const event = await this.next((e) => e.type === 'OFFERS', from)
    return [...(event.offers?.offers ?? [])]
  }

  call(body: Record<string, unknown>, headers: Record<string, string> = {}): Promise<{ status: number; text: string }> {
    return post(this.#url, { framework_id: { value: this.frameworkId }, ...body }, { 'mesos-stream-id': this.streamId, ...headers })
  }

  async ack(status: TaskStatus): Promise<void> {
    const reply = await this.call({ type: 'ACKNOWLEDGE', acknowledge: { agent_id: status.agent_id, task_id: status.task_id, uuid: status.uuid } })
    if (reply.status !== 202) throw new Error(`ACKNOWLEDGE: ${reply.status} ${reply.text}`)
  }

  /** Acknowledges every update carrying a uuid as it arrives, as a well-behaved framework does. */
  autoAck(): () => void {
    let seen = 0
    const timer = setInterval(() => {
      for (const event of this.events.slice(seen)) if (event.update?.status.uuid !== undefined) void this.ack(event.update.status).catch(() => undefined)
      seen = this.events.length
    }, 5)
    return () => clearInterval(timer)
  }
}

const scalar = (offer: Offer, name: string, value: number): Resource => ({ ...(offer.resources.find((r) => r.name === name) as Resource), scalar: { value } })

function task(offer: Offer, id: string, command: string, options: { mem?: number; ports?: number; env?: Record<string, string>; extra?: Partial<TaskInfo> } = {}): TaskInfo {
  const portsOffered = offer.resources.find((r) => r.name === 'ports') as Resource
  const first = portsOffered.ranges?.range[0]?.begin ?? 0
  const count = options.ports ?? 1
  const ports = Array.from({ length: count }, (_, i) => first + i)
  const resources: Resource[] = [scalar(offer, 'cpus', 0.1), scalar(offer, 'mem', options.mem ?? 128)]
  if (count > 0) resources.push({ ...portsOffered, ranges: { range: [{ begin: first, end: first + count - 1 }] } })
  const env = { ...Object.fromEntries(ports.map((p, i) => [`PORT${i}`, String(p)])), HOST: offer.hostname, ...options.env }
  return { name: id, task_id: { value: id }, agent_id: offer.agent_id, resources, command: { shell: true, value: command, environment: { variables: Object.entries(env).map(([name, value]) => ({ name, value })) } }, ...options.extra }
}

const launch = (sub: Subscriber, offer: Offer, tasks: TaskInfo[], offerIds = [offer.id], refuseSeconds?: number): Promise<{ status: number; text: string }> =>
  sub.call({ type: 'ACCEPT', accept: { offer_ids: offerIds, operations: [{ type: 'LAUNCH', launch: { task_infos: tasks } }], ...(refuseSeconds === undefined ? {} : { filters: { refuse_seconds: refuseSeconds } }) } })

const kitchen = `exec ${process.execPath} ${KITCHEN} --port $PORT0`

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

t.test('SUBSCRIBE: a chunked RecordIO stream with a Mesos-Stream-Id, SUBSCRIBED first, then heartbeats', async (t) => {
  const s = await sim(t)
  const sub = await Subscriber.open(t, s.url)
  t.equal(sub.status, 200)
  t.match(sub.headers, { 'transfer-encoding': 'chunked', 'content-type': 'application/json' })
  t.match(sub.streamId, /^[0-9a-f-]{36}$/, 'the stream id is a uuid')
  t.equal(sub.events[0]?.type, 'SUBSCRIBED')
  t.match(sub.frameworkId, /^[0-9a-f-]{36}-\d{4}$/, 'the master assigns a framework id <master id>-NNNN')
  t.equal(sub.events[0]?.subscribed?.heartbeat_interval_seconds, 0.2)
  await until('three heartbeats', () => sub.events.filter((e) => e.type === 'HEARTBEAT').length >= 3)
  t.same(s.frameworks(), [{ id: sub.frameworkId, connected: true, suppressed: false, streamId: sub.streamId }])

  s.muteHeartbeats(true)
  // A negative needs a window: a heartbeat already on the wire gets 100 ms to land, then 2.5
  // intervals must pass without one.
  await new Promise((resolve) => setTimeout(resolve, 100))
  const quiet = sub.events.length
  await new Promise((resolve) => setTimeout(resolve, 500))
  t.notOk(sub.events.slice(quiet).some((e) => e.type === 'HEARTBEAT'), 'muted: no heartbeats, and the stream stays open')
  t.notOk(sub.ended)
  s.muteHeartbeats(false)
  await sub.next((e) => e.type === 'HEARTBEAT', quiet)

  const again = await Subscriber.open(t, s.url, {}, sub.frameworkId)
  t.equal(again.frameworkId, sub.frameworkId, 'a re-subscription keeps the framework id')
  t.not(again.streamId, sub.streamId, 'with a new stream id')
  await until('the old stream closed', () => sub.ended)
  t.match(sub.events[sub.events.length - 1], { type: 'ERROR', error: { message: 'Framework failed over' } }, 'the scheduler replaced is told, as the master’s failoverFramework does')
  t.equal(s.frameworks()[0]?.connected, true, 'replacing a stream is no disconnection')
})

t.test('malformed requests are refused with the status Mesos uses, and the master carries on', async (t) => {
  const s = await sim(t)
  const subscribe = { type: 'SUBSCRIBE', subscribe: { framework_info: { user: 'u', name: 'n' } } }
  t.equal((await post(s.url, '{"type":')).status, 400, 'bad JSON')
  t.match((await post(s.url, '{"type":')).text, /Failed to parse body into JSON/)
  t.equal((await post(s.url, { type: 'SUBSCRIBE', subscribe: { framework_info: { name: 'n' } } })).status, 400, 'no user')
  t.equal((await post(s.url, { type: 'NONSENSE' })).status, 400, 'unknown call type')
  t.equal((await post(s.url, subscribe, { 'mesos-stream-id': 'abc' })).status, 400, 'SUBSCRIBE with a Mesos-Stream-Id')
  t.equal((await post(s.url, subscribe, { 'content-type': 'text/plain' })).status, 415, 'other content type')
  t.equal((await post(s.url, subscribe, { accept: 'text/html' })).status, 406, 'JSON not acceptable')
  const noType = await request(`${s.url}/api/v1/scheduler`, { method: 'POST', body: JSON.stringify(subscribe) })
  t.equal(noType.statusCode, 400, 'no Content-Type')
  await noType.body.dump()
  const get = await request(`${s.url}/api/v1/scheduler`)
  t.equal(get.statusCode, 405, 'not POST')
  await get.body.dump()
  t.equal((await post(s.url, { type: 'DECLINE', framework_id: { value: 'nobody' }, decline: { offer_ids: [] } }, { 'mesos-stream-id': 'x' })).status, 400, 'unknown framework')
  const sub = await Subscriber.open(t, s.url)
  t.equal(sub.status, 200, 'still serving')
  const offer = (await sub.nextOffers(0))[0] as Offer
  t.equal((await sub.call({ type: 'ACCEPT', accept: { offer_ids: [offer.id], operations: [null] } })).status, 400, 'an operation that is no object')
  t.equal((await sub.call({ type: 'ACKNOWLEDGE', acknowledge: { agent_id: offer.agent_id, task_id: { value: 'x' }, uuid: 'AAAA' } })).status, 400, 'a uuid that is not 16 bytes')
  const garbage = { name: 'g', task_id: { value: 'garbage' }, agent_id: offer.agent_id, resources: [null, { name: 'ports', type: 'RANGES', ranges: { range: 'all' } }], command: { value: 'true' } }
  t.equal((await sub.call({ type: 'ACCEPT', accept: { offer_ids: [offer.id], operations: [{ type: 'LAUNCH', launch: { task_infos: [garbage] } }] } })).status, 202)
  t.match(await sub.nextUpdate('garbage', 'TASK_ERROR'), { reason: 'REASON_TASK_INVALID', message: /invalid resources/ }, 'a TaskInfo that makes no sense is a TASK_ERROR, not a crash')
})

t.test('a task runs: offers, LAUNCH, STARTING → RUNNING → healthy, reachable on its agent IP and port; KILL ends it', async (t) => {
  const s = await sim(t)
  const sub = await Subscriber.open(t, s.url)
  const offers = await sub.nextOffers(0)
  t.equal(offers.length, 3, 'one offer per agent')
  const offer = offers[0] as Offer
  t.equal(offer.hostname, s.agents.find((a) => a.id === offer.agent_id.value)?.hostname)
  t.match(offer.hostname, /^127\.\d+\.1\.1$/)
  t.same(offer.allocation_info, { role: 'maitre' })
  t.match(offer.resources, [
    { name: 'cpus', type: 'SCALAR', scalar: { value: 4 }, role: '*', allocation_info: { role: 'maitre' } },
    { name: 'mem', type: 'SCALAR', scalar: { value: 4096 } },
    { name: 'disk', type: 'SCALAR' },
    { name: 'ports', type: 'RANGES', ranges: { range: [{ begin: 31000, end: 31032 }] } }, // the first agent's third of 31000–31099
  ])

  const info = task(offer, 'web.1', kitchen, { env: { WAITER_PASSWORD: 'pw' }, extra: { health_check: { type: 'HTTP', http: { scheme: 'http', port: 31000, path: '/status' }, delay_seconds: 0.05, interval_seconds: 0.1, timeout_seconds: 1, consecutive_failures: 3, grace_period_seconds: 5 }, kill_policy: { grace_period: { nanoseconds: 2e9 } } } })
  t.equal((await launch(sub, offer, [info])).status, 202)
  const starting = await sub.nextUpdate('web.1', 'TASK_STARTING')
  t.match(starting, { source: 'SOURCE_EXECUTOR', agent_id: offer.agent_id, uuid: /^[A-Za-z0-9+/]{22}==$/ })
  t.type(starting.timestamp, 'number')
  await sub.ack(starting)
  const running = await sub.nextUpdate('web.1', 'TASK_RUNNING')
  t.equal(running.healthy, undefined, 'the first RUNNING says nothing of health')
  t.not(running.uuid, starting.uuid)
  await sub.ack(running)
  const healthy = await until('RUNNING healthy:true', () => sub.updates('web.1').find((u) => u.healthy === true))
  t.equal(healthy.state, 'TASK_RUNNING')
  t.equal(healthy.reason, 'REASON_TASK_HEALTH_CHECK_STATUS_UPDATED')
  await sub.ack(healthy)

  const simTask = s.tasks().find((x) => x.id === 'web.1')
  t.match(simTask, { state: 'TASK_RUNNING', healthy: true, host: offer.hostname, ports: [31000], frameworkId: sub.frameworkId })
  t.equal(simTask?.env['MESOS_TASK_ID'], 'web.1')
  t.ok(simTask?.env['MESOS_SANDBOX'])
  t.notOk('PORT' in (simTask?.env ?? {}), 'Mesos adds no port variables of its own')
  const reply = await request(`http://${offer.hostname}:31000/environment`, { headers: { authorization: `Basic ${Buffer.from('waiter:pw').toString('base64')}` } })
  const env = (await reply.body.json()) as Record<string, string>
  t.equal(env['MESOS_TASK_ID'], 'web.1', 'a real request reaches the task at its agent host and port')

  const state = (await (await request(`${s.url}/master/state`)).body.json()) as Record<string, any>
  t.equal(state['slaves'].length, 3)
  t.match(state['slaves'][0], { id: /-S0$/, hostname: /^127\./, resources: { cpus: 4, mem: 4096, ports: '[31000-31032]' } })
  t.match(state['frameworks'][0], { id: sub.frameworkId, name: 'maitre-test', active: true, connected: true, failover_timeout: 3600 })
  t.match(state['frameworks'][0].tasks[0], { id: 'web.1', framework_id: sub.frameworkId, slave_id: offer.agent_id.value, state: 'TASK_RUNNING', resources: { cpus: 0.1, mem: 128, ports: '[31000-31000]' } })
  t.match(state['frameworks'][0].tasks[0].statuses.map((x: { state: string }) => x.state), ['TASK_STAGING', 'TASK_STARTING', 'TASK_RUNNING', 'TASK_RUNNING'])

  const pid = simTask?.pid as number
  t.ok(alive(pid))
  t.equal((await sub.call({ type: 'KILL', kill: { task_id: { value: 'web.1' }, agent_id: offer.agent_id } })).status, 202)
  const killed = await sub.nextUpdate('web.1', 'TASK_KILLED')
  t.match(killed, { source: 'SOURCE_EXECUTOR', message: /^Command (exited with status 0|terminated with signal Terminated)$/ })
  t.notOk(alive(pid), 'the process is gone')
  await sub.ack(killed)
  await until('the task remembered as terminal', () => s.tasks().find((x) => x.id === 'web.1' && x.state === 'TASK_KILLED'))
  const unknown = sub.events.length
  await sub.call({ type: 'KILL', kill: { task_id: { value: 'never-launched' } } })
  const lost = await sub.nextUpdate('never-launched', 'TASK_LOST', unknown)
  t.equal(lost.uuid, undefined, 'the master answers a kill of an unknown task with LOST, unacknowledgeable')
})

t.test('status updates: the head is resent until acknowledged, the next held back until then', async (t) => {
  const s = await sim(t, { updateRetryMs: 150 })
  const sub = await Subscriber.open(t, s.url)
  const offer = (await sub.nextOffers(0))[0] as Offer
  await launch(sub, offer, [task(offer, 'exits', 'sleep 0.2; exit 3', { ports: 0 })])
  const starting = await sub.nextUpdate('exits', 'TASK_STARTING')
  await until('STARTING resent', () => sub.updates('exits').filter((u) => u.state === 'TASK_STARTING').length >= 3, 5000)
  t.ok(sub.updates('exits').every((u) => u.uuid === starting.uuid), 'resent byte for byte, same uuid')
  await until('the task has exited', () => s.tasks().find((x) => x.id === 'exits' && x.state === 'TASK_FAILED'))
  t.notOk(sub.updates('exits').some((u) => u.state !== 'TASK_STARTING'), 'RUNNING and FAILED wait behind the unacknowledged STARTING')

  await sub.ack(starting)
  const running = await sub.nextUpdate('exits', 'TASK_RUNNING')
  const afterRunning = sub.events.length
  await sub.ack(running)
  const failed = await sub.nextUpdate('exits', 'TASK_FAILED')
  t.match(failed, { message: 'Command exited with status 3', reason: 'REASON_COMMAND_EXECUTOR_FAILED', source: 'SOURCE_EXECUTOR' })
  t.equal(sub.updates('exits', afterRunning).filter((u) => u.state === 'TASK_RUNNING').length, 0, 'an acknowledged update is not resent')
  await sub.ack(failed)
  const acked = sub.events.length
  await until('two retry periods', () => sub.events.filter((e) => e.type === 'HEARTBEAT').length >= sub.events.slice(0, acked).filter((e) => e.type === 'HEARTBEAT').length + 3)
  t.equal(sub.updates('exits', acked).length, 0, 'nothing more once the terminal update is acknowledged')
})

t.test('how commands end: exit 0 → FINISHED, a signal → FAILED "terminated with signal", shell:false runs argv; output in the sandbox', async (t) => {
  const s = await sim(t)
  const sub = await Subscriber.open(t, s.url)
  const stop = sub.autoAck()
  t.teardown(stop)
  const offer = (await sub.nextOffers(0))[0] as Offer
  const argv = { ...task(offer, 'argv', '', { ports: 0 }), command: { shell: false, value: process.execPath, arguments: ['node', '-e', 'console.log(process.argv.length, process.env.MESOS_TASK_ID)'] } }
  await launch(sub, offer, [task(offer, 'echo', 'echo hello from $MESOS_TASK_ID', { ports: 0 }), task(offer, 'signalled', 'kill -9 $$', { ports: 0 }), argv])
  t.match(await sub.nextUpdate('echo', 'TASK_FINISHED'), { message: 'Command exited with status 0', source: 'SOURCE_EXECUTOR' })
  t.match(await sub.nextUpdate('signalled', 'TASK_FAILED'), { message: 'Command terminated with signal Killed', reason: 'REASON_COMMAND_EXECUTOR_FAILED' })
  await sub.nextUpdate('argv', 'TASK_FINISHED')
  const sandbox = (id: string): string => s.tasks().find((x) => x.id === id)?.env['MESOS_SANDBOX'] as string
  t.equal(readFileSync(join(sandbox('echo'), 'stdout'), 'utf8'), 'hello from echo\n', 'stdout goes to the sandbox')
  t.equal(readFileSync(join(sandbox('argv'), 'stdout'), 'utf8'), '1 argv\n', 'shell:false: the executable with its arguments, no shell')
})

t.test('a failing health check: RUNNING healthy:false, then the task killed, TASK_KILLED healthy:false; TASK_KILLING first if asked for', async (t) => {
  const s = await sim(t)
  const sub = await Subscriber.open(t, s.url, { capabilities: [{ type: 'MULTI_ROLE' }, { type: 'TASK_KILLING_STATE' }] })
  const stop = sub.autoAck()
  t.teardown(stop)
  const offer = (await sub.nextOffers(0))[0] as Offer
  const check = { type: 'HTTP' as const, http: { port: 31000, path: '/status' }, delay_seconds: 0, interval_seconds: 0.1, timeout_seconds: 1, consecutive_failures: 3, grace_period_seconds: 5 }
  await launch(sub, offer, [task(offer, 'sickly', kitchen, { extra: { health_check: check, kill_policy: { grace_period: { nanoseconds: 1e9 } } } })])
  await until('healthy', () => sub.updates('sickly').find((u) => u.healthy === true))
  writeFileSync(join(s.tasks()[0]?.env['MESOS_SANDBOX'] as string, 'fail-health-checks'), '')
  const unhealthy = await until(`healthy:false (updates so far: ${JSON.stringify(sub.updates('sickly').map((u) => [u.state, u.healthy, u.uuid !== undefined]))})`, () => sub.updates('sickly').find((u) => u.healthy === false))
  t.equal(unhealthy.state, 'TASK_RUNNING', 'turning unhealthy is a TASK_RUNNING update')
  await sub.nextUpdate('sickly', 'TASK_KILLING')
  t.match(await sub.nextUpdate('sickly', 'TASK_KILLED'), { healthy: false })
  t.same(
    sub.updates('sickly').slice(-2).map((u) => [u.state, u.healthy]),
    [['TASK_KILLING', undefined], ['TASK_KILLED', false]],
  )
})

t.test('memory over the mem resource: TASK_FAILED, REASON_CONTAINER_LIMITATION_MEMORY, from the agent', async (t) => {
  const s = await sim(t, { memoryCheckMs: 50 })
  const sub = await Subscriber.open(t, s.url)
  const stop = sub.autoAck()
  t.teardown(stop)
  const offer = (await sub.nextOffers(0))[0] as Offer
  await launch(sub, offer, [task(offer, 'hog', `exec ${process.execPath} -e "globalThis.b = Buffer.alloc(256 * 1024 * 1024, 1); setInterval(() => {}, 1000)"`, { mem: 96, ports: 0 })])
  const failed = await sub.nextUpdate('hog', 'TASK_FAILED')
  t.match(failed, { source: 'SOURCE_AGENT', reason: 'REASON_CONTAINER_LIMITATION_MEMORY', message: /^Memory limit exceeded: Requested: 96MB/ })
})

t.test('offers: DECLINE filters an agent for refuse_seconds, REVIVE lifts it, SUPPRESS stops offers', async (t) => {
  const s = await sim(t)
  const sub = await Subscriber.open(t, s.url)
  const offers = await sub.nextOffers(0)
  const declined = offers[0] as Offer
  await sub.call({ type: 'DECLINE', decline: { offer_ids: [declined.id], filters: { refuse_seconds: 60 } } })
  await sub.call({ type: 'DECLINE', decline: { offer_ids: offers.slice(1).map((o) => o.id), filters: { refuse_seconds: 0.3 } } })
  const mark = sub.events.length
  await until('the other agents offered again', async () => {
    const again = sub.events.slice(mark).flatMap((e) => e.offers?.offers ?? [])
    return new Set(again.map((o) => o.agent_id.value)).size >= 2 ? again : undefined
  })
  t.notOk(
    sub.events.slice(mark).some((e) => (e.offers?.offers ?? []).some((o) => o.agent_id.value === declined.agent_id.value)),
    'the agent declined for 60 s is not offered again',
  )
  t.not(sub.events.slice(mark).flatMap((e) => e.offers?.offers ?? [])[0]?.id.value, offers[1]?.id.value, 'a new offer has a new id')

  const beforeRevive = sub.events.length
  await sub.call({ type: 'REVIVE', revive: { roles: ['maitre'] } })
  await until('the filtered agent offered after REVIVE', () => sub.events.slice(beforeRevive).some((e) => (e.offers?.offers ?? []).some((o) => o.agent_id.value === declined.agent_id.value)))

  await sub.call({ type: 'SUPPRESS', suppress: { roles: ['maitre'] } })
  await until('suppressed', () => s.frameworks()[0]?.suppressed)
  // Every offer seen handed back with no filter: only the suppression keeps new ones away.
  const seen = sub.events.flatMap((e) => e.offers?.offers ?? [])
  await sub.call({ type: 'DECLINE', decline: { offer_ids: seen.map((o) => o.id), filters: { refuse_seconds: 0 } } })
  const suppressed = sub.events.length
  await until('five heartbeats', () => sub.events.slice(suppressed).filter((e) => e.type === 'HEARTBEAT').length >= 5)
  t.notOk(sub.events.slice(suppressed).some((e) => e.type === 'OFFERS'), 'no offers while suppressed')
  await sub.call({ type: 'REVIVE' })
  await sub.nextOffers(suppressed)
  t.ok(s.calls().some((c) => c.type === 'SUPPRESS') && s.calls().some((c) => c.type === 'REVIVE'), 'the calls are logged')
})

t.test('ACCEPT: a used offer → TASK_LOST REASON_INVALID_OFFERS; a misfit or duplicate → TASK_ERROR', async (t) => {
  const s = await sim(t)
  const sub = await Subscriber.open(t, s.url)
  const stop = sub.autoAck()
  t.teardown(stop)
  const offers = await sub.nextOffers(0)
  const offer = offers[0] as Offer
  await launch(sub, offer, [task(offer, 'ok', 'sleep 30', { ports: 0 })], [offer.id], 0.1)
  await sub.nextUpdate('ok', 'TASK_RUNNING')
  await launch(sub, offer, [task(offer, 'stale', 'sleep 30', { ports: 0 })])
  const lost = await sub.nextUpdate('stale', 'TASK_LOST')
  t.match(lost, { reason: 'REASON_INVALID_OFFERS', source: 'SOURCE_MASTER', message: /invalid offers/ })

  const two = offers.slice(1, 3)
  await launch(sub, two[0] as Offer, [task(two[0] as Offer, 'split', 'sleep 30', { ports: 0 })], two.map((o) => o.id))
  t.match(await sub.nextUpdate('split', 'TASK_LOST'), { reason: 'REASON_INVALID_OFFERS', message: /one single agent/ })

  const fresh = await until('a new offer from the first agent', () => sub.events.flatMap((e) => e.offers?.offers ?? []).find((o) => o.agent_id.value === offer.agent_id.value && o.id.value !== offer.id.value))
  t.match(fresh.resources.find((r) => r.name === 'cpus'), { scalar: { value: 3.9 } }, 'what the ACCEPT left unused comes back in a new offer, less what the task holds')
  const big = task(fresh, 'big', 'sleep 30', { mem: 1_000_000, ports: 0 })
  const outside = { ...task(fresh, 'outside', 'sleep 30', { ports: 0 }), resources: [scalar(fresh, 'cpus', 0.1), { name: 'ports', type: 'RANGES' as const, ranges: { range: [{ begin: 40000, end: 40000 }] } }] }
  const dup = task(fresh, 'ok', 'sleep 30', { ports: 0 })
  await launch(sub, fresh, [big, outside, dup])
  t.match(await sub.nextUpdate('big', 'TASK_ERROR'), { source: 'SOURCE_MASTER', message: /more resources than available/ })
  t.match(await sub.nextUpdate('outside', 'TASK_ERROR'), { message: /ports/ })
  t.match(await sub.nextUpdate('ok', 'TASK_ERROR'), { message: /duplicate ID/ })
  t.equal(s.tasks().filter((x) => x.id === 'ok' && x.state === 'TASK_RUNNING').length, 1, 'the running task with that id is untouched')
})

t.test('a disconnected framework gets 403, a wrong stream id 400; re-subscribing with its id keeps its tasks and resends', async (t) => {
  const s = await sim(t, { updateRetryMs: 60_000 })
  const sub = await Subscriber.open(t, s.url, { failover_timeout: 30 })
  const offer = (await sub.nextOffers(0))[0] as Offer
  await launch(sub, offer, [task(offer, 'keeps', 'sleep 60', { ports: 0 })])
  const starting = await sub.nextUpdate('keeps', 'TASK_STARTING')
  t.equal((await sub.call({ type: 'REVIVE' }, { 'mesos-stream-id': 'not-the-stream' })).status, 400, 'another stream id → 400')
  t.equal((await post(s.url, { type: 'REVIVE', framework_id: { value: sub.frameworkId } })).status, 400, 'no stream id → 400')

  s.dropStream()
  await until('the stream cut', () => sub.ended)
  const reply = await sub.call({ type: 'REVIVE' })
  t.equal(reply.status, 403)
  t.match(reply.text, 'Framework is not subscribed')
  t.equal(s.frameworks()[0]?.connected, false)

  const back = await Subscriber.open(t, s.url, { failover_timeout: 30 }, sub.frameworkId)
  t.equal(back.frameworkId, sub.frameworkId)
  const resent = await back.nextUpdate('keeps', 'TASK_STARTING')
  t.equal(resent.uuid, starting.uuid, 'the unacknowledged update is resent on the new stream')
  t.equal(s.tasks().find((x) => x.id === 'keeps')?.state, 'TASK_RUNNING', 'the task kept running')
  t.ok(alive(s.tasks().find((x) => x.id === 'keeps')?.pid as number))
})

t.test('failover_timeout runs out: the framework is torn down and its tasks killed; its id is refused after', async (t) => {
  const s = await sim(t)
  const sub = await Subscriber.open(t, s.url, { failover_timeout: 0.3 })
  const stop = sub.autoAck()
  t.teardown(stop)
  const offer = (await sub.nextOffers(0))[0] as Offer
  await launch(sub, offer, [task(offer, 'doomed', 'sleep 60', { ports: 0 })])
  await sub.nextUpdate('doomed', 'TASK_RUNNING')
  const pid = s.tasks().find((x) => x.id === 'doomed')?.pid as number
  s.dropStream()
  await until('the framework gone', () => s.frameworks().length === 0)
  await until('its process gone', () => !alive(pid))
  t.equal(s.tasks().find((x) => x.id === 'doomed')?.state, 'TASK_KILLED')
  const late = await Subscriber.open(t, s.url, { failover_timeout: 0.3 }, sub.frameworkId)
  t.match(late.events[0], { type: 'ERROR', error: { message: 'Framework has been removed' } })
  await until('that stream closed', () => late.ended)

  const other = await Subscriber.open(t, s.url)
  await other.nextOffers(0)
  t.equal((await other.call({ type: 'TEARDOWN' })).status, 202)
  await until('torn down', () => other.ended && s.frameworks().length === 0)
})

t.test('RECONCILE: latest states from the master without uuid; an unknown task is LOST; an empty list means all', async (t) => {
  const s = await sim(t)
  const sub = await Subscriber.open(t, s.url)
  const stop = sub.autoAck()
  t.teardown(stop)
  const offer = (await sub.nextOffers(0))[0] as Offer
  await launch(sub, offer, [task(offer, 'r1', 'sleep 60', { ports: 0 }), task(offer, 'r2', 'sleep 60', { ports: 0 })])
  await sub.nextUpdate('r1', 'TASK_RUNNING')
  await sub.nextUpdate('r2', 'TASK_RUNNING')
  await until('both acknowledged', () => s.tasks().every((x) => x.state === 'TASK_RUNNING') && true)
  const mark = sub.events.length
  await sub.call({ type: 'RECONCILE', reconcile: { tasks: [{ task_id: { value: 'r1' }, agent_id: offer.agent_id }, { task_id: { value: 'ghost' } }] } })
  const r1 = await sub.nextUpdate('r1', 'TASK_RUNNING', mark)
  t.match(r1, { source: 'SOURCE_MASTER', reason: 'REASON_RECONCILIATION', agent_id: offer.agent_id })
  t.equal(r1.uuid, undefined, 'no uuid: never acknowledged')
  t.match(await sub.nextUpdate('ghost', 'TASK_LOST', mark), { reason: 'REASON_RECONCILIATION', source: 'SOURCE_MASTER' })
  const all = sub.events.length
  await sub.call({ type: 'RECONCILE', reconcile: { tasks: [] } })
  await sub.nextUpdate('r1', 'TASK_RUNNING', all)
  await sub.nextUpdate('r2', 'TASK_RUNNING', all)
  t.ok(s.calls().some((c) => c.type === 'RECONCILE') && s.calls().some((c) => c.type === 'ACKNOWLEDGE'))
})

t.test('loseAgent: FAILURE, TASK_LOST REASON_AGENT_REMOVED and RESCIND; the agent offers nothing after', async (t) => {
  const s = await sim(t)
  const sub = await Subscriber.open(t, s.url)
  const stop = sub.autoAck()
  t.teardown(stop)
  const offers = await sub.nextOffers(0)
  const offer = offers[0] as Offer
  await launch(sub, offer, [task(offer, 'on-lost-agent', 'sleep 60', { ports: 0 })])
  await sub.nextUpdate('on-lost-agent', 'TASK_RUNNING')
  const pid = s.tasks()[0]?.pid as number
  const mark = sub.events.length
  const lostAgent = offers[1]?.agent_id.value as string
  s.loseAgent(offer.agent_id.value)
  s.loseAgent(lostAgent)
  await sub.next((e) => e.type === 'FAILURE' && e.failure?.agent_id?.value === offer.agent_id.value, mark)
  t.match(await sub.nextUpdate('on-lost-agent', 'TASK_LOST', mark), { reason: 'REASON_AGENT_REMOVED', source: 'SOURCE_MASTER' })
  await sub.next((e) => e.type === 'RESCIND' && e.rescind?.offer_id.value === offers[1]?.id.value, mark)
  await until('the process killed', () => !alive(pid))
  const later = sub.events.length
  // The third agent's offer handed back unfiltered: it alone is offered again.
  await sub.call({ type: 'DECLINE', decline: { offer_ids: [offers[2]?.id], filters: { refuse_seconds: 0 } } })
  t.equal((await sub.nextOffers(later))[0]?.agent_id.value, offers[2]?.agent_id.value)
  await until('a few offer rounds', () => sub.events.slice(later).filter((e) => e.type === 'HEARTBEAT').length >= 3)
  const agentsOffered = new Set(sub.events.slice(later).flatMap((e) => (e.offers?.offers ?? []).map((o) => o.agent_id.value)))
  t.notOk(agentsOffered.has(lostAgent) || agentsOffered.has(offer.agent_id.value), 'lost agents are never offered')
})

t.test('rescindOffers, restart and sendError: what a framework sees of master trouble', async (t) => {
  const s = await sim(t)
  const sub = await Subscriber.open(t, s.url)
  const offers = await sub.nextOffers(0)
  const mark = sub.events.length
  s.rescindOffers()
  await until('every offer rescinded', () => offers.every((o) => sub.events.slice(mark).some((e) => e.rescind?.offer_id.value === o.id.value)))
  const stop = sub.autoAck()
  t.teardown(stop)
  const fresh = (await sub.nextOffers(mark))[0] as Offer
  await launch(sub, fresh, [task(fresh, 'survivor', 'sleep 60', { ports: 0 })])
  await sub.nextUpdate('survivor', 'TASK_RUNNING')
  await s.restart()
  await until('the stream cut', () => sub.ended)
  const back = await Subscriber.open(t, s.url, {}, sub.frameworkId)
  t.equal(back.frameworkId, sub.frameworkId, 'the framework subscribes again with its id')
  const newOffer = (await back.nextOffers(0))[0] as Offer
  t.not(newOffer.id.value.split('-O')[0], fresh.id.value.split('-O')[0], 'offers carry the new master id')
  t.equal(s.tasks().find((x) => x.id === 'survivor')?.state, 'TASK_RUNNING', 'tasks keep running through a master failover')
  // Not ASCII: RecordIO lengths count UTF-8 bytes, so a wrong count would garble the stream.
  s.sendError('Framework failed over — ünïcode')
  await back.next((e) => e.type === 'ERROR' && e.error?.message === 'Framework failed over — ünïcode', 0)
  await until('the stream closed after ERROR', () => back.ended)
})

t.test('a non-leading master redirects with a protocol-relative Location; without a leader, 503', async (t) => {
  const s = await sim(t, { leader: 'http://10.1.2.3:5050' })
  const reply = await post(s.url, { type: 'SUBSCRIBE', subscribe: { framework_info: { user: 'u', name: 'n' } } })
  t.equal(reply.status, 307)
  t.equal(reply.headers['location'], '//10.1.2.3:5050/api/v1/scheduler')
  const state = await request(`${s.url}/master/state`)
  t.equal(state.statusCode, 307)
  t.equal(state.headers['location'], '//10.1.2.3:5050/master/state')
  await state.body.dump()
  const redirect = await request(`${s.url}/master/redirect`)
  t.equal(redirect.statusCode, 307)
  t.equal(redirect.headers['location'], '//10.1.2.3:5050/master')
  await redirect.body.dump()
  s.setLeader('none')
  t.equal((await post(s.url, { type: 'SUBSCRIBE', subscribe: { framework_info: { user: 'u', name: 'n' } } })).status, 503)
  s.setLeader(undefined)
  const sub = await Subscriber.open(t, s.url)
  t.equal(sub.status, 200, 'leading again')
})

t.test('with credentials, calls need HTTP basic auth', async (t) => {
  const s = await sim(t, { credentials: { principal: 'maitre', secret: 's3cret' } })
  const subscribe = { type: 'SUBSCRIBE', subscribe: { framework_info: { user: 'u', name: 'n' } } }
  t.equal((await post(s.url, subscribe)).status, 401)
  t.equal((await post(s.url, subscribe, { authorization: `Basic ${Buffer.from('maitre:wrong').toString('base64')}` })).status, 401)
  const res = await request(`${s.url}/api/v1/scheduler`, { method: 'POST', headers: { ...JSON_HEADERS, authorization: `Basic ${Buffer.from('maitre:s3cret').toString('base64')}` }, body: JSON.stringify(subscribe) })
  t.equal(res.statusCode, 200)
  res.body.destroy()
})

t.test('node test/fixtures/mesos-sim/main.ts prints its URL and agents, serves, and stops on SIGTERM', async (t) => {
  const child = spawn(process.execPath, [join(REPO, 'test/fixtures/mesos-sim/main.ts'), '--port', '0', '--agents', '2', '--work-dir', ownDir(t, 'maitre-mesos-sim-')], { stdio: ['ignore', 'pipe', 'inherit'] })
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL')
  })
  const line = await new Promise<Record<string, any>>((resolve) => createInterface({ input: child.stdout as NodeJS.ReadableStream }).once('line', (l) => resolve(JSON.parse(l) as Record<string, any>)))
  t.equal(line['msg'], 'mesos master simulator listening')
  t.match(line['url'], /^http:\/\/127\.0\.0\.1:\d+$/)
  t.equal(line['agents'].length, 2)
  const state = (await (await request(`${line['url'] as string}/master/state`)).body.json()) as { slaves: unknown[] }
  t.equal(state.slaves.length, 2)
  child.kill('SIGTERM')
  t.equal(await exited, 0)
  const bad = spawn(process.execPath, [join(REPO, 'test/fixtures/mesos-sim/main.ts'), '--agents', 'many'], { stdio: 'ignore' })
  t.equal(await new Promise((resolve) => bad.once('exit', resolve)), 64, 'bad arguments: exit 64')
})
