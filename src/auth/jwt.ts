/**
 * Bearer JWT authentication with `jose`: the signature (RS256, ES256 or EdDSA only: no `none`, no
 * HMAC, so a public key can never be abused as a shared secret), the issuer, the audience, and
 * exp/nbf with a stated leeway. Keys come from a JWKS file (re-read when it changes) or URL
 * (jwks-url.ts).
 */
import { readFileSync, statSync } from 'node:fs'
import type { IncomingMessage } from 'node:http'
import { createLocalJWKSet, errors as joseErrors, jwtVerify, type JSONWebKeySet, type JWTVerifyGetKey } from 'jose'
import { MaitreError } from '../errors.ts'
import type { Clock } from '../clock.ts'
import { JwksUrl, KeysUnavailable } from './jwks-url.ts'
import { isPrincipalName, MAX_PRINCIPAL_CHARS, type Authenticator, type Principal } from './authenticator.ts'

export const JWT_ALGORITHMS = ['RS256', 'ES256', 'EdDSA'] as const
/** A JWKS file is looked at again at most this often for quiet changes (a key revoked under the same id). */
const FILE_RECHECK_MS = 1000

export interface JwtOptions {
  readonly jwksFile: string | null
  readonly jwksUrl: string | null
  readonly issuer: string
  readonly audience: string
  readonly clockSkewSecs: number
  readonly subjectClaim: string
  readonly admins: ReadonlySet<string>
  /** After a fetch, an unknown key id triggers another only this much later (protects the issuer). */
  readonly refetchCooldownMs?: number
}

export const BEARER_CHALLENGE = 'Bearer realm="maitre"'

function unauthorized(message: string, reason: string, invalidToken: boolean): MaitreError {
  return new MaitreError('MAITRE_UNAUTHORIZED', message, {
    details: { reason },
    headers: { 'www-authenticate': invalidToken ? `${BEARER_CHALLENGE}, error="invalid_token"` : BEARER_CHALLENGE },
  })
}

/** A JWKS file's key set, read again when the file changes (checked on an unknown key id, and at most once a second otherwise). */
class JwksFile {
  readonly #path: string
  readonly #clock: Clock
  #stamp = ''
  #checkedAt = -Infinity
  #keys: JWTVerifyGetKey

  /** Reads the file once: a missing or malformed JWKS at start is a configuration error. */
  constructor(path: string, clock: Clock) {
    this.#path = path
    this.#clock = clock
    const loaded = this.#load()
    if (loaded instanceof Error) throw new MaitreError('MAITRE_INVALID_CONFIG', `auth.jwt.jwksFile ${path}: ${loaded.message}`)
    this.#keys = loaded
  }

  readonly getKey: JWTVerifyGetKey = async (header, token) => {
    this.#refresh(false)
    try {
      return await this.#keys(header, token)
    } catch (err) {
      if (!(err instanceof joseErrors.JWKSNoMatchingKey)) throw err
      // Keys are rotated by rewriting the file: an unknown key id may be a new key.
      if (!this.#refresh(true)) throw err
      return await this.#keys(header, token)
    }
  }

  /** Re-reads the file if it changed; true when the key set was replaced. A broken rewrite keeps the old keys. */
  #refresh(force: boolean): boolean {
    const now = this.#clock.now()
    if (!force && now - this.#checkedAt < FILE_RECHECK_MS) return false
    this.#checkedAt = now
    if (this.#stampOf() === this.#stamp) return false
    const loaded = this.#load()
    if (loaded instanceof Error) return false
    this.#keys = loaded
    return true
  }

  #stampOf(): string {
    try {
      const s = statSync(this.#path)
      return `${s.ino}:${s.size}:${s.mtimeMs}`
    } catch {
      return 'missing'
    }
  }

  #load(): JWTVerifyGetKey | Error {
    const stamp = this.#stampOf()
    try {
      const jwks = JSON.parse(readFileSync(this.#path, 'utf8')) as JSONWebKeySet
      const keys = createLocalJWKSet(jwks)
      this.#stamp = stamp
      return keys
    } catch (err) {
      return err as Error
    }
  }
}

export function jwtAuthenticator(options: JwtOptions, clock: Clock): Authenticator {
  const getKey = keySource(options, clock)
  const verifyOptions = {
    issuer: options.issuer,
    audience: options.audience,
    algorithms: [...JWT_ALGORITHMS],
    clockTolerance: options.clockSkewSecs,
    requiredClaims: ['exp'],
  }
  return {
    kind: 'jwt',
    async authenticate(req: IncomingMessage): Promise<Principal> {
      const header = req.headers.authorization
      const match = header === undefined ? null : /^Bearer[ ]+([^\s]+)\s*$/i.exec(header)
      if (match === null) throw unauthorized('Authentication required: send Authorization: Bearer <JWT>', header === undefined ? 'missing-credentials' : 'not-bearer', false)
      const token = match[1] as string
      // The last base64url character of a signature carries spare bits a decoder ignores: one
      // signature has several spellings. Only the canonical one is accepted, so a token string
      // names exactly one token (a log, a revocation list, a cache key can rely on it).
      const signature = token.slice(token.lastIndexOf('.') + 1)
      if (Buffer.from(signature, 'base64url').toString('base64url') !== signature) throw unauthorized('Invalid bearer token (ERR_JWS_INVALID)', 'ERR_JWS_INVALID', true)
      let payload: Record<string, unknown>
      try {
        ;({ payload } = await jwtVerify(token, getKey, { ...verifyOptions, currentDate: new Date(clock.now()) }))
      } catch (err) {
        if (err instanceof KeysUnavailable) {
          throw new MaitreError('MAITRE_AUTH_UNAVAILABLE', 'The keys that verify bearer tokens cannot be fetched; try again later', { details: { reason: err.message } })
        }
        const code = err instanceof joseErrors.JOSEError ? err.code : 'ERR_JWT_INVALID'
        throw unauthorized(`Invalid bearer token (${code})`, code, true)
      }
      const subject = payload[options.subjectClaim]
      if (!isPrincipalName(subject)) {
        throw unauthorized(`The bearer token's ${options.subjectClaim} claim does not name a principal (1 to ${MAX_PRINCIPAL_CHARS} printable ASCII characters, no space at either end, not * or :any)`, 'no-principal', true)
      }
      return { user: subject, admin: options.admins.has(subject), method: 'jwt', expiresAt: (payload.exp as number) * 1000 }
    },
  }
}

function keySource(options: JwtOptions, clock: Clock): JWTVerifyGetKey {
  if (options.jwksFile !== null) return new JwksFile(options.jwksFile, clock).getKey
  return new JwksUrl(options.jwksUrl as string, clock, options.refetchCooldownMs ?? 5000).getKey
}
