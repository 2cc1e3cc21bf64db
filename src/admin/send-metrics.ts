/**
 * GET /metrics: the exposition sent metric by metric as it is written (chunked), so that the
 * router neither holds nor encodes the whole text at once (~46 MB at 10,000 versions, which
 * joined and written in one piece held the event loop ~1.5 s), and a slow scraper is waited for
 * between metrics.
 */
import type { ServerResponse } from 'node:http'
import type { Metrics } from '../metrics.ts'
import { drainedOrClosed } from './http.ts'

export async function sendMetrics(res: ServerResponse, metrics: Metrics, cid: string): Promise<void> {
  const chunks = metrics.chunks()
  // The first metric before the head: a failure there is still answered as an error.
  const first = await chunks.next()
  res.writeHead(200, { 'content-type': metrics.registry.contentType, 'x-cid': cid })
  if (first.done !== true) res.write(first.value)
  try {
    for await (const chunk of chunks) {
      if (res.destroyed) return
      if (!res.write(chunk)) await drainedOrClosed(res)
    }
    res.end()
  } catch (err) {
    // The head is out: the scraper sees a cut answer, never a complete-looking partial one.
    res.destroy(err instanceof Error ? err : new Error(String(err)))
  }
}
