// Configuration the way deployments hand it over: secrets from files, several keys for rotation
// (LIVEKIT_KEYS, as LiveKit's own server reads them), LOG_LEVEL, and a warning for weak secrets.
import { afterAll, describe, expect, setDefaultTimeout, test } from 'bun:test'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { denoCommandWith, httpClient, runtimeNames, runUntilExit, startServer, testCredentials, waitForLog, type Runtime, type StartOptions } from './server'
import { signWebhook, verifyAccessToken, webhookEvent, type Credentials } from './livekit'

// Real servers, browsers and Redis start here: 30 s a test (bunfig's [test] timeout is not read by Bun 1.4).
setDefaultTimeout(30_000)

const secretsDir = mkdtempSync(join(tmpdir(), 'livekit-secrets-'))
afterAll(() => rmSync(secretsDir, { recursive: true, force: true }))

/** Writes a secret file the way Docker and Kubernetes mount them: the value and a trailing newline. */
function secretFile(name: string, content: string): string {
  const path = join(secretsDir, name)
  writeFileSync(path, content)
  return path
}

/** Deno reads files only with --allow-read; the README's default command goes without it. */
const readingFiles = (runtime: Runtime): StartOptions =>
  runtime === 'deno' ? { command: denoCommandWith(`--allow-read=${secretsDir}`) } : {}

/** Posts a webhook signed with the given key and secret; resolves to the status. */
async function webhookStatus(url: string, signer: Credentials): Promise<number> {
  const body = JSON.stringify(webhookEvent('room_started'))
  const answer = await httpClient(url).request('/livekit/webhook', { method: 'POST', headers: { authorization: signWebhook(body, signer) }, body })
  return answer.status
}

async function tokenClaims(url: string, credentials: Credentials) {
  const answer = await httpClient(url).postJson('/token', { roomName: 'room1', participantName: 'alice' })
  expect(answer.status).toBe(200)
  return verifyAccessToken(answer.json().token, credentials)
}

for (const runtime of runtimeNames) {
  describe(`${runtime}: secrets from files`, () => {
    test('reads LIVEKIT_API_KEY_FILE and LIVEKIT_API_SECRET_FILE, trimming the trailing newline', async () => {
      const credentials = testCredentials()
      const env = {
        LIVEKIT_API_KEY_FILE: secretFile(`${runtime}-key`, `${credentials.apiKey}\n`),
        LIVEKIT_API_SECRET_FILE: secretFile(`${runtime}-secret`, `${credentials.apiSecret}\n`),
      }
      const server = await startServer(runtime, env, readingFiles(runtime))
      try {
        expect((await tokenClaims(server.url, credentials)).iss).toBe(credentials.apiKey)
        expect(await webhookStatus(server.url, credentials)).toBe(200)
      } finally {
        await server.stop()
      }
    })

    const credentials = testCredentials()
    const failures: [string, () => Record<string, string>, RegExp][] = [
      ['the variable and its _FILE both set', () => ({ LIVEKIT_API_KEY: 'k', LIVEKIT_API_SECRET: credentials.apiSecret, LIVEKIT_API_SECRET_FILE: secretFile('both', credentials.apiSecret) }), /LIVEKIT_API_SECRET and LIVEKIT_API_SECRET_FILE/],
      ['a secret file that is missing', () => ({ LIVEKIT_API_KEY: 'k', LIVEKIT_API_SECRET_FILE: join(secretsDir, 'missing') }), /LIVEKIT_API_SECRET_FILE: cannot read .*(ENOENT|NotFound)/],
      ['a secret file that is empty', () => ({ LIVEKIT_API_KEY: 'k', LIVEKIT_API_SECRET_FILE: secretFile('empty', '\n') }), /LIVEKIT_API_SECRET_FILE: .* is empty/],
      ['a secret "file" that is a directory', () => ({ LIVEKIT_API_KEY: 'k', LIVEKIT_API_SECRET_FILE: secretsDir }), /LIVEKIT_API_SECRET_FILE: cannot read/],
    ]
    for (const [what, env, message] of failures) {
      test(`stops with one line naming the variable, never the secret, on ${what}`, async () => {
        const { code, output } = await runUntilExit(runtime, env(), readingFiles(runtime))
        expect(code).toBe(1)
        expect(output.trim().split('\n')).toEqual([expect.stringMatching(message)])
        expect(output).not.toContain(credentials.apiSecret)
      })
    }

    if (runtime === 'deno') {
      test('says which permission Deno needs when run without --allow-read', async () => {
        const path = secretFile('deno-no-permission', `${credentials.apiSecret}\n`)
        const { code, output } = await runUntilExit('deno', { LIVEKIT_API_KEY: 'k', LIVEKIT_API_SECRET_FILE: path })
        expect(code).toBe(1)
        expect(output.trim().split('\n')).toEqual([`Configuration error: LIVEKIT_API_SECRET_FILE: cannot read "${path}" (NotCapable) (Deno needs --allow-read=${path})`])
      })
    }
  })

  describe(`${runtime}: several keys (LIVEKIT_KEYS), for rotation`, () => {
    const previous = { ...testCredentials(), apiKey: 'previous-key' }
    const current = { ...testCredentials(), apiKey: 'current-key' }
    const keys = `${previous.apiKey}: ${previous.apiSecret}\n${current.apiKey}: ${current.apiSecret}\n`

    test('verifies webhooks signed with any listed key, and signs tokens with LIVEKIT_API_KEY', async () => {
      const server = await startServer(runtime, { LIVEKIT_KEYS: keys, LIVEKIT_API_KEY: current.apiKey })
      try {
        expect((await tokenClaims(server.url, current)).iss).toBe(current.apiKey)
        expect(await webhookStatus(server.url, previous)).toBe(200)
        expect(await webhookStatus(server.url, current)).toBe(200)
        // A listed key's name with another key's secret, and an unlisted key, are refused.
        expect(await webhookStatus(server.url, { apiKey: previous.apiKey, apiSecret: current.apiSecret })).toBe(401)
        expect(await webhookStatus(server.url, { ...testCredentials(), apiKey: 'unknown-key' })).toBe(401)
      } finally {
        await server.stop()
      }
    })

    test('reads the keys from LIVEKIT_KEYS_FILE too, and signs with the only one listed', async () => {
      const path = secretFile(`${runtime}-keys`, `# the current key\n${current.apiKey}: ${current.apiSecret}\n`)
      const server = await startServer(runtime, { LIVEKIT_KEYS_FILE: path }, readingFiles(runtime))
      try {
        expect((await tokenClaims(server.url, current)).iss).toBe(current.apiKey)
        expect(await webhookStatus(server.url, current)).toBe(200)
      } finally {
        await server.stop()
      }
    })

    const failures: [string, Record<string, string>, RegExp][] = [
      ['LIVEKIT_KEYS beside LIVEKIT_API_SECRET', { LIVEKIT_KEYS: keys, LIVEKIT_API_KEY: current.apiKey, LIVEKIT_API_SECRET: current.apiSecret }, /LIVEKIT_KEYS and LIVEKIT_API_SECRET/],
      ['several keys and no LIVEKIT_API_KEY to sign with', { LIVEKIT_KEYS: keys }, /LIVEKIT_API_KEY must name the key/],
      ['a LIVEKIT_API_KEY that is not listed', { LIVEKIT_KEYS: keys, LIVEKIT_API_KEY: 'other-key' }, /"other-key" is not one of the keys/],
      ['a line that is not "key: secret"', { LIVEKIT_KEYS: `${current.apiKey}: ${current.apiSecret}\n${previous.apiSecret}\n`, LIVEKIT_API_KEY: current.apiKey }, /LIVEKIT_KEYS line 2 is not "key: secret"/],
    ]
    for (const [what, env, message] of failures) {
      test(`stops with one line, never a secret, on ${what}`, async () => {
        const { code, output } = await runUntilExit(runtime, env)
        expect(code).toBe(1)
        expect(output.trim().split('\n')).toEqual([expect.stringMatching(message)])
        expect(output).not.toContain(previous.apiSecret)
        expect(output).not.toContain(current.apiSecret)
      })
    }
  })

  describe(`${runtime}: weak secrets and LOG_LEVEL`, () => {
    test('warns once at start about a secret shorter than 32 characters, naming the key only', async () => {
      const weakSecret = 'short-secret-0123456789' // 23 characters
      const server = await startServer(runtime, { LIVEKIT_API_KEY: 'weak-key', LIVEKIT_API_SECRET: weakSecret })
      try {
        const warnings = server.logs().filter((entry) => entry.level === 'warn')
        expect(warnings).toEqual([expect.objectContaining({ msg: expect.stringMatching(/"weak-key".*shorter than 32 characters/) })])
        expect(server.lines.join('\n')).not.toContain(weakSecret)
      } finally {
        await server.stop()
      }
    })

    test('LOG_LEVEL=warn quiets the per-request and per-event info lines, and keeps warnings', async () => {
      const credentials = testCredentials()
      const server = await startServer(runtime, { LIVEKIT_API_KEY: credentials.apiKey, LIVEKIT_API_SECRET: credentials.apiSecret, LOG_LEVEL: 'warn' })
      try {
        await tokenClaims(server.url, credentials)
        expect(await webhookStatus(server.url, credentials)).toBe(200)
        expect(await webhookStatus(server.url, { ...credentials, apiSecret: 'not-the-secret' })).toBe(401)
        await waitForLog(server, (entry) => entry.msg === 'webhook refused')
        await server.stop()
        const lines = server.logs()
        expect(lines.filter((entry) => entry.level === 'info').map((entry) => entry.msg)).toEqual([
          expect.stringMatching(/^listening on/),
          'SIGTERM received, finishing requests in flight',
          'stopped',
        ])
      } finally {
        server.child.kill()
      }
    })

    test('LOG_LEVEL=error quiets warnings too', async () => {
      const credentials = testCredentials()
      const server = await startServer(runtime, { LIVEKIT_API_KEY: credentials.apiKey, LIVEKIT_API_SECRET: credentials.apiSecret, LOG_LEVEL: 'error' })
      try {
        expect(await webhookStatus(server.url, { ...credentials, apiSecret: 'not-the-secret' })).toBe(401)
        // Stopped, the server has written every line it ever would.
        await server.stop()
        expect(server.logs().filter((entry) => entry.level === 'warn')).toEqual([])
      } finally {
        server.child.kill()
      }
    })

    test('refuses a LOG_LEVEL it does not know', async () => {
      const { code, output } = await runUntilExit(runtime, { LOG_LEVEL: 'verbose' })
      expect(code).toBe(1)
      expect(output.trim().split('\n')).toEqual(['Configuration error: LOG_LEVEL must be one of info, warn, error, got "verbose"'])
    })
  })

  describe(`${runtime}: variables that need another`, () => {
    // Each variable alone (beside the API key), and the one line that names it and the variable it needs.
    const rules: [Record<string, string>, string][] = [
      [{ AUTH_ISSUER: 'https://id.example.test/' }, 'AUTH_ISSUER has no effect without AUTH_JWKS_URL'],
      [{ AUTH_AUDIENCE: 'livekit-app' }, 'AUTH_AUDIENCE has no effect without AUTH_JWKS_URL'],
      [{ AUTH_IDENTITY_CLAIM: 'email' }, 'AUTH_IDENTITY_CLAIM has no effect without AUTH_JWKS_URL'],
      [{ EVENTS_STREAM_MAXLEN: '1000' }, 'EVENTS_STREAM_MAXLEN has no effect without EVENTS_STREAM'],
      [{ EVENTS_OUTBOX: '100' }, 'EVENTS_OUTBOX has no effect without EVENTS_STREAM'],
      [{ EVENTS_STREAM: 'livekit:events' }, 'EVENTS_STREAM needs REDIS_URL: the stream is kept in Redis'],
      [
        { WORKERS: '2', SERVER_PORT: '6080' },
        'WORKERS above 1 needs REDIS_URL: without it the workers would not share handled webhook ids and rate limits',
      ],
    ]
    const credentials = testCredentials()
    const livekitEnv = { LIVEKIT_API_KEY: credentials.apiKey, LIVEKIT_API_SECRET: credentials.apiSecret }
    for (const [env, message] of rules) {
      const variable = message.replace(/ (has|needs) .*/, '')
      test(`${variable} without what it needs stops the server: exit code 1, one line naming both`, async () => {
        const { code, output } = await runUntilExit(runtime, { ...livekitEnv, ...env })
        const lines = output.trim().split('\n')
        expect({ code, lines }).toEqual({ code: 1, lines: [`Configuration error: ${message}`] })
      })
    }
  })
}

describe('docs/configuration.md', () => {
  /** The variables loadConfig reads from the environment it is given, each of these configurations in turn. */
  async function variablesRead(configurations: Record<string, string>[]): Promise<Set<string>> {
    const { loadConfig } = await import('../index.ts')
    const read = new Set<string>()
    for (const configuration of configurations) {
      const env = new Proxy(configuration, { get: (target, name) => (typeof name === 'string' && read.add(name), target[name as string]) })
      loadConfig(env)
    }
    return read
  }

  /** The first variable named in each row of the page's first table, and any `_FILE` form beside it. */
  async function variablesDocumented(): Promise<Set<string>> {
    const page = await Bun.file(new URL('../docs/configuration.md', import.meta.url)).text()
    const table = page.slice(page.indexOf('\n|'), page.indexOf('\n\n', page.indexOf('\n|')))
    const rows = table.split('\n').filter((line) => line.startsWith('| `'))
    return new Set(rows.flatMap((row) => [...row.split(' | ')[0]!.matchAll(/`([A-Z_]+)`/g)].map((match) => match[1]!)))
  }

  test('lists every variable the server reads, with its _FILE form where it has one, and none it does not read', async () => {
    const read = await variablesRead([
      {},
      // The variables read only once another is set.
      { AUTH_JWKS_URL: 'https://id.example.test/jwks', AUTH_ISSUER: 'https://id.example.test/', AUTH_AUDIENCE: 'app', REDIS_URL: 'redis://localhost:6379', EVENTS_STREAM: 'events', TOKEN_RATE_LIMIT: '5', PROMETHEUS_PORT: '9100' },
      { LIVEKIT_KEYS: 'key-one: secret-one-of-at-least-32-characters…', LIVEKIT_API_KEY: 'key-one' },
    ])
    expect([...(await variablesDocumented())].sort()).toEqual([...read].sort())
  })

  test("gives each variable of the settings table the default the server uses", async () => {
    const { settings } = await import('../index.ts')
    const page = await Bun.file(new URL('../docs/configuration.md', import.meta.url)).text()
    const defaults = new Map(page.split('\n').flatMap((row) => {
      const [, name, fallback] = /^\| `([A-Z_]+)`[^|]* \| (`[^`]*`|—) \|/.exec(row) ?? []
      return name ? [[name, fallback!] as const] : []
    }))
    const checked = Object.entries(settings).filter(([name]) => !defaults.get(name)?.includes('<'))
    // The documented default, read as the server reads the variable, is what it uses when it is unset.
    const read = (name: string, text: string | undefined) => (settings as Record<string, { read(text: string | undefined, name: string): unknown }>)[name]!.read(text, name)
    for (const [name] of checked) {
      const documented = defaults.get(name)
      expect({ name, documented: documented === '—' ? undefined : read(name, documented!.slice(1, -1)) }).toEqual({ name, documented: read(name, undefined) })
    }
    expect(checked.length).toBe(Object.keys(settings).length - 1)
  })
})
