/**
 * The simulator's etcd: objects by resource and namespace/name, one global increasing
 * resourceVersion, and a bounded event history that watches resume from (older → 410 Expired).
 */
import { randomUUID } from 'node:crypto'

export type Resource = 'pods' | 'replicasets' | 'events' | 'leases'
export type EventType = 'ADDED' | 'MODIFIED' | 'DELETED'

// The simulator handles JSON of every kind; fields are checked where the API server checks them.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type KObject = Record<string, any> & { metadata: Record<string, any> }

export interface StoredEvent {
  readonly rv: number
  readonly resource: Resource
  readonly type: EventType
  readonly object: KObject
}

export interface Watcher {
  readonly resource: Resource
  readonly namespace: string
  readonly matches: (object: KObject) => boolean
  send(event: StoredEvent): void
}

export class Store {
  #rv = 1000
  readonly #objects = new Map<Resource, Map<string, KObject>>()
  readonly #history: StoredEvent[] = []
  readonly #watchers = new Set<Watcher>()
  readonly #historyLimit: number
  /** Watches from a version at or below this get 410: their history is gone. */
  #compactedTo = 1000
  readonly #onChange: (resource: Resource) => void

  constructor(historyLimit: number, onChange: (resource: Resource) => void) {
    this.#historyLimit = historyLimit
    this.#onChange = onChange
  }

  get resourceVersion(): number {
    return this.#rv
  }

  get compactedTo(): number {
    return this.#compactedTo
  }

  /** Forgets all history, as etcd compaction does: every watch resume from before now gets 410. */
  compact(): void {
    this.#history.length = 0
    this.#compactedTo = this.#rv
  }

  list(resource: Resource, namespace: string): KObject[] {
    return [...(this.#objects.get(resource)?.values() ?? [])].filter((o) => o.metadata.namespace === namespace).map(clone)
  }

  get(resource: Resource, namespace: string, name: string): KObject | undefined {
    const found = this.#objects.get(resource)?.get(`${namespace}/${name}`)
    return found === undefined ? undefined : clone(found)
  }

  create(resource: Resource, object: KObject): KObject {
    const stored = clone(object)
    stored.metadata.uid = randomUUID()
    stored.metadata.creationTimestamp = new Date().toISOString().replace(/\.\d+Z$/, 'Z')
    stored.metadata.generation = 1
    return this.#write(resource, stored, 'ADDED')
  }

  /** Writes a new state of an existing object (the caller has checked preconditions). */
  update(resource: Resource, object: KObject): KObject {
    return this.#write(resource, clone(object), 'MODIFIED')
  }

  remove(resource: Resource, namespace: string, name: string): KObject | undefined {
    const key = `${namespace}/${name}`
    const existing = this.#objects.get(resource)?.get(key)
    if (existing === undefined) return undefined
    this.#objects.get(resource)?.delete(key)
    existing.metadata.resourceVersion = String(++this.#rv)
    this.#record({ rv: this.#rv, resource, type: 'DELETED', object: clone(existing) })
    return clone(existing)
  }

  #write(resource: Resource, object: KObject, type: EventType): KObject {
    object.metadata.resourceVersion = String(++this.#rv)
    let byKey = this.#objects.get(resource)
    if (byKey === undefined) this.#objects.set(resource, (byKey = new Map()))
    byKey.set(`${object.metadata.namespace as string}/${object.metadata.name as string}`, object)
    this.#record({ rv: this.#rv, resource, type, object: clone(object) })
    return clone(object)
  }

  #record(event: StoredEvent): void {
    this.#history.push(event)
    if (this.#history.length > this.#historyLimit) {
      const dropped = this.#history.splice(0, this.#history.length - this.#historyLimit)
      this.#compactedTo = Math.max(this.#compactedTo, (dropped[dropped.length - 1] as StoredEvent).rv)
    }
    for (const watcher of this.#watchers) {
      if (watcher.resource === event.resource && watcher.namespace === event.object.metadata.namespace && watcher.matches(event.object)) watcher.send(event)
    }
    this.#onChange(event.resource)
  }

  /** Events after `rv` still in history, for a watch that resumes. */
  since(resource: Resource, rv: number): StoredEvent[] {
    return this.#history.filter((e) => e.resource === resource && e.rv > rv)
  }

  watch(watcher: Watcher): () => void {
    this.#watchers.add(watcher)
    return () => this.#watchers.delete(watcher)
  }
}

export function clone<T>(value: T): T {
  return structuredClone(value)
}
