/** Waiter's per-instance operations: kill, expire, and reading an instance's sandbox logs. */
import { createReadStream } from 'node:fs'
import { readdir, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { MaitreError } from '../errors.ts'
import type { Backend } from '../backends/backend.ts'
import type { InstanceTracker } from '../backends/tracker.ts'
import type { Autoscaler } from '../scaler/autoscaler.ts'
import { SERVER_HEADER } from '../http/error-response.ts'
import { methodNotAllowed, queryFlag, sendJson, type AdminRequest } from './http.ts'

export interface InstanceApiDeps {
  readonly backend: Backend
  readonly tracker: InstanceTracker
  readonly autoscaler: Autoscaler
  /** Expires an instance (in cluster mode the leader acts on it); false when no such instance is known. */
  readonly expireInstance: (serviceId: string, instanceId: string) => Promise<boolean>
}

function notFound(serviceId: string, instanceId: string): MaitreError {
  return new MaitreError('MAITRE_NOT_FOUND', `Instance ${instanceId} of service ${serviceId} not found`, { details: { 'service-id': serviceId, 'instance-id': instanceId } })
}

/** POST /apps/{id}/instance/{iid}/kill and /expire. */
export async function handleInstanceSignal(r: AdminRequest, serviceId: string, instanceId: string, signal: 'kill' | 'expire', deps: InstanceApiDeps): Promise<void> {
  if (r.req.method !== 'POST') throw methodNotAllowed(r.req.method, ['POST'])
  if (signal === 'expire') {
    if (!(await deps.expireInstance(serviceId, instanceId))) throw notFound(serviceId, instanceId)
    return sendJson(r.res, 200, { 'signal-response': { message: `expire successfully sent to ${instanceId}`, success: true } }, r.cid)
  }
  // Waiter's ?force=true: SIGKILL (a pod deleted with no grace period), not SIGTERM and a grace period.
  const force = queryFlag(r.url, 'force')
  // An operator's kill happens even if requests are in flight; locking first keeps new ones off it.
  const lockedHere = deps.tracker.lockForOperatorKill(serviceId, instanceId)
  let killed = false
  try {
    killed = await deps.backend.killInstance(serviceId, instanceId, { force })
  } finally {
    // A kill that did not happen (no such instance, or the backend failed: a Mesos follower
    // whose leader is away) leaves the instance serving, not locked out of rotation for good.
    if (!killed && lockedHere) deps.tracker.unlock(serviceId, instanceId)
  }
  if (!killed) throw notFound(serviceId, instanceId)
  sendJson(r.res, 200, { 'signal-response': { message: `${force ? 'force-kill' : 'soft-kill'} successfully sent to ${instanceId}`, success: true } }, r.cid)
}

function logDirectoryOf(backend: Backend, serviceId: string, instanceId: string): string | undefined {
  const state = backend.state(serviceId)
  const all = [...(state?.instances ?? []), ...(state?.failed ?? []), ...(state?.killed ?? [])]
  return all.find((i) => i.id === instanceId)?.logDirectory
}

/** GET /apps/{id}/logs?instance-id=I lists the sandbox; &file=NAME returns one file. */
export async function handleLogs(r: AdminRequest, serviceId: string, deps: InstanceApiDeps): Promise<void> {
  if (r.req.method !== 'GET') throw methodNotAllowed(r.req.method, ['GET'])
  const instanceId = r.url.searchParams.get('instance-id')
  if (instanceId === null || instanceId === '') {
    throw new MaitreError('MAITRE_BAD_REQUEST', 'Missing instance-id query parameter', { details: { field: 'instance-id' } })
  }
  const dir = logDirectoryOf(deps.backend, serviceId, instanceId)
  if (dir === undefined) throw notFound(serviceId, instanceId)
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => [])
  const file = r.url.searchParams.get('file')
  if (file !== null) {
    // Only a name the listing shows: no path can reach outside the sandbox.
    if (!entries.some((e) => e.isFile() && e.name === file)) {
      throw new MaitreError('MAITRE_NOT_FOUND', `No file ${file} in the sandbox of ${instanceId}`, { details: { file } })
    }
    r.res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8', 'x-cid': r.cid, server: SERVER_HEADER })
    createReadStream(join(dir, file)).on('error', () => r.res.destroy()).pipe(r.res)
    return
  }
  const base = `/apps/${encodeURIComponent(serviceId)}/logs?instance-id=${encodeURIComponent(instanceId)}`
  const listing = await Promise.all(
    entries.map(async (e) => {
      const info = await stat(join(dir, e.name)).catch(() => undefined)
      return e.isFile()
        ? { name: e.name, size: info?.size ?? 0, type: 'file', url: `${base}&file=${encodeURIComponent(e.name)}` }
        : { name: e.name, size: info?.size ?? 0, type: 'directory', path: join(dir, e.name) }
    }),
  )
  listing.sort((a, b) => a.name.localeCompare(b.name))
  sendJson(r.res, 200, listing, r.cid)
}
