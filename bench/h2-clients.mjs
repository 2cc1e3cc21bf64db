#!/usr/bin/env node
// Which HTTP/2 client should carry requests to h2c instances: undici (Agent with useH2c) or
// node:http2 (one session, a stream per request)? A bare HTTP/1.1 proxy on each, side by side,
// in front of bench/backend-h2c.mjs; wrk drives both, interleaved. Prints req/s and the proxy's
// CPU µs per request. Run: node bench/h2-clients.mjs (wrk from Debian's package).
import { spawn, spawnSync } from 'node:child_process'
import { createServer } from 'node:http'
import { connect } from 'node:http2'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { Agent } from 'undici'

const mode = process.argv[2]
if (mode === 'undici' || mode === 'node') {
  const [port, backendPort] = [Number(process.argv[3]), Number(process.argv[4])]
  const origin = `http://127.0.0.1:${backendPort}`
  let handler
  if (mode === 'undici') {
    const agent = new Agent({ allowH2: true, useH2c: true, connections: 1, pipelining: 100 })
    handler = (req, res) => {
      agent.request({ origin, path: req.url, method: req.method }).then(async (r) => {
        const body = Buffer.from(await r.body.arrayBuffer())
        res.writeHead(r.statusCode, { 'content-type': 'text/plain', 'content-length': body.length })
        res.end(body)
      }, () => { res.writeHead(502); res.end() })
    }
  } else {
    const session = connect(origin)
    handler = (req, res) => {
      const stream = session.request({ ':path': req.url, ':method': req.method })
      const chunks = []
      let status = 502
      stream.on('response', (h) => (status = h[':status']))
      stream.on('data', (c) => chunks.push(c))
      stream.on('end', () => {
        const body = Buffer.concat(chunks)
        res.writeHead(status, { 'content-type': 'text/plain', 'content-length': body.length })
        res.end(body)
      })
      stream.on('error', () => { res.writeHead(502); res.end() })
    }
  }
  createServer(handler).listen(port, '127.0.0.1')
} else {
  const free = () => new Promise((resolve) => { const s = createServer().listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)) }) })
  const backendPort = await free()
  const kids = [spawn(process.execPath, [fileURLToPath(new URL('./backend-h2c.mjs', import.meta.url)), String(backendPort)], { stdio: 'ignore' })]
  const targets = []
  for (const m of ['undici', 'node']) {
    const port = await free()
    const child = spawn(process.execPath, [fileURLToPath(import.meta.url), m, String(port), String(backendPort)], { stdio: 'ignore' })
    kids.push(child)
    targets.push({ m, port, pid: child.pid })
  }
  process.on('exit', () => kids.forEach((k) => k.kill()))
  await new Promise((r) => setTimeout(r, 1500))
  const cpu = (pid) => { const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' '); return (Number(f[11]) + Number(f[12])) / 100 }
  const results = { undici: [], node: [] }
  for (let round = 0; round < 3; round++) for (const t of targets) {
    const before = cpu(t.pid)
    const out = spawnSync('wrk', ['-t2', '-c64', '-d5s', `http://127.0.0.1:${t.port}/tiny`], { encoding: 'utf8' }).stdout
    const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1])
    results[t.m].push({ rps, us: ((cpu(t.pid) - before) * 1e6) / (rps * 5) })
  }
  for (const [m, list] of Object.entries(results)) {
    const med = (xs) => xs.sort((a, b) => a - b)[1]
    console.log(`${m}: ${med(list.map((r) => r.rps)).toFixed(0)} req/s, ${med(list.map((r) => r.us)).toFixed(1)} µs CPU/request`)
  }
  process.exit(0)
}
