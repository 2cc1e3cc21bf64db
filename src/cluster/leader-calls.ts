/**
 * Operator calls only the leader carries out, because only the leader runs the autoscaler: a
 * router that does not lead asks the leader to act, over the peer API, and once the leader has
 * taken the call, takes it in too (so that its own view shows it, and it acts on it should it
 * lead next) before it answers.
 * Waiter's `/apps/{id}/instance/{iid}/expire` is one: through a follower it used to answer
 * success and do nothing. Once the leader has taken one, it tells every other router too (a
 * note each records without acting on it): kept in the leader's memory alone, an expiry was lost
 * when the leader changed before the instance was replaced, and the replacement killed instead.
 */
import { Agent } from 'undici'
import { MaitreError } from '../errors.ts'
import type { Coordination } from './coordination.ts'
import { postToPeer } from './peer-post.ts'

/** How long a follower waits for the leader's answer. */
const LEADER_CALL_TIMEOUT_MS = 5000

export interface LeaderCallsOptions {
  /** The cluster's peer key. */
  readonly key: string
  /** The current coordination (late-bound: the router joins after it listens). */
  readonly coordination: () => Coordination
  /** This router's own autoscaler: what it does with an expiry. */
  readonly expireHere: (serviceId: string, instanceId: string) => boolean
}

export class LeaderCalls {
  readonly #o: LeaderCallsOptions
  readonly #agent = new Agent({ keepAliveTimeout: 10_000, connections: 4 })

  constructor(options: LeaderCallsOptions) {
    this.#o = options
  }

  /**
   * Expires an instance: false when the leader knows no such instance. A follower fails with a
   * 503 when there is no leader to ask or it does not answer, and records nothing then.
   */
  async expire(serviceId: string, instanceId: string): Promise<boolean> {
    const coordination = this.#o.coordination()
    if (coordination.isLeader()) return this.expireAsLeader(serviceId, instanceId)
    const leaderId = coordination.leaderId()
    const leader = coordination.members().find((m) => m.routerId === leaderId)
    if (leader === undefined) throw unavailable(serviceId, instanceId, 'no leader is known right now')
    let status: number
    try {
      const res = await postToPeer({ url: leader.url, what: 'expire', key: this.#o.key, body: JSON.stringify({ serviceId, instanceId, from: coordination.routerId }), timeoutMs: LEADER_CALL_TIMEOUT_MS, dispatcher: this.#agent })
      await res.body.dump()
      status = res.statusCode
    } catch (err) {
      throw unavailable(serviceId, instanceId, `the leader did not answer (${(err as Error).message})`)
    }
    if (status === 404) return false
    if (status !== 200) throw unavailable(serviceId, instanceId, `the leader answered ${status}`)
    // (An instance this router has not seen yet is the leader's business alone.)
    this.#o.expireHere(serviceId, instanceId)
    return true
  }

  /**
   * The leader takes an expiry (its own caller's, or a follower's): records it, and tells every
   * other router, best effort (one that cannot be told hears nothing, as before). `from`: the
   * router that asked, which records it itself.
   */
  expireAsLeader(serviceId: string, instanceId: string, from?: string): boolean {
    if (!this.#o.expireHere(serviceId, instanceId)) return false
    const coordination = this.#o.coordination()
    const body = JSON.stringify({ serviceId, instanceId, note: true })
    for (const member of coordination.members()) {
      if (member.routerId === coordination.routerId || member.routerId === from) continue
      void postToPeer({ url: member.url, what: 'expire', key: this.#o.key, body, timeoutMs: LEADER_CALL_TIMEOUT_MS, dispatcher: this.#agent })
        .then((res) => res.body.dump())
        .catch(() => undefined)
    }
    return true
  }

  async close(): Promise<void> {
    await this.#agent.close()
  }
}

function unavailable(serviceId: string, instanceId: string, why: string): MaitreError {
  return new MaitreError('MAITRE_CLUSTER_UNAVAILABLE', `The instance could not be expired: only the cluster's leader replaces instances, and ${why}; try again`, {
    details: { 'service-id': serviceId, 'instance-id': instanceId },
    headers: { 'retry-after': '1' },
  })
}
