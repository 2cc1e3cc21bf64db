/**
 * Waiter's x-waiter-auth cookie: once a caller has proven who it is, the router hands it a cookie
 * that names the principal, sealed with AES-256-GCM under a key derived from the router secret
 * (so every router of a cluster that shares the secret accepts it), and later requests that carry
 * it skip the signature checks. The cookie cannot be read, forged or altered without the secret;
 * it expires a day after it was issued, whatever the browser does with Max-Age.
 */
import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from 'node:crypto'
import { LRUCache } from 'lru-cache'
import type { Clock } from '../clock.ts'

export const AUTH_COOKIE = 'x-waiter-auth'
export const EXPIRES_AT_COOKIE = 'x-auth-expires-at'
/** Cookies of maitre's own: never shown to an instance, never taken from one. */
export const ROUTER_COOKIES: ReadonlySet<string> = new Set([AUTH_COOKIE, EXPIRES_AT_COOKIE, 'x-waiter-consent'])

export const COOKIE_MAX_AGE_SECS = 86400
/** One sealed value is handed out again for this long: a busy client does not cost a seal per request. */
const REISSUE_AFTER_MS = 60_000
/** Longest cookie value even looked at (a sealed principal is well under this). */
const MAX_SEALED_CHARS = 2048
/** Sealed values remembered once opened, so a cookie is decrypted once, not on every request. */
const OPENED_CACHE_ENTRIES = 10_000
/** x-waiter-auth values of one request that are opened at most. */
const MAX_COOKIES_TRIED = 4
const VERSION = 1
const IV_BYTES = 12
const TAG_BYTES = 16

export interface CookiePrincipal {
  readonly user: string
  readonly expiresAt: number
  /** The authenticator that vouched for the user: a cookie is honoured only by a router of the same kind. */
  readonly kind: string
}

export class AuthCookies {
  readonly #key: Buffer
  readonly #clock: Clock
  readonly #issued = new Map<string, { readonly headers: readonly string[]; readonly at: number; readonly expiresAt: number }>()
  readonly #opened = new LRUCache<string, CookiePrincipal>({ max: OPENED_CACHE_ENTRIES })

  constructor(routerSecret: string, clock: Clock) {
    this.#key = Buffer.from(hkdfSync('sha256', routerSecret, 'maitre', 'x-waiter-auth cookie v1', 32))
    this.#clock = clock
  }

  /**
   * The Set-Cookie values that let `user` skip authentication for a day, or until `notAfter`
   * (the proof's own expiry, a JWT's exp) if that comes first: a cookie never outlives its proof.
   * `secure`: the request came over https, so the browser is told to send the cookie over https
   * only (it stands in for the caller's credentials for a day).
   */
  issue(user: string, kind: string, notAfter = Number.POSITIVE_INFINITY, secure = false): readonly string[] {
    const now = this.#clock.now()
    const key = `${secure ? 's' : ''}${kind}:${user}`
    const cached = this.#issued.get(key)
    const expiresAt = Math.min(now + COOKIE_MAX_AGE_SECS * 1000, notAfter)
    // The cookie issued a moment ago, if it ends about when a new one would: never one that
    // outlives this proof, nor one that dies before it (issued on an older, shorter proof).
    if (cached !== undefined && now - cached.at < REISSUE_AFTER_MS && cached.expiresAt <= notAfter && cached.expiresAt > expiresAt - REISSUE_AFTER_MS) return cached.headers
    const maxAge = Math.max(0, Math.floor((expiresAt - now) / 1000))
    const sealed = this.seal({ user, expiresAt, kind })
    const headers = [
      `${AUTH_COOKIE}=${sealed}; Max-Age=${maxAge}; Path=/; HttpOnly; SameSite=Lax${secure ? '; Secure' : ''}`,
      `${EXPIRES_AT_COOKIE}=${Math.floor(expiresAt / 1000)}; Max-Age=${maxAge}; Path=/${secure ? '; Secure' : ''}`,
    ]
    // Bounded: past the cap the map starts over (each entry is only a shortcut).
    if (this.#issued.size >= OPENED_CACHE_ENTRIES) this.#issued.clear()
    this.#issued.set(key, { headers, at: now, expiresAt })
    return headers
  }

  seal(principal: CookiePrincipal): string {
    const iv = randomBytes(IV_BYTES)
    const cipher = createCipheriv('aes-256-gcm', this.#key, iv)
    const body = Buffer.concat([cipher.update(JSON.stringify([principal.user, principal.expiresAt, principal.kind]), 'utf8'), cipher.final()])
    return Buffer.concat([Buffer.of(VERSION), iv, body, cipher.getAuthTag()]).toString('base64url')
  }

  /** The principal a request's cookie names, if it carries a valid, unexpired one. */
  fromRequest(cookieHeader: string | undefined): CookiePrincipal | undefined {
    if (cookieHeader === undefined || !cookieHeader.includes(AUTH_COOKIE)) return undefined
    // A browser sends one; a few more (several paths or domains) are tried, never a header full.
    for (const value of cookieValues(cookieHeader, AUTH_COOKIE).slice(0, MAX_COOKIES_TRIED)) {
      const principal = this.open(value)
      if (principal !== undefined) return principal
    }
    return undefined
  }

  /** The principal a sealed value names; undefined for anything forged, altered, truncated or expired. */
  open(sealed: string): CookiePrincipal | undefined {
    if (sealed.length > MAX_SEALED_CHARS) return undefined
    let principal = this.#opened.get(sealed)
    if (principal === undefined) {
      principal = this.#unseal(sealed)
      if (principal === undefined) return undefined
      this.#opened.set(sealed, principal)
    }
    return principal.expiresAt > this.#clock.now() ? principal : undefined
  }

  #unseal(sealed: string): CookiePrincipal | undefined {
    const raw = Buffer.from(sealed, 'base64url')
    // Only the canonical spelling: the decoder skips stray characters and spare bits, so another
    // spelling of the same bytes would otherwise be the same cookie.
    if (raw.length < 1 + IV_BYTES + TAG_BYTES + 2 || raw[0] !== VERSION || raw.toString('base64url') !== sealed) return undefined
    try {
      const decipher = createDecipheriv('aes-256-gcm', this.#key, raw.subarray(1, 1 + IV_BYTES))
      decipher.setAuthTag(raw.subarray(raw.length - TAG_BYTES))
      const text = Buffer.concat([decipher.update(raw.subarray(1 + IV_BYTES, raw.length - TAG_BYTES)), decipher.final()]).toString('utf8')
      const parsed: unknown = JSON.parse(text)
      if (!Array.isArray(parsed) || typeof parsed[0] !== 'string' || parsed[0] === '' || typeof parsed[1] !== 'number' || typeof parsed[2] !== 'string') return undefined
      return { user: parsed[0], expiresAt: parsed[1], kind: parsed[2] }
    } catch {
      return undefined
    }
  }
}

/** Every value of cookie `name` in a Cookie header (a client may send one name twice). */
export function cookieValues(header: string, name: string): string[] {
  const values: string[] = []
  for (const part of header.split(';')) {
    const eq = part.indexOf('=')
    if (eq !== -1 && part.slice(0, eq).trim() === name) values.push(part.slice(eq + 1).trim())
  }
  return values
}

/** A Cookie header without maitre's own cookies; undefined when none is left. */
export function withoutRouterCookies(header: string): string | undefined {
  const kept = header.split(';').filter((part) => {
    const eq = part.indexOf('=')
    return !ROUTER_COOKIES.has((eq === -1 ? part : part.slice(0, eq)).trim())
  })
  const joined = kept.map((p) => p.trim()).filter((p) => p !== '').join('; ')
  return joined === '' ? undefined : joined
}

/** Whether a Set-Cookie value (from an instance) would set one of maitre's own cookies. */
export function setsRouterCookie(setCookie: string): boolean {
  const eq = setCookie.indexOf('=')
  const name = (eq === -1 ? setCookie : setCookie.slice(0, eq)).trim()
  if (ROUTER_COOKIES.has(name)) return true
  // A nameless cookie ("=x-waiter-auth=…"): RFC 6265bis has a browser send its value alone, that
  // is "x-waiter-auth=…", which the router would read as its own.
  if (name !== '' || eq === -1) return false
  const value = setCookie.slice(eq + 1)
  const inner = value.indexOf('=')
  return inner !== -1 && ROUTER_COOKIES.has(value.slice(0, inner).trim())
}
