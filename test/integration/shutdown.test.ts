/**
 * Stopping cuts nothing: under continuous load, SIGTERM (or Ctrl-C reaching the whole process
 * group under `npm start`) drains every request that was accepted, long streams included, then
 * stops the instances and exits 0.
 */
import t, { type Test } from 'tap'
import { Agent, Client, request } from 'undici'
import { claimPortSlice, createToken, kitchenToken, ownDir, processAlive, waitFor } from '../fixtures/router.ts'
import { REPO, spawnRouterGroup, startRouterProcess, type RouterProcess } from '../fixtures/router-process.ts'
import { closeSync, openSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

interface LoadReport {
  readonly ok: number
  readonly refused: number
  readonly failures: string[]
}

/** Workers that send requests back to back until the router refuses new connections. */
function continuousLoad(url: string, workers: number, headers: Record<string, string>): { stop: () => void; done: Promise<LoadReport>; count: () => number } {
  const agent = new Agent({ connections: workers, keepAliveTimeout: 30_000 })
  let ok = 0
  let refused = 0
  let stopped = false
  const failures: string[] = []
  const worker = async (): Promise<void> => {
    while (!stopped) {
      try {
        const res = await request(`${url}/sleep?sleep-ms=20`, { dispatcher: agent, headers })
        await res.body.text()
        if (res.statusCode === 200) ok += 1
        else failures.push(`status ${res.statusCode}`)
      } catch (err) {
        const code = (err as { code?: string }).code
        // The listener is closed: a new connection is refused, so the request was never accepted.
        if (code === 'ECONNREFUSED') {
          refused += 1
          return
        }
        failures.push(`${code ?? ''} ${(err as Error).message}`)
        return
      }
    }
  }
  const done = Promise.all(Array.from({ length: workers }, worker)).then(async () => {
    await agent.close()
    return { ok, refused, failures }
  })
  return { stop: () => (stopped = true), done, count: () => ok }
}

/** A response streamed in `chunks` pieces over about chunks × 50 ms: its body so far, and the whole of it. */
function longStream(url: string, headers: Record<string, string>, chunks: number): { received: () => string; whole: Promise<string> } {
  let body = ''
  const whole = request(`${url}/chunked?chunks=${chunks}&delay-ms=50`, { headers }).then(async (res) => {
    for await (const chunk of res.body) body += (chunk as Buffer).toString()
    return body
  })
  return { received: () => body, whole }
}

async function drainUnderLoad(t: Test, router: RouterProcess, stop: () => void): Promise<void> {
  await createToken(router, 'kitchen', kitchenToken({ 'concurrency-level': 20 }))
  const h = { 'x-waiter-token': 'kitchen' }
  const info = await request(`${router.url}/request-info`, { headers: h })
  const { pid } = (await info.body.json()) as { pid: number }
  // One kept-alive connection opened before the signal, to ask /readyz during the drain.
  const probe = new Client(router.url, { keepAliveTimeout: 60_000 })
  t.teardown(() => probe.close())
  t.equal((await probe.request({ path: '/readyz', method: 'GET' })).statusCode, 200, 'ready before the signal')
  // And one for a proxied request that arrives, on a connection kept alive, during the drain.
  const late = new Client(router.url, { keepAliveTimeout: 60_000 })
  t.teardown(() => late.close())
  const warm = await late.request({ path: '/request-info', method: 'GET', headers: h })
  await warm.body.text()
  t.equal(warm.statusCode, 200)
  t.not(warm.headers['connection'], 'close', 'its connection is kept alive before the signal')

  const load = continuousLoad(router.url, 8, h)
  const streams = [longStream(router.url, h, 80), longStream(router.url, h, 80)]
  await waitFor('the load to run', () => (load.count() >= 50 ? true : undefined), 20_000)
  await waitFor('both streams to be under way', () => (streams.every((s) => s.received().includes('chunk-1')) ? true : undefined))
  t.ok(streams.every((s) => !s.received().includes('chunk-79')), 'the streams are still running when the signal comes')
  stop()
  await waitFor('the router to take the signal', () => (router.lines.some((l) => l['msg'] === 'stopping: draining requests') ? true : undefined), 5000)
  const readyz = await probe.request({ path: '/readyz', method: 'GET' })
  await readyz.body.text()
  t.equal(readyz.statusCode, 503, '/readyz says 503 at once')
  t.equal(readyz.headers['connection'], 'close', 'and every response of the drain closes its connection')
  const proxied = await late.request({ path: '/request-info', method: 'GET', headers: h })
  await proxied.body.text()
  t.equal(proxied.statusCode, 200, 'a proxied request arriving on a kept-alive connection during the drain is served, not cut')
  t.equal(proxied.headers['connection'], 'close', 'with Connection: close')

  const report = await load.done
  t.same(report.failures, [], `no accepted request failed (${report.ok} served, ${report.refused} workers stopped at a refused connection)`)
  const bodies = await Promise.all(streams.map((s) => s.whole))
  for (const body of bodies) t.equal(body.split('\n').filter((l) => l.startsWith('chunk-')).length, 80, 'a long stream in flight at the signal finished whole')
  t.equal(await router.exited, 0, 'clean exit')
  await waitFor('the instance to be stopped', () => (processAlive(pid) ? undefined : true), 5000)
  t.ok(router.lines.some((l) => l['msg'] === 'stopped'), 'it stopped as it should, not by a second signal')
}

t.test('SIGTERM under continuous load: nothing accepted is cut, streams finish, instances stop', { timeout: 60_000 }, async (t) => {
  const router = await startRouterProcess(t)
  await drainUnderLoad(t, router, () => router.child.kill('SIGTERM'))
})

t.test('Ctrl-C on `npm start` (SIGINT to the whole process group, forwarded again by npm) drains instead of exiting at once', { timeout: 60_000 }, async (t) => {
  const router = await startRouterProcess(t, { via: 'npm' })
  await drainUnderLoad(t, router, () => process.kill(-(router.child.pid as number), 'SIGINT'))
})

t.test('SIGHUP (the terminal maitre ran in closed) drains and stops the instances too, instead of leaving them running', { timeout: 60_000 }, async (t) => {
  const router = await startRouterProcess(t)
  await createToken(router, 'kitchen', kitchenToken())
  const h = { 'x-waiter-token': 'kitchen' }
  const info = await request(`${router.url}/request-info`, { headers: h })
  const { pid } = (await info.body.json()) as { pid: number }
  router.child.kill('SIGHUP')
  t.equal(await router.exited, 0, 'clean exit')
  t.ok(router.lines.some((l) => l['msg'] === 'stopping: draining requests'), 'it drained')
  await waitFor('the instance to be stopped', () => (processAlive(pid) ? undefined : true), 5000)
  t.notOk(processAlive(pid), 'no instance is left running')
})

t.test('a router whose standard output can no longer be written (its terminal went away) still serves, and stops cleanly on SIGHUP', async (t) => {
  const dir = ownDir(t)
  const { low, release } = claimPortSlice()
  t.teardown(() => release())
  const port = low + 99
  const config = join(dir, 'maitre.yaml')
  writeFileSync(config, ['server:', `  port: ${port}`, `dataDir: ${join(dir, 'data')}`, 'backend:', '  local:', `    portRange: [${low}, ${low + 98}]`, ''].join('\n'))
  // An fd open for reading only: every write to it fails (EBADF), as writes to a closed terminal do (EIO).
  writeFileSync(join(dir, 'out'), '')
  const unwritable = openSync(join(dir, 'out'), 'r')
  t.teardown(() => closeSync(unwritable))
  const up = () => waitFor('the router to answer', async () => ((await request(`http://127.0.0.1:${port}/status`).then((r) => r.body.text().then(() => r.statusCode), () => 0)) === 200 ? true : undefined), 20_000)

  const router = spawnRouterGroup(t, process.execPath, [join(REPO, 'src/main.ts'), 'serve', '--config', config], ['ignore', unwritable, 'ignore'])
  await up()
  await createToken({ url: `http://127.0.0.1:${port}` }, 'kitchen', kitchenToken())
  t.equal((await request(`http://127.0.0.1:${port}/request-info`, { headers: { 'x-waiter-token': 'kitchen' } })).statusCode, 200, 'it serves, its log lines going nowhere')
  router.child.kill('SIGHUP')
  t.equal(await Promise.race([router.exited, new Promise((r) => setTimeout(() => r('still running after 20 s'), 20_000))]), 0, 'and stops cleanly on SIGHUP: no failed write stops the drain or holds the exit')
})

t.test('a request that outlives server.shutdownTimeoutMs is cut when the drain gives up; the router still stops cleanly', { timeout: 60_000 }, async (t) => {
  const router = await startRouterProcess(t, { server: { shutdownTimeoutMs: 500 } })
  await createToken(router, 'kitchen', kitchenToken())
  const h = { 'x-waiter-token': 'kitchen' }
  t.equal((await request(`${router.url}/request-info`, { headers: h })).statusCode, 200)
  let cut: unknown
  const endless = request(`${router.url}/sleep?sleep-ms=30000`, { headers: h }).then(
    async (res) => (await res.body.text(), res.statusCode),
    (err: unknown) => ((cut = err), 'cut'),
  )
  await waitFor('the long request to be under way', async () => {
    const res = await request(`${router.url}/state/instance-tracker`)
    const state = ((await res.body.json()) as { state: Record<string, { load: { inFlight: number } }> }).state
    return Object.values(state).some((s) => s.load.inFlight === 1) ? true : undefined
  })
  const signalled = Date.now()
  router.child.kill('SIGTERM')
  t.equal(await router.exited, 0, 'clean exit')
  const took = Date.now() - signalled
  t.equal(await endless, 'cut', `the request was cut at the drain's end (${String((cut as Error | undefined)?.message)})`)
  t.ok(took < 10_000, `stopped ${took} ms after the signal: the drain gave up after 500 ms, not after the request's 30 s`)
  t.ok(router.lines.some((l) => l['msg'] === 'drain timed out; cutting the requests left' && l['cut'] === 1), 'and said what it cut')
})
