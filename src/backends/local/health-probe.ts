/** One HTTP health check of an instance, reporting what Waiter's deployment-error rules need. */
import { Agent, request } from 'undici'
import { ROUTER_RESOURCE_ERRORS } from '../../errors.ts'

export interface ProbeResult {
  readonly ok: boolean
  readonly status: number | undefined
  readonly connected: boolean
  readonly responded: boolean
  readonly timedOut: boolean
  /**
   * The check could not be made for want of the router's own resources (file descriptors,
   * buffers, memory): it says nothing of the instance, whose state stays as it was.
   */
  readonly inconclusive: boolean
}


export interface ProbeTarget {
  readonly url: string
  readonly authorization: string | undefined
  /** The instance speaks HTTP/2 over cleartext (health-check-proto h2c): prior knowledge, no upgrade. */
  readonly h2c?: boolean
}

export class HealthProber {
  readonly #agent: Agent
  readonly #h2c: Agent
  readonly #timeoutMs: number

  constructor(timeoutMs: number) {
    this.#timeoutMs = timeoutMs
    // Instances' own certificates (health-check-proto https, h2) are not checked against a CA: see Forwarder.
    // One connection per instance (the Agent then makes a Client, not a Pool, per origin): checks
    // of an instance come one after another, and an instance that closes the connection after
    // each answer (busybox httpd, HTTP/1.0 servers) costs a new dispatcher per check — a Pool with
    // its 16 KB queue took about a quarter more CPU per check (bench/health-probes.ts).
    const options = { connect: { timeout: timeoutMs, rejectUnauthorized: false }, keepAliveTimeout: 30_000, headersTimeout: timeoutMs, bodyTimeout: timeoutMs, connections: 1 }
    this.#agent = new Agent({ ...options, allowH2: true })
    this.#h2c = new Agent({ ...options, allowH2: true, useH2c: true } as Agent.Options)
  }

  async probe(target: ProbeTarget): Promise<ProbeResult> {
    const headers: Record<string, string> = { 'x-waiter-request-type': 'health-check', 'user-agent': 'maitre-health-check' }
    if (target.authorization !== undefined) headers['authorization'] = target.authorization
    try {
      const res = await request(target.url, { dispatcher: target.h2c === true ? this.#h2c : this.#agent, headers, signal: AbortSignal.timeout(this.#timeoutMs * 2) })
      await res.body.dump()
      const ok = res.statusCode >= 200 && res.statusCode < 300
      return { ok, status: res.statusCode, connected: true, responded: true, timedOut: false, inconclusive: false }
    } catch (err) {
      const code = (err as { code?: string }).code ?? ''
      if (ROUTER_RESOURCE_ERRORS.has(code) || ROUTER_RESOURCE_ERRORS.has((err as { cause?: { code?: string } }).cause?.code ?? '')) {
        return { ok: false, status: undefined, connected: false, responded: false, timedOut: false, inconclusive: true }
      }
      const refused = code === 'ECONNREFUSED' || code === 'UND_ERR_CONNECT_TIMEOUT' || code === 'ECONNRESET_BEFORE_CONNECT'
      const timedOut = code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT' || (err as Error).name === 'TimeoutError'
      return { ok: false, status: undefined, connected: !refused, responded: false, timedOut, inconclusive: false }
    }
  }

  async close(): Promise<void> {
    await Promise.all([this.#agent.close(), this.#h2c.close()])
  }
}
