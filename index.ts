// The application server for LiveKit and OpenVidu apps: it mints access tokens for clients and
// receives the webhooks a LiveKit server posts. Runs with `bun run index.ts`, or under Deno 2.
import { Elysia, getSchemaValidator, status, t, type ErrorContext, type ValidationError } from 'elysia'
import { cors } from '@elysiajs/cors'
import { createVerifier } from 'fast-jwt'
import { createRemoteJWKSet, errors as joseErrors, jwtVerify, type JWTPayload } from 'jose'
import { createHash, createHmac, timingSafeEqual } from 'node:crypto'
import { isIP } from 'node:net'
import {
  claimsToJwtPayload,
  RoomConfiguration,
  WebhookEvent,
  type ClaimGrants,
  type WebhookEventNames,
} from 'livekit-server-sdk'

// Only the parts of Deno's API this file uses; declared so one file type-checks for both runtimes.
declare const Deno: {
  serve(
    options: { port: number; onListen?: (address: { port: number }) => void; onError?: (error: unknown) => Response },
    handler: (request: Request, info: { remoteAddr: { hostname: string } }) => Response | Promise<Response>,
  ): { shutdown(): Promise<void>; finished: Promise<void> }
  addSignalListener(signal: 'SIGTERM' | 'SIGINT', handler: () => void): void
}

// Configuration

export interface Config {
  port: number
  apiKey: string
  apiSecret: string
  livekitUrl: string
  tokenTtlSeconds: number
  /** The largest webhook body; token requests are capped lower still (maxTokenBodyBytes). */
  maxBodyBytes: number
  /** The bytes of all request bodies being read at once; beyond it, 503 before reading. */
  maxPendingBodyBytes: number
  usesDevCredentials: boolean
  /** Set when /token requires a bearer token from the application's identity provider. */
  auth?: AuthConfig
  /** Token requests each caller may make per minute; no limit when unset. */
  tokenRateLimit?: number
  /** How many reverse proxies in a row append to X-Forwarded-For (0: trust none of it). */
  trustedProxies: number
}

export interface AuthConfig {
  jwksUrl: URL
  issuer?: string
  audience?: string
  identityClaim: string
}

export class ConfigError extends Error {}

type Env = Record<string, string | undefined>

/** Reads and validates the configuration once; throws a ConfigError naming the bad variable. */
export function loadConfig(env: Env): Config {
  const apiKey = env.LIVEKIT_API_KEY || undefined
  const apiSecret = env.LIVEKIT_API_SECRET || undefined
  if (apiKey && !apiSecret) {
    throw new ConfigError('LIVEKIT_API_SECRET is required when LIVEKIT_API_KEY is set')
  }
  if (apiSecret && !apiKey) {
    throw new ConfigError('LIVEKIT_API_KEY is required when LIVEKIT_API_SECRET is set')
  }
  return {
    port: parseInteger(env, 'SERVER_PORT', 6080, 0, 65535),
    // LiveKit's and OpenVidu's development servers run with these credentials.
    apiKey: apiKey ?? 'devkey',
    apiSecret: apiSecret ?? 'secret',
    livekitUrl: parseWebSocketUrl(env, 'LIVEKIT_URL', 'ws://localhost:7880'),
    tokenTtlSeconds: parseDuration(env, 'TOKEN_TTL', '6h'),
    maxBodyBytes: parseInteger(env, 'MAX_BODY_BYTES', 1024 * 1024, 1, 64 * 1024 * 1024),
    maxPendingBodyBytes: parseInteger(env, 'MAX_PENDING_BODY_BYTES', 16 * 1024 * 1024, 1, 1024 * 1024 * 1024),
    usesDevCredentials: !apiKey,
    auth: parseAuth(env),
    tokenRateLimit: env.TOKEN_RATE_LIMIT?.trim() ? parseInteger(env, 'TOKEN_RATE_LIMIT', 0, 1, 1_000_000) : undefined,
    trustedProxies: parseProxyCount(env, 'TRUST_PROXY'),
  }
}

function parseAuth(env: Env): AuthConfig | undefined {
  const jwksUrl = env.AUTH_JWKS_URL?.trim()
  const dependents = ['AUTH_ISSUER', 'AUTH_AUDIENCE', 'AUTH_IDENTITY_CLAIM'].filter((name) => env[name]?.trim())
  if (!jwksUrl) {
    if (dependents.length > 0) throw new ConfigError(`${dependents[0]} has no effect without AUTH_JWKS_URL`)
    return undefined
  }
  if (!URL.canParse(jwksUrl) || !/^https?:$/.test(new URL(jwksUrl).protocol)) {
    throw new ConfigError(`AUTH_JWKS_URL must be an http:// or https:// URL, got "${jwksUrl}"`)
  }
  return {
    jwksUrl: new URL(jwksUrl),
    issuer: env.AUTH_ISSUER?.trim() || undefined,
    audience: env.AUTH_AUDIENCE?.trim() || undefined,
    identityClaim: env.AUTH_IDENTITY_CLAIM?.trim() || 'sub',
  }
}

/** A number of proxies: 0 to 10, with true/yes for 1 and false/no for 0. */
function parseProxyCount(env: Env, name: string): number {
  const text = env[name]?.trim().toLowerCase() ?? ''
  if (['', 'false', 'no'].includes(text)) return 0
  if (['true', 'yes'].includes(text)) return 1
  if (/^\d{1,2}$/.test(text) && Number(text) <= 10) return Number(text)
  throw new ConfigError(`${name} must be the number of proxies in front of the server (0 to 10), got "${env[name]}"`)
}

function parseInteger(env: Env, name: string, fallback: number, min: number, max: number): number {
  const text = env[name]?.trim()
  if (!text) return fallback
  const value = Number(text)
  if (!/^\d+$/.test(text) || value < min || value > max) {
    throw new ConfigError(`${name} must be an integer from ${min} to ${max}, got "${text}"`)
  }
  return value
}

const secondsPerUnit: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400 }

/** A lifetime in seconds ("600") or with a unit ("10m", "6h", "1d"). */
function parseDuration(env: Env, name: string, fallback: string): number {
  const text = env[name]?.trim() || fallback
  const match = /^(\d+)([smhd]?)$/.exec(text)
  const seconds = match ? Number(match[1]) * secondsPerUnit[match[2] || 's']! : NaN
  if (!(seconds > 0 && seconds <= 366 * 86400)) {
    throw new ConfigError(`${name} must be a positive duration such as 600, 10m or 6h (at most 366d), got "${text}"`)
  }
  return seconds
}

function parseWebSocketUrl(env: Env, name: string, fallback: string): string {
  const text = env[name]?.trim() || fallback
  if (!URL.canParse(text) || !/^(wss?|https?):$/.test(new URL(text).protocol)) {
    throw new ConfigError(`${name} must be a ws://, wss://, http:// or https:// URL, got "${text}"`)
  }
  return text
}

// Webhook events: what to do when LiveKit reports something

export type WebhookEventName = Exclude<WebhookEventNames, ''>
export type WebhookHandler = (event: WebhookEvent) => void | Promise<void>

/**
 * What to do for each event LiveKit sends. Replace an entry to add behaviour; a handler that
 * throws makes the answer a 500, so LiveKit delivers the event again.
 */
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
}

function logEvent(event: WebhookEvent): void {
  log('info', 'webhook', describeEvent(event))
}

function logUnknownEvent(event: WebhookEvent): void {
  log('info', 'webhook with unknown event name', describeEvent(event))
}

/** What the log line of an event names: the room, and whoever or whatever it is about. */
function describeEvent(event: WebhookEvent): Record<string, string | undefined> {
  return {
    event: event.event || undefined,
    id: event.id || undefined,
    room: event.room?.name || event.egressInfo?.roomName || event.ingressInfo?.roomName || undefined,
    participant: event.participant?.identity || undefined,
    track: event.track?.sid || undefined,
    egress: event.egressInfo?.egressId || undefined,
    ingress: event.ingressInfo?.ingressId || undefined,
  }
}

// The app

export function createApp(config: Config, handlers: Record<string, WebhookHandler> = webhookHandlers) {
  const mintToken = createTokenMinter(config)
  const verifyWebhook = createWebhookVerifier(config)
  const handledIds = new RecentIds()
  const authenticate = config.auth && createCallerAuthenticator(config.auth)
  const rateLimiter = config.tokenRateLimit ? new RateLimiter(config.tokenRateLimit) : undefined
  const readBody = createBodyReader(config.maxPendingBodyBytes)
  const maxTokenBodyBytes = Math.min(config.maxBodyBytes, tokenBodyLimit)
  // Who asked for each token request, once admitted; read by the /token handler.
  const callers = new WeakMap<Request, Caller>()

  /** Authenticates and rate-limits a token request before its body is read. */
  async function admitTokenRequest(request: Request, server: BunServer): Promise<void> {
    const caller = authenticate && (await authenticate(request))
    if (caller) callers.set(request, caller)
    const waitSeconds = rateLimiter?.take(caller?.identity ?? `address:${clientAddress(request, server, config.trustedProxies)}`)
    if (waitSeconds) {
      throw new HttpError(429, `Too many token requests, retry in ${waitSeconds} s`, { 'retry-after': String(waitSeconds) })
    }
  }

  /**
   * The token route's parser, so admission is bound to the handler itself: whatever spelling of the
   * path reached it (`/token/`, `/token?x`), no token request skips authentication or the rate limit.
   */
  async function readTokenRequest({ request, server }: { request: Request; server: BunServer }) {
    if (authenticate || rateLimiter) await admitTokenRequest(request, server)
    requireJsonContentType(request)
    return parseJsonObject(await readBody(request, maxTokenBodyBytes))
  }

  /** The identity and name a token gets: the authenticated caller's when there is one. */
  function participantFor(request: Request, asked: { identity?: string; name?: string }): { identity?: string; name?: string } {
    const caller = callers.get(request)
    if (!caller) return asked
    if (asked.identity && asked.identity !== caller.identity) {
      throw new HttpError(403, 'participant_identity must be the authenticated caller')
    }
    return { identity: caller.identity, name: caller.name ?? asked.name }
  }

  function answerTokenRequest(body: OpenViduTokenRequest | StandardTokenRequest, request: Request) {
    if (isOpenViduRequest(body)) {
      const { roomName, participantName } = body
      const { identity, name } = participantFor(request, { name: participantName })
      return { token: mintToken({ identity: identity ?? participantName, name, room: roomName }) }
    }
    const participant = standardParticipant(body)
    const { identity, name } = participantFor(request, { identity: body.participant_identity || undefined, name: participant.name })
    const participantToken = mintToken({ ...participant, identity: identity ?? participant.identity, name })
    return { server_url: config.livekitUrl, participant_token: participantToken }
  }

  async function receiveWebhook(request: Request) {
    // The signature covers the exact bytes, so read them raw whatever the Content-Type says.
    const body = await readBody(request, config.maxBodyBytes)
    let event: WebhookEvent
    try {
      event = verifyWebhook(body, request.headers.get('authorization'))
    } catch (error) {
      log('warn', 'webhook refused', { reason: (error as Error).message })
      return status(401, errorBody('Webhook signature is missing or invalid'))
    }
    if (event.id && !handledIds.add(event.id)) {
      log('info', 'webhook duplicate', describeEvent(event))
      return { received: 'duplicate' }
    }
    try {
      // Own entries only: an event named "__proto__" or "valueOf" must not find Object.prototype's.
      await (Object.hasOwn(handlers, event.event) ? handlers[event.event]! : logUnknownEvent)(event)
    } catch (error) {
      // Forget the id so that LiveKit's redelivery of this event is handled.
      if (event.id) handledIds.forget(event.id)
      log('error', 'webhook handler failed', { ...describeEvent(event), error: String(error) })
      return status(500, errorBody('Webhook handler failed'))
    }
    return { received: true }
  }

  return (
    new Elysia({
      // Validate what the client sent: normalising first would reshape it (an array into an object).
      normalize: false,
      // Find the path after "http://" whatever the Host header says: by default Elysia skips 11
      // characters, so a short Host ("a", "x") shifts the path it routes (`/ab/token` as `/token`).
      handler: { standardHostname: false },
    })
      .use(cors({ origin: '*', credentials: false, methods: ['GET', 'POST', 'OPTIONS'], exposeHeaders: ['Retry-After'], preflight: false }))
      .onError(answerError)
      .options('/*', ({ request }) => answerPreflight(request))
      .get('/health', () => ({ status: 'ok' }))
      .post('/token', ({ body, request }) => answerTokenRequest(body, request), {
        parse: readTokenRequest,
        body: t.Union([OpenViduTokenRequest, StandardTokenRequest]),
      })
      .post('/livekit/webhook', ({ request }) => receiveWebhook(request), { parse: 'none' })
  )
}

/** Every error in the shape OpenVidu's clients read, { "errorMessage": … }, and never a stack. */
function answerError({ code, error, set, path, request }: ErrorContext & { code: string | number; error: unknown }) {
  // Elysia wraps what a body parser throws in a ParseError; the HttpError is its cause.
  const httpError = error instanceof HttpError ? error : (error as Error | undefined)?.cause
  if (httpError instanceof HttpError) {
    set.status = httpError.status
    Object.assign(set.headers, httpError.headers)
    return errorBody(httpError.message)
  }
  if (code === 'VALIDATION' && path === '/token') {
    set.status = 400
    // The parser only lets JSON objects through.
    return errorBody(describeTokenRequestError((error as ValidationError).value as Record<string, unknown>))
  }
  if (code === 'NOT_FOUND') {
    set.status = 404
    return errorBody(`No route for ${request.method} ${path}`)
  }
  if (code === 'VALIDATION' || code === 'PARSE') {
    set.status = 400
    return errorBody('Invalid request')
  }
  // Anything else is a bug here: say so generically, keep the details (not the stack) in the log.
  log('error', 'request failed', { method: request.method, path, error: String(error) })
  set.status = 500
  return errorBody('Internal server error')
}

/** CORS preflights: any origin, and whatever headers the browser asks for ("*" would not cover Authorization). */
function answerPreflight(request: Request): Response {
  const headers = new Headers({ 'access-control-max-age': '600' })
  const requestedHeaders = request.headers.get('access-control-request-headers')
  if (requestedHeaders) headers.set('access-control-allow-headers', requestedHeaders)
  return new Response(null, { status: 204, headers })
}

// Token requests: two contracts on one route.

const maxNameLength = 256
const maxMetadataBytes = 64 * 1024
const maxAttributes = 64
const maxAttributesBytes = 64 * 1024
const maxAgents = 8
const maxAgentMetadataBytes = 64 * 1024
// The largest request those bounds allow (three 64 KiB fields), with room for JSON escaping.
const tokenBodyLimit = 256 * 1024

const nameField = (field: string) =>
  t.String({ maxLength: maxNameLength, error: `${field} must be a string of at most ${maxNameLength} characters` })

/** OpenVidu's tutorial clients: {"roomName", "participantName"} → {"token"}. */
const OpenViduTokenRequest = t.Object(
  {
    roomName: t.String({ minLength: 1, maxLength: maxNameLength }),
    participantName: t.String({ minLength: 1, maxLength: maxNameLength }),
  },
  { additionalProperties: true },
)

/** LiveKit's standard token endpoint (livekit-client's TokenSource.endpoint): every field optional. */
const StandardTokenRequest = t.Object(
  {
    // Their absence tells this contract from OpenVidu's.
    roomName: t.Optional(t.Never()),
    participantName: t.Optional(t.Never()),
    room_name: t.Optional(nameField('room_name')),
    participant_identity: t.Optional(nameField('participant_identity')),
    participant_name: t.Optional(nameField('participant_name')),
    participant_metadata: t.Optional(t.String({ error: 'participant_metadata must be a string' })),
    participant_attributes: t.Optional(
      t.Record(t.String(), t.String({ error: 'participant_attributes values must be strings' }), {
        maxProperties: maxAttributes,
        error: `participant_attributes must be an object of at most ${maxAttributes} string values`,
      }),
    ),
    room_config: t.Optional(
      t.Record(t.String(), t.Unknown(), { error: 'room_config must be a RoomConfiguration object' }),
    ),
  },
  { additionalProperties: true },
)

type OpenViduTokenRequest = typeof OpenViduTokenRequest.static
type StandardTokenRequest = typeof StandardTokenRequest.static

const openViduRequestError = 'roomName and participantName are required'
const standardRequestValidator = getSchemaValidator(StandardTokenRequest)

const isOpenViduRequest = (body: object): body is OpenViduTokenRequest =>
  'roomName' in body || 'participantName' in body

/** The union's own error says only "Expected union value"; name the field that is wrong instead. */
function describeTokenRequestError(body: Record<string, unknown>): string {
  if (isOpenViduRequest(body)) {
    const tooLong = [body.roomName, body.participantName].some((value) => typeof value === 'string' && value.length > maxNameLength)
    return tooLong ? `roomName and participantName must be at most ${maxNameLength} characters` : openViduRequestError
  }
  const first = standardRequestValidator.Errors(body).First()
  if (!first) return 'Invalid token request'
  const custom = (first.schema as { error?: unknown }).error
  return typeof custom === 'string' ? custom : `${first.path.slice(1).replaceAll('/', '.')}: ${first.message}`
}

interface Participant {
  identity: string
  name?: string
  metadata?: string
  attributes?: Record<string, string>
  room: string
  roomConfig?: RoomConfiguration
}

const randomSuffix = () => crypto.randomUUID().slice(0, 13).replace('-', '')

/** Turns a standard request into the participant it asks for, refusing what a client may not set. */
function standardParticipant(body: StandardTokenRequest): Participant {
  const metadata = body.participant_metadata
  if (metadata !== undefined && Buffer.byteLength(metadata) > maxMetadataBytes) {
    throw new HttpError(400, `participant_metadata must be at most ${maxMetadataBytes} bytes`)
  }
  const attributes = body.participant_attributes
  if (attributes) {
    const size = Object.entries(attributes).reduce((sum, [key, value]) => sum + Buffer.byteLength(key) + Buffer.byteLength(value), 0)
    if (size > maxAttributesBytes) {
      throw new HttpError(400, `participant_attributes must be at most ${maxAttributesBytes} bytes in all`)
    }
  }
  return {
    identity: body.participant_identity || `participant-${randomSuffix()}`,
    name: body.participant_name || undefined,
    metadata: metadata || undefined,
    attributes: attributes && Object.keys(attributes).length > 0 ? attributes : undefined,
    room: body.room_name || `room-${randomSuffix()}`,
    roomConfig: body.room_config && parseRoomConfig(body.room_config),
  }
}

/** A client may ask for agents to be dispatched; recording, limits and timeouts stay the server's call. */
function parseRoomConfig(json: Record<string, unknown>): RoomConfiguration {
  let roomConfig: RoomConfiguration
  try {
    roomConfig = RoomConfiguration.fromJson(json as never)
  } catch (error) {
    throw new HttpError(400, `room_config is not a valid RoomConfiguration: ${(error as Error).message}`)
  }
  const requested = Object.keys(roomConfig.toJson() as object).filter((field) => field !== 'agents')
  if (requested.length > 0) {
    throw new HttpError(403, `room_config may only request agents, not ${requested.join(', ')}`)
  }
  checkAgentDispatch(roomConfig.agents)
  return roomConfig
}

/** Which agents join, and what they are told; how they are deployed and restarted is the server's call. */
function checkAgentDispatch(agents: RoomConfiguration['agents']): void {
  if (agents.length > maxAgents) throw new HttpError(400, `room_config may request at most ${maxAgents} agents`)
  let metadataBytes = 0
  for (const agent of agents) {
    const requested = Object.keys(agent.toJson() as object).filter((field) => field !== 'agentName' && field !== 'metadata')
    if (requested.length > 0) {
      throw new HttpError(403, `room_config.agents may only name an agent and its metadata, not ${requested.join(', ')}`)
    }
    if (agent.agentName.length > maxNameLength) {
      throw new HttpError(400, `room_config agent names must be at most ${maxNameLength} characters`)
    }
    metadataBytes += Buffer.byteLength(agent.metadata)
  }
  if (metadataBytes > maxAgentMetadataBytes) {
    throw new HttpError(400, `room_config agent metadata must be at most ${maxAgentMetadataBytes} bytes in all`)
  }
}

// Tokens: the SDK says what the claims are (claimsToJwtPayload); signing them is one synchronous
// HMAC with a key prepared once, where the SDK's AccessToken imports the key into async WebCrypto
// on every call (in Bun, 130 µs a token against 3 µs).

// The header LiveKit's own Go minter writes.
const jwtHeader = Buffer.from(JSON.stringify({ alg: 'HS256', typ: 'JWT' })).toString('base64url')

export function createTokenMinter(config: Config) {
  // A Buffer key: Deno's node:crypto takes it about twice as fast as a string or a KeyObject.
  const signingKey = Buffer.from(config.apiSecret)
  return function mintToken(participant: Participant): string {
    const grants: ClaimGrants = {
      name: participant.name,
      metadata: participant.metadata,
      attributes: participant.attributes,
      // The same grant whatever the request says: join this one room, publish, subscribe, send data.
      video: { roomJoin: true, room: participant.room, canPublish: true, canSubscribe: true, canPublishData: true },
      roomConfig: participant.roomConfig,
    }
    const now = Math.floor(Date.now() / 1000)
    const claims = {
      ...claimsToJwtPayload(grants),
      iss: config.apiKey,
      sub: participant.identity,
      nbf: now,
      exp: now + config.tokenTtlSeconds,
    }
    const signingInput = `${jwtHeader}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}`
    return `${signingInput}.${createHmac('sha256', signingKey).update(signingInput).digest('base64url')}`
  }
}

// Callers: who may ask for a token, and how often

export interface Caller {
  identity: string
  name?: string
}

// Identity providers sign ID tokens with public-key algorithms; an HMAC "alg" here would be an attack.
const asymmetricAlgorithms = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA', 'Ed25519']

/** Checks the caller's bearer token against the identity provider's published keys (JWKS). */
export function createCallerAuthenticator(auth: AuthConfig) {
  // jose caches the key set, refetches it when an unknown key id shows up (key rotation; at most
  // every 5 s), and gives up on a slow provider after 3 s instead of hanging the request.
  const keySet = createRemoteJWKSet(auth.jwksUrl, { timeoutDuration: 3000, cooldownDuration: 5000 })
  const refused = (reason: string) => {
    log('warn', 'token request refused', { reason })
    return new HttpError(401, 'A valid bearer token is required', { 'www-authenticate': 'Bearer' })
  }

  return async function authenticate(request: Request): Promise<Caller> {
    const bearer = /^Bearer +([\w-]+\.[\w-]+\.[\w-]+) *$/i.exec(request.headers.get('authorization') ?? '')
    if (!bearer) throw refused('no bearer token')
    let payload: JWTPayload
    try {
      ;({ payload } = await jwtVerify(bearer[1]!, keySet, {
        algorithms: asymmetricAlgorithms,
        issuer: auth.issuer,
        audience: auth.audience,
        // An ID token without an expiry would be good forever once leaked.
        requiredClaims: ['exp'],
        clockTolerance: 30,
      }))
    } catch (error) {
      if (isProviderFailure(error)) {
        log('error', 'identity provider unavailable', { reason: String(error) })
        throw new HttpError(503, 'The identity provider is unavailable, try again shortly', { 'retry-after': '5' })
      }
      throw refused(String(error))
    }
    const identity = payload[auth.identityClaim]
    if (typeof identity !== 'string' || identity.length === 0 || identity.length > maxNameLength) {
      throw refused(`claim ${auth.identityClaim} is not an identity`)
    }
    const name = typeof payload.name === 'string' && payload.name.length > 0 ? payload.name.slice(0, maxNameLength) : undefined
    return { identity, name }
  }
}

/** The key set could not be fetched (down, slow, not a JWKS), as opposed to a bad token. */
function isProviderFailure(error: unknown): boolean {
  if (!(error instanceof joseErrors.JOSEError)) return true // fetch's own network errors
  return error instanceof joseErrors.JWKSTimeout || error instanceof joseErrors.JWKSInvalid || error.code === 'ERR_JOSE_GENERIC'
}

/**
 * Allows each caller `perMinute` requests, refilled continuously (a token bucket). Callers idle
 * for a minute are forgotten, and at most `maxCallers` are remembered, so memory stays bounded.
 */
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
    const allowance = bucket ? Math.min(this.perMinute, bucket.allowance + (now - bucket.at) * refillPerMs) : this.perMinute
    if (allowance < 1) return Math.ceil((1 - allowance) / refillPerMs / 1000)
    this.buckets.set(caller, { allowance: allowance - 1, at: now })
    if (this.buckets.size > this.maxCallers || now - this.sweptAt >= 60_000) this.sweep(now)
    return 0
  }

  /**
   * Forgets idle callers (their allowance is full again anyway); then, if still too many, the
   * longest-known ones, down to 90% so that a crowd of callers does not make every request sweep.
   */
  private sweep(now: number): void {
    this.sweptAt = now
    for (const [caller, { at }] of this.buckets) if (now - at >= 60_000) this.buckets.delete(caller)
    for (const caller of this.buckets.keys()) {
      if (this.buckets.size <= this.maxCallers * 0.9) break
      this.buckets.delete(caller)
    }
  }
}

// The connecting address, which Deno hands to its serve handler rather than to Elysia.
const remoteAddresses = new WeakMap<Request, string>()

type BunServer = { requestIP(request: Request): { address: string } | null } | null

/**
 * The client's address: the connection's own, or behind N trusted proxies the X-Forwarded-For hop
 * the outermost of them appended (N from the right: the hops to its left are the client's to write).
 */
function clientAddress(request: Request, server: BunServer, trustedProxies: number): string {
  const connectionAddress = remoteAddresses.get(request) ?? server?.requestIP(request)?.address ?? 'unknown'
  if (trustedProxies === 0) return connectionAddress
  const hops = request.headers.get('x-forwarded-for')?.split(',') ?? []
  const hop = hops[hops.length - trustedProxies]?.trim()
  // Only a real address: it becomes a rate-limit key, so nothing long or made-up.
  return hop && isIP(hop) ? hop : connectionAddress
}

// Webhook verification and redeliveries

/**
 * Verifies a webhook as livekit-server-sdk's WebhookReceiver does (`iss` = API key and `exp` required,
 * 10 s clock tolerance, `sha256` claim = base64 SHA-256 of the body), but synchronously and for
 * HS256 only: what LiveKit signs with, and all LiveKit servers since 1.13 accept.
 */
export function createWebhookVerifier(config: Config) {
  const verifyJwt = createVerifier({
    key: config.apiSecret,
    algorithms: ['HS256'],
    allowedIss: config.apiKey,
    requiredClaims: ['exp', 'iss'], // fast-jwt checks allowedIss only when iss is present
    clockTolerance: 10_000,
  })
  return function verifyWebhook(body: Uint8Array, authorization: string | null): WebhookEvent {
    if (!authorization) throw new Error('authorization header is empty')
    const claims = verifyJwt(authorization) as { sha256?: unknown }
    const expected = Buffer.from(createHash('sha256').update(body).digest('base64'))
    const signed = Buffer.from(typeof claims.sha256 === 'string' ? claims.sha256 : '')
    if (signed.length !== expected.length || !timingSafeEqual(signed, expected)) {
      throw new Error('sha256 checksum of body does not match')
    }
    return WebhookEvent.fromJson(JSON.parse(utf8.decode(body)), { ignoreUnknownFields: true })
  }
}

/**
 * Event ids already handled. LiveKit redelivers after a 5xx or a broken connection, and its queues
 * can repeat an event, so an id may come back; remembering the newest ones for a while is enough.
 */
export class RecentIds {
  private readonly seen = new Map<string, { at: number; slot: number }>()
  // The remembered ids in order of arrival, a ring: each new id takes the oldest one's slot.
  // (Deleting from the front of a Map and iterating it again is slow: its holes are walked over.)
  private readonly slots: (string | undefined)[]
  private nextSlot = 0

  constructor(
    capacity = 10_000,
    private readonly ttlMs = 10 * 60_000,
  ) {
    this.slots = new Array(capacity)
  }

  /** Remembers the id; false when it was already remembered (and not yet forgotten). */
  add(id: string, now = Date.now()): boolean {
    const seen = this.seen.get(id)
    if (seen !== undefined && now - seen.at < this.ttlMs) return false
    const evicted = this.slots[this.nextSlot]
    if (evicted !== undefined && this.seen.get(evicted)?.slot === this.nextSlot) this.seen.delete(evicted)
    this.slots[this.nextSlot] = id
    this.seen.set(id, { at: now, slot: this.nextSlot })
    this.nextSlot = (this.nextSlot + 1) % this.slots.length
    return true
  }

  forget(id: string): void {
    this.seen.delete(id)
  }

  get size(): number {
    return this.seen.size
  }
}

// Request bodies and errors: every error answers the OpenVidu clients' shape, { "errorMessage": … }

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message)
  }
}

const errorBody = (errorMessage: string) => ({ errorMessage })

const utf8 = new TextDecoder()

/**
 * Reads request bodies, each up to its route's limit, and bounds the bytes of all the bodies being
 * read at once (each counted at its declared length, or its route's limit when chunked): a crowd of
 * slow uploads cannot take the memory, since a body that does not fit is refused before it is read.
 */
function createBodyReader(maxPendingBytes: number) {
  let pendingBytes = 0
  return async function readBody(request: Request, maxBytes: number): Promise<Uint8Array> {
    const contentLength = request.headers.get('content-length')
    const reservedBytes = contentLength === null ? maxBytes : Number(contentLength)
    if (!(reservedBytes <= maxBytes)) throw new HttpError(413, `Request body must be at most ${maxBytes} bytes`)
    if (pendingBytes + reservedBytes > maxPendingBytes) {
      // Closing the connection stops the upload rather than draining it (Bun; Deno drains first).
      throw new HttpError(503, 'The server is busy receiving other requests, retry shortly', { 'retry-after': '1', connection: 'close' })
    }
    pendingBytes += reservedBytes
    try {
      // A declared length bounds the body (the HTTP server enforces it), so read it in one go.
      if (contentLength !== null || !request.body) return new Uint8Array(await request.arrayBuffer())
      return await readChunkedBody(request.body, maxBytes)
    } catch (error) {
      if (error instanceof HttpError) throw error
      // The upload broke off: nothing of ours failed, and no one is left to read the answer.
      log('info', 'request aborted by client', { reason: String(error) })
      throw new HttpError(400, 'Request body could not be read')
    } finally {
      pendingBytes -= reservedBytes
    }
  }
}

/** A chunked body has no declared length: count while reading, stop at the limit. */
async function readChunkedBody(stream: ReadableStream<Uint8Array>, maxBytes: number): Promise<Uint8Array> {
  const chunks: Uint8Array[] = []
  let size = 0
  for await (const chunk of stream) {
    size += chunk.byteLength
    if (size > maxBytes) throw new HttpError(413, `Request body must be at most ${maxBytes} bytes`) // leaving the loop cancels the stream
    chunks.push(chunk)
  }
  const body = new Uint8Array(size)
  let offset = 0
  for (const chunk of chunks) {
    body.set(chunk, offset)
    offset += chunk.byteLength
  }
  return body
}

function requireJsonContentType(request: Request): void {
  const contentType = request.headers.get('content-type') ?? ''
  if (!/^application\/([\w.+-]+\+)?json\s*(;|$)/i.test(contentType)) {
    throw new HttpError(400, 'Content-Type must be application/json')
  }
}

function parseJsonObject(bytes: Uint8Array): Record<string, unknown> {
  // Deep nesting costs every step after parsing (Elysia's validation errors pretty-print the body),
  // so refuse it first, in one pass over the bytes.
  if (nestedDeeperThan(bytes, maxJsonDepth)) {
    throw new HttpError(400, `Request body must be nested at most ${maxJsonDepth} levels deep`)
  }
  let value: unknown
  try {
    value = JSON.parse(utf8.decode(bytes))
  } catch {
    throw new HttpError(400, 'Request body must be valid JSON')
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new HttpError(400, 'Request body must be a JSON object')
  }
  return value as Record<string, unknown>
}

const maxJsonDepth = 32
// The bytes that matter: " \ { } [ ]
const [quote, backslash, openBrace, closeBrace, openBracket, closeBracket] = [0x22, 0x5c, 0x7b, 0x7d, 0x5b, 0x5d]

/** Whether JSON text opens more than `levels` objects and arrays inside one another (strings skipped). */
function nestedDeeperThan(json: Uint8Array, levels: number): boolean {
  let depth = 0
  let inString = false
  for (let i = 0; i < json.length; i++) {
    const byte = json[i]
    if (inString) {
      if (byte === backslash) i++
      else if (byte === quote) inString = false
    } else if (byte === quote) inString = true
    else if (byte === openBrace || byte === openBracket) {
      if (++depth > levels) return true
    } else if (byte === closeBrace || byte === closeBracket) depth--
  }
  return false
}

// Logging: one JSON object per line, so logs stay greppable and machine-readable.

type Level = 'info' | 'warn' | 'error'

const lineSeparators = /[\u2028\u2029]/g
const escapeCharacter = (character: string) => `\\u${character.charCodeAt(0).toString(16)}`

export function log(level: Level, msg: string, fields: Record<string, unknown> = {}): void {
  // U+2028 and U+2029 are valid in JSON but end a line for some log readers: escape them too.
  const line = JSON.stringify({ time: new Date().toISOString(), level, msg, ...fields }).replace(lineSeparators, escapeCharacter)
  if (level === 'info') console.log(line)
  else console.error(line)
}

// Starting and stopping

export interface RunningServer {
  port: number
  stop(): Promise<void>
}

/** Serves the app on Bun or Deno; resolves once it listens. */
export async function startServer(app: ReturnType<typeof createApp>, port: number): Promise<RunningServer> {
  if (!('Bun' in globalThis)) return serveOnDeno(app, port)
  app.listen({ port })
  const server = app.server!
  // Bun's stop() closes the listener and resolves once the requests in flight are answered.
  return { port: server.port!, stop: () => server.stop() }
}

function serveOnDeno(app: ReturnType<typeof createApp>, port: number): Promise<RunningServer> {
  // Deno's shutdown() (2.9, seen here) makes the bodies of requests in flight unreadable, so
  // stopping first waits for those requests, and answers 503 to any that arrive meanwhile.
  let inFlight = 0
  let stopping = false
  let onIdle = () => {}
  const handler = async (request: Request, info: { remoteAddr: { hostname: string } }) => {
    if (stopping) {
      return Response.json(errorBody('The server is stopping'), { status: 503, headers: { connection: 'close', 'retry-after': '1' } })
    }
    // Deno writes the Host header into request.url as it came: a "/" in it would move the path routed.
    if (request.headers.get('host')?.includes('/')) return Response.json(errorBody('Invalid Host header'), { status: 400 })
    inFlight += 1
    try {
      remoteAddresses.set(request, info.remoteAddr.hostname)
      const response = await app.fetch(request)
      // An upload refused before it was read (503 while busy) closes its connection.
      if (response.headers.get('connection') === 'close' && request.body && !request.bodyUsed) return cutShort(response)
      return response
    } finally {
      inFlight -= 1
      if (inFlight === 0) onIdle()
    }
  }

  return new Promise((resolve, reject) => {
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
        server = Deno.serve({ port, onError: answerServeError, onListen }, handler)
      } catch (error) {
        if (!listening) return reject(error) // the first time: let the caller say why
        log('warn', 'could not listen again, retrying in 1 s', { error: String(error) })
        return void setTimeout(listen, 1000)
      }
      server.finished.catch((error) => recover(server, error))
    }
    /**
     * Deno.serve closes no idle connection, so a flood of them can use up the file descriptors; its
     * accept loop then ends. Closing its connections (waiting at most 2 s for requests in flight)
     * and listening again on the same port brings the server back; listening again before any
     * descriptor was free made Deno 2.9 abort.
     */
    const recover = async (deadServer: typeof server, error: unknown) => {
      if (stopping) return
      if (!/os error 2[34]\)/.test(String(error))) {
        log('error', 'the server stopped accepting connections', { error: String(error) })
        process.exit(1)
      }
      log('warn', 'out of file descriptors: closing every connection and listening again', { error: String(error) })
      await Promise.race([deadServer.shutdown().catch(() => {}), new Promise((resolve) => setTimeout(resolve, 2000))])
      setTimeout(listen, 100)
    }
    listen()
  })
}

/**
 * Deno reads a request body it was not asked to read to its end before it closes the connection;
 * refusing an upload is then as costly as taking it. An answer whose body fails makes Deno close
 * the connection at once: the status and headers still reach the client, the body does not.
 */
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

/** Stops taking connections on SIGTERM/SIGINT, lets requests in flight finish, then exits. */
function stopOnSignals(server: RunningServer): void {
  let stopping = false
  const stop = (signal: string) => {
    if (stopping) return
    stopping = true
    log('info', `${signal} received, finishing requests in flight`)
    setTimeout(() => {
      log('warn', 'requests still in flight after 10 s, exiting anyway')
      process.exit(1)
    }, 10_000).unref?.()
    server.stop().then(() => {
      log('info', 'stopped')
      process.exit(0)
    })
  }
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    if ('Bun' in globalThis) process.on(signal, () => stop(signal))
    else Deno.addSignalListener(signal, () => stop(signal))
  }
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
  if (config.usesDevCredentials) {
    log('warn', 'LIVEKIT_API_KEY and LIVEKIT_API_SECRET are not set: using the development credentials (key "devkey")')
  }
  const server = await startServer(createApp(config), config.port)
  // Handle signals before saying so: whoever waits for this line may stop the server at once.
  stopOnSignals(server)
  log('info', `listening on http://localhost:${server.port}`, { port: server.port })
}

if (import.meta.main) await main()
