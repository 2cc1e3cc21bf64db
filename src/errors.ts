/**
 * Typed errors. Every failure a client or operator can see has a stable `code`, the HTTP status
 * it maps to, and Waiter's `error-class` so that Waiter clients keep recognising it.
 */

export type ErrorCode =
  | 'MAITRE_BAD_REQUEST'
  | 'MAITRE_INVALID_DESCRIPTOR'
  | 'MAITRE_INVALID_TOKEN'
  | 'MAITRE_TOKEN_NOT_FOUND'
  | 'MAITRE_SERVICE_NOT_FOUND'
  | 'MAITRE_SERVICE_UNKNOWN'
  | 'MAITRE_ON_THE_FLY_DISABLED'
  | 'MAITRE_STALE_TOKEN'
  | 'MAITRE_METHOD_NOT_ALLOWED'
  | 'MAITRE_NOT_FOUND'
  | 'MAITRE_QUEUE_FULL'
  | 'MAITRE_QUEUE_TIMEOUT'
  | 'MAITRE_DEPLOYMENT'
  | 'MAITRE_MAINTENANCE'
  | 'MAITRE_SUSPENDED'
  | 'MAITRE_UPSTREAM_CONNECT'
  | 'MAITRE_UPSTREAM'
  | 'MAITRE_UPSTREAM_TIMEOUT'
  | 'MAITRE_CLIENT_TIMEOUT'
  | 'MAITRE_CLIENT_CLOSED'
  | 'MAITRE_STORE_CORRUPT'
  | 'MAITRE_DATA_DIR_IN_USE'
  | 'MAITRE_STORE_WRITE'
  | 'MAITRE_STORE_FULL'
  | 'MAITRE_STORE_CONFLICT'
  | 'MAITRE_CLUSTER_UNAVAILABLE'
  | 'MAITRE_INVALID_CONFIG'
  | 'MAITRE_BACKEND'
  | 'MAITRE_TOO_MANY_CONNECTIONS'
  | 'MAITRE_TOO_MANY_REQUESTS'
  | 'MAITRE_ROUTER_OVERLOADED'
  | 'MAITRE_UNAUTHORIZED'
  | 'MAITRE_AUTH_UNAVAILABLE'
  | 'MAITRE_HTTPS_REDIRECT'
  | 'MAITRE_NOT_TOKEN_MANAGER'
  | 'MAITRE_CANNOT_ASSIGN_OWNER'
  | 'MAITRE_TOKEN_LIMIT'
  | 'MAITRE_TOKEN_NAME_RESERVED'
  | 'MAITRE_TRANSFER_CODING'
  | 'MAITRE_CANNOT_RUN_AS'
  | 'MAITRE_NOT_PERMITTED'
  | 'MAITRE_NOT_SERVICE_MANAGER'
  | 'MAITRE_ADMIN_ONLY'
  | 'MAITRE_CORS_PREFLIGHT_FORBIDDEN'
  | 'MAITRE_CORS_REQUEST_FORBIDDEN'
  | 'MAITRE_INSTANCE_IN_USE'
  | 'MAITRE_INTERNAL'

interface CodeInfo {
  readonly status: number
  /** Waiter's error-class, reported in the `waiter-error` body. */
  readonly errorClass: string
  /** Waiter's title for the error page. */
  readonly title?: string
}

const CODES: Readonly<Record<ErrorCode, CodeInfo>> = {
  MAITRE_BAD_REQUEST: { status: 400, errorClass: 'waiter.BadRequest' },
  MAITRE_INVALID_DESCRIPTOR: { status: 400, errorClass: 'waiter.ServiceMisconfigured', title: 'Service Misconfigured' },
  MAITRE_INVALID_TOKEN: { status: 400, errorClass: 'waiter.BadTokenRequest' },
  MAITRE_TOKEN_NOT_FOUND: { status: 404, errorClass: 'waiter.TokenNotFound' },
  MAITRE_SERVICE_NOT_FOUND: { status: 404, errorClass: 'waiter.ServiceNotFound', title: 'Service Not Found' },
  MAITRE_SERVICE_UNKNOWN: { status: 400, errorClass: 'waiter.ServiceUnknown' },
  MAITRE_ON_THE_FLY_DISABLED: { status: 403, errorClass: 'maitre.OnTheFlyDisabled', title: 'On-the-fly Services Disabled' },
  MAITRE_STALE_TOKEN: { status: 412, errorClass: 'waiter.StaleToken' },
  MAITRE_METHOD_NOT_ALLOWED: { status: 405, errorClass: 'waiter.MethodNotAllowed' },
  MAITRE_NOT_FOUND: { status: 404, errorClass: 'waiter.NotFound' },
  MAITRE_QUEUE_FULL: { status: 503, errorClass: 'waiter.QueueLength', title: 'Service Queue Length Exceeded' },
  MAITRE_QUEUE_TIMEOUT: { status: 503, errorClass: 'waiter.RequestTimeout', title: 'Request Timeout' },
  MAITRE_DEPLOYMENT: { status: 503, errorClass: 'waiter.DeploymentError', title: 'Service Deployment Error' },
  MAITRE_MAINTENANCE: { status: 503, errorClass: 'waiter.Maintenance', title: 'Service in Maintenance' },
  MAITRE_SUSPENDED: { status: 503, errorClass: 'waiter.Suspended', title: 'Service Suspended' },
  MAITRE_UPSTREAM_CONNECT: { status: 502, errorClass: 'waiter.BackendConnectError', title: 'Service Backend Error' },
  MAITRE_UPSTREAM: { status: 502, errorClass: 'waiter.BackendError', title: 'Service Backend Error' },
  MAITRE_UPSTREAM_TIMEOUT: { status: 504, errorClass: 'waiter.BackendTimeout', title: 'Service Backend Timeout' },
  MAITRE_CLIENT_TIMEOUT: { status: 408, errorClass: 'waiter.ClientTimeout' },
  MAITRE_CLIENT_CLOSED: { status: 400, errorClass: 'waiter.ClientClosed' },
  MAITRE_STORE_CORRUPT: { status: 500, errorClass: 'maitre.StoreCorrupt' },
  MAITRE_DATA_DIR_IN_USE: { status: 500, errorClass: 'maitre.DataDirInUse' },
  MAITRE_STORE_FULL: { status: 507, errorClass: 'maitre.StoreFull', title: 'Token Store Full' },
  MAITRE_CLUSTER_UNAVAILABLE: { status: 503, errorClass: 'maitre.ClusterUnavailable', title: 'Cluster Store Unavailable' },
  MAITRE_STORE_CONFLICT: { status: 409, errorClass: 'maitre.StoreConflict', title: 'Concurrent Update' },
  MAITRE_STORE_WRITE: { status: 503, errorClass: 'maitre.StoreWriteFailed', title: 'Store Unavailable' },
  MAITRE_INVALID_CONFIG: { status: 500, errorClass: 'maitre.InvalidConfig' },
  MAITRE_TOO_MANY_CONNECTIONS: { status: 429, errorClass: 'maitre.TooManyConnections', title: 'Too Many Connections' },
  MAITRE_TOO_MANY_REQUESTS: { status: 429, errorClass: 'maitre.TooManyRequests', title: 'Too Many Requests' },
  MAITRE_ROUTER_OVERLOADED: { status: 503, errorClass: 'maitre.RouterOverloaded', title: 'Router Overloaded' },
  MAITRE_BACKEND: { status: 503, errorClass: 'maitre.BackendError', title: 'Cluster Backend Unavailable' },
  MAITRE_UNAUTHORIZED: { status: 401, errorClass: 'waiter.Unauthorized', title: 'Unauthorized' },
  MAITRE_HTTPS_REDIRECT: { status: 301, errorClass: 'waiter.HttpsRedirect', title: 'Moved Permanently' },
  MAITRE_AUTH_UNAVAILABLE: { status: 503, errorClass: 'maitre.AuthUnavailable', title: 'Authentication Unavailable' },
  // Authorization: one code (and error-class) per rule, so a client can tell which rule refused it.
  MAITRE_NOT_TOKEN_MANAGER: { status: 403, errorClass: 'waiter.TokenManageForbidden', title: 'Forbidden' },
  MAITRE_CANNOT_ASSIGN_OWNER: { status: 403, errorClass: 'waiter.TokenOwnerForbidden', title: 'Forbidden' },
  MAITRE_TOKEN_LIMIT: { status: 403, errorClass: 'maitre.TokenLimit', title: 'Forbidden' },
  MAITRE_TOKEN_NAME_RESERVED: { status: 403, errorClass: 'waiter.TokenNameReserved', title: 'Forbidden' },
  MAITRE_TRANSFER_CODING: { status: 501, errorClass: 'maitre.UnsupportedTransferCoding', title: 'Not Implemented' },
  MAITRE_CANNOT_RUN_AS: { status: 403, errorClass: 'waiter.RunAsForbidden', title: 'Forbidden' },
  MAITRE_NOT_PERMITTED: { status: 403, errorClass: 'waiter.UserNotPermitted', title: 'Forbidden' },
  MAITRE_NOT_SERVICE_MANAGER: { status: 403, errorClass: 'waiter.ServiceManageForbidden', title: 'Forbidden' },
  MAITRE_ADMIN_ONLY: { status: 403, errorClass: 'waiter.AdminOnly', title: 'Forbidden' },
  MAITRE_CORS_PREFLIGHT_FORBIDDEN: { status: 403, errorClass: 'waiter.CorsPreflightForbidden', title: 'Forbidden' },
  MAITRE_CORS_REQUEST_FORBIDDEN: { status: 403, errorClass: 'waiter.CorsRequestForbidden', title: 'Forbidden' },
  MAITRE_INSTANCE_IN_USE: { status: 423, errorClass: 'maitre.InstanceInUse', title: 'Instance In Use' },
  MAITRE_INTERNAL: { status: 500, errorClass: 'waiter.InternalError' },
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

/**
 * Any thrown value as a MaitreError. An unknown failure becomes a 500 that says nothing of its
 * cause (a path, a stack, another system's text are no business of the caller); the cause is
 * kept for the log line, which carries the same cid as the answer.
 */
export function asMaitreError(err: unknown): MaitreError {
  if (err instanceof MaitreError) return err
  return new MaitreError('MAITRE_INTERNAL', 'Internal error; the router logged it under this request\'s cid', { cause: err })
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
  return new MaitreError('MAITRE_INVALID_DESCRIPTOR', `${MISCONFIGURED}\n${lines.join('\n')}`, {
    details: { issues, fields: [...new Set(issues.map((i) => i.field))], ...extra },
  })
}

/** System error codes of a router out of something (descriptors, buffers, memory): never the fault of what it talks to. */
export const ROUTER_RESOURCE_ERRORS: ReadonlySet<string> = new Set(['EMFILE', 'ENFILE', 'ENOBUFS', 'ENOMEM'])
