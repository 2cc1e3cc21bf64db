/** Where the other routers of a cluster reach this one. */
import { networkInterfaces, type NetworkInterfaceInfo } from 'node:os'
import { authority } from '../http/authority.ts'

/**
 * This machine's first non-loopback IPv4 address (in a pod: the pod's IP), if any; listening on
 * `::` (which takes IPv6 too), else its first global IPv6 address (an IPv6-only node), never a
 * link-local one (fe80::/10, which names no interface without a scope). Pure, over `interfaces`.
 */
export function firstExternalAddress(interfaces: NodeJS.Dict<NetworkInterfaceInfo[]>, ipv6: boolean): string | undefined {
  const all = Object.values(interfaces).flatMap((addresses) => addresses ?? []).filter((a) => !a.internal)
  const v4 = all.find((a) => a.family === 'IPv4')
  if (v4 !== undefined || !ipv6) return v4?.address
  return all.find((a) => a.family === 'IPv6' && !/^fe[89ab]/i.test(a.address))?.address
}

/**
 * The configured URL, or http://<host>:<port>; a wildcard host (0.0.0.0, ::) is no address a
 * peer can dial, so the machine's own address stands in for it (loopback only on a machine that
 * has no other: its routers can only be each other's neighbours there).
 */
export function advertisedUrl(configured: string | null, host: string, port: number, external: (ipv6: boolean) => string | undefined = (ipv6) => firstExternalAddress(networkInterfaces(), ipv6)): string {
  if (configured !== null) return configured
  const wildcard = host === '0.0.0.0' || host === '::' || host === ''
  const address = wildcard ? (external(host !== '0.0.0.0') ?? '127.0.0.1') : host
  return `http://${authority(address, port)}`
}
