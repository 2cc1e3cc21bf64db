#!/usr/bin/env node
// The floor of a Node.js proxy on this machine: node:http in front of an undici Pool through the
// raw dispatch API, with nothing else — no routing, slots, headers policy, metrics or log. maitre
// is measured against it in the same run to tell maitre's own cost from the platform's. Several
// copies may share the port (SO_REUSEPORT): the bench runs two to show what a second core buys.
import { createServer } from 'node:http'
import { Pool } from 'undici'

const [port, upstream] = [Number(process.argv[2]), Number(process.argv[3])]
const pool = new Pool(`http://127.0.0.1:${upstream}`, { connections: 256 })

createServer((req, res) => {
  pool.dispatch(
    { path: req.url, method: req.method, headers: req.headers, body: null },
    {
      onRequestStart() {},
      onResponseStart(_controller, status, headers) {
        res.writeHead(status, headers)
      },
      onResponseData(_controller, chunk) {
        res.write(chunk)
      },
      onResponseEnd() {
        res.end()
      },
      onResponseError() {
        res.destroy()
      },
    },
  )
}).listen({ port, host: '127.0.0.1', reusePort: true })
process.on('SIGTERM', () => process.exit(0))
