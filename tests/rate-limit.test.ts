// POST /token with TOKEN_RATE_LIMIT: each caller gets so many tokens a minute.
import { describe, expect, setDefaultTimeout, test } from 'bun:test'
import { RateLimiter } from '../index'
import { httpClient, runtimeNames, startServer, testCredentials } from './server'
import { rawRequest } from './raw-http'
import { audience, idToken, issuer, makeKey, startIdentityProvider } from './identity-provider'

// Real servers, browsers and Redis start here: 30 s a test (bunfig's [test] timeout is not read by Bun 1.4).
setDefaultTimeout(30_000)

const credentials = testCredentials()
const livekitEnv = { LIVEKIT_API_KEY: credentials.apiKey, LIVEKIT_API_SECRET: credentials.apiSecret }
const request = { roomName: 'room1', participantName: 'alice' }

/** Starts a server, runs the checks against it, and always stops it. */
async function withServer(runtime: (typeof runtimeNames)[number], env: Record<string, string>, checks: (http: ReturnType<typeof httpClient>) => Promise<void>) {
  const server = await startServer(runtime, { ...livekitEnv, ...env })
  try {
    await checks(httpClient(server.url))
  } finally {
    await server.stop()
  }
}

for (const runtime of runtimeNames) {
  describe(`${runtime}: POST /token with a rate limit`, () => {
    test('answers 429 with Retry-After and an errorMessage once a caller has used its allowance', () =>
      withServer(runtime, { TOKEN_RATE_LIMIT: '3' }, async (http) => {
        for (let i = 0; i < 3; i++) expect((await http.postJson('/token', request)).status).toBe(200)
        const refused = await http.postJson('/token', request, { origin: 'http://localhost:5080' })
        expect(refused.status).toBe(429)
        // The bucket refills one request every 60 / 3 = 20 s, and the three before it took well under a second.
        expect(refused.headers.get('retry-after')).toBe('20')
        expect(refused.json().errorMessage).toMatch(/Too many token requests/)
        // A browser page must be able to read it, and the Retry-After header.
        expect(refused.headers.get('access-control-allow-origin')).toBe('*')
        expect(refused.headers.get('access-control-expose-headers')).toContain('Retry-After')
        expect((await http.request('/health')).status).toBe(200)
      }))

    test('gives each connecting address an allowance of its own', async () => {
      const server = await startServer(runtime, { ...livekitEnv, TOKEN_RATE_LIMIT: '2' })
      try {
        const body = JSON.stringify(request)
        const headers = { 'content-type': 'application/json', 'content-length': String(body.length), connection: 'close' }
        // To 127.0.0.1 by number: "localhost" may resolve to ::1, which no IPv4 address can reach.
        const url = `http://127.0.0.1:${new URL(server.url).port}/token`
        const from = async (localAddress: string) => (await rawRequest(url, headers, [body], { localAddress })).status
        expect([await from('127.0.0.2'), await from('127.0.0.2'), await from('127.0.0.2'), await from('127.0.0.3')]).toEqual([200, 200, 429, 200])
      } finally {
        await server.stop()
      }
    })

    test('ignores X-Forwarded-For unless TRUST_PROXY is set', () =>
      withServer(runtime, { TOKEN_RATE_LIMIT: '2' }, async (http) => {
        const statuses = []
        for (let i = 0; i < 4; i++) statuses.push((await http.postJson('/token', request, { 'x-forwarded-for': `203.0.113.${i}` })).status)
        expect(statuses).toEqual([200, 200, 429, 429])
      }))

    test('counts authenticated callers by their identity, not their address', async () => {
      const provider = startIdentityProvider()
      const key = await makeKey('k1', 'ES256')
      provider.state.published = [key]
      try {
        await withServer(runtime, { TOKEN_RATE_LIMIT: '1', AUTH_JWKS_URL: provider.jwksUrl, AUTH_ISSUER: issuer, AUTH_AUDIENCE: audience }, async (http) => {
          const as = async (sub: string) => (await http.postJson('/token', request, { authorization: `Bearer ${await idToken(key, { sub })}` })).status
          expect([await as('ada'), await as('ada'), await as('grace')]).toEqual([200, 429, 200])
        })
      } finally {
        provider.server.stop(true)
      }
    })
  })
}

describe('RateLimiter', () => {
  test('refills a caller allowance over the minute', () => {
    const limiter = new RateLimiter(60) // one a second
    const start = 1_000_000
    for (let i = 0; i < 60; i++) expect(limiter.take('ada', start)).toBe(0)
    expect(limiter.take('ada', start)).toBe(1)
    expect(limiter.take('ada', start + 1000)).toBe(0)
    expect(limiter.take('grace', start)).toBe(0)
  })

  test('remembers a bounded number of callers however many come', () => {
    const limiter = new RateLimiter(10, 1000)
    for (let i = 0; i < 50_000; i++) limiter.take(`caller-${i}`, 1_000_000 + i)
    expect(limiter.callerCount).toBeLessThanOrEqual(1000)
  })

  test('forgets callers idle for a minute', () => {
    const limiter = new RateLimiter(10)
    for (let i = 0; i < 100; i++) limiter.take(`caller-${i}`, 0)
    limiter.take('late', 61_000)
    expect(limiter.callerCount).toBe(1)
  })
})
