import t from 'tap'
import fc from 'fast-check'
import { fitness, place, type AgentUse, type Demand, type Placement, type PlacementInput } from '../../src/backends/mesos/placement.ts'
import type { Id, Offer, Range, Resource } from '../../src/backends/mesos/protocol.ts'

const ALLOCATION = { role: 'maitre' }

interface OfferSpec {
  readonly cpus?: number
  readonly mem?: number
  readonly ports?: readonly (readonly [number, number])[]
  readonly role?: string
  readonly hostname?: string
}

function offer(id: string, agent: string, spec: OfferSpec = {}): Offer {
  const meta = { role: spec.role ?? '*', allocation_info: ALLOCATION }
  const resources: Resource[] = [
    { name: 'cpus', type: 'SCALAR', scalar: { value: spec.cpus ?? 4 }, ...meta },
    { name: 'mem', type: 'SCALAR', scalar: { value: spec.mem ?? 4096 }, ...meta },
    { name: 'disk', type: 'SCALAR', scalar: { value: 10_000 }, ...meta },
  ]
  const ports = spec.ports ?? [[31000, 31099]]
  if (ports.length > 0) resources.push({ name: 'ports', type: 'RANGES', ranges: { range: ports.map(([begin, end]) => ({ begin, end })) }, ...meta })
  return { id: { value: id }, framework_id: { value: 'fw' }, agent_id: { value: agent }, hostname: spec.hostname ?? `${agent}.example`, allocation_info: ALLOCATION, resources }
}

function demand(serviceId: string, count: number, cpus = 1, memMb = 512, ports = 1): Demand {
  return { serviceId, count, cpus, memMb, ports }
}

function input(offers: readonly Offer[], demands: readonly Demand[], spread = false, used = new Map<string, AgentUse>()): PlacementInput {
  return { offers, demands, used, spread }
}

/** agent id → service ids of its tasks, in placement order. */
function layout(p: Placement): Record<string, string[]> {
  return Object.fromEntries(p.launches.map((l) => [l.agentId, l.tasks.map((task) => task.serviceId)]))
}

const ids = (xs: readonly Id[]): string[] => xs.map((x) => x.value)
const scalar = (resources: readonly Resource[], name: string): number | undefined => resources.find((r) => r.name === name)?.scalar?.value

t.test('fitness is the mean of the cpu and memory fullness after the task, counting what we run there', async (t) => {
  const agent = { used: { cpus: 2, memMb: 1024 }, placed: { cpus: 1, memMb: 0 }, offered: { cpus: 4, memMb: 2048 } }
  // cpus: (2 + 1 + 1) / (2 + 4) = 2/3; mem: (1024 + 0 + 512) / (1024 + 2048) = 1/2.
  t.ok(Math.abs(fitness({ cpus: 1, memMb: 512 }, agent) - (2 / 3 + 1 / 2) / 2) < 1e-12)
  t.equal(fitness({ cpus: 4, memMb: 2048 }, { used: { cpus: 0, memMb: 0 }, placed: { cpus: 0, memMb: 0 }, offered: { cpus: 4, memMb: 2048 } }), 1, 'a task that fills the agent: 1')
  t.equal(fitness({ cpus: 1, memMb: 0 }, { used: { cpus: 0, memMb: 0 }, placed: { cpus: 0, memMb: 0 }, offered: { cpus: 4, memMb: 0 } }), (0.25 + 1) / 2, 'no memory at all counts as full')
})

t.test('bin-packing: the first agent fills before the second is used; the idle one is declined', async (t) => {
  const offers = [offer('o1', 'a1'), offer('o2', 'a2'), offer('o3', 'a3')]
  const p = place(input(offers, ['s1', 's2', 's3', 's4', 's5'].map((s) => demand(s, 1))))
  t.same(layout(p), { a1: ['s1', 's2', 's3', 's4'], a2: ['s5'] }, 'a1 takes 4 × 1 cpu of its 4, then a2')
  t.same(ids(p.unused), ['o3'])
  t.equal(p.unplaced.size, 0)
  t.same(p.launches[0]?.tasks.map((task) => task.hostname), ['a1.example', 'a1.example', 'a1.example', 'a1.example'])
})

t.test('the fullest agent wins even when it is not the first by id', async (t) => {
  const offers = [offer('o1', 'a1', { cpus: 8, mem: 8192 }), offer('o2', 'a2', { cpus: 2, mem: 2048 })]
  // Fitness a1: (1/8 + 512/8192) / 2 ≈ 0.09; a2: (1/2 + 1/4) / 2 = 0.375.
  t.same(layout(place(input(offers, [demand('s', 1)]))), { a2: ['s'] })
})

t.test('demands go largest-first (first-fit-decreasing), whatever their input order', async (t) => {
  const offers = [offer('o1', 'a1'), offer('o2', 'a2')]
  // In input order the two 1-cpu tasks would share a1, leaving 2 cpus there: the second 3-cpu task would fit nowhere.
  const p = place(input(offers, [demand('small', 2, 1), demand('big', 2, 3)]))
  t.equal(p.unplaced.size, 0, 'all four fit: 3 + 1 on each agent')
  t.same(layout(p), { a1: ['big', 'small'], a2: ['big', 'small'] })
})

t.test('spread puts one instance of a service on each agent; packing puts them all on one', async (t) => {
  const offers = [offer('o1', 'a1'), offer('o2', 'a2'), offer('o3', 'a3')]
  const spread = place(input(offers, [demand('s', 3)], true))
  t.same(layout(spread), { a1: ['s'], a2: ['s'], a3: ['s'] })
  t.same(ids(spread.unused), [])
  const packed = place(input(offers, [demand('s', 3)], false))
  t.same(layout(packed), { a1: ['s', 's', 's'] })
  t.same(ids(packed.unused), ['o2', 'o3'])
})

t.test('spread counts instances already running, then packs among equals', async (t) => {
  const offers = [offer('o1', 'a1'), offer('o2', 'a2'), offer('o3', 'a3')]
  const used = new Map<string, AgentUse>([['a1', { cpus: 1, memMb: 512, instances: new Map([['s', 1]]) }]])
  const p = place(input(offers, [demand('s', 2), demand('other', 1)], true, used))
  // s: a1 already has one, so a2 then a3. other: no instances anywhere, so the fullest agent: a1 (we run 1 cpu there).
  t.same(layout(p), { a1: ['other'], a2: ['s'], a3: ['s'] })
})

t.test('what we already run on an agent makes it fuller, so it is preferred', async (t) => {
  const offers = [offer('o1', 'a1'), offer('o2', 'a2')]
  const used = new Map<string, AgentUse>([['a2', { cpus: 2, memMb: 2048, instances: new Map([['x', 1]]) }]])
  t.same(layout(place(input(offers, [demand('s', 1)], false, used))), { a2: ['s'] })
  t.same(layout(place(input(offers, [demand('s', 1)], false))), { a1: ['s'] }, 'without it, ties go to the lower agent id')
})

t.test('a task too big for every agent stays unplaced and every offer is unused', async (t) => {
  const offers = [offer('o1', 'a1'), offer('o2', 'a2')]
  for (const big of [demand('cpu', 2, 5), demand('mem', 2, 1, 5000), demand('ports', 2, 1, 512, 101)]) {
    const p = place(input(offers, [big]))
    t.same(p.launches, [], big.serviceId)
    t.same(ids(p.unused), ['o1', 'o2'])
    t.same([...p.unplaced], [[big.serviceId, 2]])
  }
  const partial = place(input([offer('o1', 'a1')], [demand('s', 6)]))
  t.same([...partial.unplaced], [['s', 2]], 'four fit, two do not')
  t.equal(partial.launches[0]?.tasks.length, 4)
  t.same([...place(input(offers, [demand('none', 0)])).unplaced], [], 'a count of 0 places and misses nothing')
})

t.test('ports: exactly N, lowest first, from the offered ranges, coalesced into ranges', async (t) => {
  const offers = [offer('o1', 'a1', { ports: [[31010, 31020], [31005, 31006], [31000, 31002]] })]
  const p = place(input(offers, [demand('s', 2, 1, 512, 4)]))
  const tasks = p.launches[0]?.tasks ?? []
  t.same(
    tasks.map((task) => task.ports),
    [
      [31000, 31001, 31002, 31005],
      [31006, 31010, 31011, 31012],
    ],
  )
  t.same(
    tasks.map((task) => task.resources.find((r) => r.name === 'ports')?.ranges?.range),
    [
      [{ begin: 31000, end: 31002 }, { begin: 31005, end: 31005 }],
      [{ begin: 31006, end: 31006 }, { begin: 31010, end: 31012 }],
    ],
  )
  // 16 ports offered, 8 taken: a third instance of 9 ports does not fit, one of 8 does.
  t.same([...place(input(offers, [demand('s', 2, 1, 512, 4), demand('t', 1, 0.5, 512, 9)])).unplaced], [['t', 1]])
  t.same([...place(input(offers, [demand('s', 2, 1, 512, 4), demand('t', 1, 0.5, 512, 8)])).unplaced], [])
})

t.test('task resources copy the offered objects (role, allocation_info, reservations) with only the amount changed', async (t) => {
  const reserved = { role: 'maitre', allocation_info: ALLOCATION, reservations: [{ type: 'DYNAMIC', role: 'maitre', principal: 'p' }] }
  const o: Offer = {
    ...offer('o1', 'a1'),
    resources: [
      { name: 'cpus', type: 'SCALAR', scalar: { value: 4 }, ...reserved },
      { name: 'mem', type: 'SCALAR', scalar: { value: 4096 }, ...reserved },
      { name: 'disk', type: 'SCALAR', scalar: { value: 100 }, ...reserved },
      { name: 'ports', type: 'RANGES', ranges: { range: [{ begin: 31000, end: 31099 }] }, ...reserved },
    ],
  }
  const task = place(input([o], [demand('s', 1, 1.5, 768, 2)])).launches[0]?.tasks[0]
  t.same(task?.resources, [
    { name: 'cpus', type: 'SCALAR', scalar: { value: 1.5 }, ...reserved },
    { name: 'mem', type: 'SCALAR', scalar: { value: 768 }, ...reserved },
    { name: 'ports', type: 'RANGES', ranges: { range: [{ begin: 31000, end: 31001 }] }, ...reserved },
  ])
  t.strictSame(Object.keys(task?.resources[0] ?? {}).sort(), ['allocation_info', 'name', 'reservations', 'role', 'scalar', 'type'], 'no field added or lost')
})

t.test('with several roles on one agent, a task takes each resource whole from the first pool that suffices', async (t) => {
  const o: Offer = {
    ...offer('o1', 'a1'),
    resources: [
      { name: 'cpus', type: 'SCALAR', scalar: { value: 1 }, role: 'maitre', allocation_info: ALLOCATION },
      { name: 'cpus', type: 'SCALAR', scalar: { value: 2 }, role: '*', allocation_info: ALLOCATION },
      { name: 'mem', type: 'SCALAR', scalar: { value: 1024 }, role: '*', allocation_info: ALLOCATION },
      { name: 'ports', type: 'RANGES', ranges: { range: [{ begin: 31000, end: 31000 }] }, role: 'maitre', allocation_info: ALLOCATION },
      { name: 'ports', type: 'RANGES', ranges: { range: [{ begin: 32000, end: 32009 }] }, role: '*', allocation_info: ALLOCATION },
    ],
  }
  const p = place(input([o], [demand('s', 2, 1.5, 256, 2)]))
  const task = p.launches[0]?.tasks[0]
  t.same(task?.resources.map((r) => [r.name, r.role]), [['cpus', '*'], ['mem', '*'], ['ports', '*']], '1.5 cpus only fit the * pool; 2 ports only the * pool')
  t.same(task?.ports, [32000, 32001])
  t.same([...p.unplaced], [['s', 1]], 'the second would need to split cpus over roles: not done')
})

t.test('a port offered under two roles is handed out once', async (t) => {
  const o: Offer = {
    ...offer('o1', 'a1'),
    resources: [
      ...offer('o1', 'a1', { ports: [] }).resources,
      { name: 'ports', type: 'RANGES', ranges: { range: [{ begin: 31000, end: 31001 }] }, role: 'maitre', allocation_info: ALLOCATION },
      { name: 'ports', type: 'RANGES', ranges: { range: [{ begin: 31000, end: 31003 }] }, role: '*', allocation_info: ALLOCATION },
    ],
  }
  const p = place(input([o], [demand('s', 3, 1, 512, 2)]))
  t.same(p.launches[0]?.tasks.map((task) => [task.ports, task.resources.find((r) => r.name === 'ports')?.role]), [
    [[31000, 31001], 'maitre'],
    [[31002, 31003], '*'],
  ])
  t.same([...p.unplaced], [['s', 1]], 'four distinct ports, two instances')
})

t.test('two offers of one agent combine into one launch with both offer ids', async (t) => {
  const offers = [offer('o1', 'a1', { cpus: 1, mem: 1024, ports: [[31000, 31000]] }), offer('o2', 'b1', { cpus: 1, mem: 1024 }), offer('o3', 'a1', { cpus: 1, mem: 1024, ports: [[31001, 31001]] })]
  const p = place(input(offers, [demand('s', 1, 1.5, 1536, 2)]))
  t.equal(p.launches.length, 1)
  t.equal(p.launches[0]?.agentId, 'a1')
  t.same(ids(p.launches[0]?.offerIds ?? []), ['o1', 'o3'])
  t.same(ids(p.unused), ['o2'])
  const task = p.launches[0]?.tasks[0]
  t.equal(scalar(task?.resources ?? [], 'cpus'), 1.5, 'one cpus resource, drawn from both offers')
  t.same(task?.ports, [31000, 31001])
  t.same(task?.resources.find((r) => r.name === 'ports')?.ranges?.range, [{ begin: 31000, end: 31001 }], 'ranges of two offers coalesced')
})

t.test('sums in floating point do not refuse a fit', async (t) => {
  const p = place(input([offer('o1', 'a1', { cpus: 0.3, mem: 0.3 })], [demand('s', 1, 0.1 + 0.2, 0.1 + 0.2)]))
  t.equal(p.launches.length, 1)
  t.equal(p.unplaced.size, 0)
})

t.test('inputs are never mutated and the result is deterministic', async (t) => {
  const offers = [offer('o2', 'a2'), offer('o1', 'a1', { ports: [[31005, 31010], [31000, 31001]] }), offer('o3', 'a1', { cpus: 1 })]
  const demands = [demand('s', 3, 1, 512, 3), demand('t', 2, 2, 1024)]
  const used = new Map<string, AgentUse>([['a2', { cpus: 1, memMb: 1, instances: new Map([['s', 1]]) }]])
  const before = structuredClone({ offers, demands, used: [...used].map(([k, v]) => [k, v.cpus, v.memMb, [...v.instances]]) })
  const deepFreeze = (x: unknown): void => {
    if (x !== null && typeof x === 'object' && !(x instanceof Map)) {
      Object.freeze(x)
      for (const v of Object.values(x)) deepFreeze(v)
    }
  }
  deepFreeze(offers)
  deepFreeze(demands)
  const first = place(input(offers, demands, true, used))
  t.same({ offers, demands, used: [...used].map(([k, v]) => [k, v.cpus, v.memMb, [...v.instances]]) }, before)
  t.same(place(input(offers, demands, true, used)), first)
  t.equal(first.launches.flatMap((l) => l.tasks).length, 5)
})

// ---- properties ----

const ROLES = ['*', 'maitre'] as const
const metaKey = (r: Resource): string => JSON.stringify([r.role, r.allocation_info, r.reservations])

/** Agents a0..a4, 1–3 offers each; ports per offer entry come from disjoint blocks so nothing is offered twice. */
const offersArb = fc
  .array(
    fc.array(
      fc.record({
        cpus: fc.integer({ min: 0, max: 80 }).map((n) => n / 10),
        mem: fc.integer({ min: 0, max: 64 }).map((n) => n * 128),
        cpusRole: fc.constantFrom(...ROLES),
        memRole: fc.constantFrom(...ROLES),
        ports: fc.array(fc.tuple(fc.integer({ min: 0, max: 49 }), fc.integer({ min: 0, max: 5 }), fc.constantFrom(...ROLES)), { maxLength: 2 }),
      }),
      { minLength: 1, maxLength: 3 },
    ),
    { minLength: 1, maxLength: 5 },
  )
  .chain((agents) => {
    const offers: Offer[] = []
    agents.forEach((specs, a) =>
      specs.forEach((s, k) => {
        const resources: Resource[] = [
          { name: 'cpus', type: 'SCALAR', scalar: { value: s.cpus }, role: s.cpusRole, allocation_info: ALLOCATION },
          { name: 'mem', type: 'SCALAR', scalar: { value: s.mem }, role: s.memRole, allocation_info: ALLOCATION },
        ]
        s.ports.forEach(([start, len, role], j) => {
          const base = 31000 + k * 200 + j * 100 + start
          resources.push({ name: 'ports', type: 'RANGES', ranges: { range: [{ begin: base, end: base + len }] }, role, allocation_info: ALLOCATION })
        })
        offers.push({ id: { value: `o${a}-${k}` }, framework_id: { value: 'fw' }, agent_id: { value: `a${a}` }, hostname: `h${a}`, resources })
      }),
    )
    return fc.shuffledSubarray(offers, { minLength: offers.length, maxLength: offers.length })
  })

const demandsArb: fc.Arbitrary<Demand[]> = fc.uniqueArray(
  fc.record({
    serviceId: fc.constantFrom('s0', 's1', 's2', 's3'),
    count: fc.integer({ min: 0, max: 6 }),
    cpus: fc.integer({ min: 1, max: 30 }).map((n) => n / 10),
    memMb: fc.integer({ min: 1, max: 32 }).map((n) => n * 128),
    ports: fc.integer({ min: 1, max: 4 }),
  }),
  { selector: (d) => d.serviceId, maxLength: 4 },
)

const usedArb = fc
  .array(fc.tuple(fc.integer({ min: 0, max: 4 }), fc.integer({ min: 0, max: 40 }), fc.integer({ min: 0, max: 32 }), fc.integer({ min: 0, max: 3 })), { maxLength: 4 })
  .map((rows) => new Map<string, AgentUse>(rows.map(([a, c, m, n]) => [`a${a}`, { cpus: c / 10, memMb: m * 128, instances: new Map([['s0', n]]) }])))

const inputArb = fc.record({ offers: offersArb, demands: demandsArb, used: usedArb, spread: fc.boolean() })

const portsOf = (r: Resource): number[] => (r.ranges?.range ?? []).flatMap((x: Range) => Array.from({ length: x.end - x.begin + 1 }, (_, i) => x.begin + i))

/** Per agent, per `name|metadata`: offered amount and ports. */
function offeredPools(offers: readonly Offer[]): Map<string, Map<string, { amount: number; ports: Set<number> }>> {
  const out = new Map<string, Map<string, { amount: number; ports: Set<number> }>>()
  for (const o of offers) {
    const agent = out.get(o.agent_id.value) ?? new Map<string, { amount: number; ports: Set<number> }>()
    out.set(o.agent_id.value, agent)
    for (const r of o.resources) {
      const key = `${r.name}|${metaKey(r)}`
      const pool = agent.get(key) ?? { amount: 0, ports: new Set<number>() }
      agent.set(key, pool)
      pool.amount += r.scalar?.value ?? 0
      for (const p of portsOf(r)) pool.ports.add(p)
    }
  }
  return out
}

t.test('property: no agent is over-committed, in any resource pool', async (t) => {
  fc.assert(
    fc.property(inputArb, (i) => {
      const p = place(i)
      const pools = offeredPools(i.offers)
      for (const launch of p.launches) {
        const offered = pools.get(launch.agentId)
        if (offered === undefined) return false
        const taken = new Map<string, { amount: number; ports: number[] }>()
        const allPorts: number[] = []
        for (const task of launch.tasks) {
          if (task.agentId !== launch.agentId) return false
          for (const r of task.resources) {
            const key = `${r.name}|${metaKey(r)}`
            const pool = taken.get(key) ?? { amount: 0, ports: [] }
            taken.set(key, pool)
            pool.amount += r.scalar?.value ?? 0
            pool.ports.push(...portsOf(r))
          }
          allPorts.push(...task.ports)
        }
        if (new Set(allPorts).size !== allPorts.length) return false
        for (const [key, use] of taken) {
          const have = offered.get(key)
          if (have === undefined) return false
          if (use.amount > have.amount + 1e-6) return false
          if (!use.ports.every((port) => have.ports.has(port))) return false
        }
      }
      return true
    }),
  )
  t.pass()
})

t.test('property: each task has exactly its demand, ports ascending and coalesced into its ranges', async (t) => {
  fc.assert(
    fc.property(inputArb, (i) => {
      const byService = new Map(i.demands.map((d) => [d.serviceId, d]))
      for (const task of place(i).launches.flatMap((l) => l.tasks)) {
        const d = byService.get(task.serviceId)
        if (d === undefined) return false
        if (scalar(task.resources, 'cpus') !== d.cpus || scalar(task.resources, 'mem') !== d.memMb) return false
        if (task.ports.length !== d.ports || task.ports.some((port, k) => k > 0 && port <= (task.ports[k - 1] as number))) return false
        const ranges = task.resources.find((r) => r.name === 'ports')?.ranges?.range ?? []
        if (JSON.stringify(portsOf({ name: 'ports', type: 'RANGES', ranges: { range: ranges } })) !== JSON.stringify(task.ports)) return false
        // Coalesced: no two ranges touch.
        if (ranges.some((r, k) => k > 0 && r.begin <= (ranges[k - 1] as Range).end + 1)) return false
        if (task.resources.length !== 3 || task.hostname !== `h${task.agentId.slice(1)}`) return false
      }
      return true
    }),
  )
  t.pass()
})

t.test('property: every offer is launched or unused exactly once, and a launch holds all offers of its agent only', async (t) => {
  fc.assert(
    fc.property(inputArb, (i) => {
      const p = place(i)
      const agentOf = new Map(i.offers.map((o) => [o.id.value, o.agent_id.value]))
      const seen = [...p.launches.flatMap((l) => ids(l.offerIds)), ...ids(p.unused)]
      if (seen.length !== i.offers.length || new Set(seen).size !== seen.length || !seen.every((id) => agentOf.has(id))) return false
      if (new Set(p.launches.map((l) => l.agentId)).size !== p.launches.length) return false
      for (const l of p.launches) {
        if (l.tasks.length === 0) return false
        const mine = i.offers.filter((o) => o.agent_id.value === l.agentId).map((o) => o.id.value)
        if (JSON.stringify([...ids(l.offerIds)].sort()) !== JSON.stringify(mine.sort())) return false
      }
      return true
    }),
  )
  t.pass()
})

t.test('property: placed + unplaced = demanded per service, and an unplaced instance fits nowhere', async (t) => {
  fc.assert(
    fc.property(inputArb, (i) => {
      const p = place(i)
      const tasks = p.launches.flatMap((l) => l.tasks)
      for (const d of i.demands) {
        const placed = tasks.filter((task) => task.serviceId === d.serviceId).length
        if (placed + (p.unplaced.get(d.serviceId) ?? 0) !== d.count) return false
      }
      if ([...p.unplaced.values()].some((n) => n <= 0)) return false
      // What is left of each agent's pools after the placement cannot take an unplaced instance.
      const pools = offeredPools(i.offers)
      for (const task of tasks) {
        const agent = pools.get(task.agentId)
        for (const r of task.resources) {
          const pool = agent?.get(`${r.name}|${metaKey(r)}`)
          if (pool === undefined) return false
          pool.amount -= r.scalar?.value ?? 0
          for (const port of portsOf(r)) pool.ports.delete(port)
        }
      }
      for (const [serviceId] of p.unplaced) {
        const d = i.demands.find((x) => x.serviceId === serviceId) as Demand
        for (const agent of pools.values()) {
          const left = [...agent].map(([key, pool]) => ({ name: key.split('|')[0], ...pool }))
          const fitsScalar = (name: string, want: number): boolean => left.some((x) => x.name === name && x.amount >= want - 1e-6)
          if (fitsScalar('cpus', d.cpus) && fitsScalar('mem', d.memMb) && left.some((x) => x.name === 'ports' && x.ports.size >= d.ports)) return false
        }
      }
      return true
    }),
  )
  t.pass()
})

t.test('property: the order in which agents appear in the offers does not change where tasks go', async (t) => {
  fc.assert(
    fc.property(inputArb, (i) => {
      const tasks = (offers: readonly Offer[]): string => JSON.stringify(place({ ...i, offers }).launches.map((l) => [l.agentId, l.tasks]))
      // Agents in reverse id order; one agent's offers keep their order (which pool comes first).
      const reordered = [...i.offers].sort((a, b) => (a.agent_id.value < b.agent_id.value ? 1 : a.agent_id.value > b.agent_id.value ? -1 : 0))
      return tasks(i.offers) === tasks(reordered)
    }),
  )
  t.pass()
})
