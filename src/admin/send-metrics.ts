/**
 * GET /metrics: the exposition sent metric by metric as it is written (chunked), so that the
 * router neither holds nor encodes the whole text at once (50–65 MB at 10,000 versions, which
 * joined and written in one piece held the event loop ~1.5 s), and a slow scraper is waited for
 * between metrics.
 */
import type { ServerResponse } from 'node:http'
import type { Metrics } from '../metrics.ts'
import { leftBehind, writeOn } from './http.ts'

/** Metrics' text gathered before a write (a scrape is ~50 metrics, most of them a few lines). */
const WRITE_AT_CHARS = 65_536

export async function sendMetrics(res: ServerResponse, metrics: Metrics, cid: string): Promise<void> {
  const chunks = metrics.chunks()
  // The first metric before the head: a failure there is still answered as an error.
  const first = await chunks.next()
  try {
    if (leftBehind(res)) return
    res.writeHead(200, { 'content-type': metrics.registry.contentType, 'x-cid': cid })
    let text = first.done === true ? '' : first.value
    for await (const chunk of chunks) {
      text += chunk
      if (text.length < WRITE_AT_CHARS) continue
      if (!(await writeOn(res, text))) return
      text = ''
    }
    if (!leftBehind(res)) res.end(text)
  } catch (err) {
    // The head is out: the scraper sees a cut answer, never a complete-looking partial one.
    res.destroy(err instanceof Error ? err : new Error(String(err)))
  } finally {
    // A scraper gone: the scrape's snapshot of every version's gauges goes too.
    await chunks.return(undefined)
  }
}
