/**
 * How long a service waits before launching again after an instance failed, as a pure function
 * of its run of failures (the local and Mesos backends; Kubernetes has the kubelet's own
 * CrashLoopBackOff).
 *
 * A run of failures ends only once the service has had a healthy instance for a stable window
 * without a failure since, as the kubelet resets CrashLoopBackOff after a container ran for ten
 * minutes (twice its five-minute cap): an instance that passes its health checks and crashes a
 * few seconds later (a leak, a poison request at start) backs off like one that never started,
 * instead of being relaunched every few seconds for as long as the version is asked for.
 */

export interface FailureRun {
  /** Failures in the run so far. */
  readonly failures: number
  /** Since when the service has had a healthy instance with no failure after it; undefined if not now. */
  readonly healthySince: number | undefined
}

export const NO_FAILURES: FailureRun = { failures: 0, healthySince: undefined }

export interface BackoffRule {
  readonly baseMs: number
  /** The service's restart-backoff-factor: the delay's growth per failure in the run. */
  readonly factor: number
  readonly maxMs: number
}

/** Healthy for this long after the last failure, the service starts a fresh run: twice the cap, as the kubelet. */
export function stableWindowMs(rule: BackoffRule): number {
  return 2 * rule.maxMs
}

/** An instance failed at `now`; `othersHealthy`: another instance of the service is healthy now. */
export function afterFailure(run: FailureRun, now: number, rule: BackoffRule, othersHealthy: boolean): FailureRun {
  const ended = run.healthySince !== undefined && now - run.healthySince >= stableWindowMs(rule)
  return { failures: (ended ? 0 : run.failures) + 1, healthySince: othersHealthy ? now : undefined }
}

/** No instance of the service is healthy any more (one hung, say): the healthy stretch is over. */
export function afterNoneHealthy(run: FailureRun): FailureRun {
  return run.healthySince === undefined ? run : { ...run, healthySince: undefined }
}

/** An instance of the service is healthy at `now`. */
export function afterHealthy(run: FailureRun, now: number): FailureRun {
  return run.healthySince === undefined ? { ...run, healthySince: now } : run
}

/** The wait before the next launch: base × factor^(failures − 1), up to the cap. */
export function relaunchDelayMs(run: FailureRun, rule: BackoffRule): number {
  if (run.failures === 0) return 0
  return Math.min(rule.maxMs, rule.baseMs * rule.factor ** (run.failures - 1))
}
