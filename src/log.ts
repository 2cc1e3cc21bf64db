/** Structured JSON logs on stdout in pino's line shape. */
import { write } from 'node:fs'
import { pino, type Logger } from 'pino'

export type { Logger }
export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent'
export const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']

/**
 * Lines waiting to be written past this (standard output not read: a stalled pipe, a stopped
 * terminal) are dropped, not held: before, the backlog grew without bound until the router ran
 * out of memory.
 */
const LOG_BACKLOG_BYTES = 32 * 1024 * 1024

export function createLogger(level: LogLevel, destination?: NodeJS.WritableStream): Logger {
  const options = { level, base: { name: 'maitre', pid: process.pid } }
  return pino(options, destination ?? standardOutput())
}

/**
 * Standard output as pino writes it, made harmless once it fails. A terminal that went away (EIO)
 * or an fd that cannot be written (EBADF) is not the broken pipe pino already shrugs off: its
 * error would stop the router, and at exit pino's last flush would retry the write every 100 ms
 * for ever. Logging just ends there; the router goes on (and stops) without it.
 */
function standardOutput(): ReturnType<typeof pino.destination> {
  // Written asynchronously; under load the lines of many requests leave in one write anyway
  // (0.09 writes per request at 64 connections), so batching them further saves nothing.
  const out = pino.destination({ fd: 1, sync: false, maxLength: LOG_BACKLOG_BYTES })
  // Said once per backlog, until it is written out.
  let dropping = false
  out.on('drop', () => {
    if (dropping) return
    dropping = true
    tellStderr(`maitre: standard output is not being read: log lines past ${LOG_BACKLOG_BYTES} bytes waiting are dropped\n`)
  })
  out.on('drain', () => {
    dropping = false
  })
  out.on('error', (err: NodeJS.ErrnoException) => {
    // Said once where it may still be read (a disk full under a redirected stdout, say).
    tellStderr(`maitre: standard output failed (${err.code ?? err.message}): logging stops here\n`)
    out.write = () => true
    out.flushSync = () => undefined
    out.flush = (cb?: (err?: Error) => void) => cb?.()
    out.end = () => undefined
  })
  return out
}

/**
 * A word on stderr that can neither block nor fail: Node writes to a terminal synchronously, and
 * a terminal nobody reads (the same one standard output stalled on) would stop the router.
 */
function tellStderr(text: string): void {
  write(2, text, () => undefined)
}

export const silentLogger: Logger = pino({ level: 'silent' })
