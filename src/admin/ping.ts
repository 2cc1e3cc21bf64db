/**
 * Waiter's /waiter-ping: resolve the request's service, start it if needed, wait for an instance
 * (up to x-waiter-timeout), health-check it, and report what happened with the service's state.
 */
import { Agent, request } from 'undici'
import { MaitreError, isMaitreError } from '../errors.ts'
import type { Principal } from '../auth/authenticator.ts'
import type { Backend } from '../backends/backend.ts'
import type { InstanceTracker } from '../backends/tracker.ts'
import type { Activator } from '../scaler/activator.ts'
import type { KeepAliveRunner } from '../scaler/keep-alive-runner.ts'
import type { Clock } from '../clock.ts'
import { MAX_TIMEOUT_MS } from '../limits.ts'
import type { LaunchSpec } from '../launch-spec.ts'
import type { Resolution, Resolver } from '../versions/resolve.ts'
import { serviceStatus } from './apps.ts'
import { sendJson, type AdminRequest } from './http.ts'
import { errorBody } from '../http/error-response.ts'
import { isDebugRequested } from '../http/debug.ts'
import { authority } from '../http/authority.ts'
import { assertHttpsOrRedirect } from '../http/https-redirect.ts'

export interface PingDeps {
  readonly resolver: Resolver
  readonly activator: Activator
  readonly tracker: InstanceTracker
  readonly backend: Backend
  readonly launchSpecOf: (resolution: Resolution) => LaunchSpec
  readonly parametersOf: (resolution: Resolution) => Readonly<Record<string, unknown>>
  readonly clock: Clock
  readonly suspensions: { get(serviceId: string): unknown }
  /** The keep-alive policy learns of each request to an adaptive version: a ping is one. */
  readonly keepAliveArrivals?: Pick<KeepAliveRunner, 'arrived'>
}

const DEFAULT_PING_TIMEOUT_MS = 300_000

/** The most of an instance's answer a ping reports: what is beyond is cut (and the answer says so). */
export const PING_BODY_LIMIT_BYTES = 64 * 1024

/** Reads a body up to `limit` bytes, then lets the rest go (the connection with it). */
async function boundedText(body: AsyncIterable<Buffer> & { destroy(): unknown }, limit: number): Promise<{ text: string; truncated: boolean }> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of body) {
    if (size + chunk.length > limit) {
      chunks.push(chunk.subarray(0, limit - size))
      body.destroy()
      return { text: Buffer.concat(chunks).toString('utf8'), truncated: true }
    }
    chunks.push(chunk)
    size += chunk.length
  }
  return { text: Buffer.concat(chunks).toString('utf8'), truncated: false }
}

function serviceState(deps: PingDeps, serviceId: string | undefined): Record<string, unknown> {
  const state = serviceId === undefined ? undefined : deps.backend.state(serviceId)
  return {
    'exists?': state !== undefined,
    'healthy?': state?.instances.some((i) => i.healthy) ?? false,
    'service-id': serviceId ?? null,
    status: serviceStatus(state),
  }
}

export async function handlePing(r: AdminRequest, who: Principal, deps: PingDeps): Promise<void> {
  let resolution: Resolution
  try {
    resolution = (await deps.resolver.resolve(r.req.headers, who)).resolution
  } catch (err) {
    if (!isMaitreError(err)) throw err
    // A token in maintenance: Waiter's ping answers 200, its ping-response the 503 waiter.Maintenance
    // any request to the token gets, and the version Inactive (none is named, none is started).
    if (err.code === 'MAITRE_MAINTENANCE') {
      return sendJson(r.res, 200, {
        'ping-response': { result: 'received-response', status: err.status, body: errorBody(err, r.req, { cid: r.cid, principal: who.user }, 'json') },
        'service-state': serviceState(deps, undefined),
      }, r.cid)
    }
    return sendJson(r.res, 200, {
      'ping-response': { result: 'descriptor-error', status: err.status, body: errorBody(err, r.req, { cid: r.cid, principal: who.user }, 'json') },
      'service-state': serviceState(deps, undefined),
    }, r.cid)
  }
  // An https-only token is not started over plain http: Waiter's redirect, with the ping's body.
  try {
    assertHttpsOrRedirect(r.req, resolution.tokenMetadata)
  } catch (err) {
    if (!isMaitreError(err)) throw err
    return sendJson(r.res, err.status, { 'ping-response': { result: 'waiter-response', status: err.status }, 'service-state': serviceState(deps, undefined) }, r.cid, err.headers)
  }
  // A suspended version stays down: a ping does not start it (a proxied request would get 503 too).
  if (deps.suspensions.get(resolution.serviceId) !== undefined) {
    throw new MaitreError('MAITRE_SUSPENDED', 'Service has been suspended', { details: { 'service-id': resolution.serviceId } })
  }
  const header = Number.parseInt(String(r.req.headers['x-waiter-timeout'] ?? ''), 10)
  const timeoutMs = header > 0 ? Math.min(header, MAX_TIMEOUT_MS) : DEFAULT_PING_TIMEOUT_MS
  const current = resolution
  let pingResponse: Record<string, unknown>
  const deadline = deps.clock.now() + timeoutMs
  // A caller that hangs up stops waiting at once: its place in the queue goes with it.
  const aborter = new AbortController()
  r.res.once('close', () => {
    if (!r.res.writableEnded) aborter.abort()
  })
  const activation = {
    serviceId: current.serviceId,
    effective: () => deps.parametersOf(current),
    launchSpec: () => deps.launchSpecOf(current),
    remember: () => deps.resolver.remember(current),
  }
  // A ping is a request to the version, as in Waiter (where it goes through the proxy): it counts
  // in request-metrics and last-request-time, and keeps the version from looking idle.
  deps.tracker.noteRequest(current.serviceId)
  // (Unlearned, a ping that started a let-go version had its idle time missing from the history,
  // and its collection moved the idle period's start to it; nor was a pre-warm judged by it.)
  deps.keepAliveArrivals?.arrived(current, deps.parametersOf(current), activation)
  try {
    let starting = deps.activator.ensure(activation)
    while (starting !== undefined) {
      await deps.activator.bounded(current.serviceId, starting, { deadline, queueTimeoutMs: timeoutMs, signal: aborter.signal })
      starting = deps.activator.ensure(activation)
    }
    const lease = await deps.tracker.acquire(current.serviceId, { timeoutMs: Math.max(1, deadline - deps.clock.now()), queueTimeoutMs: timeoutMs, signal: aborter.signal })
    try {
      const { instance } = lease
      const spec = deps.launchSpecOf(current)
      const port = [instance.port, ...instance.extraPorts][spec.healthCheck.portIndex] ?? instance.port
      // In the health check's own protocol, as the backends check it: TLS for https and h2
      // (the instance's own certificate, not checked against a CA), HTTP/2 by prior knowledge for h2c.
      const proto = spec.healthCheck.proto
      const scheme = proto === 'https' || proto === 'h2' ? 'https' : 'http'
      const dispatcher = new Agent({ connect: { rejectUnauthorized: false }, allowH2: proto !== 'http', ...(proto === 'h2c' ? { useH2c: true } : {}) } as Agent.Options)
      try {
        const res = await request(`${scheme}://${authority(instance.host, port)}${spec.healthCheck.url}`, {
          dispatcher,
          headers: { 'x-waiter-request-type': 'health-check', 'x-cid': r.cid, authorization: spec.authorization },
          signal: AbortSignal.timeout(timeoutMs),
        })
        const { text, truncated } = await boundedText(res.body, PING_BODY_LIMIT_BYTES)
        pingResponse = {
          result: 'received-response',
          status: res.statusCode,
          headers: res.headers,
          body: text,
          ...(truncated ? { 'body-truncated': true } : {}),
          instance: { id: instance.id, host: instance.host, port: instance.port },
        }
      } finally {
        void dispatcher.close().catch(() => undefined)
      }
    } finally {
      lease.release('success')
    }
  } catch (err) {
    // The health check request itself failed: the instance's trouble, named by its error code only.
    const code = (err as { code?: string }).code
    const e = isMaitreError(err) ? err : new MaitreError('MAITRE_UPSTREAM', `Health check request to the instance failed${code === undefined ? '' : ` (${code})`}`, { cause: err })
    // maitre's own refusal, as the JSON error body it would have sent (what Waiter's ping reports).
    pingResponse = { result: e.code === 'MAITRE_QUEUE_TIMEOUT' ? 'timed-out' : 'received-response', status: e.status, body: errorBody(e, r.req, { cid: r.cid, principal: who.user, serviceId: current.serviceId }, 'json') }
  }
  const excluded = r.url.searchParams.getAll('exclude').includes('service-state')
  const debug = isDebugRequested(r.req.headers)
  sendJson(r.res, 200, {
    'ping-response': pingResponse,
    'service-description': current.core,
    'service-state': excluded ? { result: 'excluded' } : serviceState(deps, current.serviceId),
  }, r.cid, debug ? { 'x-waiter-service-id': current.serviceId } : {})
}
