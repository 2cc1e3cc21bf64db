import t from 'tap'
import { advertisedUrl, firstExternalAddress } from '../../src/cluster/advertise.ts'

t.test('peers reach a router at its configured URL, else at its host, and a wildcard host by the machine’s own address', async (t) => {
  const podIp = (): string => '10.244.1.7'
  t.equal(advertisedUrl('https://router-1.example:8443', '0.0.0.0', 9091, podIp), 'https://router-1.example:8443', 'configured wins')
  t.equal(advertisedUrl(null, '127.0.0.1', 9091, podIp), 'http://127.0.0.1:9091')
  t.equal(advertisedUrl(null, '0.0.0.0', 9091, podIp), 'http://10.244.1.7:9091', '0.0.0.0 is no address to dial: the pod IP stands in')
  t.equal(advertisedUrl(null, '::', 9091, () => 'fd00::5'), 'http://[fd00::5]:9091')
  t.equal(advertisedUrl(null, '::1', 9091, podIp), 'http://[::1]:9091')
  t.equal(advertisedUrl(null, '0.0.0.0', 9091, () => undefined), 'http://127.0.0.1:9091', 'a machine with loopback only')
})

t.test('the machine’s own address: IPv4 first; listening on :: an IPv6-only node advertises its global IPv6 address, not loopback, where its peers would reach themselves', async (t) => {
  const iface = (address: string, family: 'IPv4' | 'IPv6', internal = false) => ({ address, family, internal, netmask: '', mac: '00:00:00:00:00:00', cidr: null, ...(family === 'IPv6' ? { scopeid: 0 } : {}) }) as import('node:os').NetworkInterfaceInfo
  const dual = { lo: [iface('127.0.0.1', 'IPv4', true), iface('::1', 'IPv6', true)], eth0: [iface('fe80::1', 'IPv6'), iface('2001:db8::7', 'IPv6'), iface('10.0.0.7', 'IPv4')] }
  const v6only = { lo: [iface('127.0.0.1', 'IPv4', true), iface('::1', 'IPv6', true)], eth0: [iface('fe80::1', 'IPv6'), iface('2001:db8::7', 'IPv6')] }
  t.equal(firstExternalAddress(dual, true), '10.0.0.7', 'IPv4 first')
  t.equal(firstExternalAddress(v6only, true), '2001:db8::7', 'an IPv6-only node: its global address, not the link-local one')
  t.equal(firstExternalAddress(v6only, false), undefined, 'listening on 0.0.0.0 (IPv4 only), an IPv6 address would not reach it')
  t.equal(advertisedUrl(null, '::', 9091, (ipv6) => firstExternalAddress(v6only, ipv6)), 'http://[2001:db8::7]:9091')
  t.equal(advertisedUrl(null, '0.0.0.0', 9091, (ipv6) => firstExternalAddress(v6only, ipv6)), 'http://127.0.0.1:9091', 'no IPv4 to offer: loopback, as on a machine with loopback only')
})
