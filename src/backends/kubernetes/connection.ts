/**
 * Where the Kubernetes API server is and how to authenticate to it: in-cluster (service-account
 * token and CA) or a kubeconfig file. Bearer tokens from files are re-read at most a minute after
 * the last read, because projected service-account tokens rotate (about hourly) under a live pod.
 */
import { readFileSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { homedir } from 'node:os'
import { dirname, isAbsolute, join, resolve } from 'node:path'
import { parse } from 'yaml'
import { MaitreError } from '../../errors.ts'
import type { KubernetesBackendConfig } from '../../config.ts'
import { authority } from '../../http/authority.ts'

export const SERVICE_ACCOUNT_DIR = '/var/run/secrets/kubernetes.io/serviceaccount'
const TOKEN_REREAD_MS = 60_000

export interface KubeConnection {
  /** Base URL without a trailing slash, e.g. https://10.0.0.1:443. */
  readonly server: string
  readonly namespace: string
  readonly tls: { readonly ca?: string; readonly cert?: string; readonly key?: string; readonly rejectUnauthorized: boolean }
  /** The Authorization header value for the next request, if any. */
  authorization(): Promise<string | undefined>
}

/** A bearer token read from a file, cached for a minute so a rotated token is picked up. */
export function fileToken(path: string, now: () => number = Date.now): () => Promise<string> {
  let cached: { token: string; readAt: number } | undefined
  return async () => {
    if (cached === undefined || now() - cached.readAt >= TOKEN_REREAD_MS) {
      cached = { token: (await readFile(path, 'utf8')).trim(), readAt: now() }
    }
    return cached.token
  }
}

function misconfigured(message: string): MaitreError {
  return new MaitreError('MAITRE_INVALID_CONFIG', `Kubernetes backend: ${message}`)
}

function readOptional(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim()
  } catch {
    return undefined
  }
}

function inCluster(config: KubernetesBackendConfig, env: NodeJS.ProcessEnv, saDir: string): KubeConnection {
  const host = env['KUBERNETES_SERVICE_HOST'] as string
  const port = env['KUBERNETES_SERVICE_PORT'] ?? '443'
  const server = config.apiServer ?? `https://${authority(host, port)}`
  const ca = readOptional(join(saDir, 'ca.crt'))
  const token = fileToken(config.tokenFile ?? join(saDir, 'token'))
  return {
    server: server.replace(/\/+$/, ''),
    namespace: config.namespace ?? readOptional(join(saDir, 'namespace')) ?? 'default',
    tls: { ...(ca === undefined ? {} : { ca }), rejectUnauthorized: true },
    authorization: async () => `Bearer ${await token()}`,
  }
}

interface KubeconfigFile {
  'current-context'?: string
  contexts?: { name: string; context: { cluster: string; user?: string; namespace?: string } }[]
  clusters?: { name: string; cluster: { server: string; 'certificate-authority'?: string; 'certificate-authority-data'?: string; 'insecure-skip-tls-verify'?: boolean } }[]
  users?: { name: string; user: Record<string, unknown> }[]
}

function fromKubeconfig(config: KubernetesBackendConfig, env: NodeJS.ProcessEnv): KubeConnection {
  const path = config.kubeconfig ?? env['KUBECONFIG']?.split(':')[0] ?? join(homedir(), '.kube', 'config')
  try {
    return readKubeconfig(config, path)
  } catch (err) {
    // A file of the wrong shape (a list where a map belongs, a server that is no string) or a
    // certificate file it names that cannot be read: a configuration error naming the file.
    if (err instanceof MaitreError) throw err
    throw misconfigured(`kubeconfig ${path} cannot be used: ${(err as Error).message}`)
  }
}

function readKubeconfig(config: KubernetesBackendConfig, path: string): KubeConnection {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (err) {
    throw misconfigured(`not in a cluster (KUBERNETES_SERVICE_HOST unset) and cannot read kubeconfig ${path}: ${(err as Error).message}`)
  }
  let file: KubeconfigFile
  try {
    file = (parse(text) ?? {}) as KubeconfigFile
  } catch (err) {
    throw misconfigured(`kubeconfig ${path} is not valid YAML: ${(err as Error).message}`)
  }
  const base = dirname(path)
  const resolvePath = (p: string): string => (isAbsolute(p) ? p : join(base, p))
  const contextName = config.context ?? file['current-context']
  const context = file.contexts?.find((c) => c.name === contextName)?.context
  if (context === undefined) throw misconfigured(`kubeconfig ${path} has no context ${JSON.stringify(contextName)}`)
  const cluster = file.clusters?.find((c) => c.name === context.cluster)?.cluster
  if (cluster === undefined) throw misconfigured(`kubeconfig ${path} has no cluster ${JSON.stringify(context.cluster)}`)
  const user = (file.users?.find((u) => u.name === context.user)?.user ?? {}) as Record<string, string | undefined>
  if (user['exec'] !== undefined || user['auth-provider'] !== undefined) {
    throw misconfigured(`kubeconfig user ${JSON.stringify(context.user)} uses an exec or auth-provider plugin; give maitre a token, tokenFile or client certificate instead`)
  }
  const pem = (data: string | undefined, file: string | undefined): string | undefined =>
    data !== undefined ? Buffer.from(data, 'base64').toString('utf8') : file !== undefined ? readFileSync(resolvePath(file), 'utf8') : undefined
  const ca = pem(cluster['certificate-authority-data'], cluster['certificate-authority'])
  const cert = pem(user['client-certificate-data'], user['client-certificate'])
  const key = pem(user['client-key-data'], user['client-key'])
  // maitre's own tokenFile is a path of its configuration (relative to where it runs); the
  // kubeconfig's, as kubectl reads it, relative to the kubeconfig.
  const tokenPath = config.tokenFile !== null && config.tokenFile !== undefined ? resolve(config.tokenFile) : user['tokenFile'] !== undefined ? resolvePath(user['tokenFile']) : undefined
  const fixedToken = user['token']
  const token = tokenPath !== undefined ? fileToken(tokenPath) : undefined
  const basic = user['username'] !== undefined ? `Basic ${Buffer.from(`${user['username']}:${user['password'] ?? ''}`).toString('base64')}` : undefined
  return {
    server: (config.apiServer ?? cluster.server).replace(/\/+$/, ''),
    namespace: config.namespace ?? context.namespace ?? 'default',
    tls: {
      ...(ca === undefined ? {} : { ca }),
      ...(cert === undefined ? {} : { cert }),
      ...(key === undefined ? {} : { key }),
      rejectUnauthorized: cluster['insecure-skip-tls-verify'] !== true,
    },
    authorization: async () => (token !== undefined ? `Bearer ${await token()}` : fixedToken !== undefined ? `Bearer ${fixedToken}` : basic),
  }
}

/** In-cluster when KUBERNETES_SERVICE_HOST is set (as kubelet sets it in every pod), else the kubeconfig. */
export function kubeConnection(config: KubernetesBackendConfig, env: NodeJS.ProcessEnv = process.env, saDir = SERVICE_ACCOUNT_DIR): KubeConnection {
  if (env['KUBERNETES_SERVICE_HOST'] !== undefined && config.kubeconfig === null) return inCluster(config, env, saDir)
  return fromKubeconfig(config, env)
}
