/** Structured JSON logs on stdout in pino's line shape. */
import { pino, type Logger } from 'pino'

export type { Logger }
export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent'
export const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']

export function createLogger(level: LogLevel, destination?: NodeJS.WritableStream): Logger {
  const options = { level, base: { name: 'maitre', pid: process.pid } }
  return destination === undefined ? pino(options) : pino(options, destination)
}

export const silentLogger: Logger = pino({ level: 'silent' })
