/**
 * The simulator's kubelet: runs each pod's first container as a local process group with the
 * pod's env (fieldRef status.podIP resolved), gives every pod its own loopback IP (127.x.y.z,
 * so each pod has all ports to itself, as in a pod network), runs readiness and liveness httpGet
 * probes, enforces the memory limit (OOMKilled), restarts crashed containers with
 * CrashLoopBackOff, refuses unknown images (ErrImagePull → ImagePullBackOff), and on delete sends
 * SIGTERM, then SIGKILL after the grace period.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { closeSync, mkdirSync, openSync } from 'node:fs'
import { join } from 'node:path'
import { request } from 'undici'
import { treeResidentBytes } from '../../src/backends/local/memory.ts'
import type { KObject } from './store.ts'

export interface KubeletOptions {
  readonly workDir: string
  /** Images that can be pulled; undefined: every image. */
  readonly images: ReadonlySet<string> | undefined
  readonly crashBackoffMs: number
  readonly maxCrashBackoffMs: number
  readonly memoryCheckMs: number
  /** Second octet of this simulator's pod IPs, so simulators side by side never share one. */
  readonly ipOctet: number
}

/** Writes a pod's new status (the simulator stores it and tells watchers). */
export type StatusWriter = (namespace: string, name: string, change: (pod: KObject) => void) => void

interface Running {
  readonly pod: KObject
  readonly dir: string
  readonly ip: string
  restartCount: number
  child: ChildProcess | undefined
  startedAt: string | undefined
  timers: NodeJS.Timeout[]
  killReason: 'OOMKilled' | 'Error' | undefined
  deleting: boolean
  livenessFailures: number
  exited: Promise<void>
}

const QUANTITY: Record<string, number> = { Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3, K: 1e3, M: 1e6, G: 1e9, k: 1e3 }

export function bytesOf(quantity: string): number {
  const m = /^(\d+(?:\.\d+)?)([KMG]i?|k)?$/.exec(quantity)
  if (m === null) return Number.POSITIVE_INFINITY
  return Number(m[1]) * (m[2] === undefined ? 1 : (QUANTITY[m[2]] ?? 1))
}

const now = (): string => new Date().toISOString()

export class Kubelet {
  readonly #o: KubeletOptions
  readonly #write: StatusWriter
  readonly #pods = new Map<string, Running>()
  #nextIp = 1
  #memoryTimer: NodeJS.Timeout | undefined

  constructor(options: KubeletOptions, write: StatusWriter) {
    this.#o = options
    this.#write = write
    mkdirSync(options.workDir, { recursive: true })
    this.#memoryTimer = setInterval(() => void this.#checkMemory(), options.memoryCheckMs)
    this.#memoryTimer.unref()
  }

  #ip(): string {
    const n = this.#nextIp++
    return `127.${this.#o.ipOctet}.${Math.floor(n / 250) % 250}.${(n % 250) + 1}`
  }

  /** A new pod was bound to this node. */
  start(pod: KObject): void {
    const key = `${pod.metadata.namespace as string}/${pod.metadata.name as string}`
    const dir = join(this.#o.workDir, pod.metadata.name as string)
    mkdirSync(dir, { recursive: true })
    const running: Running = { pod, dir, ip: this.#ip(), restartCount: 0, child: undefined, startedAt: undefined, timers: [], killReason: undefined, deleting: false, livenessFailures: 0, exited: Promise.resolve() }
    this.#pods.set(key, running)
    const container = pod.spec.containers[0]
    this.#status(running, (p) => {
      p.status = {
        phase: 'Pending',
        conditions: [{ type: 'PodScheduled', status: 'True' }],
        containerStatuses: [{ name: container.name, ready: false, restartCount: 0, image: container.image, state: { waiting: { reason: 'ContainerCreating' } } }],
      }
    })
    if (this.#o.images !== undefined && !this.#o.images.has(container.image as string)) {
      this.#later(running, 50, () => this.#imagePullFailure(running, 'ErrImagePull', `rpc error: code = NotFound desc = failed to pull and unpack image "${container.image as string}": not found`))
      this.#later(running, 300, () => this.#imagePullFailure(running, 'ImagePullBackOff', `Back-off pulling image "${container.image as string}"`))
      return
    }
    this.#later(running, 10, () => this.#run(running))
  }

  #imagePullFailure(running: Running, reason: string, message: string): void {
    this.#status(running, (p) => {
      p.status.containerStatuses[0].state = { waiting: { reason, message } }
    })
  }

  #later(running: Running, ms: number, fn: () => void): void {
    const timer = setTimeout(() => {
      running.timers = running.timers.filter((t) => t !== timer)
      if (!running.deleting) fn()
    }, ms)
    running.timers.push(timer)
  }

  #status(running: Running, change: (pod: KObject) => void): void {
    this.#write(running.pod.metadata.namespace as string, running.pod.metadata.name as string, change)
  }

  /** A container's filesystem is the pod's directory: emptyDir mount paths map onto it. */
  #hostPath(running: Running, path: string): string {
    const container = running.pod.spec.containers[0]
    for (const mount of container.volumeMounts ?? []) {
      if (path === mount.mountPath || path.startsWith(`${mount.mountPath as string}/`)) {
        const dir = join(running.dir, mount.name as string)
        mkdirSync(dir, { recursive: true })
        return join(dir, path.slice((mount.mountPath as string).length))
      }
    }
    return path
  }

  #env(running: Running): Record<string, string> {
    const env: Record<string, string> = { PATH: process.env['PATH'] ?? '/usr/bin:/bin', HOSTNAME: running.pod.metadata.name as string }
    for (const e of running.pod.spec.containers[0].env ?? []) {
      if (e.value !== undefined) env[e.name] = this.#hostPath(running, e.value as string)
      else if (e.valueFrom?.fieldRef?.fieldPath === 'status.podIP') env[e.name] = running.ip
      else if (e.valueFrom?.fieldRef?.fieldPath === 'metadata.name') env[e.name] = running.pod.metadata.name as string
      else if (e.valueFrom?.fieldRef?.fieldPath === 'metadata.namespace') env[e.name] = running.pod.metadata.namespace as string
    }
    return env
  }

  #run(running: Running): void {
    const container = running.pod.spec.containers[0]
    const [command, ...args] = container.command as string[]
    const cwd = container.workingDir === undefined ? running.dir : this.#hostPath(running, container.workingDir as string)
    mkdirSync(cwd, { recursive: true })
    const out = openSync(join(running.dir, `${container.name as string}-${running.restartCount}.log`), 'a')
    let child: ChildProcess
    try {
      child = spawn(command as string, args, { cwd, env: this.#env(running), detached: true, stdio: ['ignore', out, out] })
    } finally {
      closeSync(out)
    }
    running.child = child
    running.killReason = undefined
    running.livenessFailures = 0
    running.startedAt = now()
    running.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        signalGroup(child.pid, 'SIGKILL')
        this.#onExit(running, code ?? 128 + (signal === 'SIGKILL' ? 9 : signal === 'SIGTERM' ? 15 : 0))
        resolve()
      })
      child.once('error', () => undefined) // ENOENT arrives as exit 127 from /bin/sh, or here
    })
    this.#status(running, (p) => {
      p.status.phase = 'Running'
      p.status.podIP = running.ip
      p.status.startTime ??= running.startedAt
      p.status.conditions = [
        { type: 'PodScheduled', status: 'True' },
        { type: 'Initialized', status: 'True' },
        { type: 'ContainersReady', status: 'False' },
        { type: 'Ready', status: 'False' },
      ]
      const cs = p.status.containerStatuses[0]
      cs.ready = false
      cs.restartCount = running.restartCount
      cs.state = { running: { startedAt: running.startedAt } }
    })
    const readiness = container.readinessProbe
    if (readiness !== undefined) this.#probeLoop(running, child, readiness, 'readiness')
    else this.#setReady(running, true)
    const liveness = container.livenessProbe
    if (liveness !== undefined) this.#probeLoop(running, child, liveness, 'liveness')
  }

  #probeLoop(running: Running, child: ChildProcess, probe: KObject, kind: 'readiness' | 'liveness'): void {
    const periodMs = (probe.periodSeconds ?? 10) * 1000
    const tick = (): void => {
      if (running.child !== child || child.exitCode !== null || running.deleting) return
      void this.#probe(running, probe).then((ok) => {
        if (running.child !== child || child.exitCode !== null || running.deleting) return
        if (kind === 'readiness') this.#setReady(running, ok)
        else if (ok) running.livenessFailures = 0
        else if (++running.livenessFailures >= (probe.failureThreshold ?? 3)) {
          running.killReason = 'Error'
          signalGroup(child.pid, 'SIGKILL')
          return
        }
        this.#later(running, periodMs, tick)
      })
    }
    this.#later(running, (probe.initialDelaySeconds ?? 0) * 1000, tick)
  }

  async #probe(running: Running, probe: KObject): Promise<boolean> {
    const get = probe.httpGet
    const headers: Record<string, string> = { 'user-agent': 'kube-probe/1.31' }
    for (const h of get.httpHeaders ?? []) headers[h.name] = h.value
    try {
      const scheme = get.scheme === 'HTTPS' ? 'https' : 'http'
      const res = await request(`${scheme}://${running.ip}:${get.port as number}${get.path as string}`, { headers, headersTimeout: (probe.timeoutSeconds ?? 1) * 1000, bodyTimeout: (probe.timeoutSeconds ?? 1) * 1000 })
      await res.body.dump()
      return res.statusCode >= 200 && res.statusCode < 400
    } catch {
      return false
    }
  }

  #setReady(running: Running, ready: boolean): void {
    this.#status(running, (p) => {
      const cs = p.status.containerStatuses[0]
      if (cs.ready === ready) return
      cs.ready = ready
      for (const c of p.status.conditions) if (c.type === 'Ready' || c.type === 'ContainersReady') c.status = ready ? 'True' : 'False'
    })
  }

  #onExit(running: Running, exitCode: number): void {
    running.child = undefined
    if (running.deleting) return
    const reason = running.killReason ?? (exitCode === 0 ? 'Completed' : 'Error')
    const finishedAt = now()
    const backoff = Math.min(this.#o.maxCrashBackoffMs, this.#o.crashBackoffMs * 2 ** running.restartCount)
    running.restartCount += 1
    this.#status(running, (p) => {
      const cs = p.status.containerStatuses[0]
      cs.ready = false
      cs.restartCount = running.restartCount
      cs.lastState = { terminated: { exitCode, reason, startedAt: running.startedAt, finishedAt } }
      cs.state = { waiting: { reason: 'CrashLoopBackOff', message: `back-off ${Math.round(backoff / 1000)}s restarting failed container=${cs.name as string} pod=${p.metadata.name as string}` } }
      for (const c of p.status.conditions) if (c.type === 'Ready' || c.type === 'ContainersReady') c.status = 'False'
    })
    this.#later(running, backoff, () => this.#run(running))
  }

  async #checkMemory(): Promise<void> {
    const byPid = new Map<number, Running>()
    for (const running of this.#pods.values()) if (running.child?.pid !== undefined) byPid.set(running.child.pid, running)
    if (byPid.size === 0) return
    const usage = await treeResidentBytes(byPid.keys())
    for (const [pid, { bytes }] of usage) {
      const running = byPid.get(pid)
      const limit = running?.pod.spec.containers[0].resources?.limits?.memory as string | undefined
      if (running === undefined || limit === undefined || running.child?.pid !== pid) continue
      if (bytes > bytesOf(limit)) {
        running.killReason = 'OOMKilled'
        signalGroup(pid, 'SIGKILL')
      }
    }
  }

  /** The API server set deletionTimestamp: SIGTERM now, SIGKILL after the grace period; resolves when gone. */
  async stop(namespace: string, name: string, graceSeconds: number): Promise<void> {
    const running = this.#pods.get(`${namespace}/${name}`)
    if (running === undefined) return
    running.deleting = true
    for (const timer of running.timers) clearTimeout(timer)
    const child = running.child
    if (child?.pid !== undefined && child.exitCode === null) {
      signalGroup(child.pid, 'SIGTERM')
      const kill = setTimeout(() => signalGroup(child.pid, 'SIGKILL'), graceSeconds * 1000)
      await running.exited
      clearTimeout(kill)
    }
    this.#pods.delete(`${namespace}/${name}`)
  }

  async close(): Promise<void> {
    if (this.#memoryTimer !== undefined) clearInterval(this.#memoryTimer)
    await Promise.all([...this.#pods.values()].map((r) => this.stop(r.pod.metadata.namespace as string, r.pod.metadata.name as string, 0)))
  }
}

function signalGroup(pid: number | undefined, signal: NodeJS.Signals): void {
  if (pid === undefined) return
  try {
    process.kill(-pid, signal)
  } catch {
    // ESRCH: already gone.
  }
}
