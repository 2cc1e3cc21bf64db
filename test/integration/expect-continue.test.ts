/**
 * Expect: 100-continue: the client is told to send its body only once the router admitted the
 * request and holds a slot for it; every refusal of the router's comes first, final, and the
 * body is never sent for it.
 */
import t from 'tap'
import { connect } from 'node:net'
import { createToken, kitchenToken, startRouter, type Router } from '../fixtures/router.ts'

/** Sends the head, waits for the first answer line, then (if told to continue) the body; returns all that came back. */
function exchange(router: Router, head: string, body: string): Promise<{ first: string; all: string }> {
  return new Promise((resolve) => {
    const socket = connect(Number(new URL(router.url).port), '127.0.0.1', () => socket.write(head))
    let text = ''
    let first: string | undefined
    socket.on('data', (chunk) => {
      text += chunk.toString()
      if (first === undefined && text.includes('\r\n\r\n')) {
        first = text.slice(0, text.indexOf('\r\n'))
        if (first.includes(' 100 ')) socket.write(body)
      }
    })
    socket.on('close', () => resolve({ first: first ?? '', all: text }))
    setTimeout(() => socket.end(), 5000).unref()
  })
}

const post = (token: string, body: string): string =>
  `POST /request-info HTTP/1.1\r\nHost: x\r\nx-waiter-token: ${token}\r\ncontent-type: text/plain\r\ncontent-length: ${body.length}\r\nexpect: 100-continue\r\naccept: application/json\r\nconnection: close\r\n\r\n`

t.test('Expect: 100-continue is answered after admission: a refusal is final and no body is asked for; an admitted request gets 100 and its body arrives', async (t) => {
  const router = await startRouter(t)
  await createToken(router, 'kitchen', kitchenToken())
  const body = 'the body, sent only when asked'
  const refused = await exchange(router, post('nope', body), body)
  t.match(refused.first, /^HTTP\/1\.1 404 /, 'an unknown token: the final 404 first')
  t.notMatch(refused.all, / 100 Continue/, 'and no 100 Continue, ever')

  const served = await exchange(router, post('kitchen', body), body)
  t.match(served.first, /^HTTP\/1\.1 100 Continue/, 'admitted (the version started for it): told to continue')
  t.match(served.all, /HTTP\/1\.1 200 /)
  t.match(served.all, /"body":"the body, sent only when asked"/, 'the body reached the instance')
})
