import t from 'tap'
import { ManualClock } from '../fixtures/manual-clock.ts'
import { KeepAliveLedger } from '../../src/scaler/keep-alive-ledger.ts'
import { KeepAliveRunner, type PrewarmPayload } from '../../src/scaler/keep-alive-runner.ts'
import type { ActivationRequest } from '../../src/scaler/activator.ts'
import type { ServiceRecord } from '../../src/versions/registry.ts'
import { silentLogger } from '../../src/log.ts'

const MIN = 60_000
const PARAMS = { 'keep-alive': 'adaptive', 'idle-timeout-mins': 10, 'min-instances': 1 }

/** A runner over fakes: a backend that runs what the activator starts, a registry of what runs, a tracker that is idle. */
function setUp(options: { leader?: boolean; failStarts?: boolean } = {}) {
  const clock = new ManualClock(0)
  const ledger = new KeepAliveLedger<PrewarmPayload>(100)
  const requested = new Map<string, number>()
  const collecting = new Set<string>()
  const records = new Map<string, ServiceRecord>()
  const starts: string[] = []
  const state = { current: true, suspended: false, overridden: false, lastActiveAt: 0, healthy: 1 }
  const outcomes: string[] = []
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
      fleet: { isLeader: () => options.leader ?? true, peerLoad: () => ({ inFlight: 0, queued: 0, lastRequestAt: 0 }) },
    },
    { defaultPolicy: 'fixed', tickMs: 1000 },
  )
  const activation: ActivationRequest = { serviceId: 'v', effective: () => PARAMS, launchSpec: () => { throw new Error('not used') }, remember: async () => undefined }
  /** A call to v, ending at once, with the version then let go by the runner when due. */
  const call = async (): Promise<void> => {
    runner.arrived('v', PARAMS, activation, [{ token: 't', etag: 'e1' }], { cmd: 'x' })
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
  return { clock, ledger, requested, collecting, starts, state, runner, activation, call, learn, outcomes }
}

t.test('a learned version is let go after its call and started once, at its pre-warm time, through the activator', async (t) => {
  const { clock, requested, starts, runner, learn, ledger } = setUp()
  await learn()
  t.equal(requested.get('v'), undefined, 'let go 10 s after its call')
  t.same(starts, [], 'nothing started yet')
  const plan = ledger.plan('v', 'adaptive', 10 * MIN)
  t.equal(plan.prewarmMs, 19 * MIN, 'pre-warm at 20 min less 5 %')
  clock.advance(19 * MIN - 15_000 - 1000)
  await runner.tick()
  t.same(starts, [], 'not before its pre-warm time')
  clock.advance(1000)
  await runner.tick()
  t.same(starts, ['v'], 'started at its pre-warm time')
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

t.test('a call that comes after the version was let go starts it itself: no pre-warm then', async (t) => {
  const { clock, starts, runner, learn, requested, ledger, activation } = setUp()
  await learn()
  // A call arrives early (the version is not running): the request path starts it.
  clock.advance(5 * MIN)
  runner.arrived('v', PARAMS, activation, [{ token: 't', etag: 'e1' }], {})
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
  runner.arrived('v', { ...PARAMS, 'keep-alive': 'fixed' }, activation, [], {})
  t.same(ledger.ids(), [], 'no history kept for a fixed version')
})

t.test('a pre-warm counts as a hit only if the call finds an instance healthy; a late or failed one is a miss', async (t) => {
  const late = setUp()
  await late.learn()
  late.clock.advance(19 * MIN)
  await late.runner.tick()
  t.same(late.starts, ['v'], 'pre-warmed')
  late.state.healthy = 0
  late.runner.arrived('v', PARAMS, late.activation, [{ token: 't', etag: 'e1' }], {})
  t.same(late.outcomes, ['miss'], 'the call came while the instance was still starting: it waited, a miss')

  const failed = setUp({ failStarts: true })
  await failed.learn()
  failed.clock.advance(19 * MIN)
  await failed.runner.tick()
  await new Promise((resolve) => setImmediate(resolve))
  t.same(failed.outcomes, ['miss'], 'the start failed: a miss at once')
  failed.runner.arrived('v', PARAMS, failed.activation, [{ token: 't', etag: 'e1' }], {})
  t.same(failed.outcomes, ['miss'], 'not counted again when the call comes')

  const warm = setUp()
  await warm.learn()
  warm.clock.advance(19 * MIN)
  await warm.runner.tick()
  warm.runner.arrived('v', PARAMS, warm.activation, [{ token: 't', etag: 'e1' }], {})
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
