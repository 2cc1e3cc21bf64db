/**
 * Who is calling. Handlers receive a Principal and never look at credentials themselves, so a
 * JWT or OIDC authenticator can replace the one-user authenticator without touching them.
 */
import type { IncomingMessage } from 'node:http'

export interface Principal {
  /** The user name requests run as and tokens are owned by. */
  readonly user: string
  /** Admins may hard-delete tokens and use admin update mode. */
  readonly admin: boolean
}

export interface Authenticator {
  readonly kind: string
  /** Resolves the caller, or rejects with a MaitreError (401/403) when it cannot be trusted. */
  authenticate(req: IncomingMessage): Principal | Promise<Principal>
}

/** Waiter's one-user authenticator: every caller is the configured local user, who is also admin. */
export function oneUserAuthenticator(user: string): Authenticator {
  const principal: Principal = Object.freeze({ user, admin: true })
  return { kind: 'one-user', authenticate: () => principal }
}
