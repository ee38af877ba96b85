// What an operator sees: one start-up line saying what is on, and refusals that say who refused whom, and why.
import { describe, expect, setDefaultTimeout, test } from 'bun:test'
import { freePort, runtimeNames, serveDuringTests, sourceRuntimes, startServer, testCredentials, waitForLog } from './server'
import { startRedis } from './redis'
import { audience, issuer, startIdentityProvider } from './identity-provider'

// Real servers, browsers and Redis start here: 30 s a test (bunfig's [test] timeout is not read by Bun 1.4).
setDefaultTimeout(30_000)

const credentials = testCredentials()
const livekitEnv = { LIVEKIT_API_KEY: credentials.apiKey, LIVEKIT_API_SECRET: credentials.apiSecret }

for (const runtime of runtimeNames) {
  describe(`${runtime}: the start-up line`, () => {
    test('says only where it listens with no settings', async () => {
      const server = await startServer(runtime, livekitEnv)
      try {
        const line = server.logs().find((entry) => String(entry.msg).startsWith('listening on'))
        expect(Object.keys(line!).sort()).toEqual(['level', 'msg', 'port', 'time'])
      } finally {
        await server.stop()
      }
    })

    test('says what is on: authentication, the policy, Redis (never its password), the stream, metrics', async () => {
      const redis = await startRedis()
      const provider = startIdentityProvider()
      const policy = { defaultRole: 'guest', roles: { host: { rooms: ['*'] }, guest: { rooms: ['lobby'] } } }
      const server = await startServer(runtime, {
        ...livekitEnv,
        AUTH_JWKS_URL: provider.jwksUrl,
        AUTH_ISSUER: issuer,
        AUTH_AUDIENCE: audience,
        TOKEN_POLICY: JSON.stringify(policy),
        TOKEN_RATE_LIMIT: '30',
        REDIS_URL: redis.url,
        EVENTS_STREAM: 'events',
        PROMETHEUS_PORT: String(await freePort()),
      })
      try {
        const line = server.logs().find((entry) => String(entry.msg).startsWith('listening on'))!
        expect(line).toMatchObject({
          auth: { issuer, audience, identityClaim: 'sub' },
          policy: { roles: ['host', 'guest'], defaultRole: 'guest' },
          rateLimitPerMinute: 30,
          redis: `redis://127.0.0.1:${redis.port}`,
          stream: 'events',
          metricsPort: expect.any(Number),
        })
        expect(JSON.stringify(line)).not.toContain(redis.password)
      } finally {
        await server.stop()
        provider.server.stop(true)
        await redis.stop()
      }
    })
  })
}

const policy = {
  rolesClaim: 'roles',
  defaultRole: 'guest',
  roles: { guest: { rooms: ['lobby', 'team-{org}/*'] }, member: { rooms: ['*'] } },
}

for (const runtime of sourceRuntimes) {
  describe(`${runtime}: POST /token refusals in the log`, () => {
    const running = serveDuringTests(runtime, { ...livekitEnv, TOKEN_POLICY: JSON.stringify(policy) }, { entry: 'tests/fixtures/app-decider-server.ts' })

    test("logs a policy's refusal with the caller's identity, its roles, what was missing, and TOKEN_POLICY as who refused", async () => {
      const answer = await running.http.postJson('/token', { room_name: 'team-acme/standup', participant_identity: 'zoe' })
      expect(answer.status).toBe(403)
      const [line] = await waitForLog(running.server, (entry) => entry.msg === 'token refused' && entry.identity === 'zoe')
      expect(line).toMatchObject({ level: 'info', by: 'TOKEN_POLICY', roles: ['guest'], missing: 'claim org', reason: 'Room "team-acme/standup" is not one this caller may join' })
    })

    test("logs the app's own decider as who refused, not the policy", async () => {
      const answer = await running.http.postJson('/token', { room_name: 'private-42', participant_identity: 'mallory' })
      expect([answer.status, answer.json()]).toEqual([403, { errorMessage: 'Room "private-42" is not yours' }])
      const [line] = await waitForLog(running.server, (entry) => entry.msg === 'token refused' && entry.identity === 'mallory')
      expect(line).toMatchObject({ by: "the app's TokenDecider", reason: 'Room "private-42" is not yours' })
      expect(line).not.toHaveProperty('roles')
    })
  })
}
