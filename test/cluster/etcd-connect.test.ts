/**
 * The etcd client of a router asks for a member with a leader on every stream and call: a watch
 * on a member cut off from the rest of its cluster is ended (so the router reloads through
 * another member) instead of staying open and silent. Shown with a two-member etcd whose second
 * member freezes: the first keeps answering clients but has no leader.
 */
import t, { type Test } from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { join } from 'node:path'
import { freePort } from '../../bench/tools.ts'
import { connectEtcd } from '../../src/cluster/etcd/connect.ts'
import { ETCD_BINARY } from '../fixtures/etcd.ts'
import { waitFor } from '../fixtures/router.ts'

async function twoMembers(t: Test): Promise<{ clientUrl: string; second: ChildProcess }> {
  const dir = t.testdir()
  const [clientA, peerA, clientB, peerB] = (await Promise.all([freePort(), freePort(), freePort(), freePort()])).map((port) => `http://127.0.0.1:${port}`) as [string, string, string, string]
  const cluster = `a=${peerA},b=${peerB}`
  const member = (name: string, client: string, peer: string): ChildProcess =>
    spawn(ETCD_BINARY, ['--name', name, '--data-dir', join(dir, name), '--listen-client-urls', client, '--advertise-client-urls', client, '--listen-peer-urls', peer, '--initial-advertise-peer-urls', peer, '--initial-cluster', cluster, '--initial-cluster-state', 'new', '--log-level', 'error', '--logger', 'zap'], { stdio: 'ignore' })
  const members = [member('a', clientA, peerA), member('b', clientB, peerB)]
  t.teardown(() => {
    for (const m of members) {
      m.kill('SIGCONT')
      m.kill('SIGKILL')
    }
  })
  await waitFor('etcd healthy', async () => {
    const body = (await fetch(`${clientA}/health`).then((r) => r.json()).catch(() => undefined)) as { health?: string } | undefined
    return body?.health === 'true' ? true : undefined
  }, 20_000)
  return { clientUrl: clientA, second: members[1] as ChildProcess }
}

t.test('a watch on a member that lost its leader is ended with "no leader" within seconds, not left open and silent', async (t) => {
  const { clientUrl, second } = await twoMembers(t)
  const client = connectEtcd({ endpoints: [clientUrl], requestTimeoutMs: 2000 })
  // Closed while the member still answers (a client closed after its server is gone keeps
  // retrying its lost streams, and the file would never exit), however the test ends.
  t.teardown(() => {
    second.kill('SIGCONT')
    client.close()
  })
  const watcher = await client.watch().key('probe').create()
  const ended: string[] = []
  watcher.on('disconnected', (err: Error) => void ended.push(err.message))
  watcher.on('error', () => undefined)
  await client.put('probe').value('1')
  // The other member freezes: a quorum of two is lost, and the first member has no leader (as
  // a member cut off from the rest of a larger cluster has none), yet still answers clients.
  second.kill('SIGSTOP')
  await waitFor('the watch to be ended', () => (ended.length > 0 ? true : undefined), 15_000)
  t.match(ended[0], /no leader/, `ended by etcd: ${ended[0]}`)
  second.kill('SIGCONT')
  await watcher.cancel().catch(() => undefined)
})
