#!/usr/bin/env node
import { runCli } from './cli.ts'

const stopSignal = (): Promise<void> =>
  new Promise((resolve) => {
    const onSignal = (): void => {
      // A second signal means "now": do not wait for the drain.
      process.once('SIGTERM', () => process.exit(1))
      process.once('SIGINT', () => process.exit(1))
      resolve()
    }
    process.once('SIGTERM', onSignal)
    process.once('SIGINT', onSignal)
  })

process.exitCode = await runCli(process.argv.slice(2), process.env, {
  out: (text) => process.stdout.write(text),
  err: (text) => process.stderr.write(text),
  stopSignal,
})
