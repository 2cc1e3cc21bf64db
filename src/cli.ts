/**
 * The `maitre` command line. `serve` (the default) runs a router; `--check-config` validates a
 * config and prints it with defaults filled in. Returns an exit code instead of exiting, so tests
 * can call it in-process.
 */
import { parseArgs } from 'node:util'
import { VERSION } from './version.ts'
import { CliError, RouterClient } from './cli/client.ts'
import { CLIENT_COMMANDS, runCommand } from './cli/commands.ts'
import { createApp } from './app.ts'
import { configWithoutCredentials, DEFAULTS, loadConfigFile, withOverrides, type Config } from './config.ts'
import { isMaitreError } from './errors.ts'

export interface CliIo {
  readonly out: (text: string) => void
  readonly err: (text: string) => void
  /** Resolves when the process is asked to stop (SIGTERM/SIGINT). */
  readonly stopSignal: () => Promise<void>
}

const EX_USAGE = 64
/** A client command stopped by a signal (128 + SIGINT). */
const EX_INTERRUPTED = 130
const INTERRUPTED = Symbol('interrupted')
const EX_CONFIG = 78

const USAGE = `Usage: maitre [serve] [options]          run a router
       maitre token create|update NAME --file FILE   (JSON or YAML descriptor)
       maitre token show|delete NAME [--hard]
       maitre token list [--owner USER]
       maitre ping TOKEN                  start the token's service and health-check it
       maitre apps [SERVICE-ID]           versions, or one version's instances
       maitre kill SERVICE-ID INSTANCE-ID
       maitre logs SERVICE-ID INSTANCE-ID [--file stdout|stderr|…]

Client commands talk to --router URL (default MAITRE_URL or http://127.0.0.1:9091);
--json prints the API's JSON instead of tables. Exit codes: 0 ok, 1 the router said no,
64 bad usage, 66 unreadable file, 69 router unreachable, 78 bad config.

Serve options:
  -c, --config FILE      YAML config file (also MAITRE_CONFIG); see config/example.yaml
  -p, --port N           listen port (default 9091; also MAITRE_PORT)
      --host ADDR        listen address (default 127.0.0.1)
      --data-dir DIR     where tokens, service records and instance sandboxes live (also MAITRE_DATA_DIR)
      --log-level LEVEL  fatal|error|warn|info|debug|trace|silent (also MAITRE_LOG_LEVEL)
      --etcd URL         cluster mode: share state with other routers through this etcd
                         endpoint (repeatable; replaces etcd.endpoints; also MAITRE_ETCD, comma-separated)
      --check-config     validate the config, print it with defaults filled in (credentials
                         redacted), and exit
  -v, --version          print the version
  -h, --help             print this help
`


/** A whole number written in decimal digits: Number() would also take '' (0), '0x10' and '1e3'. */
function intOption(source: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined
  if (!/^-?[0-9]+$/.test(value)) throw new UsageError(`${source} must be an integer, got ${JSON.stringify(value)}`)
  return Number(value)
}

/** An environment variable set to nothing is unset, as a shell's `NAME= maitre` means. */
function fromEnv(env: NodeJS.ProcessEnv, name: string): string | undefined {
  const value = env[name]
  return value === '' ? undefined : value
}

/**
 * MAITRE_PORT, unless it is what Kubernetes puts there itself: every pod in a namespace with a
 * Service named `maitre` gets `MAITRE_PORT=tcp://10.0.0.1:80` (a Docker link variable, as for
 * every Service, unless the pod says enableServiceLinks: false). Taken for the port, it stopped
 * every router from starting.
 */
function portFromEnv(env: NodeJS.ProcessEnv): string | undefined {
  const value = fromEnv(env, 'MAITRE_PORT')
  return value !== undefined && /^(tcp|udp|sctp):\/\//.test(value) ? undefined : value
}

class UsageError extends Error {}

/** What is wrong with a router address, if anything (never echoing it: it may hold a password). */
function routerUrlProblem(address: string): string | undefined {
  const url = URL.parse(address)
  if (url === null || (url.protocol !== 'http:' && url.protocol !== 'https:')) return 'must be an http:// or https:// URL, e.g. http://127.0.0.1:9091'
  if (url.search !== '' || url.hash !== '') return 'must hold no query or fragment'
  return undefined
}

/** The options each kind of command reads (help and version are everyone's). */
const SERVE_OPTIONS = new Set(['config', 'port', 'host', 'data-dir', 'log-level', 'etcd', 'check-config', 'help', 'version'])
const CLIENT_OPTIONS = new Set(['router', 'json', 'file', 'owner', 'hard', 'help', 'version'])

export async function runCli(argv: readonly string[], env: NodeJS.ProcessEnv, io: CliIo): Promise<number> {
  let config: Config
  let command: string
  let checkOnly: boolean
  try {
    const { values, positionals } = parseArgs({
      args: [...argv],
      allowPositionals: true,
      strict: true,
      options: {
        config: { type: 'string', short: 'c' },
        port: { type: 'string', short: 'p' },
        host: { type: 'string' },
        'data-dir': { type: 'string' },
        'log-level': { type: 'string' },
        etcd: { type: 'string', multiple: true },
        'check-config': { type: 'boolean' },
        router: { type: 'string' },
        json: { type: 'boolean' },
        file: { type: 'string', short: 'f' },
        owner: { type: 'string' },
        hard: { type: 'boolean' },
        version: { type: 'boolean', short: 'v' },
        help: { type: 'boolean', short: 'h' },
      },
    })
    if (values.help === true) {
      io.out(USAGE)
      return 0
    }
    if (values.version === true) {
      io.out(`${VERSION}\n`)
      return 0
    }
    command = positionals[0] ?? 'serve'
    // An option another command reads would be taken and ignored without a word (`serve -f
    // prod.yaml` served the defaults; `token list --port 9095` asked the default router).
    const own = CLIENT_COMMANDS.has(command) ? CLIENT_OPTIONS : SERVE_OPTIONS
    const foreign = Object.keys(values).find((name) => !own.has(name))
    if (foreign !== undefined) throw new UsageError(`--${foreign} is not an option of "${CLIENT_COMMANDS.has(command) ? command : 'serve'}"`)
    if (CLIENT_COMMANDS.has(command)) {
      const stop = new AbortController()
      const router = values.router ?? fromEnv(env, 'MAITRE_URL') ?? `http://127.0.0.1:${DEFAULTS.server.port}`
      // A mistyped address is the user's usage (64), not a router that is down (69).
      const problem = routerUrlProblem(router)
      if (problem !== undefined) throw new UsageError(`${values.router !== undefined ? '--router' : 'MAITRE_URL'} ${problem}`)
      const client = new RouterClient(router, fromEnv(env, 'MAITRE_AUTH_TOKEN'), stop.signal)
      try {
        const { etcd: _serveOnly, ...options } = values
        // Ctrl-C (or SIGTERM) ends a client command at once, whatever it waits on (a router that
        // does not answer, a cold start): 130, as a shell reports a command it interrupted.
        // The calls under way are aborted, so nothing holds the process, and nothing the command
        // would still print comes after the word that it was interrupted.
        let interrupted = false
        const interruption = io.stopSignal().then(() => {
          interrupted = true
          stop.abort()
          return INTERRUPTED
        })
        const outcome = await Promise.race([runCommand(command, positionals.slice(1), { client, json: values.json === true, out: (text) => void (interrupted || io.out(text)), options }), interruption])
        if (typeof outcome === 'number') return outcome
        io.err('maitre: interrupted\n')
        return EX_INTERRUPTED
      } catch (err) {
        // An answer the CLI did not expect is its own failure, not the user's usage.
        io.err(`maitre: ${(err as Error).message}\n`)
        return err instanceof CliError ? err.exitCode : 1
      }
    }
    if (command !== 'serve' || positionals.length > 1) throw new UsageError(`unknown command: ${positionals.join(' ')}`)
    checkOnly = values['check-config'] === true
    const file = values.config ?? fromEnv(env, 'MAITRE_CONFIG')
    const base = file === undefined || file === '' ? DEFAULTS : loadConfigFile(file)
    config = withOverrides(base, {
      'server.port': values.port !== undefined ? intOption('--port', values.port) : intOption('MAITRE_PORT', portFromEnv(env)),
      'server.host': values.host,
      dataDir: values['data-dir'] ?? fromEnv(env, 'MAITRE_DATA_DIR'),
      'log.level': values['log-level'] ?? fromEnv(env, 'MAITRE_LOG_LEVEL'),
      'etcd.endpoints': values.etcd ?? fromEnv(env, 'MAITRE_ETCD')?.split(',').map((endpoint) => endpoint.trim()),
    })
  } catch (err) {
    if (isMaitreError(err)) {
      io.err(`maitre: ${err.message}\n`)
      return EX_CONFIG
    }
    io.err(`maitre: ${(err as Error).message}\n\n${USAGE}`)
    return EX_USAGE
  }

  if (checkOnly) {
    // As /settings shows it: a CI step that validates the config must not print its secrets.
    io.out(`${JSON.stringify(configWithoutCredentials(config), null, 2)}\n`)
    return 0
  }

  let app
  try {
    app = await createApp(config)
    await app.start()
  } catch (err) {
    io.err(`maitre: cannot start: ${(err as Error).message}\n`)
    await app?.stop()
    return isMaitreError(err) ? EX_CONFIG : 1
  }
  await io.stopSignal()
  await app.stop()
  return 0
}
