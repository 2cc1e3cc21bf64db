/** The correlation id of a request: the client's x-cid, or a fresh one, the same every time it is asked for. */
import type { IncomingMessage } from 'node:http'
import { randomUUID } from 'node:crypto'

const made = new WeakMap<IncomingMessage, string>()

export function cidOf(req: IncomingMessage): string {
  const given = req.headers['x-cid']
  if (typeof given === 'string' && given !== '') return given
  let cid = made.get(req)
  if (cid === undefined) made.set(req, (cid = randomUUID()))
  return cid
}
