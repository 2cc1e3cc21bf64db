import t from 'tap'
import { hostname } from 'node:os'
import { routerHostnames } from '../../src/http/router-hostnames.ts'
import { hostWithoutPort } from '../../src/http/host.ts'

const interfaces = {
  lo: [{ address: '127.0.0.1', netmask: '255.0.0.0', family: 'IPv4' as const, mac: '00:00:00:00:00:00', internal: true, cidr: '127.0.0.1/8' }],
  eth0: [
    { address: '10.1.2.3', netmask: '255.255.255.0', family: 'IPv4' as const, mac: '02:00:00:00:00:01', internal: false, cidr: '10.1.2.3/24' },
    { address: 'FD00::2', netmask: 'ffff:ffff:ffff:ffff::', family: 'IPv6' as const, mac: '02:00:00:00:00:01', internal: false, cidr: 'fd00::2/64', scopeid: 0 },
  ],
}

t.test('a router bound to every interface answers to each interface address, as a kubelet probing the pod IP sends it', async (t) => {
  const names = routerHostnames(['0.0.0.0', null], ['Maitre.Example'], interfaces)
  for (const host of ['10.1.2.3:9091', '[fd00::2]:9091', 'maitre.example', 'LOCALHOST:1', `${hostname()}:80`]) t.ok(names.has(hostWithoutPort(host)), host)
  t.notOk(names.has(hostWithoutPort('10.9.9.9:9091')), 'another address names a token')
})

t.test('a router bound to one address answers to it, not to the other interfaces', async (t) => {
  const names = routerHostnames(['10.1.2.3', '::1'], [], interfaces)
  t.ok(names.has('10.1.2.3'))
  t.ok(names.has('[::1]'))
  t.notOk(names.has('[fd00::2]'))
  t.ok(routerHostnames(['::'], [], interfaces).has('[fd00::2]'), ':: is every interface too')
})
