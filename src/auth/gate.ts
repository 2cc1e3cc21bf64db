/**
 * The one door every authenticated request goes through: a valid x-waiter-auth cookie (unless a
 * bearer token came too), else the configured authenticator. A caller that proved itself afresh gets the cookie, so its next
 * requests skip the signature checks.
 */
import type { IncomingMessage } from 'node:http'
import { isPrincipalName, type Authenticator, type Principal } from './authenticator.ts'
import type { AuthCookies } from './cookie.ts'

const BEARER = /^bearer\s/i

export class AuthGate {
  readonly #authenticator: Authenticator
  readonly #cookies: AuthCookies
  readonly #admins: ReadonlySet<string>
  /** One-user trusts loopback callers by their address, not by a cookie: it issues cookies, it does not read them. */
  readonly #readsCookies: boolean

  constructor(authenticator: Authenticator, cookies: AuthCookies, admins: ReadonlySet<string>) {
    this.#authenticator = authenticator
    this.#cookies = cookies
    this.#admins = admins
    this.#readsCookies = authenticator.kind !== 'one-user'
  }

  /** Whether callers are trusted by their address (one-user), which a browser under a foreign name must not borrow. */
  get trustsByAddress(): boolean {
    return this.#authenticator.kind === 'one-user'
  }

  /** The caller, or a MaitreError (401) when it cannot be trusted. Synchronous when nothing needs awaiting. */
  authenticate(req: IncomingMessage): Principal | Promise<Principal> {
    // Waiter: a bearer token sent along with the cookie is what the caller means now (a client
    // switching users, a cookie jar shared across identities): the cookie is not read.
    if (this.#readsCookies && !BEARER.test(req.headers.authorization ?? '')) {
      const fromCookie = this.#cookies.fromRequest(req.headers.cookie)
      // A cookie names a principal as today's rules allow (one sealed under older rules does not count).
      if (fromCookie !== undefined && fromCookie.kind === this.#authenticator.kind && isPrincipalName(fromCookie.user)) {
        return { user: fromCookie.user, admin: this.#admins.has(fromCookie.user), method: 'cookie' }
      }
    }
    return this.#authenticator.authenticate(req)
  }

  /** Set-Cookie values for a caller that proved itself afresh (`secure`: over https); undefined for one that came with a cookie. */
  cookiesFor(principal: Principal, secure = false): readonly string[] | undefined {
    if (principal.method === undefined || principal.method === 'cookie') return undefined
    return this.#cookies.issue(principal.user, this.#authenticator.kind, principal.expiresAt, secure)
  }
}
