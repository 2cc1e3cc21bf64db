/**
 * The Kubernetes backend: one ReplicaSet per service version, its pods (found by list + watch,
 * resumed from the last resourceVersion and re-listed after a 410) are the instances, and the
 * kubelet's readiness probe decides which are healthy. Instance counts go through the scale
 * subresource with optimistic concurrency. A kill removes the pod maitre chose: the pod gets the
 * lowest pod-deletion-cost and is deleted; once the ReplicaSet controller has replaced it, replicas
 * drop by one, and the controller deletes the replacement, which it ranks first (killInstance).
 *
 * Unlike the local backend, close() leaves versions running: they belong to the cluster, and the
 * next router adopts them from their ReplicaSets (garbage collection still reaps the idle ones).
 */
import type { Clock } from '../clock.ts'
import type { KubernetesBackendConfig } from '../config.ts'
import type { Logger } from '../log.ts'
import type { LaunchSpec, Proto } from '../launch-spec.ts'
import type { Backend, EndedInstance, ServiceState } from './backend.ts'
import { deploymentError } from './deployment-error.ts'
import { refuseUnsupportedProtos, ServiceListeners } from './service-listeners.ts'
import { KubeApiError, type KubeApi, type WatchEvent } from './kubernetes/api.ts'
import type { KubeStatus, Pod, ReplicaSet } from './kubernetes/objects.ts'
import { clusterProblem, failureKey, hasEnded, instanceId, instanceOf, isActive, isReady, isTerminating, lastFailure, latestFailedCreate } from './kubernetes/pod-view.ts'
import { ANNOTATIONS, basePortOf, LABELS, clusterSelector, replicaSetName, replicaSetOf } from './kubernetes/replica-set.ts'

export interface KubernetesBackendOptions
  extends Pick<KubernetesBackendConfig, 'defaultImage' | 'podBasePort' | 'minFailedInstances' | 'watchTimeoutSecs' | 'relistBackoffMs' | 'minTerminationGraceSecs' | 'unschedulableGraceSecs'> {
  readonly api: KubeApi
  readonly cluster: string
  readonly clock: Clock
  readonly log: Logger
}

const ENDED_KEPT = 10
/** Ended runs remembered per pod to record each once (a kubelet shows the last one only). */
const FAILURE_KEYS_KEPT = 8
/** How long a pod the controller made in place of a killed one stays hidden if it is not deleted (a scale-up came meanwhile). */
const REPLACEMENT_HIDDEN_MS = 6000
/** Replacements a kill deletes in turn because they became ready before the count could drop. */
const MAX_REPLACEMENT_ROUNDS = 3
/** How long after its creation a pod marked as a replacement is left out of every router's instances. */
const REPLACEMENT_MARK_MS = 30_000
/**
 * How long a kill waits for the ReplicaSet controller to replace the pod it deleted before it
 * lowers the count anyway. Long: the replacement comes once the controller's pod cache has seen
 * the delete and its expectations of its last action are met, which takes a multiple of its
 * informer lag (seconds on a loaded cluster); a count lowered before that lets it choose what goes.
 */
const KILL_BARRIER_MS = 30_000
/** From this long into a kill's wait, the ReplicaSet's Events are read (each such period) for a FailedCreate that says no replacement will come (quota, admission). */
const FAILED_CREATE_CHECK_MS = 2000
const MAX_RELIST_BACKOFF_MS = 60_000
/** A watch that lasts less than this was not ended by its timeoutSeconds (at least 1 s). */
const MIN_WATCH_MS = 1_000
const SCALE_RETRIES = 5
/** How often services short of pods are checked for FailedCreate events (quota, admission). */
const EVENT_CHECK_MS = 1000
/** int32's minimum: this pod goes first when the ReplicaSet scales down. */
const LOWEST_DELETION_COST = '-2147483648'

interface KubeService {
  readonly id: string
  readonly replicaSet: string
  uid: string | undefined
  proto: Proto
  portCount: number
  /** The pods' first port, from their ReplicaSet (maitre/pod-base-port), else this router's podBasePort. */
  basePort: number
  requested: number
  scaling: Promise<void>
  /** The delete of its ReplicaSet in flight; the service stays known until that succeeds. */
  deleting: Promise<void> | undefined
  /** The create of its ReplicaSet in flight; a delete waits for it. */
  creating: Promise<void> | undefined
  /** Changes of `requested` made here and not yet written: the ReplicaSet watch leaves it alone meanwhile. */
  localChanges: number
  /** resourceVersion of this router's last scale write: watch events older than it are stale here. */
  writtenVersion: bigint
  /** The last write of the count failed for good (the API server shed it): the next scale() writes again, even for the same count. */
  scaleUnwritten: boolean
  /** Pods being killed on purpose: no longer instances, and their deletion is not a failure. */
  readonly killing: Set<string>
  /** Kills of this service, one at a time (a pod that appears during one is its replacement, never another's). */
  killChain: Promise<void>
  /** Kills between their delete and the end of their wait for a replacement: a pod that appears meanwhile may be one. */
  awaitingReplacements: number
  /** Kills asked for and not yet past their own scale write: every other write keeps their pods in the count (each kill lowers it for its own, once replaced). */
  unwrittenKills: number
  /** Kills that lowered the count without seeing their replacement: the next new pod is claimed as one, should the controller make it late (until it shows it has caught up with that count, or `until`). */
  readonly owedReplacements: OwedReplacement[]
  /** Pods the controller made in place of one being killed, which the lower count takes next: never instances, and their end is nobody's failure. */
  readonly replacements: Map<string, Replacement>
  /** A look at the leftover replacements is scheduled (one at a time). */
  sweeping: boolean
  /** The ended runs recorded per pod (failureKey, the last FAILURE_KEYS_KEPT): each is recorded once. */
  readonly failuresSeen: Map<string, string[]>
  failed: EndedInstance[]
  killed: EndedInstance[]
  failedSinceHealthy: EndedInstance[]
  /** Pods seen ready in their current container run: a failure of that run is no step towards a deployment error. */
  readonly readyRuns: Set<string>
  /** A look again when an unschedulable pod's grace runs out (one at a time). */
  recheck: (() => void) | undefined
  createError: string | undefined
  eventError: string | undefined
  deploymentError: string | undefined
}

class RelistNeeded extends Error {}

/** A kill's pod in the count written by others, until the kill's own write (see #putScale). */
interface KillCount {
  counted: boolean
}

/** A pod that appeared while a kill waited for the controller's replacement. */
interface Replacement {
  /** Its resourceVersion when first seen: a replacement for a delete is newer than the delete. */
  readonly seenAt: bigint | undefined
  /** 'free': nobody's yet; 'taken': a kill waits to lower the count for it; 'done': that kill wrote the count. */
  state: 'free' | 'taken' | 'done'
  /** 'done': hidden until then (or until it goes), however the count moved since: see #sweepLeftovers. */
  hideUntil?: number
}

interface OwedReplacement {
  readonly until: number
  /** The resourceVersion of the lower count's write: the debt is settled once the controller's status has caught up with it. */
  readonly written: bigint
}

/** The resourceVersion of what an API call answered with, if it is an object that has one. */
function resourceVersionOf(answer: unknown): bigint | undefined {
  const metadata = typeof answer === 'object' && answer !== null ? (answer as { metadata?: { resourceVersion?: unknown } }).metadata : undefined
  return typeof metadata?.resourceVersion === 'string' ? versionOf(metadata.resourceVersion) : undefined
}

/**
 * A resourceVersion as a number to order events by. Kubernetes calls them opaque, but every API
 * server (etcd's revisions) and the simulator hand out increasing integers; anything else is
 * simply not ordered (undefined), and such events are taken as they come.
 */
function versionOf(resourceVersion: string | undefined): bigint | undefined {
  return resourceVersion !== undefined && /^\d{1,30}$/.test(resourceVersion) ? BigInt(resourceVersion) : undefined
}

const TRANSIENT_RETRIES = 5

function isTransient(err: unknown): boolean {
  return !(err instanceof KubeApiError) || err.code >= 500 || err.code === 429
}

/** Longest a close waits for the list-and-watch loops and API calls under way. */
const CLOSE_WAIT_MS = 5000

export class KubernetesBackend implements Backend {
  readonly kind = 'kubernetes' as const
  readonly #o: KubernetesBackendOptions
  readonly #services = new Map<string, KubeService>()
  /** Every pod of this cluster, by service id then pod name, whether or not the service is known. */
  readonly #pods = new Map<string, Map<string, Pod>>()
  /** Timers that show a kill's leftover replacement as an instance: cancelled on close. */
  readonly #timers = new Set<() => void>()
  readonly #listeners: ServiceListeners
  readonly #abort = new AbortController()
  readonly #synced: Promise<void>
  #isSynced = false
  /**
   * Why the first list failed, until one succeeds. Refused by the API server (401, 403, 404: RBAC
   * without list, a wrong namespace), a cold start meanwhile fails at once (503) rather than wait
   * out its queue timeout behind a list that will not come until someone fixes the cluster; a
   * transient failure (5xx, 429, the network) is waited past.
   */
  #firstListFailure: unknown
  /** Cold starts waiting for the first list: told when an attempt at it is refused. */
  readonly #syncWaiters = new Set<(err: unknown) => void>()
  readonly #loop: Promise<void>
  readonly #replicaSetLoop: Promise<void>
  #cancelEventCheck: (() => void) | undefined
  #closed = false

  constructor(options: KubernetesBackendOptions) {
    this.#o = options
    this.#listeners = new ServiceListeners(options.log)
    let synced!: () => void
    this.#synced = new Promise((resolve) => (synced = resolve))
    this.#loop = this.#syncPods(synced)
    this.#replicaSetLoop = this.#followReplicaSets()
    this.#scheduleEventCheck()
  }

  /** Resolves once the first list of ReplicaSets and pods is in. */
  ready(): Promise<void> {
    return this.#synced
  }

  notReadyBecause(): string | undefined {
    if (this.#isSynced) return undefined
    return this.#firstListFailure === undefined ? 'The Kubernetes backend has not listed its pods yet.' : 'The Kubernetes backend could not list its pods yet; it keeps trying.'
  }

  /** The first list; an attempt at it that the API server refuses is reported, not waited past. */
  async #whenSynced(): Promise<void> {
    if (this.#isSynced) return
    if (this.#firstListFailure !== undefined && !isTransient(this.#firstListFailure)) throw new Error('the first list of pods was refused', { cause: this.#firstListFailure })
    await new Promise<void>((resolve, reject) => {
      const fail = (err: unknown): void => {
        this.#syncWaiters.delete(fail)
        reject(new Error('the first list of pods was refused', { cause: err }))
      }
      this.#syncWaiters.add(fail)
      void this.#synced.then(() => {
        this.#syncWaiters.delete(fail)
        resolve()
      })
    })
  }

  async ensureService(spec: LaunchSpec): Promise<void> {
    if (this.#closed) throw new Error('the kubernetes backend is closed')
    refuseUnsupportedProtos(spec, { backend: ['http', 'https', 'h2c', 'h2'], healthCheck: ['http', 'https'], why: "the kubelet's HTTP probes speak HTTP/1.1, in the clear or over TLS; give an HTTP/2 service an HTTP/1.1 health check port with health-check-port-index" })
    await this.#whenSynced()
    // A service being deleted is not revived half-way (its ReplicaSet may vanish under it): the
    // delete finishes first. If it succeeded, the service is created afresh below; if it failed,
    // the service and its ReplicaSet are still there, which is all ensureService asks.
    await this.#deletionSettled(spec.serviceId)
    const existing = this.#services.get(spec.serviceId)
    if (existing !== undefined) {
      await existing.creating?.catch(() => undefined)
      return
    }
    const service = this.#newService(spec.serviceId, spec.backendProto, spec.ports, spec.minInstances, undefined)
    this.#services.set(spec.serviceId, service)
    // A delete that comes while the ReplicaSet is being created waits for the create: else it
    // would find nothing to delete, forget the service, and the create would then leave a
    // ReplicaSet that nobody manages.
    service.creating = this.#create(service, spec)
    try {
      await service.creating
    } finally {
      service.creating = undefined
    }
  }

  async #create(service: KubeService, spec: LaunchSpec): Promise<void> {
    try {
      const created = await this.#retrying(() => this.#o.api.createReplicaSet(replicaSetOf(spec, this.#o)))
      service.uid = created.metadata.uid
      // Events from before the ReplicaSet was made say nothing new of it.
      service.writtenVersion = versionOf(created.metadata.resourceVersion) ?? service.writtenVersion
      this.#o.log.info({ service: spec.serviceId, replicaSet: service.replicaSet, instances: spec.minInstances }, 'service created')
    } catch (err) {
      if (isTransient(err)) {
        // The API server is unwell, not the service: let the next request try again.
        this.#services.delete(spec.serviceId)
        throw err
      }
      if (err instanceof KubeApiError && err.code === 409) {
        // Made by an earlier router: adopt it at its current size.
        let scale: Awaited<ReturnType<KubernetesBackendOptions['api']['getScale']>>
        try {
          scale = await this.#retrying(() => this.#o.api.getScale(service.replicaSet))
        } catch (adoptErr) {
          // Deleted between the two calls (404), or the API server unwell: nothing was adopted,
          // and a service kept now would have no ReplicaSet behind it that anything looks at
          // again. The next request starts afresh.
          this.#services.delete(spec.serviceId)
          throw adoptErr
        }
        // Only this cluster's: another maitre cluster in the namespace (staging beside prod) names
        // a version with the same parameters alike. Adopted, its pods would never be seen (the
        // watches select this cluster's) and its ReplicaSet would be scaled and deleted here.
        // (One without the cluster label is nobody's of this cluster either: maitre always sets it.)
        const owner = ownerClusterOf(scale.status?.selector)
        if (owner !== this.#o.cluster) {
          service.createError = `A ReplicaSet named ${service.replicaSet} belongs to ${owner === undefined ? 'something other than maitre' : `another maitre cluster (${owner})`} in this namespace; give this cluster a namespace of its own`
          this.#o.log.error({ service: spec.serviceId, replicaSet: service.replicaSet, owner }, 'replicaset of another maitre cluster: not adopted')
          this.#update(service)
          return
        }
        service.requested = Math.max(scale.spec.replicas, spec.minInstances)
        // (Its uid, for the precondition of a delete: the scale carries the ReplicaSet's.)
        service.uid ??= scale.metadata.uid
        this.#o.log.info({ service: spec.serviceId, replicaSet: service.replicaSet }, 'service adopted')
        if (service.requested !== scale.spec.replicas) await this.#writeScale(service)
      } else {
        // Clients see the kind of refusal, not the API server's text (service account names,
        // policy details); the log has the whole of it.
        const reason = err instanceof KubeApiError ? err.reason : 'Error'
        service.createError = `The cluster refused to create the service's ReplicaSet (${reason})`
        this.#o.log.error({ err, service: spec.serviceId }, 'replicaset create failed')
      }
    }
    this.#update(service)
  }

  /**
   * On a service being deleted, waits for the delete: then the service is gone (ensureService
   * brings it back) or, if the delete failed, it is scaled as asked.
   */
  async scale(serviceId: string, instances: number): Promise<void> {
    await this.#deletionSettled(serviceId)
    const service = this.#services.get(serviceId)
    if (service === undefined || service.createError !== undefined) return
    const requested = Math.max(0, instances)
    if (requested === service.requested && !service.scaleUnwritten) return
    service.requested = requested
    await this.#locally(service, () => this.#writeScale(service))
  }

  /** Runs a change of `requested` that this router makes, keeping the ReplicaSet watch off it until written. */
  async #locally<T>(service: KubeService, change: () => Promise<T>): Promise<T> {
    service.localChanges += 1
    try {
      return await change()
    } finally {
      service.localChanges -= 1
    }
  }

  async killInstance(serviceId: string, id: string, options: { readonly force?: boolean } = {}): Promise<boolean> {
    const service = this.#services.get(serviceId)
    const pod = [...(this.#pods.get(serviceId)?.values() ?? [])].find((p) => isActive(p) && (service === undefined || this.#ownedBy(service, p)) && instanceId(serviceId, p) === id)
    const name = pod?.metadata.name
    // A service being deleted loses all its pods with its ReplicaSet; none is killed on its own.
    if (service === undefined || service.deleting !== undefined || pod === undefined || name === undefined || service.killing.has(name)) return false
    service.killing.add(name)
    service.localChanges += 1
    service.requested = Math.max(0, service.requested - 1)
    this.#listeners.emit(serviceId)
    this.#o.log.info({ service: serviceId, instance: id, pod: name }, 'instance killed')
    // Counted until its own scale write: a write made meanwhile by anyone else (another kill, the
    // autoscaler) must not lower the count for this pod while it runs or while its replacement is
    // awaited, or the controller would choose what goes.
    service.unwrittenKills += 1
    const own: KillCount = { counted: true }
    const uid = pod.metadata.uid ?? ''
    const grace = options.force === true ? 0 : undefined
    // Kills of a version go one at a time, whole (a pod that appears during one is its
    // replacement, never an answer to another's delete the controller has not seen yet). The
    // caller is answered once the chosen pod is deleted; the wait for the controller's
    // replacement and the lower count follow in the background, so that a caller (the
    // autoscaler) never waits on the controller for its own kill.
    let answer!: (outcome: boolean) => void
    const deleted = new Promise<boolean>((resolve) => (answer = resolve))
    service.killChain = service.killChain
      .then(async () => {
        const outcome = await this.#deleteStep(service, name, uid, grace, own).catch((err: unknown) => {
          // Undone as a failed delete is: the count comes back and the pod stays an instance.
          this.#o.log.error({ err, service: serviceId, pod: name }, 'pod kill failed; the pod stays')
          service.killing.delete(name)
          service.requested += 1
          this.#listeners.emit(serviceId)
          return false as const
        })
        answer(outcome !== false)
        if (typeof outcome === 'object') await this.#lowerOnceReplaced(service, name, outcome.version, own)
      })
      .catch((err: unknown) => this.#o.log.error({ err, service: serviceId, pod: name }, 'kill failed after its delete'))
      .finally(() => {
        answer(false)
        this.#uncount(service, own)
        service.localChanges -= 1
        // Its DELETED event may have come already: nothing left to wait for.
        if (!this.#pods.get(serviceId)?.has(name)) service.killing.delete(name)
        this.#sweepLeftovers(service)
      })
    return deleted
  }

  #uncount(service: KubeService, own: KillCount): void {
    if (!own.counted) return
    own.counted = false
    service.unwrittenKills -= 1
  }

  /**
   * Waiter's recipe, with barriers against a controller whose caches lag. The chosen pod is
   * deleted first, so it leaves the ReplicaSet's count at once; the controller fills the hole
   * with a replacement, which shows that its cache has seen the chosen pod go; only then is the
   * count lowered (#lowerOnceReplaced), and the controller deletes the pod it ranks first: the
   * replacement, still unscheduled or Pending (and if not, unready and the youngest), never a pod
   * that serves. Lowering the count first would let the controller choose from what its cache
   * ranks first: an unready pod comes before any deletion cost, and a busy single-threaded app
   * fails its readiness probe. The lowest deletion cost still goes on the chosen pod, for a
   * controller slower than every barrier. Resolves with the delete's resourceVersion; 'last' when
   * every pod goes (nothing busy can be taken in its place, so the count drops first); 'gone'
   * when the pod was gone already (nothing was chosen, so the count stays); false if it could
   * not be deleted (the kill is undone).
   */
  async #deleteStep(service: KubeService, name: string, uid: string, grace: number | undefined, own: KillCount): Promise<{ readonly version: bigint | undefined } | 'last' | 'gone' | false> {
    if (service.requested === 0 && service.unwrittenKills === 1) {
      await this.#writeScale(service, undefined, own)
      if ((await this.#deleteChosen(service, name, uid, grace)) !== false) return 'last'
      // The count went to zero first: the pod that stays needs it back.
      void this.#writeScale(service)
      return false
    }
    await this.#o.api.patchPod(name, { metadata: { annotations: { [ANNOTATIONS.deletionCost]: LOWEST_DELETION_COST } } }).catch((err: unknown) => {
      if (!(err instanceof KubeApiError && err.code === 404)) this.#o.log.warn({ err, service: service.id, pod: name }, 'could not mark the pod chosen to go; deleting it anyway')
    })
    service.awaitingReplacements += 1
    const deleted = await this.#deleteChosen(service, name, uid, grace)
    if (typeof deleted === 'object') return deleted
    service.awaitingReplacements -= 1
    if (deleted === 'gone') {
      // Gone before this delete (someone else's, a crash): nothing was chosen here, so the count
      // stays as it was, and whatever replaces the pod is an instance like any other.
      service.requested += 1
      this.#listeners.emit(service.id)
    }
    return deleted
  }

  /**
   * The second half of a kill: the wait for the controller's replacement of the deleted pod (a
   * pod first seen after the delete, which only the controller's answer to a delete can be),
   * then the lower count. The wait follows the controller: KILL_BARRIER_MS at most, shorter when
   * its Events say it cannot create; a kill that outlasts it leaves a debt, so that a replacement
   * made after the count dropped is still claimed.
   */
  async #lowerOnceReplaced(service: KubeService, name: string, deletedAt: bigint | undefined, own: KillCount): Promise<void> {
    let gaveUp = false
    let replacement: string | undefined
    const waitedFrom = this.#o.clock.now()
    let answeredInMs = 0
    try {
      replacement = await this.#replacementOf(service, name, deletedAt)
      answeredInMs = this.#o.clock.now() - waitedFrom
      // Closing: the count stays as it is, this kill's pod in it; the next router adopts that
      // count and decides again. Lowered blind, it would let the controller choose.
      if (this.#closed) return
      let rounds = 1
      // Checked again right before the count is written (a write held back by API errors can
      // come after the replacement is ready): one already ready while another pod is not (a busy
      // single-threaded app fails its probe) would be ranked after that pod by the controller.
      // It goes the chosen pod's way instead, and its own replacement, new again, is what the
      // lower count takes.
      await this.#writeScale(
        service,
        async () => {
          const made = replacement === undefined ? undefined : this.#pods.get(service.id)?.get(replacement)
          if (made === undefined || !isReady(made) || rounds >= MAX_REPLACEMENT_ROUNDS || !this.#livePods(service).some((p) => !isReady(p))) {
            gaveUp = replacement === undefined
            return true
          }
          rounds += 1
          let again: unknown
          try {
            again = await this.#retrying(() => this.#o.api.deletePod(made.metadata.name ?? '', made.metadata.uid ?? '', 0))
          } catch {
            // Gone or not deletable: no new replacement will come of it; the count goes as it is.
            return true
          }
          replacement = await this.#replacementOf(service, name, resourceVersionOf(again))
          return false
        },
        own,
      )
    } finally {
      service.awaitingReplacements -= 1
      const entry = replacement === undefined ? undefined : service.replacements.get(replacement)
      if (entry !== undefined) {
        entry.state = 'done'
        // The controller takes the lower count out on it about as late as it answered the delete.
        entry.hideUntil = this.#o.clock.now() + Math.min(REPLACEMENT_MARK_MS, Math.max(REPLACEMENT_HIDDEN_MS, 3 * answeredInMs))
      }
    }
    if (gaveUp && !this.#closed) service.owedReplacements.push({ until: this.#o.clock.now() + REPLACEMENT_MARK_MS, written: service.writtenVersion })
  }

  /**
   * When no new pod came (the wait ran out, or the controller cannot create), an earlier kill's
   * replacement may have filled this kill's hole: the controller took that kill's lower count out
   * on the pod this kill had already deleted, so the earlier replacement stayed and the count
   * needed no new pod. That one is then what this kill's lower count takes (the readiness check
   * before the write applies to it as to any replacement). By then the controller has long seen
   * the delete (its FailedCreate, or the wait's 30 s), so its cache counts the pod gone.
   */
  #leftoverFor(service: KubeService, deleted: string): string | undefined {
    if (this.#services.get(service.id) !== service || service.deleting !== undefined) return undefined
    const pods = this.#pods.get(service.id)
    const leftover = [...service.replacements].find(([name, r]) => {
      const pod = pods?.get(name)
      return r.state === 'done' && pod !== undefined && isActive(pod)
    })
    if (leftover === undefined) return undefined
    leftover[1].state = 'taken'
    this.#o.log.info({ service: service.id, pod: deleted, replacement: leftover[0] }, "an earlier kill's replacement stayed in place of the deleted pod: the lower count takes it")
    return leftover[0]
  }

  /**
   * Leftover replacements (a scale-up that came meanwhile made them wanted after all, or the
   * controller did not take them) are instances like any other once no kill of the version
   * waits, REPLACEMENT_HIDDEN_MS after the last one ended, if they are still there and not
   * going; one whose kill lowered the count only once the controller has had as long to delete
   * it as three times it took to answer the delete (6 to 30 s): shown before, it would take
   * requests and then go. The controller's status is no sign here: it is written from its pod
   * cache, which may not show the replacement yet, so it reads as caught up before the
   * replacement's delete is even due. What is still hidden is looked at again as long as any is.
   */
  #sweepLeftovers(service: KubeService): void {
    if (service.replacements.size === 0 || this.#closed || service.sweeping) return
    service.sweeping = true
    const cancel = this.#o.clock.setTimeout(() => {
      this.#timers.delete(cancel)
      service.sweeping = false
      // A kill under way owns what it took; the last one to end sweeps again.
      if (service.awaitingReplacements > 0 || this.#services.get(service.id) !== service) return
      const pods = this.#pods.get(service.id)
      const now = this.#o.clock.now()
      const kept: string[] = []
      for (const [name, entry] of [...service.replacements]) {
        const pod = pods?.get(name)
        if (pod === undefined) service.replacements.delete(name)
        else if (isTerminating(pod)) continue
        // Evicted, say: the controller already made another; it is nobody's replacement.
        else if (!isActive(pod)) service.replacements.delete(name)
        else if (entry.state === 'done' && now < (entry.hideUntil ?? 0)) continue
        else kept.push(name)
      }
      for (const name of kept) service.replacements.delete(name)
      if (kept.length > 0) {
        this.#o.log.info({ service: service.id, pods: kept }, 'pods made during a kill stay: the count asks for them')
        for (const pod of kept) void this.#o.api.patchPod(pod, { metadata: { annotations: { [ANNOTATIONS.replacement]: null, [ANNOTATIONS.deletionCost]: null } } }).catch(() => undefined)
        this.#listeners.emit(service.id)
      }
      this.#sweepLeftovers(service)
    }, REPLACEMENT_HIDDEN_MS)
    this.#timers.add(cancel)
  }

  /**
   * The controller's replacement for a pod a kill deleted: a pod first seen after the delete
   * (resourceVersion `after`) that no other kill took, marked so that no router routes to it
   * and ranked first among pods as ready as it. If none came when the wait ends (after
   * KILL_BARRIER_MS, or when a FailedCreate newer than the delete says none will come), an earlier
   * kill's replacement that stayed in its place (#leftoverFor), if any; undefined otherwise, or
   * when the service goes.
   */
  async #replacementOf(service: KubeService, deleted: string, after: bigint | undefined): Promise<string | undefined> {
    const started = this.#o.clock.now()
    let checkAt = started + FAILED_CREATE_CHECK_MS
    for (;;) {
      const replacement = [...service.replacements].find(([, r]) => r.state === 'free' && (after === undefined || r.seenAt === undefined || r.seenAt > after))?.[0]
      if (replacement !== undefined) {
        const entry = service.replacements.get(replacement)
        if (entry !== undefined) entry.state = 'taken'
        this.#markReplacement(replacement)
        return replacement
      }
      const now = this.#o.clock.now()
      let why: string | undefined
      if (this.#closed || this.#services.get(service.id) !== service || service.deleting !== undefined) return undefined
      if (now - started >= KILL_BARRIER_MS) why = 'the ReplicaSet controller did not replace the deleted pod in time'
      else if (now >= checkAt) {
        why = await this.#failedCreateAfter(service, after)
        checkAt = this.#o.clock.now() + FAILED_CREATE_CHECK_MS
        if (why === undefined) continue
      }
      if (why !== undefined) {
        // Given up, unless an earlier kill's replacement stayed in its place (#leftoverFor).
        const leftover = this.#leftoverFor(service, deleted)
        if (leftover === undefined) this.#o.log.warn({ service: service.id, pod: deleted, waitedMs: this.#o.clock.now() - started, why }, 'no replacement for the deleted pod; lowering replicas anyway (a late one is still claimed)')
        return leftover
      }
      await new Promise<void>((resolve) => this.#o.clock.setTimeout(resolve, 25))
    }
  }

  /**
   * A FailedCreate of the ReplicaSet recorded (or counted again) after resourceVersion `after`
   * (undefined: no way to tell, so none). resourceVersions are etcd revisions, comparable across resources; a
   * cluster that keeps Events in an etcd of their own breaks that, and then the wait merely ends
   * at the first FailedCreate check or runs to its bound.
   */
  async #failedCreateAfter(service: KubeService, after: bigint | undefined): Promise<string | undefined> {
    if (after === undefined || service.uid === undefined) return undefined
    try {
      const events = await this.#o.api.listEvents(`involvedObject.kind=ReplicaSet,involvedObject.name=${service.replicaSet}`)
      const uid = service.uid
      const failedCreate = events.items.find((e) => e.reason === 'FailedCreate' && e.involvedObject.uid === uid && (versionOf(e.metadata.resourceVersion) ?? 0n) > after)
      return failedCreate === undefined ? undefined : `FailedCreate: ${failedCreate.message}`
    } catch (err) {
      this.#o.log.debug({ err, service: service.id }, 'events unreadable during a kill; waiting on')
      return undefined
    }
  }

  /** Marks a kill's replacement so that no router routes to it, and so that the lower count takes it first. */
  #markReplacement(pod: string): void {
    if (this.#closed) return
    void this.#o.api.patchPod(pod, { metadata: { annotations: { [ANNOTATIONS.replacement]: 'true', [ANNOTATIONS.deletionCost]: LOWEST_DELETION_COST } } }).catch(() => undefined)
  }

  /**
   * Deletes the pod chosen to go (its uid as a precondition), retrying what is transient: its
   * resourceVersion as deleted once it is going; 'gone' when it was gone already (404; 409: the
   * name is another pod's now). A delete that cannot be made undoes the kill (false): the count
   * comes back and the pod stays an instance.
   */
  async #deleteChosen(service: KubeService, name: string, uid: string, grace: number | undefined): Promise<{ readonly version: bigint | undefined } | 'gone' | false> {
    try {
      return { version: resourceVersionOf(await this.#retrying(() => this.#o.api.deletePod(name, uid, grace))) }
    } catch (err) {
      if (err instanceof KubeApiError && (err.code === 404 || err.code === 409)) return 'gone'
      this.#o.log.error({ err, service: service.id, pod: name }, 'pod kill failed; the pod stays')
      service.killing.delete(name)
      service.requested += 1
      this.#listeners.emit(service.id)
      return false
    }
  }

  /**
   * The service is forgotten only once its ReplicaSet is deleted: were it forgotten first, a failed
   * delete would leave the ReplicaSet running unmanaged until a restart. A failed delete rejects
   * (after the transient retries) and leaves the service as it was, so a later call tries again;
   * a call while a delete is in flight joins it.
   */
  deleteService(serviceId: string): Promise<void> {
    const service = this.#services.get(serviceId)
    if (service === undefined) return Promise.resolve()
    service.deleting ??= this.#delete(service)
    return service.deleting
  }

  async #delete(service: KubeService): Promise<void> {
    await service.creating?.catch(() => undefined)
    const requested = service.requested
    service.requested = 0
    this.#listeners.emit(service.id)
    try {
      const uid = service.uid
      // Never made here (its create was refused, or the name is another cluster's): a delete by
      // name could only take a ReplicaSet that is not this service's.
      if (uid !== undefined || service.createError === undefined) await this.#retrying(() => this.#deleteReplicaSet(service.replicaSet, uid))
    } catch (err) {
      // The ReplicaSet still runs as it was: say so, and redo any scale write skipped meanwhile.
      service.deleting = undefined
      service.requested = requested
      this.#listeners.emit(service.id)
      void this.#writeScale(service)
      throw err
    }
    this.#services.delete(service.id)
    this.#listeners.emit(service.id)
    this.#o.log.info({ service: service.id, replicaSet: service.replicaSet }, 'service deleted')
  }

  /**
   * 404 is success: an earlier attempt whose answer was lost, or someone else, got there first.
   * So is a 409 on the uid precondition: the ReplicaSet meant is gone, and the one by its name now
   * is a successor (another router started the version again since), not this delete's to take.
   */
  async #deleteReplicaSet(name: string, uid: string | undefined): Promise<void> {
    try {
      await this.#o.api.deleteReplicaSet(name, uid)
    } catch (err) {
      if (!(err instanceof KubeApiError && (err.code === 404 || (err.code === 409 && uid !== undefined)))) throw err
    }
  }

  /** Waits out every delete of this service in flight, whatever its outcome. */
  async #deletionSettled(serviceId: string): Promise<void> {
    for (let deleting = this.#services.get(serviceId)?.deleting; deleting !== undefined; deleting = this.#services.get(serviceId)?.deleting) {
      await deleting.catch(() => undefined)
    }
  }

  state(serviceId: string): ServiceState | undefined {
    const service = this.#services.get(serviceId)
    return service === undefined ? undefined : this.#view(service)
  }

  requested(serviceId: string): number | undefined {
    return this.#services.get(serviceId)?.requested
  }

  services(): readonly ServiceState[] {
    return [...this.#services.values()].map((s) => this.#view(s))
  }

  subscribe(listener: (serviceId: string) => void): () => void {
    return this.#listeners.subscribe(listener)
  }

  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    this.#cancelEventCheck?.()
    for (const cancel of this.#timers) cancel()
    this.#timers.clear()
    this.#abort.abort()
    // The loops and API calls under way end on the abort or within their request timeouts; a
    // close never waits longer than CLOSE_WAIT_MS for them (a shutdown must finish), and closing
    // the API client then ends whatever is left.
    const settled = Promise.allSettled([this.#loop, this.#replicaSetLoop, ...[...this.#services.values()].flatMap((s) => [s.scaling, s.deleting])])
    let timer: ReturnType<typeof setTimeout> | undefined
    const late = await Promise.race([settled.then(() => false), new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), CLOSE_WAIT_MS)))])
    clearTimeout(timer)
    if (late) this.#o.log.warn({ waitedMs: CLOSE_WAIT_MS }, 'kubernetes backend: calls still under way at close; closing the API client under them')
    await this.#o.api.close()
  }

  #newService(id: string, proto: Proto, portCount: number, requested: number, uid: string | undefined, basePort = this.#o.podBasePort): KubeService {
    return {
      id,
      replicaSet: replicaSetName(id),
      uid,
      proto,
      portCount,
      basePort,
      requested,
      killChain: Promise.resolve(),
      awaitingReplacements: 0,
      unwrittenKills: 0,
      owedReplacements: [],
      replacements: new Map(),
      sweeping: false,
      localChanges: 0,
      writtenVersion: 0n,
      scaleUnwritten: false,
      scaling: Promise.resolve(),
      deleting: undefined,
      creating: undefined,
      killing: new Set(),
      failuresSeen: new Map(),
      failed: [],
      killed: [],
      failedSinceHealthy: [],
      readyRuns: new Set(),
      recheck: undefined,
      createError: undefined,
      eventError: undefined,
      deploymentError: undefined,
    }
  }

  #livePods(service: KubeService): Pod[] {
    return [...(this.#pods.get(service.id)?.values() ?? [])].filter(
      (p) => isActive(p) && this.#ownedBy(service, p) && !service.killing.has(p.metadata.name ?? '') && !service.replacements.has(p.metadata.name ?? '') && !this.#markedReplacement(p),
    )
  }

  /**
   * A pod with the version's labels is its instance unless another ReplicaSet controls it: the
   * one before, deleted and made again under the same name, whose pods the garbage collector
   * has not reached yet (they are about to get their SIGTERM). One controlled by nothing (left
   * by an orphaning delete) still runs the version.
   */
  #ownedBy(service: KubeService, pod: Pod): boolean {
    const owner = pod.metadata.ownerReferences?.find((o) => o.controller === true)?.uid
    return service.uid === undefined || owner === undefined || owner === service.uid
  }

  /**
   * Another router's kill marked it as the replacement its lower count takes next. Only while it
   * is young: one the count did not take after all (that router died first) is an instance again.
   */
  #markedReplacement(pod: Pod): boolean {
    return pod.metadata.annotations?.[ANNOTATIONS.replacement] === 'true' && this.#o.clock.now() - Date.parse(pod.metadata.creationTimestamp ?? '') < REPLACEMENT_MARK_MS
  }

  #view(service: KubeService): ServiceState {
    const now = this.#o.clock.now()
    return {
      id: service.id,
      requested: service.requested,
      instances: this.#livePods(service).map((pod) =>
        instanceOf(pod, { serviceId: service.id, proto: service.proto, basePort: service.basePort, portCount: service.portCount, now }),
      ),
      failed: service.failed,
      killed: service.killed,
      deploymentError: service.deploymentError,
      killsUnderWay: service.unwrittenKills,
    }
  }

  /**
   * Queues a write of `requested` (and the pods of kills still queued) to /scale behind earlier
   * ones; resolves when it is done. `ready`, if given, is asked right before the write (after the
   * read): false reads and asks again.
   */
  #writeScale(service: KubeService, ready?: () => Promise<boolean>, own?: KillCount): Promise<void> {
    const next = service.scaling.then(() => this.#putScale(service, ready, own)).catch((err: unknown) => {
      // Shed by an API server under load: asked again (the autoscaler's next tick, the next cold
      // start), it is written then. A refusal (403, 422) is not asked again for the same count.
      if (isTransient(err) || (err instanceof KubeApiError && err.code === 409)) service.scaleUnwritten = true
      this.#o.log.error({ err, service: service.id }, 'scale failed')
    })
    service.scaling = next
    return next
  }

  /** Retries what an API server under stress (5xx, 429, a dropped connection) makes fail. */
  async #retrying<T>(call: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await call()
      } catch (err) {
        if (!isTransient(err) || attempt >= TRANSIENT_RETRIES || this.#closed) throw err
        await new Promise((resolve) => this.#o.clock.setTimeout(() => resolve(undefined), this.#o.relistBackoffMs * 2 ** attempt))
      }
    }
  }

  /**
   * The count written is `requested` plus the pods of kills not yet past their own write, less
   * the kill (`own`) this write is for. That kill stops counting as the write ends (done, not
   * needed, or failed), before any write queued behind it reads the count.
   */
  async #putScale(service: KubeService, ready?: () => Promise<boolean>, own?: KillCount): Promise<void> {
    try {
      for (let attempt = 1; ; ) {
        // Forgotten, or its ReplicaSet on the way out: nothing to scale (a failed delete writes again).
        if (this.#services.get(service.id) !== service || service.deleting !== undefined) return
        // A kill's lower count is never written by a closing router (see #lowerOnceReplaced).
        if (own !== undefined && this.#closed) return
        const scale = await this.#retrying(() => this.#o.api.getScale(service.replicaSet))
        const target = (): number => service.requested + service.unwrittenKills - (own?.counted === true ? 1 : 0)
        if (scale.spec.replicas === target()) {
          service.scaleUnwritten = false
          return
        }
        if (ready !== undefined && !(await ready())) continue
        attempt += 1
        const replicas = target()
        try {
          const written = await this.#o.api.replaceScale(service.replicaSet, { ...scale, spec: { replicas } })
          service.writtenVersion = versionOf(written.metadata.resourceVersion) ?? service.writtenVersion
          service.scaleUnwritten = false
          this.#o.log.debug({ service: service.id, from: scale.spec.replicas, to: replicas }, 'scaled')
          return
        } catch (err) {
          // Someone else changed the ReplicaSet since the read: read again and retry.
          const conflict = err instanceof KubeApiError && err.code === 409
          if (!conflict && !isTransient(err)) throw err
          if (attempt > SCALE_RETRIES || this.#closed) throw err
          // An API server shedding load (429, 5xx) is given time, as every other call is.
          if (!conflict) await new Promise((resolve) => this.#o.clock.setTimeout(() => resolve(undefined), this.#o.relistBackoffMs * 2 ** (attempt - 1)))
        }
      }
    } finally {
      if (own !== undefined) this.#uncount(service, own)
    }
  }

  #adopt(rs: ReplicaSet): void {
    const id = rs.metadata.annotations?.[ANNOTATIONS.serviceId]
    if (id === undefined || this.#services.has(id)) return
    const proto = (rs.metadata.annotations?.[ANNOTATIONS.backendProto] ?? 'http') as Proto
    const portCount = Number(rs.metadata.annotations?.[ANNOTATIONS.portCount] ?? '1') || 1
    this.#services.set(id, this.#newService(id, proto, portCount, rs.spec.replicas, rs.metadata.uid, basePortOf(rs)))
    this.#o.log.info({ service: id, replicaSet: rs.metadata.name, instances: rs.spec.replicas }, 'service adopted')
    this.#listeners.emit(id)
  }

  /**
   * What the ReplicaSets say, from the list and the watch: another router's versions are adopted,
   * its scale writes become this router's `requested`, and a ReplicaSet another router deleted
   * takes its service with it. Changes this router is making itself are left alone until written.
   */
  #observeReplicaSet(type: 'ADDED' | 'MODIFIED' | 'DELETED', rs: ReplicaSet): void {
    const id = rs.metadata.annotations?.[ANNOTATIONS.serviceId]
    if (id === undefined) return
    const service = this.#services.get(id)
    if (type === 'DELETED') {
      this.#replicaSetGone(id, rs.metadata.uid)
      return
    }
    if (service === undefined) {
      this.#adopt(rs)
      return
    }
    // A late event of a ReplicaSet this one replaced (this router deleted and made it again, and
    // knows the new uid): it says nothing of the new one. (A relist decides a replacement made
    // while nobody watched.)
    if (service.uid !== undefined && rs.metadata.uid !== undefined && rs.metadata.uid !== service.uid) return
    service.uid ??= rs.metadata.uid
    // One this router found made (a 409 at its create) may have been made with another podBasePort.
    service.basePort = basePortOf(rs) ?? service.basePort
    this.#settleDebts(service, rs)
    if (service.creating !== undefined || service.deleting !== undefined || service.localChanges > 0) return
    // An event from before this router's own last write says nothing new.
    const version = versionOf(rs.metadata.resourceVersion)
    if (version !== undefined && version <= service.writtenVersion) return
    if (rs.spec.replicas !== service.requested) {
      service.requested = rs.spec.replicas
      this.#listeners.emit(id)
    }
  }

  /** Another router deleted the version's ReplicaSet (its GC): the service goes here too. */
  #replicaSetGone(id: string, uid: string | undefined): void {
    const service = this.#services.get(id)
    if (service === undefined || service.creating !== undefined || service.deleting !== undefined) return
    // A same-named ReplicaSet made again since is not this one.
    if (service.uid !== undefined && uid !== undefined && service.uid !== uid) return
    // This router's own changes in flight (a kill waiting on the controller) do not keep a
    // ReplicaSet known to be gone; without its uid, the change is given the benefit of the doubt.
    if (service.localChanges > 0 && (service.uid === undefined || uid === undefined)) return
    this.#services.delete(id)
    this.#listeners.emit(id)
    this.#o.log.info({ service: id, replicaSet: service.replicaSet }, 'service deleted by another router')
  }

  /** ReplicaSets: what the first list of #syncPods adopted, then every change, from the list and the watch. */
  async #followReplicaSets(): Promise<void> {
    const selector = clusterSelector(this.#o.cluster)
    await this.#synced
    await this.#listAndWatch<ReplicaSet>(
      'replicaset',
      async () => {
        // Only services settled before the list began can be missing from it because they are gone.
        const before = [...this.#services.values()].filter((service) => service.creating === undefined && service.uid !== undefined)
        const uidAtStart = new Map(before.map((service) => [service, service.uid]))
        const list = await this.#o.api.listReplicaSets(selector)
        const listed = new Set<string>()
        for (const rs of list.items) {
          const id = rs.metadata.annotations?.[ANNOTATIONS.serviceId]
          if (id !== undefined) listed.add(id)
          // Deleted and made again while nobody watched: the list shows another ReplicaSet under
          // the name of one settled before it began, and untouched since. As if both events had
          // been seen, or the new one's delete would later pass for another's. (Only the list
          // says so: a watch event under an older uid may just be late.)
          const service = id === undefined ? undefined : this.#services.get(id)
          if (service !== undefined && id !== undefined && uidAtStart.has(service) && uidAtStart.get(service) === service.uid && service.creating === undefined && service.deleting === undefined && rs.metadata.uid !== undefined && rs.metadata.uid !== service.uid) {
            this.#replicaSetGone(id, service.uid)
          }
          this.#observeReplicaSet('MODIFIED', rs)
        }
        // Gone while nobody watched.
        for (const service of before) {
          if (!listed.has(service.id) && this.#services.get(service.id) === service) this.#replicaSetGone(service.id, service.uid)
        }
        return list.metadata.resourceVersion ?? ''
      },
      (resourceVersion, onEvent) => this.#o.api.watchReplicaSets(selector, resourceVersion, this.#o.watchTimeoutSecs, this.#abort.signal, onEvent),
      (type, rs) => this.#observeReplicaSet(type, rs),
    )
  }

  /** Pods: the first list (after the ReplicaSets, which it adopts) makes the backend ready. */
  async #syncPods(synced: () => void): Promise<void> {
    const selector = clusterSelector(this.#o.cluster)
    let first = true
    await this.#listAndWatch<Pod>(
      'pod',
      async () => {
        if (!first) {
          const list = await this.#o.api.listPods(selector)
          this.#replaceAll(list.items)
          return list.metadata.resourceVersion ?? ''
        }
        try {
          for (const rs of (await this.#o.api.listReplicaSets(selector)).items) this.#adopt(rs)
          const list = await this.#o.api.listPods(selector)
          this.#replaceAll(list.items)
          first = false
          this.#isSynced = true
          this.#firstListFailure = undefined
          synced()
          return list.metadata.resourceVersion ?? ''
        } catch (err) {
          this.#firstListFailure = err
          if (!isTransient(err)) for (const fail of [...this.#syncWaiters]) fail(err)
          throw err
        }
      },
      (resourceVersion, onEvent) => this.#o.api.watchPods(selector, resourceVersion, this.#o.watchTimeoutSecs, this.#abort.signal, onEvent),
      (type, pod) => this.#apply(type, pod),
    )
  }

  /**
   * Lists (`list` takes the items in and returns the list's resourceVersion), then watches from
   * there, resuming from the last version seen each time the server ends the stream; after a 410
   * it lists again at once, after any other failure with backoff (1.5× up to 60 s). Until closed.
   */
  async #listAndWatch<T extends { metadata: { resourceVersion?: string } }>(
    what: string,
    list: () => Promise<string>,
    watch: (resourceVersion: string, onEvent: (event: WatchEvent<T | KubeStatus>) => void) => Promise<void>,
    apply: (type: 'ADDED' | 'MODIFIED' | 'DELETED', object: T) => void,
  ): Promise<void> {
    let backoff = this.#o.relistBackoffMs
    /** When the last watch began: one that ran a while, whatever ended it, shows things work. */
    let watchedAt: number | undefined
    while (!this.#closed) {
      try {
        let resourceVersion = await list()
        for (;;) {
          watchedAt = this.#o.clock.now()
          await watch(resourceVersion, (event) => {
            if (event.type === 'ERROR') {
              const status = event.object as KubeStatus
              if (status.code === 410) throw new RelistNeeded(status.message ?? 'resource version expired')
              throw new KubeApiError(status.code, status.reason ?? 'Unknown', status.message ?? 'watch error')
            }
            const object = event.object as T
            resourceVersion = object.metadata.resourceVersion ?? resourceVersion
            if (event.type !== 'BOOKMARK') apply(event.type, object)
          })
          if (this.#closed) return
          // A stream ended at once (a proxy in the way that closes it, an API server unwell)
          // is not resumed at once, or the router would spin on it: it goes the way of a
          // failure, listed again after the back-off.
          if (this.#o.clock.now() - watchedAt < MIN_WATCH_MS) throw new Error(`the ${what} watch ended within ${MIN_WATCH_MS} ms of its start`)
          // The server ended the stream at timeoutSeconds: resume from the last version seen.
        }
      } catch (err) {
        if (this.#closed) return
        if (watchedAt !== undefined && this.#o.clock.now() - watchedAt >= MIN_WATCH_MS) backoff = this.#o.relistBackoffMs
        watchedAt = undefined
        if (err instanceof RelistNeeded || (err instanceof KubeApiError && err.code === 410)) {
          this.#o.log.info({ reason: err.message }, `${what} watch expired; listing again`)
          continue
        }
        this.#o.log.warn({ err, retryInMs: backoff }, `${what} list or watch failed; listing again`)
        await new Promise<void>((resolve) => {
          // The listener goes with the pause: one left per pause would pile up on the signal over outages.
          const onAbort = (): void => {
            cancel()
            resolve()
          }
          const cancel = this.#o.clock.setTimeout(() => {
            this.#abort.signal.removeEventListener('abort', onAbort)
            resolve()
          }, backoff)
          this.#abort.signal.addEventListener('abort', onAbort, { once: true })
        })
        backoff = Math.min(MAX_RELIST_BACKOFF_MS, backoff * 1.5)
      }
    }
  }

  /** A fresh list replaces the cache: pods missing from it were deleted while nobody watched. */
  #replaceAll(pods: readonly Pod[]): void {
    const listed = new Set(pods.map((p) => `${p.metadata.labels?.[LABELS.serviceId] ?? ''}/${p.metadata.name ?? ''}`))
    for (const [serviceId, byName] of this.#pods) {
      for (const [name, pod] of byName) {
        if (!listed.has(`${serviceId}/${name}`)) this.#apply('DELETED', pod)
      }
    }
    for (const pod of pods) this.#apply('MODIFIED', pod)
  }

  #apply(type: 'ADDED' | 'MODIFIED' | 'DELETED', pod: Pod): void {
    const serviceId = pod.metadata.labels?.[LABELS.serviceId]
    const name = pod.metadata.name
    if (serviceId === undefined || name === undefined) return
    let byName = this.#pods.get(serviceId)
    if (byName === undefined) this.#pods.set(serviceId, (byName = new Map()))
    const replacing = this.#services.get(serviceId)
    // A pod new to this router while a kill waits for the controller to replace its pod, or
    // after a kill gave up waiting for that: the replacement, late.
    if (type !== 'DELETED' && !byName.has(name) && replacing !== undefined) this.#claimReplacement(replacing, pod)
    if (type === 'DELETED') {
      byName.delete(name)
      if (byName.size === 0) this.#pods.delete(serviceId)
    } else {
      byName.set(name, pod)
    }
    const service = this.#services.get(serviceId)
    if (service === undefined) return
    this.#recordFailure(service, pod)
    if (type === 'DELETED') this.#recordDeleted(service, pod)
    if (type !== 'DELETED' && isReady(pod)) {
      // Seen becoming ready (not adopted ready by the first list): how long its container took.
      if (this.#isSynced && !service.readyRuns.has(name)) {
        const instance = instanceOf(pod, { serviceId: service.id, proto: service.proto, basePort: service.basePort, portCount: service.portCount, now: this.#o.clock.now() })
        this.#o.log.info({ service: service.id, instance: instance.id, pod: name, startupMs: Math.max(0, this.#o.clock.now() - instance.startedAt) }, 'instance healthy')
      }
      service.readyRuns.add(name)
      service.failedSinceHealthy = []
      service.eventError = undefined
    } else if (type === 'DELETED') {
      service.readyRuns.delete(name)
    }
    this.#update(service)
  }

  /**
   * A pod new to this router: a replacement made late for a kill that gave up waiting (while a
   * debt is owed: those come first), or, while a kill waits, maybe that kill's replacement.
   */
  #claimReplacement(service: KubeService, pod: Pod): void {
    const name = pod.metadata.name ?? ''
    const now = this.#o.clock.now()
    while (service.owedReplacements.length > 0 && (service.owedReplacements[0]?.until ?? 0) <= now) service.owedReplacements.shift()
    const debt = service.owedReplacements.shift()
    if (debt !== undefined) {
      this.#o.log.info({ service: service.id, pod: name }, 'a replacement came after its kill lowered the count: claimed, never an instance')
      service.replacements.set(name, { seenAt: versionOf(pod.metadata.resourceVersion), state: 'done', hideUntil: now + REPLACEMENT_MARK_MS })
      this.#markReplacement(name)
      this.#sweepLeftovers(service)
      return
    }
    if (service.awaitingReplacements > 0) service.replacements.set(name, { seenAt: versionOf(pod.metadata.resourceVersion), state: 'free' })
  }

  /**
   * Debts of late replacements are settled once the controller shows (its status, for a
   * generation at least as new as the lower count's write) that it acted on that count with no
   * pod beyond it: any pod it creates from then on answers a later count. A late replacement it
   * created before that status write, still on its way to this router, is the window left: the
   * pod watch and the ReplicaSet watch are separate streams (both from one API server).
   */
  #settleDebts(service: KubeService, rs: ReplicaSet): void {
    const version = versionOf(rs.metadata.resourceVersion)
    const observed = rs.status?.observedGeneration
    if (version === undefined || observed === undefined || observed < (rs.metadata.generation ?? 0) || (rs.status?.replicas ?? 0) > rs.spec.replicas) return
    const left = service.owedReplacements.filter((debt) => debt.written > version)
    service.owedReplacements.splice(0, service.owedReplacements.length, ...left)
  }

  /** Records a pod's container run that ended, once, as soon as the pod shows it (not when the kubelet restarts it after its back-off). */
  #recordFailure(service: KubeService, pod: Pod): void {
    const name = pod.metadata.name ?? ''
    const failure = lastFailure(pod, service.id, this.#o.clock.now())
    const key = failureKey(pod)
    if (failure === undefined || key === undefined) return
    // One run shows in many statuses (crashed, backing off, being re-created): recorded once.
    const seen = service.failuresSeen.get(name) ?? []
    if (seen.includes(key)) return
    service.failuresSeen.set(name, [...seen, key].slice(-FAILURE_KEYS_KEPT))
    service.failed = [failure, ...service.failed].slice(0, ENDED_KEPT)
    // An eviction (a node's pressure or shutdown) says nothing of the version: it does not count
    // towards Waiter's deployment errors, which two evictions in a row would otherwise make
    // ('Invalid startup command' from their exit code 137). Nor does a run this router saw
    // ready: its command and probe work (several that crash together under load would otherwise
    // read as an invalid startup command, and every request would be refused meanwhile).
    const wasReady = service.readyRuns.delete(name)
    if (!hasEnded(pod) && !wasReady) service.failedSinceHealthy = [...service.failedSinceHealthy, failure].slice(-ENDED_KEPT)
    this.#o.log.warn({ service: service.id, instance: failure.id, exitCode: failure.exitCode, reason: failure.message }, 'instance failed')
  }

  #recordDeleted(service: KubeService, pod: Pod): void {
    const name = pod.metadata.name ?? ''
    if (service.replacements.delete(name) || this.#markedReplacement(pod)) return
    // An evicted pod the pod GC removes at last: its end is recorded already, as a failure.
    if (hasEnded(pod)) {
      service.killing.delete(name)
      service.failuresSeen.delete(name)
      return
    }
    const onPurpose = service.killing.delete(name)
    service.failuresSeen.delete(name)
    const now = this.#o.clock.now()
    const instance = instanceOf(pod, { serviceId: service.id, proto: service.proto, basePort: service.basePort, portCount: service.portCount, now })
    const ended: EndedInstance = {
      id: instance.id,
      serviceId: service.id,
      host: instance.host,
      port: instance.port,
      startedAt: instance.startedAt,
      endedAt: now,
      exitCode: undefined,
      flags: instance.flags,
      message: onPurpose ? 'Killed by maitre' : 'Pod deleted by the cluster',
      logDirectory: undefined,
    }
    service.killed = [ended, ...service.killed].slice(0, ENDED_KEPT)
  }

  /** Recomputes the deployment error (Waiter's rules, then the cluster's own reasons) and tells listeners. */
  #update(service: KubeService): void {
    const live = this.#livePods(service)
    const healthy = live.filter(isReady).length
    const fromFailures = deploymentError({ healthy, failedSinceHealthy: service.failedSinceHealthy, unhealthy: [], minFailedInstances: this.#o.minFailedInstances })
    let fromCluster: string | undefined
    if (healthy === 0) {
      const now = this.#o.clock.now()
      const { problem, recheckAt } = clusterProblem(live, now, this.#o.unschedulableGraceSecs * 1000)
      fromCluster = problem ?? service.eventError
      // A pod still within its grace becomes the error when that runs out, event or not.
      if (recheckAt !== undefined && service.recheck === undefined) {
        const cancel = this.#o.clock.setTimeout(() => {
          this.#timers.delete(cancel)
          service.recheck = undefined
          if (this.#services.get(service.id) === service) this.#update(service)
        }, Math.max(1, recheckAt - now))
        service.recheck = cancel
        this.#timers.add(cancel)
      }
    }
    const next = service.createError ?? fromFailures ?? fromCluster
    if (next !== service.deploymentError) {
      service.deploymentError = next
      if (next !== undefined) this.#o.log.warn({ service: service.id, error: next }, 'deployment error')
    }
    this.#listeners.emit(service.id)
  }

  #scheduleEventCheck(): void {
    this.#cancelEventCheck = this.#o.clock.setTimeout(() => {
      void this.#checkEvents()
        .catch((err: unknown) => this.#o.log.warn({ err }, 'event check failed'))
        .finally(() => {
          if (!this.#closed) this.#scheduleEventCheck()
        })
    }, EVENT_CHECK_MS)
  }

  /** A ReplicaSet that cannot make its pods (quota, admission) says why only in its Events. */
  async #checkEvents(): Promise<void> {
    for (const service of this.#services.values()) {
      const live = this.#livePods(service)
      const short = service.requested > 0 && live.length < service.requested && !live.some(isReady)
      if (!short) {
        if (service.eventError !== undefined) {
          service.eventError = undefined
          this.#update(service)
        }
        continue
      }
      if (service.uid === undefined) continue
      const events = await this.#o.api.listEvents(`involvedObject.kind=ReplicaSet,involvedObject.name=${service.replicaSet}`)
      // Only what the controller recorded (or counted again) since this router's last write to
      // the count: Events live an hour, and a quota full then says nothing of this scale-up.
      const recent = events.items.filter((e) => (versionOf(e.metadata.resourceVersion) ?? 0n) > service.writtenVersion)
      const failedCreate = latestFailedCreate(recent, service.uid)
      const message = failedCreate === undefined ? undefined : `FailedCreate: ${failedCreate.message}`
      if (message !== service.eventError) {
        service.eventError = message
        this.#update(service)
      }
    }
  }
}

/** The maitre cluster a ReplicaSet's selector (its scale's, in string form) names, if any. */
function ownerClusterOf(selector: string | undefined): string | undefined {
  for (const requirement of (selector ?? '').split(',')) {
    const [key, value] = requirement.split('=')
    if (key?.trim() === LABELS.cluster && value !== undefined) return value.trim()
  }
  return undefined
}
