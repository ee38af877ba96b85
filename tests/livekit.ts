// Signs and verifies the way a LiveKit server does, with node:crypto alone, so that the tests
// would notice if index.ts misused livekit-server-sdk (see ../shared/livekit-wire.md).
import { createHash, createHmac, timingSafeEqual } from 'node:crypto'

const base64url = (data: string | Uint8Array) => Buffer.from(data).toString('base64url')

const hmacHashes: Record<string, string> = { HS256: 'sha256', HS384: 'sha384', HS512: 'sha512' }

/** A compact JWT, HS256 with the header LiveKit's Go minter writes unless told otherwise. */
export function signJwt(claims: object, secret: string, header: { alg: string; [name: string]: unknown } = { alg: 'HS256', typ: 'JWT' }): string {
  const signingInput = `${base64url(JSON.stringify(header))}.${base64url(JSON.stringify(claims))}`
  const hash = hmacHashes[header.alg]
  const signature = hash ? createHmac(hash, secret).update(signingInput).digest('base64url') : ''
  return `${signingInput}.${signature}`
}

export interface Credentials {
  apiKey: string
  apiSecret: string
}

/**
 * The Authorization header a LiveKit server sends with a webhook body: the bare JWT, valid for
 * five minutes, whose `sha256` claim is the standard base64 of the SHA-256 of the exact body bytes.
 */
export function signWebhook(body: string | Uint8Array, { apiKey, apiSecret }: Credentials, nowSeconds = Math.floor(Date.now() / 1000)): string {
  const sha256 = createHash('sha256').update(body).digest('base64')
  return signJwt({ iss: apiKey, nbf: nowSeconds, exp: nowSeconds + 5 * 60, sha256 }, apiSecret)
}

export interface TokenClaims {
  iss: string
  sub?: string
  nbf: number
  exp: number
  name?: string
  metadata?: string
  attributes?: Record<string, string>
  video?: Record<string, unknown>
  roomConfig?: Record<string, unknown>
  [claim: string]: unknown
}

/** Checks an access token as a LiveKit server would (HS256 signature, issuer, validity) and returns its claims. */
export function verifyAccessToken(token: string, { apiKey, apiSecret }: Credentials): TokenClaims {
  const parts = token.split('.')
  if (parts.length !== 3) throw new Error('not a compact JWT')
  const [header, payload, signature] = parts as [string, string, string]
  if (JSON.parse(Buffer.from(header, 'base64url').toString()).alg !== 'HS256') throw new Error('not HS256')
  const expected = createHmac('sha256', apiSecret).update(`${header}.${payload}`).digest()
  const actual = Buffer.from(signature, 'base64url')
  if (actual.length !== expected.length || !timingSafeEqual(actual, expected)) throw new Error('bad signature')
  const claims = JSON.parse(Buffer.from(payload, 'base64url').toString()) as TokenClaims
  const now = Date.now() / 1000
  if (claims.iss !== apiKey) throw new Error(`issuer is ${claims.iss}`)
  if (!(claims.nbf <= now + 60 && claims.exp > now)) throw new Error('token is not valid now')
  return claims
}

/** LiveKit's webhook event names as of 2026-08 (livekit_webhook.proto), written out here, not read from the server. */
export const livekitEventNames = [
  'room_started',
  'room_finished',
  'participant_joined',
  'participant_left',
  'participant_connection_aborted',
  'track_published',
  'track_unpublished',
  'egress_started',
  'egress_updated',
  'egress_ended',
  'ingress_started',
  'ingress_ended',
  'agent_job_started',
  'agent_job_ended',
]

let eventCount = 0

/** A WebhookEvent as a LiveKit server serialises it: proto3 JSON, camelCase, int64 as strings. */
export function webhookEvent(event: string, fields: Record<string, unknown> = {}): Record<string, unknown> {
  eventCount += 1
  return {
    event,
    room: { sid: 'RM_test', name: 'room1', emptyTimeout: 300, creationTime: '1764000000' },
    id: `EV_${process.pid}_${Date.now()}_${eventCount}`,
    createdAt: String(Math.floor(Date.now() / 1000)),
    ...fields,
  }
}

/**
 * Runs `attempt` with the current second, starting right after the clock ticks over, until it starts
 * and ends within that second: whoever checks a time meanwhile (the server, on this machine's clock)
 * saw that same second, so an edge such as "exp = now - 9" is exact whatever the load.
 */
export async function withinOneSecond<T>(attempt: (nowSeconds: number) => T | Promise<T>): Promise<T> {
  for (let tries = 0; tries < 10; tries++) {
    await Bun.sleep(1000 - (Date.now() % 1000))
    const nowSeconds = Math.floor(Date.now() / 1000)
    const result = await attempt(nowSeconds)
    if (Math.floor(Date.now() / 1000) === nowSeconds) return result
  }
  throw new Error('10 attempts in a row each took more than the rest of a second')
}
