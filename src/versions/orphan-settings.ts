/**
 * A version's suspension and overrides go with it, after its record (the collection and
 * DELETE /apps/{id} forget the record first, so that nothing starts the version meanwhile). A
 * router that died between the two left them behind: the next request recording the same
 * version (its token unchanged) would find it suspended again, its old overrides in force. At
 * start, before anything is served, settings with no record are dropped.
 *
 * Single-router mode only: there the data-dir lock makes this router the only writer. In
 * cluster mode another router may be recording a version and suspending it while this one
 * loads the stores one after the other, and would lose that suspension.
 */
import type { Logger } from '../log.ts'
import type { Overrides } from './overrides.ts'
import type { Suspensions } from './suspensions.ts'

export async function dropOrphanSettings(recorded: (serviceId: string) => boolean, overrides: Overrides, suspensions: Suspensions, log: Logger): Promise<void> {
  for (const id of overrides.ids()) {
    if (recorded(id)) continue
    await overrides.clear(id)
    log.warn({ service: id }, 'dropped the overrides of a version no longer recorded (the router stopped while it was collected or deleted)')
  }
  for (const id of suspensions.ids()) {
    if (recorded(id)) continue
    await suspensions.resume(id)
    log.warn({ service: id }, 'dropped the suspension of a version no longer recorded (the router stopped while it was collected or deleted)')
  }
}
