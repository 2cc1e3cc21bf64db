#!/usr/bin/env node
// bench/backend.mjs over HTTP/2 cleartext (prior knowledge): /tiny answers at once with a few
// bytes, /slow after 10 ms. One process, one session per client connection.
import { createServer } from 'node:http2'

const port = Number(process.argv[2] ?? process.env.PORT0)
const TINY = Buffer.from('ok\n')
const server = createServer({ settings: { maxConcurrentStreams: 1000 } }, (req, res) => {
  const answer = () => {
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': TINY.length })
    res.end(TINY)
  }
  if (req.url === '/slow') setTimeout(answer, 10)
  else answer()
})
server.listen(port, process.env.POD_IP ?? '127.0.0.1')
process.on('SIGTERM', () => process.exit(0))
