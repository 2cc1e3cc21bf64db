import t from 'tap'
import fc from 'fast-check'
import { rankOf, shareOf, slotLimit, type PeerClaim } from '../../src/cluster/slot-shares.ts'

const routerIds = fc.uniqueArray(fc.stringMatching(/^[a-z0-9-]{1,12}$/), { minLength: 1, maxLength: 7 })
const instanceId = fc.stringMatching(/^[a-z0-9.-]{1,40}$/)

t.test('every slot of an instance has exactly one holder, and holders differ by one slot at most', async (t) => {
  fc.assert(
    fc.property(routerIds, instanceId, fc.integer({ min: 1, max: 64 }), (members, instance, level) => {
      const shares = members.map((r) => shareOf(instance, level, members, r))
      const sum = shares.reduce((a, b) => a + b, 0)
      return sum === level && Math.max(...shares) - Math.min(...shares) <= 1 && new Set(members.map((r) => rankOf(instance, members, r))).size === members.length
    }),
  )
  t.equal(shareOf('i', 4, ['a', 'b'], 'c'), 0, 'a router that is not a member holds nothing')
})

t.test('concurrency-level 1 instances spread over the routers, not all to one', async (t) => {
  const members = ['router-a', 'router-b', 'router-c']
  const holders = new Map<string, number>()
  for (let i = 0; i < 300; i++) {
    const holder = members.find((r) => shareOf(`svc.instance-${i}`, 1, members, r) === 1) as string
    holders.set(holder, (holders.get(holder) ?? 0) + 1)
  }
  t.equal(holders.size, 3)
  for (const [router, count] of holders) t.ok(count > 70 && count < 130, `${router} holds ${count} of 300 single-slot instances`)
})

t.test('a router that leaves hands on only its own slots; the others keep theirs', async (t) => {
  fc.assert(
    fc.property(routerIds.filter((m) => m.length >= 2), instanceId, (members, instance) => {
      const leaving = members[0] as string
      const rest = members.slice(1)
      // concurrency-level 1: the holder stays the holder unless it is the one that left.
      const before = members.find((r) => shareOf(instance, 1, members, r) === 1)
      const after = rest.find((r) => shareOf(instance, 1, rest, r) === 1)
      return before === leaving || before === after
    }),
  )
  t.pass('rendezvous ranking: minimal movement')
})

t.test('whatever view each router holds, their limits together never exceed concurrency-level', async (t) => {
  // Each router deals by its own (possibly stale or early) view of the membership and publishes
  // it; a router's limit subtracts what the others' reported views give them.
  const scenario = fc.record({
    universe: fc.uniqueArray(fc.constantFrom('a', 'b', 'c', 'd', 'e'), { minLength: 2, maxLength: 5 }),
    level: fc.integer({ min: 1, max: 12 }),
    instance: instanceId,
    seed: fc.array(fc.array(fc.boolean(), { minLength: 5, maxLength: 5 }), { minLength: 5, maxLength: 5 }),
  })
  fc.assert(
    fc.property(scenario, ({ universe, level, instance, seed }) => {
      // Router i's view: itself plus a random subset of the others.
      const views = universe.map((me, i) => universe.filter((r, j) => r === me || seed[i]?.[j] === true).sort())
      const claims: PeerClaim[] = universe.map((routerId, i) => ({ routerId, members: views[i], over: 0 }))
      const limits = universe.map((me, i) => slotLimit(instance, level, views[i] as string[], me, claims))
      return limits.reduce((a, b) => a + b, 0) <= level && limits.every((l) => l >= 0)
    }),
  )
  t.pass('no view disagreement over-admits')
})

t.test('a slot changes hands only once its previous holder let go of it', async (t) => {
  const members = ['a', 'b']
  const grown = ['a', 'b', 'c', 'd', 'e', 'f']
  const holderIn = (view: string[], instance: string): string => view.find((r) => shareOf(instance, 1, view, r) === 1) as string
  // An instance whose single slot moves from an old router to a newcomer when four routers join.
  const instance = Array.from({ length: 100 }, (_, i) => `svc.${i}`).find((id) => !members.includes(holderIn(grown, id))) as string
  const holder = holderIn(members, instance)
  const other = members.find((r) => r !== holder) as string
  const newHolder = holderIn(grown, instance)
  t.not(newHolder, holder, `the slot of ${instance} moves from ${holder} to ${newHolder}`)
  const busyOldHolder: PeerClaim = { routerId: holder, members: grown, over: 1 }
  const peers = grown.filter((r) => r !== newHolder && r !== holder).map((routerId) => ({ routerId, members: grown, over: 0 }))
  t.equal(slotLimit(instance, 1, grown, newHolder, [busyOldHolder, ...peers]), 0, 'the new holder waits while the old one carries a request')
  t.equal(slotLimit(instance, 1, grown, newHolder, [{ ...busyOldHolder, over: 0 }, ...peers]), 1, 'and takes the slot once it reports it let go')
  t.equal(slotLimit(instance, 1, grown, newHolder, [{ routerId: holder, members: undefined, over: 0 }, ...peers]), 0, 'a peer that has not reported is taken to hold every slot')
  t.equal(slotLimit(instance, 1, members, other, [{ routerId: holder, members, over: 0 }]), 0, 'a router never exceeds its own share')
})

t.test('routers whose actual views are newer than the reports the others have seen still never sum past concurrency-level', async (t) => {
  // Each router deals by its actual view; the others only know the (maybe older) view in its last
  // report. A router's share can only grow when others leave its view, so the claim in any report
  // is at least its share among all routers that report: the limits still sum to at most c.
  const universe = ['a', 'b', 'c', 'd']
  const bits = fc.array(fc.array(fc.boolean(), { minLength: 4, maxLength: 4 }), { minLength: 4, maxLength: 4 })
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 9 }), instanceId, bits, bits, (level, instance, actual, reported) => {
      const view = (m: boolean[][], i: number): string[] => universe.filter((_, j) => j === i || m[i]?.[j] === true)
      const claims: PeerClaim[] = universe.map((routerId, i) => ({ routerId, members: view(reported, i), over: 0 }))
      const limits = universe.map((me, i) => slotLimit(instance, level, view(actual, i), me, claims))
      return limits.reduce((x, y) => x + y, 0) <= level
    }),
    { numRuns: 5000 },
  )
  t.pass('no over-admission from stale reports, as long as every router has seen every other one’s report (a joining router settles first)')
})

t.test('a router gone from this view keeps its share claimed while a peer’s report still deals with it', async (t) => {
  // Concurrency-level 1, three routers: the slot is a's; once a is gone it is c's.
  const all = ['a', 'b', 'c']
  const instance = Array.from({ length: 500 }, (_, i) => `svc.${i}`).find((id) => rankOf(id, all, 'a') === 0 && rankOf(id, ['b', 'c'], 'c') === 0) as string
  t.ok(instance, 'an instance whose slot moves from a to c')
  const left = ['b', 'c']
  // b's report was made while a was still a member: b may run a request on the slot a lent it,
  // which b counts as its own (and reports over its share) only once it has seen a go too.
  t.equal(slotLimit(instance, 1, left, 'c', [{ routerId: 'b', members: all, over: 0 }]), 0, 'c waits while b’s report still deals with a')
  t.equal(slotLimit(instance, 1, left, 'c', [{ routerId: 'b', members: left, over: 1 }]), 0, 'then while b reports the request it adopted')
  t.equal(slotLimit(instance, 1, left, 'c', [{ routerId: 'b', members: left, over: 0 }]), 1, 'and takes the slot once b reports it let go')
  t.equal(slotLimit(instance, 1, all, 'a', [{ routerId: 'b', members: all, over: 0 }, { routerId: 'c', members: all, over: 0 }]), 1, 'nothing changes while nobody is gone')
})
