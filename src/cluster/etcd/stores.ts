/**
 * Cluster mode's shared state: every store (tokens, service records, overrides, suspensions) is
 * a prefix of etcd, and the router secret instance passwords derive from is kept there too, so
 * that an instance started through one router answers every other.
 */
import { randomBytes } from 'node:crypto'
import type { Etcd3 } from 'etcd3'
import { MaitreError } from '../../errors.ts'
import type { Logger } from '../../log.ts'
import type { FrameworkIdStore } from '../../backends/mesos.ts'
import type { DocumentCheck, StoreOpener } from '../../storage/document-store.ts'
import { EtcdDirectory } from './etcd-directory.ts'
import { usableSecret } from '../../auth/router-secret.ts'

export interface EtcdStores extends StoreOpener {
  /**
   * What every write through these stores waits for once etcd committed it (cluster mode: the
   * peers are told, peer-sync.ts), for stores opened before and after.
   */
  afterCommit(hook: (store: string, key: string) => Promise<void>): void
  /** Reads one key of one store from etcd now (a peer wrote it); false when no store has that name. */
  refresh(store: string, key: string): Promise<boolean>
  /** Stops every watch of the stores opened. */
  close(): Promise<void>
}

export function etcdStores(client: Etcd3, prefix: string, log: Logger): EtcdStores {
  const opened = new Map<string, EtcdDirectory<unknown>>()
  let hook: ((store: string, key: string) => Promise<void>) | undefined
  const hookOf = (name: string) => (key: string) => hook?.(name, key) ?? Promise.resolve()
  return {
    kind: 'etcd',
    async open<T>(name: string, what: string, check: DocumentCheck = () => undefined) {
      const store = await unavailableAsOurs(`the ${what} store`, () => EtcdDirectory.open<T>(client, `${prefix}/${name}/`, what, check, log))
      store.afterCommit(hookOf(name))
      opened.set(name, store as EtcdDirectory<unknown>)
      return store
    },
    afterCommit(next) {
      hook = next
    },
    async refresh(name, key) {
      const store = opened.get(name)
      if (store === undefined) return false
      await store.refresh(key)
      return true
    },
    async close() {
      await Promise.all([...opened.values()].map((store) => store.close()))
    },
  }
}

/**
 * The secret every router of the cluster derives instance passwords from: created once, by
 * whichever router gets there first (a transaction: the others read what it wrote).
 */
export async function sharedRouterSecret(client: Etcd3, prefix: string): Promise<string> {
  const key = `${prefix}/router-secret`
  const candidate = randomBytes(24).toString('hex')
  const result = await unavailableAsOurs('the router secret', () =>
    client.if(key, 'Create', '==', 0).then(client.put(key).value(candidate)).else(client.get(key)).commit(),
  )
  if (result.succeeded) return candidate
  return usableSecret(result.responses[0]?.response_range?.kvs[0]?.value.toString('utf8'), `etcd key ${key}`)
}

/**
 * Puts the router secret back if etcd no longer holds it (it came back without its data): a
 * router that starts later would otherwise make a secret of its own, and every call between it
 * and the others would be refused (each kill vetoed, each collection too). A different secret
 * found there (a router started meanwhile made one) is reported: the routers must be restarted
 * to agree again.
 */
export async function restoreSharedRouterSecret(client: Etcd3, prefix: string, secret: string, log: Logger): Promise<void> {
  const key = `${prefix}/router-secret`
  const result = await client.if(key, 'Create', '==', 0).then(client.put(key).value(secret)).else(client.get(key)).commit()
  if (result.succeeded) {
    log.warn({ key }, 'etcd had lost the router secret: put back')
    return
  }
  const stored = result.responses[0]?.response_range?.kvs[0]?.value.toString('utf8')
  if (stored !== secret) log.error({ key }, 'etcd holds another router secret than this router uses (made while it had lost its data): restart the routers that started before, or they and the others refuse each other')
}

/**
 * The Mesos framework id, kept in etcd in cluster mode: whichever router leads subscribes as the
 * same framework, so the master hands it the tasks the last leader launched.
 */
export function etcdFrameworkIds(client: Etcd3, prefix: string): FrameworkIdStore {
  const key = `${prefix}/mesos/framework-id`
  const store: FrameworkIdStore = {
    async load() {
      const id = await unavailableAsOurs('the mesos framework id', () => client.get(key).string())
      return id === null || id === '' ? undefined : id
    },
    /** Kept only in place of the id this router loaded, or where none is (a transaction): never over another router's. */
    async save(id, replacing) {
      const kept = (replacing === undefined ? client.if(key, 'Create', '==', 0) : client.if(key, 'Value', '==', replacing)).then(client.put(key).value(id)).else(client.get(key))
      const result = await unavailableAsOurs('the mesos framework id', () => kept.commit())
      if (result.succeeded) return
      const other = result.responses[0]?.response_range?.kvs[0]?.value.toString('utf8')
      // Deleted meanwhile (by hand): kept where none is.
      if (other === undefined && replacing !== undefined) return store.save(id, undefined)
      // Emptied (by hand): load() reads that as none, and so does this (in place of the empty value).
      if (other === '' && replacing !== '') return store.save(id, '')
      if (other !== id) throw new MaitreError('MAITRE_STORE_CONFLICT', `etcd key ${key} keeps mesos framework ${String(other)}; this router subscribed as ${id}, which is not kept`)
    },
  }
  return store
}

async function unavailableAsOurs<T>(what: string, io: () => Promise<T>): Promise<T> {
  try {
    return await io()
  } catch (err) {
    if (err instanceof MaitreError) throw err
    throw new MaitreError('MAITRE_CLUSTER_UNAVAILABLE', `etcd did not answer for ${what}: ${(err as Error).message}`, { cause: err, headers: { 'retry-after': '5' } })
  }
}
