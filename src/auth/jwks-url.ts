/**
 * The key set of `auth.jwt.jwksUrl`: fetched on first use, fetched again in the background once
 * it is older than REFRESH_AFTER_MS, and at once when a token names a key id it lacks. Every
 * fetch, failed or not, starts the cooldown (so callers cannot make the router hammer an issuer
 * that fails), and a set once fetched keeps verifying while fetches fail, for up to
 * STALE_LIMIT_MS: an issuer's outage does not become an authentication outage.
 */
import { createLocalJWKSet, errors as joseErrors, type JSONWebKeySet, type JWTVerifyGetKey } from 'jose'
import type { Clock } from '../clock.ts'

/** A set this old is fetched again (in the background: requests go on with it meanwhile). */
export const REFRESH_AFTER_MS = 600_000
/** A set not fetched again successfully for this long verifies nothing more: a day, as long as a cookie lives. */
export const STALE_LIMIT_MS = 86_400_000
const FETCH_TIMEOUT_MS = 5000
/** A JWKS is a few keys; a body past this is no key set. */
const MAX_BODY_BYTES = 1024 * 1024

class HttpStatus extends Error {}

/** The keys cannot be had: the router's trouble (503), not the caller's (401). */
export class KeysUnavailable extends Error {}

export class JwksUrl {
  readonly #url: URL
  readonly #clock: Clock
  readonly #cooldownMs: number
  #keys: JWTVerifyGetKey | undefined
  #fetchedAt = -Infinity
  #attemptedAt = -Infinity
  #lastFailure: string | undefined
  #fetching: Promise<void> | undefined

  constructor(url: string, clock: Clock, cooldownMs: number) {
    this.#url = new URL(url)
    this.#clock = clock
    this.#cooldownMs = cooldownMs
  }

  readonly getKey: JWTVerifyGetKey = async (header, token) => {
    const now = this.#clock.now()
    if (this.#keys === undefined || now - this.#fetchedAt >= STALE_LIMIT_MS) {
      // Nothing usable: a fetch, when the cooldown allows, or the last failure.
      if (this.#mayFetch(now)) await this.#refresh()
      if (this.#keys === undefined || this.#clock.now() - this.#fetchedAt >= STALE_LIMIT_MS) throw new KeysUnavailable(this.#lastFailure ?? 'fetch-failed')
    } else if (now - this.#fetchedAt >= REFRESH_AFTER_MS && this.#mayFetch(now)) {
      void this.#refresh()
    }
    const keys = this.#keys
    try {
      return await keys(header, token)
    } catch (err) {
      if (!(err instanceof joseErrors.JWKSNoMatchingKey)) throw err
      // Another request's fetch may have brought a newer set meanwhile (an issuer rotating keys).
      if (this.#keys !== keys && this.#keys !== undefined) return await this.#keys(header, token)
      // A key id the set lacks may be a key the issuer added since: fetched once per cooldown.
      if (this.#mayFetch(this.#clock.now())) {
        await this.#refresh()
        if (this.#keys !== keys && this.#keys !== undefined) return await this.#keys(header, token)
      }
      // Not known, and the issuer cannot be asked: a new key may be what it is.
      if (this.#lastFailure !== undefined) throw new KeysUnavailable(this.#lastFailure)
      throw err
    }
  }

  #mayFetch(now: number): boolean {
    return this.#fetching !== undefined || now - this.#attemptedAt >= this.#cooldownMs
  }

  /** One fetch at a time: callers that come while one runs wait for it. */
  #refresh(): Promise<void> {
    this.#fetching ??= this.#fetch().finally(() => {
      this.#fetching = undefined
    })
    return this.#fetching
  }

  async #fetch(): Promise<void> {
    this.#attemptedAt = this.#clock.now()
    try {
      const response = await fetch(this.#url, { signal: AbortSignal.timeout(FETCH_TIMEOUT_MS), headers: { accept: 'application/json' }, redirect: 'error' })
      if (response.status !== 200) {
        await response.body?.cancel()
        throw new HttpStatus(`status-${response.status}`)
      }
      const jwks = JSON.parse(await boundedText(response)) as JSONWebKeySet
      this.#keys = createLocalJWKSet(jwks)
      this.#fetchedAt = this.#clock.now()
      this.#lastFailure = undefined
    } catch (err) {
      // A code, not the error's text: it reaches callers in the 503's details.
      this.#lastFailure = err instanceof joseErrors.JOSEError ? err.code : err instanceof HttpStatus ? err.message : 'fetch-failed'
    }
  }
}

async function boundedText(response: Response): Promise<string> {
  const chunks: Uint8Array[] = []
  let size = 0
  for await (const chunk of response.body ?? []) {
    size += (chunk as Uint8Array).byteLength
    if (size > MAX_BODY_BYTES) throw new Error(`key set larger than ${MAX_BODY_BYTES} bytes`)
    chunks.push(chunk as Uint8Array)
  }
  return Buffer.concat(chunks).toString('utf8')
}
