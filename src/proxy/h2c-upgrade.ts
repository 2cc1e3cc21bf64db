/**
 * HTTP/1.1 `Upgrade: h2c` (RFC 7540 §3.2): the request that asks becomes stream 1 of an HTTP/2
 * connection, answered over HTTP/2 after a 101. RFC 9113 deprecates the dance and Node's HTTP/2
 * server cannot take it (nodejs/http2#121: no way to start a session with stream 1 already
 * open), so the router hands Node's server what it would have read from a client with prior
 * knowledge: the client's own connection preface, then the upgraded request as that client would
 * have sent it (a HEADERS frame on stream 1, the request complete), then the rest of the client's
 * bytes untouched, all put back on the socket Node's session then reads. Node parses and answers all of it; nothing here parses HTTP/2 beyond the
 * length of the client's first SETTINGS frame, and the request is encoded with HPACK's plainest
 * form (literals never entered in the dynamic table), so the client's compression state is
 * untouched.
 *
 * Only a request without a body is upgraded: the RFC lets a server answer any upgrade request
 * as HTTP/1.1, and a body would have to be replayed as DATA frames against flow control.
 */
import type { IncomingMessage } from 'node:http'
import type { Socket } from 'node:net'

/** The client connection preface (RFC 9113 §3.4). */
const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1')
const FRAME_HEADER = 9
const TYPE_HEADERS = 0x1
const TYPE_SETTINGS = 0x4
const TYPE_CONTINUATION = 0x9
const END_STREAM = 0x1
const END_HEADERS = 0x4
/** The smallest frame payload every peer accepts (SETTINGS_MAX_FRAME_SIZE's initial value). */
const MAX_FRAME = 16_384
/** A client's first SETTINGS frame larger than this is no client's: the connection goes. */
const MAX_SETTINGS = 6 * 64
/** Fields HTTP/2 forbids (RFC 9113 §8.2.2) or carries as pseudo-headers: never in the HEADERS frame. */
const NOT_IN_HTTP2 = new Set(['connection', 'upgrade', 'http2-settings', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'host'])

function tokens(value: string | string[] | undefined): string[] {
  if (value === undefined) return []
  return (Array.isArray(value) ? value.join(',') : value).split(',').map((s) => s.trim().toLowerCase())
}

/**
 * The request asks for h2c as RFC 7540 §3.2 has it: Upgrade names h2c, exactly one
 * HTTP2-Settings in base64url that decodes to whole settings, both listed in Connection, a
 * target that is a path, and no body. Anything else is served as HTTP/1.1.
 */
export function isH2cUpgrade(req: IncomingMessage): boolean {
  if (!tokens(req.headers.upgrade).includes('h2c')) return false
  // An origin-form target (a path) becomes :path as it is; any other form is served as HTTP/1.1.
  if (!(req.url ?? '').startsWith('/')) return false
  const connection = tokens(req.headers.connection)
  if (!connection.includes('upgrade') || !connection.includes('http2-settings')) return false
  let settings = 0
  let value = ''
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    if (req.rawHeaders[i]?.toLowerCase() === 'http2-settings') {
      settings += 1
      value = req.rawHeaders[i + 1] ?? ''
    }
  }
  if (settings !== 1 || !/^[A-Za-z0-9_-]*$/.test(value) || Buffer.from(value, 'base64url').length % 6 !== 0) return false
  const length = req.headers['content-length']
  return req.headers['transfer-encoding'] === undefined && (length === undefined || length === '0')
}

/** HPACK integer (RFC 7541 §5.1) with an N-bit prefix, the first byte's high bits given. */
function hpackInteger(out: number[], value: number, prefixBits: number, firstByte: number): void {
  const max = (1 << prefixBits) - 1
  if (value < max) {
    out.push(firstByte | value)
    return
  }
  out.push(firstByte | max)
  let rest = value - max
  while (rest >= 128) {
    out.push((rest % 128) + 128)
    rest = Math.floor(rest / 128)
  }
  out.push(rest)
}

/** One field as a literal never indexed (RFC 7541 §6.2.3), name and value as raw octets. */
function hpackLiteral(out: number[], name: string, value: string): void {
  hpackInteger(out, 0, 4, 0x10)
  for (const text of [name, value]) {
    const bytes = Buffer.from(text, 'latin1')
    hpackInteger(out, bytes.length, 7, 0x00)
    for (const b of bytes) out.push(b)
  }
}

function frame(type: number, flags: number, streamId: number, payload: Buffer): Buffer {
  const header = Buffer.alloc(FRAME_HEADER)
  header.writeUIntBE(payload.length, 0, 3)
  header.writeUInt8(type, 3)
  header.writeUInt8(flags, 4)
  header.writeUInt32BE(streamId, 5)
  return Buffer.concat([header, payload])
}

/** The upgraded request as stream 1's HEADERS (and CONTINUATION) frames, the request complete. */
export function upgradedRequestFrames(req: IncomingMessage): Buffer {
  const block: number[] = []
  hpackLiteral(block, ':method', req.method ?? 'GET')
  hpackLiteral(block, ':scheme', 'http')
  const host = req.headers.host
  if (host !== undefined) hpackLiteral(block, ':authority', host)
  hpackLiteral(block, ':path', req.url ?? '/')
  const listed = new Set(tokens(req.headers.connection))
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    const name = (req.rawHeaders[i] ?? '').toLowerCase()
    const value = req.rawHeaders[i + 1] ?? ''
    if (NOT_IN_HTTP2.has(name) || listed.has(name) || (name === 'te' && value.toLowerCase() !== 'trailers')) continue
    hpackLiteral(block, name, value)
  }
  const payload = Buffer.from(block)
  const frames: Buffer[] = []
  for (let offset = 0; offset === 0 || offset < payload.length; offset += MAX_FRAME) {
    const piece = payload.subarray(offset, offset + MAX_FRAME)
    const last = offset + MAX_FRAME >= payload.length
    frames.push(frame(offset === 0 ? TYPE_HEADERS : TYPE_CONTINUATION, (offset === 0 ? END_STREAM : 0) | (last ? END_HEADERS : 0), 1, piece))
  }
  return Buffer.concat(frames)
}

/** The answer that switches the connection to HTTP/2. */
export const SWITCHING_TO_H2C = 'HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n'

/**
 * After the 101: reads the client's preface and first SETTINGS frame, then hands the socket to
 * Node's HTTP/2 server with the upgraded request in its place (put back on the socket, which
 * the session reads first). A client whose first bytes are not a preface, or that sends none
 * within timeoutMs, loses its connection.
 */
export function spliceUpgradedRequest(socket: Socket, head: Buffer, requestFrames: Buffer, timeoutMs: number, handOver: (socket: Socket) => void): void {
  let pending = head
  const silent = setTimeout(() => socket.destroy(), timeoutMs)
  const stop = (): void => {
    clearTimeout(silent)
    socket.off('data', onData)
  }
  const check = (): void => {
    const seen = Math.min(pending.length, PREFACE.length)
    if (!pending.subarray(0, seen).equals(PREFACE.subarray(0, seen))) {
      stop()
      socket.destroy()
      return
    }
    if (pending.length < PREFACE.length + FRAME_HEADER) return
    const settingsLength = pending.readUIntBE(PREFACE.length, 3)
    if (pending.readUInt8(PREFACE.length + 3) !== TYPE_SETTINGS || settingsLength > MAX_SETTINGS) {
      stop()
      socket.destroy()
      return
    }
    const end = PREFACE.length + FRAME_HEADER + settingsLength
    if (pending.length < end) return
    stop()
    socket.pause()
    socket.unshift(Buffer.concat([pending.subarray(0, end), requestFrames, pending.subarray(end)]))
    handOver(socket)
  }
  const onData = (chunk: Buffer): void => {
    pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk])
    check()
  }
  socket.on('data', onData)
  socket.once('close', () => clearTimeout(silent))
  if (pending.length > 0) check()
}
