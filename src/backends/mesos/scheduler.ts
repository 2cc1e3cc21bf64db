/**
 * A framework's connection to the Mesos master over the v1 scheduler HTTP API: one long-lived
 * SUBSCRIBE stream (RecordIO events) and calls on separate requests carrying its Mesos-Stream-Id.
 *
 * - The leader is found through the masters listed: a non-leading master answers 307 with a
 *   protocol-relative Location (`//host:port/path`, the scheme is ours to add); "no leader" is 503,
 *   and the next master is tried.
 * - A stream that goes silent for five heartbeat intervals is dropped and subscribed again, as is
 *   one the master ends or fails; attempts back off exponentially up to 15 s.
 * - The framework id (the caller persists it) goes into every re-subscription, so the master hands
 *   the framework its running tasks back instead of tearing it down. An ERROR event that says the
 *   framework is gone forgets the id: the next subscription starts a new framework.
 */
import { Agent, request } from 'undici'
import { settlesWithin, type Clock } from '../../clock.ts'
import type { Logger } from '../../log.ts'
import type { Call, Event, FrameworkInfo } from './protocol.ts'
import { RecordIoParser } from './recordio.ts'

export interface SchedulerOptions {
  /** Master URLs (http://host:5050); the leader among them is found by redirect. */
  readonly masters: readonly string[]
  readonly frameworkInfo: Omit<FrameworkInfo, 'id'>
  /** The id of an earlier subscription, to fail over to; undefined subscribes as a new framework. */
  readonly frameworkId: string | undefined
  readonly credentials: { readonly principal: string; readonly secret: string } | undefined
  /** Calls (and a subscription's response headers) must be answered within this long. */
  readonly requestTimeoutMs: number
  readonly clock: Clock
  readonly log: Logger
  /** Every event, SUBSCRIBED first on each subscription, in the order the master sent them. */
  readonly onEvent: (event: Event) => void
  /** The stream ended (events may have been lost: the master re-sends what matters after the next SUBSCRIBED). */
  readonly onDisconnected: () => void
}

export class MesosCallError extends Error {
  override name = 'MesosCallError'
  readonly status: number
  constructor(call: string, status: number, text: string) {
    super(`Mesos ${call}: ${status} ${text.slice(0, 200)}`)
    this.status = status
  }
}

const MAX_BACKOFF_MS = 15_000
const FIRST_BACKOFF_MS = 250
/** Heartbeat intervals without a record before the stream counts as dead (the reference's ~5). */
const MISSED_HEARTBEATS = 5
const DEFAULT_HEARTBEAT_SECONDS = 15
/** A stream up this long resets the subscription back-off. */
const STREAM_LASTED_MS = 15_000
/** Redirects followed in a row before a master list is tried afresh. */
const MAX_REDIRECTS = 5

export class MesosScheduler {
  readonly #o: SchedulerOptions
  readonly #agent = new Agent({ keepAliveTimeout: 10_000, connections: 8 })
  #frameworkId: string | undefined
  #streamId: string | undefined
  /** The master that answered the current subscription: calls go there. */
  #leader: string | undefined
  #masterIndex = 0
  #closed = false
  #stream: AbortController | undefined
  #loop: Promise<void> | undefined
  #wake: (() => void) | undefined
  /** The master said another scheduler took this framework over. */
  #failedOver = false
  /** A SUBSCRIBE as a new framework is under way and its SUBSCRIBED (the id) not read yet. */
  #subscribingAsNew = false
  /** Woken when #subscribingAsNew turns false. */
  readonly #subscribedAsNewWaiters = new Set<() => void>()
  /** The stream of the subscription that registered this framework as new: the only one that may tear it down. */
  #registeredOn: string | undefined
  /** No new subscription is started (close() under way): the current one, if any, stays. */
  #holding = false
  /** A TEARDOWN under way (the caller waits for it rather than sending another). */
  #tearingDown: Promise<boolean> | undefined

  constructor(options: SchedulerOptions) {
    if (options.masters.length === 0) throw new Error('no Mesos master to subscribe to')
    this.#o = options
    this.#frameworkId = options.frameworkId
  }

  get frameworkId(): string | undefined {
    return this.#frameworkId
  }

  /** The master serving the current subscription (the leader, as far as this framework knows). */
  get leader(): string | undefined {
    return this.#leader
  }

  /** The Authorization header the master wants (HTTP basic), for the calls made outside this class (GET /master/state). */
  authorizationHeaders(): Record<string, string> {
    const credentials = this.#o.credentials
    return credentials === undefined ? {} : { authorization: `Basic ${Buffer.from(`${credentials.principal}:${credentials.secret}`).toString('base64')}` }
  }

  /** A subscription is up: calls (TEARDOWN among them) can be made on it. */
  get subscribed(): boolean {
    return this.#streamId !== undefined
  }

  /**
   * Waits (up to the request timeout) for a SUBSCRIBE as a new framework under way to be
   * answered: the master may already have registered it, and only its SUBSCRIBED tells the id.
   */
  async newSubscriptionSettled(): Promise<void> {
    if (!this.#subscribingAsNew) return
    await new Promise<void>((resolve) => {
      const done = (): void => {
        cancel()
        this.#subscribedAsNewWaiters.delete(done)
        resolve()
      }
      const cancel = this.#o.clock.setTimeout(done, this.#o.requestTimeoutMs)
      this.#subscribedAsNewWaiters.add(done)
    })
  }

  /** Starts no new subscription from now on (the current one stays until close()): a router on its way out must not take a framework back. */
  hold(): void {
    this.#holding = true
  }

  /** A TEARDOWN under way, if any. */
  get tearingDown(): Promise<boolean> | undefined {
    return this.#tearingDown
  }

  /**
   * Whether the framework subscribed as was registered, as a new one, by the current
   * subscription: a framework only this router has ever driven. One subscribed as again since
   * (taken back after another scheduler failed it over, say) may be another router's by now.
   */
  get registeredByThisSubscription(): boolean {
    return this.#streamId !== undefined && this.#streamId === this.#registeredOn
  }

  /**
   * Removes the framework subscribed as (TEARDOWN: the master kills its tasks and forgets it),
   * then subscribes as `next` (an id the caller knows is the one to run as) or, undefined,
   * subscribes no more (close() is still the caller's to call). For a framework that ran nothing
   * and that no one will ever subscribe as again, which the master would otherwise keep,
   * disconnected, for its whole failover timeout. Returns whether the master took the TEARDOWN.
   */
  tearDown(next: string | undefined): Promise<boolean> {
    this.#tearingDown ??= this.#tearDown(next).finally(() => {
      this.#tearingDown = undefined
    })
    return this.#tearingDown
  }

  async #tearDown(next: string | undefined): Promise<boolean> {
    const frameworkId = this.#frameworkId
    try {
      await this.call({ type: 'TEARDOWN' })
      return true
    } catch (err) {
      this.#o.log.warn({ err, frameworkId }, 'mesos TEARDOWN of a framework that ran nothing failed: the master may keep it until its failover timeout')
      return false
    } finally {
      if (next !== undefined) this.#frameworkId = next
      else this.#closed = true
      // The next subscription (if any) goes as `next`, at once.
      this.#stream?.abort()
      this.#wake?.()
    }
  }

  start(): void {
    this.#loop ??= this.#run()
  }

  /** Drops the current stream (a watchdog, or the caller's own judgement); the loop subscribes again. */
  reconnect(): void {
    this.#stream?.abort()
  }

  /** Sends a call on the current subscription; rejects with MesosCallError if the master refuses it. */
  async call(call: Omit<Call, 'framework_id'>): Promise<void> {
    const streamId = this.#streamId
    const frameworkId = this.#frameworkId
    const leader = this.#leader
    if (streamId === undefined || frameworkId === undefined || leader === undefined) throw new MesosCallError(call.type, 403, 'not subscribed')
    let target = leader
    for (let redirects = 0; ; redirects += 1) {
      const res = await request(`${target}/api/v1/scheduler`, {
        dispatcher: this.#agent,
        method: 'POST',
        headers: { ...this.#headers(), 'mesos-stream-id': streamId },
        body: JSON.stringify({ ...call, framework_id: { value: frameworkId } }),
        headersTimeout: this.#o.requestTimeoutMs,
        bodyTimeout: this.#o.requestTimeoutMs,
      })
      const text = await res.body.text()
      if (res.statusCode === 202 || res.statusCode === 200) return
      const location = redirectTarget(target, res.headers['location'])
      if (res.statusCode === 307 && location !== undefined && redirects < MAX_REDIRECTS) {
        target = location
        continue
      }
      // The master no longer knows this stream: a new subscription is the way back. (A 403 for
      // want of authorization is not that, and subscribing again would not mend it.)
      if (res.statusCode === 403 && /not subscribed/i.test(text) && this.#streamId === streamId) this.reconnect()
      throw new MesosCallError(call.type, res.statusCode, text)
    }
  }

  async close(): Promise<void> {
    this.#closed = true
    this.#stream?.abort()
    this.#wake?.()
    await this.#loop
    // Calls still under way (a KILL, a TEARDOWN given up on) get one request timeout, then are cut.
    if (!(await settlesWithin(this.#o.clock, this.#agent.close(), this.#o.requestTimeoutMs))) await this.#agent.destroy().catch(() => undefined)
  }

  #headers(): Record<string, string> {
    return { 'content-type': 'application/json', accept: 'application/json', ...this.authorizationHeaders() }
  }

  async #run(): Promise<void> {
    let backoff = FIRST_BACKOFF_MS
    while (!this.#closed && !this.#holding) {
      let subscribed = false
      const startedAt = this.#o.clock.now()
      try {
        subscribed = await this.#subscribeOnce()
      } catch (err) {
        if (!this.#closed) this.#o.log.warn({ err, master: this.#leader ?? this.#o.masters[this.#masterIndex] }, 'mesos subscription failed')
      }
      if (this.#streamId !== undefined) {
        this.#streamId = undefined
        this.#o.onDisconnected()
      }
      if (this.#closed || this.#holding) break
      // A stream that lasted is a fresh start; one dropped at once (a master that keeps failing
      // right after SUBSCRIBED) keeps backing off.
      if (subscribed && this.#o.clock.now() - startedAt >= STREAM_LASTED_MS) backoff = FIRST_BACKOFF_MS
      if (this.#failedOver) {
        // Another scheduler subscribed with this framework id: taking it back at once would only
        // make the two steal the stream from each other.
        this.#failedOver = false
        backoff = MAX_BACKOFF_MS
      }
      await new Promise<void>((resolve) => {
        const cancel = this.#o.clock.setTimeout(resolve, backoff)
        this.#wake = () => {
          cancel()
          resolve()
        }
      })
      this.#wake = undefined
      backoff = Math.min(MAX_BACKOFF_MS, backoff * 2)
    }
  }

  /** One subscription, from the request to the stream's end. Returns whether it got as far as SUBSCRIBED. */
  async #subscribeOnce(): Promise<boolean> {
    const abort = new AbortController()
    this.#stream = abort
    const target = this.#leader ?? (this.#o.masters[this.#masterIndex] as string)
    const frameworkId = this.#frameworkId
    if (frameworkId === undefined) this.#subscribingAsNew = true
    try {
      return await this.#subscribeAs(frameworkId, target, abort)
    } finally {
      this.#settleNewSubscription()
    }
  }

  #settleNewSubscription(): void {
    if (!this.#subscribingAsNew) return
    this.#subscribingAsNew = false
    for (const wake of [...this.#subscribedAsNewWaiters]) wake()
  }

  async #subscribeAs(frameworkId: string | undefined, target: string, abort: AbortController): Promise<boolean> {
    const body = JSON.stringify({
      type: 'SUBSCRIBE',
      ...(frameworkId === undefined ? {} : { framework_id: { value: frameworkId } }),
      subscribe: { framework_info: { ...this.#o.frameworkInfo, ...(frameworkId === undefined ? {} : { id: { value: frameworkId } }) } },
    })
    for (let redirects = 0; ; redirects += 1) {
      let res: Awaited<ReturnType<typeof request>>
      try {
        res = await request(`${target}/api/v1/scheduler`, {
          dispatcher: this.#agent,
          method: 'POST',
          headers: this.#headers(),
          body,
          headersTimeout: this.#o.requestTimeoutMs,
          // The stream's silence is the heartbeat watchdog's business, not a body timeout's.
          bodyTimeout: 0,
          signal: abort.signal,
        })
      } catch (err) {
        this.#nextMaster()
        throw err
      }
      const location = redirectTarget(target, res.headers['location'])
      if (res.statusCode === 307 && location !== undefined && redirects < MAX_REDIRECTS) {
        await res.body.dump()
        target = location
        continue
      }
      if (res.statusCode !== 200) {
        const text = await res.body.text().catch(() => '')
        // No leader known there (503) or a master that is not one: ask the next.
        this.#nextMaster()
        throw new MesosCallError('SUBSCRIBE', res.statusCode, text)
      }
      const streamId = res.headers['mesos-stream-id']
      if (typeof streamId !== 'string' || streamId === '') {
        res.body.destroy()
        throw new MesosCallError('SUBSCRIBE', 200, 'no Mesos-Stream-Id header')
      }
      this.#leader = target
      return await this.#read(res.body, streamId, abort, frameworkId)
    }
  }

  #nextMaster(): void {
    this.#leader = undefined
    this.#masterIndex = (this.#masterIndex + 1) % this.#o.masters.length
  }

  /** Reads the event stream until it ends, fails or goes silent. */
  async #read(body: AsyncIterable<Buffer> & { destroy(err?: Error): unknown }, streamId: string, abort: AbortController, askedAs: string | undefined): Promise<boolean> {
    const parser = new RecordIoParser()
    let subscribed = false
    // The framework this subscription runs as: the one asked for, or the new one the master names.
    let ranAs = askedAs
    let silenceMs = DEFAULT_HEARTBEAT_SECONDS * 1000 * MISSED_HEARTBEATS
    let cancelWatchdog: (() => void) | undefined
    const watch = (): void => {
      cancelWatchdog?.()
      cancelWatchdog = this.#o.clock.setTimeout(() => {
        this.#o.log.warn({ master: this.#leader, silentForMs: silenceMs }, 'mesos stream silent for five heartbeats; subscribing again')
        abort.abort()
      }, silenceMs)
    }
    watch()
    try {
      for await (const chunk of body) {
        for (const record of parser.push(chunk)) {
          watch()
          let event: Event
          try {
            event = JSON.parse(record) as Event
            if (typeof event?.type !== 'string') throw new Error('no type')
          } catch (err) {
            // One unreadable record is skipped; dropping the stream would only bring it back.
            this.#o.log.error({ err, record: record.slice(0, 200) }, 'a mesos event that is not JSON with a type; skipped')
            continue
          }
          if (!subscribed) {
            if (event.type === 'ERROR') throw this.#refused(event.error?.message ?? 'no message', ranAs)
            if (event.type !== 'SUBSCRIBED' || event.subscribed === undefined) throw new Error(`the stream began with ${event.type}, not SUBSCRIBED`)
            subscribed = true
            this.#frameworkId = event.subscribed.framework_id.value
            ranAs = this.#frameworkId
            this.#streamId = streamId
            if (askedAs === undefined) this.#registeredOn = streamId
            this.#settleNewSubscription()
            silenceMs = (event.subscribed.heartbeat_interval_seconds ?? DEFAULT_HEARTBEAT_SECONDS) * 1000 * MISSED_HEARTBEATS
            watch()
          } else if (event.type === 'ERROR') {
            throw this.#refused(event.error?.message ?? 'no message', ranAs)
          }
          try {
            this.#o.onEvent(event)
          } catch (err) {
            this.#o.log.error({ err, type: event.type }, 'a mesos event could not be handled; skipped')
          }
        }
      }
    } catch (err) {
      // An abort is the watchdog's or close()'s doing, already reported.
      if (!abort.signal.aborted) throw err
    } finally {
      cancelWatchdog?.()
      body.destroy()
    }
    return subscribed
  }

  /** The master ended the subscription with an ERROR; a framework it removed starts over as a new one. */
  #refused(message: string, ranAs: string | undefined): Error {
    if (/failed over/i.test(message)) {
      this.#o.log.error({ frameworkId: this.#frameworkId, message }, 'another scheduler subscribed as this framework: backing off before taking it back')
      this.#failedOver = true
    } else if (/framework.*(removed|torn down|completed)/i.test(message) && this.#frameworkId === ranAs) {
      // (Only the id that subscription ran as: one the caller has moved on to since stays.)
      this.#o.log.error({ frameworkId: this.#frameworkId, message }, 'the mesos master removed this framework: subscribing as a new one (its tasks are gone)')
      this.#frameworkId = undefined
    }
    return new Error(`mesos master sent ERROR: ${message}`)
  }
}

/** A 307's Location, made absolute: the master sends `//host:port/path`, without a scheme. */
export function redirectTarget(from: string, location: string | string[] | undefined): string | undefined {
  if (typeof location !== 'string' || location === '') return undefined
  try {
    const url = new URL(location, from)
    return url.origin
  } catch {
    return undefined
  }
}
