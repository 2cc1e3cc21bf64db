/** The simulator's ReplicaSet controller picks scale-down victims in the real controller's order (reference/kubernetes-api.md). */
import t from 'tap'
import { victimOrder } from '../fixtures/k8s-sim/simulator.ts'
import type { KObject } from '../fixtures/k8s-sim/store.ts'

const pod = (name: string, o: { phase?: string; ip?: boolean; ready?: boolean; readySince?: string; cost?: number; restarts?: number; created?: string } = {}): KObject => ({
  metadata: { name, creationTimestamp: o.created ?? '2026-01-01T00:00:00Z', annotations: o.cost === undefined ? {} : { 'controller.kubernetes.io/pod-deletion-cost': String(o.cost) } },
  status: {
    phase: o.phase ?? 'Running',
    ...(o.ip === false ? {} : { podIP: '10.0.0.1' }),
    conditions: [{ type: 'Ready', status: o.ready === false ? 'False' : 'True', lastTransitionTime: o.readySince ?? '2026-01-01T00:00:10Z' }],
    containerStatuses: [{ restartCount: o.restarts ?? 0 }],
  },
})

const order = (...pods: KObject[]): string[] => [...pods].sort(victimOrder).map((p) => p.metadata.name as string)

t.test('unscheduled, then Pending, then unready, then the lowest deletion cost, then ready for less time, then more restarts, then newer', async (t) => {
  t.same(order(pod('running'), pod('unscheduled', { phase: 'Pending', ip: false })), ['unscheduled', 'running'])
  t.same(order(pod('running'), pod('pending', { phase: 'Pending' })), ['pending', 'running'])
  t.same(order(pod('ready', { cost: -100 }), pod('unready', { ready: false })), ['unready', 'ready'], 'readiness comes before any deletion cost')
  t.same(order(pod('plain'), pod('cheap', { cost: -5 })), ['cheap', 'plain'])
  t.same(order(pod('long', { readySince: '2026-01-01T00:00:01Z', restarts: 0 }), pod('short', { readySince: '2026-01-01T00:05:00Z', restarts: 0 })), ['short', 'long'], 'ready for less time goes first')
  t.same(order(pod('steady', { restarts: 0 }), pod('flaky', { restarts: 3 })), ['flaky', 'steady'])
  t.same(order(pod('old', { created: '2026-01-01T00:00:00Z' }), pod('new', { created: '2026-01-01T00:01:00Z' })), ['new', 'old'])
})
