/**
 * Who is calling. Handlers receive a Principal and never look at credentials themselves, so the
 * way a caller proves who it is (one-user, JWT, a cookie) can change without touching them.
 */
import type { IncomingMessage } from 'node:http'
import { MaitreError } from '../errors.ts'

export interface Principal {
  /** The user name requests run as, tokens are owned by, and rules compare. */
  readonly user: string
  /** Admins may do everything (auth.admins; the one-user principal). */
  readonly admin: boolean
  /**
   * How the caller proved it: a fresh proof earns an x-waiter-auth cookie, a cookie does not.
   * Unset for principals no request carried (internal callers, unit tests).
   */
  readonly method?: 'one-user' | 'jwt' | 'cookie'
  /** When the proof itself lapses (a JWT's exp, ms): a cookie never outlives it. */
  readonly expiresAt?: number
  /** Nobody proved anything: only tokens with authentication disabled serve such a caller. */
  readonly anonymous?: true
}

/**
 * Whether a name can be a principal: printable ASCII (it travels in headers to instances), no
 * space at either end (HTTP would trim it into another user's name), at most 256 characters,
 * and not a wildcard of the rules (`*`, `:any`).
 */
export const MAX_PRINCIPAL_CHARS = 256

export function isPrincipalName(name: unknown): name is string {
  return typeof name === 'string' && name.length <= MAX_PRINCIPAL_CHARS && /^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$/.test(name) && name !== '*' && name !== ':any'
}

/** The caller of a service whose token turned authentication off. */
export const ANONYMOUS: Principal = Object.freeze({ user: '', admin: false, anonymous: true })

export interface Authenticator {
  readonly kind: string
  /** Resolves the caller, or rejects with a MaitreError (401/403) when it cannot be trusted. */
  authenticate(req: IncomingMessage): Principal | Promise<Principal>
}

/** Loopback peers: the only callers a one-user router trusts unless told otherwise. */
export function isLoopbackAddress(address: string | undefined): boolean {
  if (address === undefined) return false
  return address === '::1' || address.startsWith('127.') || address.startsWith('::ffff:127.')
}

/**
 * Waiter's one-user authenticator: every caller is the configured user, who is also admin. That
 * is only safe for callers on this machine, so a remote caller is refused unless the
 * configuration says on purpose that remote callers are trusted too.
 */
export function oneUserAuthenticator(user: string, options: { readonly allowRemote: boolean }): Authenticator {
  const principal: Principal = Object.freeze({ user, admin: true, method: 'one-user' })
  return {
    kind: 'one-user',
    authenticate: (req) => {
      if (options.allowRemote || isLoopbackAddress(req.socket.remoteAddress)) return principal
      throw new MaitreError('MAITRE_UNAUTHORIZED', 'This router trusts callers on its own machine only (auth.kind one-user)', {
        details: { reason: 'remote-caller' },
      })
    },
  }
}
