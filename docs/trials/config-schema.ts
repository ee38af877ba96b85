// Trial: the configuration declared once. A table in our own code (name, default, bound, meaning)
// driving TypeBox, and envalid's cleanEnv, against loadConfig's hand-written parsers, for six
// variables. Usage: bun run docs/trials/config-schema.ts
import { Type as t } from '@sinclair/typebox' // elysia's own t.Integer is a transform that also takes numeric strings
import { Value } from '@sinclair/typebox/value'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import { cleanEnv, makeValidator, num, port, str, EnvError } from 'envalid'
import { loadConfig } from '../../index.ts'

// --- The table: each variable once. The schema holds default, bound and meaning; the message comes from it.
type Setting = ReturnType<typeof integer> | ReturnType<typeof choice> | ReturnType<typeof duration>
function integer(fallback: number | undefined, minimum: number, maximum: number, description: string) {
  return t.Integer({ default: fallback, minimum, maximum, description, message: (name: string, got: string) => `${name} must be an integer from ${minimum} to ${maximum}, got "${got}"` })
}
function choice<T extends string>(choices: [T, ...T[]], description: string) {
  return t.Union(choices.map((c) => t.Literal(c)), { default: choices[0], description, message: (name: string, got: string) => `${name} must be one of ${choices.join(', ')}, got "${got}"` })
}
function duration(fallback: string, description: string) {
  return t.String({ default: fallback, pattern: '^\\d+[smhd]?$', description, message: (name: string, got: string) => `${name} must be a positive duration such as 600, 10m or 6h (at most 366d), got "${got}"` })
}
const settings = {
  SERVER_PORT: integer(6080, 0, 65535, 'The port to listen on (0: any free one).'),
  TOKEN_TTL: duration('6h', 'How long an access token is valid: seconds, or with s, m, h or d.'),
  MAX_BODY_BYTES: integer(1024 * 1024, 1, 64 * 1024 * 1024, 'The largest webhook body, in bytes.'),
  LOG_LEVEL: choice(['info', 'warn', 'error'], 'At warn, the per-request and per-event info lines go quiet.'),
  TOKEN_RATE_LIMIT: integer(undefined, 1, 1_000_000, 'Token requests each caller may make per minute; no limit when unset.'),
  OPENAPI: choice(['1', '0'], 'Whether GET /openapi.json and the docs page are served.'),
} satisfies Record<string, Setting>
const secondsPerUnit: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400 }
const compiled = Object.fromEntries(Object.entries(settings).map(([name, schema]) => [name, TypeCompiler.Compile(schema)]))

class ConfigError extends Error {}
function readTable(env: Record<string, string | undefined>) {
  const out: Record<string, unknown> = {}
  for (const [name, schema] of Object.entries(settings) as [string, Setting & { message: (n: string, g: string) => string }][]) {
    const text = env[name]?.trim() || undefined
    if (text === undefined) { out[name] = schema.default; continue }
    // Convert only what our syntax allows: digits for integers (Value.Convert would take "1e3", "0x10", " 7 ").
    const value = schema.type === 'integer' ? (/^\d+$/.test(text) ? Number(text) : text) : schema.anyOf ? text.toLowerCase() : text
    if (!compiled[name]!.Check(value)) throw new ConfigError(schema.message(name, text))
    if (name === 'TOKEN_TTL') {
      const [, n, unit] = /^(\d+)([smhd]?)$/.exec(text)!
      const seconds = Number(n) * secondsPerUnit[unit || 's']!
      if (!(seconds > 0 && seconds <= 366 * 86400)) throw new ConfigError(schema.message(name, text))
      out[name] = seconds
    } else out[name] = value
  }
  return out
}
/** The docs table, from the same declarations. */
const docsTable = ['| Variable | Default | Bound | Meaning |', '|---|---|---|---|', ...Object.entries(settings).map(([name, s]: [string, any]) =>
  `| \`${name}\` | ${s.default ?? '(unset)'} | ${s.type === 'integer' ? `${s.minimum}–${s.maximum}` : s.anyOf ? s.anyOf.map((l: any) => l.const).join(', ') : s.pattern} | ${s.description} |`)].join('\n')

// --- envalid: bounds need a validator of our own (num() has none); its reporter prints and exits unless replaced.
const boundedInt = (min: number, max: number) => makeValidator<number>((text) => {
  if (!/^\d+$/.test(text.trim()) || Number(text) < min || Number(text) > max) throw new EnvError(`must be an integer from ${min} to ${max}, got "${text}"`)
  return Number(text)
})
function readEnvalid(env: Record<string, string | undefined>) {
  return cleanEnv(env, {
    SERVER_PORT: boundedInt(0, 65535)({ default: 6080, desc: 'The port to listen on (0: any free one).' }),
    TOKEN_TTL: str({ default: '6h' }),
    MAX_BODY_BYTES: boundedInt(1, 64 * 1024 * 1024)({ default: 1024 * 1024 }),
    LOG_LEVEL: str({ choices: ['info', 'warn', 'error'], default: 'info' }),
    TOKEN_RATE_LIMIT: boundedInt(1, 1_000_000)({ default: undefined }),
    OPENAPI: str({ choices: ['1', '0'], default: '1' }),
  }, { reporter: ({ errors }) => { const [name, error] = Object.entries(errors)[0] ?? []; if (name) throw new ConfigError(`${name} ${(error as Error).message}`) } })
}
void num, void port

const message = (read: () => unknown) => { try { read(); return '(accepted)' } catch (e) { return (e as Error).message } }
const cases: Record<string, string>[] = [
  { SERVER_PORT: '70000' }, { SERVER_PORT: '1e3' }, { SERVER_PORT: ' 8080 ' }, { SERVER_PORT: '0x10' }, { SERVER_PORT: '-1' },
  { MAX_BODY_BYTES: '0' }, { LOG_LEVEL: 'verbose' }, { LOG_LEVEL: 'WARN' }, { TOKEN_TTL: '0' }, { TOKEN_TTL: '367d' }, { TOKEN_TTL: '1w' }, { TOKEN_RATE_LIMIT: '1.5' }, { OPENAPI: 'yes' },
]
for (const env of cases) {
  const today = message(() => loadConfig(env))
  console.log(`${JSON.stringify(env)}\n  today:   ${today}\n  table:   ${message(() => readTable(env))}${message(() => readTable(env)) === today ? ' (same)' : ''}\n  envalid: ${message(() => readEnvalid(env))}${message(() => readEnvalid(env)) === today ? ' (same)' : ''}`)
}
console.log('\n' + docsTable + '\n')
const time = (read: () => unknown) => { const n = 20_000; const s = performance.now(); for (let i = 0; i < n; i++) read(); return (((performance.now() - s) * 1e3) / n).toFixed(1) }
const env = { SERVER_PORT: '8080', TOKEN_TTL: '10m', LOG_LEVEL: 'warn', TOKEN_RATE_LIMIT: '60' }
for (let r = 0; r < 3; r++) console.log(`validate once: loadConfig (all variables) ${time(() => loadConfig(env))} µs, table+TypeBox (six) ${time(() => readTable(env))} µs, envalid (six) ${time(() => readEnvalid(env))} µs`)
