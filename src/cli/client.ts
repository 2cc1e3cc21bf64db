/** The CLI's view of a router: HTTP calls to the Waiter API, failures turned into CliErrors with exit codes. */
import { withoutUrlCredentials } from '../config.ts'
import { request } from 'undici'

export const EXIT = { ok: 0, apiError: 1, usage: 64, noInput: 66, unavailable: 69 } as const

export class CliError extends Error {
  readonly exitCode: number
  constructor(message: string, exitCode: number) {
    super(message)
    this.exitCode = exitCode
  }
}

export interface Reply {
  readonly status: number
  readonly headers: Record<string, string | string[] | undefined>
  readonly body: string
}

export class RouterClient {
  readonly #base: string
  readonly #credentials: Record<string, string>

  readonly #stop: AbortSignal | undefined

  /**
   * `bearer`: a JWT for a router with auth.kind jwt (taken from the environment, never argv, which `ps` shows).
   * `stop`: aborts every call under way and to come (the user pressed Ctrl-C).
   */
  constructor(base: string, bearer?: string, stop?: AbortSignal) {
    this.#base = base.replace(/\/+$/, '')
    this.#credentials = bearer === undefined || bearer === '' ? {} : { authorization: `Bearer ${bearer}` }
    this.#stop = stop
  }

  async call(method: string, path: string, options: { headers?: Record<string, string>; body?: unknown; okStatuses?: readonly number[] } = {}): Promise<Reply> {
    let res
    try {
      res = await request(`${this.#base}${path}`, {
        method: method as 'GET',
        headers: { accept: 'application/json', ...this.#credentials, ...(options.body === undefined ? {} : { 'content-type': 'application/json' }), ...options.headers },
        body: options.body === undefined ? null : JSON.stringify(options.body),
        signal: this.#stop === undefined ? AbortSignal.timeout(330_000) : AbortSignal.any([AbortSignal.timeout(330_000), this.#stop]),
      })
    } catch (err) {
      // (The router's address as given, less any user:password@ in it.)
      throw new CliError(`cannot reach the router at ${withoutUrlCredentials(this.#base)}: ${(err as Error).message}`, EXIT.unavailable)
    }
    const body = await res.body.text()
    const ok = options.okStatuses ?? [200]
    if (!ok.includes(res.statusCode)) throw new CliError(`${res.statusCode}: ${errorMessage(body)}`, EXIT.apiError)
    return { status: res.statusCode, headers: res.headers, body }
  }

  async json<T>(method: string, path: string, options: { headers?: Record<string, string>; body?: unknown } = {}): Promise<T> {
    return JSON.parse((await this.call(method, path, options)).body) as T
  }
}

/** Waiter's error message out of an error body, whatever its format. */
function errorMessage(body: string): string {
  try {
    const parsed = JSON.parse(body) as { 'waiter-error'?: { message?: string } }
    return parsed['waiter-error']?.message ?? body
  } catch {
    return body.trim()
  }
}
