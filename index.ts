// The application server for LiveKit and OpenVidu apps: access tokens for clients (POST /token), the webhooks a
// LiveKit server posts (POST /livekit/webhook). `bun run index.ts`, or Deno 2. Sections ("// ==== Name", within them
// "// ---- Name"), in the order an app changes them:
//   Webhook handlers            what to do when LiveKit reports an event: edit these
//   Token decisions             who gets which grant in which room: TOKEN_POLICY, or your own function
//   Routes                      the whole HTTP surface on one screen (adding a route: docs/routes.md)
//   Configuration               every environment variable: the table, then how it is read (docs/configuration.md)
//   --- the machinery, each section standing alone ---
//   Token requests              the two contracts' bodies, checked; the route's parser and handler
//   Token policy                applying TOKEN_POLICY, then reading it
//   Tokens                      signing LiveKit access tokens
//   Callers                     authentication (AUTH_JWKS_URL), rate limits, client addresses
//   Webhooks                    verifying LiveKit's signature; remembering handled event ids
//   Shared state                Redis (REDIS_URL) for handled ids and allowances, memory when it fails
//   Events onward               the Redis Stream (EVENTS_STREAM) and its outbox
//   Request bodies and errors   bounded reading, costly JSON refused, the error shape
//   CORS and the API described  open CORS; GET /openapi.json and its page
//   Logging                     JSON log lines
//   Metrics                     GET /metrics on PROMETHEUS_PORT
//   Serving                     serving, stopping; `runtime`: every Bun/Deno difference (HMAC, Redis, signals, workers)
//   Workers                     WORKERS=N processes or threads
//   Starting up                 the configuration, then the workers or the server
import { Elysia, getSchemaValidator, status, t, type ErrorContext } from 'elysia'
import { cors } from '@elysiajs/cors'
import { openapi } from '@elysiajs/openapi'
import { createRemoteJWKSet, errors as joseErrors, jwtVerify, type JWTPayload } from 'jose'
import { createHash, createHmac, timingSafeEqual, type Hash } from 'node:crypto'
import { createServer as createNetServer, isIP } from 'node:net'
import { availableParallelism } from 'node:os'
import { readFileSync, writeSync } from 'node:fs'
import { claimsToJwtPayload, RoomAgentDispatch, RoomConfiguration, TrackSource, WebhookEvent } from 'livekit-server-sdk'
import type { ClaimGrants, VideoGrant, WebhookEventNames } from 'livekit-server-sdk'
import { ValueErrorType, type ValueError } from '@sinclair/typebox/errors'

// ==== Webhook handlers =============================================================================================
// What to do when LiveKit reports an event. Replace an entry to add behaviour; a handler that throws makes
// the answer a 500, so that LiveKit delivers the event again.

/** LiveKit's event names: the SDK's, and the agent events the protocol added since (2026-08). */
export type WebhookEventName = Exclude<WebhookEventNames, ''> | 'agent_job_started' | 'agent_job_ended'
export type WebhookHandler = (event: WebhookEvent) => void | Promise<void>
type Handlers = Record<string, WebhookHandler>

export const webhookHandlers: Record<WebhookEventName, WebhookHandler> = {
  room_started: logEvent,
  room_finished: logEvent,
  participant_joined: logEvent,
  participant_left: logEvent,
  participant_connection_aborted: logEvent,
  track_published: logEvent,
  track_unpublished: logEvent,
  egress_started: logEvent,
  egress_updated: logEvent,
  egress_ended: logEvent,
  ingress_started: logEvent,
  ingress_ended: logEvent,
  // An agent's job in a room: `event.job` (its id, agentName, state; the room on the first).
  agent_job_started: logEvent,
  agent_job_ended: logEvent,
}

function logEvent(event: EventView): void {
  log('info', 'webhook', describeEvent(event))
}

function logUnknownEvent(event: EventView): void {
  log('info', 'webhook with unknown event name', describeEvent(event))
}

/** What the log line of an event names: the room, and whoever or whatever it is about. */
function describeEvent(event: EventView): Record<string, string | undefined> {
  const { room, participant, track, egressInfo, ingressInfo, job } = event
  return {
    event: shortText(event.event), id: shortText(event.id),
    room: shortText(room?.name || egressInfo?.roomName || ingressInfo?.roomName || job?.room?.name),
    participant: shortText(participant?.identity), track: shortText(track?.sid),
    egress: shortText(egressInfo?.egressId), ingress: shortText(ingressInfo?.ingressId),
    job: shortText(job?.id), agent: shortText(job?.agentName),
  }
}

/** A signed event's field as logged or streamed: at most 256 characters, none when empty. */
const shortText = (text?: string) => (text ? (text.length > 256 ? `${text.slice(0, 256)}…` : text) : undefined)

// ==== Token decisions ==============================================================================================
// Every token's room, grant, room settings and lifetime: TOKEN_POLICY's (see Token policy), or without one the
// same grant for everyone in any room; rules no JSON can say (a database lookup) go in a TokenDecider (createApp).

/** What a policy may grant; `roomJoin` and `room` are always the server's. */
const grantNames = ['canPublish', 'canSubscribe', 'canPublishData', 'canPublishSources', 'canUpdateOwnMetadata',
  'canSubscribeMetrics', 'hidden', 'roomAdmin', 'roomRecord', 'roomCreate'] as const
export type TokenGrant = Pick<VideoGrant, (typeof grantNames)[number]>
/** A token request, its identity settled: a standard one may name no room, and ask for agents (nothing else). */
export type TokenAsk =
  { contract: 'openvidu' | 'standard'; room?: string; identity: string; roomConfig?: RoomConfiguration }
/** The token to mint, or why not (answered 403 with that message). */
export type TokenDecision =
  | { room: string; grant: TokenGrant; ttlSeconds: number; roomConfig?: RoomConfiguration }
  | { refused: string; policy?: PolicyRefusal }
/** Why TOKEN_POLICY refused, for the log line (never for the caller): the roles it found, what was missing. */
export type PolicyRefusal = { roles: string[]; missing?: string }
/** The caller is undefined when authentication (AUTH_JWKS_URL) is off. */
export type TokenDecider = (caller: Caller | undefined, asked: TokenAsk, config: Config) => MaybePromise<TokenDecision>

// Without a policy, everyone's: join, publish, subscribe, send data.
const fullGrant: TokenGrant = { canPublish: true, canSubscribe: true, canPublishData: true }
export function decideToken(caller: Caller | undefined, asked: TokenAsk, config: Config): TokenDecision {
  if (config.tokenPolicy) return applyTokenPolicy(config.tokenPolicy, caller?.claims, asked)
  const room = asked.room ?? `room-${randomSuffix()}`
  return { room, grant: fullGrant, ttlSeconds: config.tokenTtlSeconds, roomConfig: asked.roomConfig }
}

// ==== Routes =======================================================================================================
// The whole HTTP surface, each route's work a section below; errors answer { "errorMessage": … } (docs/routes.md).

export function createApp(config: Config, handlers: Handlers = webhookHandlers, decide: TokenDecider = decideToken) {
  const { redisUrl, redisKeyPrefix, tokenRateLimit, prometheusPort } = config
  const memory = { ids: new RecentIds(), limiter: tokenRateLimit ? new RateLimiter(tokenRateLimit) : undefined }
  const state = new SharedState(memory, redisUrl, redisKeyPrefix)
  const events = config.eventStream && new EventStream(config.eventStream, redisUrl!, redisKeyPrefix, memory.ids, state)
  const metrics = prometheusPort === undefined ? undefined : new AppMetrics(prometheusPort) // served by startServer
  const readBody = createBodyReader(config.maxPendingBodyBytes, metrics ?? noMetrics)
  const tokens = createTokenRoute(config, decide, state, readBody, metrics ?? noMetrics)
  const receiveWebhook = createWebhookRoute(config, handlers, state, events, readBody, metrics ?? noMetrics)
  if (redisUrl) metrics?.watch({ redisStatus: () => state.redisStatus() })
  const ok = 'ok' as const
  const health = redisUrl ? async () => ({ status: ok, redis: await state.redisStatus() }) : () => ({ status: ok })
  const app = new Elysia({
    normalize: false, // validate what the client sent: normalising first would reshape it (an array into an object)
    handler: { standardHostname: false }, // by default Elysia skips 11 characters: Host "a" routes /ab/token as /token
  })
    .use(corsPlugin())
    .use(config.openapi ? apiDocumentation() : new Elysia())
    .onError(answerError)
    .options('/*', answerPreflight)
    .get('/health', health, {
      response: { 200: HealthAnswer },
      detail: { summary: 'Whether the server answers, and whether Redis is in use (with REDIS_URL)' },
    })
    .post('/token', ({ body, request }) => tokens.answer(body, request), {
      // The JSON parser after ours is never reached; naming it keeps the body schema in the OpenAPI document.
      parse: [tokens.read, 'json'],
      body: TokenRequest,
      mapResponse: noStore,
      response: { 200: TokenAnswer, ...errorAnswers(400, 401, 403, 408, 413, 429, 503) },
      detail: {
        summary: 'An access token for a LiveKit room',
        description: "Two contracts, told apart by the body: OpenVidu's tutorial clients send {roomName, " +
          "participantName} and get {token}; LiveKit's standard token endpoint (TokenSource.endpoint) sends optional " +
          'snake_case fields and gets {server_url, participant_token}. A 403 names what the caller may not have: ' +
          'another identity, room_config beyond agents, or under TOKEN_POLICY a room or agent no role of its allows.',
      },
    })
    .post('/livekit/webhook', ({ request }) => receiveWebhook(request), {
      parse: 'none',
      response: { 200: WebhookAnswer, ...errorAnswers(400, 401, 408, 413, 500, 503) },
      detail: {
        summary: 'An event posted by a LiveKit server',
        description: "The raw body, as LiveKit signs it: the Authorization JWT's sha256 claim hashes its exact bytes.",
      },
    })
  // What serving needs (startServer): whether the rate limit needs connecting addresses (costly on Deno), Redis's
  // first attempt (awaited before listening), the stream to flush once stopped, the metrics to serve.
  const connecting = Promise.all([state.connected, events?.connected])
  return app.state('serving', { addresses: config.tokenRateLimit !== undefined, connecting, events, metrics })
}

/** What createApp returns, for typed clients: `treaty<App>(url).token.post(…)`. */
export type App = ReturnType<typeof createApp>
const ErrorAnswer = t.Object({ errorMessage: t.String() })
const errorAnswers = <const Codes extends number[]>(...codes: Codes) =>
  Object.fromEntries(codes.map((code) => [code, ErrorAnswer])) as { [Code in Codes[number]]: typeof ErrorAnswer }
const Jwt = t.String({ description: 'A LiveKit access token (JWT)' })
const ServerUrl = t.String({ description: 'LIVEKIT_URL: where the client connects' })
const TokenAnswer = t.Union([t.Object({ token: Jwt }), t.Object({ server_url: ServerUrl, participant_token: Jwt })])
const WebhookAnswer = t.Object({ received: t.Union([t.Literal(true), t.Literal('duplicate')]) })
const Ok = t.Literal('ok')
const HealthAnswer = t.Object({ status: Ok, redis: t.Optional(t.Union([Ok, t.Literal('unavailable')])) })

// ==== Configuration ================================================================================================
// Every variable once, with its default, its bounds and what it means (in full: docs/configuration.md); the checks
// and their messages come from these entries. The secrets and the rules between variables follow.

/** One variable: how its text (undefined when unset) is checked and read, and what it means. */
type Setting<T> = { read(text: string | undefined, name: string): T; meaning: string }
const described = <T>(meaning: string, read: Setting<T>['read']): Setting<T> => ({ meaning, read })
const invalid = (name: string, expected: string, text?: string) =>
  new ConfigError(`${name} must be ${expected}, got "${text}"`)

const integer = <T extends number | undefined>(fallback: T, min: number, max: number, meaning: string) =>
  described(meaning, (text, name): number | T => {
    if (!text) return fallback
    if (/^\d+$/.test(text) && Number(text) >= min && Number(text) <= max) return Number(text)
    throw invalid(name, `an integer from ${min} to ${max}`, text)
  })

const choice = <const T extends string>(choices: [T, ...T[]], meaning: string) =>
  described(meaning, (text, name) => {
    const chosen = (text?.toLowerCase() || choices[0]) as T
    if (!choices.includes(chosen)) throw invalid(name, `one of ${choices.join(', ')}`, text)
    return chosen
  })

const secondsPerUnit: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400 }
/** A lifetime in seconds ("600") or with a unit ("10m", "6h", "1d"), at most 366 days. */
const duration = (fallback: string, meaning: string) =>
  described(meaning, (text, name) => {
    const match = /^(\d+)([smhd]?)$/.exec(text || fallback)
    const seconds = match ? Number(match[1]) * secondsPerUnit[match[2] || 's']! : NaN
    if (seconds > 0 && seconds <= 366 * 86400) return seconds
    throw invalid(name, 'a positive duration such as 600, 10m or 6h (at most 366d)', text || fallback)
  })

const url = <T extends string | undefined>(fallback: T, schemes: RegExp, expected: string, meaning: string) =>
  described(meaning, (text, name) => {
    const value = text || fallback
    if (value !== undefined && !schemes.test(URL.parse(value)?.protocol ?? '')) throw invalid(name, expected, value)
    return value as string | T
  })
const textSetting = (meaning: string, fallback?: string) => described(meaning, (text) => text || fallback)

export const settings = {
  SERVER_PORT: integer(6080, 0, 65535, 'the port to listen on (0: a free one)'),
  LIVEKIT_URL: url('ws://localhost:7880', /^(wss?|https?):$/, 'a ws://, wss://, http:// or https:// URL',
    'where clients connect, returned to standard-contract clients as server_url'),
  TOKEN_TTL: duration('6h', 'how long a token lasts'),
  MAX_BODY_BYTES: integer(1024 * 1024, 1, 64 * 1024 * 1024, 'the largest webhook body (token requests: lower)'),
  MAX_PENDING_BODY_BYTES: integer(16 * 1024 * 1024, 1, 1024 * 1024 * 1024, 'bytes read at once per route; beyond: 503'),
  LOG_LEVEL: choice(['info', 'warn', 'error'], 'the least severe lines logged'),
  OPENAPI: choice(['1', '0'], 'whether GET /openapi.json and the docs page at GET /openapi are served'),
  AUTH_JWKS_URL: url(undefined, /^https?:$/, 'an http:// or https:// URL', 'the IdP key set: /token needs an ID token'),
  AUTH_ISSUER: textSetting("the iss callers' ID tokens must carry (required with AUTH_JWKS_URL)"),
  AUTH_AUDIENCE: textSetting("the aud ID tokens must carry: the app's client ID (required with AUTH_JWKS_URL)"),
  AUTH_IDENTITY_CLAIM: textSetting('the ID-token claim that becomes the LiveKit identity', 'sub'),
  TOKEN_RATE_LIMIT: integer(undefined, 1, 1_000_000, 'token requests per caller per minute; no limit when unset'),
  TRUST_PROXY: { read: readProxyCount, meaning: 'proxies in a row appending to X-Forwarded-For (0: trust none of it)' },
  REDIS_URL: { read: readRedisUrl, meaning: 'where handled webhook ids and allowances are shared; memory when unset' },
  REDIS_KEY_PREFIX: textSetting('what Redis keys start with (by default per API key), so that deployments do not meet'),
  WORKERS: { read: readWorkers, meaning: 'how many processes (Bun) or threads (Deno) serve the port' },
  EVENTS_STREAM: { read: readStreamKey, meaning: 'the Redis Stream each verified event goes to (not prefixed)' },
  EVENTS_STREAM_MAXLEN: integer(100_000, 1, 1_000_000_000, 'the stream is trimmed to about this many entries'),
  EVENTS_OUTBOX: integer(10_000, 1, 1_000_000, 'the most events held while Redis does not answer (and at most 64 MiB)'),
  PROMETHEUS_PORT: integer(undefined, 1, 65535, 'where GET /metrics is served, a listener of its own; none when unset'),
} satisfies Record<string, Setting<unknown>>

// Besides: LIVEKIT_API_KEY, LIVEKIT_API_SECRET, LIVEKIT_KEYS and TOKEN_POLICY, each also from a
// NAME_FILE (parseCredentials, readSetting), and the variables only meaningful with another set.
const needs: Record<string, keyof typeof settings> = {
  AUTH_ISSUER: 'AUTH_JWKS_URL', AUTH_AUDIENCE: 'AUTH_JWKS_URL', AUTH_IDENTITY_CLAIM: 'AUTH_JWKS_URL',
  EVENTS_STREAM_MAXLEN: 'EVENTS_STREAM', EVENTS_OUTBOX: 'EVENTS_STREAM',
}
// A key set is shared by every app of the provider (all of Firebase): iss and aud say the token is this app's.
const jwksNeeds = (name: string, value: string) =>
  new ConfigError(`${name} is required with AUTH_JWKS_URL: set it to ${value} (docs/production.md)`)

// ---- Configuration, read ------------------------------------------------------------------------------------------
// The table applied, then the secrets and the rules between variables.

export class ConfigError extends Error {}
type Env = Record<string, string | undefined>
/** Reads and validates the configuration once; throws a ConfigError naming the bad variable. */
export function loadConfig(env: Env) {
  const setting = <Name extends keyof typeof settings>(name: Name) =>
    settings[name].read(env[name]?.trim() || undefined, name) as ReturnType<(typeof settings)[Name]['read']>
  for (const [name, needed] of Object.entries(needs)) {
    if (env[name]?.trim() && !env[needed]?.trim()) throw new ConfigError(`${name} has no effect without ${needed}`)
  }
  const { apiKey, apiSecret, keys } = parseCredentials(env)
  setting('LOG_LEVEL') // checked here, read once at load: the process's (Logging)
  const tokenTtlSeconds = setting('TOKEN_TTL')
  const [redisUrl, jwksUrl, streamKey] = [setting('REDIS_URL'), setting('AUTH_JWKS_URL'), setting('EVENTS_STREAM')]
  if (streamKey && !redisUrl) throw new ConfigError('EVENTS_STREAM needs REDIS_URL: the stream is kept in Redis')
  const [issuer, audience] = [setting('AUTH_ISSUER'), setting('AUTH_AUDIENCE')]
  if (jwksUrl && !issuer) throw jwksNeeds('AUTH_ISSUER', "your identity provider's issuer, the iss of its ID tokens")
  if (jwksUrl && !audience) {
    throw jwksNeeds('AUTH_AUDIENCE', "your app's client ID, the aud of the ID tokens your clients send")
  }
  const config = {
    port: setting('SERVER_PORT'), livekitUrl: setting('LIVEKIT_URL'), tokenTtlSeconds,
    apiKey, apiSecret, keys, // the key tokens are signed with; every key webhooks may be signed with (rotation)
    maxBodyBytes: setting('MAX_BODY_BYTES'), maxPendingBodyBytes: setting('MAX_PENDING_BODY_BYTES'),
    usesDevCredentials: apiKey === devCredentials.apiKey && apiSecret === devCredentials.apiSecret,
    // Secrets too short for HS256, to warn about at start.
    weakKeys: [...keys.keys()].filter((key) => key !== devCredentials.apiKey && keys.get(key)!.length < 32),
    auth: jwksUrl && issuer && audience
      ? { jwksUrl: new URL(jwksUrl), issuer, audience, identityClaim: setting('AUTH_IDENTITY_CLAIM')! }
      : undefined,
    tokenRateLimit: setting('TOKEN_RATE_LIMIT'), trustedProxies: setting('TRUST_PROXY'),
    redisUrl, redisKeyPrefix: setting('REDIS_KEY_PREFIX') ?? `livekit-server:${apiKey}:`,
    workers: setting('WORKERS'), prometheusPort: setting('PROMETHEUS_PORT'), openapi: setting('OPENAPI') === '1',
    eventStream: streamKey
      ? { key: streamKey, maxLength: setting('EVENTS_STREAM_MAXLEN'), outboxEvents: setting('EVENTS_OUTBOX') }
      : undefined,
    tokenPolicy: parseTokenPolicy(readSetting(env, 'TOKEN_POLICY'), tokenTtlSeconds),
  }
  const unshared = 'without it the workers would not share handled webhook ids and rate limits'
  if (config.workers > 1 && !redisUrl) throw new ConfigError(`WORKERS above 1 needs REDIS_URL: ${unshared}`)
  if (config.workers > 1 && config.port === 0) throw new ConfigError('WORKERS above 1 needs a SERVER_PORT other than 0')
  if (config.prometheusPort === config.port) {
    throw new ConfigError('PROMETHEUS_PORT must differ from SERVER_PORT: metrics are never served on the public port')
  }
  return config
}
export type Config = ReturnType<typeof loadConfig>
export type AuthConfig = NonNullable<Config['auth']>
export type EventStreamConfig = NonNullable<Config['eventStream']>

/** A number of proxies: 0 to 10, with true/yes for 1 and false/no for 0. */
function readProxyCount(text: string | undefined, name: string): number {
  const value = text?.toLowerCase() ?? ''
  if (['', 'false', 'no'].includes(value)) return 0
  if (['true', 'yes'].includes(value)) return 1
  if (/^\d{1,2}$/.test(value) && Number(value) <= 10) return Number(value)
  throw invalid(name, 'the number of proxies in front of the server (0 to 10)', text)
}

function readRedisUrl(text: string | undefined, name: string): string | undefined {
  if (!text) return undefined
  const url = URL.parse(text)
  const valid = url && /^rediss?:$/.test(url.protocol) && url.hostname && /^(\/\d{0,5})?$/.test(url.pathname)
  if (valid && !url.search) return text
  // Not echoed: a password that is not URL-encoded may be what made it invalid.
  throw new ConfigError(`${name} must be redis://[user:password@]host:port[/db] (rediss:// for TLS, db a number)`)
}
function readWorkers(text: string | undefined, name: string): number {
  if (text?.toLowerCase() === 'auto') return Math.min(availableParallelism(), 64)
  return integer(1, 1, 64, '').read(text, name)
}
function readStreamKey(text: string | undefined): string | undefined {
  if (!text || (text.length <= 256 && !/\s/.test(text))) return text
  throw new ConfigError('EVENTS_STREAM must be a Redis key of at most 256 characters, without spaces')
}

// LiveKit's and OpenVidu's development servers run with these credentials.
const devCredentials = { apiKey: 'devkey', apiSecret: 'secret' }
/** The API key and secret, or several keys in LIVEKIT_KEYS (for rotation: webhooks signed with any verify). */
function parseCredentials(env: Env): { apiKey: string; apiSecret: string; keys: Map<string, string> } {
  const apiKey = readSetting(env, 'LIVEKIT_API_KEY')
  const apiSecret = readSetting(env, 'LIVEKIT_API_SECRET')
  const keysText = readSetting(env, 'LIVEKIT_KEYS')
  if (keysText !== undefined) {
    const both = 'LIVEKIT_KEYS and LIVEKIT_API_SECRET cannot both be set'
    if (apiSecret !== undefined) throw new ConfigError(`${both}: list every key and its secret in LIVEKIT_KEYS`)
    const keys = parseKeys(keysText)
    if (apiKey === undefined && keys.size > 1) {
      throw new ConfigError('LIVEKIT_API_KEY must name the key that signs tokens when LIVEKIT_KEYS lists several')
    }
    const key = apiKey ?? [...keys.keys()][0]!
    if (!keys.has(key)) throw new ConfigError(`LIVEKIT_API_KEY "${key}" is not one of the keys in LIVEKIT_KEYS`)
    return { apiKey: key, apiSecret: keys.get(key)!, keys }
  }
  const required = (name: string, when: string) => new ConfigError(`${name} is required when ${when} is set`)
  if (apiKey !== undefined && apiSecret === undefined) throw required('LIVEKIT_API_SECRET', 'LIVEKIT_API_KEY')
  if (apiSecret !== undefined && apiKey === undefined) throw required('LIVEKIT_API_KEY', 'LIVEKIT_API_SECRET')
  const credentials = apiKey !== undefined && apiSecret !== undefined ? { apiKey, apiSecret } : devCredentials
  return { ...credentials, keys: new Map([[credentials.apiKey, credentials.apiSecret]]) }
}

/** "key: secret" pairs, one a line; blank lines and # comments skipped. Errors name the line, never the secret. */
function parseKeys(text: string): Map<string, string> {
  const keys = new Map<string, string>()
  for (const [index, line] of text.split(/\r?\n/).entries()) {
    if (!line.trim() || line.trim().startsWith('#')) continue
    const match = /^\s*([^:\s]+)\s*:\s*(\S+)\s*$/.exec(line)
    if (!match) throw new ConfigError(`LIVEKIT_KEYS line ${index + 1} is not "key: secret"`)
    keys.set(match[1]!, match[2]!)
  }
  if (keys.size === 0) throw new ConfigError('LIVEKIT_KEYS lists no key')
  return keys
}

/** A variable's value, or the content of the file its NAME_FILE variable names (trailing newline trimmed). */
function readSetting(env: Env, name: string): string | undefined {
  const value = env[name] || undefined
  const path = env[`${name}_FILE`]?.trim() || undefined
  if (path === undefined) return value
  if (value !== undefined) throw new ConfigError(`${name} and ${name}_FILE cannot both be set`)
  let content: string
  try {
    content = readFileSync(path, 'utf8')
  } catch (error) {
    const reason = (error as { code?: string }).code ?? (error as Error).name
    throw new ConfigError(`${name}_FILE: cannot read "${path}" (${reason})${runtime.readPermission(path)}`)
  }
  const trimmed = content.replace(/\r?\n$/, '')
  if (!trimmed.trim()) throw new ConfigError(`${name}_FILE: "${path}" is empty`)
  return trimmed
}

// ==== Token requests ===============================================================================================
// Two contracts on one route, told apart by their fields: first the bodies, then the route (admission, then the body).

const maxNameLength = 256
const maxMetadataBytes = 64 * 1024
const maxAttributes = 64
const maxAttributesBytes = 64 * 1024
const maxAgents = 8
const maxAgentMetadataBytes = 64 * 1024
const tokenBodyLimit = 256 * 1024 // the most those bounds allow (three 64 KiB fields), with room for JSON escaping

// Control characters, line separators, bidirectional overrides and isolates: they make names and log lines lie.
const unsafeCharacters = /[\p{Cc}\u2028\u2029\u202A-\u202E\u2066-\u2069]/u
/** Text fit for an identity, a name or a room name: none of the characters above, no lone surrogate. */
const isPlainText = (text: string) => text.isWellFormed() && !unsafeCharacters.test(text)
const nameField = (field: string) =>
  t.String({ maxLength: maxNameLength, error: `${field} must be a string of at most ${maxNameLength} characters` })

/** OpenVidu's tutorial clients: {"roomName", "participantName"} → {"token"}. */
const openViduName = t.String({ minLength: 1, maxLength: maxNameLength })
const othersAllowed = { additionalProperties: true }
const OpenViduTokenRequest = t.Object({ roomName: openViduName, participantName: openViduName }, othersAllowed)

/** LiveKit's standard token endpoint (livekit-client's TokenSource.endpoint): every field optional. */
const attributeValue = t.String({ error: 'participant_attributes values must be strings' })
const StandardTokenRequest = t.Object({
  roomName: t.Optional(t.Never()), participantName: t.Optional(t.Never()), // absent: this contract, not OpenVidu's
  room_name: t.Optional(nameField('room_name')),
  participant_identity: t.Optional(nameField('participant_identity')),
  participant_name: t.Optional(nameField('participant_name')),
  participant_metadata: t.Optional(t.String({ error: 'participant_metadata must be a string' })),
  participant_attributes: t.Optional(t.Record(t.String(), attributeValue, {
    maxProperties: maxAttributes,
    error: `participant_attributes must be an object of at most ${maxAttributes} string values`,
  })),
  room_config: t.Optional(
    t.Record(t.String(), t.Unknown(), { error: 'room_config must be a RoomConfiguration object' })),
}, othersAllowed)
type OpenViduTokenRequest = typeof OpenViduTokenRequest.static
type StandardTokenRequest = typeof StandardTokenRequest.static
const TokenRequest = t.Union([OpenViduTokenRequest, StandardTokenRequest])
const tokenRequestValidator = getSchemaValidator(TokenRequest)
const standardRequestValidator = getSchemaValidator(StandardTokenRequest)
const isOpenViduRequest = (body: object): body is OpenViduTokenRequest =>
  'roomName' in body || 'participantName' in body

/** The union's own error says only "Expected union value"; name the field that is wrong instead. */
function describeTokenRequestError(body: Record<string, unknown>): string {
  if (isOpenViduRequest(body)) {
    const tooLong = [body.roomName, body.participantName].some((v) => typeof v === 'string' && v.length > maxNameLength)
    return `roomName and participantName ${tooLong ? `must be at most ${maxNameLength} characters` : 'are required'}`
  }
  const first = standardRequestValidator.Errors(body).First()
  if (!first) return 'Invalid token request'
  const custom = (first.schema as { error?: unknown }).error
  return typeof custom === 'string' ? custom : `${first.path.slice(1).replaceAll('/', '.')}: ${first.message}`
}

/** Identities, names and room names are plain text (isPlainText), in either contract. */
function requirePlainNames(body: Record<string, unknown>): void {
  const fields = isOpenViduRequest(body)
    ? ['roomName', 'participantName']
    : ['room_name', 'participant_identity', 'participant_name']
  const field = fields.find((field) => typeof body[field] === 'string' && !isPlainText(body[field]))
  if (field) {
    throw new HttpError(400, `${field} must not hold control characters, bidirectional overrides or lone surrogates`)
  }
}

interface Participant {
  identity: string; name?: string; metadata?: string; attributes?: Record<string, string>
  room: string; roomConfig?: RoomConfiguration
}
const randomSuffix = () => crypto.randomUUID().slice(0, 13).replace('-', '')
/** Turns a standard request into the participant it asks for, refusing what a client may not set. */
function standardParticipant(body: StandardTokenRequest): Omit<Participant, 'room'> {
  const metadata = body.participant_metadata
  if (metadata) requireBytes('participant_metadata', Buffer.byteLength(metadata), maxMetadataBytes)
  const attributes = body.participant_attributes
  if (attributes) {
    requireOwnAttributes(attributes, 'participant_attributes')
    requireBytes('participant_attributes', attributesBytes(attributes), maxAttributesBytes, ' in all')
  }
  return {
    identity: body.participant_identity || `participant-${randomSuffix()}`, name: body.participant_name || undefined,
    metadata: metadata || undefined, roomConfig: body.room_config && parseRoomConfig(body.room_config),
    attributes: attributes && Object.keys(attributes).length > 0 ? attributes : undefined,
  }
}

function requireBytes(field: string, bytes: number, max: number, inAll = ''): void {
  if (bytes > max) throw new HttpError(400, `${field} must be at most ${max} bytes${inAll}`)
}
const attributesBytes = (attributes: Record<string, string>) =>
  Object.entries(attributes).reduce((sum, [key, value]) => sum + Buffer.byteLength(key) + Buffer.byteLength(value), 0)
/** Attributes under "lk." are LiveKit's and its agents' (lk.agent.state, lk.publish_on_behalf): never a client's. */
function requireOwnAttributes(attributes: Record<string, string>, field: string): void {
  const reserved = Object.keys(attributes).find((key) => key.startsWith('lk.'))
  if (reserved) throw new HttpError(403, `${field} may not set "${reserved}": attributes under lk. are LiveKit's`)
}

// The JSON names (and .proto names) of a message's fields: anything else in a client's room_config is refused
// before decoding, where a key such as "constructor" or "__proto__" would find the decoder's own object.
const fieldNamesOf = (type: typeof RoomConfiguration | typeof RoomAgentDispatch) =>
  new Set(type.fields.list().flatMap((field) => [field.name, field.jsonName]))
const roomConfigFields = fieldNamesOf(RoomConfiguration)
const agentDispatchFields = fieldNamesOf(RoomAgentDispatch)
// What a client may say of an agent it dispatches; its restart policy stays the server's call.
const clientAgentFields = new Set(['agent_name', 'agentName', 'metadata', 'deployment', 'attributes'])
const keyOutside = (json: object, fields: Set<string>) => Object.keys(json).find((key) => !fields.has(key))

/** A client may ask for agents to be dispatched; recording, limits and timeouts stay the server's call. */
function parseRoomConfig(json: Record<string, unknown>): RoomConfiguration {
  const unknown = keyOutside(json, roomConfigFields)
  if (unknown !== undefined) throw new HttpError(400, `room_config.${unknown} is not a RoomConfiguration field`)
  const requested = Object.keys(json).filter((field) => field !== 'agents')
  if (requested.length > 0) throw new HttpError(403, `room_config may only request agents, not ${requested.join(', ')}`)
  const agents = json.agents ?? []
  if (!Array.isArray(agents)) throw new HttpError(400, 'room_config.agents must be a list of agent dispatches')
  if (agents.length > maxAgents) throw new HttpError(400, `room_config may request at most ${maxAgents} agents`)
  for (const agent of agents) {
    if (!isJsonObject(agent)) throw new HttpError(400, 'room_config.agents must be a list of agent dispatches')
    const field = keyOutside(agent, agentDispatchFields)
    if (field !== undefined) throw new HttpError(400, `room_config.agents.${field} is not a RoomAgentDispatch field`)
    const its = keyOutside(agent, clientAgentFields)
    if (its !== undefined) throw new HttpError(403, `room_config.agents may not set ${its}: it is the server's call`)
  }
  let roomConfig: RoomConfiguration
  try {
    roomConfig = RoomConfiguration.fromJson(json as Parameters<typeof RoomConfiguration.fromJson>[0])
  } catch (error) {
    throw new HttpError(400, `room_config is not a valid RoomConfiguration: ${(error as Error).message}`)
  }
  checkAgentDispatch(roomConfig.agents)
  return roomConfig
}

/** Each agent named in plain text, its attributes the client's own, all of it within the bounds. */
function checkAgentDispatch(agents: RoomAgentDispatch[]): void {
  for (const { agentName, deployment, attributes } of agents) {
    for (const [field, value] of [['agent names', agentName], ['agent deployments', deployment]]) {
      if (value!.length > maxNameLength || !isPlainText(value!)) {
        throw new HttpError(400, `room_config ${field} must be plain text of at most ${maxNameLength} characters`)
      }
    }
    requireOwnAttributes(attributes, 'room_config agent attributes')
  }
  requireBytes('room_config agent metadata and attributes', agentPayloadBytes(agents), maxAgentMetadataBytes, ' in all')
}
/** What the agents' dispatches carry to them: metadata and attributes, counted against one bound. */
const agentPayloadBytes = (agents: RoomAgentDispatch[]) =>
  agents.reduce((sum, agent) => sum + Buffer.byteLength(agent.metadata) + attributesBytes(agent.attributes), 0)

// ---- Token requests, answered -------------------------------------------------------------------------------------
// Admitted (authenticated, rate-limited) before the body is read, then checked, decided and signed.

type ReadBody = ReturnType<typeof createBodyReader>
function createTokenRoute(
  config: Config, decide: TokenDecider, state: SharedState, readBody: ReadBody, metrics: Metrics,
) {
  const mintToken = createTokenMinter(config)
  const authenticate = config.auth && createCallerAuthenticator(config.auth)
  const { tokenRateLimit, trustedProxies } = config
  const maxTokenBodyBytes = Math.min(config.maxBodyBytes, tokenBodyLimit)
  const callers = new WeakMap<Request, Caller>() // who asked for each token request, once admitted
  const standardAnswer = (token: string) => ({ server_url: config.livekitUrl, participant_token: token })

  async function admitTokenRequest(request: Request, server: BunServer): Promise<void> {
    const caller = authenticate && (await authenticate(request))
    if (caller) callers.set(request, caller)
    if (!tokenRateLimit) return
    const key = caller?.identity ?? `address:${addressKey(clientAddress(request, server, trustedProxies))}`
    const wait = await state.take(key, tokenRateLimit)
    if (wait) throw new HttpError(429, `Too many token requests, retry in ${wait} s`, { 'retry-after': String(wait) })
  }

  // The route's own parser, so that no spelling of the path (`/token/`, `/token?x`) skips admission.
  function readTokenRequest({ request, server }: { request: Request; server: BunServer }) {
    requireHostName(request)
    // Speed (the sync/async split): with nothing to admit, no promise layer around the body's.
    if (authenticate || tokenRateLimit) return admitTokenRequest(request, server).then(() => readJsonObject(request))
    return readJsonObject(request)
  }
  async function readJsonObject(request: Request): Promise<Record<string, unknown>> {
    requireJsonContentType(request)
    const body = parseJsonObject(await readBody(request, maxTokenBodyBytes, 'token', 'text'))
    metrics.tokenBodyRead(request, body)
    // Refused here, so that Elysia never builds its validation error, which pretty-prints the body.
    if (!tokenRequestValidator.Check(body)) throw new HttpError(400, describeTokenRequestError(body))
    requirePlainNames(body)
    return body
  }
  /** The identity and name a token gets: the authenticated caller's when there is one. */
  function participantFor(request: Request, identity: string | undefined, name: string | undefined) {
    const caller = callers.get(request)
    if (!caller) return { identity: identity || undefined, name }
    if (identity && identity !== caller.identity) {
      throw new HttpError(403, 'participant_identity must be the authenticated caller')
    }
    return { identity: caller.identity, name: caller.name ?? name }
  }
  function answerTokenRequest(body: OpenViduTokenRequest | StandardTokenRequest, request: Request) {
    if (isOpenViduRequest(body)) {
      const { identity = body.participantName, name } = participantFor(request, undefined, body.participantName)
      const asked: TokenAsk = { contract: 'openvidu', room: body.roomName, identity }
      return whenSettled(decidedToken(request, { identity, name }, asked), (token) => ({ token }))
    }
    const sent = standardParticipant(body)
    const { identity = sent.identity, name } = participantFor(request, body.participant_identity, sent.name)
    const room = body.room_name || undefined
    const asked: TokenAsk = { contract: 'standard', room, identity, roomConfig: sent.roomConfig }
    return whenSettled(decidedToken(request, { ...sent, identity, name }, asked), standardAnswer)
  }
  /** The token the decision grants the participant; a refusal answers 403 with its message. */
  function decidedToken(request: Request, participant: Omit<Participant, 'room'>, asked: TokenAsk) {
    return whenSettled(decide(callers.get(request), asked, config), (decision) => {
      if ('refused' in decision) {
        const by = decision.policy ? 'TOKEN_POLICY' : "the app's TokenDecider"
        log('info', 'token refused', { by, identity: asked.identity, reason: decision.refused, ...decision.policy })
        throw new HttpError(403, decision.refused)
      }
      const { room, roomConfig, grant, ttlSeconds } = decision
      return mintToken({ ...participant, room, roomConfig }, grant, ttlSeconds)
    })
  }
  return { read: readTokenRequest, answer: answerTokenRequest }
}

/** Speed (the sync/async split): `next` applied at once to a value, after it to a promise. */
function whenSettled<T, U>(value: T | Promise<T>, next: (value: T) => U): U | Promise<U> {
  return value instanceof Promise ? value.then(next) : next(value)
}

// ==== Token policy =================================================================================================
// Applying a parsed TOKEN_POLICY to a request; reading it follows.

/** A role, ready: its roomConfig is the top-level one with the role's own over it, its agents' bytes counted. */
type PolicyRole = {
  name: string; rooms: RoomPattern[]; grant: TokenGrant; agents: Set<string> | 'any'; ttlSeconds: number
  roomConfig?: RoomConfiguration; hasOwnRoomConfig: boolean; agentMetadataBytes: number
}
/** A parsed TOKEN_POLICY, ready for requests: the roles claim by its full name and as a dotted path; roles in order. */
export type TokenPolicy = { rolesClaim: string; rolesPath: string[]; roles: PolicyRole[]; defaultRole?: PolicyRole }

/** Speed (the glob matcher): a room pattern as the runs of text between its `*`s, matched without a RegExp. */
type RoomPattern = { runs: (string | RunPiece[])[] }
type RunPiece = string | { claim: string; path: string[] }
type Claims = Record<string, unknown> | undefined
// A claim used in a room name: the characters of ids, emails, Auth0's "auth0|…" subjects; any other delimits one.
const claimCharacter = '[\\w.@|:+=-]'
const roomPiece = new RegExp(`^${claimCharacter}{1,128}$`)
// With each {claim} written "{}": one next to a `*` or another {claim}, only claim characters between (not delimited).
const undelimitedClaim = new RegExp(`\\{\\}${claimCharacter}*[{*]|\\*${claimCharacter}*\\{`)

function applyTokenPolicy(policy: TokenPolicy, claims: Claims, asked: TokenAsk): TokenDecision {
  const roles = callerRoles(policy, claims)
  const deny = (refused: string, missing?: string): TokenDecision =>
    ({ refused, policy: { roles: roles.map((role) => role.name), missing } })
  const lacking = () => missingClaims(roles, claims)
  if (!roles.length) return deny('The token policy gives this caller no role', `a role in claim ${policy.rolesClaim}`)
  const room = asked.room ?? roomToMake(roles, claims)
  const noRoom = 'room_name is required: the token policy makes no room for this caller'
  if (room === undefined) return deny(noRoom, lacking())
  const allowing = roles.filter((role) => role.rooms.some((pattern) => roomMatches(room, pattern, claims)))
  if (allowing.length === 0) return deny(`Room "${room}" is not one this caller may join`, lacking())
  for (const agent of asked.roomConfig?.agents ?? []) {
    if (allowing.some((role) => mayDispatch(role, agent))) continue
    const name = agentKey(agent)
    const missing = `a role allowing room "${room}" and agent "${name}"`
    return deny(`Agent "${name}" is not one this caller may dispatch`, missing)
  }
  const [first] = allowing as [PolicyRole]
  const roomConfigRole = allowing.find((role) => role.hasOwnRoomConfig) ?? first
  const roomConfig = withAgents(roomConfigRole, asked.roomConfig)
  if (typeof roomConfig === 'string') return deny(roomConfig)
  if (allowing.length === 1) return { room, grant: first.grant, ttlSeconds: first.ttlSeconds, roomConfig }
  const ttlSeconds = Math.max(...allowing.map((role) => role.ttlSeconds))
  return { room, grant: unionOfGrants(allowing), ttlSeconds, roomConfig }
}

/** "agent" allows that agent on its default deployment, "agent@deployment" on that one, "agent@*" on any. */
const agentKey = ({ agentName, deployment }: RoomAgentDispatch) =>
  deployment ? `${agentName}@${deployment}` : agentName
const mayDispatch = ({ agents }: PolicyRole, agent: RoomAgentDispatch) =>
  agents === 'any' || agents.has(agentKey(agent)) || agents.has(`${agent.agentName}@*`)

/** The claims the caller's room patterns name that its ID token lacks (or holds as no room-name piece). */
function missingClaims(roles: PolicyRole[], claims: Claims): string | undefined {
  const names = new Set<string>()
  for (const piece of roles.flatMap((role) => role.rooms.flatMap(({ runs }) => runs.flat()))) {
    if (typeof piece !== 'string' && runText([piece], claims) === undefined) names.add(piece.claim)
  }
  return names.size > 0 ? `claim ${[...names].join(', ')}` : undefined
}

/** The policy's roles the caller's roles claim names, in the policy's order; else the default role. */
function callerRoles(policy: TokenPolicy, claims: Claims): PolicyRole[] {
  const value = claims && claimAt(claims, policy.rolesClaim, policy.rolesPath)
  const names = typeof value === 'string' ? [value] : Array.isArray(value) ? value : []
  const roles = names.length > 0 ? policy.roles.filter((role) => names.includes(role.name)) : []
  return roles.length > 0 ? roles : policy.defaultRole ? [policy.defaultRole] : []
}

/** A claim by its full name (Auth0's "https://my-app.com/roles"), else by path (Keycloak's "realm_access.roles"). */
function claimAt(claims: Record<string, unknown>, name: string, path: string[]): unknown {
  if (Object.hasOwn(claims, name)) return claims[name]
  const step = (node: unknown, key: string) => (isJsonObject(node) && Object.hasOwn(node, key) ? node[key] : undefined)
  return path.reduce(step, claims as unknown)
}

/** Without room_name: the first of the caller's patterns naming one room, else a random room if one is allowed. */
function roomToMake(roles: PolicyRole[], claims: Claims): string | undefined {
  for (const { runs } of roles.flatMap((role) => role.rooms)) {
    const room = runs.length === 1 ? runText(runs[0]!, claims) : undefined
    if (room !== undefined) return room
  }
  const random = `room-${randomSuffix()}`
  return roles.some((role) => role.rooms.some((pattern) => roomMatches(random, pattern, claims))) ? random : undefined
}

/** A run with the caller's claims put in; undefined when one is missing or no room-name piece. */
function runText(run: string | RunPiece[], claims: Claims): string | undefined {
  if (typeof run === 'string') return run
  let text = ''
  for (const piece of run) {
    const value = typeof piece === 'string' ? piece : claims && claimAt(claims, piece.claim, piece.path)
    if (typeof value !== 'string' || (typeof piece !== 'string' && !roomPiece.test(value))) return undefined
    text += value
  }
  return text
}

function roomMatches(room: string, { runs }: RoomPattern, claims: Claims): boolean {
  const first = runText(runs[0]!, claims)
  if (first === undefined || !room.startsWith(first)) return false
  if (runs.length === 1) return room === first
  const last = runText(runs[runs.length - 1]!, claims)
  const end = room.length - (last?.length ?? 0)
  if (last === undefined || end < first.length || !room.endsWith(last)) return false
  let at = first.length
  for (let i = 1; i < runs.length - 1; i++) {
    const text = runText(runs[i]!, claims)
    const found = text === undefined ? -1 : room.indexOf(text, at)
    if (found < 0 || found + text!.length > end) return false
    at = found + text!.length
  }
  return true
}

/** Every role's grant together; canPublishSources limits publishing only if every publishing role limits it. */
function unionOfGrants(roles: PolicyRole[]): TokenGrant {
  const grant: Record<string, unknown> = {}
  for (const role of roles) for (const [key, value] of Object.entries(role.grant)) grant[key] ||= value
  const publishing = roles.filter((role) => role.grant.canPublish)
  delete grant.canPublishSources
  if (publishing.length > 0 && publishing.every((role) => role.grant.canPublishSources)) {
    grant.canPublishSources = [...new Set(publishing.flatMap((role) => role.grant.canPublishSources!))]
  }
  return grant as TokenGrant
}

/** The role's room settings with the agents the client asked for added, within the bounds a client has alone. */
function withAgents(role: PolicyRole, asked: RoomConfiguration | undefined): RoomConfiguration | undefined | string {
  if (!asked || asked.agents.length === 0) return role.roomConfig ?? asked
  if (!role.roomConfig) return asked
  const own = role.roomConfig.agents.length
  if (own + asked.agents.length > maxAgents) {
    return `room_config may request at most ${maxAgents - own} agents besides the ${own} the server dispatches`
  }
  const metadataBytes = role.agentMetadataBytes + agentPayloadBytes(asked.agents)
  if (metadataBytes > maxAgentMetadataBytes) return `room_config agent ${agentBytesBound}, with the server's`
  const roomConfig = role.roomConfig.clone()
  roomConfig.agents.push(...asked.agents)
  return roomConfig
}

// ---- Token policy, read -------------------------------------------------------------------------------------------
// Read once at start: every mistake is a ConfigError naming its place in the JSON.

const trackSourceNames = ['camera', 'microphone', 'screen_share', 'screen_share_audio'] as const
const trackSource = (name: string) => TrackSource[name.toUpperCase() as keyof typeof TrackSource]
const maxRoles = 256
const maxPatterns = 256
const agentBytesBound = `metadata and attributes must be at most ${maxAgentMetadataBytes} bytes in all`

/** The policy's JSON Schema, built only when there is a policy to check. */
function tokenPolicySchema() {
  const closed = (notA: string) => ({ additionalProperties: false, notA })
  const name = (error: string, minLength = 0) => t.String({ minLength, maxLength: maxNameLength, error })
  const source = t.UnionEnum(trackSourceNames, { error: `must be one of ${trackSourceNames.join(', ')}` })
  const sources = t.Optional(t.Array(source, { maxItems: 4 }))
  const boolean = t.Optional(t.Boolean({ error: 'must be true or false' }))
  const grants = t.Object(
    Object.fromEntries(grantNames.map((grant) => [grant, grant === 'canPublishSources' ? sources : boolean])),
    closed(`a grant (the grants: ${grantNames.join(', ')})`),
  )
  const roomConfig = t.Optional(t.Record(t.String(), t.Unknown(), { error: 'must be a RoomConfiguration object' }))
  const patterns = { minItems: 1, maxItems: maxPatterns, error: `must be a list of 1 to ${maxPatterns} room patterns` }
  const role = t.Object(
    {
      rooms: t.Array(name(`must be a room pattern of 1 to ${maxNameLength} characters`, 1), patterns),
      grants: t.Optional(grants),
      agents: t.Optional(t.Array(name('must be an agent name, or "*"'), { maxItems: maxPatterns })),
      ttl: t.Optional(t.String({ error: 'must be a duration such as 600, 10m or 6h' })),
      roomConfig,
    },
    closed('a role setting (rooms, grants, agents, ttl, roomConfig)'),
  )
  const roles = { minProperties: 1, maxProperties: maxRoles, error: `must be an object of 1 to ${maxRoles} roles` }
  return t.Object(
    {
      rolesClaim: t.Optional(name('must be the name of a claim', 1)),
      defaultRole: t.Optional(t.String({ error: 'must be the name of a role' })),
      roles: t.Record(t.String(), role, roles),
      roomConfig,
    },
    { ...closed('a policy setting (rolesClaim, defaultRole, roles, roomConfig)'), error: 'must be a JSON object' },
  )
}
type TokenPolicyJson = ReturnType<typeof tokenPolicySchema>['static']
type RoleJson = TokenPolicyJson['roles'][string]

const policyError = (at: string, problem: string) => new ConfigError(`TOKEN_POLICY: ${at ? `${at} ` : ''}${problem}`)

/** TOKEN_POLICY (or the file TOKEN_POLICY_FILE names), checked and made ready for requests; undefined when unset. */
function parseTokenPolicy(text: string | undefined, defaultTtl: number): TokenPolicy | undefined {
  if (text === undefined) return undefined
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (error) {
    throw policyError('', `is not JSON (${(error as Error).message})`)
  }
  const validator = getSchemaValidator(tokenPolicySchema())
  if (!validator.Check(json)) throw describePolicyError([...validator.Errors(json)])
  const policy = json as TokenPolicyJson
  const topConfig = policy.roomConfig && parsePolicyRoomConfig(policy.roomConfig, 'roomConfig')
  const roles = Object.entries(policy.roles).map(([name, role]) => parsePolicyRole(name, role, defaultTtl, topConfig))
  const defaultRole = roles.find((role) => role.name === policy.defaultRole)
  if (policy.defaultRole !== undefined && !defaultRole) {
    const names = roles.map((role) => role.name).join(', ')
    throw policyError('defaultRole', `"${policy.defaultRole}" is not one of the roles (${names})`)
  }
  const rolesClaim = policy.rolesClaim ?? 'roles'
  return { rolesClaim, rolesPath: rolesClaim.split('.'), roles, defaultRole }
}

/** The schema's complaint, where it is; a misspelt key first (it says more than the required key it leaves out). */
function describePolicyError(errors: ValueError[]): ConfigError {
  const first = errors.find((error) => error.type === ValueErrorType.ObjectAdditionalProperties) ?? errors[0]!
  const where = first.path.slice(1).split('/').map((key) => key.replaceAll('~1', '/').replaceAll('~0', '~')).join('.')
  const { notA, error } = first.schema as { notA?: string; error?: unknown }
  if (first.type === ValueErrorType.ObjectAdditionalProperties) return policyError(where, `is not ${notA}`)
  if (first.type === ValueErrorType.ObjectRequiredProperty) return policyError(where, 'is required')
  return policyError(where, typeof error === 'string' ? error : first.message)
}

function parsePolicyRole(name: string, role: RoleJson, defaultTtl: number, topConfig?: RoomConfiguration): PolicyRole {
  const at = `roles.${name}`
  if (!name.trim()) throw policyError('roles', 'has a role with an empty name')
  const rooms = role.rooms.map((pattern, i) => parseRoomPattern(pattern, `${at}.rooms.${i}`))
  const ttlSeconds = role.ttl === undefined ? defaultTtl : duration('', '').read(role.ttl, `TOKEN_POLICY: ${at}.ttl`)
  const own = role.roomConfig && parsePolicyRoomConfig(role.roomConfig, `${at}.roomConfig`)
  const both = own && topConfig && { ...(topConfig.toJson() as object), ...(own.toJson() as object) }
  const roomConfig = both ? RoomConfiguration.fromJson(both) : (own ?? topConfig)
  return {
    name,
    rooms,
    grant: roleGrant(role.grants ?? {}, at),
    agents: role.agents?.includes('*') ? 'any' : new Set(role.agents),
    ttlSeconds,
    roomConfig: roomConfig && shareRoomConfig(roomConfig),
    hasOwnRoomConfig: own !== undefined,
    agentMetadataBytes: roomConfig ? agentPayloadBytes(roomConfig.agents) : 0,
  }
}

/** The role's grant as it goes into tokens: the three grants LiveKit defaults to true always written out. */
function roleGrant(grants: Record<string, unknown>, at: string): TokenGrant {
  const { canPublish = false, canSubscribe = false, canPublishData = false, canPublishSources, ...others } = grants
  if (canPublishSources && !canPublish) throw policyError(`${at}.grants.canPublishSources`, 'needs canPublish: true')
  const grant: Record<string, unknown> = { canPublish, canSubscribe, canPublishData }
  if (canPublishSources) grant.canPublishSources = [...new Set(canPublishSources as string[])].map(trackSource)
  for (const [key, value] of Object.entries(others)) if (value) grant[key] = true
  return grant as TokenGrant
}

/** "team-{org}/*": text, `*` (any run of characters) and `{claim}`s (a claim's name or dotted path). */
function parseRoomPattern(pattern: string, at: string): RoomPattern {
  const fault = (problem: string) => policyError(at, `"${pattern}" ${problem}`)
  for (const run of pattern.split('*')) {
    if (/\{\s*\}/.test(run)) throw fault('has an empty {}')
    if (/[{}]/.test(run.replace(/\{[^{}]*\}/g, ''))) throw fault('has a { or } that opens or closes no {claim}')
  }
  if (undelimitedClaim.test(pattern.replace(/\{[^{}]*\}/g, '{}'))) { // docs/token-policy.md
    throw fault(
      `lets one claim's rooms be another's: a {claim} next to a * or another {claim} needs a character no claim ` +
        `holds between them, such as "/" ("team-{org}/*" rather than "team-{org}-*"); see docs/token-policy.md`,
    )
  }
  const toPiece = ([text, claim]: RegExpExecArray): RunPiece => (claim ? { claim, path: claim.split('.') } : text)
  const toRun = (run: string) => (run.includes('{') ? [...run.matchAll(/\{([^{}]*)\}|[^{}]+/g)].map(toPiece) : run)
  return { runs: pattern.split('*').map(toRun) }
}

/** A LiveKit RoomConfiguration, strictly: an unknown field is a mistake, not something to drop. */
function parsePolicyRoomConfig(json: Record<string, unknown>, at: string): RoomConfiguration {
  let roomConfig: RoomConfiguration
  try {
    roomConfig = RoomConfiguration.fromJson(json as never)
  } catch (error) {
    throw policyError(at, `is not a RoomConfiguration: ${(error as Error).message}`)
  }
  if (roomConfig.name) throw policyError(`${at}.name`, "is the request's to say, not the policy's")
  if (roomConfig.agents.length > maxAgents) throw policyError(`${at}.agents`, `may list at most ${maxAgents} agents`)
  if (agentPayloadBytes(roomConfig.agents) > maxAgentMetadataBytes) throw policyError(`${at}.agents`, agentBytesBound)
  return roomConfig
}

// ==== Tokens =======================================================================================================
// The SDK says what the claims are (claimsToJwtPayload); signing is one HMAC with a key prepared once.

const base64url = (text: string) => Buffer.from(text).toString('base64url')
// The header LiveKit's own Go minter writes.
const jwtHeader = base64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))

// Speed (the shared room_config): a role's settings serialised once, and frozen so that the copy stays true.
const sharedRoomConfigClaims = new WeakMap<RoomConfiguration, RoomConfigClaim>()
type RoomConfigClaim = ReturnType<RoomConfiguration['toJson']>

function shareRoomConfig(roomConfig: RoomConfiguration): RoomConfiguration {
  sharedRoomConfigClaims.set(roomConfig, roomConfig.toJson())
  return deepFreeze(roomConfig)
}

/** The room settings' JSON without the fields at their defaults (LiveKit reads them as absent); none if that is {}. */
function roomConfigClaim(roomConfig: RoomConfiguration | undefined): RoomConfigClaim | undefined {
  const claim = roomConfig && (sharedRoomConfigClaims.get(roomConfig) ?? roomConfig.toJson())
  return isJsonObject(claim) && Object.keys(claim).length === 0 ? undefined : claim
}

function deepFreeze<T>(value: T): T {
  // Typed arrays (bytes fields) cannot be frozen.
  if (typeof value !== 'object' || value === null || Object.isFrozen(value) || ArrayBuffer.isView(value)) return value
  Object.freeze(value)
  for (const field of Object.values(value)) deepFreeze(field)
  return value
}

export function createTokenMinter(config: Config) {
  const sign = runtime.hmacSha256(config.apiSecret)
  return function mintToken(participant: Participant, grant = fullGrant, ttlSeconds = config.tokenTtlSeconds): string {
    const { name, metadata, attributes, room, identity, roomConfig } = participant
    const now = Math.floor(Date.now() / 1000)
    // Join this one room, and what the token policy grants there (by default publish, subscribe, send data).
    const grants: ClaimGrants = { name, metadata, attributes, video: { roomJoin: true, room, ...grant } }
    const claims = {
      ...claimsToJwtPayload(grants),
      roomConfig: roomConfigClaim(roomConfig),
      iss: config.apiKey,
      sub: identity,
      nbf: now,
      exp: now + ttlSeconds,
    }
    const signingInput = `${jwtHeader}.${base64url(JSON.stringify(claims))}`
    return `${signingInput}.${sign(signingInput).digest('base64url')}`
  }
}

// ==== Callers ======================================================================================================
// Who may ask for a token (AUTH_JWKS_URL), how often (TOKEN_RATE_LIMIT), from which address.

export interface Caller {
  identity: string
  name?: string
  /** The verified ID token's claims, where the token policy finds roles and {claim}s. */
  claims: JWTPayload
}

// Identity providers sign ID tokens with public-key algorithms; an HMAC "alg" here would be an attack.
const asymmetricAlgorithms = 'RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 ES512 EdDSA Ed25519'.split(' ')
// The key set could not be fetched (down, slow, not a JWKS), as opposed to a bad token; so are fetch's own errors.
const providerFailures = [joseErrors.JWKSTimeout.code, joseErrors.JWKSInvalid.code, 'ERR_JOSE_GENERIC']

/** Checks the caller's bearer token against the identity provider's published keys (JWKS). */
export function createCallerAuthenticator(auth: AuthConfig) {
  // Cached; refetched on an unknown key id (key rotation), at most every 5 s; a slow provider given up after 3 s.
  const keySet = createRemoteJWKSet(auth.jwksUrl, { timeoutDuration: 3000, cooldownDuration: 5000 })
  const { issuer, audience } = auth
  // exp required: an ID token without an expiry would be good forever once leaked.
  const verifying = { algorithms: asymmetricAlgorithms, issuer, audience, requiredClaims: ['exp'], clockTolerance: 30 }
  const refused = (reason: string) => {
    log('warn', 'token request refused', { reason })
    return new HttpError(401, 'A valid bearer token is required', { 'www-authenticate': 'Bearer' })
  }

  return async function authenticate(request: Request): Promise<Caller> {
    const bearer = /^Bearer +([\w-]+\.[\w-]+\.[\w-]+) *$/i.exec(request.headers.get('authorization') ?? '')
    if (!bearer) throw refused('no bearer token')
    const { payload } = await jwtVerify(bearer[1]!, keySet, verifying).catch((error: unknown) => {
      if (error instanceof joseErrors.JOSEError && !providerFailures.includes(error.code)) throw refused(String(error))
      log('error', 'identity provider unavailable', { reason: String(error) })
      throw new HttpError(503, 'The identity provider is unavailable, try again shortly', { 'retry-after': '5' })
    })
    const identity = payload[auth.identityClaim]
    if (typeof identity !== 'string' || !identity || identity.length > maxNameLength || !isPlainText(identity)) {
      throw refused(`claim ${auth.identityClaim} is not an identity`)
    }
    // Providers let users set an address they do not own: only a verified one names someone.
    if (auth.identityClaim === 'email' && payload.email_verified !== true) throw refused('email_verified is not true')
    return { identity, name: displayName(payload.name), claims: payload }
  }
}

/** An ID token's name as a display name: cut at the bound on a whole character; none if it is not plain text. */
function displayName(name: unknown): string | undefined {
  if (typeof name !== 'string' || !isPlainText(name)) return undefined
  const cut = name.length > maxNameLength ? name.slice(0, maxNameLength).replace(/[\uD800-\uDBFF]$/, '') : name
  return cut || undefined
}

/** A token bucket per caller, refilled continuously; at most `maxCallers` remembered, idle ones forgotten. */
export class RateLimiter {
  private readonly buckets = new Map<string, { allowance: number; at: number }>()
  private sweptAt = 0

  constructor(
    private readonly perMinute: number,
    private readonly maxCallers = 100_000,
  ) {}

  get callerCount(): number {
    return this.buckets.size
  }

  /** Takes one request from the caller's allowance; returns 0, or the seconds to wait for one. */
  take(caller: string, now = Date.now()): number {
    const refillPerMs = this.perMinute / 60_000
    const bucket = this.buckets.get(caller)
    const allowance = Math.min(this.perMinute, bucket ? bucket.allowance + (now - bucket.at) * refillPerMs : Infinity)
    if (allowance < 1) return Math.ceil((1 - allowance) / refillPerMs / 1000)
    this.buckets.set(caller, { allowance: allowance - 1, at: now })
    if (this.buckets.size > this.maxCallers || now - this.sweptAt >= 60_000) this.sweep(now)
    return 0
  }

  /** Forgets idle callers (full again anyway), then the longest-known down to 90%, so not every request sweeps. */
  private sweep(now: number): void {
    this.sweptAt = now
    for (const [caller, { at }] of this.buckets) if (now - at >= 60_000) this.buckets.delete(caller)
    for (const caller of this.buckets.keys()) {
      if (this.buckets.size <= this.maxCallers * 0.9) break
      this.buckets.delete(caller)
    }
  }
}

/** The client's address: the connection's, or behind N trusted proxies the X-Forwarded-For hop N from the right. */
function clientAddress(request: Request, server: BunServer, trustedProxies: number): string {
  const connectionAddress = unmapped(runtime.connectingAddress(request, server) ?? 'unknown')
  if (trustedProxies === 0) return connectionAddress
  const hop = withoutPort(request.headers.get('x-forwarded-for')?.split(',').at(-trustedProxies)?.trim() ?? '')
  // Only a real address: it becomes a rate-limit key, so nothing long or made-up.
  return isIP(hop) ? unmapped(hop) : connectionAddress
}

/** A hop as some proxies write it, with a port ("203.0.113.7:5678", "[2001:db8::1]:443"), without it. */
function withoutPort(hop: string): string {
  const withPort = /^\[([^\]]+)\](?::\d+)?$|^(\d+\.\d+\.\d+\.\d+):\d+$/.exec(hop)
  return withPort ? (withPort[1] ?? withPort[2])! : hop
}

/** An IPv4 client as "1.2.3.4" on every runtime: Bun, listening on IPv6 too, sees "::ffff:1.2.3.4". */
const unmapped = (ip: string) => (ip.startsWith('::ffff:') && isIP(ip.slice(7)) === 4 ? ip.slice(7) : ip)

/** Whom an address counts as: IPv4 by address, IPv6 by its /64 (one home's or host's: else 2^64 allowances). */
function addressKey(address: string): string {
  if (isIP(address) !== 6) return address
  // The URL parser writes every spelling of an address one way (zeros compressed, IPv4 tails in hex).
  const hostname = URL.parse(`http://[${address.replace(/%.*$/, '')}]`)?.hostname
  if (!hostname) return address
  const [head, tail] = hostname.slice(1, -1).split('::').map((part) => (part ? part.split(':') : []))
  const groups = tail ? [...head!, ...Array(8 - head!.length - tail.length).fill('0'), ...tail] : head!
  return `${groups.slice(0, 4).join(':')}::/64`
}

// ==== Webhooks =====================================================================================================
// Verified before anything else is done with them, each event handled once.

// LiveKit's event ids are some 20 characters ("EV_…"), its names fewer than 32.
const maxEventIdLength = 256
const isEventId = (text: string) => text.length <= maxEventIdLength && isPlainText(text)

function createWebhookRoute(
  config: Config, handlers: Handlers, state: SharedState, events: EventStream | undefined,
  readBody: ReadBody, metrics: Metrics,
) {
  const verifyWebhookSigner = createWebhookSignerVerifier(config)
  // Own entries only: an event named "__proto__" or "valueOf" must not find Object.prototype's.
  const handlerFor = (name: string) => (Object.hasOwn(handlers, name) ? handlers[name]! : logUnknownEvent)
  return async function receiveWebhook(request: Request) {
    requireHostName(request)
    let event: EventView, handle: () => void | Promise<void>, body: Uint8Array
    try {
      const claims = verifyWebhookSigner(request.headers.get('authorization'))
      // The signature covers the exact bytes, so read them raw whatever the Content-Type says.
      body = await readBody(request, config.maxBodyBytes, 'webhook', 'bytes')
      const json = verifiedJson(body, claims)
      // Speed (the event view): a built-in handler logs the JSON as it is; an app's own gets the decoded event.
      const view = plainEventView(json)
      const logs = view && logsAView(handlerFor(view.event))
      if (view && logs) [event, handle] = [view, () => logs(view)]
      else {
        const decoded = decodeEvent(json)
        ;[event, handle] = [decoded, () => handlerFor(decoded.event)(decoded)]
      }
    } catch (error) {
      if (error instanceof HttpError) throw error
      log('warn', 'webhook refused', { reason: (error as Error).message })
      return status(401, errorBody('Webhook signature is missing or invalid'))
    }
    // Names and ids are remembered (in memory, Redis, the stream) and logged: being signed makes no text plain.
    if (!isEventId(event.event) || !isEventId(event.id)) {
      const lengths = { eventLength: event.event.length, idLength: event.id.length }
      log('warn', 'webhook refused: its event name or id is no name or id', lengths)
      const message = `Webhook event names and ids must be plain text of at most ${maxEventIdLength} characters`
      return status(400, errorBody(message))
    }
    // An event waiting in the outbox is handled: its redelivery must not run the handlers again.
    const claim = event.id ? (events?.holds(event.id) ? 'handled' : await state.claim(event.id)) : 'new'
    metrics.webhookClaimed(request, event, claim)
    if (claim === 'handled') {
      log('info', 'webhook duplicate', describeEvent(event))
      return { received: 'duplicate' as const }
    }
    if (claim === 'being handled') {
      // Never a 200 while another process (or request) handles it: that one may still fail.
      log('info', 'webhook being handled elsewhere', describeEvent(event))
      throw new HttpError(503, 'This event is being handled, retry shortly', { 'retry-after': '5' })
    }
    try {
      await handle()
    } catch (error) {
      // Release the id so that LiveKit's redelivery of this event is handled.
      if (event.id) await state.release(event.id)
      log('error', 'webhook handler failed', { ...describeEvent(event), error: String(error) })
      return status(500, errorBody('Webhook handler failed'))
    }
    if (events) return events.append(event, body)
    if (event.id) await state.complete(event.id)
    return { received: true as const }
  }
}

// ---- Webhooks, verified -------------------------------------------------------------------------------------------
// LiveKit's signature checked by hand (tests/fast-path.test.ts holds it to the SDK's), the event read from the body.

/** Verifies a webhook as the SDK's WebhookReceiver does, synchronously and for HS256 (what LiveKit signs with) only. */
export function createWebhookVerifier(config: Config) {
  const verifySigner = createWebhookSignerVerifier(config)
  return (body: Uint8Array, auth: string | null) => decodeEvent(verifiedJson(body, verifySigner(auth)))
}

// The Authorization header's claims, checked as jose does, before the body: only an API secret's holder gets it read.
export function createWebhookSignerVerifier(config: Config) {
  // The JWT's issuer (its API key) picks the secret, as LiveKit's own server does.
  const signers = new Map([...config.keys].map(([apiKey, apiSecret]) => [apiKey, runtime.hmacSha256(apiSecret)]))
  // Speed (the header cache): the headers already found plain; LiveKit writes the same one every time.
  const plainHeaders = new Set<string>()
  return function verifySigner(authorization: string | null): WebhookClaims {
    if (!authorization) throw new Error('authorization header is empty')
    const segments = authorization.split('.')
    if (segments.length !== 3 || !segments.every(isBase64url)) throw new Error('authorization header is not a JWT')
    const [header, claims, signature] = segments as [string, string, string]
    if (!plainHeaders.has(header)) {
      const { alg, crit } = jsonObjectFrom(header, 'header')
      // No extension is understood here, so none may be critical (RFC 7515, 4.1.11).
      if (alg !== 'HS256' || crit !== undefined) throw new Error('JWT must be signed with HS256 and nothing else')
      if (plainHeaders.size < 16) plainHeaders.add(header)
    }
    const payload = jsonObjectFrom(claims, 'claims')
    const sign = typeof payload.iss === 'string' ? signers.get(payload.iss) : undefined
    if (!sign) throw new Error('JWT iss must be a known API key')
    const expected = sign(`${header}.${claims}`).digest()
    if (!sameBytes(Buffer.from(signature, 'base64url'), expected)) throw new Error('JWT signature does not verify')
    requireCurrent(payload)
    return payload
  }
}

const clockToleranceSeconds = 10
const isOptionalNumber = (claim: unknown) => claim === undefined || typeof claim === 'number'
// Base64url as LiveKit writes it: no padding, no whitespace, no standard-base64 characters.
const isBase64url = (segment: string) => /^[\w-]+$/.test(segment)
const sameBytes = (a: Buffer, b: Buffer) => a.length === b.length && timingSafeEqual(a, b) // in constant time

function jsonObjectFrom(segment: string, what: string): Record<string, unknown> {
  const refusal = (isJson: boolean) => new Error(`JWT ${what} is not ${isJson ? 'a JSON object' : 'JSON'}`)
  return jsonObjectIn(Buffer.from(segment, 'base64url').toString(), refusal)
}

/** exp required, and with nbf and iat numbers of seconds; exp and nbf checked with 10 s to spare, as jose does. */
function requireCurrent({ exp, nbf, iat }: Record<string, unknown>): void {
  const now = Math.floor(Date.now() / 1000)
  if (typeof exp !== 'number' || !isOptionalNumber(nbf) || !isOptionalNumber(iat)) {
    throw new Error('JWT exp must be a number, and nbf and iat numbers when present')
  }
  if (exp <= now - clockToleranceSeconds) throw new Error('JWT has expired')
  if (typeof nbf === 'number' && nbf > now + clockToleranceSeconds) throw new Error('JWT is not valid yet')
}

type WebhookClaims = { sha256?: unknown }
/** The JSON of a webhook body, once its SHA-256 matches the one the signed claims carry. */
function verifiedJson(body: Uint8Array, claims: WebhookClaims): unknown {
  const expected = Buffer.from(createHash('sha256').update(body).digest('base64'))
  const signed = Buffer.from(typeof claims.sha256 === 'string' ? claims.sha256 : '')
  if (!sameBytes(signed, expected)) throw new Error('sha256 checksum of body does not match')
  return JSON.parse(utf8.decode(body))
}

const decodeEvent = (json: unknown) => WebhookEvent.fromJson(json as never, { ignoreUnknownFields: true })
/** The built-in handler, when it is one: they read no more than an EventView. */
const logsAView = (handler: WebhookHandler) =>
  handler === logEvent ? logEvent : handler === logUnknownEvent ? logUnknownEvent : undefined

/** An event as the server itself reads it (ids, log line, metrics, stream), in WebhookEvent's field names. */
export type EventView = Pick<WebhookEvent, 'event' | 'id'> & {
  createdAt?: unknown; room?: { name?: string }; participant?: { identity?: string }; track?: { sid?: string }
  egressInfo?: { roomName?: string; egressId?: string }; ingressInfo?: { roomName?: string; ingressId?: string }
  job?: { id?: string; agentName?: string; room?: { name?: string } }
}

// The parts an EventView reads, each with its string fields and their other spellings in proto3 JSON, which only
// a whole decoding reads right (docs/design.md); then the event's own, and `job`: an agent event is decoded whole.
const viewedParts: [part: string, fields: string[], otherSpellings: string[]][] = [
  ['room', ['name'], []], ['participant', ['identity'], []], ['track', ['sid'], []],
  ['egressInfo', ['roomName', 'egressId'], ['room_name', 'egress_id']],
  ['ingressInfo', ['roomName', 'ingressId'], ['room_name', 'ingress_id']],
]
const otherEventSpellings = ['created_at', 'egress_info', 'ingress_info', 'job']
// A decimal createdAt that an int64 holds: past it, a whole decoding refuses the event, and so must the view.
const isInt64Text = (text: unknown) =>
  typeof text === 'string' && /^(0|[1-9]\d{0,18})$/.test(text) && BigInt(text) <= 9223372036854775807n

/** The JSON itself as an EventView when it plainly is one, as LiveKit writes it; else undefined (decoded whole). */
function plainEventView(json: unknown): EventView | undefined {
  if (!isJsonObject(json) || typeof json.event !== 'string' || typeof json.id !== 'string') return undefined
  if (json.createdAt !== undefined && !isInt64Text(json.createdAt)) return undefined
  if (otherEventSpellings.some((name) => Object.hasOwn(json, name))) return undefined
  for (const [part, fields, otherSpellings] of viewedParts) {
    const value = json[part]
    if (value === undefined) continue
    if (!isJsonObject(value) || otherSpellings.some((name) => Object.hasOwn(value, name))) return undefined
    if (fields.some((field) => value[field] !== undefined && typeof value[field] !== 'string')) return undefined
  }
  return json as EventView
}

// ---- Handled ids --------------------------------------------------------------------------------------------------
// In this process's memory: what the shared state falls back to, and all it uses without Redis.

type MaybePromise<T> = T | Promise<T>
/** What claiming an event id finds: a new event, one handled already, or one being handled now. */
export type Claim = 'new' | 'handled' | 'being handled'
const claimTtlMs = 30_000 // how long a claim holds while its handler runs: past that, its process is taken for dead
const handledTtlMs = 10 * 60_000

/** Event ids being handled or handled, the newest 10,000 for 10 minutes: LiveKit redelivers, and can repeat. */
export class RecentIds {
  // A ring of slots (docs/design.md), each holding an id, when it was last claimed or handled, and which.
  private readonly slotOf = new Map<string, number>()
  private readonly ids: (string | undefined)[]
  private readonly times: Float64Array
  private readonly handled: Uint8Array
  private nextSlot = 0

  constructor(capacity = 10_000, private readonly ttlMs = handledTtlMs) {
    ;[this.ids, this.times, this.handled] = [new Array(capacity), new Float64Array(capacity), new Uint8Array(capacity)]
  }

  /** Claims the id for handling, unless it is handled already or claimed and not yet expired. */
  claim(id: string, now = Date.now()): Claim {
    const slot = this.slotOf.get(id)
    if (slot !== undefined) {
      const age = now - this.times[slot]!
      if (this.handled[slot] && age < this.ttlMs) return 'handled'
      if (!this.handled[slot] && age < claimTtlMs) return 'being handled'
    }
    this.remember(id, now, false)
    return 'new'
  }

  complete(id: string, now = Date.now()): void { this.remember(id, now, true) } // remembered as handled
  release(id: string): void { this.slotOf.delete(id) } // forgotten, so that its redelivery is handled
  get size(): number { return this.slotOf.size }

  private remember(id: string, now: number, handled: boolean): void {
    let slot = this.slotOf.get(id)
    if (slot === undefined) {
      slot = this.nextSlot
      this.nextSlot = (slot + 1) % this.ids.length
      // The oldest id leaves, unless it was released and has a newer slot since.
      const evicted = this.ids[slot]
      if (evicted !== undefined && this.slotOf.get(evicted) === slot) this.slotOf.delete(evicted)
      this.ids[slot] = id
      this.slotOf.set(id, slot)
    }
    this.times[slot] = now
    this.handled[slot] = handled ? 1 : 0
  }
}

// ==== Shared state =================================================================================================
// With REDIS_URL, handled ids and callers' allowances live in Redis, shared by every process; memory when it fails.

// A token bucket, as RateLimiter keeps it, on Redis's clock so that the machines' clocks don't matter.
const takeScript = `
local perMinute = tonumber(ARGV[1])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local left, at = unpack(redis.call('HMGET', KEYS[1], 'allowance', 'at'))
local allowance = left and math.min(perMinute, tonumber(left) + (now - tonumber(at)) * perMinute / 60000) or perMinute
if allowance < 1 then return math.ceil((1 - allowance) * 60 / perMinute) end
redis.call('HSET', KEYS[1], 'allowance', tostring(allowance - 1), 'at', now)
redis.call('PEXPIRE', KEYS[1], 60000)
return 0`
// Claims an id unless it is claimed or handled already (a script: docs/design.md); a Claim, what it found.
const claimScript = `local found = redis.call('GET', KEYS[1])
if found == 'handled' then return found end
if found then return 'being handled' end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 'new'`
// Releases a claim only if it is still this one's (it may have expired and been taken since).
const releaseScript = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0`

type Memory = { ids: RecentIds; limiter?: RateLimiter }
/** Handled ids and allowances: in Redis while it answers in time, else in this process's memory. */
export class SharedState {
  // This state's claims carry its own mark, so that it only ever releases its own.
  private readonly claimMark = `claimed:${crypto.randomUUID()}`
  private redis?: RedisConnection
  private redisState: 'connecting' | 'ok' | 'unavailable' | 'not configured'
  /** Settles once the first attempt to reach Redis has ended, either way; startServer waits for it. */
  readonly connected: Promise<void>

  // keyPrefix starts every key, so that deployments sharing one Redis do not see each other's.
  constructor(private readonly memory: Memory, private readonly redisUrl?: string, private readonly keyPrefix = '') {
    this.redisState = redisUrl ? 'connecting' : 'not configured'
    this.connected = redisUrl ? this.connect(redisUrl) : Promise.resolve()
  }

  /** Whether Redis is in use, once the first attempt to connect has ended. */
  async redisStatus(): Promise<'ok' | 'unavailable'> {
    await this.connected
    return this.redisState === 'ok' ? 'ok' : 'unavailable'
  }

  claim(id: string): Promise<Claim> {
    return this.use(
      (redis) => runScript(redis, claimScript, 1, this.idKey(id), this.claimMark, String(claimTtlMs)) as Promise<Claim>,
      () => this.memory.ids.claim(id),
    )
  }

  complete(id: string): Promise<void> {
    this.memory.ids.complete(id)
    return this.alsoOnRedis((redis) => redis.send('SET', [this.idKey(id), 'handled', 'PX', String(handledTtlMs)]))
  }

  release(id: string): Promise<void> {
    this.memory.ids.release(id)
    return this.alsoOnRedis((redis) => runScript(redis, releaseScript, 1, this.idKey(id), this.claimMark))
  }

  /** Takes one token request from the caller's allowance; 0, or the seconds to wait for one. */
  take(caller: string, perMinute: number): Promise<number> {
    return this.use(
      (redis) => runScript(redis, takeScript, 1, `${this.keyPrefix}rate:${caller}`, String(perMinute)).then(Number),
      () => this.memory.limiter!.take(caller),
    )
  }

  private idKey = (id: string) => `${this.keyPrefix}webhook:${id}`
  /** What memory holds already, written to Redis too while it is in use. */
  private alsoOnRedis(onRedis: (redis: RedisConnection) => Promise<unknown>): Promise<void> {
    return this.use(async (redis) => void (await onRedis(redis)), () => {})
  }

  /** On Redis if it is in use and answers within 250 ms, else on memory. */
  private async use<T>(onRedis: (redis: RedisConnection) => Promise<T>, inMemory: () => T): Promise<T> {
    if (this.redisState === 'connecting') await this.connected
    if (this.redisState !== 'ok' || !this.redis) return inMemory()
    try {
      return await withTimeout(onRedis(this.redis), 250)
    } catch (error) {
      this.degrade(error)
      return inMemory()
    }
  }

  private async connect(url: string): Promise<void> {
    try {
      this.redis = await runtime.openRedis(url)
      await reachRedis(this.redis, 1000)
      this.redisState = 'ok'
    } catch (error) {
      this.redisState = 'unavailable'
      const fields = { redis: redactedUrl(url), error: redacted(error, url) }
      log('error', "redis unavailable at start: using this process's memory until it answers", fields)
      if (this.redis) this.watchForRecovery()
    }
  }

  private degrade(error: unknown): void {
    if (this.redisState !== 'ok') return
    this.redisState = 'unavailable'
    const reason = redacted(error, this.redisUrl!)
    log('warn', "redis unavailable: using this process's memory until it answers", { error: reason })
    this.watchForRecovery()
  }

  /** Asks Redis once a second whether it answers again; back to shared state when it does. */
  private watchForRecovery(): void {
    let asking = false
    const timer = setInterval(async () => {
      if (asking) return
      asking = true
      const answered = await reachRedis(this.redis!).then(() => true, () => false)
      asking = false
      if (!answered) return
      clearInterval(timer)
      this.redisState = 'ok'
      announce('redis available again: sharing state through it')
    }, 1000)
    timer.unref?.()
  }
}

// ---- Redis --------------------------------------------------------------------------------------------------------
// Scripts, time limits, URLs kept out of log lines: for the shared state and the stream.

const scriptHashes = new Map<string, string>()
/** EVALSHA, loading the script (EVAL) the first time or when Redis has forgotten it; the first `keys` args are keys. */
async function runScript(redis: RedisConnection, script: string, keys: number, ...args: string[]): Promise<unknown> {
  let hash = scriptHashes.get(script)
  if (hash === undefined) scriptHashes.set(script, (hash = createHash('sha1').update(script).digest('hex')))
  try {
    return await redis.send('EVALSHA', [hash, String(keys), ...args])
  } catch (error) {
    if (!String(error).includes('NOSCRIPT')) throw error
    return redis.send('EVAL', [script, String(keys), ...args])
  }
}

/** Connects (again, if it was lost) and asks for a PONG, each within its time. */
async function reachRedis(redis: RedisConnection, pingMs = 500): Promise<void> {
  await withTimeout(redis.connect(), 1000)
  await withTimeout(redis.send('PING', []), pingMs)
}

/** The promise's outcome, or an error ("no answer within …") once `ms` have passed. */
function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms)
    promise.then(resolve, reject).finally(() => clearTimeout(timer))
  })
}

/** The (valid) Redis URL without its password, for log lines. */
function redactedUrl(url: string): string {
  const parsed = new URL(url)
  if (parsed.password) parsed.password = '***'
  return parsed.href
}

/** An error's text with the URL's password masked, as written and decoded, should a client have put it there. */
function redacted(error: unknown, url: string): string {
  const password = URL.parse(url)?.password ?? ''
  let decoded = password
  try {
    decoded = decodeURIComponent(password)
  } catch {} // a "%" that escapes nothing: masked as written
  return [password, decoded].reduce((text, secret) => (secret ? text.replaceAll(secret, '***') : text), String(error))
}

// ==== Events onward ================================================================================================
// With EVENTS_STREAM, each event whose handlers succeeded goes to a Redis Stream once (one script appends it and
// marks its id handled), or while Redis does not answer to a bounded outbox, in order: a 200 means one or the other.

// KEYS: the event's dedupe key (SharedState's for its id, else one of its own), the stream; ARGV: MAXLEN, the key's
// time to live (ms), the entry's fields. XADD first, and a key already handled skips it (docs/design.md).
const appendEventScript = `if redis.call('GET', KEYS[1]) == 'handled' then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 3))
redis.call('SET', KEYS[1], 'handled', 'PX', ARGV[2])
return 1`

const maxOutboxBytes = 64 * 1024 * 1024 // the outbox's most (bodies, ids, fields), whatever EVENTS_OUTBOX says
const flushTimeoutMs = 5000 // how long the last appends may take when the server stops
type HeldEvent = { id: string; args: (string | Buffer)[]; bytes: number } // args: the script's keys and arguments

/** The stream of one app; the outbox lives in this process's memory. */
export class EventStream {
  private readonly outbox: HeldEvent[] = []
  private outboxBytes = 0
  private readonly held = new Set<string>() // the ids in the outbox
  private readonly redis: Promise<RedisConnection>
  readonly connected: Promise<unknown> // as SharedState's
  private connecting = true
  private away = false // from a failed append until the outbox is appended: one warn line an outage
  private draining?: Promise<void>
  private drainDeadline = Infinity // when the drainer gives up (the server is stopping); until then it keeps trying

  constructor(
    private readonly config: EventStreamConfig, private readonly redisUrl: string, private readonly keyPrefix: string,
    private readonly ids: RecentIds, private readonly state: SharedState,
  ) {
    this.connected = this.redis = runtime.openRedis(redisUrl).then(async (redis) => {
      await withTimeout(redis.connect(), 1000).catch(() => {}) // the first append says whether it worked
      this.connecting = false
      return redis
    })
  }

  /** Whether the event with this id waits in the outbox. */
  holds(id: string): boolean { return this.held.has(id) }

  /** Appends the event, or holds it in the outbox; a 503 to retry when the outbox is full. */
  async append(event: EventView, body: Uint8Array): Promise<{ received: true }> {
    const entry = this.entryFor(event, body)
    if (this.connecting) await this.redis
    // Behind events already waiting, never before them.
    if (this.outbox.length === 0) {
      try {
        await withTimeout(this.run(entry), 250)
        return { received: true }
      } catch (error) {
        const fields = { stream: this.config.key, error: redacted(error, this.redisUrl) }
        if (!this.away) log('warn', 'redis stream unavailable: holding events in the outbox until it answers', fields)
        this.away = true
      }
    }
    if (this.outbox.length >= this.config.outboxEvents || this.outboxBytes + entry.bytes > maxOutboxBytes) {
      // Its redelivery runs the handlers again, as after any 5xx.
      if (event.id) await this.state.release(event.id)
      const fields = { ...describeEvent(event), stream: this.config.key, held: this.outbox.length }
      log('warn', 'webhook refused: the event outbox is full', fields)
      const message = 'The event stream is unavailable and the outbox is full, retry later'
      throw new HttpError(503, message, { 'retry-after': '5' })
    }
    this.outbox.push(entry)
    this.outboxBytes += entry.bytes
    if (entry.id) {
      this.held.add(entry.id)
      this.ids.complete(entry.id)
    }
    this.drainSoon()
    return { received: true }
  }

  /** On stop: the outbox appended if Redis answers within 5 s; else one line saying what was lost. */
  async flush(): Promise<void> {
    if (this.outbox.length === 0) return
    this.drainDeadline = Date.now() + flushTimeoutMs
    this.drainSoon()
    await this.draining
    const notAppended = this.outbox.length
    if (notAppended === 0) return
    const lost = 'were not appended to the stream: Redis did not answer, and they are lost with this process'
    log('error', `${notAppended} events ${lost}`, { stream: this.config.key, notAppended })
  }

  private entryFor(event: EventView, body: Uint8Array): HeldEvent {
    const { room = '', participant = '', job = '', agent = '' } = describeEvent(event)
    const fields = ['id', event.id, 'event', event.event, 'room', room, 'participant', participant, 'job', job]
    fields.push('agent', agent, 'created_at', String(event.createdAt ?? 0))
    // The exact bytes LiveKit signed, as bytes: both clients send a Buffer as it is.
    const bytes = Buffer.from(body.buffer, body.byteOffset, body.byteLength)
    const key = `${this.keyPrefix}${event.id ? `webhook:${event.id}` : `append:${crypto.randomUUID()}`}`
    const args = [key, this.config.key, String(this.config.maxLength), String(handledTtlMs), ...fields, 'body', bytes]
    // Everything the entry holds counts against the outbox's bytes, not the body alone.
    return { id: event.id, args, bytes: args.reduce((sum, arg) => sum + Buffer.byteLength(arg), 0) }
  }

  /** The append script, for one event. */
  private async run(entry: HeldEvent): Promise<void> {
    // The clients' types say strings; each sends a Buffer's bytes as they are.
    await runScript(await this.redis, appendEventScript, 2, ...(entry.args as string[]))
    if (entry.id) this.ids.complete(entry.id)
  }

  private drainSoon(): void { this.draining ??= this.drain().finally(() => (this.draining = undefined)) }
  /** Appends the outbox in order, from its oldest event, waiting for Redis whenever it does not answer. */
  private async drain(): Promise<void> {
    let appended = 0
    // A PING answered first after a failure (it starts after one): a frozen Redis would keep each body sent it.
    let failed = true
    while (this.outbox.length > 0 && Date.now() < this.drainDeadline) {
      const entry = this.outbox[0]!
      try {
        if (failed) await reachRedis(await this.redis)
        await withTimeout(this.run(entry), 1000)
      } catch {
        failed = true
        await new Promise((resolve) => setTimeout(resolve, 500))
        continue
      }
      failed = false
      this.outbox.shift()
      this.outboxBytes -= entry.bytes
      this.held.delete(entry.id)
      appended += 1
    }
    if (this.outbox.length === 0) this.away = false
    const counts = { stream: this.config.key, appended, held: this.outbox.length }
    if (appended > 0) announce('redis stream available again: held events appended', counts)
  }
}

// ==== Request bodies and errors ====================================================================================
// Bounded reading, costly JSON refused; every error answers the OpenVidu clients' shape, { "errorMessage": … }.

class HttpError extends Error {
  constructor(readonly status: number, message: string, readonly headers: Record<string, string> = {}) {
    super(message)
  }
}

const errorBody = (errorMessage: string) => ({ errorMessage })
const utf8 = new TextDecoder()

// Bodies read up to their route's limit, within a budget of bytes being read at once per route (docs/design.md).
function createBodyReader(maxPendingBytes: number, metrics: Metrics) {
  const pendingBytes = { token: 0, webhook: 0 }
  metrics.watch({ pendingBodyBytes: pendingBytes })
  const withinBodyTime = createBodyTimeouts()
  return function readBody<As extends 'text' | 'bytes'>(request: Request, maxBytes: number, route: BodyRoute, as: As) {
    const contentLength = request.headers.get('content-length')
    const reservedBytes = contentLength === null ? maxBytes : Number(contentLength)
    if (!(reservedBytes <= maxBytes)) throw tooLarge(maxBytes)
    if (pendingBytes[route] + reservedBytes > maxPendingBytes) {
      // Closing the connection stops the upload rather than draining it.
      const headers = { 'retry-after': '1', connection: 'close' }
      throw new HttpError(503, 'The server is busy receiving other requests, retry shortly', headers)
    }
    pendingBytes[route] += reservedBytes
    // A declared length bounds the body (the HTTP server enforces it): the runtime reads (and decodes) it in one go.
    const stream = contentLength === null ? request.body : null
    const reading = stream ? readChunkedBody(stream, maxBytes, as) : as === 'text' ? request.text() : request.bytes()
    return withinBodyTime(reading, () => (pendingBytes[route] -= reservedBytes)) as Promise<BodyAs<As>>
  }
}

type BodyRoute = 'token' | 'webhook'
type BodyAs<As> = As extends 'text' ? string : Uint8Array
const bodyTimeoutMs = 10_000
const tooLarge = (maxBytes: number) => new HttpError(413, `Request body must be at most ${maxBytes} bytes`)

function bodyReadError(error: unknown): HttpError {
  if (error instanceof HttpError) return error
  // The upload broke off: nothing of ours failed, and no one is left to read the answer.
  log('info', 'request aborted by client', { reason: String(error) })
  return new HttpError(400, 'Request body could not be read')
}

// A body read as one promise, failed with a 408 once it has run 10 s (at most 11); `release` is called once, when
// it ends either way. Speed (the body timer): one timer a second checks every read, as Node's server does.
function createBodyTimeouts() {
  // The reads running, each as the function that fails it, and when: oldest first (one clock, one time for all).
  const deadlines = new Map<(reason: unknown) => void, number>()
  let checking = false
  const message = `Request body must arrive within ${bodyTimeoutMs / 1000} s`
  const timedOut = new HttpError(408, message, { connection: 'close' })
  const failOverdue = () => {
    const now = performance.now()
    for (const [fail, deadline] of deadlines) {
      if (deadline > now) break
      fail(timedOut)
    }
  }
  return <T>(reading: Promise<T>, release: () => void): Promise<T> =>
    new Promise((resolve, reject) => {
      if (!checking) {
        checking = true
        setInterval(failOverdue, 1000).unref?.()
      }
      // The first to come, the body or its deadline, settles the read; the other finds it settled.
      const settle = (): boolean => {
        if (!deadlines.delete(fail)) return false
        release()
        return true
      }
      const fail = (error: unknown) => settle() && reject(bodyReadError(error))
      deadlines.set(fail, performance.now() + bodyTimeoutMs)
      reading.then((value) => settle() && resolve(value), fail)
    })
}

/** A chunked body has no declared length: count while reading, stop at the limit. */
async function readChunkedBody(stream: ReadableStream<Uint8Array>, maxBytes: number, as: 'text' | 'bytes') {
  const chunks: Uint8Array[] = []
  let size = 0
  for await (const chunk of stream) {
    size += chunk.byteLength
    if (size > maxBytes) throw tooLarge(maxBytes) // leaving the loop cancels the stream
    chunks.push(chunk)
  }
  const body: Uint8Array = Buffer.concat(chunks, size)
  return as === 'text' ? utf8.decode(body) : body
}

/** Bun gives a request whose Host is no host name ("a b") a bare path, which Elysia's router reads shifted. */
function requireHostName(request: Request): void {
  if (request.url.startsWith('/')) throw new HttpError(400, 'Invalid Host header')
}

const jsonContentType = /^application\/([\w.+-]+\+)?json\s*(;|$)/i
function requireJsonContentType(request: Request): void {
  const contentType = request.headers.get('content-type') ?? ''
  if (!jsonContentType.test(contentType)) throw new HttpError(400, 'Content-Type must be application/json')
}

function parseJsonObject(text: string): Record<string, unknown> {
  refuseCostlyJson(text)
  return jsonObjectIn(text, bodyRefusal)
}
const bodyRefusal = (isJson: boolean) =>
  new HttpError(400, isJson ? 'Request body must be a JSON object' : 'Request body must be valid JSON')

/** The JSON object the text holds; else `refusal` says it is no JSON, or JSON but no object. */
function jsonObjectIn(text: string, refusal: (isJson: boolean) => Error): Record<string, unknown> {
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch {
    throw refusal(false)
  }
  if (!isJsonObject(value)) throw refusal(true)
  return value
}

/** Whether parsed JSON is an object: not null, not an array. */
const isJsonObject = (value: unknown): value is Record<string, unknown> =>
  typeof value === 'object' && value !== null && !Array.isArray(value)

// Parsing costs per value and per level (docs/design.md); a token request the field bounds allow holds ~200 values.
const maxJsonDepth = 32
const maxJsonValues = 1000
const [quote, backslash, openBrace, closeBrace] = [0x22, 0x5c, 0x7b, 0x7d] // the characters that matter: " \ { }
const [openBracket, closeBracket, comma] = [0x5b, 0x5d, 0x2c] // [ ] ,

/** Refuses JSON deeper than maxJsonDepth or of more than maxJsonValues values, in one pass before parsing. */
function refuseCostlyJson(json: string): void {
  let depth = 0, values = 0, inString = false
  for (let i = 0; i < json.length; i++) {
    const code = json.charCodeAt(i)
    if (inString) {
      if (code === backslash) i++
      else if (code === quote) inString = false
    } else if (code === quote) inString = true
    else if (code === openBrace || code === openBracket) {
      if (++depth > maxJsonDepth || ++values > maxJsonValues) break
    } else if (code === closeBrace || code === closeBracket) depth--
    else if (code === comma && ++values > maxJsonValues) break
  }
  if (depth > maxJsonDepth) throw new HttpError(400, `Request body must be nested at most ${maxJsonDepth} levels deep`)
  if (values > maxJsonValues) throw new HttpError(400, `Request body must hold at most ${maxJsonValues} JSON values`)
}

// ==== CORS and the API described ===================================================================================

/** CORS open to any origin, without credentials, through @elysiajs/cors; preflights are answerPreflight's. */
export function corsPlugin() {
  const methods = ['GET', 'POST']
  const exposeHeaders = 'Retry-After' // a 429's, readable by a page on another origin
  return cors({ origin: '*', credentials: false, methods, allowedHeaders: true, exposeHeaders, preflight: false })
}

/** A CORS preflight: the headers the browser asks for, none when it asks for none (docs/design.md). */
function answerPreflight({ request, set }: { request: Request; set: { headers: Record<string, unknown> } }) {
  const requested = request.headers.get('access-control-request-headers')
  if (requested) set.headers['access-control-allow-headers'] = requested
  else delete set.headers['access-control-allow-headers']
  set.headers['access-control-max-age'] = '600'
  return new Response(null, { status: 204 })
}

// No caching of /token's answers, tokens (RFC 6749 §5.1) or refusals (§5.2): a mapResponse hook, run on errors too.
function noStore({ set }: { set: { headers: Record<string, unknown> } }): void {
  set.headers['cache-control'] = 'no-store'
}

// ---- OpenAPI ------------------------------------------------------------------------------------------------------
// GET /openapi.json from the routes' schemas; GET /openapi, a page whose Swagger UI files are the package's, no CDN.

const apiInfo = {
  title: 'LiveKit / OpenVidu application server', version: '0.1.0',
  description: 'Access tokens for LiveKit rooms, and the webhooks LiveKit posts. Errors answer {"errorMessage": …}.',
}

function apiDocumentation() {
  return new Elysia({ name: 'api-documentation' })
    .use(openapi({
      path: '/openapi', specPath: '/openapi.json', provider: 'swagger-ui',
      swagger: { cdn: '/openapi/swagger-ui-bundle.js', theme: '/openapi/swagger-ui.css', autoDarkMode: false },
      exclude: { paths: ['/openapi/swagger-ui-bundle.js', '/openapi/swagger-ui.css'] },
      documentation: { info: apiInfo },
    }))
    .get('/openapi/swagger-ui-bundle.js', () => docsFile('swagger-ui-bundle.js', 'text/javascript'))
    .get('/openapi/swagger-ui.css', () => docsFile('swagger-ui.css', 'text/css'))
}

/** One of Swagger UI's files, imported as text (once: the runtime keeps a module) and embedded by `bun build`. */
async function docsFile(name: 'swagger-ui-bundle.js' | 'swagger-ui.css', contentType: string): Promise<Response> {
  const { default: text }: { default: string } =
    name === 'swagger-ui.css'
      ? // @ts-ignore: no types describe a text import
        await import('swagger-ui-dist/swagger-ui.css', { with: { type: 'text' } })
      : // @ts-ignore
        await import('swagger-ui-dist/swagger-ui-bundle.js', { with: { type: 'text' } })
  return new Response(text, { headers: { 'content-type': contentType, 'cache-control': 'public, max-age=86400' } })
}

/** Every error as { "errorMessage": … }, never a stack; a status() answer, so typed clients see an error. */
function answerError({ code, error, set, path, request }: ErrorContext & { code: string | number; error: unknown }) {
  // Elysia wraps what a body parser throws in a ParseError; the HttpError is its cause.
  const httpError = error instanceof HttpError ? error : (error as Error | undefined)?.cause
  if (httpError instanceof HttpError) {
    Object.assign(set.headers, httpError.headers)
    return status(httpError.status as ErrorStatus, errorBody(httpError.message))
  }
  if (code === 'NOT_FOUND') return status(404, errorBody(`No route for ${request.method} ${path}`))
  if (code === 'VALIDATION' || code === 'PARSE') return status(400, errorBody('Invalid request'))
  // Anything else is a bug here: say so generically, keep the details (not the stack) in the log.
  log('error', 'request failed', { method: request.method, path, error: String(error) })
  return status(500, errorBody('Internal server error'))
}

type ErrorStatus = 400 | 401 | 403 | 404 | 408 | 413 | 429 | 500 | 503

// ==== Logging ======================================================================================================
// One JSON object per line, so logs stay greppable and machine-readable.

export type Level = 'info' | 'warn' | 'error'

const lineSeparators = /[\u2028\u2029]/g
const escapeCharacter = (character: string) => `\\u${character.charCodeAt(0).toString(16)}`

const levelRanks: Record<Level, number> = { info: 0, warn: 1, error: 2 }
/** LOG_LEVEL, the process's, read once: at "warn", the per-request and per-event info lines go quiet. */
const lowestLevelLogged: Level = (() => {
  try {
    return settings.LOG_LEVEL.read(process.env.LOG_LEVEL?.trim() || undefined, 'LOG_LEVEL')
  } catch {
    return 'info' // loadConfig refuses it, and the server does not start
  }
})()

export function log(level: Level, msg: string, fields: Record<string, unknown> = {}): void {
  if (levelRanks[level] < levelRanks[lowestLevelLogged]) return
  writeLogLine(level, msg, fields)
}

/** An info line whatever LOG_LEVEL says: starting, stopping, recovering. */
function announce(msg: string, fields: Record<string, unknown> = {}): void {
  writeLogLine('info', msg, fields)
}

// One write a line (whole where workers share the pipe, none left in a buffer at exit): info to stdout, the rest to
// stderr. `fields` are never named time, level, msg or worker.
function writeLogLine(level: Level, msg: string, fields: Record<string, unknown>): void {
  const worker = runtime.worker ? `,"worker":${runtime.worker.number}` : ''
  const head = `{"time":"${new Date().toISOString()}","level":"${level}","msg":${JSON.stringify(msg)}${worker}`
  const rest = JSON.stringify(fields)
  // U+2028 and U+2029 are valid in JSON but end a line for some log readers: escape them too.
  const line = `${rest === '{}' ? `${head}}` : `${head},${rest.slice(1)}`}\n`.replace(lineSeparators, escapeCharacter)
  try {
    writeSync(level === 'info' ? 1 : 2, line)
  } catch {
    // A descriptor that would block (its reader slow, and made non-blocking by someone): the runtime buffers.
    ;(level === 'info' ? console.log : console.error)(line.slice(0, -1))
  }
}

// ==== Metrics ======================================================================================================
// With PROMETHEUS_PORT, GET /metrics on a listener of its own: each app's series (a registry of its own) and
// prom-client's default `register` (the process series, and an app's own `new Counter(…)`). docs/operations.md

type PromClient = typeof import('prom-client')
type PromRegistry = import('prom-client').Registry
type PromGauge<Label extends string = string> = import('prom-client').Gauge<Label>
type MetricsJson = Awaited<ReturnType<PromRegistry['getMetricsAsJSON']>>
type MetricsReply = { metricsReply: string; metrics: MetricsJson }

/** What the app tells its metrics; every label value is one of a few, never a client's text. */
interface Metrics {
  tokenBodyRead(request: Request, body: object): void // it tells the contract
  webhookClaimed(request: Request, event: EventView, claim: Claim): void // its event, and whether a duplicate
  watch(sources: MetricSources): void // gauges read at each scrape
}

type MetricSources = { redisStatus?: () => Promise<'ok' | 'unavailable'>; pendingBodyBytes?: Record<BodyRoute, number> }

/** Without PROMETHEUS_PORT: nothing counted, nothing loaded. */
const noMetrics: Metrics = { tokenBodyRead() {}, webhookClaimed() {}, watch() {} }

const metricPrefix = 'app_server_'
const durationBuckets = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
// LiveKit's event names (the SDK's and the protocol's agent events); any other counts as "unknown".
const knownEventNames = new Set([...Object.keys(webhookHandlers), 'agent_job_started', 'agent_job_ended'])

/** An app's metrics, from PROMETHEUS_PORT: prom-client loads in the background, and serving waits for `ready`. */
class AppMetrics implements Metrics {
  readonly ready: Promise<void>
  private series?: ReturnType<typeof createAppSeries>
  private readonly watched: MetricSources[] = []
  private readonly tokenContracts = new WeakMap<Request, 'openvidu' | 'standard'>()
  private readonly webhookEvents = new WeakMap<Request, { event: string; duplicate: boolean }>()

  constructor(readonly port: number) {
    this.ready = loadPromClient().then((prom) => {
      this.series = createAppSeries(prom)
      for (const sources of this.watched) this.series.watch(sources)
    })
    this.ready.catch(() => {}) // an app never served never needs them; startServer reports the failure
  }

  tokenBodyRead(request: Request, body: object): void {
    this.tokenContracts.set(request, isOpenViduRequest(body) ? 'openvidu' : 'standard')
  }

  webhookClaimed(request: Request, event: EventView, claim: Claim): void {
    const name = knownEventNames.has(event.event) ? event.event : 'unknown'
    this.webhookEvents.set(request, { event: name, duplicate: claim === 'handled' })
  }

  watch(sources: MetricSources): void {
    this.watched.push(sources)
    this.series?.watch(sources)
  }

  /** An answer, and how long the app took to give it. */
  answered(request: Request, status: number, seconds: number): void {
    const series = this.series
    if (!series) return
    const route = routeOf(request.url)
    series.durations.observe({ route, status }, seconds)
    if (request.method !== 'POST') return
    if (route === '/token') series.tokens.inc({ contract: this.tokenContracts.get(request) ?? 'none', status })
    else if (route === '/livekit/webhook') {
      const verified = this.webhookEvents.get(request)
      series.webhooks.inc({ event: verified?.event ?? 'unknown', outcome: webhookOutcome(status, verified?.duplicate) })
    }
  }

  /** This app's series and the process's (prom-client's default register), as one registry. */
  async registry(): Promise<PromRegistry> {
    await this.ready
    const { Registry, register } = await loadPromClient()
    return Registry.merge([this.series!.registry, register])
  }
}

/** The series of one app, in a registry of their own; `aggregator`: how the workers' figures add up. */
function createAppSeries({ Registry, Counter, Gauge, Histogram }: PromClient) {
  const registers = [new Registry()]
  return {
    registry: registers[0]!,
    tokens: new Counter({
      name: `${metricPrefix}token_requests_total`, labelNames: ['contract', 'status'] as const, registers,
      help: 'Token requests answered, by contract (none: refused before the body was read) and status',
    }),
    webhooks: new Counter({
      name: `${metricPrefix}webhooks_total`, labelNames: ['event', 'outcome'] as const, registers,
      help: 'Webhooks answered, by event and outcome (handled, duplicate, refused, failed, busy)',
    }),
    durations: new Histogram({
      name: `${metricPrefix}http_request_duration_seconds`, labelNames: ['route', 'status'] as const, registers,
      help: 'Time from a request reaching the app to its answer, by route and status',
      buckets: durationBuckets,
    }),
    watch({ redisStatus, pendingBodyBytes }: MetricSources) {
      if (redisStatus) {
        const up: PromGauge = new Gauge({
          name: `${metricPrefix}shared_state_up`, aggregator: 'min', registers,
          help: '1 while Redis holds the shared state, 0 while this process runs on its own memory',
          collect: async () => up.set((await redisStatus()) === 'ok' ? 1 : 0),
        })
      }
      if (pendingBodyBytes) {
        const pending: PromGauge<'route'> = new Gauge({
          name: `${metricPrefix}request_body_bytes_pending`, labelNames: ['route'] as const, registers,
          help: 'Bytes of request bodies being read, by route',
          collect() {
            pending.set({ route: '/token' }, pendingBodyBytes.token)
            pending.set({ route: '/livekit/webhook' }, pendingBodyBytes.webhook)
          },
        })
      }
    },
  }
}

/** prom-client, with the standard process series in its default register (once a process or thread). */
async function loadPromClient(): Promise<PromClient> {
  const prom = await import('prom-client')
  // Made already: by another app in this process, or by the app itself.
  if (!prom.register.getSingleMetric('nodejs_eventloop_lag_seconds')) collectProcessMetrics(prom)
  return prom
}

// prom-client's series that read /proc/self at each scrape: on Deno, only --allow-all may (docs/operations.md).
const procSeries = [
  'process_resident_memory_bytes', 'process_virtual_memory_bytes', 'process_heap_bytes', 'process_open_fds',
]

function collectProcessMetrics({ register, collectDefaultMetrics, Gauge }: PromClient): void {
  collectDefaultMetrics({ register })
  // A worker thread shares its process with the first thread, which reports the process alone.
  if (runtime.worker?.thread) {
    for (const { name } of register.getMetricsAsArray()) {
      if (name.startsWith('process_')) register.removeSingleMetric(name)
    }
    return
  }
  if (runtime.procReadable()) return
  for (const name of procSeries) register.removeSingleMetric(name)
  // The runtime's own reading instead, the real figure where prom-client's would be 0.
  const resident: PromGauge = new Gauge({
    name: 'process_resident_memory_bytes',
    help: 'Resident memory size in bytes.',
    collect: () => resident.set(process.memoryUsage().rss),
  })
}

/** GET /metrics for an app: on PROMETHEUS_PORT, or from a worker, to the first process that sums them. */
async function serveAppMetrics(metrics: AppMetrics): Promise<() => Promise<void>> {
  await metrics.ready
  if (runtime.worker) {
    answerMetricsRequests(runtime.worker, async () => (await metrics.registry()).getMetricsAsJSON())
    return async () => {}
  }
  const { prometheusContentType } = await loadPromClient()
  return serveMetrics(metrics.port, async () => (await metrics.registry()).metrics(), prometheusContentType)
}

// With WORKERS, the first process's GET /metrics: its own process series and every worker's figures, summed; the
// start time, which prom-client leaves out of a sum (each process has its own), is the first process's.
async function serveWorkersMetrics(port: number, askWorkers: () => Promise<MetricsJson[]>): Promise<void> {
  const { AggregatorRegistry, Registry, register, prometheusContentType } = await loadPromClient()
  const started = new Registry()
  const startTime = register.getSingleMetric('process_start_time_seconds')
  if (startTime) started.registerMetric(startTime)
  const scrape = async () => {
    const figures = [await register.getMetricsAsJSON(), ...(await askWorkers())]
    return Registry.merge([AggregatorRegistry.aggregate(figures), started]).metrics()
  }
  await serveMetrics(port, scrape, prometheusContentType)
}

// ---- Metrics, labelled --------------------------------------------------------------------------------------------
// A request's route, a webhook's outcome.

const routeLabels = ['/token', '/livekit/webhook', '/health']

/** A request's route label: one of the routes (as Elysia routes them) or "other", never a client's own path. */
function routeOf(url: string): string {
  const start = url.indexOf('/', url.indexOf('//') + 2)
  let end = url.indexOf('?', start)
  if (end === -1) end = url.length
  if (end - start > 1 && url.charCodeAt(end - 1) === 47) end-- // a trailing "/"
  for (const route of routeLabels) if (end - start === route.length && url.startsWith(route, start)) return route
  return 'other'
}

function webhookOutcome(status: number, duplicate = false): string {
  if (status === 200) return duplicate ? 'duplicate' : 'handled'
  if (status === 500) return 'failed'
  if (status === 503) return 'busy'
  return 'refused'
}

/** The handler, reporting each answer's status and time; an answer given at once is handed on at once. */
function measured<Rest extends unknown[]>(
  handler: (request: Request, ...rest: Rest) => MaybePromise<Response>,
  metrics: AppMetrics,
) {
  return (request: Request, ...rest: Rest): Response | Promise<Response> => {
    const started = performance.now()
    const record = (response: Response) => {
      metrics.answered(request, response.status, (performance.now() - started) / 1000)
      return response
    }
    const response = handler(request, ...rest)
    return response instanceof Promise ? response.then(record) : record(response)
  }
}

// ==== Serving ======================================================================================================
// The app and its metrics served, then stopped on SIGTERM/SIGINT. Every difference between Bun and Deno lives in this
// section, in `runtime` (chosen once, below): no other line asks which one runs.

export type RunningServer = { port: number; stop(): Promise<void> }

/** Serves the app; resolves once it listens. The port is this process's alone unless `sharedPort` (workers). */
export async function startServer(app: App, port: number, { sharedPort = false } = {}): Promise<RunningServer> {
  // What createApp says serving needs: Redis tried first (no request waits for it), a stream to flush, metrics.
  const { connecting, events, metrics } = app.store.serving
  await connecting
  // Its metrics first: a busy PROMETHEUS_PORT stops the server before it listens.
  const stopMetrics = metrics ? await serveAppMetrics(metrics) : async () => {}
  const server = await runtime.serve(app, port, sharedPort).catch(async (error) => {
    await stopMetrics()
    throw error
  })
  return { port: server.port, stop: () => server.stop().then(() => events?.flush()).then(stopMetrics) }
}

/** GET /metrics on PROMETHEUS_PORT; anything else a 404. Resolves once it listens, with how to stop. */
async function serveMetrics(port: number, scrape: () => Promise<string>, contentType: string) {
  const handler = async (request: Request): Promise<Response> => {
    if (request.method !== 'GET' || new URL(request.url).pathname !== '/metrics') {
      return Response.json(errorBody('Only GET /metrics is served on this port'), { status: 404 })
    }
    try {
      return new Response(await scrape(), { headers: { 'content-type': contentType } })
    } catch (error) {
      log('error', 'metrics unavailable', { error: String(error) })
      return Response.json(errorBody('Metrics are unavailable right now'), { status: 503 })
    }
  }
  try {
    return await runtime.serveFetch(port, handler)
  } catch (error) {
    throw isPortInUse(error) ? new PortInUse(`PROMETHEUS_PORT ${port}`) : error
  }
}

/** Stops taking connections on SIGTERM/SIGINT, lets requests in flight finish, then exits. */
function stopOnSignals(server: RunningServer): void {
  onStopSignal((signal) => {
    announce(`${signal} received, finishing requests in flight`)
    setTimeout(() => {
      log('warn', 'requests still in flight after 10 s, exiting anyway')
      process.exit(1)
    }, 10_000).unref?.()
    server.stop().then(() => {
      announce('stopped')
      process.exit(0)
    })
  })
}

/** Calls `stop` once, on the first SIGTERM or SIGINT. */
function onStopSignal(stop: (signal: string) => void): void {
  let stopping = false
  const once = (signal: string) => {
    if (stopping) return
    stopping = true
    stop(signal)
  }
  for (const signal of ['SIGTERM', 'SIGINT'] as const) runtime.onSignal(signal, () => once(signal))
}

// ---- Runtimes: Bun and Deno ---------------------------------------------------------------------------------------
// Deno's API and a worker thread's (named by its number), as far as used here, declared: one file type-checks for both.

declare const Deno: {
  serve(
    options: { port: number; reusePort?: boolean; onError?(error: unknown): Response }
      & { onListen?(address: { port: number }): void },
    handler: (request: Request, info: { remoteAddr: { hostname: string } }) => Response | Promise<Response>,
  ): { shutdown(): Promise<void>; finished: Promise<void> }
  addSignalListener(signal: 'SIGTERM' | 'SIGINT', handler: () => void): void
  permissions: { querySync(descriptor: { name: 'read'; path: string }): { state: 'granted' | 'prompt' | 'denied' } }
}
declare const self: Pick<Worker, 'postMessage' | 'addEventListener'> & { name: string }

/** Elysia's `server` in a handler's context: Bun's server; null on Deno and under app.handle(). */
type BunServer = { requestIP(request: Request): { address: string } | null } | null

/** What Bun and Deno do differently, as far as this file needs: `runtime` is the one running it. */
interface Runtime {
  serve(app: App, port: number, reusePort: boolean): Promise<RunningServer> // measured with its metrics
  serveFetch(port: number, handler: (request: Request) => Promise<Response>): Promise<() => Promise<void>> // /metrics
  connectingAddress(request: Request, server: BunServer): string | undefined // where the app needs it
  hmacSha256(secret: string): (data: string) => Pick<Hash, 'digest'> // its key prepared once
  openRedis(url: string): Promise<RedisConnection> // not yet connected; no command queued while disconnected
  onSignal(signal: 'SIGTERM' | 'SIGINT', listener: () => void): void
  startWorker(number: number, onMessage: (message: WorkerMessage) => void): WorkerHandle // process (Bun), thread
  worker?: WorkerChannel // in a worker, its channel to the first process
  readPermission(path: string): string // what reading a file needs, for the error saying it could not
  procReadable(): boolean // whether prom-client's process series can read /proc/self (else they read 0)
  fail(error: unknown): never // exit code 1; a worker thread ends with the error, which reaches the first process
}

/** What this file needs of a Redis client (Bun's, or node-redis on Deno); `connect` (re)connects one that is not. */
type RedisConnection = { send(command: string, args: string[]): Promise<unknown>; connect(): Promise<void> }

interface WorkerChannel {
  number: number // 1 to N
  thread: boolean // a thread, in the first thread's process (Deno), or a process of its own (Bun)
  post(message: WorkerMessage): void
  onMessage(listener: (message: unknown) => void): void
  report(server: RunningServer): void // says it listens, then stops the server when told to (or when orphaned)
}

const runtime: Runtime = 'Bun' in globalThis ? bunRuntime() : denoRuntime()

// ---- Bun ----------------------------------------------------------------------------------------------------------
function bunRuntime(): Runtime {
  const workerNumber = process.env.SERVER_WORKER ? Number(process.env.SERVER_WORKER) : undefined
  return {
    async serve(app, port, reusePort) {
      const { metrics } = app.store.serving
      if (metrics) {
        // listen() routes past app.fetch, so measuring every answer takes serving app.fetch (Elysia's timeout).
        app.compile()
        const fetch = measured((request: Request) => app.fetch(request), metrics)
        app.server = Bun.serve({ port, reusePort, idleTimeout: 30, fetch })
      } else app.listen({ port, reusePort })
      const server = app.server!
      // Bun's stop() closes the listener and resolves once the requests in flight are answered.
      return { port: server.port!, stop: () => server.stop() }
    },
    async serveFetch(port, fetch) {
      const server = Bun.serve({ port, reusePort: false, fetch })
      return () => server.stop(true)
    },
    connectingAddress: (request, server) => server?.requestIP(request)?.address,
    hmacSha256(secret) {
      const key = Buffer.from(secret)
      return (data) => createHmac('sha256', key).update(data)
    },
    async openRedis(url) {
      const client = new Bun.RedisClient(url, { enableOfflineQueue: false, connectionTimeout: 1000 })
      const connect = async () => void (client.connected || (await client.connect()))
      return { send: (command, args) => client.send(command, args), connect }
    },
    onSignal: (signal, listener) => void process.on(signal, listener),
    startWorker(number, onMessage) {
      const child = Bun.spawn([process.execPath, ...process.argv.slice(1)], {
        env: { ...process.env, SERVER_WORKER: String(number) },
        stdio: ['ignore', 'inherit', 'inherit'],
        ipc: (message) => onMessage(message as WorkerMessage),
      })
      const send = (message: unknown) => void child.send(message)
      const exited = child.exited.then((code) => `code ${code ?? child.signalCode}`)
      return { send, stop: () => child.kill('SIGTERM'), kill: () => child.kill('SIGKILL'), exited }
    },
    worker: workerNumber === undefined ? undefined : {
      number: workerNumber,
      thread: false,
      post: (message) => void process.send?.(message),
      onMessage: (listener) => void process.on('message', listener),
      report(server) {
        stopOnSignals(server)
        process.send?.({ listening: server.port })
        // A supervisor killed outright cannot stop its workers: they notice and stop by themselves.
        const supervisor = process.ppid
        setInterval(() => process.ppid !== supervisor && process.kill(process.pid, 'SIGTERM'), 1000).unref?.()
      },
    },
    readPermission: () => '',
    procReadable: () => true,
    fail: () => process.exit(1),
  }
}

// ---- Deno ---------------------------------------------------------------------------------------------------------
function denoRuntime(): Runtime {
  const thread = 'WorkerGlobalScope' in globalThis
  // Deno hands the connecting address to its serve handler alone: kept for the app, when it needs it.
  const addresses = new WeakMap<Request, string>()
  return {
    serve: (app, port, reusePort) => serveOnDeno(app, port, reusePort, addresses),
    async serveFetch(port, handler) {
      const listening = Promise.withResolvers<void>()
      const server = Deno.serve({ port, onListen: () => listening.resolve() }, handler)
      await listening.promise
      return () => server.shutdown()
    },
    connectingAddress: (request) => addresses.get(request),
    // Deno's createHmac pads the key again, in JavaScript, on every call (half of a token's signing): computed
    // as RFC 2104 defines it instead, two SHA-256 hashes over pads made once.
    hmacSha256(secret) {
      const bytes = Buffer.from(secret)
      const key = Buffer.alloc(64)
      ;(bytes.length > 64 ? createHash('sha256').update(bytes).digest() : bytes).copy(key)
      const ipad = key.map((byte) => byte ^ 0x36)
      const opad = key.map((byte) => byte ^ 0x5c)
      return (data) => createHash('sha256').update(opad).update(createHash('sha256').update(ipad).update(data).digest())
    },
    // node-redis, made to behave as Bun's client does.
    async openRedis(url) {
      const { createClient } = await import('@redis/client')
      const socket = { connectTimeout: 1000, reconnectStrategy: (tries: number) => Math.min(100 * 2 ** tries, 1000) }
      const client = createClient({ url, disableOfflineQueue: true, socket })
      client.on('error', () => {}) // a lost connection is noticed, and logged, by the commands that fail
      // node-redis keeps retrying a refused first connection, and reconnects by itself after: the first
      // attempt ends at its first error (as Bun's does), and later ones wait for it to be ready.
      const firstAttempt = new Promise<void>((resolve, reject) => {
        client.once('error', reject)
        client.connect().then(() => resolve(), reject)
      })
      firstAttempt.catch(() => {})
      let attempted = false
      let ready: Promise<void> | undefined // one wait for 'ready', however many ask
      const whenReady = () => {
        ready ??= new Promise<void>((resolve) => client.once('ready', resolve)).finally(() => (ready = undefined))
        return ready
      }
      return {
        send: (command, args) => client.sendCommand([command, ...args]),
        connect: async () => {
          if (attempted) return client.isReady ? undefined : whenReady()
          attempted = true
          return firstAttempt
        },
      }
    },
    onSignal: (signal, listener) => Deno.addSignalListener(signal, listener),
    startWorker(number, onMessage) {
      const worker = new Worker(import.meta.url, { type: 'module', name: String(number) })
      const exited = Promise.withResolvers<string>()
      const end = (how: string) => {
        worker.terminate()
        exited.resolve(how)
      }
      worker.onmessage = (event) => {
        onMessage(event.data as WorkerMessage)
        if (event.data === 'stopped') end('stop')
      }
      worker.onerror = (event) => {
        event.preventDefault()
        end(`error ${event.message}`)
      }
      const stop = () => worker.postMessage('stop')
      return { send: (message) => worker.postMessage(message), stop, kill: () => end('killed'), exited: exited.promise }
    },
    worker: !thread ? undefined : {
      number: Number(self.name),
      thread: true,
      post: (message) => self.postMessage(message),
      onMessage: (listener) => self.addEventListener('message', ({ data }) => listener(data)),
      report(server) {
        self.addEventListener('message', async ({ data }) => {
          if (data !== 'stop') return
          await server.stop()
          self.postMessage('stopped')
        })
        self.postMessage({ listening: server.port })
      },
    },
    readPermission: (path) => ` (Deno needs --allow-read=${path})`,
    // Tried only where Deno would not stop to ask.
    procReadable() {
      if (Deno.permissions.querySync({ name: 'read', path: '/proc/self/status' }).state !== 'granted') return false
      try {
        return readFileSync('/proc/self/status').length > 0
      } catch {
        return false
      }
    },
    // process.exit() in a worker thread would end it silently: an error reaches the first process.
    fail(error) {
      if (thread) throw error
      process.exit(1)
    },
  }
}

function serveOnDeno(app: App, port: number, reusePort: boolean, addresses: WeakMap<Request, string>) {
  const { metrics, addresses: recordsAddresses } = app.store.serving
  // Deno's shutdown() (2.9, seen here) makes the bodies of requests in flight unreadable: stopping
  // first waits for those requests, and answers 503 to any that arrive meanwhile.
  let inFlight = 0
  let stopping = false
  let onIdle = () => {}
  const stoppingAnswer = { status: 503, headers: { connection: 'close', 'retry-after': '1' } }
  const handler = async (request: Request, info: { remoteAddr: { hostname: string } }) => {
    if (stopping) return Response.json(errorBody('The server is stopping'), stoppingAnswer)
    // Deno writes the Host header into request.url as it came: a "/" in it would move the path routed.
    const host = request.headers.get('host')
    if (host?.includes('/')) return Response.json(errorBody('Invalid Host header'), { status: 400 })
    inFlight += 1
    try {
      if (recordsAddresses) addresses.set(request, info.remoteAddr.hostname)
      const response = await app.fetch(request)
      // An upload refused (503 while busy) or given up (408) closes its connection.
      const refused = response.status === 503 || response.status === 408
      return refused && response.headers.get('connection') === 'close' ? cutShort(response) : response
    } finally {
      inFlight -= 1
      if (inFlight === 0) onIdle()
    }
  }

  const answer = metrics ? measured(handler, metrics) : handler
  return new Promise<RunningServer>((resolve, reject) => {
    let server: ReturnType<typeof Deno.serve>
    const stop = async () => {
      stopping = true
      if (inFlight > 0) await new Promise<void>((resolve) => (onIdle = resolve))
      await server.shutdown()
    }
    let listening = false
    const onListen = (address: { port: number }) => {
      // Listening again after recovering: same port (even when asked for 0), nothing more to say.
      if (listening) return
      listening = true
      port = address.port
      resolve({ port, stop })
    }
    const listen = () => {
      if (stopping) return
      try {
        server = Deno.serve({ port, reusePort, onError: answerServeError, onListen }, answer)
      } catch (error) {
        if (!listening) return reject(error) // the first time: let the caller say why
        log('warn', 'could not listen again, retrying in 1 s', { error: String(error) })
        return void setTimeout(listen, 1000)
      }
      server.finished.catch((error) => recover(server, error))
    }
    // Deno.serve closes no idle connection: a flood can use up the descriptors and end its accept
    // loop. Closing them (2 s for requests in flight), then listening again, brings it back.
    const recover = async (deadServer: typeof server, error: unknown) => {
      if (stopping) return
      if (!/os error 2[34]\)/.test(String(error))) {
        log('error', 'the server stopped accepting connections', { error: String(error) })
        runtime.fail(error)
      }
      log('warn', 'out of file descriptors: closing every connection and listening again', { error: String(error) })
      await withTimeout(deadServer.shutdown(), 2000).catch(() => {})
      setTimeout(listen, 100)
    }
    listen()
  })
}

/** Deno reads an unread body to its end before closing; a body that fails closes at once (headers sent). */
function cutShort(response: Response): Response {
  const body = new ReadableStream({ start: (controller) => controller.error(connectionCutShort) })
  return new Response(body, { status: response.status, headers: response.headers })
}

const connectionCutShort = new Error('connection cut short')

/** What Deno calls with an error it caught while answering; only cutShort's is expected. */
function answerServeError(error: unknown): Response {
  if (error !== connectionCutShort) log('error', 'request failed', { error: String(error) })
  return new Response(null, { status: 500 })
}

// ==== Workers ======================================================================================================
// WORKERS=N serves the port from N processes (Bun) or threads (Deno), the kernel spreading connections among them;
// the first process supervises: it says when all listen, forwards SIGTERM/SIGINT, restarts a worker that dies.

/** A worker, for the first process: `stop` asks it to finish its requests in flight and stop, `kill` stops it now. */
type WorkerHandle = { send(message: unknown): void; stop(): void; kill(): void; exited: Promise<string> }
type WorkerMessage = { listening: number } | MetricsReply | 'stopped'

// ---- Metrics across workers ---------------------------------------------------------------------------------------
// Each scrape asks every worker for its figures (prom-client's registry as JSON), summed with the first process's.

/** In the first process: asks the workers for their figures; `replied` hands each to the scrape waiting for it. */
function createFiguresAsker(workers: () => WorkerHandle[]) {
  const waiting = new Map<string, (metrics: MetricsJson) => void>() // the scrapes waiting, by the request's id
  const ask = (worker: WorkerHandle) => {
    const id = crypto.randomUUID()
    const reply = new Promise<MetricsJson>((resolve) => waiting.set(id, resolve))
    worker.send({ metricsRequest: id })
    // A worker restarting or frozen: no answer rather than a sum that misses it.
    return withTimeout(reply, 2000).finally(() => waiting.delete(id))
  }
  return {
    ask: () => Promise.all(workers().map(ask)),
    replied(message: unknown): boolean {
      if (typeof message !== 'object' || message === null || !('metricsReply' in message)) return false
      const { metricsReply, metrics } = message as MetricsReply
      waiting.get(metricsReply)?.(metrics)
      return true
    },
  }
}

/** In a worker: answers each of the first process's requests with this worker's figures. */
function answerMetricsRequests(worker: WorkerChannel, figures: () => Promise<MetricsJson>): void {
  const answer = async (message: unknown) => {
    if (typeof message !== 'object' || message === null || !('metricsRequest' in message)) return
    worker.post({ metricsReply: String(message.metricsRequest), metrics: await figures() })
  }
  worker.onMessage((message) => void answer(message))
}

// ---- Supervising --------------------------------------------------------------------------------------------------
// A crashing worker restarts later each time; crashing more often than this stops the server (a failed service).
const maxCrashesPerMinute = 3
const firstRestartDelayMs = 1000
const longestRestartDelayMs = 30_000

async function superviseWorkers(config: Config): Promise<void> {
  // The workers share the port with whoever else asks to share it: only an exclusive probe tells.
  if (!(await portIsFree(config.port))) return exitPortInUse(`port ${config.port}`)
  let stopping = false
  let announced = false
  const workers = new Map<number, WorkerHandle>()
  const listening = new Set<number>()
  const crashTimes: number[] = []
  const restartDelays = new Map<number, number>()
  const figures = createFiguresAsker(() => [...workers.values()])
  if (config.prometheusPort !== undefined) await serveWorkersMetrics(config.prometheusPort, figures.ask)
  const stopWorkers = async (exitCode: number) => {
    stopping = true
    for (const worker of workers.values()) worker.stop()
    // Each worker gives its requests in flight 10 s; past that (and a second's grace), it is stuck.
    const allExited = Promise.all([...workers.values()].map((worker) => worker.exited))
    const stuck = await withTimeout(allExited, 11_000).then(() => false, () => true)
    if (stuck) {
      log('warn', 'workers still running after 11 s, stopping them now')
      for (const worker of workers.values()) worker.kill()
      exitCode = 1
    }
    if (exitCode === 0) announce('stopped')
    process.exit(exitCode)
  }
  const run = (number: number) => {
    let listenedAt = 0 // never
    // What a worker posts: its figures for a scrape, or (the only other object) that it listens.
    const worker = runtime.startWorker(number, (message) => {
      if (figures.replied(message) || typeof message !== 'object') return
      listenedAt = Date.now()
      listening.add(number)
      if (listening.size === config.workers && !announced) {
        announced = true
        announce(`listening on http://localhost:${config.port}`, { port: config.port, ...whatIsOn(config) })
      }
    })
    workers.set(number, worker)
    worker.exited.then((how) => {
      if (stopping) return
      if (!listenedAt) {
        // It never served: starting it again would fail the same way (a busy port, a missing flag).
        log('error', `worker ${number} could not start (${how}): stopping`)
        return void stopWorkers(1)
      }
      // It served, then crashed or was killed: capacity must not silently shrink, unless crashing is all it does.
      const now = Date.now()
      crashTimes.push(now)
      while (crashTimes[0]! <= now - 60_000) crashTimes.shift()
      if (crashTimes.length > maxCrashesPerMinute) {
        log('error', `workers crashed ${crashTimes.length} times within a minute (worker ${number}: ${how}): stopping`)
        return void stopWorkers(1)
      }
      // Twice as long each time, back to the first delay once the worker had served for a minute.
      const delay = now - listenedAt >= 60_000 ? firstRestartDelayMs : restartDelays.get(number) ?? firstRestartDelayMs
      restartDelays.set(number, Math.min(delay * 2, longestRestartDelayMs))
      log('warn', `worker ${number} exited (${how}), restarting it in ${delay / 1000} s`)
      setTimeout(() => stopping || run(number), delay)
    })
  }
  for (let number = 1; number <= config.workers; number++) run(number)
  onStopSignal((signal) => {
    announce(`${signal} received, stopping the workers`)
    void stopWorkers(0)
  })
}

// ==== Starting up ==================================================================================================
// The configuration, then the workers or the server (each serving its metrics).

function warnAboutCredentials(config: Config): void {
  if (config.usesDevCredentials) {
    log('warn', 'LIVEKIT_API_KEY and LIVEKIT_API_SECRET are not set: using the development credentials (key "devkey")')
  }
  for (const key of config.weakKeys) {
    log('warn', `the secret of API key "${key}" is shorter than 32 characters, weak for HS256: use a longer one`)
  }
}

const isPortInUse = (error: unknown) =>
  /EADDRINUSE|AddrInUse/.test(`${(error as { code?: string })?.code} ${(error as Error)?.name}`)

/** A port other than SERVER_PORT found taken; `what` names it (e.g. "PROMETHEUS_PORT 6090"). */
class PortInUse extends Error {
  constructor(readonly what: string) { super(`${what} is already in use`) }
}

/** Whether nothing listens on the port, shared or not: bound for a moment, without sharing it. */
function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = createNetServer()
    // Any other failure (a port below 1024, say) is the workers' to report.
    probe.once('error', (error) => resolve(!isPortInUse(error)))
    probe.listen({ port, exclusive: true }, () => probe.close(() => resolve(true)))
  })
}

/** One line saying the port is taken, and exit code 1 (a worker thread's through the first process). */
function exitPortInUse(port: string): never {
  log('error', `${port} is already in use`)
  return runtime.fail(new Error('could not listen'))
}

async function main(): Promise<void> {
  let config: Config
  try {
    config = loadConfig(process.env)
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error
    console.error(`Configuration error: ${error.message}`)
    process.exit(1)
  }
  if (!runtime.worker) warnAboutCredentials(config)
  let server: RunningServer
  try {
    if (config.workers > 1 && !runtime.worker) return await superviseWorkers(config)
    server = await startServer(createApp(config), config.port, { sharedPort: config.workers > 1 })
  } catch (error) {
    if (error instanceof PortInUse) exitPortInUse(error.what)
    if (!isPortInUse(error)) throw error
    exitPortInUse(`port ${config.port}`)
  }
  if (runtime.worker) return runtime.worker.report(server)
  // Handle signals before saying so: whoever waits for this line may stop the server at once.
  stopOnSignals(server)
  announce(`listening on http://localhost:${server.port}`, { port: server.port, ...whatIsOn(config) })
}

/** What the start-up line says is on, beyond the plain development server; never a secret. */
function whatIsOn(config: Config): Record<string, unknown> {
  const { auth, tokenPolicy: policy, redisUrl, eventStream } = config
  const on = {
    auth: auth && { issuer: auth.issuer, audience: auth.audience, identityClaim: auth.identityClaim },
    policy: policy && { roles: policy.roles.map((role) => role.name), defaultRole: policy.defaultRole?.name },
    rateLimitPerMinute: config.tokenRateLimit,
    trustProxy: config.trustedProxies || undefined,
    redis: redisUrl && redisPlace(new URL(redisUrl)),
    stream: eventStream?.key,
    metricsPort: config.prometheusPort,
    workers: config.workers > 1 ? config.workers : undefined,
  }
  return Object.fromEntries(Object.entries(on).filter(([, value]) => value !== undefined))
}

/** Where Redis is, never who logs in. */
const redisPlace = ({ protocol, host, pathname }: URL) => `${protocol}//${host}${pathname}`

if (import.meta.main || runtime.worker) await main()
