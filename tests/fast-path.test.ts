// Differential tests: the synchronous token signer and webhook verifier in index.ts must agree with
// livekit-server-sdk's AccessToken and WebhookReceiver, which define what a token and a webhook are.
import { describe, expect, test } from 'bun:test'
import fc from 'fast-check'
import { createHash } from 'node:crypto'
import { AccessToken, RoomConfiguration, TokenVerifier, WebhookReceiver } from 'livekit-server-sdk'
import { createWebhookVerifier, loadConfig } from '../index'
import { runtimeNames, serveDuringTests, testCredentials } from './server'
import { signJwt, signWebhook, webhookEvent } from './livekit'

const credentials = testCredentials()
const config = loadConfig({ LIVEKIT_API_KEY: credentials.apiKey, LIVEKIT_API_SECRET: credentials.apiSecret })

const decodePayload = (token: string) => JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString())
const withoutTimes = ({ nbf, exp, ...claims }: Record<string, unknown>) => claims

const text = (maxLength: number) => fc.string({ unit: 'grapheme', minLength: 1, maxLength })
const standardRequest = fc.record(
  {
    room_name: text(40),
    participant_identity: text(40),
    participant_name: text(40),
    participant_metadata: fc.string({ unit: 'binary', maxLength: 300 }),
    participant_attributes: fc.dictionary(text(12), fc.string({ unit: 'grapheme', maxLength: 30 }), { maxKeys: 8 }),
    room_config: fc.record({
      agents: fc.array(fc.record({ agent_name: text(20), metadata: fc.string({ maxLength: 50 }) }, { requiredKeys: ['agent_name'] }), { minLength: 1, maxLength: 3 }),
    }),
  },
  { requiredKeys: [] },
)
type StandardRequest = typeof standardRequest extends fc.Arbitrary<infer Request> ? Request : never

for (const runtime of runtimeNames) {
  describe(`${runtime}: POST /token signs exactly what the SDK would`, () => {
    const running = serveDuringTests(runtime, { LIVEKIT_API_KEY: credentials.apiKey, LIVEKIT_API_SECRET: credentials.apiSecret })

    /** The token livekit-server-sdk's AccessToken makes for the participant the server chose. */
    async function sdkToken(request: StandardRequest, identity: string, room: string) {
      const token = new AccessToken(credentials.apiKey, credentials.apiSecret, {
        identity,
        name: request.participant_name,
        metadata: request.participant_metadata,
        attributes: Object.keys(request.participant_attributes ?? {}).length > 0 ? request.participant_attributes : undefined,
        ttl: config.tokenTtlSeconds,
      })
      token.addGrant({ roomJoin: true, room, canPublish: true, canSubscribe: true, canPublishData: true })
      if (request.room_config) token.roomConfig = RoomConfiguration.fromJson(request.room_config)
      return token.toJwt()
    }

    test('gives the claims of the SDK AccessToken for a thousand random standard requests', async () => {
      const verifier = new TokenVerifier(credentials.apiKey, credentials.apiSecret)
      await fc.assert(
        fc.asyncProperty(standardRequest, async (request) => {
          const answer = await running.http.postJson('/token', request)
          expect(answer.status).toBe(200)
          const token = answer.json().participant_token
          const claims = await verifier.verify(token)
          const expected = decodePayload(await sdkToken(request, claims.sub!, claims.video!.room!))
          expect(withoutTimes(decodePayload(token))).toEqual(withoutTimes(expected))
          // The default TOKEN_TTL, exactly; the SDK reads the clock twice, so its own may be a second short.
          expect(claims.exp! - claims.nbf!).toBe(6 * 3600)
          expect(6 * 3600 - (expected.exp - expected.nbf)).toBeWithin(0, 2)
        }),
        { numRuns: 1000 },
      )
    })

    test('gives the claims of the SDK AccessToken for random OpenVidu requests', async () => {
      const verifier = new TokenVerifier(credentials.apiKey, credentials.apiSecret)
      await fc.assert(
        fc.asyncProperty(text(60), text(60), async (roomName, participantName) => {
          const answer = await running.http.postJson('/token', { roomName, participantName })
          const token = answer.json().token
          await verifier.verify(token)
          const expected = decodePayload(await sdkToken({ participant_name: participantName }, participantName, roomName))
          expect(withoutTimes(decodePayload(token))).toEqual(withoutTimes(expected))
        }),
        { numRuns: 200 },
      )
    })
  })
}

describe('the webhook verifier', () => {
  const verifyWebhook = createWebhookVerifier(config)
  const receiver = new WebhookReceiver(credentials.apiKey, credentials.apiSecret)
  const hashOf = (text: string) => createHash('sha256').update(text).digest('base64')
  let body = JSON.stringify(webhookEvent('participant_joined', { participant: { sid: 'PA_1', identity: 'alice' } }))
  // Pad until the hash has a "+" or "/", so that its base64url spelling really differs.
  while (!/[+/]/.test(hashOf(body))) body += ' '
  const sha256 = hashOf(body)
  // Tokens are signed when a test runs, not when the file loads, so clock-tolerance cases stay exact.
  const nowSeconds = () => Math.floor(Date.now() / 1000)
  const valid = () => signWebhook(body, credentials)
  const sign = (overrides: (now: number) => object, header?: { alg: string; [name: string]: unknown }, secret = credentials.apiSecret) => {
    const now = nowSeconds()
    return signJwt({ iss: credentials.apiKey, nbf: now, exp: now + 300, sha256, ...overrides(now) }, secret, header)
  }

  /** Whether each verifier accepts the webhook, and the event each decodes. */
  async function verdicts(payload: string, authorization: string | undefined) {
    let fast: string | false
    let sdk: string | false
    try {
      fast = JSON.stringify(verifyWebhook(Buffer.from(payload), authorization ?? null).toJson())
    } catch {
      fast = false
    }
    try {
      sdk = JSON.stringify((await receiver.receive(payload, authorization)).toJson())
    } catch {
      sdk = false
    }
    return { fast, sdk }
  }

  const pretty = JSON.stringify(JSON.parse(body), null, 2)
  const corpus: [string, () => [string, string | undefined]][] = [
    ['a valid webhook', () => [body, valid()]],
    ['a pretty-printed valid webhook', () => [pretty, signWebhook(pretty, credentials)]],
    ['an altered body', () => [body.replace('alice', 'mallory'), valid()]],
    ['a body with a byte appended', () => [body + ' ', valid()]],
    ['an expired token', () => [body, sign((now) => ({ nbf: now - 900, exp: now - 600 }))]],
    ['a token expired 5 s ago, within the clock tolerance', () => [body, sign((now) => ({ exp: now - 5 }))]],
    ['a token expired 30 s ago, past the clock tolerance', () => [body, sign((now) => ({ exp: now - 30 }))]],
    ['a token not valid for another hour', () => [body, sign((now) => ({ nbf: now + 3600, exp: now + 3900 }))]],
    ['a token valid in 5 s, within the clock tolerance', () => [body, sign((now) => ({ nbf: now + 5 }))]],
    ['a token signed with another secret', () => [body, sign(() => ({}), undefined, 'another-secret')]],
    ['a token issued for another API key', () => [body, sign(() => ({ iss: 'another-key' }))]],
    ['a token without an issuer', () => [body, sign(() => ({ iss: undefined }))]],
    ['a token without exp', () => [body, sign(() => ({ exp: undefined }))]],
    ['a token without a body hash', () => [body, sign(() => ({ sha256: undefined }))]],
    ['a body hash in base64url', () => [body, sign(() => ({ sha256: sha256.replaceAll('+', '-').replaceAll('/', '_') }))]],
    ['a body hash without padding', () => [body, sign(() => ({ sha256: sha256.replace(/=+$/, '') }))]],
    ['a body hash with junk appended', () => [body, sign(() => ({ sha256: `${sha256}!!` }))]],
    ['a body hash that is a number', () => [body, sign(() => ({ sha256: 42 }))]],
    ['an alg: none token', () => [body, sign(() => ({}), { alg: 'none', typ: 'JWT' })]],
    ['an HS256 token with the JS SDK header', () => [body, sign(() => ({}), { alg: 'HS256' })]],
    ['a token with a critical header extension', () => [body, sign(() => ({}), { alg: 'HS256', typ: 'JWT', crit: ['exp'], exp: 1 })]],
    ['a token whose exp is a string', () => [body, sign((now) => ({ exp: String(now + 300) }))]],
    ['a token whose nbf is a string', () => [body, sign((now) => ({ nbf: String(now) }))]],
    ['a token whose iat is not a number', () => [body, sign(() => ({ iat: 'yesterday' }))]],
    ['a token with a fourth segment', () => [body, `${valid()}.${valid().split('.')[2]}`]],
    ['a truncated token', () => [body, valid().slice(0, -10)]],
    ['a token without its signature', () => [body, valid().split('.').slice(0, 2).join('.') + '.']],
    ['a token with a Bearer prefix', () => [body, `Bearer ${valid()}`]],
    ['a garbage header', () => [body, 'garbage']],
    ['an empty header', () => [body, '']],
    ['no header', () => [body, undefined]],
    ['a signed body that is not JSON', () => ['not json', signWebhook('not json', credentials)]],
    ['a signed empty body', () => ['', signWebhook('', credentials)]],
    ['a signed JSON body of the wrong shape', () => ['{"room":5}', signWebhook('{"room":5}', credentials)]],
  ]

  for (const [what, make] of corpus) {
    test(`agrees with the SDK's WebhookReceiver on ${what}`, async () => {
      const { fast, sdk } = await verdicts(...make())
      expect(fast).toEqual(sdk)
    })
  }

  test('accepts valid webhooks and refuses everything else in that corpus', async () => {
    const accepted = []
    for (const [what, make] of corpus) if ((await verdicts(...make())).fast) accepted.push(what)
    expect(accepted).toEqual([
      'a valid webhook',
      'a pretty-printed valid webhook',
      'a token expired 5 s ago, within the clock tolerance',
      'a token valid in 5 s, within the clock tolerance',
      'an HS256 token with the JS SDK header',
    ])
  })

  // The one intended difference: the SDK's verifier also takes HS384 and HS512, which LiveKit
  // never signs with and LiveKit servers since 1.13 refuse.
  for (const alg of ['HS384', 'HS512']) {
    test(`refuses an ${alg} token that the SDK would accept`, async () => {
      const { fast, sdk } = await verdicts(body, sign(() => ({}), { alg, typ: 'JWT' }))
      expect(sdk).toBeString()
      expect(fast).toBe(false)
    })
  }

  // A second, found by the property below: the SDK's base64url decoder also reads standard base64
  // and skips whitespace, so it takes a signature that is not base64url. LiveKit writes base64url.
  const isBase64url = (segment: string) => /^[\w-]*$/.test(segment)
  const respellSignature = (token: string, respell: (signature: string) => string) => {
    const [header, payload, signature] = token.split('.') as [string, string, string]
    return `${header}.${payload}.${respell(signature)}`
  }
  const notBase64url: [string, (signature: string) => string][] = [
    ['written in standard base64', (signature) => signature.replaceAll('-', '+').replaceAll('_', '/')],
    ['with whitespace inside', (signature) => `${signature.slice(0, 10)}\t ${signature.slice(10)}`],
  ]
  /** A valid token whose signature has a "-" or "_", the characters base64 spells "+" and "/". */
  const validWithUrlCharacters = () => {
    for (let extraSeconds = 0; ; extraSeconds++) {
      const signed = sign((now) => ({ exp: now + 300 + extraSeconds }))
      if (/[-_]/.test(signed.split('.')[2]!)) return signed
    }
  }
  for (const [what, respell] of notBase64url) {
    test(`refuses a signature ${what} that the SDK would accept`, async () => {
      const signed = validWithUrlCharacters()
      const respelled = respellSignature(signed, respell)
      expect(isBase64url(respelled.split('.')[2]!)).toBe(false)
      const { fast, sdk } = await verdicts(body, respelled)
      expect(sdk).toBeString()
      expect(fast).toBe(false)
    })
  }

  test('agrees with the SDK on a thousand random alterations of a valid webhook', async () => {
    const alteration = fc.record({
      part: fc.constantFrom('body', 'header'),
      at: fc.nat(),
      char: fc.string({ unit: 'binary-ascii', minLength: 1, maxLength: 2 }),
    })
    await fc.assert(
      fc.asyncProperty(alteration, async ({ part, at, char }) => {
        const signed = valid()
        const target = part === 'body' ? body : signed
        const index = at % target.length
        const altered = target.slice(0, index) + char + target.slice(index + 1)
        const { fast, sdk } = await verdicts(part === 'body' ? altered : body, part === 'body' ? signed : altered)
        const lenientSignature = part === 'header' && !isBase64url(altered.split('.')[2] ?? '')
        if (lenientSignature && sdk && !fast) return // the pinned difference above
        expect(fast).toEqual(sdk)
      }),
      { numRuns: 1000 },
    )
  })
})
