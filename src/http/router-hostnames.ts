/**
 * The names a request may carry in its Host to address the router itself rather than a token
 * (Waiter: its configured hostnames, localhost, its canonical hostname and its IP). Kept as
 * hostWithoutPort() writes them: lower case, an IPv6 address in brackets.
 */
import { hostname, networkInterfaces, type NetworkInterfaceInfo } from 'node:os'

const WILDCARDS = new Set(['0.0.0.0', '::', '[::]', ''])

export function hostForm(address: string): string {
  const lower = address.toLowerCase()
  return lower.includes(':') && !lower.startsWith('[') ? `[${lower}]` : lower
}

/**
 * `listenHosts` are the addresses the router's listeners bind. A wildcard binds every interface:
 * then each interface's address names the router too (a kubelet probes a pod by its IP, and a
 * ServiceMonitor scrapes it so). An IPv6 address with a zone (fe80::…%eth0) is left out: no
 * client writes one in a Host header.
 */
export function routerHostnames(listenHosts: readonly (string | null)[], configured: readonly string[], interfaces: NodeJS.Dict<NetworkInterfaceInfo[]> = networkInterfaces()): Set<string> {
  const names = new Set(['localhost', '127.0.0.1', '[::1]', hostname().toLowerCase(), ...configured.map(hostForm)])
  let wildcard = false
  for (const host of listenHosts) {
    if (host === null) continue
    // The bound address names the router too, a wildcard included (the address its log prints).
    if (host !== '') names.add(hostForm(host))
    if (WILDCARDS.has(host)) wildcard = true
  }
  if (wildcard) {
    for (const addresses of Object.values(interfaces)) {
      for (const { address } of addresses ?? []) if (!address.includes('%')) names.add(hostForm(address))
    }
  }
  return names
}
