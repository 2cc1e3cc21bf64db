/**
 * gRPC over the router (reference: grpc/doc/PROTOCOL-HTTP2.md, statuscodes.md): telling a gRPC
 * call from other HTTP/2 requests, its deadline, and the status a refusal of maitre's becomes,
 * mapped as Waiter maps them (reference/waiter.md §3.3) so a gRPC client sees a gRPC error.
 */
import type { IncomingHttpHeaders } from 'node:http'
import type { MaitreError } from '../errors.ts'

export const GRPC_STATUS = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  UNAUTHENTICATED: 16,
} as const

/**
 * The content-type of gRPC over HTTP/2 (application/grpc, +proto, +json, …), not gRPC-Web's
 * (application/grpc-web…): gRPC-Web is ordinary HTTP a browser reads, status in the body or
 * headers, never in trailers it cannot see.
 */
export const GRPC_CONTENT_TYPE = /^application\/grpc(?:$|[+;])/i

/** A gRPC call: HTTP/2 with a content-type of application/grpc (or application/grpc+proto, …). */
export function isGrpcRequest(headers: IncomingHttpHeaders, httpVersionMajor: number): boolean {
  return httpVersionMajor === 2 && GRPC_CONTENT_TYPE.test(headers['content-type'] ?? '')
}

/**
 * A gRPC call to a service: a gRPC request to one whose backend-proto is h2c or h2. (gRPC cannot
 * work over HTTP/1.1, so to any other service the request is an ordinary one, held to every
 * bound an ordinary request is.)
 */
export function isGrpcCall(headers: IncomingHttpHeaders, httpVersionMajor: number, backendProto: string): boolean {
  return (backendProto === 'h2c' || backendProto === 'h2') && isGrpcRequest(headers, httpVersionMajor)
}

const UNITS: Readonly<Record<string, number>> = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 0.001, n: 0.000001 }

/** The call's deadline from its grpc-timeout header (at most 8 digits and a unit), in whole ms; undefined if absent or malformed. */
export function grpcTimeoutMs(header: string | string[] | undefined): number | undefined {
  if (typeof header !== 'string') return undefined
  const match = /^(\d{1,8})([HMSmun])$/.exec(header)
  if (match === null) return undefined
  return Math.max(1, Math.ceil(Number(match[1]) * (UNITS[match[2] as string] as number)))
}

/** The gRPC status of one of maitre's refusals. */
export function grpcStatusOf(err: MaitreError, hasDeadline: boolean): number {
  // Waiter's mapping by HTTP status, with the deadline case told apart: a call whose own
  // deadline ran out while it waited hears DEADLINE_EXCEEDED, as any gRPC server would say.
  if (err.code === 'MAITRE_QUEUE_TIMEOUT' && hasDeadline) return GRPC_STATUS.DEADLINE_EXCEEDED
  switch (err.status) {
    case 400:
      return GRPC_STATUS.INVALID_ARGUMENT
    case 401:
      return GRPC_STATUS.UNAUTHENTICATED
    case 403:
      return GRPC_STATUS.PERMISSION_DENIED
    case 404:
      return GRPC_STATUS.NOT_FOUND
    case 409:
    case 412:
      return GRPC_STATUS.FAILED_PRECONDITION
    case 413:
      return GRPC_STATUS.RESOURCE_EXHAUSTED
    case 405:
    case 501:
      return GRPC_STATUS.UNIMPLEMENTED
    case 429:
    case 502:
    case 503:
      return GRPC_STATUS.UNAVAILABLE
    case 504:
    case 408:
      return GRPC_STATUS.DEADLINE_EXCEEDED
    default:
      return err.status >= 500 ? GRPC_STATUS.INTERNAL : GRPC_STATUS.UNKNOWN
  }
}

/** grpc-message is percent-encoded UTF-8: bytes outside printable ASCII, and %, are escaped. */
export function encodeGrpcMessage(message: string): string {
  let out = ''
  for (const byte of Buffer.from(message, 'utf8')) {
    out += byte >= 0x20 && byte <= 0x7e && byte !== 0x25 ? String.fromCharCode(byte) : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`
  }
  return out
}
