// loadConfig in this process: every variable's default, its bounds at their edges, and each mistake
// refused with a ConfigError naming the variable, never echoing a secret.
import { afterAll, describe, expect, test } from 'bun:test'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ConfigError, loadConfig } from '../../index'
import { testCredentials } from '../server'

const credentials = testCredentials()
const livekitEnv = { LIVEKIT_API_KEY: credentials.apiKey, LIVEKIT_API_SECRET: credentials.apiSecret }
const secretsDir = mkdtempSync(join(tmpdir(), 'livekit-fast-config-'))
afterAll(() => rmSync(secretsDir, { recursive: true, force: true }))

/** The ConfigError loadConfig throws for the environment, as its message. */
function refusal(env: Record<string, string>): string {
  try {
    loadConfig(env)
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error
    return error.message
  }
  throw new Error(`loadConfig accepted ${Object.keys(env).join(', ')}`)
}

describe('loadConfig, the defaults', () => {
  test('serves port 6080 with the development credentials and the documented defaults', () => {
    const config = loadConfig({})
    expect(config).toMatchObject({
      port: 6080,
      apiKey: 'devkey',
      apiSecret: 'secret',
      livekitUrl: 'ws://localhost:7880',
      tokenTtlSeconds: 6 * 3600,
      maxBodyBytes: 1024 * 1024,
      maxPendingBodyBytes: 16 * 1024 * 1024,
      usesDevCredentials: true,
      weakKeys: [],
      openapi: true,
      auth: undefined,
      tokenRateLimit: undefined,
      trustedProxies: 0,
      redisUrl: undefined,
      redisKeyPrefix: 'livekit-server:devkey:',
      workers: 1,
      eventStream: undefined,
      prometheusPort: undefined,
      tokenPolicy: undefined,
    })
    expect([...config.keys]).toEqual([['devkey', 'secret']])
  })

  test('takes blank and whitespace-only values for unset', () => {
    expect(loadConfig({ SERVER_PORT: '  ', TOKEN_TTL: '', LOG_LEVEL: ' ' })).toMatchObject({
      port: 6080,
      tokenTtlSeconds: 6 * 3600,
    })
  })
})

describe('loadConfig, values read', () => {
  const read: [Record<string, string>, Record<string, unknown>][] = [
    [{ SERVER_PORT: '0' }, { port: 0 }],
    [{ SERVER_PORT: '65535' }, { port: 65535 }],
    [{ SERVER_PORT: ' 8080 ' }, { port: 8080 }],
    [{ TOKEN_TTL: '600' }, { tokenTtlSeconds: 600 }],
    [{ TOKEN_TTL: '45s' }, { tokenTtlSeconds: 45 }],
    [{ TOKEN_TTL: '10m' }, { tokenTtlSeconds: 600 }],
    [{ TOKEN_TTL: '2h' }, { tokenTtlSeconds: 7200 }],
    [{ TOKEN_TTL: '366d' }, { tokenTtlSeconds: 366 * 86400 }],
    [{ TOKEN_TTL: '1' }, { tokenTtlSeconds: 1 }],
    // LOG_LEVEL is checked here and read once at load (the process's), so it is no field of the configuration.
    [{ LOG_LEVEL: 'WARN' }, { openapi: true }],
    [{ LOG_LEVEL: 'error' }, { openapi: true }],
    [{ OPENAPI: '0' }, { openapi: false }],
    [{ LIVEKIT_URL: 'wss://lk.example.test' }, { livekitUrl: 'wss://lk.example.test' }],
    [{ LIVEKIT_URL: 'https://lk.example.test:7880' }, { livekitUrl: 'https://lk.example.test:7880' }],
    [{ MAX_BODY_BYTES: '1' }, { maxBodyBytes: 1 }],
    [{ MAX_BODY_BYTES: String(64 * 1024 * 1024) }, { maxBodyBytes: 64 * 1024 * 1024 }],
    [{ TOKEN_RATE_LIMIT: '1000000' }, { tokenRateLimit: 1_000_000 }],
    [{ TRUST_PROXY: 'true' }, { trustedProxies: 1 }],
    [{ TRUST_PROXY: 'YES' }, { trustedProxies: 1 }],
    [{ TRUST_PROXY: 'no' }, { trustedProxies: 0 }],
    [{ TRUST_PROXY: 'false' }, { trustedProxies: 0 }],
    [{ TRUST_PROXY: '10' }, { trustedProxies: 10 }],
    [{ REDIS_URL: 'redis://localhost:6379' }, { redisUrl: 'redis://localhost:6379' }],
    [
      { REDIS_URL: 'rediss://user:pw@redis.example.test:6380/2' },
      { redisUrl: 'rediss://user:pw@redis.example.test:6380/2' },
    ],
    [{ REDIS_URL: 'redis://r', REDIS_KEY_PREFIX: 'app:' }, { redisKeyPrefix: 'app:' }],
    [{ REDIS_URL: 'redis://r', WORKERS: '64', SERVER_PORT: '8080' }, { workers: 64 }],
    [
      { REDIS_URL: 'redis://r', EVENTS_STREAM: 'events' },
      { eventStream: { key: 'events', maxLength: 100_000, outboxEvents: 10_000 } },
    ],
    [
      { REDIS_URL: 'redis://r', EVENTS_STREAM: 'e', EVENTS_STREAM_MAXLEN: '5', EVENTS_OUTBOX: '7' },
      { eventStream: { key: 'e', maxLength: 5, outboxEvents: 7 } },
    ],
    [{ PROMETHEUS_PORT: '9090' }, { prometheusPort: 9090 }],
  ]
  for (const [env, expected] of read) {
    test(`reads ${JSON.stringify(env)}`, () => {
      expect(loadConfig({ ...livekitEnv, ...env })).toMatchObject(expected)
    })
  }

  test('WORKERS=auto is the cores there are, at most 64', () => {
    const { workers } = loadConfig({ ...livekitEnv, REDIS_URL: 'redis://r', WORKERS: 'auto' })
    expect(workers).toBeGreaterThanOrEqual(1)
    expect(workers).toBeLessThanOrEqual(64)
  })

  test('AUTH_JWKS_URL brings the issuer, audience and identity claim (sub by default)', () => {
    const { auth } = loadConfig({
      ...livekitEnv,
      AUTH_JWKS_URL: 'https://id.example.test/jwks',
      AUTH_ISSUER: 'https://id.example.test/',
      AUTH_AUDIENCE: 'app',
    })
    expect(auth).toEqual({
      jwksUrl: new URL('https://id.example.test/jwks'),
      issuer: 'https://id.example.test/',
      audience: 'app',
      identityClaim: 'sub',
    })
  })

  test('a key and secret that are not the development ones; a secret under 32 characters is weak', () => {
    expect(loadConfig(livekitEnv)).toMatchObject({ usesDevCredentials: false, weakKeys: [] })
    expect(loadConfig({ LIVEKIT_API_KEY: 'devkey', LIVEKIT_API_SECRET: 'other' })).toMatchObject({
      usesDevCredentials: false,
      weakKeys: [],
    })
    expect(loadConfig({ LIVEKIT_API_KEY: 'k', LIVEKIT_API_SECRET: 's'.repeat(31) }).weakKeys).toEqual(['k'])
    expect(loadConfig({ LIVEKIT_API_KEY: 'k', LIVEKIT_API_SECRET: 's'.repeat(32) }).weakKeys).toEqual([])
  })

  test('LIVEKIT_KEYS: every key for webhooks, the one LIVEKIT_API_KEY names (or the only one) for tokens', () => {
    const keys = `# rotation\n\n old : ${'o'.repeat(32)}\r\nnew:${'n'.repeat(10)}\n`
    const config = loadConfig({ LIVEKIT_KEYS: keys, LIVEKIT_API_KEY: 'new' })
    expect([config.apiKey, config.apiSecret, config.weakKeys]).toEqual(['new', 'n'.repeat(10), ['new']])
    expect([...config.keys]).toEqual([
      ['old', 'o'.repeat(32)],
      ['new', 'n'.repeat(10)],
    ])
    expect(loadConfig({ LIVEKIT_KEYS: `only: ${'x'.repeat(40)}` })).toMatchObject({
      apiKey: 'only',
      apiSecret: 'x'.repeat(40),
    })
  })

  test('reads a NAME_FILE, without its trailing newline', () => {
    const path = join(secretsDir, 'secret')
    writeFileSync(path, `${credentials.apiSecret}\n`)
    expect(loadConfig({ LIVEKIT_API_KEY: 'k', LIVEKIT_API_SECRET_FILE: ` ${path} ` }).apiSecret).toBe(
      credentials.apiSecret,
    )
    writeFileSync(path, `${credentials.apiSecret}\r\n`)
    expect(loadConfig({ LIVEKIT_API_KEY: 'k', LIVEKIT_API_SECRET_FILE: path }).apiSecret).toBe(credentials.apiSecret)
  })
})

describe('loadConfig, mistakes refused with a ConfigError naming the variable', () => {
  const emptyFile = join(secretsDir, 'empty')
  writeFileSync(emptyFile, '\n')
  const refusals: [Record<string, string>, string][] = [
    [{ SERVER_PORT: '65536' }, 'SERVER_PORT must be an integer from 0 to 65535, got "65536"'],
    [{ SERVER_PORT: '-1' }, 'SERVER_PORT must be an integer from 0 to 65535, got "-1"'],
    [{ SERVER_PORT: '80.5' }, 'SERVER_PORT must be an integer from 0 to 65535, got "80.5"'],
    [{ SERVER_PORT: '0x50' }, 'SERVER_PORT must be an integer from 0 to 65535, got "0x50"'],
    [{ MAX_BODY_BYTES: '0' }, 'MAX_BODY_BYTES must be an integer from 1 to 67108864, got "0"'],
    [
      { MAX_BODY_BYTES: String(64 * 1024 * 1024 + 1) },
      'MAX_BODY_BYTES must be an integer from 1 to 67108864, got "67108865"',
    ],
    [{ MAX_PENDING_BODY_BYTES: '0' }, 'MAX_PENDING_BODY_BYTES must be an integer from 1 to 1073741824, got "0"'],
    [{ TOKEN_RATE_LIMIT: '0' }, 'TOKEN_RATE_LIMIT must be an integer from 1 to 1000000, got "0"'],
    [{ TOKEN_TTL: '0' }, 'TOKEN_TTL must be a positive duration such as 600, 10m or 6h (at most 366d), got "0"'],
    [{ TOKEN_TTL: '367d' }, 'TOKEN_TTL must be a positive duration such as 600, 10m or 6h (at most 366d), got "367d"'],
    [
      { TOKEN_TTL: '31622401' },
      'TOKEN_TTL must be a positive duration such as 600, 10m or 6h (at most 366d), got "31622401"',
    ],
    [{ TOKEN_TTL: '10 m' }, 'TOKEN_TTL must be a positive duration such as 600, 10m or 6h (at most 366d), got "10 m"'],
    [{ TOKEN_TTL: '1w' }, 'TOKEN_TTL must be a positive duration such as 600, 10m or 6h (at most 366d), got "1w"'],
    [{ TOKEN_TTL: '-5' }, 'TOKEN_TTL must be a positive duration such as 600, 10m or 6h (at most 366d), got "-5"'],
    [{ LOG_LEVEL: 'verbose' }, 'LOG_LEVEL must be one of info, warn, error, got "verbose"'],
    [{ OPENAPI: 'yes' }, 'OPENAPI must be one of 1, 0, got "yes"'],
    [
      { LIVEKIT_URL: 'localhost:7880' },
      'LIVEKIT_URL must be a ws://, wss://, http:// or https:// URL, got "localhost:7880"',
    ],
    [
      { LIVEKIT_URL: 'ftp://lk.example.test' },
      'LIVEKIT_URL must be a ws://, wss://, http:// or https:// URL, got "ftp://lk.example.test"',
    ],
    [
      { AUTH_JWKS_URL: 'ws://id.example.test/jwks' },
      'AUTH_JWKS_URL must be an http:// or https:// URL, got "ws://id.example.test/jwks"',
    ],
    [{ TRUST_PROXY: '11' }, 'TRUST_PROXY must be the number of proxies in front of the server (0 to 10), got "11"'],
    [
      { TRUST_PROXY: 'maybe' },
      'TRUST_PROXY must be the number of proxies in front of the server (0 to 10), got "maybe"',
    ],
    [{ TRUST_PROXY: '-1' }, 'TRUST_PROXY must be the number of proxies in front of the server (0 to 10), got "-1"'],
    [
      { REDIS_URL: 'http://r:6379' },
      'REDIS_URL must be redis://[user:password@]host:port[/db] (rediss:// for TLS, db a number)',
    ],
    [
      { REDIS_URL: 'redis://r/cache' },
      'REDIS_URL must be redis://[user:password@]host:port[/db] (rediss:// for TLS, db a number)',
    ],
    [
      { REDIS_URL: 'redis://r?db=1' },
      'REDIS_URL must be redis://[user:password@]host:port[/db] (rediss:// for TLS, db a number)',
    ],
    [
      { REDIS_URL: 'redis://' },
      'REDIS_URL must be redis://[user:password@]host:port[/db] (rediss:// for TLS, db a number)',
    ],
    [{ REDIS_URL: 'redis://r', WORKERS: '65', SERVER_PORT: '1' }, 'WORKERS must be an integer from 1 to 64, got "65"'],
    [
      { WORKERS: '2' },
      'WORKERS above 1 needs REDIS_URL: without it the workers would not share handled webhook ids and rate limits',
    ],
    [{ REDIS_URL: 'redis://r', WORKERS: '2', SERVER_PORT: '0' }, 'WORKERS above 1 needs a SERVER_PORT other than 0'],
    [{ EVENTS_STREAM: 'events' }, 'EVENTS_STREAM needs REDIS_URL: the stream is kept in Redis'],
    [
      { REDIS_URL: 'redis://r', EVENTS_STREAM: 'my events' },
      'EVENTS_STREAM must be a Redis key of at most 256 characters, without spaces',
    ],
    [
      { REDIS_URL: 'redis://r', EVENTS_STREAM: 'e'.repeat(257) },
      'EVENTS_STREAM must be a Redis key of at most 256 characters, without spaces',
    ],
    [{ EVENTS_OUTBOX: '5' }, 'EVENTS_OUTBOX has no effect without EVENTS_STREAM'],
    [{ EVENTS_STREAM_MAXLEN: '5' }, 'EVENTS_STREAM_MAXLEN has no effect without EVENTS_STREAM'],
    [{ AUTH_ISSUER: 'https://id.example.test/' }, 'AUTH_ISSUER has no effect without AUTH_JWKS_URL'],
    [{ AUTH_AUDIENCE: 'app' }, 'AUTH_AUDIENCE has no effect without AUTH_JWKS_URL'],
    [{ AUTH_IDENTITY_CLAIM: 'email' }, 'AUTH_IDENTITY_CLAIM has no effect without AUTH_JWKS_URL'],
    [{ PROMETHEUS_PORT: '0' }, 'PROMETHEUS_PORT must be an integer from 1 to 65535, got "0"'],
    [
      { PROMETHEUS_PORT: '6080' },
      'PROMETHEUS_PORT must differ from SERVER_PORT: metrics are never served on the public port',
    ],
  ]
  for (const [env, message] of refusals) {
    test(`refuses ${JSON.stringify(env)}: "${message}"`, () => {
      expect(refusal({ ...livekitEnv, ...env })).toBe(message)
    })
  }

  const credentialRefusals: [string, () => Record<string, string>, string][] = [
    [
      'a key without a secret',
      () => ({ LIVEKIT_API_KEY: 'k' }),
      'LIVEKIT_API_SECRET is required when LIVEKIT_API_KEY is set',
    ],
    [
      'a secret without a key',
      () => ({ LIVEKIT_API_SECRET: credentials.apiSecret }),
      'LIVEKIT_API_KEY is required when LIVEKIT_API_SECRET is set',
    ],
    [
      'LIVEKIT_KEYS beside LIVEKIT_API_SECRET',
      () => ({ LIVEKIT_KEYS: `k: ${credentials.apiSecret}`, LIVEKIT_API_SECRET: credentials.apiSecret }),
      'LIVEKIT_KEYS and LIVEKIT_API_SECRET cannot both be set: list every key and its secret in LIVEKIT_KEYS',
    ],
    [
      'several keys and no LIVEKIT_API_KEY',
      () => ({ LIVEKIT_KEYS: `a: ${credentials.apiSecret}\nb: ${credentials.apiSecret}` }),
      'LIVEKIT_API_KEY must name the key that signs tokens when LIVEKIT_KEYS lists several',
    ],
    [
      'a LIVEKIT_API_KEY not among LIVEKIT_KEYS',
      () => ({ LIVEKIT_KEYS: `a: ${credentials.apiSecret}`, LIVEKIT_API_KEY: 'b' }),
      'LIVEKIT_API_KEY "b" is not one of the keys in LIVEKIT_KEYS',
    ],
    [
      'a LIVEKIT_KEYS line that is no pair',
      () => ({ LIVEKIT_KEYS: `a: ${credentials.apiSecret}\n${credentials.apiSecret}` }),
      'LIVEKIT_KEYS line 2 is not "key: secret"',
    ],
    [
      'a LIVEKIT_KEYS secret with a space',
      () => ({ LIVEKIT_KEYS: `a: ${credentials.apiSecret} x` }),
      'LIVEKIT_KEYS line 1 is not "key: secret"',
    ],
    ['LIVEKIT_KEYS of comments only', () => ({ LIVEKIT_KEYS: '# none yet\n' }), 'LIVEKIT_KEYS lists no key'],
    [
      'a variable and its _FILE both set',
      () => ({ LIVEKIT_API_KEY: 'k', LIVEKIT_API_SECRET: credentials.apiSecret, LIVEKIT_API_SECRET_FILE: emptyFile }),
      'LIVEKIT_API_SECRET and LIVEKIT_API_SECRET_FILE cannot both be set',
    ],
    [
      'an empty secret file',
      () => ({ LIVEKIT_API_KEY: 'k', LIVEKIT_API_SECRET_FILE: emptyFile }),
      `LIVEKIT_API_SECRET_FILE: "${emptyFile}" is empty`,
    ],
    [
      'a secret file that is missing',
      () => ({ LIVEKIT_API_KEY: 'k', LIVEKIT_API_SECRET_FILE: join(secretsDir, 'missing') }),
      `LIVEKIT_API_SECRET_FILE: cannot read "${join(secretsDir, 'missing')}" (ENOENT)`,
    ],
  ]
  for (const [what, env, message] of credentialRefusals) {
    test(`refuses ${what}, never echoing the secret`, () => {
      const text = refusal(env())
      expect(text).toBe(message)
      expect(text).not.toContain(credentials.apiSecret)
    })
  }
})
