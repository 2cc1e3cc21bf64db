import t from 'tap'
import { advertisedUrl } from '../../src/cluster/advertise.ts'

t.test('peers reach a router at its configured URL, else at its host, and a wildcard host by the machine’s own address', async (t) => {
  const podIp = (): string => '10.244.1.7'
  t.equal(advertisedUrl('https://router-1.example:8443', '0.0.0.0', 9091, podIp), 'https://router-1.example:8443', 'configured wins')
  t.equal(advertisedUrl(null, '127.0.0.1', 9091, podIp), 'http://127.0.0.1:9091')
  t.equal(advertisedUrl(null, '0.0.0.0', 9091, podIp), 'http://10.244.1.7:9091', '0.0.0.0 is no address to dial: the pod IP stands in')
  t.equal(advertisedUrl(null, '::', 9091, () => 'fd00::5'), 'http://[fd00::5]:9091')
  t.equal(advertisedUrl(null, '::1', 9091, podIp), 'http://[::1]:9091')
  t.equal(advertisedUrl(null, '0.0.0.0', 9091, () => undefined), 'http://127.0.0.1:9091', 'a machine with loopback only')
})
