/**
 * The framework id kept in the router's data directory (atomically replaced), so a restarted
 * router subscribes as the same framework and the master hands it its running tasks back.
 */
import { readFile } from 'node:fs/promises'
import { writeFileAtomic } from '../../storage/json-dir.ts'
import type { FrameworkIdStore } from '../mesos.ts'

export function fileFrameworkIds(path: string): FrameworkIdStore {
  return {
    async load() {
      try {
        const { id } = JSON.parse(await readFile(path, 'utf8')) as { id?: unknown }
        return typeof id === 'string' && id !== '' ? id : undefined
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
        throw err
      }
    },
    save: (id) => writeFileAtomic(path, `${JSON.stringify({ id })}\n`),
  }
}
