// What a client or a signed event may carry: a well-formed request or a verified signature does not make
// every shape safe to mint, keep or log. Each refusal here was accepted before (issue 27).
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from 'bun:test'
import { runtimeNames, runUntilExit, serveDuringTests, startServer, testCredentials, waitForLog, warningLinesCaughtUp } from './server'
import { signWebhook, verifyAccessToken, webhookEvent } from './livekit'
import { audience, idToken, issuer, makeKey, startIdentityProvider, type SigningKey } from './identity-provider'

// Real servers, browsers and Redis start here: 30 s a test (bunfig's [test] timeout is not read by Bun 1.4).
setDefaultTimeout(30_000)

const credentials = testCredentials()
const livekitEnv = { LIVEKIT_API_KEY: credentials.apiKey, LIVEKIT_API_SECRET: credentials.apiSecret }
const bearer = (token: string) => ({ authorization: `Bearer ${token}` })

// Text that would make a display name or a log line say something else than it holds.
const unsafeTexts: [string, string][] = [
  ['a control character', 'ali\u0007ce'],
  ['a newline', 'alice\nadmin'],
  ['a right-to-left override', 'alice\u202Egpj.exe'],
  ['a bidirectional isolate', '\u2067alice'],
  ['a lone surrogate', 'alice\uD800'],
]

for (const runtime of runtimeNames) {
  describe(`${runtime}: POST /token, what a client may put in its token`, () => {
    const running = serveDuringTests(runtime, livekitEnv)
    const claimsOf = (answer: { json(): any }) => verifyAccessToken(answer.json().participant_token, credentials)

    for (const [what, text] of unsafeTexts) {
      for (const field of ['room_name', 'participant_identity', 'participant_name']) {
        test(`refuses ${field} holding ${what} with 400`, async () => {
          const answer = await running.http.postJson('/token', { [field]: text })
          expect(answer.status).toBe(400)
          expect(answer.json().errorMessage).toBe(`${field} must not hold control characters, bidirectional overrides or lone surrogates`)
        })
      }
      for (const field of ['roomName', 'participantName']) {
        test(`refuses an OpenVidu ${field} holding ${what} with 400`, async () => {
          const answer = await running.http.postJson('/token', { roomName: 'room1', participantName: 'alice', [field]: text })
          expect(answer.status).toBe(400)
          expect(answer.json().errorMessage).toBe(`${field} must not hold control characters, bidirectional overrides or lone surrogates`)
        })
      }
    }

    test('takes names in any script, with emoji and joiners (plain text is not only ASCII)', async () => {
      const answer = await running.http.postJson('/token', { room_name: 'salle-été', participant_name: 'Zoë 山田 👩‍💻', participant_identity: 'zoë' })
      expect(answer.status).toBe(200)
      expect(claimsOf(answer).name).toBe('Zoë 山田 👩‍💻')
    })

    for (const key of ['lk.publish_on_behalf', 'lk.agent.state']) {
      test(`refuses the attribute ${key}, reserved to LiveKit, with 403`, async () => {
        const answer = await running.http.postJson('/token', { participant_attributes: { team: 'blue', [key]: 'x' } })
        expect([answer.status, answer.json()]).toEqual([403, { errorMessage: `participant_attributes may not set "${key}": attributes under lk. are LiveKit's` }])
      })
    }

    test('refuses an agent dispatch attribute under lk. with 403', async () => {
      const room_config = { agents: [{ agent_name: 'helper', attributes: { 'lk.agent.state': 'listening' } }] }
      const answer = await running.http.postJson('/token', { room_config })
      expect(answer.status).toBe(403)
      expect(answer.json().errorMessage).toMatch(/lk\.agent\.state/)
    })

    test('takes attributes whose names only look like lk. (lkx, LK., a dot later)', async () => {
      const attributes = { lkx: '1', 'LK.case': '2', 'team.lk.': '3' }
      const answer = await running.http.postJson('/token', { participant_attributes: attributes })
      expect(claimsOf(answer).attributes).toEqual(attributes)
    })

    for (const key of ['constructor', 'toString', '__proto__', 'hasOwnProperty', 'valueOf']) {
      test(`refuses room_config.${key}, which is no RoomConfiguration field, with 400`, async () => {
        const answer = await running.http.request('/token', {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          // Written by hand: an object literal's __proto__ would set the prototype, not a key.
          body: `{"room_config":{"${key}":{"agents":[]}}}`,
        })
        expect([answer.status, answer.json()]).toEqual([400, { errorMessage: `room_config.${key} is not a RoomConfiguration field` }])
      })
    }

    test('refuses an agent dispatch field that is no RoomAgentDispatch field (constructor) with 400', async () => {
      const answer = await running.http.request('/token', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: '{"room_config":{"agents":[{"agent_name":"a","constructor":1}]}}',
      })
      expect([answer.status, answer.json()]).toEqual([400, { errorMessage: 'room_config.agents.constructor is not a RoomAgentDispatch field' }])
    })

    test("refuses an agent's restart policy, the server's call, with 403", async () => {
      const answer = await running.http.postJson('/token', { room_config: { agents: [{ agent_name: 'a', restart_policy: 'JRP_NEVER' }] } })
      expect([answer.status, answer.json()]).toEqual([403, { errorMessage: "room_config.agents may not set restart_policy: it is the server's call" }])
    })

    test('adds no roomConfig claim for room_config: {}', async () => {
      const answer = await running.http.postJson('/token', { room_name: 'r', room_config: {} })
      expect(answer.status).toBe(200)
      expect(claimsOf(answer)).not.toHaveProperty('roomConfig')
    })

    test('puts a dispatch into the token as asked, without the fields at their defaults', async () => {
      const agents = [{ agent_name: 'transcriber', deployment: 'staging', attributes: { lang: 'fr' } }, { agent_name: 'notetaker' }]
      const answer = await running.http.postJson('/token', { room_config: { agents } })
      expect(claimsOf(answer).roomConfig).toEqual({
        agents: [{ agentName: 'transcriber', deployment: 'staging', attributes: { lang: 'fr' } }, { agentName: 'notetaker' }],
      })
    })

    test('counts dispatch attributes against the agents’ 64 KiB with their metadata', async () => {
      const agents = [{ agent_name: 'a', metadata: 'm'.repeat(40 * 1024), attributes: { big: 'b'.repeat(30 * 1024) } }]
      const answer = await running.http.postJson('/token', { room_config: { agents } })
      expect([answer.status, answer.json()]).toEqual([400, { errorMessage: 'room_config agent metadata and attributes must be at most 65536 bytes in all' }])
    })
  })

  describe(`${runtime}: POST /token under TOKEN_POLICY, what a client may put in its token`, () => {
    const policy = {
      defaultRole: 'guest',
      roles: {
        guest: { rooms: ['*'], agents: ['*'], grants: { canPublish: true, canSubscribe: true, canUpdateOwnMetadata: true } },
      },
    }
    const running = serveDuringTests(runtime, { ...livekitEnv, TOKEN_POLICY: JSON.stringify(policy) })

    test('refuses attributes under lk. even where the policy allows everything', async () => {
      const answer = await running.http.postJson('/token', { participant_attributes: { 'lk.publish_on_behalf': 'bob' } })
      expect(answer.status).toBe(403)
      expect(answer.json().errorMessage).toMatch(/lk\.publish_on_behalf/)
    })
  })

  describe(`${runtime}: POST /token under TOKEN_POLICY, agents and their deployments`, () => {
    const policy = {
      defaultRole: 'member',
      roles: { member: { rooms: ['team/*'], agents: ['transcriber', 'notetaker@beta', 'summarizer@*'], grants: { canSubscribe: true } } },
    }
    const running = serveDuringTests(runtime, { ...livekitEnv, TOKEN_POLICY: JSON.stringify(policy) })
    const asking = (agent: Record<string, string>) => running.http.postJson('/token', { room_name: 'team/x', room_config: { agents: [agent] } })
    const cases: [Record<string, string>, number][] = [
      [{ agent_name: 'transcriber' }, 200],
      [{ agent_name: 'transcriber', deployment: 'staging' }, 403],
      [{ agent_name: 'notetaker', deployment: 'beta' }, 200],
      [{ agent_name: 'notetaker' }, 403],
      [{ agent_name: 'notetaker', deployment: 'prod' }, 403],
      [{ agent_name: 'summarizer', deployment: 'anything' }, 200],
      [{ agent_name: 'summarizer' }, 200],
    ]
    for (const [agent, status] of cases) {
      test(`answers ${status} to ${agent.agent_name}${agent.deployment ? ` on deployment ${agent.deployment}` : ' on its default deployment'}`, async () => {
        const answer = await asking(agent)
        expect(answer.status).toBe(status)
        if (status === 403) {
          const name = agent.deployment ? `${agent.agent_name}@${agent.deployment}` : agent.agent_name
          expect(answer.json()).toEqual({ errorMessage: `Agent "${name}" is not one this caller may dispatch` })
        }
      })
    }
  })

  describe(`${runtime}: POST /token with caller authentication, what an ID token may carry`, () => {
    const provider = startIdentityProvider()
    let key: SigningKey
    const running = serveDuringTests(runtime, () => ({ ...livekitEnv, AUTH_JWKS_URL: provider.jwksUrl, AUTH_ISSUER: issuer, AUTH_AUDIENCE: audience }))
    beforeAll(async () => {
      key = await makeKey('k1', 'ES256')
      provider.state.published = [key]
    })
    afterAll(() => provider.server.stop(true))
    const ask = async (claims: Record<string, unknown>) =>
      running.http.postJson('/token', { room_name: 'r', participant_name: 'typed' }, bearer(await idToken(key, claims)))

    test('refuses with 401 an identity claim holding a control or bidirectional character', async () => {
      for (const [, text] of unsafeTexts) expect((await ask({ sub: text })).status).toBe(401)
    })

    test("cuts an ID token's long name at 256 characters on a whole character", async () => {
      // 255 ASCII characters, then an emoji of two UTF-16 units: a cut at 256 would split it.
      const answer = await ask({ name: `${'a'.repeat(255)}😀tail` })
      const { name } = verifyAccessToken(answer.json().participant_token, credentials)
      expect(name).toBe('a'.repeat(255))
      expect(name!.isWellFormed()).toBe(true)
    })

    test("does not use an ID token's name holding a right-to-left override", async () => {
      const answer = await ask({ name: 'Mallory\u202Egnp.exe' })
      expect(answer.status).toBe(200)
      expect(verifyAccessToken(answer.json().participant_token, credentials).name).toBe('typed')
    })
  })

  describe(`${runtime}: caller authentication by email`, () => {
    const provider = startIdentityProvider()
    let key: SigningKey
    const running = serveDuringTests(runtime, () => ({
      ...livekitEnv,
      AUTH_JWKS_URL: provider.jwksUrl,
      AUTH_ISSUER: issuer,
      AUTH_AUDIENCE: audience,
      AUTH_IDENTITY_CLAIM: 'email',
    }))
    beforeAll(async () => {
      key = await makeKey('k1', 'RS256')
      provider.state.published = [key]
    })
    afterAll(() => provider.server.stop(true))
    const ask = async (claims: Record<string, unknown>) => running.http.postJson('/token', {}, bearer(await idToken(key, claims)))

    test('takes a verified address as the identity', async () => {
      const answer = await ask({ email: 'ada@example.test', email_verified: true })
      expect(verifyAccessToken(answer.json().participant_token, credentials).sub).toBe('ada@example.test')
    })

    for (const [what, claims] of [
      ['email_verified: false', { email_verified: false }],
      ['no email_verified', {}],
      ['email_verified: "true" (a string)', { email_verified: 'true' }],
    ] as const) {
      test(`refuses with 401 an address with ${what}`, async () => {
        const answer = await ask({ email: 'ceo@example.test', ...claims })
        expect([answer.status, answer.json()]).toEqual([401, { errorMessage: 'A valid bearer token is required' }])
      })
    }

    test('logs that the address was not verified', async () => {
      await ask({ email: 'ceo@example.test', email_verified: false })
      await warningLinesCaughtUp(running.server)
      expect(running.server.logs().some((entry) => entry.msg === 'token request refused' && /email_verified/.test(String(entry.reason)))).toBe(true)
    })
  })

  describe(`${runtime}: starting with caller authentication`, () => {
    for (const [missing, env, hint] of [
      ['AUTH_ISSUER', { AUTH_AUDIENCE: audience }, /AUTH_ISSUER is required with AUTH_JWKS_URL: set it to your identity provider's issuer/],
      ['AUTH_AUDIENCE', { AUTH_ISSUER: issuer }, /AUTH_AUDIENCE is required with AUTH_JWKS_URL: set it to your app's client ID/],
      ['both', {}, /AUTH_ISSUER is required/],
    ] as const) {
      test(`stops with exit 1 and one line when AUTH_JWKS_URL is set without ${missing}`, async () => {
        const { code, output } = await runUntilExit(runtime, { ...livekitEnv, AUTH_JWKS_URL: 'https://id.example.test/jwks', ...env })
        expect(code).toBe(1)
        expect(output.trim().split('\n')).toHaveLength(1)
        expect(output).toMatch(hint)
      })
    }
  })

  describe(`${runtime}: starting with TOKEN_POLICY room patterns`, () => {
    const policyWith = (pattern: string) => JSON.stringify({ defaultRole: 'member', roles: { member: { rooms: ['lobby', pattern] } } })
    for (const pattern of ['*-{org}', 'team-{org}-*', '{org}{team}', 'a-*-{org}.*', 'x/{org}*']) {
      test(`stops with exit 1 on "${pattern}", where a {claim} touches a * or another {claim}`, async () => {
        const { code, output } = await runUntilExit(runtime, { ...livekitEnv, TOKEN_POLICY: policyWith(pattern) })
        expect(code).toBe(1)
        expect(output).toContain(`Configuration error: TOKEN_POLICY: roles.member.rooms.1 "${pattern}" lets one claim's rooms be another's`)
        expect(output).toContain('such as "/"')
      })
    }
    test('starts with patterns whose claims are delimited, or have only literal text around them', async () => {
      const rooms = ['team-{org}/*', '*/{org}', '{org}/{team}', 'user-{sub}', 'team-{org}-lobby', '*~{org}~*', 'a-*-b-*']
      const server = await startServer(runtime, { ...livekitEnv, TOKEN_POLICY: JSON.stringify({ defaultRole: 'member', roles: { member: { rooms } } }) })
      await server.stop()
    }, 30_000)
  })

  describe(`${runtime}: POST /livekit/webhook, what a signed event may carry`, () => {
    const running = serveDuringTests(runtime, livekitEnv)
    const postSigned = (body: string) =>
      running.http.request('/livekit/webhook', {
        method: 'POST',
        headers: { 'content-type': 'application/webhook+json', authorization: signWebhook(body, credentials) },
        body,
      })

    test('refuses an event whose id is no id (512 KiB) with 400, and logs a short line', async () => {
      const body = JSON.stringify(webhookEvent('room_started', { id: `EV_${'x'.repeat(512 * 1024)}` }))
      const answer = await postSigned(body)
      expect([answer.status, answer.json()]).toEqual([400, { errorMessage: 'Webhook event names and ids must be plain text of at most 256 characters' }])
      await warningLinesCaughtUp(running.server)
      expect(running.server.lines.every((line) => line.length < 4096)).toBe(true)
      // Not remembered: the same signed body is refused again, not acknowledged as a duplicate.
      expect((await postSigned(body)).status).toBe(400)
    })

    test('takes an id of 256 characters, and refuses one of 257', async () => {
      const at = (length: number) => JSON.stringify(webhookEvent('room_started', { id: `EV_${'y'.repeat(length - 3)}_${Math.random()}`.slice(0, length) }))
      expect((await postSigned(at(256))).status).toBe(200)
      expect((await postSigned(at(257))).status).toBe(400)
    })

    test('refuses an id holding a newline or a control character with 400', async () => {
      expect((await postSigned(JSON.stringify(webhookEvent('room_started', { id: 'EV_1\n{"level":"error"}' })))).status).toBe(400)
      expect((await postSigned(JSON.stringify(webhookEvent('room_started', { id: 'EV_\u0000' })))).status).toBe(400)
    })

    test('refuses an event name of 1 KiB with 400', async () => {
      expect((await postSigned(JSON.stringify(webhookEvent('x'.repeat(1024))))).status).toBe(400)
    })

    test('answers a createdAt past int64 as a whole decoding does: 401, on every path', async () => {
      // 19 digits, one past int64's largest; the second event forces the whole decoding (a .proto name).
      for (const extra of [{}, { egress_info: { egress_id: 'EG_1' } }]) {
        const answer = await postSigned(JSON.stringify(webhookEvent('room_started', { createdAt: '9223372036854775808', ...extra })))
        expect(answer.status).toBe(401)
      }
      const largest = await postSigned(JSON.stringify(webhookEvent('room_started', { createdAt: '9223372036854775807' })))
      expect(largest.status).toBe(200)
    })

    test('cuts a long room name to 256 characters in the log line', async () => {
      const event = webhookEvent('room_started', { room: { sid: 'RM_1', name: 'r'.repeat(10_000) } })
      expect((await postSigned(JSON.stringify(event))).status).toBe(200)
      const [line] = await waitForLog(running.server, (entry) => entry.id === event.id)
      expect(line!.room).toBe(`${'r'.repeat(256)}…`)
    })
  })
}
