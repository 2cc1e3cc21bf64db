/**
 * Where the Mesos backend launches instances, as a pure function of one round of offers
 * (Netflix Fenzo's idea: a fitness per (task, agent), bin-packing). No I/O, no clock, no
 * randomness; inputs are never mutated, and the same input always gives the same placement.
 *
 * - **Agents, not offers.** Offers are grouped by agent id; only offers of one agent combine (one
 *   ACCEPT may name several offers, all of one agent). An agent's free resources are the sum over
 *   its offers; its free ports are the union of the offered `ports` ranges.
 * - **Pools.** Offered entries of one name whose metadata (role, allocation_info, reservations,
 *   everything but the amount) is equal add up into one pool, as the master adds them up in an
 *   ACCEPT. Simplification: when an agent offers several pools of one name (e.g. `*` and a reserved
 *   role), a task takes each of cpus, mem and ports whole from the first pool that suffices; it never
 *   splits one resource over pools. With one role per agent (the usual case) this is exactly the sum
 *   over the offers.
 * - **Fit.** A task fits an agent when a cpus pool holds >= cpus, a mem pool >= memMb and a ports
 *   pool at least `ports` free ports, after what this round already placed there. Scalars compare
 *   with an epsilon ({@link EPSILON}) so 0.1 + 0.2 style sums do not refuse a fit.
 * - **Fitness** ({@link fitness}, Fenzo's cpuMemBinPacker): how full the agent would be after taking
 *   the task, the mean over r in {cpus, mem} of
 *   `(used_r + placed_r + task_r) / (used_r + offered_r)`, where `used` is what this framework already
 *   runs there (its own task records), `placed` what this round already put there, and `offered` the
 *   agent's offered free total at the start of the round; `used + offered` is the agent's size as far
 *   as this framework can tell. Higher is fuller and preferred: packing the fullest agent leaves the
 *   others idle, to be declined and drained.
 * - **Choice.** Among agents the task fits: with `spread`, fewest instances of the task's service
 *   first (`used.instances` plus this round's), then the highest fitness; without, the highest
 *   fitness only. Remaining ties (within {@link EPSILON}) go to the lowest agent id (code-unit order).
 * - **Order.** Demands go largest-first (cpus, then mem, then ports, descending; then service id), one
 *   instance at a time: first-fit-decreasing packs better than input order. Once an instance of a
 *   demand fits nowhere the rest of that demand is unplaced too (free resources only shrink).
 * - **Ports.** A task takes the `ports` lowest free ports of its pool, claimed as one RANGES resource
 *   whose ranges are those ports coalesced.
 * - **Resources.** A task's cpus, mem and ports resources copy the first offered object of the pool
 *   they come from (role, allocation_info, reservations kept) and change only `scalar.value` or
 *   `ranges`. A demand of 0 cpus or 0 mem claims no resource of that name.
 * - **Offers.** An agent that got a task uses all its offers in one launch; what the tasks leave of
 *   them counts as declined by Mesos under the ACCEPT's filter. Offers of agents that got nothing are
 *   `unused`, for the caller to decline (with a refuse filter).
 */
import type { Id, Offer, Range, Resource } from './protocol.ts'

/** Instances of one service version still to place. */
export interface Demand {
  readonly serviceId: string
  /** How many more instances to place (>= 0; a fraction rounds down). */
  readonly count: number
  readonly cpus: number
  readonly memMb: number
  /** Host ports each instance needs (>= 1). */
  readonly ports: number
}

/** What this framework already runs on an agent (from its own task records). */
export interface AgentUse {
  readonly cpus: number
  readonly memMb: number
  /** Live instances per service id on this agent. */
  readonly instances: ReadonlyMap<string, number>
}

export interface PlacementInput {
  readonly offers: readonly Offer[]
  readonly demands: readonly Demand[]
  /** By agent id. */
  readonly used: ReadonlyMap<string, AgentUse>
  /** Prefer spreading a version's instances over agents (fewest of that version first) before packing. */
  readonly spread: boolean
}

export interface PlacedTask {
  readonly serviceId: string
  readonly agentId: string
  readonly hostname: string
  /** Exactly `demand.ports` host ports, taken from the offered ranges, lowest first. */
  readonly ports: readonly number[]
  /** cpus, mem (SCALAR) and ports (RANGES, coalesced) copied from the offered objects with only the amount changed. */
  readonly resources: readonly Resource[]
}

export interface Launch {
  readonly agentId: string
  /** Every offer of that agent (one ACCEPT per agent). */
  readonly offerIds: readonly Id[]
  readonly tasks: readonly PlacedTask[]
}

export interface Placement {
  /** One per agent that got tasks, by agent id. */
  readonly launches: readonly Launch[]
  /** Offers not used at all: the caller declines them (with a refuse filter). */
  readonly unused: readonly Id[]
  /** Instances that fit nowhere, per service id (for logs and for reviving later); only counts > 0. */
  readonly unplaced: ReadonlyMap<string, number>
}

/** Scalar comparisons tolerate this much (Mesos itself keeps three decimals). */
export const EPSILON = 1e-6

export interface Amounts {
  readonly cpus: number
  readonly memMb: number
}

/** An agent's load as the fitness sees it. */
export interface AgentLoad {
  /** What this framework already runs there. */
  readonly used: Amounts
  /** What this round already placed there. */
  readonly placed: Amounts
  /** The agent's offered free total at the start of the round. */
  readonly offered: Amounts
}

/**
 * Fenzo's cpuMemBinPacker: how full `agent` would be after taking `task`, in [0, 1] — the mean over
 * cpus and mem of `(used + placed + task) / (used + offered)`. A resource the agent has none of
 * counts as full (1). Call it only for a task that fits; the result is clamped to [0, 1] anyway.
 */
export function fitness(task: Amounts, agent: AgentLoad): number {
  const ratio = (used: number, placed: number, want: number, offered: number): number => {
    const total = used + offered
    if (!(total > 0)) return 1
    const r = (used + placed + want) / total
    return Number.isFinite(r) ? Math.min(1, Math.max(0, r)) : 1
  }
  const cpus = ratio(agent.used.cpus, agent.placed.cpus, task.cpus, agent.offered.cpus)
  const mem = ratio(agent.used.memMb, agent.placed.memMb, task.memMb, agent.offered.memMb)
  return (cpus + mem) / 2
}

/** Offered entries of one name and equal metadata, added up. */
interface ScalarPool {
  readonly template: Resource
  free: number
}
interface PortPool {
  readonly template: Resource
  /** Sorted, disjoint, non-adjacent ranges. */
  free: Range[]
}

interface AgentState {
  readonly id: string
  readonly hostname: string
  readonly offerIds: Id[]
  readonly cpus: ScalarPool[]
  readonly mem: ScalarPool[]
  readonly ports: PortPool[]
  readonly offered: Amounts
  readonly used: Amounts
  readonly placed: { cpus: number; memMb: number }
  readonly instances: Map<string, number>
  readonly tasks: PlacedTask[]
}

export function place(input: PlacementInput): Placement {
  const agents = groupByAgent(input.offers, input.used)
  const order = [...input.demands].sort(
    (a, b) => b.cpus - a.cpus || b.memMb - a.memMb || b.ports - a.ports || compare(a.serviceId, b.serviceId),
  )
  const unplaced = new Map<string, number>()
  for (const demand of order) {
    let left = Number.isFinite(demand.count) ? Math.max(0, Math.floor(demand.count)) : 0
    for (; left > 0; left--) {
      const agent = choose(agents, demand, input.spread)
      if (agent === undefined) break
      agent.tasks.push(take(agent, demand))
    }
    if (left > 0) unplaced.set(demand.serviceId, (unplaced.get(demand.serviceId) ?? 0) + left)
  }
  const launches: Launch[] = []
  const launched = new Set<string>()
  for (const agent of agents) {
    if (agent.tasks.length === 0) continue
    launched.add(agent.id)
    launches.push({ agentId: agent.id, offerIds: agent.offerIds, tasks: agent.tasks })
  }
  const unused = input.offers.filter((o) => !launched.has(o.agent_id.value)).map((o) => o.id)
  return { launches, unused, unplaced }
}

/** The agents of this round's offers, sorted by id, with their pools. */
function groupByAgent(offers: readonly Offer[], used: ReadonlyMap<string, AgentUse>): AgentState[] {
  const byId = new Map<string, AgentState>()
  for (const offer of offers) {
    const id = offer.agent_id.value
    let agent = byId.get(id)
    if (agent === undefined) {
      const use = used.get(id)
      agent = {
        id,
        hostname: offer.hostname,
        offerIds: [],
        cpus: [],
        mem: [],
        ports: [],
        offered: { cpus: 0, memMb: 0 },
        used: { cpus: use?.cpus ?? 0, memMb: use?.memMb ?? 0 },
        placed: { cpus: 0, memMb: 0 },
        instances: new Map(use?.instances ?? []),
        tasks: [],
      }
      byId.set(id, agent)
    }
    agent.offerIds.push(offer.id)
    for (const resource of offer.resources) {
      if (resource.name === 'cpus' || resource.name === 'mem') addScalar(resource.name === 'cpus' ? agent.cpus : agent.mem, resource)
      else if (resource.name === 'ports') addPorts(agent.ports, resource)
    }
  }
  const agents = [...byId.values()].sort((a, b) => compare(a.id, b.id))
  return agents.map((a) => ({ ...a, offered: { cpus: sum(a.cpus), memMb: sum(a.mem) } }))
}

function addScalar(pools: ScalarPool[], resource: Resource): void {
  const value = resource.scalar?.value
  if (resource.type !== 'SCALAR' || value === undefined || !(value > 0)) return
  const key = metadataKey(resource)
  const pool = pools.find((p) => metadataKey(p.template) === key)
  if (pool === undefined) pools.push({ template: resource, free: value })
  else pool.free += value
}

function addPorts(pools: PortPool[], resource: Resource): void {
  if (resource.type !== 'RANGES' || resource.ranges === undefined) return
  // A port already in another pool of this agent stays there: pools never share a port.
  let ranges = normalize(resource.ranges.range)
  for (const other of pools) ranges = subtract(ranges, other.free)
  const key = metadataKey(resource)
  const pool = pools.find((p) => metadataKey(p.template) === key)
  if (pool === undefined) {
    if (ranges.length > 0) pools.push({ template: resource, free: ranges })
  } else pool.free = normalize([...pool.free, ...ranges])
}

/** The agent this instance goes to, or undefined when it fits nowhere. */
function choose(agents: readonly AgentState[], demand: Demand, spread: boolean): AgentState | undefined {
  let best: AgentState | undefined
  let bestCount = 0
  let bestFitness = 0
  for (const agent of agents) {
    if (!fits(agent, demand)) continue
    const count = agent.instances.get(demand.serviceId) ?? 0
    const fit = fitness(demand, agent)
    // Agents come in id order, so keeping the first of equals breaks ties by agent id.
    if (best === undefined || (spread && count < bestCount) || ((!spread || count === bestCount) && fit > bestFitness + EPSILON)) {
      best = agent
      bestCount = count
      bestFitness = fit
    }
  }
  return best
}

function fits(agent: AgentState, demand: Demand): boolean {
  return scalarPool(agent.cpus, demand.cpus) !== null && scalarPool(agent.mem, demand.memMb) !== null && portPool(agent.ports, demand.ports) !== null
}

/** The first pool holding `want`; undefined when nothing is wanted; null when none suffices. */
function scalarPool(pools: readonly ScalarPool[], want: number): ScalarPool | undefined | null {
  if (!(want > 0)) return undefined
  return pools.find((p) => p.free >= want - EPSILON) ?? null
}

function portPool(pools: readonly PortPool[], want: number): PortPool | undefined | null {
  if (!(want > 0)) return undefined
  return pools.find((p) => count(p.free) >= want) ?? null
}

/** Claims one instance's resources on an agent `demand` fits. */
function take(agent: AgentState, demand: Demand): PlacedTask {
  const resources: Resource[] = []
  for (const [pools, want] of [
    [agent.cpus, demand.cpus],
    [agent.mem, demand.memMb],
  ] as const) {
    const pool = scalarPool(pools, want)
    if (pool == null) continue
    pool.free = Math.max(0, pool.free - want)
    resources.push({ ...pool.template, scalar: { value: want } })
  }
  const ports: number[] = []
  const pool = portPool(agent.ports, demand.ports)
  if (pool != null) {
    const wanted = Math.ceil(demand.ports)
    for (const r of pool.free) {
      for (let p = r.begin; p <= r.end && ports.length < wanted; p++) ports.push(p)
      if (ports.length >= wanted) break
    }
    const claimed = coalesce(ports)
    pool.free = subtract(pool.free, claimed)
    resources.push({ ...pool.template, ranges: { range: claimed } })
  }
  agent.placed.cpus += demand.cpus
  agent.placed.memMb += demand.memMb
  agent.instances.set(demand.serviceId, (agent.instances.get(demand.serviceId) ?? 0) + 1)
  return { serviceId: demand.serviceId, agentId: agent.id, hostname: agent.hostname, ports, resources }
}

/** Everything about a resource but its amount, as a canonical string. */
function metadataKey(resource: Resource): string {
  const { scalar: _scalar, ranges: _ranges, ...rest } = resource
  return canonical(rest)
}

function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => compare(a, b))
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonical(v)}`).join(',')}}`
  }
  return JSON.stringify(value) ?? 'undefined'
}

/** Sorted, merged (overlapping and adjacent joined) integer ranges; empty or inverted ranges dropped. */
function normalize(ranges: readonly Range[]): Range[] {
  const sorted = ranges
    .filter((r) => Number.isInteger(r.begin) && Number.isInteger(r.end) && r.begin <= r.end)
    .map((r) => ({ begin: r.begin, end: r.end }))
    .sort((a, b) => a.begin - b.begin)
  const out: { begin: number; end: number }[] = []
  for (const r of sorted) {
    const last = out.at(-1)
    if (last !== undefined && r.begin <= last.end + 1) last.end = Math.max(last.end, r.end)
    else out.push(r)
  }
  return out
}

/** `from` without the ports in `minus` (both normalized). */
function subtract(from: readonly Range[], minus: readonly Range[]): Range[] {
  let out = [...from]
  for (const m of minus) {
    const next: Range[] = []
    for (const r of out) {
      if (m.end < r.begin || m.begin > r.end) next.push(r)
      else {
        if (r.begin < m.begin) next.push({ begin: r.begin, end: m.begin - 1 })
        if (m.end < r.end) next.push({ begin: m.end + 1, end: r.end })
      }
    }
    out = next
  }
  return out
}

/** Ascending ports as ranges of consecutive ports. */
function coalesce(ports: readonly number[]): Range[] {
  const out: { begin: number; end: number }[] = []
  for (const p of ports) {
    const last = out.at(-1)
    if (last !== undefined && p === last.end + 1) last.end = p
    else out.push({ begin: p, end: p })
  }
  return out
}

function count(ranges: readonly Range[]): number {
  return ranges.reduce((n, r) => n + r.end - r.begin + 1, 0)
}

function sum(pools: readonly ScalarPool[]): number {
  return pools.reduce((n, p) => n + p.free, 0)
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0
}
