/** The correlation id of a request: the client's x-cid, or a fresh one. */
import type { IncomingMessage } from 'node:http'
import { randomUUID } from 'node:crypto'

export function cidOf(req: IncomingMessage): string {
  const given = req.headers['x-cid']
  return typeof given === 'string' && given !== '' ? given : randomUUID()
}
