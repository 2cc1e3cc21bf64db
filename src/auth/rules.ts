/**
 * Waiter's authorization rules, as pure decisions over a principal and the names a rule compares.
 * Each refusal is a 403 whose code and error-class name the rule, with Waiter's message.
 */
import { MaitreError } from '../errors.ts'
import type { Principal } from './authenticator.ts'

/** The token keys only an owner (or an admin) may change: an editor edits everything else. */
export const OWNER_ONLY_TOKEN_KEYS = ['owner', 'editor', 'run-as-user'] as const

/** Owner, editor or admin may write a token; only the owner or an admin may delete it. */
export function assertMayEditToken(who: Principal, token: string, current: { readonly owner?: unknown; readonly editor?: unknown }, changedKeys: readonly string[]): void {
  if (who.admin || current.owner === who.user) return
  if (current.editor === who.user) {
    const ownerOnly = changedKeys.filter((k) => (OWNER_ONLY_TOKEN_KEYS as readonly string[]).includes(k))
    if (ownerOnly.length === 0) return
    throw new MaitreError('MAITRE_NOT_TOKEN_MANAGER', `An editor cannot change ${ownerOnly.join(', ')} of token ${token}`, { details: { token, rule: 'editor-limits', fields: ownerOnly } })
  }
  throw new MaitreError('MAITRE_NOT_TOKEN_MANAGER', `Cannot update token (owner=${String(current.owner)}) as user: ${who.user}`, { details: { token, rule: 'token-owner' } })
}

export function assertMayDeleteToken(who: Principal, token: string, owner: unknown): void {
  if (who.admin || owner === who.user) return
  throw new MaitreError('MAITRE_NOT_TOKEN_MANAGER', 'User not allowed to delete token', { details: { token, rule: 'token-owner' } })
}

/** A token owned by someone else than its writer needs an admin. */
export function assertMayAssignOwner(who: Principal, token: string, owner: string): void {
  if (who.admin || owner === who.user) return
  throw new MaitreError('MAITRE_CANNOT_ASSIGN_OWNER', `Cannot create token as provided owner: ${owner}`, { details: { token, rule: 'token-owner-assignment', owner } })
}

/**
 * Waiter's run-as rule: a service runs as its requester (`*` or no run-as-user) or as the
 * caller; running as anybody else takes an admin who says so (`update-mode=admin`).
 */
export function assertMayRunAs(who: Principal, runAsUser: unknown, adminMode: boolean): void {
  if (runAsUser === undefined || runAsUser === '*' || runAsUser === who.user) return
  if (who.admin && adminMode) return
  throw new MaitreError('MAITRE_CANNOT_RUN_AS', `Authenticated user '${who.user}' cannot run as user '${String(runAsUser)}'`, {
    details: { rule: 'run-as', 'run-as-user': runAsUser, ...(who.admin ? { hint: 'admins use update-mode=admin' } : {}) },
  })
}

/**
 * Waiter's check when a request arrives: the caller must be able to run as the version's
 * run-as-user, unless one token it named vouches for it (see the resolver's preauthorized tokens).
 */
export function assertMayRunService(who: Principal, runAsUser: unknown, serviceId: string): void {
  if (runAsUser === who.user || who.admin) return
  throw new MaitreError('MAITRE_CANNOT_RUN_AS', 'Authenticated user cannot run service', {
    details: { rule: 'run-as', 'run-as-user': runAsUser, 'service-id': serviceId },
  })
}

/** `permitted-user` decides who may call a version: `*` is anyone authenticated. */
export function assertMayInvoke(who: Principal, permittedUser: unknown, serviceId: string): void {
  if (permittedUser === undefined || permittedUser === '*' || permittedUser === who.user || who.admin) return
  throw new MaitreError('MAITRE_NOT_PERMITTED', "This user isn't allowed to invoke this service", {
    details: { rule: 'permitted-user', 'service-id': serviceId, 'permitted-user': permittedUser },
  })
}

/** Kill, expire, delete, override, suspend, resume and logs of a version: its managers or an admin. */
export function assertMayManageService(who: Principal, managers: ReadonlySet<string>, serviceId: string): void {
  if (who.admin || managers.has(who.user)) return
  throw new MaitreError('MAITRE_NOT_SERVICE_MANAGER', `User ${who.user} cannot manage service ${serviceId}`, { details: { rule: 'service-manager', 'service-id': serviceId } })
}

/** Refuses a non-admin with Waiter's `message` for the action. */
export function assertAdmin(who: Principal, message: string): void {
  if (who.admin) return
  throw new MaitreError('MAITRE_ADMIN_ONLY', message, { details: { rule: 'admin' } })
}
