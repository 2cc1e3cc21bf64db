/**
 * The calls routers of one cluster make to each other: what waits where, slot loans and kill
 * vetoes (slot-exchange.ts), and, for a backend only the leader drives, its view and the calls
 * followers ask it to make (leader-backend.ts). Only a caller with the cluster's peer key is
 * heard; a router on its own has no peers and answers 404.
 */
import { MaitreError } from '../errors.ts'
import { PEER_KEY_HEADER, PEER_PATH_PREFIX, type SlotExchange } from '../cluster/slot-exchange.ts'
import type { BackendCall, LeaderBackend } from '../cluster/leader-backend.ts'
import { firstHeader, methodNotAllowed, readJsonObject, sendJson, type AdminRequest } from './http.ts'

export type PeerExchange = Pick<SlotExchange, 'authorized' | 'receiveWants' | 'receiveOffer' | 'receiveEject' | 'receiveCollect' | 'receiveMemberQuery'>
export type BackendPeer = Pick<LeaderBackend, 'peerState' | 'peerCall'>
/** What only the leader does, asked by a follower (leader-calls.ts). */
export interface LeaderPeer {
  isLeader(): boolean
  /** False when no such instance is known here. `from`: the router that asked. */
  expire(serviceId: string, instanceId: string, from: string | undefined): boolean
  /** The leader took an expiry: recorded here too, for should this router lead next. */
  noteExpiry(serviceId: string, instanceId: string): void
}

/** The shared stores, for a peer that wrote one of their keys (peer-sync.ts). */
export interface StoresPeer {
  /** Reads the key from etcd now; false when no store has that name. */
  refresh(store: string, key: string): Promise<boolean>
}

/** What another router told of requests to adaptive versions that reached it (arrival-notes.ts). */
export interface ArrivalsPeer {
  heard(serviceId: string, arrival: { readonly agoMs: number; readonly running: boolean; readonly warm: boolean; readonly idleForMs: number | undefined }): void
}

/** How old a told request may be: notes wait 100 ms to be sent, and a post 2 s at most. */
const MAX_NOTE_AGE_MS = 60_000
/** The longest idle time a note may tell of (a histogram bins anything past four hours together). */
const MAX_IDLE_FOR_MS = 365 * 24 * 3_600_000

/** The longest store key a peer may name (token names and version ids are far shorter). */
const MAX_KEY_LENGTH = 1024

/** Whether a string is whole Unicode (a lone surrogate has no UTF-8 form: no store key holds one). */
function wellFormed(text: string): boolean {
  try {
    encodeURIComponent(text)
    return true
  } catch {
    return false
  }
}

const BACKEND_CALLS = new Set<string>(['ensure', 'scale', 'kill', 'delete'])

const ID = /^[\x21-\x7e]{1,253}$/

function idField(body: Record<string, unknown>, name: string, field = name): string {
  const value = body[name]
  if (typeof value !== 'string' || !ID.test(value)) {
    throw new MaitreError('MAITRE_BAD_REQUEST', `${field} must be a string of 1 to 253 printable characters`, { details: { field } })
  }
  return value
}

export async function handlePeer(r: AdminRequest, exchange: PeerExchange | undefined, backend?: BackendPeer, stores?: StoresPeer, leader?: LeaderPeer, arrivals?: ArrivalsPeer): Promise<void> {
  const { req, res, url, cid } = r
  const what = url.pathname.slice(PEER_PATH_PREFIX.length)
  if (exchange === undefined) throw new MaitreError('MAITRE_NOT_FOUND', 'This router is not in a cluster: it has no peers', { details: { path: url.pathname } })
  if (!exchange.authorized(firstHeader(req.headers[PEER_KEY_HEADER]))) {
    throw new MaitreError('MAITRE_UNAUTHORIZED', `Peer calls need the cluster's key in ${PEER_KEY_HEADER}`, { details: { header: PEER_KEY_HEADER } })
  }
  if (what.startsWith('backend/')) return handleBackendPeer(r, what.slice('backend/'.length), backend)
  if (what !== 'wants' && what !== 'offer' && what !== 'eject' && what !== 'member' && what !== 'collect' && what !== 'refresh' && what !== 'expire' && what !== 'arrivals') throw new MaitreError('MAITRE_NOT_FOUND', 'Not found', { details: { path: url.pathname } })
  if (req.method !== 'POST') throw methodNotAllowed(req.method, ['POST'])
  const body = await readJsonObject(req)
  switch (what) {
    case 'wants': {
      const from = idField(body, 'from')
      const wants = body['wants']
      if (typeof wants !== 'object' || wants === null || Array.isArray(wants)) {
        throw new MaitreError('MAITRE_BAD_REQUEST', 'wants must be an object of version id → requests waiting', { details: { field: 'wants' } })
      }
      const counts: Record<string, number> = {}
      for (const [serviceId, n] of Object.entries(wants)) {
        if (!ID.test(serviceId) || !Number.isSafeInteger(n) || (n as number) < 0) {
          throw new MaitreError('MAITRE_BAD_REQUEST', 'each want must be a version id with a whole number of requests waiting, 0 or more', { details: { field: `wants.${serviceId.slice(0, 100)}` } })
        }
        counts[serviceId] = n as number
      }
      exchange.receiveWants(from, counts)
      return sendJson(res, 200, { accepted: Object.keys(counts).length }, cid)
    }
    case 'offer': {
      const taken = exchange.receiveOffer(idField(body, 'serviceId'), idField(body, 'instanceId'), idField(body, 'from'))
      if (taken === undefined) return sendJson(res, 409, { taken: false, reason: 'nothing waits here for that instance' }, cid)
      if (taken === 'instance-declined') return sendJson(res, 409, { taken: false, reason: 'that instance takes no request here now', 'instance-declined': true }, cid)
      // Answered when the request that took the slot lets go of it: the lender holds it until
      // then. If the lender goes first (the connection breaks), the request counts here instead.
      let answered = false
      res.once('close', () => {
        if (!answered) taken.lenderGone()
      })
      // (Its connection may have closed while the body was read, before the listener was there.)
      if (res.destroyed) taken.lenderGone()
      const outcome = await taken.outcome
      answered = true
      return sendJson(res, 200, { taken: true, outcome }, cid)
    }
    case 'refresh': {
      // A peer wrote this key and answers its caller once every router has read it.
      const store = body['store']
      const key = body['key']
      if (typeof store !== 'string' || store === '') throw new MaitreError('MAITRE_BAD_REQUEST', 'store must name a shared store', { details: { field: 'store' } })
      if (typeof key !== 'string' || key === '' || key.length > MAX_KEY_LENGTH || !wellFormed(key)) {
        throw new MaitreError('MAITRE_BAD_REQUEST', `key must be a string of 1 to ${MAX_KEY_LENGTH} characters, without lone surrogates`, { details: { field: 'key' } })
      }
      if (stores === undefined || !(await stores.refresh(store, key))) {
        throw new MaitreError('MAITRE_BAD_REQUEST', 'store must name a shared store: tokens, services, overrides or suspended', { details: { field: 'store', value: store.slice(0, 100) } })
      }
      return sendJson(res, 200, { refreshed: true, store, key }, cid)
    }
    case 'arrivals': {
      if (arrivals === undefined) throw new MaitreError('MAITRE_NOT_FOUND', 'This router’s keep-alive hears no other router', { details: { path: url.pathname } })
      const heard = arrivalsOf(body)
      // Every note checked before any is taken: a batch is heard whole or not at all.
      for (const { serviceId, arrival } of heard) arrivals.heard(serviceId, arrival)
      return sendJson(res, 200, { heard: heard.length }, cid)
    }
    case 'expire': {
      const serviceId = idField(body, 'serviceId')
      const instanceId = idField(body, 'instanceId')
      if (body['note'] === true) {
        if (leader === undefined) throw new MaitreError('MAITRE_NOT_FOUND', 'Not found', { details: { path: url.pathname } })
        leader.noteExpiry(serviceId, instanceId)
        return sendJson(res, 200, { noted: true, 'instance-id': instanceId }, cid)
      }
      const from = typeof body['from'] === 'string' ? body['from'] : undefined
      // Led elsewhere by now: the follower says so to its caller, who tries again.
      if (leader === undefined || !leader.isLeader()) throw new MaitreError('MAITRE_CLUSTER_UNAVAILABLE', 'This router does not lead the cluster', { details: { 'service-id': serviceId }, headers: { 'retry-after': '1' } })
      if (!leader.expire(serviceId, instanceId, from)) throw new MaitreError('MAITRE_NOT_FOUND', `Instance ${instanceId} of service ${serviceId} not found`, { details: { 'service-id': serviceId, 'instance-id': instanceId } })
      return sendJson(res, 200, { expired: true, 'instance-id': instanceId }, cid)
    }
    case 'member': {
      const routerId = idField(body, 'routerId')
      return sendJson(res, 200, { 'router-id': routerId, member: exchange.receiveMemberQuery(routerId) }, cid)
    }
    case 'eject': {
      const periodMs = body['periodMs']
      if (!Number.isSafeInteger(periodMs) || (periodMs as number) < 0) throw new MaitreError('MAITRE_BAD_REQUEST', 'periodMs must be a whole number of milliseconds, 0 or more', { details: { field: 'periodMs' } })
      const serviceId = idField(body, 'serviceId')
      const instanceId = idField(body, 'instanceId')
      if (!exchange.receiveEject(serviceId, instanceId, periodMs as number)) {
        throw new MaitreError('MAITRE_INSTANCE_IN_USE', 'This router carries a request on the instance: it may not be killed now', { details: { 'service-id': serviceId, 'instance-id': instanceId } })
      }
      return sendJson(res, 200, { ejected: true, 'instance-id': instanceId }, cid)
    }
    case 'collect': {
      const periodMs = body['periodMs']
      const lastActiveAt = body['lastActiveAt']
      if (!Number.isSafeInteger(periodMs) || (periodMs as number) < 0) throw new MaitreError('MAITRE_BAD_REQUEST', 'periodMs must be a whole number of milliseconds, 0 or more', { details: { field: 'periodMs' } })
      if (typeof lastActiveAt !== 'number' || !Number.isFinite(lastActiveAt)) throw new MaitreError('MAITRE_BAD_REQUEST', 'lastActiveAt must be a time in milliseconds', { details: { field: 'lastActiveAt' } })
      const reason = body['reason'] ?? 'idle'
      if (reason !== 'idle' && reason !== 'stale' && reason !== 'broken' && reason !== 'orphaned') throw new MaitreError('MAITRE_BAD_REQUEST', "reason must be 'idle', 'stale', 'broken' or 'orphaned'", { details: { field: 'reason' } })
      const serviceId = idField(body, 'serviceId')
      const askedBy = body['leader'] === undefined ? undefined : idField(body, 'leader')
      if (!exchange.receiveCollect(serviceId, lastActiveAt, periodMs as number, reason, body['deleted'] === true, body['forget'] === true, askedBy)) {
        throw new MaitreError('MAITRE_INSTANCE_IN_USE', 'This router is using the version: it may not be collected now', { details: { 'service-id': serviceId } })
      }
      return sendJson(res, 200, { held: periodMs !== 0, 'service-id': serviceId }, cid)
    }
  }
}

function arrivalsOf(body: Record<string, unknown>): { serviceId: string; arrival: Parameters<ArrivalsPeer['heard']>[1] }[] {
  const notes = body['notes']
  // (As many as a body of 256 KB holds: a few thousand.)
  if (!Array.isArray(notes)) throw new MaitreError('MAITRE_BAD_REQUEST', 'notes must be a list of requests told of', { details: { field: 'notes' } })
  return notes.map((note: unknown, i) => {
    const field = `notes[${i}]`
    if (typeof note !== 'object' || note === null || Array.isArray(note)) throw new MaitreError('MAITRE_BAD_REQUEST', `${field} must be an object`, { details: { field } })
    const n = note as Record<string, unknown>
    const agoMs = n['agoMs']
    if (!Number.isSafeInteger(agoMs) || (agoMs as number) < 0 || (agoMs as number) > MAX_NOTE_AGE_MS) {
      throw new MaitreError('MAITRE_BAD_REQUEST', `${field}.agoMs must be a whole number of milliseconds from 0 to ${MAX_NOTE_AGE_MS}`, { details: { field: `${field}.agoMs` } })
    }
    for (const flag of ['running', 'warm']) {
      if (typeof n[flag] !== 'boolean') throw new MaitreError('MAITRE_BAD_REQUEST', `${field}.${flag} must be true or false`, { details: { field: `${field}.${flag}` } })
    }
    const idleForMs = n['idleForMs']
    if (idleForMs !== undefined && (typeof idleForMs !== 'number' || !Number.isFinite(idleForMs) || idleForMs < 0 || idleForMs > MAX_IDLE_FOR_MS)) {
      throw new MaitreError('MAITRE_BAD_REQUEST', `${field}.idleForMs must be a number of milliseconds from 0 to ${MAX_IDLE_FOR_MS} (a year), or absent (the version was busy)`, { details: { field: `${field}.idleForMs` } })
    }
    return { serviceId: idField(n, 'serviceId', `${field}.serviceId`), arrival: { agoMs: agoMs as number, running: n['running'] as boolean, warm: n['warm'] as boolean, idleForMs: idleForMs as number | undefined } }
  })
}

/** The leader-driven backend's view (GET state, a long poll) and the calls followers ask of it. */
async function handleBackendPeer(r: AdminRequest, what: string, backend: BackendPeer | undefined): Promise<void> {
  const { req, res, url, cid } = r
  if (backend === undefined) throw new MaitreError('MAITRE_NOT_FOUND', 'This router’s backend is not driven by the cluster leader', { details: { path: url.pathname } })
  if (what === 'state') {
    if (req.method !== 'GET') throw methodNotAllowed(req.method, ['GET'])
    const after = url.searchParams.get('after') ?? ''
    if (after.length > 100) throw new MaitreError('MAITRE_BAD_REQUEST', 'after must be a view id of at most 100 characters', { details: { field: 'after' } })
    // The long poll ends early when the follower goes.
    const gone = new AbortController()
    res.once('close', () => gone.abort())
    return sendJson(res, 200, await backend.peerState(after, gone.signal), cid)
  }
  if (!BACKEND_CALLS.has(what)) throw new MaitreError('MAITRE_NOT_FOUND', 'Not found', { details: { path: url.pathname } })
  if (req.method !== 'POST') throw methodNotAllowed(req.method, ['POST'])
  const body = await readJsonObject(req)
  try {
    return sendJson(res, 200, await backend.peerCall(what as BackendCall, body), cid)
  } catch (err) {
    if (!(err instanceof MaitreError)) throw err
    // Carried to the follower whole, which raises the same error for its own caller.
    return sendJson(res, err.status, { failure: { code: err.code, status: err.status, message: err.message, details: err.details } }, cid, err.headers)
  }
}
