/**
 * The service-owner and SRE commands: token create|update|show|delete|list, ping, apps, kill,
 * logs. Each talks to a router over its Waiter API; human tables by default, JSON with --json.
 */
import { readFileSync } from 'node:fs'
import { parse as parseYaml } from 'yaml'
import { CliError, EXIT, RouterClient } from './client.ts'
import { table, visible } from './table.ts'

export interface CommandContext {
  readonly client: RouterClient
  readonly json: boolean
  readonly out: (text: string) => void
  readonly options: Readonly<Record<string, string | boolean | undefined>>
}

const q = encodeURIComponent

function readDescriptor(file: string | undefined): Record<string, unknown> {
  if (file === undefined) throw new CliError('a descriptor file is required: --file FILE (JSON or YAML)', EXIT.usage)
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (err) {
    throw new CliError(`cannot read ${file}: ${(err as Error).message}`, EXIT.noInput)
  }
  let parsed: unknown
  try {
    parsed = file.endsWith('.json') ? JSON.parse(text) : parseYaml(text)
  } catch (err) {
    throw new CliError(`${file} is not valid ${file.endsWith('.json') ? 'JSON' : 'YAML'}: ${(err as Error).message}`, EXIT.noInput)
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new CliError(`${file} must hold a map of descriptor parameters`, EXIT.noInput)
  return parsed as Record<string, unknown>
}

function print(ctx: CommandContext, data: unknown, human: () => string): void {
  ctx.out(ctx.json ? `${JSON.stringify(data, null, 2)}\n` : visible(human(), true))
}

function need(args: readonly string[], count: number, usage: string): string[] {
  if (args.length !== count) throw new CliError(`usage: maitre ${usage}`, EXIT.usage)
  return [...args]
}

async function tokenCommand(ctx: CommandContext, args: readonly string[]): Promise<void> {
  const [sub, ...rest] = args
  switch (sub) {
    case 'create':
    case 'update': {
      const [name] = need(rest, 1, `token ${sub} NAME --file FILE`) as [string]
      const descriptor = readDescriptor(ctx.options['file'] as string | undefined)
      const existing = await ctx.client.call('GET', `/token?token=${q(name)}`, { okStatuses: [200, 404] })
      if (sub === 'create' && existing.status === 200) throw new CliError(`token ${name} exists already; use "maitre token update"`, EXIT.apiError)
      if (sub === 'update' && existing.status === 404) throw new CliError(`token ${name} does not exist; use "maitre token create"`, EXIT.apiError)
      const headers: Record<string, string> = { 'if-match': existing.status === 200 ? String(existing.headers['etag']) : '' }
      const reply = await ctx.client.call('POST', '/token', { body: { ...descriptor, token: name }, headers })
      const result = JSON.parse(reply.body) as { message: string }
      return print(ctx, { ...result, etag: reply.headers['etag'], result: reply.headers['x-waiter-operation-result'] }, () => `${result.message} (etag ${String(reply.headers['etag'])})\n`)
    }
    case 'show': {
      const [name] = need(rest, 1, 'token show NAME') as [string]
      const data = await ctx.client.json<Record<string, unknown>>('GET', `/token?token=${q(name)}&include=metadata`)
      return print(ctx, data, () => table(['PARAMETER', 'VALUE'], Object.entries(data).filter(([k]) => k !== 'previous').map(([k, v]) => [k, typeof v === 'object' ? JSON.stringify(v) : v])))
    }
    case 'delete': {
      const [name] = need(rest, 1, 'token delete NAME [--hard]')
      const hard = ctx.options['hard'] === true
      const headers: Record<string, string> = {}
      if (hard) headers['if-match'] = String((await ctx.client.call('GET', `/token?token=${q(name as string)}&include=deleted`)).headers['etag'])
      const data = await ctx.client.json<Record<string, unknown>>('DELETE', `/token?token=${q(name as string)}${hard ? '&hard-delete=true' : ''}`, { headers })
      return print(ctx, data, () => `Deleted token ${String(name)}${hard ? ' for good' : ' (soft: --hard removes it)'}\n`)
    }
    case 'list': {
      need(rest, 0, 'token list [--owner USER]')
      const owner = ctx.options['owner']
      const data = await ctx.client.json<{ token: string; owner: string; maintenance?: boolean }[]>('GET', `/tokens${typeof owner === 'string' ? `?owner=${q(owner)}` : ''}`)
      return print(ctx, data, () => table(['TOKEN', 'OWNER', 'MAINTENANCE'], data.map((d) => [d.token, d.owner, d.maintenance === true ? 'yes' : ''])))
    }
    default:
      throw new CliError('usage: maitre token create|update|show|delete|list …', EXIT.usage)
  }
}

interface AppSummary {
  'service-id': string
  status: string
  'instance-counts': { 'healthy-instances': number; 'requested-instances': number }
  'request-metrics': { outstanding: number }
  'current-for-tokens': string[]
  'deployment-error-message'?: string
}

interface AppDetail extends AppSummary {
  /** Absent for a version its adaptive keep-alive let go (nothing runs). */
  instances?: {
    'active-instances': { id: string; host: string; port: number; healthy: boolean; 'started-at': string }[]
    'failed-instances': { id: string; 'exit-code': number | null; message: string; 'ended-at': string }[]
  }
}

async function appsCommand(ctx: CommandContext, args: readonly string[]): Promise<void> {
  if (args.length > 1) throw new CliError('usage: maitre apps [SERVICE-ID]', EXIT.usage)
  if (args.length === 0) {
    const apps = await ctx.client.json<AppSummary[]>('GET', '/apps')
    return print(ctx, apps, () =>
      table(
        ['SERVICE-ID', 'STATUS', 'HEALTHY', 'REQUESTED', 'OUTSTANDING', 'TOKENS'],
        apps.map((a) => [a['service-id'], a.status, a['instance-counts']['healthy-instances'], a['instance-counts']['requested-instances'], a['request-metrics'].outstanding, a['current-for-tokens'].join(',')]),
      ),
    )
  }
  const app = await ctx.client.json<AppDetail>('GET', `/apps/${q(args[0] as string)}`)
  return print(ctx, app, () => {
    const head = `${app['service-id']}  ${app.status}${app['deployment-error-message'] === undefined ? '' : `  (${app['deployment-error-message']})`}\n\n`
    const active = table(['INSTANCE', 'HOST', 'PORT', 'HEALTHY', 'STARTED'], (app.instances?.['active-instances'] ?? []).map((i) => [i.id, i.host, i.port, i.healthy ? 'yes' : 'no', i['started-at']]))
    const failed = app.instances?.['failed-instances'] ?? []
    return head + active + (failed.length === 0 ? '' : `\nFailed:\n${table(['INSTANCE', 'EXIT', 'MESSAGE', 'ENDED'], failed.map((i) => [i.id, i['exit-code'], i.message, i['ended-at']]))}`)
  })
}

async function pingCommand(ctx: CommandContext, args: readonly string[]): Promise<number> {
  const [token] = need(args, 1, 'ping TOKEN') as [string]
  const data = await ctx.client.json<{ 'ping-response': { result: string; status?: number; body?: string; instance?: { id: string } }; 'service-state': { status: string } }>('POST', '/waiter-ping', { headers: { 'x-waiter-token': token } })
  const ping = data['ping-response']
  print(ctx, data, () => `${token}: ${ping.result}, status ${String(ping.status ?? '-')}${ping.instance === undefined ? '' : ` from ${ping.instance.id}`}; service ${data['service-state'].status}\n${ping.status !== undefined && ping.status >= 300 && ping.body !== undefined ? `${ping.body.trim()}\n` : ''}`)
  return ping.status !== undefined && ping.status >= 200 && ping.status < 300 ? EXIT.ok : EXIT.apiError
}

async function killCommand(ctx: CommandContext, args: readonly string[]): Promise<void> {
  const [id, instance] = need(args, 2, 'kill SERVICE-ID INSTANCE-ID') as [string, string]
  const data = await ctx.client.json<{ 'signal-response': { message: string } }>('POST', `/apps/${q(id)}/instance/${q(instance)}/kill`)
  print(ctx, data, () => `${data['signal-response'].message}\n`)
}

async function logsCommand(ctx: CommandContext, args: readonly string[]): Promise<void> {
  const [id, instance] = need(args, 2, 'logs SERVICE-ID INSTANCE-ID [--file NAME]') as [string, string]
  const base = `/apps/${q(id)}/logs?instance-id=${q(instance)}`
  const file = ctx.options['file']
  if (typeof file === 'string') {
    ctx.out((await ctx.client.call('GET', `${base}&file=${q(file)}`)).body)
    return
  }
  const files = await ctx.client.json<{ name: string; size: number; type: string }[]>('GET', base)
  print(ctx, files, () => table(['NAME', 'SIZE', 'TYPE'], files.map((f) => [f.name, f.size, f.type])))
}

/** Runs one client command; returns its exit code. */
export async function runCommand(command: string, args: readonly string[], ctx: CommandContext): Promise<number> {
  switch (command) {
    case 'token':
      await tokenCommand(ctx, args)
      return EXIT.ok
    case 'apps':
      await appsCommand(ctx, args)
      return EXIT.ok
    case 'ping':
      return pingCommand(ctx, args)
    case 'kill':
      await killCommand(ctx, args)
      return EXIT.ok
    case 'logs':
      await logsCommand(ctx, args)
      return EXIT.ok
    default:
      throw new CliError(`unknown command: ${command}`, EXIT.usage)
  }
}

export const CLIENT_COMMANDS: ReadonlySet<string> = new Set(['token', 'apps', 'ping', 'kill', 'logs'])
