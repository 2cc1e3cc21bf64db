/** Who manages a service version: the rule's inputs, read from the version's record and its tokens. */
import type { Principal } from '../auth/authenticator.ts'
import { assertMayManageService } from '../auth/rules.ts'
import type { ServiceRecord } from '../versions/registry.ts'
import type { Tokens } from '../versions/tokens.ts'

/**
 * A version's managers: the user it runs as; one that runs as its requester (no run-as-user in
 * its description) is managed by the owners of the tokens it was reached through.
 */
export function serviceManagers(record: ServiceRecord, tokens: Pick<Tokens, 'get'>): Set<string> {
  const runAs = record.core['run-as-user']
  if (typeof runAs === 'string' && runAs !== '*') return new Set([runAs])
  const owners = new Set<string>()
  for (const source of record.sources) {
    const owner = tokens.get(source.token, true)?.['owner']
    if (typeof owner === 'string') owners.add(owner)
  }
  return owners
}

export function mayManage(who: Principal, record: ServiceRecord, tokens: Pick<Tokens, 'get'>): boolean {
  return who.admin || serviceManagers(record, tokens).has(who.user)
}

export function assertManages(who: Principal, record: ServiceRecord, tokens: Pick<Tokens, 'get'>): void {
  assertMayManageService(who, serviceManagers(record, tokens), record.id)
}
