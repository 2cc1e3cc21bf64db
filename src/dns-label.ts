/** DNS-1123 labels: service ids, namespaces and prefixes must be one (Kubernetes names objects after them). */
export const MAX_DNS_LABEL = 63

/** DNS-1123 label check (used to validate configured prefixes and ids received from clients). */
export function isDnsLabel(value: string): boolean {
  return value.length <= MAX_DNS_LABEL && /^[a-z]([a-z0-9-]*[a-z0-9])?$/.test(value)
}
