/**
 * Tells the other routers of requests to adaptive versions that reached this one, so that every
 * router's keep-alive learns from the fleet's traffic, not from the share its load balancer sent
 * it: the leader lets versions go and pre-warms them on what every router saw, and a router that
 * becomes leader has the same history. (Which requests are told is the keep-alive's choice:
 * PEER_NOTE_GAP_MS, at most one per version every 30 s and every cold start.)
 *
 * Notes are gathered for FLUSH_MS and posted together to every other live router
 * (`POST /maitre-peer/arrivals`, peer-key authenticated), each saying how long ago its request
 * arrived. Best effort: a peer that does not answer misses those notes (its history is one idle
 * time short), and nothing is sent again. Bounded: at most MAX_PENDING notes wait for a flush;
 * more are dropped and counted.
 */
import { Agent } from 'undici'
import type { Logger } from '../log.ts'
import type { Member } from './coordination.ts'
import { postToPeerOk } from './peer-post.ts'

/** How long notes are gathered before they are sent. */
export const FLUSH_MS = 100
/** Notes waiting for a flush, at most. */
export const MAX_PENDING = 1000
/** One post carries notes up to this many bytes (under the peer API's 256 KB body bound). */
export const MAX_POST_BYTES = 192 * 1024
/** How long a post may take. */
const POST_TIMEOUT_MS = 2000

export type ArrivalNoteOutcome = 'sent' | 'failed' | 'dropped'

export interface ArrivalNotesOptions {
  readonly routerId: string
  /** The cluster's peer key. */
  readonly key: string
  /** The live routers, this one included. */
  readonly members: () => readonly Member[]
  readonly log: Logger
  readonly flushMs?: number
  /** Told of each note's fate, per peer (for metrics). */
  readonly onOutcome?: (outcome: ArrivalNoteOutcome, count: number) => void
}

/** What the router a request reached saw when it arrived (the keep-alive's PeerArrival, less the delay this module adds). */
export interface ToldArrival {
  readonly running: boolean
  readonly warm: boolean
  readonly idleForMs: number | undefined
}

interface Pending {
  readonly json: string
  readonly at: number
}

export class ArrivalNotes {
  readonly #o: ArrivalNotesOptions
  readonly #agent = new Agent({ keepAliveTimeout: 10_000, connections: 4 })
  #pending: Pending[] = []
  #timer: NodeJS.Timeout | undefined
  #closed = false

  constructor(options: ArrivalNotesOptions) {
    this.#o = options
  }

  /** A request to the version arrived here: tell the peers at the next flush. */
  tell(serviceId: string, arrival: ToldArrival): void {
    if (this.#closed) return
    if (this.#pending.length >= MAX_PENDING) {
      this.#o.onOutcome?.('dropped', 1)
      return
    }
    const { running, warm, idleForMs } = arrival
    // A note names the version: the routers told start it, if ever, from their own record of it.
    const json = JSON.stringify({ serviceId, running, warm, ...(idleForMs === undefined ? {} : { idleForMs: Math.round(idleForMs) }) })
    this.#pending.push({ json, at: performance.now() })
    this.#timer ??= setTimeout(() => this.#flush(), this.#o.flushMs ?? FLUSH_MS).unref()
  }

  #flush(): void {
    this.#timer = undefined
    const pending = this.#pending
    this.#pending = []
    const peers = this.#o.members().filter((m) => m.routerId !== this.#o.routerId)
    if (peers.length === 0 || pending.length === 0) return
    const now = performance.now()
    for (const body of batches(this.#o.routerId, pending, now)) {
      for (const peer of peers) void this.#post(peer, body.text, body.count)
    }
  }

  async #post(peer: Member, body: string, count: number): Promise<void> {
    try {
      await postToPeerOk({ url: peer.url, what: 'arrivals', key: this.#o.key, body, timeoutMs: POST_TIMEOUT_MS, dispatcher: this.#agent })
      this.#o.onOutcome?.('sent', count)
    } catch (err) {
      this.#o.onOutcome?.('failed', count)
      this.#o.log.debug({ err, peer: peer.routerId, notes: count }, 'a peer did not take the requests this router told it of: its keep-alive history misses them')
    }
  }

  /** Stops telling; what waits is dropped (a router shutting down). */
  async close(): Promise<void> {
    this.#closed = true
    if (this.#timer !== undefined) clearTimeout(this.#timer)
    this.#timer = undefined
    this.#pending = []
    await this.#agent.close()
  }
}

/** The notes as posts of at most MAX_POST_BYTES, each note saying how long ago its request arrived. */
function* batches(from: string, pending: readonly Pending[], now: number): Iterable<{ text: string; count: number }> {
  const head = `{"from":${JSON.stringify(from)},"notes":[`
  let parts: string[] = []
  let size = head.length + 2
  for (const note of pending) {
    // `{"agoMs":N,` then the note's own fields.
    const part = `{"agoMs":${Math.max(0, Math.round(now - note.at))},${note.json.slice(1)}`
    const bytes = Buffer.byteLength(part)
    if (parts.length > 0 && size + bytes + 1 > MAX_POST_BYTES) {
      yield { text: `${head}${parts.join(',')}]}`, count: parts.length }
      parts = []
      size = head.length + 2
    }
    parts.push(part)
    size += bytes + 1
  }
  if (parts.length > 0) yield { text: `${head}${parts.join(',')}]}`, count: parts.length }
}
