/**
 * Typed errors. Every failure a client or operator can see has a stable `code`, the HTTP status
 * it maps to, and Waiter's `error-class` so that Waiter clients keep recognising it.
 */

export type ErrorCode =
  | 'ERR_BAD_REQUEST'
  | 'ERR_INVALID_DESCRIPTOR'
  | 'ERR_INVALID_TOKEN'
  | 'ERR_TOKEN_NOT_FOUND'
  | 'ERR_SERVICE_NOT_FOUND'
  | 'ERR_SERVICE_UNKNOWN'
  | 'ERR_ON_THE_FLY_DISABLED'
  | 'ERR_FORBIDDEN'
  | 'ERR_STALE_TOKEN'
  | 'ERR_METHOD_NOT_ALLOWED'
  | 'ERR_NOT_FOUND'
  | 'ERR_QUEUE_FULL'
  | 'ERR_QUEUE_TIMEOUT'
  | 'ERR_DEPLOYMENT'
  | 'ERR_MAINTENANCE'
  | 'ERR_SUSPENDED'
  | 'ERR_UPSTREAM_CONNECT'
  | 'ERR_UPSTREAM'
  | 'ERR_UPSTREAM_TIMEOUT'
  | 'ERR_CLIENT_TIMEOUT'
  | 'ERR_CLIENT_CLOSED'
  | 'ERR_STORE_CORRUPT'
  | 'ERR_INVALID_CONFIG'
  | 'ERR_BACKEND'
  | 'ERR_INTERNAL'

interface CodeInfo {
  readonly status: number
  /** Waiter's error-class, reported in the `waiter-error` body. */
  readonly errorClass: string
  /** Waiter's title for the error page. */
  readonly title?: string
}

const CODES: Readonly<Record<ErrorCode, CodeInfo>> = {
  ERR_BAD_REQUEST: { status: 400, errorClass: 'waiter.BadRequest' },
  ERR_INVALID_DESCRIPTOR: { status: 400, errorClass: 'waiter.ServiceMisconfigured', title: 'Service Misconfigured' },
  ERR_INVALID_TOKEN: { status: 400, errorClass: 'waiter.BadTokenRequest' },
  ERR_TOKEN_NOT_FOUND: { status: 404, errorClass: 'waiter.TokenNotFound' },
  ERR_SERVICE_NOT_FOUND: { status: 404, errorClass: 'waiter.ServiceNotFound', title: 'Service Not Found' },
  ERR_SERVICE_UNKNOWN: { status: 400, errorClass: 'waiter.ServiceUnknown' },
  ERR_ON_THE_FLY_DISABLED: { status: 403, errorClass: 'maitre.OnTheFlyDisabled', title: 'On-the-fly Services Disabled' },
  ERR_FORBIDDEN: { status: 403, errorClass: 'waiter.Forbidden' },
  ERR_STALE_TOKEN: { status: 412, errorClass: 'waiter.StaleToken' },
  ERR_METHOD_NOT_ALLOWED: { status: 405, errorClass: 'waiter.MethodNotAllowed' },
  ERR_NOT_FOUND: { status: 404, errorClass: 'waiter.NotFound' },
  ERR_QUEUE_FULL: { status: 503, errorClass: 'waiter.QueueLength', title: 'Service Queue Length Exceeded' },
  ERR_QUEUE_TIMEOUT: { status: 503, errorClass: 'waiter.RequestTimeout', title: 'Request Timeout' },
  ERR_DEPLOYMENT: { status: 503, errorClass: 'waiter.DeploymentError', title: 'Service Deployment Error' },
  ERR_MAINTENANCE: { status: 503, errorClass: 'waiter.Maintenance', title: 'Service in Maintenance' },
  ERR_SUSPENDED: { status: 503, errorClass: 'waiter.Suspended', title: 'Service Suspended' },
  ERR_UPSTREAM_CONNECT: { status: 502, errorClass: 'waiter.BackendConnectError', title: 'Service Backend Error' },
  ERR_UPSTREAM: { status: 502, errorClass: 'waiter.BackendError', title: 'Service Backend Error' },
  ERR_UPSTREAM_TIMEOUT: { status: 504, errorClass: 'waiter.BackendTimeout', title: 'Service Backend Timeout' },
  ERR_CLIENT_TIMEOUT: { status: 408, errorClass: 'waiter.ClientTimeout' },
  ERR_CLIENT_CLOSED: { status: 400, errorClass: 'waiter.ClientClosed' },
  ERR_STORE_CORRUPT: { status: 500, errorClass: 'maitre.StoreCorrupt' },
  ERR_INVALID_CONFIG: { status: 500, errorClass: 'maitre.InvalidConfig' },
  ERR_BACKEND: { status: 500, errorClass: 'maitre.BackendError' },
  ERR_INTERNAL: { status: 500, errorClass: 'waiter.InternalError' },
}

export type ErrorDetails = Readonly<Record<string, unknown>>

export class MaitreError extends Error {
  readonly code: ErrorCode
  readonly status: number
  readonly errorClass: string
  readonly title: string
  readonly details: ErrorDetails
  /** Extra response headers (for example `retry-after`). */
  readonly headers: Readonly<Record<string, string>>

  constructor(
    code: ErrorCode,
    message: string,
    options: { details?: ErrorDetails; status?: number; headers?: Record<string, string>; cause?: unknown } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause })
    const info = CODES[code]
    this.name = 'MaitreError'
    this.code = code
    this.status = options.status ?? info.status
    this.errorClass = info.errorClass
    this.title = info.title ?? `Waiter Error ${this.status}`
    this.details = options.details ?? {}
    this.headers = options.headers ?? {}
  }
}

export function isMaitreError(err: unknown): err is MaitreError {
  return err instanceof MaitreError
}

/** Any thrown value as a MaitreError; unknown failures become a 500 that names the cause. */
export function asMaitreError(err: unknown): MaitreError {
  if (err instanceof MaitreError) return err
  const message = err instanceof Error ? err.message : String(err)
  return new MaitreError('ERR_INTERNAL', `Internal error: ${message}`, { cause: err })
}

/** One broken rule of a service description. */
export interface Issue {
  /** The parameter the rule is about (several for cross-field rules). */
  readonly field: string
  readonly message: string
}

export const MISCONFIGURED = 'Service description using waiter headers/token improperly configured'

/** Waiter's 400 for a description that breaks rules: one line per rule, every offending field named. */
export function misconfigured(issues: readonly Issue[], extra: Record<string, unknown> = {}): MaitreError {
  const lines = [...new Set(issues.map((i) => i.message))]
  return new MaitreError('ERR_INVALID_DESCRIPTOR', `${MISCONFIGURED}\n${lines.join('\n')}`, {
    details: { issues, fields: [...new Set(issues.map((i) => i.field))], ...extra },
  })
}
