// POST /token behind caller authentication (AUTH_JWKS_URL), in this process: the key set is served
// on loopback by ../identity-provider.ts, and ID tokens are signed with keys made here.
import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { testCredentials } from '../server'
import { verifyAccessToken } from '../livekit'
import {
  audience,
  idToken,
  issuer,
  makeKey,
  makeSharedKey,
  startIdentityProvider,
  type SigningKey,
} from '../identity-provider'
import { appWith } from './app'

const credentials = testCredentials()
const livekitEnv = { LIVEKIT_API_KEY: credentials.apiKey, LIVEKIT_API_SECRET: credentials.apiSecret }
const bearer = (token: string) => ({ authorization: `Bearer ${token}` })
const openVidu = { roomName: 'room1', participantName: 'typed-name' }
const refused = { errorMessage: 'A valid bearer token is required' }

const provider = startIdentityProvider()
const keys = {} as Record<'signing' | 'shared' | 'stranger', SigningKey>
beforeAll(async () => {
  ;[keys.signing, keys.shared, keys.stranger] = await Promise.all([
    makeKey('ec-1', 'ES256'),
    makeSharedKey('oct-1'),
    makeKey('ec-2', 'ES256'),
  ])
  // The symmetric key is published too: an HS256 token signed with it must still be refused.
  provider.state.published = [keys.signing, keys.shared]
})
afterAll(() => provider.server.stop(true))

const authEnv = (more: Record<string, string> = {}) => ({
  ...livekitEnv,
  AUTH_JWKS_URL: provider.jwksUrl,
  AUTH_ISSUER: issuer,
  AUTH_AUDIENCE: audience,
  ...more,
})
const tokenClaims = (answer: { json(): any }) =>
  verifyAccessToken(answer.json().token ?? answer.json().participant_token, credentials)

describe('POST /token with caller authentication', () => {
  const app = appWith(authEnv())

  test('gives a signed-in caller a token under the identity and name of their ID token', async () => {
    const answer = await app.postJson('/token', openVidu, bearer(await idToken(keys.signing)))
    expect(answer.status).toBe(200)
    const claims = tokenClaims(answer)
    expect([claims.sub, claims.name, claims.video?.room]).toEqual(['user-1', 'Ada Lovelace', 'room1'])
  })

  test('names the participant as asked when the ID token has no name, and cuts a long name to 256', async () => {
    const unnamed = await app.postJson('/token', openVidu, bearer(await idToken(keys.signing, { name: undefined })))
    expect(tokenClaims(unnamed).name).toBe('typed-name')
    const empty = await app.postJson(
      '/token',
      { participant_name: 'typed' },
      bearer(await idToken(keys.signing, { name: '' })),
    )
    expect(tokenClaims(empty).name).toBe('typed')
    const long = await app.postJson('/token', openVidu, bearer(await idToken(keys.signing, { name: 'n'.repeat(300) })))
    expect(tokenClaims(long).name).toBe('n'.repeat(256))
  })

  test("gives a standard request the caller's identity, and refuses another participant_identity (403)", async () => {
    const headers = bearer(await idToken(keys.signing, { sub: 'kc-42' }))
    expect(tokenClaims(await app.postJson('/token', { room_name: 'r' }, headers)).sub).toBe('kc-42')
    expect(tokenClaims(await app.postJson('/token', { participant_identity: 'kc-42' }, headers)).sub).toBe('kc-42')
    const other = await app.postJson('/token', { participant_identity: 'someone-else' }, headers)
    expect([other.status, other.json()]).toEqual([
      403,
      { errorMessage: 'participant_identity must be the authenticated caller' },
    ])
  })

  test('reads the scheme in any case, with spaces around the token', async () => {
    const token = await idToken(keys.signing)
    for (const authorization of [`bearer ${token}`, `BEARER  ${token} `]) {
      expect((await app.postJson('/token', openVidu, { authorization })).status).toBe(200)
    }
  })

  const refusals: [string, () => Promise<Record<string, string>>][] = [
    ['no Authorization header', async () => ({})],
    ['a Basic Authorization header', async () => ({ authorization: 'Basic dXNlcjpwYXNz' })],
    ['a bearer token that is not a JWT', async () => ({ authorization: 'Bearer not-a-jwt' })],
    ['a bearer token with text after it', async () => ({ authorization: `Bearer ${await idToken(keys.signing)} x` })],
    [
      'an expired ID token',
      async () => bearer(await idToken(keys.signing, { exp: Math.floor(Date.now() / 1000) - 60 }, { expiresIn: null })),
    ],
    ['an ID token without exp', async () => bearer(await idToken(keys.signing, {}, { expiresIn: null }))],
    [
      'an ID token from another issuer',
      async () => bearer(await idToken(keys.signing, {}, { issuedBy: 'https://evil.example.test/' })),
    ],
    [
      'an ID token for another audience',
      async () => bearer(await idToken(keys.signing, {}, { forAudience: 'another-app' })),
    ],
    ['an HS256 ID token signed with a published symmetric key', async () => bearer(await idToken(keys.shared))],
    ['an ID token signed with a key the provider does not publish', async () => bearer(await idToken(keys.stranger))],
    ['an ID token whose identity claim is empty', async () => bearer(await idToken(keys.signing, { sub: '' }))],
    [
      'an ID token whose identity claim is over 256 characters',
      async () => bearer(await idToken(keys.signing, { sub: 's'.repeat(257) })),
    ],
  ]
  for (const [what, headers] of refusals) {
    test(`refuses ${what} with 401 and WWW-Authenticate: Bearer`, async () => {
      const answer = await app.postJson('/token', openVidu, await headers())
      expect([answer.status, answer.json()]).toEqual([401, refused])
      expect(answer.headers.get('www-authenticate')).toBe('Bearer')
    })
  }

  test('accepts an identity of exactly 256 characters', async () => {
    const answer = await app.postJson('/token', openVidu, bearer(await idToken(keys.signing, { sub: 's'.repeat(256) })))
    expect(tokenClaims(answer).sub).toBe('s'.repeat(256))
  })

  test('authenticates before reading the body: an unauthenticated bad body is a 401', async () => {
    const answer = await app.request('/token', { method: 'POST', headers: { 'content-type': 'text/plain' }, body: 'x' })
    expect([answer.status, answer.json()]).toEqual([401, refused])
  })
})

describe('POST /token with AUTH_IDENTITY_CLAIM', () => {
  const app = appWith(authEnv({ AUTH_IDENTITY_CLAIM: 'email' }))

  test('takes the identity from the named claim', async () => {
    const answer = await app.postJson(
      '/token',
      openVidu,
      bearer(await idToken(keys.signing, { email: 'ada@example.test', email_verified: true })),
    )
    expect(tokenClaims(answer).sub).toBe('ada@example.test')
  })

  test('refuses an ID token without that claim, or with one that is not text, with 401', async () => {
    for (const claims of [{}, { email: 42 }]) {
      expect((await app.postJson('/token', openVidu, bearer(await idToken(keys.signing, claims)))).status).toBe(401)
    }
  })
})

describe('POST /token when the identity provider fails', () => {
  test('answers 503 with Retry-After while the key set cannot be fetched, and 200 once it can', async () => {
    const down = startIdentityProvider()
    down.state.published = [keys.signing]
    down.state.down = true
    try {
      const app = appWith({ ...authEnv(), AUTH_JWKS_URL: down.jwksUrl })
      const answer = await app.postJson('/token', openVidu, bearer(await idToken(keys.signing)))
      expect([answer.status, answer.json()]).toEqual([
        503,
        { errorMessage: 'The identity provider is unavailable, try again shortly' },
      ])
      expect(answer.headers.get('retry-after')).toBe('5')
      down.state.down = false
      expect((await app.postJson('/token', openVidu, bearer(await idToken(keys.signing)))).status).toBe(200)
    } finally {
      down.server.stop(true)
    }
  })

  test('answers 503 when nothing listens where the key set should be', async () => {
    const gone = startIdentityProvider()
    const jwksUrl = gone.jwksUrl
    gone.server.stop(true)
    const answer = await appWith({ ...authEnv(), AUTH_JWKS_URL: jwksUrl }).postJson(
      '/token',
      openVidu,
      bearer(await idToken(keys.signing)),
    )
    expect(answer.status).toBe(503)
  })
})

describe('POST /token with authentication and TOKEN_RATE_LIMIT', () => {
  test('counts each authenticated caller by identity, not by address', async () => {
    const app = appWith(authEnv({ TOKEN_RATE_LIMIT: '1' }))
    const as = async (sub: string) =>
      (await app.postJson('/token', openVidu, bearer(await idToken(keys.signing, { sub })))).status
    expect([await as('ada'), await as('ada'), await as('grace')]).toEqual([200, 429, 200])
  })

  test('refuses an unauthenticated caller with 401 without taking from any allowance', async () => {
    const app = appWith(authEnv({ TOKEN_RATE_LIMIT: '1' }))
    expect((await app.postJson('/token', openVidu)).status).toBe(401)
    expect((await app.postJson('/token', openVidu, bearer(await idToken(keys.signing)))).status).toBe(200)
  })
})
