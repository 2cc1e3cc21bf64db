/** A version's parameters (description, defaults, overrides) as the autoscaler's policy. */
import type { ScalableService } from './autoscaler.ts'
import { scaleUpQuanta } from './decide.ts'

/**
 * `stale`: the version's tokens moved on. Waiter scales a stale version as if its min-instances
 * were 1 (at most): it may still serve requests through fallback, but holds no more than one
 * instance idle while its collection is due.
 */
export function scalableServiceOf(p: Readonly<Record<string, unknown>>, stale = false): ScalableService {
  return {
    policy: {
      minInstances: stale ? Math.min(1, p['min-instances'] as number) : (p['min-instances'] as number),
      maxInstances: p['max-instances'] as number,
      concurrencyLevel: p['concurrency-level'] as number,
      scaleFactor: p['scale-factor'] as number,
      scaleUpFactor: p['scale-up-factor'] as number,
      scaleDownFactor: p['scale-down-factor'] as number,
      jitterThreshold: p['jitter-threshold'] as number,
      expiredInstanceRestartRate: p['expired-instance-restart-rate'] as number,
      maxScaleUpPerDecision: scaleUpQuanta(p['cpus'] as number, p['mem'] as number),
    },
    instanceExpiryMs: (p['instance-expiry-mins'] as number) * 60_000,
  }
}
