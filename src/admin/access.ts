/** Who manages a service version: the rule's inputs, read from the version's record and its tokens. */
import type { Principal } from '../auth/authenticator.ts'
import { assertMayManageService } from '../auth/rules.ts'
import type { ServiceRecord } from '../versions/registry.ts'

/**
 * A version's managers: the user it runs as. (A token that runs as its requester gives each
 * requester a version of its own, run as that requester.) A version recorded before run-as was
 * part of every version names nobody: only admins manage it.
 */
export function serviceManagers(record: ServiceRecord): Set<string> {
  const runAs = record.core['run-as-user']
  return typeof runAs === 'string' && runAs !== '*' ? new Set([runAs]) : new Set()
}

export function mayManage(who: Principal, record: ServiceRecord): boolean {
  return who.admin || serviceManagers(record).has(who.user)
}

export function assertManages(who: Principal, record: ServiceRecord): void {
  assertMayManageService(who, serviceManagers(record), record.id)
}
