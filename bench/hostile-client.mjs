// The attacker of bench/hostile-connections.ts: opens `count` connections to 127.0.0.1:`port`
// from `address`, half of them sending headers that never end, half a body that trickles (one
// byte every few seconds, never idle long enough to be dropped as idle). Holds them until told
// to stop (SIGTERM), and prints how they fared as JSON.
import { connect } from 'node:net'

const [port, count, address, token] = [Number(process.argv[2]), Number(process.argv[3]), process.argv[4], process.argv[5]]
const tally = { opened: 0, refused503: 0, answered: {}, closedByServer: 0, errors: {} }
const sockets = new Set()

function open(i) {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port, localAddress: address })
    let answered = false
    socket.on('connect', () => {
      tally.opened += 1
      sockets.add(socket)
      if (i % 2 === 0) {
        socket.write(`GET /request-info HTTP/1.1\r\nhost: 127.0.0.1\r\nx-waiter-token: ${token}\r\nx-slow: `)
      } else {
        socket.write(`POST /request-info HTTP/1.1\r\nhost: 127.0.0.1\r\nx-waiter-token: ${token}\r\ncontent-length: 100000\r\n\r\nx`)
      }
      resolve()
    })
    socket.on('data', (chunk) => {
      if (answered) return
      answered = true
      const status = /^HTTP\/1\.1 (\d{3})/.exec(chunk.toString('latin1'))?.[1] ?? 'garbled'
      if (status === '503' && chunk.toString('latin1').includes('MAITRE_TOO_MANY_CONNECTIONS')) tally.refused503 += 1
      else tally.answered[status] = (tally.answered[status] ?? 0) + 1
    })
    socket.on('error', (err) => {
      tally.errors[err.code ?? 'error'] = (tally.errors[err.code ?? 'error'] ?? 0) + 1
      resolve()
    })
    socket.on('close', () => {
      if (sockets.delete(socket)) tally.closedByServer += 1
    })
  })
}

// Trickle: every 5 s, one more byte on every body that is still open (and one more header byte on the others).
const trickle = setInterval(() => {
  for (const socket of sockets) if (!socket.destroyed) socket.write('x')
}, 5000)

for (let i = 0; i < count; i += 500) {
  await Promise.all(Array.from({ length: Math.min(500, count - i) }, (_, k) => open(i + k)))
}
process.stdout.write(`${JSON.stringify({ phase: 'opened', ...tally, open: sockets.size })}\n`)
process.on('SIGTERM', () => {
  clearInterval(trickle)
  const report = { phase: 'done', ...tally, open: sockets.size }
  for (const socket of sockets) socket.destroy()
  process.stdout.write(`${JSON.stringify(report)}\n`, () => process.exit(0))
})
