import t from 'tap'
import { ManualClock } from '../fixtures/manual-clock.ts'
import { KeepAliveLedger } from '../../src/scaler/keep-alive-ledger.ts'
import { PERCENTILE_ADAPTIVE, type AdaptiveOptions } from '../../src/scaler/keep-alive.ts'
import { KeepAliveRunner, payloadOfRecord, type PeerArrival, type PrewarmPayload } from '../../src/scaler/keep-alive-runner.ts'
import type { VersionLoad } from '../../src/cluster/coordination.ts'
import type { ActivationRequest } from '../../src/scaler/activator.ts'
import type { ServiceRecord, TokenReference } from '../../src/versions/registry.ts'
import type { Resolution } from '../../src/versions/resolve.ts'
import { silentLogger } from '../../src/log.ts'

const MIN = 60_000
const PARAMS = { 'keep-alive': 'adaptive', 'idle-timeout-mins': 10, 'min-instances': 1 }

/** Version v, as a request through the given tokens resolved it. */
function askedOf(sources: readonly TokenReference[], core: Readonly<Record<string, unknown>>, serviceId = 'v'): Resolution {
  return { serviceId, core, effective: PARAMS, source: sources.at(-1), sources, tokenMetadata: {}, fallback: undefined, authenticationDisabled: false }
}

/** A runner over fakes: a backend that runs what the activator starts, a registry of what runs, a tracker that is idle. */
function setUp(options: { leader?: boolean; failStarts?: boolean; adaptive?: AdaptiveOptions } = {}) {
  const clock = new ManualClock(0)
  const ledger = new KeepAliveLedger<PrewarmPayload>(100, options.adaptive)
  const requested = new Map<string, number>()
  const collecting = new Set<string>()
  const records = new Map<string, ServiceRecord>()
  const starts: string[] = []
  const state = { current: true, suspended: false, overridden: false, lastActiveAt: 0, healthy: 1, peers: { inFlight: 0, queued: 0, lastRequestAt: 0 } as VersionLoad }
  const outcomes: string[] = []
  /** What this router told its peers (cluster mode). */
  const told: { serviceId: string; arrival: PeerArrival }[] = []
  const runner = new KeepAliveRunner(
    {
      ledger,
      backend: { requested: (id) => requested.get(id) },
      tracker: { load: () => ({ lastActiveAt: state.lastActiveAt, inFlight: 0, queued: 0, healthy: state.healthy, slotsAvailable: state.healthy }), idleSince: () => state.lastActiveAt },
      registry: { all: () => [...records.values()], get: (id) => records.get(id) },
      activator: {
        ensure: (activation) => {
          starts.push(activation.serviceId)
          if (options.failStarts === true) return Promise.reject(new Error('the start failed'))
          requested.set(activation.serviceId, 1)
          records.set(activation.serviceId, { id: activation.serviceId, core: {}, sources: [], createdAt: clock.now() })
          return Promise.resolve()
        },
        collecting: (id) => collecting.has(id),
      },
      collectIfIdle: async (id) => {
        requested.delete(id)
        records.delete(id)
        runner.collected(id, 'idle', state.lastActiveAt)
        return { id, reason: 'idle' }
      },
      parametersOf: () => PARAMS,
      isCurrent: () => state.current,
      isSuspended: () => state.suspended,
      isOverridden: () => state.overridden,
      clock,
      log: silentLogger,
      onHit: () => outcomes.push('hit'),
      onMiss: () => outcomes.push('miss'),
      fleet: { isLeader: () => options.leader ?? true, peerLoad: () => state.peers },
      tellPeers: (serviceId, arrival) => told.push({ serviceId, arrival }),
    },
    { defaultPolicy: 'fixed', tickMs: 1000 },
  )
  const activation: ActivationRequest = { serviceId: 'v', effective: () => PARAMS, launchSpec: () => { throw new Error('not used') }, remember: async () => undefined }
  /** A call to v, ending at once, with the version then let go by the runner when due. */
  const call = async (): Promise<void> => {
    runner.arrived(askedOf([{ token: 't', etag: 'e1' }], { cmd: 'x' }), PARAMS, activation)
    if ((requested.get('v') ?? 0) === 0) {
      requested.set('v', 1)
      records.set('v', { id: 'v', core: {}, sources: [], createdAt: clock.now() })
    }
    state.lastActiveAt = clock.now()
  }
  /** Calls every 20 minutes until the runner has learned the period and let the version go after the last. */
  const learn = async (): Promise<void> => {
    for (let i = 0; i < 5; i++) {
      await call()
      // Not learned yet: its fixed 10 minutes let it go.
      for (let m = 0; m < 20; m++) {
        clock.advance(MIN)
        await runner.tick()
      }
    }
    await call()
    clock.advance(15_000)
    await runner.tick()
    // (Learned after three idle times: the last calls were pre-warmed for; what follows counts afresh.)
    starts.length = 0
    outcomes.length = 0
  }
  /** Version v runs (a request elsewhere started it). */
  const runs = (): void => {
    requested.set('v', 1)
    records.set('v', { id: 'v', core: {}, sources: [], createdAt: clock.now() })
  }
  return { clock, ledger, requested, collecting, starts, state, runner, activation, call, learn, outcomes, told, runs }
}

t.test('a learned version is let go after its call and started once, at its pre-warm time, through the activator', async (t) => {
  const { clock, requested, starts, runner, learn, ledger } = setUp()
  await learn()
  t.equal(requested.get('v'), undefined, 'let go 10 s after its call')
  t.same(starts, [], 'nothing started yet')
  const plan = ledger.plan('v', 'adaptive', 10 * MIN)
  t.equal(plan.prewarmMs, 19 * MIN, 'pre-warm at 20 min less 5 %')
  // Rounds every second (tickMs 1000): the last round before its pre-warm time starts it, so
  // that it never starts later than planned.
  clock.advance(19 * MIN - 15_000 - 1001)
  await runner.tick()
  t.same(starts, [], 'not more than a round before its pre-warm time')
  clock.advance(1)
  await runner.tick()
  t.same(starts, ['v'], 'started by the round a second before its pre-warm time, the last before it')
  await runner.tick()
  clock.advance(1000)
  await runner.tick()
  t.same(starts, ['v'], 'and only once')
})

t.test('a pre-warm waits out a collection under way, is never made twice for one idle period, nor after a call came', async (t) => {
  const { clock, collecting, starts, runner, learn, requested, ledger } = setUp()
  await learn()
  collecting.add('v')
  clock.advance(19 * MIN)
  await runner.tick()
  t.same(starts, [], 'not while the version is being collected (the activator would wait for it, and start nothing)')
  collecting.delete('v')
  await runner.tick()
  t.same(starts, ['v'], 'the next round, once it is over')
  // Let go unused at the end of its keep-alive (a miss): no second pre-warm for the same idle period.
  clock.advance(5 * MIN)
  await runner.tick()
  t.equal(requested.get('v'), undefined, 'let go at the end of its keep-alive')
  t.equal(ledger.view('v', ledger.plan('v', 'adaptive', 10 * MIN), false, undefined, clock.now()).misses, 1, 'a miss')
  await runner.tick()
  t.same(starts, ['v'], 'not started again until a call comes')
})

t.test('a pre-warm held up by a collection until the last round of its window is still made in that round', async (t) => {
  const { clock, collecting, starts, runner, learn, ledger } = setUp()
  await learn()
  const plan = ledger.plan('v', 'adaptive', 10 * MIN)
  collecting.add('v')
  // learn() left the clock 15 s after the last call; the window ends at its pre-warm time plus keep-alive.
  clock.advance(plan.prewarmMs + plan.keepAliveMs - 15_000 - 500)
  collecting.delete('v')
  await runner.tick()
  t.same(starts, ['v'], 'half a round before its window ends: started (the next round would be past it)')
})

t.test('a call that comes after the version was let go starts it itself: no pre-warm then', async (t) => {
  const { clock, starts, runner, learn, requested, ledger, activation } = setUp()
  await learn()
  // A call arrives early (the version is not running): the request path starts it.
  clock.advance(5 * MIN)
  runner.arrived(askedOf([{ token: 't', etag: 'e1' }], {}), PARAMS, activation)
  t.equal(requested.get('v'), undefined)
  clock.advance(14 * MIN)
  await runner.tick()
  t.same(starts, [], 'nothing pre-warmed on top of the request’s own start')
  t.ok(ledger.ids().includes('v'))
})

t.test('no pre-warm for a suspended version (its history stays), nor for one whose token moved on (its history goes), nor on a follower', async (t) => {
  const suspended = setUp()
  await suspended.learn()
  suspended.state.suspended = true
  suspended.clock.advance(19 * MIN)
  await suspended.runner.tick()
  t.same(suspended.starts, [], 'suspended: not started')
  t.same(suspended.ledger.ids(), ['v'], 'its history kept')
  suspended.state.suspended = false
  await suspended.runner.tick()
  t.same(suspended.starts, ['v'], 'resumed: started within its window')

  const moved = setUp()
  await moved.learn()
  moved.state.current = false
  moved.clock.advance(19 * MIN)
  await moved.runner.tick()
  t.same(moved.starts, [], 'its token moved on: not started')
  t.same(moved.ledger.ids(), [], 'and forgotten')

  const follower = setUp({ leader: false })
  await follower.call()
  follower.clock.advance(60 * MIN)
  await follower.runner.tick()
  t.equal(follower.requested.get('v'), 1, 'a follower lets nothing go')
})

t.test('a version suspended or overridden by hand while it runs keeps its idle timeout: not let go seconds after its call (which would end what the operator set), nor pre-warmed once collected while suspended', async (t) => {
  for (const hand of ['suspended', 'overridden'] as const) {
    const { clock, requested, starts, state, runner, learn, call, ledger } = setUp()
    await learn()
    clock.advance(19 * MIN - 15_000)
    await runner.tick()
    t.same(starts, ['v'], 'pre-warmed for its next call')
    starts.length = 0
    clock.advance(MIN)
    await call()
    state[hand] = true
    clock.advance(15_000)
    await runner.tick()
    t.equal(requested.get('v'), 1, `${hand}: not let go 10 s after its call`)
    t.equal(runner.keepUntil({ id: 'v', core: {}, sources: [], createdAt: 0 }, PARAMS, state.lastActiveAt), undefined, `${hand}: the GC goes by its idle timeout`)
    // The GC's own round collects it at its idle timeout (idle-timeout-mins 10).
    runner.collected('v', 'idle', state.lastActiveAt)
    requested.delete('v')
    clock.advance(19 * MIN)
    await runner.tick()
    if (hand === 'suspended') {
      t.same(starts, [], 'collected while suspended: never started again but by a request')
      t.same(ledger.ids(), [], 'its history forgotten')
    } else {
      t.same(starts, ['v'], 'collected with its overrides (they end with it, as for any version): pre-warmed as usual')
    }
  }
})

t.test('fixed versions are neither learned from nor acted on', async (t) => {
  const { runner, ledger, activation } = setUp()
  runner.arrived(askedOf([], {}), { ...PARAMS, 'keep-alive': 'fixed' }, activation)
  t.same(ledger.ids(), [], 'no history kept for a fixed version')
})

t.test('a pre-warm counts as a hit only if the call finds an instance healthy; a late or failed one is a miss', async (t) => {
  const late = setUp()
  await late.learn()
  late.clock.advance(19 * MIN)
  await late.runner.tick()
  t.same(late.starts, ['v'], 'pre-warmed')
  late.state.healthy = 0
  late.runner.arrived(askedOf([{ token: 't', etag: 'e1' }], {}), PARAMS, late.activation)
  t.same(late.outcomes, ['miss'], 'the call came while the instance was still starting: it waited, a miss')

  const failed = setUp({ failStarts: true })
  await failed.learn()
  failed.clock.advance(19 * MIN)
  await failed.runner.tick()
  await new Promise((resolve) => setImmediate(resolve))
  t.same(failed.outcomes, ['miss'], 'the start failed: a miss at once')
  failed.runner.arrived(askedOf([{ token: 't', etag: 'e1' }], {}), PARAMS, failed.activation)
  t.same(failed.outcomes, ['miss'], 'not counted again when the call comes')

  const warm = setUp()
  await warm.learn()
  warm.clock.advance(19 * MIN)
  await warm.runner.tick()
  warm.runner.arrived(askedOf([{ token: 't', etag: 'e1' }], {}), PARAMS, warm.activation)
  t.same(warm.outcomes, ['hit'], 'found healthy: a hit')
})

t.test('/apps/{id} shows what the GC will do with an adaptive version an operator suspended or overrode: its idle timeout, not the learned plan', async (t) => {
  for (const hand of ['overridden', 'suspended'] as const) {
    const { clock, state, runner, learn, call } = setUp()
    await learn()
    clock.advance(19 * MIN - 15_000)
    await runner.tick()
    clock.advance(MIN)
    await call()
    state[hand] = true
    const record = { id: 'v', core: {}, sources: [], createdAt: 0 }
    t.equal(runner.keepUntil(record, PARAMS, state.lastActiveAt), undefined, `${hand}: the GC goes by its idle timeout`)
    const view = runner.view(record, 'v', PARAMS)
    t.equal(view.basis, 'operator', `${hand}: and the view says why`)
    t.equal(view.next?.at, state.lastActiveAt + 10 * MIN, `${hand}: the next action shown is when the GC will really let it go`)
  }
})

t.test('in a cluster, idle times are the fleet’s: requests the other routers served end an idle period here too', async (t) => {
  // (The paper's percentile rule reads the histogram back plainly: its plan is the percentiles.)
  const { clock, ledger, requested, state, runner, activation, told } = setUp({ adaptive: PERCENTILE_ADAPTIVE })
  const asked = askedOf([{ token: 't', etag: 'e1' }], {})
  requested.set('v', 1)
  // This router last served v at 0; the others serve it every 20 minutes, 2 minutes before this router's next call.
  for (let i = 1; i <= 3; i++) {
    clock.advance(20 * MIN)
    state.peers = { inFlight: 0, queued: 0, lastRequestAt: clock.now() - 2 * MIN }
    runner.arrived(asked, PARAMS, activation)
  }
  const plan = ledger.plan('v', 'adaptive', 10 * MIN)
  t.equal(plan.basis, 'learned')
  t.equal(plan.prewarmMs, Math.floor(2 * MIN * 0.95), 'learned 2-minute idle times (the fleet’s), not 20 (this router’s own)')
  t.same(told.map((n) => n.arrival.idleForMs), [2 * MIN, 2 * MIN, 2 * MIN], 'and told the peers so')

  // Another router carries a request: the fleet is not idle, whatever this router's own tracker says.
  clock.advance(20 * MIN)
  state.peers = { inFlight: 1, queued: 0, lastRequestAt: clock.now() - 10 * MIN }
  runner.arrived(asked, PARAMS, activation)
  t.equal(told.at(-1)?.arrival.idleForMs, undefined, 'busy elsewhere: no idle time told')
  t.equal(ledger.view('v', ledger.plan('v', 'adaptive', 10 * MIN), true, undefined, clock.now()).idleTimes, 4, 'a zero idle time, not 20 minutes')
  t.equal(ledger.plan('v', 'adaptive', 10 * MIN).prewarmMs, 0, 'so the 5th percentile is now under a minute')
})

t.test('in a cluster, a router tells its peers of a request to an adaptive version: every cold start, else at most once every 30 s; a fixed version never, nor a request it was told of', async (t) => {
  const { clock, requested, runner, activation, told } = setUp()
  const asked = askedOf([{ token: 't', etag: 'e1' }], {})
  runner.arrived(asked, PARAMS, activation)
  t.same(told.at(-1)?.arrival, { agoMs: 0, running: false, warm: false, idleForMs: undefined }, 'a cold start is told, as seen here')
  clock.advance(1000)
  runner.arrived(asked, PARAMS, activation)
  t.equal(told.length, 2, 'another cold start a second later (still not running) is told too')
  requested.set('v', 1)
  clock.advance(1000)
  runner.arrived(asked, PARAMS, activation)
  clock.advance(28_999)
  runner.arrived(asked, PARAMS, activation)
  t.equal(told.length, 2, 'running: not told again within 30 s')
  clock.advance(1)
  runner.arrived(asked, PARAMS, activation)
  t.equal(told.length, 3, 'told again 30 s after the last')
  t.same(told.at(-1)?.arrival, { agoMs: 0, running: true, warm: true, idleForMs: 31_000 }, 'running, warm, and idle since the end of the last activity it knows of')
  runner.arrived(askedOf([], {}, 'f'), { ...PARAMS, 'keep-alive': 'fixed' }, { ...activation, serviceId: 'f' })
  clock.advance(60_000)
  runner.heard('v', { params: PARAMS, payload: undefined }, { agoMs: 0, running: true, warm: true, idleForMs: 60_000 })
  t.equal(told.length, 3, 'neither a fixed version nor a request another router told of is told')
})

t.test('requests told by other routers teach this one: the idle times, the pre-warm’s hit, and a cold start counted from the collection even if the version runs here by then', async (t) => {
  // (The paper's percentile rule reads the histogram back plainly: its plan is the percentiles.)
  const { clock, ledger, requested, starts, state, runner, activation, outcomes, runs } = setUp({ adaptive: PERCENTILE_ADAPTIVE })
  // This router's own record of the version (a note only names it).
  const known = { params: PARAMS, payload: { activation, sources: [{ token: 't', etag: 'e1' }], core: { cmd: 'x' } } }
  // Every 20 minutes a request reaches another router, the version idle since the one before.
  runner.heard('v', known, { agoMs: 100, running: false, warm: false, idleForMs: undefined })
  runs()
  for (let i = 0; i < 3; i++) {
    clock.advance(20 * MIN)
    runner.heard('v', known, { agoMs: 100, running: true, warm: true, idleForMs: 20 * MIN })
  }
  t.equal(ledger.plan('v', 'adaptive', 10 * MIN).prewarmMs, 19 * MIN, 'learned from what the other router saw, though no request reached this one')
  t.same(ledger.payload('v')?.core, { cmd: 'x' }, 'and what it takes to start the version again, from its own record')
  // The leader lets the version go after 10 s, and pre-warms it at 19 minutes.
  state.lastActiveAt = clock.now()
  clock.advance(15_000)
  await runner.tick()
  t.equal(requested.get('v'), undefined, 'let go')
  clock.advance(19 * MIN - 15_000)
  await runner.tick()
  t.same(starts, ['v'], 'pre-warmed on the other router’s history')
  clock.advance(MIN)
  runner.heard('v', known, { agoMs: 50, running: true, warm: true, idleForMs: 20 * MIN })
  t.same(outcomes, ['hit'], 'the next request, on the other router, found it warm: a hit')

  // Let go again; a request reaches the other router 5 minutes later, a cold start there. By the
  // time its note arrives the version runs here (the other router started it).
  state.lastActiveAt = clock.now()
  clock.advance(15_000)
  await runner.tick()
  t.equal(requested.get('v'), undefined)
  const before = ledger.view('v', ledger.plan('v', 'adaptive', 10 * MIN), false, undefined, clock.now()).idleTimes
  clock.advance(5 * MIN)
  runs()
  runner.heard('v', known, { agoMs: 0, running: false, warm: false, idleForMs: undefined })
  t.equal(ledger.view('v', ledger.plan('v', 'adaptive', 10 * MIN), true, undefined, clock.now()).idleTimes, before + 1, 'the cold start counts')
  t.equal(ledger.plan('v', 'adaptive', 10 * MIN).prewarmMs, Math.floor(5 * MIN * 0.95), 'as a 5-minute idle time, from when the version was let go')
})

t.test('a request told late, that arrived at the other router before the version was let go, does not end its idle period here', async (t) => {
  const { clock, starts, state, runner, activation, learn, ledger } = setUp()
  await learn()
  // learn() let the version go 15 s after its last call; the other router's note of a request
  // from just before that call comes now, 2 s late.
  clock.advance(1000)
  runner.heard('v', { params: PARAMS, payload: undefined }, { agoMs: 17_000, running: true, warm: true, idleForMs: undefined })
  clock.advance(19 * MIN - 16_000)
  await runner.tick()
  t.same(starts, ['v'], 'still pre-warmed: that request came before the version was let go')
  t.equal(ledger.payload('v')?.activation, activation, 'a note without a record here leaves what starts the version as it was')
  t.equal(state.current, true)
})

t.test('a record that names no run-as-user (from before every version named one) is started only by a request: no pre-warm payload from it', async (t) => {
  const starts = { parametersOf: () => PARAMS, launchSpecOf: () => { throw new Error('not used') }, remember: async () => undefined }
  const record = (core: Record<string, unknown>): ServiceRecord => ({ id: 'v', core, sources: [{ token: 't', etag: 'e2' }], createdAt: 0 })
  t.equal(payloadOfRecord(record({ cmd: 'x' }), starts), undefined)
  t.equal(payloadOfRecord(record({ cmd: 'x', 'run-as-user': '*' }), starts), undefined)
  const payload = payloadOfRecord(record({ cmd: 'x', 'run-as-user': 'alice' }), starts)
  t.same(payload?.sources, [{ token: 't', etag: 'e2' }], 'the tokens as recorded')
  t.equal(payload?.activation.serviceId, 'v')
  t.same(payload?.activation.effective(), PARAMS, 'the parameters as this router has them')
})

t.test('one idle period is one idle time, however many routers saw the request that ended it: a long idle time, and a cold start', async (t) => {
  const { clock, ledger, requested, runner, activation, runs } = setUp()
  const asked = askedOf([{ token: 't', etag: 'e1' }], {})
  const idleTimes = (): number => ledger.view('v', ledger.plan('v', 'adaptive', 10 * MIN), true, undefined, clock.now()).idleTimes
  runs()
  clock.advance(20 * MIN)
  runner.arrived(asked, PARAMS, activation)
  t.equal(idleTimes(), 1, 'a request here after 20 idle minutes')
  clock.advance(300)
  // Another router's request 100 ms later, before it heard of this one's: it too saw 20 idle minutes.
  runner.heard('v', { params: PARAMS, payload: undefined }, { agoMs: 200, running: true, warm: true, idleForMs: 20 * MIN + 100 })
  t.equal(idleTimes(), 1, 'its note adds no second 20-minute idle time')

  // Let go; 5 minutes later a request here starts it again, and so does one at another router.
  runner.collected('v', 'idle', clock.now())
  requested.delete('v')
  clock.advance(5 * MIN)
  runner.arrived(asked, PARAMS, activation)
  t.equal(idleTimes(), 2, 'the cold start counts once')
  clock.advance(200)
  runner.heard('v', { params: PARAMS, payload: undefined }, { agoMs: 100, running: false, warm: false, idleForMs: undefined })
  t.equal(idleTimes(), 2, 'not twice')
  t.equal(ledger.plan('v', 'adaptive', 10 * MIN).basis, 'too-few-idle-times', 'two idle periods are not yet three idle times')
})

t.test('a router that did not pre-warm a version (the leader did) counts the idle time from when the version was let go, not from when it came back', async (t) => {
  // (The paper's percentile rule reads the histogram back plainly: its plan is the percentiles.)
  const { clock, ledger, state, runner, activation, runs } = setUp({ leader: false, adaptive: PERCENTILE_ADAPTIVE })
  const asked = askedOf([{ token: 't', etag: 'e1' }], {})
  runs()
  runner.arrived(asked, PARAMS, activation)
  // The leader let the version go (and told this router), then pre-warmed it 19 minutes later:
  // this router's tracker sees a new instance, as if active then.
  runner.collected('v', 'idle', clock.now())
  clock.advance(19 * MIN)
  state.lastActiveAt = clock.now()
  clock.advance(MIN)
  runner.arrived(asked, PARAMS, activation)
  t.equal(ledger.view('v', ledger.plan('v', 'adaptive', 10 * MIN), true, undefined, clock.now()).idleTimes, 2)
  // Two more like it make the histogram trusted (with the first call's zero): its 95th percentile is 20 minutes, not 1.
  for (let i = 0; i < 2; i++) {
    runner.collected('v', 'idle', clock.now())
    clock.advance(19 * MIN)
    state.lastActiveAt = clock.now()
    clock.advance(MIN)
    runner.arrived(asked, PARAMS, activation)
  }
  t.equal(ledger.plan('v', 'adaptive', 10 * MIN).keepAliveMs, 10 * MIN, '20-minute idle times (kept to the fixed 10 minutes, not let go after 2.1): the version was idle since it was let go')
})
