// The dependency rules of DESIGN.md §2, held by a test.
//
// Every .ts file under src/ is read with the TypeScript compiler's own import scanner,
// ts.preProcessFile: it sees static `import … from`, side-effect `import '…'`, `export … from`,
// dynamic `import('…')` and `typeof import('…')` with a string literal, over any number of lines,
// and it skips comments and ordinary strings. Type-only imports are listed like any other: a type
// import is still a dependency. Relative specifiers are resolved against the importing file;
// bare package specifiers (undici, prom-client, …) are kept only so that the pure-module rule
// can see node: built-ins.
//
// The checker is a plain function over (from, to) edges, so the same code is first run over a
// synthetic graph with one violation per rule: a checker that reports nothing fails this test.

import t from 'tap'
import ts from 'typescript'
import { readFileSync, readdirSync, existsSync } from 'node:fs'
import { join, posix, resolve, sep } from 'node:path'
import { isBuiltin } from 'node:module'

const ROOT = resolve(import.meta.dirname, '..')

/** One import: `from` is a repo-relative path (`src/x/y.ts`); `to` is either such a path or a bare specifier. */
interface Edge {
  from: string
  to: string
  /** 1-based line of the specifier in `from`, when read from a file. */
  line?: number
  /** The specifier as written, when read from a file. */
  specifier?: string
}

// ---------------------------------------------------------------------------------------------
// Reading imports

/** The imports of one source text, `file` being its repo-relative path (`src/…/x.ts`). */
function importsOf(file: string, text: string): Edge[] {
  const info = ts.preProcessFile(text, /* readImportFiles */ true, /* detectJavaScriptImports */ true)
  return info.importedFiles.map(({ fileName, pos }) => {
    const to = fileName.startsWith('./') || fileName.startsWith('../')
      ? posix.normalize(posix.join(posix.dirname(file), fileName))
      : fileName
    return { from: file, to, line: lineAt(text, pos), specifier: fileName }
  })
}

function lineAt(text: string, pos: number): number {
  let line = 1
  for (let i = 0; i < pos && i < text.length; i++) if (text.charCodeAt(i) === 10) line++
  return line
}

/** Every .ts file under src/, as repo-relative posix paths. */
function sourceFiles(): string[] {
  return readdirSync(join(ROOT, 'src'), { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts'))
    .map((f) => posix.join('src', f.split(sep).join('/')))
    .sort()
}

function readGraph(): { files: string[]; edges: Edge[] } {
  const files = sourceFiles()
  const edges = files.flatMap((f) => importsOf(f, readFileSync(join(ROOT, f), 'utf8')))
  return { files, edges }
}

// ---------------------------------------------------------------------------------------------
// Places

const DOMAIN = ['proxy', 'scaler', 'versions', 'backends', 'admin', 'cluster', 'cli'] as const
const GROUND_FILES = [
  'src/config.ts',
  'src/errors.ts',
  'src/metrics.ts', 'src/version-series.ts',
  'src/log.ts',
  'src/clock.ts',
  'src/launch-spec.ts',
  'src/dns-label.ts', 'src/limits.ts',
  'src/version.ts',
]
const GROUND_FOLDERS = ['auth', 'storage', 'http', 'memory']
const APP = 'src/app.ts'
const ENTRY_POINTS = ['src/cli.ts', 'src/main.ts']
const PURE = [
  'src/scaler/decide.ts',
  'src/scaler/gc.ts',
  'src/scaler/kill-choice.ts',
  'src/backends/instance-choice.ts',
  'src/backends/mesos/placement.ts',
  'src/versions/service-id.ts',
  'src/memory/release-decision.ts',
]
/** The one node: built-in a pure module may use (service-id hashes). */
const PURE_BUILTINS = ['node:crypto', 'crypto']

/** `src/<dir>/…`; `dir` may be nested (`backends/local`), in which case `src/<dir>.ts` counts too. */
function under(path: string, dir: string): boolean {
  return path.startsWith(`src/${dir}/`) || (dir.includes('/') && path === `src/${dir}.ts`)
}
const isGround = (p: string) => GROUND_FILES.includes(p) || GROUND_FOLDERS.some((d) => under(p, d))
const isDomain = (p: string) => DOMAIN.some((d) => under(p, d)) || p === APP
/** A node: built-in other than node:crypto, any package (undici, pino…), or a module that does I/O for a living. */
function isIo(to: string): boolean {
  if (isBuiltin(to)) return !PURE_BUILTINS.includes(to)
  if (!to.startsWith('src/')) return true
  // The Mesos wire format's types (no code) and the pure placement that reads them.
  if (to === 'src/backends/mesos/protocol.ts' || to === 'src/backends/mesos/placement.ts') return false
  return ['backends/local', 'backends/kubernetes', 'backends/mesos', 'storage', 'proxy', 'admin'].some((d) => under(to, d))
}

// ---------------------------------------------------------------------------------------------
// Rules

interface Rule {
  id: string
  never: string
  why: string
  /** True when the single import from → to breaks the rule (the pure rule also walks the graph). */
  breaks: (from: string, to: string) => boolean
  /** Follow imports from these files and apply `breaks` to every edge reached (not only their own). */
  transitiveFrom?: readonly string[]
}

const RULES: readonly Rule[] = [
  {
    id: 'backends-versions',
    never: 'backends/ → versions/',
    why: 'a backend runs LaunchSpecs; it knows no descriptor, token or their errors',
    breaks: (from, to) => under(from, 'backends') && under(to, 'versions'),
  },
  {
    id: 'versions-backends',
    never: 'versions/ → backends/',
    why: 'what to run never asks where',
    breaks: (from, to) => under(from, 'versions') && under(to, 'backends'),
  },
  {
    id: 'admin-proxy',
    never: 'admin/ → proxy/',
    why: 'HTTP helpers both use (cid, error rendering, server header) live below both, in src/http/',
    breaks: (from, to) => under(from, 'admin') && under(to, 'proxy'),
  },
  {
    id: 'proxy-admin',
    never: 'proxy/ → admin/',
    why: 'HTTP helpers both use (cid, error rendering, server header) live below both, in src/http/',
    breaks: (from, to) => under(from, 'proxy') && under(to, 'admin'),
  },
  {
    id: 'ground-floor',
    never: `ground floor (${[...GROUND_FILES.map((f) => f.slice(4)), ...GROUND_FOLDERS.map((d) => `${d}/`)].join(', ')}) → ${DOMAIN.map((d) => `${d}/`).join(', ')}, app.ts`,
    why: 'the ground floor imports nothing above it',
    breaks: (from, to) => isGround(from) && isDomain(to),
  },
  {
    id: 'backends-scaler',
    never: 'backends/ → scaler/',
    why: 'backends do not decide',
    breaks: (from, to) => under(from, 'backends') && under(to, 'scaler'),
  },
  {
    id: 'backends-proxy',
    never: 'backends/ → proxy/',
    why: 'acting code knows no request',
    breaks: (from, to) => under(from, 'backends') && under(to, 'proxy'),
  },
  {
    id: 'scaler-proxy',
    never: 'scaler/ → proxy/',
    why: 'acting code knows no request',
    breaks: (from, to) => under(from, 'scaler') && under(to, 'proxy'),
  },
  {
    id: 'app',
    never: `anything but ${ENTRY_POINTS.join(', ')} → app.ts`,
    why: 'app.ts wires and decides nothing; domain logic in it moves to its owner',
    breaks: (from, to) => to === APP && !ENTRY_POINTS.includes(from),
  },
  {
    id: 'pure-io',
    never: `pure decision modules (${PURE.map((f) => f.slice(4)).join(', ')}) → node: built-ins other than node:crypto, backends/local, backends/kubernetes, backends/mesos (its protocol types aside), storage/, proxy/, admin/ — directly or through any module they import`,
    why: 'pure decisions import no I/O',
    breaks: (_from, to) => isIo(to),
    transitiveFrom: PURE,
  },
]

interface Violation {
  rule: Rule
  edge: Edge
  /** For a transitive rule: the import chain from the pure module down to `edge.from`. */
  via?: string[]
}

/** Every rule broken by the graph `edges`, each (rule, importer, imported) once. */
function check(edges: readonly Edge[], rules: readonly Rule[] = RULES): Violation[] {
  const out: Violation[] = []
  const seen = new Set<string>()
  const add = (v: Violation) => {
    const key = `${v.rule.id}\0${v.via?.[0] ?? ''}\0${v.edge.from}\0${v.edge.to}`
    if (!seen.has(key)) {
      seen.add(key)
      out.push(v)
    }
  }
  const byFrom = new Map<string, Edge[]>()
  for (const e of edges) byFrom.set(e.from, [...(byFrom.get(e.from) ?? []), e])

  for (const rule of rules) {
    if (!rule.transitiveFrom) {
      for (const edge of edges) if (rule.breaks(edge.from, edge.to)) add({ rule, edge })
      continue
    }
    for (const start of rule.transitiveFrom) {
      // Breadth first, so the chain reported is a shortest one.
      const path = new Map<string, string[]>([[start, [start]]])
      const queue = [start]
      for (let file = queue.shift(); file !== undefined; file = queue.shift()) {
        const chain = path.get(file) ?? [file]
        for (const edge of byFrom.get(file) ?? []) {
          if (rule.breaks(edge.from, edge.to)) {
            add(chain.length > 1 ? { rule, edge, via: chain } : { rule, edge })
          } else if (edge.to.startsWith('src/') && !path.has(edge.to)) {
            path.set(edge.to, [...chain, edge.to])
            queue.push(edge.to)
          }
        }
      }
    }
  }
  return out
}

function describe({ rule, edge, via }: Violation): string {
  const where = edge.line === undefined ? edge.from : `${edge.from}:${edge.line}`
  const what = edge.specifier === undefined || edge.specifier === edge.to ? edge.to : `${edge.to} ('${edge.specifier}')`
  const reach = via ? `, reached from ${via[0]} through ${via.join(' → ')}` : ''
  return `${where} imports ${what}${reach} — breaks rule ${rule.id} [never ${rule.never}]: ${rule.why}`
}

// ---------------------------------------------------------------------------------------------
// The checker can fail

t.test('the import reader sees every form of import, type-only ones included', async (t) => {
  const text = [
    "// import { no } from '../proxy/commented.ts'",
    'import {',
    '  a,',
    '  type B,',
    "} from '../versions/multi-line.ts'",
    "import type { T } from '../versions/type-only.ts'",
    "import * as ns from './sibling.ts'",
    "import './side-effect.ts'",
    "export type { U } from '../../http/re-export.ts'",
    "export * from '../scaler/star.ts'",
    "const lazy = await import('../admin/dynamic.ts')",
    "type Q = typeof import('../proxy/type-query.ts')",
    "const s = \"import x from '../proxy/in-a-string.ts'\"",
    "import { fetch } from 'undici'",
    "import { readFile } from 'node:fs/promises'",
  ].join('\n')
  const edges = importsOf('src/backends/local/x.ts', text)
  t.strictSame(edges.map((e) => e.to), [
    'src/backends/versions/multi-line.ts',
    'src/backends/versions/type-only.ts',
    'src/backends/local/sibling.ts',
    'src/backends/local/side-effect.ts',
    'src/http/re-export.ts',
    'src/backends/scaler/star.ts',
    'src/backends/admin/dynamic.ts',
    'src/backends/proxy/type-query.ts',
    'undici',
    'node:fs/promises',
  ])
  t.equal(edges[0]?.line, 5, 'the line is the one holding the specifier')
  t.equal(edges[1]?.specifier, '../versions/type-only.ts')
})

t.test('the checker reports one violation for each rule on a synthetic graph', async (t) => {
  const bad: Record<string, Edge[]> = {
    'backends-versions': [{ from: 'src/backends/local/local-backend.ts', to: 'src/versions/descriptor.ts' }],
    'versions-backends': [{ from: 'src/versions/resolve.ts', to: 'src/backends/backend.ts' }],
    'admin-proxy': [{ from: 'src/admin/router.ts', to: 'src/proxy/headers.ts' }],
    'proxy-admin': [{ from: 'src/proxy/handle.ts', to: 'src/admin/http.ts' }],
    'ground-floor': [{ from: 'src/http/cid.ts', to: 'src/proxy/headers.ts' }],
    'backends-scaler': [{ from: 'src/backends/tracker.ts', to: 'src/scaler/decide.ts' }],
    'backends-proxy': [{ from: 'src/backends/kubernetes/api.ts', to: 'src/proxy/forward.ts' }],
    'scaler-proxy': [{ from: 'src/scaler/autoscaler.ts', to: 'src/proxy/handle.ts' }],
    'app': [{ from: 'src/admin/ping.ts', to: 'src/app.ts' }],
    'pure-io': [{ from: 'src/scaler/kill-choice.ts', to: 'node:fs' }, { from: 'src/scaler/decide.ts', to: 'undici' }],
  }
  t.strictSame(Object.keys(bad).sort(), RULES.map((r) => r.id).sort(), 'the synthetic graph covers every rule')

  const fine: Edge[] = [
    { from: 'src/proxy/handle.ts', to: 'src/http/error-response.ts' },
    { from: 'src/admin/http.ts', to: 'src/http/error-response.ts' },
    { from: 'src/backends/backend.ts', to: 'src/launch-spec.ts' },
    { from: 'src/versions/launch.ts', to: 'src/launch-spec.ts' },
    { from: 'src/scaler/autoscaler.ts', to: 'src/backends/tracker.ts' },
    { from: 'src/config.ts', to: 'src/errors.ts' },
    { from: 'src/auth/router-secret.ts', to: 'src/storage/json-dir.ts' },
    { from: 'src/cli.ts', to: 'src/app.ts' },
    { from: 'src/main.ts', to: 'src/app.ts' },
    { from: 'src/versions/service-id.ts', to: 'node:crypto' },
    { from: 'src/versions/service-id.ts', to: 'src/versions/descriptor.ts' },
    { from: 'src/versions/descriptor.ts', to: 'src/errors.ts' },
    { from: 'src/backends/local/ports.ts', to: 'node:net' },
    { from: 'src/backends/local/ports.ts', to: 'undici' },
  ]
  t.strictSame(check(fine).map(describe), [], 'allowed imports report nothing')

  const found = check([...fine, ...Object.values(bad).flat()])
  for (const [id, edges] of Object.entries(bad)) {
    const mine = found.filter((v) => v.rule.id === id)
    const pairs = (list: { from: string; to: string }[]): string[] => list.map((e) => `${e.from} → ${e.to}`).sort()
    t.strictSame(pairs(mine.map((v) => v.edge)), pairs(edges), `rule ${id} is reported`)
  }
  t.equal(found.length, Object.values(bad).flat().length, 'and nothing else')

  // The message names the importing file, the imported file and the rule.
  const [one] = check([{ from: 'src/versions/resolve.ts', to: 'src/backends/backend.ts', line: 7, specifier: '../backends/backend.ts' }])
  t.ok(one)
  if (one) {
    const text = describe(one)
    t.match(text, 'src/versions/resolve.ts:7 imports src/backends/backend.ts')
    t.match(text, 'versions-backends')
    t.match(text, 'what to run never asks where')
  }

  // The ground floor may not reach app.ts either (two rules break; both say so).
  t.strictSame(check([{ from: 'src/storage/json-dir.ts', to: 'src/app.ts' }]).map((v) => v.rule.id).sort(), ['app', 'ground-floor'])
})

t.test('a pure module may not reach I/O through another module either', async (t) => {
  const edges: Edge[] = [
    { from: 'src/scaler/decide.ts', to: 'src/scaler/policy-helper.ts' },
    { from: 'src/scaler/policy-helper.ts', to: 'src/config.ts' },
    { from: 'src/config.ts', to: 'node:fs' },
    { from: 'src/config.ts', to: 'src/errors.ts' },
    { from: 'src/versions/service-id.ts', to: 'src/storage/json-dir.ts' },
    { from: 'src/storage/json-dir.ts', to: 'node:fs' },
    { from: 'src/backends/instance-choice.ts', to: 'src/backends/local/ports.ts' },
  ]
  const found = check(edges).filter((v) => v.rule.id === 'pure-io')
  t.strictSame(found.map((v) => [v.via?.[0] ?? v.edge.from, v.edge.from, v.edge.to]), [
    ['src/scaler/decide.ts', 'src/config.ts', 'node:fs'],
    ['src/backends/instance-choice.ts', 'src/backends/instance-choice.ts', 'src/backends/local/ports.ts'],
    ['src/versions/service-id.ts', 'src/versions/service-id.ts', 'src/storage/json-dir.ts'],
  ])
  const decide = found[0]
  t.ok(decide && describe(decide).includes('reached from src/scaler/decide.ts through src/scaler/decide.ts → src/scaler/policy-helper.ts → src/config.ts'))
  t.notOk(check(edges).some((v) => v.edge.from === 'src/storage/json-dir.ts'), 'I/O outside a pure module\'s imports is no concern of the rule')
})

// ---------------------------------------------------------------------------------------------
// src/ keeps the rules

t.test('src/ keeps the dependency rules of DESIGN.md §2', async (t) => {
  const { files, edges } = readGraph()
  // The rules name files; a rename must move the rule with it rather than void it.
  for (const f of [...GROUND_FILES, ...PURE, APP, ...ENTRY_POINTS]) {
    t.ok(existsSync(join(ROOT, f)), `${f} exists (a rule names it; if it moved, move the rule)`)
  }
  t.ok(files.length > 40 && edges.length > 100, `the reader found ${files.length} files and ${edges.length} imports`)
  // Every file has a place the rules know: a new file outside them would escape every rule.
  const unplaced = files.filter((f) => !isGround(f) && !isDomain(f) && !ENTRY_POINTS.includes(f))
  t.same(unplaced, [], 'every src/ file is on the ground floor, in a domain folder, or an entry point')
  t.ok(edges.some((e) => e.from === 'src/main.ts' && e.to === 'src/cli.ts'), 'relative specifiers resolve to src/ paths')

  const violations = check(edges)
  for (const v of violations) t.fail(describe(v))
  if (violations.length === 0) t.pass(`no rule is broken (${RULES.length} rules)`)
})
