/** The authentication the configuration asks for, assembled once at startup. */
import type { AuthConfig } from '../config.ts'
import type { Clock } from '../clock.ts'
import { oneUserAuthenticator, type Authenticator } from './authenticator.ts'
import { AuthCookies } from './cookie.ts'
import { AuthGate } from './gate.ts'
import { jwtAuthenticator } from './jwt.ts'

export function authGateOf(auth: AuthConfig, context: { readonly oneUser: string; readonly routerSecret: string; readonly clock: Clock }): AuthGate {
  const admins = new Set(auth.admins)
  let authenticator: Authenticator
  if (auth.kind === 'jwt') {
    authenticator = jwtAuthenticator(
      {
        jwksFile: auth.jwt.jwksFile,
        jwksUrl: auth.jwt.jwksUrl,
        // Config validation guarantees both under kind jwt.
        issuer: auth.jwt.issuer as string,
        audience: auth.jwt.audience as string,
        clockSkewSecs: auth.jwt.clockSkewSecs,
        subjectClaim: auth.jwt.subjectClaim,
        admins,
      },
      context.clock,
    )
  } else {
    authenticator = oneUserAuthenticator(context.oneUser, { allowRemote: auth.allowRemoteOneUser })
  }
  return new AuthGate(authenticator, new AuthCookies(context.routerSecret, context.clock), admins)
}
