/** Where the other routers of a cluster reach this one. */
import { networkInterfaces } from 'node:os'
import { authority } from '../http/authority.ts'

/** This machine's first non-loopback IPv4 address (in a pod: the pod's IP), if any. */
function firstExternalIPv4(): string | undefined {
  for (const addresses of Object.values(networkInterfaces())) {
    for (const a of addresses ?? []) if (a.family === 'IPv4' && !a.internal) return a.address
  }
  return undefined
}

/**
 * The configured URL, or http://<host>:<port>; a wildcard host (0.0.0.0, ::) is no address a
 * peer can dial, so the machine's own address stands in for it.
 */
export function advertisedUrl(configured: string | null, host: string, port: number, external: () => string | undefined = firstExternalIPv4): string {
  if (configured !== null) return configured
  const wildcard = host === '0.0.0.0' || host === '::' || host === ''
  const address = wildcard ? (external() ?? '127.0.0.1') : host
  return `http://${authority(address, port)}`
}
