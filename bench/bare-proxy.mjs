#!/usr/bin/env node
// The floor of a Node.js proxy on this machine: node:http in front of an undici Pool through the
// raw dispatch API, with nothing else — no routing, slots, metrics or log. maitre is measured
// against it in the same run to tell maitre's own cost from the platform's. It is the best such
// proxy we know how to write, so that it does not flatter maitre: one Pool for its one origin,
// hop-by-hop fields dropped both ways (RFC 9110 §7.6.1, as any proxy must), and an answer whose
// body arrives whole in one chunk written with its head in one res.end(chunk) (~7 % less CPU per
// request than a write and an end, measured interleaved). Several copies may share the port
// (SO_REUSEPORT): the bench runs two to show what a second core buys.
//
//   node bench/bare-proxy.mjs PORT UPSTREAM_PORT [--waiter-headers]
//
// --waiter-headers adds what Waiter's protocol asks of every proxied request and nothing else:
// a fresh x-cid, the instance's Basic credentials, the three principal fields, via and
// x-forwarded-for/-proto/-host on the way in; x-cid and via on the way out; x-waiter-* fields
// dropped. The bench runs it beside the plain floor to state what the protocol itself costs.
import { createServer } from 'node:http'
import { randomBytes, randomUUID } from 'node:crypto'
import { Pool } from 'undici'

const port = Number(process.argv[2])
const upstream = Number(process.argv[3])
const waiterHeaders = process.argv.includes('--waiter-headers')
const pool = new Pool(`http://127.0.0.1:${upstream}`, { connections: 256 })

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-authenticate', 'proxy-authorization', 'proxy-connection', 'te', 'trailers', 'transfer-encoding', 'upgrade'])
const AUTHORIZATION = `Basic ${Buffer.from(`waiter:${randomBytes(16).toString('hex')}`).toString('base64')}`
const PRINCIPAL = 'root'
const VIA = '1.1 floor'

/** Names the Connection field lists (beyond keep-alive and close): hop-by-hop for this message. */
function listed(headers) {
  const value = headers.connection
  if (typeof value !== 'string' || value === '' || value === 'keep-alive' || value === 'close') return undefined
  return new Set(value.toLowerCase().split(',').map((s) => s.trim()))
}

function endToEnd(headers, out) {
  const named = listed(headers)
  for (const name in headers) {
    if (HOP_BY_HOP.has(name) || named?.has(name) === true) continue
    if (waiterHeaders && name.startsWith('x-waiter-')) continue
    out[name] = headers[name]
  }
  return out
}

function requestHeaders(req, cid) {
  const out = endToEnd(req.headers, {})
  if (!waiterHeaders) return out
  out['x-cid'] = cid
  out.authorization = AUTHORIZATION
  out['x-waiter-auth-principal'] = PRINCIPAL
  out['x-waiter-auth-user'] = PRINCIPAL
  out['x-waiter-authenticated-principal'] = PRINCIPAL
  out.via = VIA
  out['x-forwarded-for'] = req.socket.remoteAddress
  out['x-forwarded-proto'] = 'http'
  if (req.headers.host !== undefined) out['x-forwarded-host'] = req.headers.host
  return out
}

class Exchange {
  constructor(res, cid) {
    this.res = res
    this.cid = cid
    // The body's length until its first chunk: a chunk that long is the whole body.
    this.wholeBody = -1
    this.held = undefined
  }

  onRequestStart() {}

  onResponseStart(_controller, status, headers) {
    const out = endToEnd(headers, {})
    if (waiterHeaders) {
      out['x-cid'] = this.cid
      out.via = VIA
    }
    this.res.writeHead(status, out)
    const length = headers['content-length']
    if (typeof length === 'string') this.wholeBody = Number(length)
  }

  onResponseData(controller, chunk) {
    if (chunk.length === this.wholeBody) {
      // HTTP/1.1's parser ends the message in this same call: the chunk goes with the end.
      this.wholeBody = -1
      this.held = chunk
      return
    }
    this.wholeBody = -1
    if (!this.res.write(chunk)) {
      controller.pause()
      this.res.once('drain', () => controller.resume())
    }
  }

  onResponseEnd() {
    this.res.end(this.held)
  }

  onResponseError() {
    this.res.destroy()
  }
}

createServer((req, res) => {
  const cid = waiterHeaders ? randomUUID() : undefined
  pool.dispatch({ path: req.url, method: req.method, headers: requestHeaders(req, cid), body: null }, new Exchange(res, cid))
}).listen({ port, host: '127.0.0.1', reusePort: true })
process.on('SIGTERM', () => process.exit(0))
