// POST /token behind caller authentication (AUTH_JWKS_URL): only the app's signed-in users get tokens.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from 'bun:test'
import { TokenSource } from 'livekit-client'
import { SignJWT } from 'jose'
import { httpClient, runtimeNames, startServer, testCredentials, waitForLog, warningLinesCaughtUp, withAuditedFetch, type ServerProcess } from './server'
import { signWebhook, verifyAccessToken, webhookEvent } from './livekit'
import { audience, idToken, issuer, makeKey, makeSharedKey, startIdentityProvider, type SigningKey } from './identity-provider'

// Real servers, browsers and Redis start here: 30 s a test (bunfig's [test] timeout is not read by Bun 1.4).
setDefaultTimeout(30_000)

const credentials = testCredentials()
const livekitEnv = { LIVEKIT_API_KEY: credentials.apiKey, LIVEKIT_API_SECRET: credentials.apiSecret }
const bearer = (token: string) => ({ authorization: `Bearer ${token}` })

for (const runtime of runtimeNames) {
  describe(`${runtime}: POST /token with caller authentication`, () => {
    const provider = startIdentityProvider()
    let rsaKey: SigningKey
    let ecKey: SigningKey
    let psKey: SigningKey
    let edKey: SigningKey
    let sharedKey: SigningKey
    let strangerKey: SigningKey
    let server: ServerProcess
    let http: ReturnType<typeof httpClient>

    beforeAll(async () => {
      ;[rsaKey, ecKey, psKey, edKey, sharedKey, strangerKey] = await Promise.all([
        makeKey('rsa-1', 'RS256'),
        makeKey('ec-1', 'ES256'),
        makeKey('ps-1', 'PS256'),
        makeKey('ed-1', 'EdDSA'),
        makeSharedKey('oct-1'),
        makeKey('rsa-1', 'RS256'),
      ])
      // The symmetric key is published too: an HS256 token signed with it must still be refused.
      provider.state.published = [rsaKey, ecKey, psKey, edKey, sharedKey]
      server = await startServer(runtime, { ...livekitEnv, AUTH_JWKS_URL: provider.jwksUrl, AUTH_ISSUER: issuer, AUTH_AUDIENCE: audience })
      http = httpClient(server.url)
    })

    afterAll(async () => {
      await server?.stop()
      provider.server.stop(true)
    })

    const openVidu = { roomName: 'room1', participantName: 'typed-name' }

    // First in this block: until now, nothing has made the server fetch the key set.
    test('fetches the key set once for many token requests signed with a key it holds', async () => {
      expect(provider.state.fetches).toBe(0)
      for (let i = 0; i < 10; i++) {
        expect((await http.postJson('/token', openVidu, bearer(await idToken(rsaKey, { sub: `cached-${i}` })))).status).toBe(200)
      }
      expect(provider.state.fetches).toBe(1)
    })

    test('gives a signed-in caller a token under the identity and name of their ID token (RS256)', async () => {
      const answer = await http.postJson('/token', openVidu, bearer(await idToken(rsaKey)))
      expect(answer.status).toBe(200)
      const claims = verifyAccessToken(answer.json().token, credentials)
      expect([claims.sub, claims.name, claims.video?.room]).toEqual(['user-1', 'Ada Lovelace', 'room1'])
    })

    test('accepts an ES256 ID token too', async () => {
      const answer = await http.postJson('/token', openVidu, bearer(await idToken(ecKey, { sub: 'user-ec' })))
      expect(answer.status).toBe(200)
      expect(verifyAccessToken(answer.json().token, credentials).sub).toBe('user-ec')
    })

    test('accepts a PS256 ID token too', async () => {
      const answer = await http.postJson('/token', openVidu, bearer(await idToken(psKey, { sub: 'user-ps' })))
      expect(answer.status).toBe(200)
      expect(verifyAccessToken(answer.json().token, credentials).sub).toBe('user-ps')
    })

    test('accepts an EdDSA (Ed25519) ID token too', async () => {
      const answer = await http.postJson('/token', openVidu, bearer(await idToken(edKey, { sub: 'user-ed' })))
      expect(answer.status).toBe(200)
      expect(verifyAccessToken(answer.json().token, credentials).sub).toBe('user-ed')
    })

    test('takes the display name from the request when the ID token has none', async () => {
      const answer = await http.postJson('/token', openVidu, bearer(await idToken(rsaKey, { name: undefined })))
      const claims = verifyAccessToken(answer.json().token, credentials)
      expect([claims.sub, claims.name]).toEqual(['user-1', 'typed-name'])
    })

    test('serves the standard contract with the caller as identity', async () => {
      const answer = await http.postJson('/token', { room_name: 'r2', participant_name: 'ignored' }, bearer(await idToken(rsaKey)))
      const claims = verifyAccessToken(answer.json().participant_token, credentials)
      expect([claims.sub, claims.name, claims.video?.room]).toEqual(['user-1', 'Ada Lovelace', 'r2'])
    })

    test('refuses with 403 a participant_identity other than the caller', async () => {
      const answer = await http.postJson('/token', { participant_identity: 'someone-else' }, bearer(await idToken(rsaKey)))
      expect(answer.status).toBe(403)
      expect(answer.json().errorMessage).toMatch(/participant_identity/)
      const same = await http.postJson('/token', { participant_identity: 'user-1' }, bearer(await idToken(rsaKey)))
      expect(same.status).toBe(200)
    })

    test('lets livekit-client pass the bearer token through its headers option', async () => {
      const source = TokenSource.endpoint(new URL('/token', server.url).href, { headers: bearer(await idToken(ecKey, { sub: 'client-user' })) })
      const response = await withAuditedFetch(() => source.fetch({ roomName: 'r3' }))
      expect(verifyAccessToken(response.participantToken, credentials).sub).toBe('client-user')
      const anonymous = TokenSource.endpoint(new URL('/token', server.url).href)
      await expect(withAuditedFetch(() => anonymous.fetch({ roomName: 'r3' }))).rejects.toThrow(/401/)
    })

    // RFC 7235: the scheme is case-insensitive, however a client library spells it.
    for (const scheme of ['bearer', 'BEARER', 'bEaReR']) {
      test(`gives a token to a caller whose Authorization header spells the scheme "${scheme}"`, async () => {
        const token = await idToken(rsaKey, { sub: `user-${scheme}` })
        const answer = await http.postJson('/token', openVidu, { authorization: `${scheme} ${token}` })
        expect(answer.status).toBe(200)
        expect(verifyAccessToken(answer.json().token, credentials).sub).toBe(`user-${scheme}`)
      })
    }

    // jose's clock tolerance, 30 s: an ID token just expired (or not yet valid) on a clock a little off is taken.
    const clockEdges: [string, (now: number) => { nbf?: number; exp: number }, number][] = [
      ['an ID token that expired 20 s ago', (now) => ({ exp: now - 20 }), 200],
      ['an ID token that expired 40 s ago', (now) => ({ exp: now - 40 }), 401],
      ['an ID token valid from 20 s ahead', (now) => ({ nbf: now + 20, exp: now + 600 }), 200],
      ['an ID token valid from 40 s ahead', (now) => ({ nbf: now + 40, exp: now + 600 }), 401],
    ]
    for (const [what, times, status] of clockEdges) {
      test(`${status === 200 ? 'accepts' : 'refuses with 401'} ${what} (30 s of clock tolerance)`, async () => {
        const { nbf, exp } = times(Math.floor(Date.now() / 1000))
        const jwt = new SignJWT({ sub: 'clock-user' })
          .setProtectedHeader({ alg: rsaKey.alg, kid: rsaKey.kid, typ: 'JWT' })
          .setIssuer(issuer)
          .setAudience(audience)
          .setIssuedAt(exp - 600)
          .setExpirationTime(exp)
        if (nbf !== undefined) jwt.setNotBefore(nbf)
        const answer = await http.postJson('/token', openVidu, bearer(await jwt.sign(rsaKey.privateKey)))
        expect(answer.status).toBe(status)
        if (status === 200) expect(verifyAccessToken(answer.json().token, credentials).sub).toBe('clock-user')
      })
    }

    const refusals: [string, () => Promise<Record<string, string>>][] = [
      ['no Authorization header', async () => ({})],
      ['a Basic Authorization header', async () => ({ authorization: 'Basic dXNlcjpwYXNz' })],
      ['a malformed bearer token', async () => bearer('not-a-jwt')],
      ['an expired ID token', async () => bearer(await idToken(rsaKey, {}, { expiresIn: '-5m' }))],
      ['an ID token from another issuer', async () => bearer(await idToken(rsaKey, {}, { issuedBy: 'https://evil.example.test/' }))],
      ['an ID token for another audience', async () => bearer(await idToken(rsaKey, {}, { forAudience: 'another-app' }))],
      ['an ID token signed with a key the provider never published', async () => bearer(await idToken(strangerKey))],
      ['an ID token signed with an unknown key id', async () => bearer(await idToken({ ...strangerKey, kid: 'who-knows' }))],
      ['an HS256 token signed with the LiveKit secret', async () => {
        const token = await new SignJWT({ sub: 'user-1' }).setProtectedHeader({ alg: 'HS256', kid: 'rsa-1' }).setIssuer(issuer).setAudience(audience).setExpirationTime('5m').sign(new TextEncoder().encode(credentials.apiSecret))
        return bearer(token)
      }],
      // jose 6's remote key set refuses HMAC algorithms by itself; this holds the allow-list to account
      // should the key lookup ever change (a hand-rolled importJWK by kid accepts this token without it).
      ['an HS256 token signed with a symmetric key the JWKS publishes', async () => bearer(await idToken(sharedKey))],
      ['an ID token without a subject', async () => bearer(await idToken(rsaKey, { sub: undefined }))],
    ]
    for (const [what, headers] of refusals) {
      test(`refuses with 401 and WWW-Authenticate: Bearer ${what}`, async () => {
        const answer = await http.postJson('/token', openVidu, await headers())
        expect(answer.status).toBe(401)
        expect(answer.headers.get('www-authenticate')).toBe('Bearer')
        expect(answer.json()).toEqual({ errorMessage: 'A valid bearer token is required' })
      })
    }

    // ID tokens must carry exp: one without would be valid forever once leaked.
    test('refuses an ID token without exp', async () => {
      const answer = await http.postJson('/token', openVidu, bearer(await idToken(rsaKey, {}, { expiresIn: null })))
      expect(answer.status).toBe(401)
      expect(answer.headers.get('www-authenticate')).toBe('Bearer')
      expect(answer.json()).toEqual({ errorMessage: 'A valid bearer token is required' })
    })

    test('logs why it refused a caller, and says nothing of it to the caller', async () => {
      // Earlier tests may have logged such a line already: this request's is the one more.
      const audienceRefusals = () => server.logs().filter((entry) => entry.msg === 'token request refused' && /aud/.test(String(entry.reason))).length
      const before = audienceRefusals()
      const answer = await http.postJson('/token', openVidu, bearer(await idToken(rsaKey, {}, { forAudience: 'another-app' })))
      expect(answer.status).toBe(401)
      expect(answer.text).not.toMatch(/aud/)
      await waitForLog(server, () => audienceRefusals() > before, 3000)
      await warningLinesCaughtUp(server)
      expect(audienceRefusals()).toBe(before + 1)
    })

    test('accepts a key the provider starts publishing later (key rotation), fetching the key set once for it', async () => {
      const rotated = await makeKey('rsa-2', 'RS256')
      provider.state.published = [...provider.state.published, rotated]
      // jose refetches the key set for an unknown key id at most every 5 s.
      await Bun.sleep(5200)
      const fetchesBefore = provider.state.fetches
      const answer = await http.postJson('/token', openVidu, bearer(await idToken(rotated, { sub: 'rotated-user' })))
      expect(answer.status).toBe(200)
      expect(verifyAccessToken(answer.json().token, credentials).sub).toBe('rotated-user')
      expect(provider.state.fetches).toBe(fetchesBefore + 1)
      // Now cached with the rest.
      expect((await http.postJson('/token', openVidu, bearer(await idToken(rotated)))).status).toBe(200)
      expect(provider.state.fetches).toBe(fetchesBefore + 1)
    }, 15_000)

    test('leaves /livekit/webhook and /health open', async () => {
      const body = JSON.stringify(webhookEvent('room_started'))
      const webhook = await http.request('/livekit/webhook', { method: 'POST', headers: { authorization: signWebhook(body, credentials) }, body })
      expect(webhook.status).toBe(200)
      expect((await http.request('/health')).status).toBe(200)
    })

    test('passes the browser preflight for the Authorization header', async () => {
      const answer = await http.request('/token', {
        method: 'OPTIONS',
        headers: { origin: 'http://localhost:5080', 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization,content-type' },
      })
      expect(answer.status).toBe(204)
      expect(answer.headers.get('access-control-allow-headers')).toContain('authorization')
    })
  })

  describe(`${runtime}: POST /token when the identity provider fails`, () => {
    test('answers 503 while the provider is down, then recovers by itself', async () => {
      const provider = startIdentityProvider()
      const key = await makeKey('k1', 'ES256')
      provider.state.published = [key]
      provider.state.down = true
      const server = await startServer(runtime, { ...livekitEnv, AUTH_JWKS_URL: provider.jwksUrl, AUTH_ISSUER: issuer, AUTH_AUDIENCE: audience })
      try {
        const http = httpClient(server.url)
        const down = await http.postJson('/token', { roomName: 'r', participantName: 'p' }, bearer(await idToken(key)))
        expect(down.status).toBe(503)
        expect(down.json().errorMessage).toMatch(/identity provider/)
        provider.state.down = false
        const up = await http.postJson('/token', { roomName: 'r', participantName: 'p' }, bearer(await idToken(key)))
        expect(up.status).toBe(200)
      } finally {
        await server.stop()
        provider.server.stop(true)
      }
    })

    test('answers 503 in about 3 s when the provider does not answer, instead of hanging', async () => {
      const provider = startIdentityProvider()
      const key = await makeKey('k1', 'ES256')
      provider.state.published = [key]
      provider.state.delayMs = 20_000
      const server = await startServer(runtime, { ...livekitEnv, AUTH_JWKS_URL: provider.jwksUrl, AUTH_ISSUER: issuer, AUTH_AUDIENCE: audience })
      try {
        const started = Date.now()
        const answer = await httpClient(server.url).postJson('/token', { roomName: 'r', participantName: 'p' }, bearer(await idToken(key)))
        const elapsed = Date.now() - started
        expect(answer.status).toBe(503)
        // index.ts gives the provider 3 s (jose's timeoutDuration).
        expect(elapsed).toBeGreaterThanOrEqual(2500)
        expect(elapsed).toBeLessThan(4500)
      } finally {
        await server.stop()
        provider.server.stop(true)
      }
    }, 20_000)

    test('answers 503 when nothing listens at the JWKS address', async () => {
      const provider = startIdentityProvider()
      const key = await makeKey('k1', 'RS256')
      provider.server.stop(true)
      const server = await startServer(runtime, { ...livekitEnv, AUTH_JWKS_URL: provider.jwksUrl, AUTH_ISSUER: issuer, AUTH_AUDIENCE: audience })
      try {
        const answer = await httpClient(server.url).postJson('/token', { roomName: 'r', participantName: 'p' }, bearer(await idToken(key)))
        expect(answer.status).toBe(503)
      } finally {
        await server.stop()
      }
    })
  })

  describe(`${runtime}: caller authentication settings`, () => {
    test('takes the identity from the claim AUTH_IDENTITY_CLAIM names', async () => {
      const provider = startIdentityProvider()
      const key = await makeKey('k1', 'RS256')
      provider.state.published = [key]
      const server = await startServer(runtime, { ...livekitEnv, AUTH_JWKS_URL: provider.jwksUrl, AUTH_ISSUER: issuer, AUTH_AUDIENCE: audience, AUTH_IDENTITY_CLAIM: 'email' })
      try {
        const answer = await httpClient(server.url).postJson('/token', {}, bearer(await idToken(key, { email: 'ada@example.test', email_verified: true })))
        expect(verifyAccessToken(answer.json().participant_token, credentials).sub).toBe('ada@example.test')
      } finally {
        await server.stop()
        provider.server.stop(true)
      }
    })
  })
}
