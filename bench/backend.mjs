#!/usr/bin/env node
// The fixed test backend every target forwards to: /tiny answers at once with a few bytes,
// /slow after 10 ms, /status is the health check. One process, keep-alive.
import { createServer } from 'node:http'

const port = Number(process.argv[2] ?? process.env.PORT0)
const TINY = Buffer.from('ok\n')
const server = createServer((req, res) => {
  if (req.url === '/slow') {
    setTimeout(() => {
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': TINY.length })
      res.end(TINY)
    }, 10)
    return
  }
  res.writeHead(200, { 'content-type': 'text/plain', 'content-length': TINY.length })
  res.end(TINY)
})
server.keepAliveTimeout = 65_000
// On the Kubernetes simulator a pod binds its own IP (127.x.y.z).
server.listen(port, process.env.POD_IP ?? '127.0.0.1')
process.on('SIGTERM', () => process.exit(0))
