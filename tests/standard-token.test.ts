// POST /token with LiveKit's standard token-endpoint contract, driven by the real livekit-client.
import { describe, expect, setDefaultTimeout, test } from 'bun:test'
import { TokenSource } from 'livekit-client'
import { runtimeNames, serveDuringTests, testCredentials, withAuditedFetch } from './server'
import { verifyAccessToken } from './livekit'

// Real servers, browsers and Redis start here: 30 s a test (bunfig's [test] timeout is not read by Bun 1.4).
setDefaultTimeout(30_000)

const credentials = testCredentials()
const livekitUrl = 'wss://livekit.example.test'
const fullGrant = { roomJoin: true, canPublish: true, canSubscribe: true, canPublishData: true }

for (const runtime of runtimeNames) {
  describe(`${runtime}: POST /token (LiveKit standard contract)`, () => {
    const running = serveDuringTests(runtime, {
      LIVEKIT_API_KEY: credentials.apiKey,
      LIVEKIT_API_SECRET: credentials.apiSecret,
      LIVEKIT_URL: livekitUrl,
      TOKEN_TTL: '10m',
    })
    const endpoint = () => new URL('/token', running.server.url).href
    /** livekit-client's TokenSource.endpoint asks for a token; the answer it got is audited for leaks. */
    const fetchToken = (options: Parameters<ReturnType<typeof TokenSource.endpoint>['fetch']>[0]) =>
      withAuditedFetch(() => TokenSource.endpoint(endpoint()).fetch(options))

    test('gives livekit-client a token carrying every option it asks for', async () => {
      const response = await fetchToken({
        roomName: 'standup',
        participantIdentity: 'user-42',
        participantName: 'Zoë 山田',
        participantMetadata: '{"role":"host"}',
        participantAttributes: { team: 'blue', 'émoji': '🎥' },
        agentName: 'transcriber',
        agentMetadata: '{"language":"fr"}',
        deployment: 'staging',
      })
      expect(response.serverUrl).toBe(livekitUrl)
      const claims = verifyAccessToken(response.participantToken, credentials)
      expect(claims.sub).toBe('user-42')
      expect(claims.name).toBe('Zoë 山田')
      expect(claims.metadata).toBe('{"role":"host"}')
      expect(claims.attributes).toEqual({ team: 'blue', 'émoji': '🎥' })
      expect(claims.video).toEqual({ ...fullGrant, room: 'standup' })
      // Exactly what was asked: no field at its default (restartPolicy, empty metadata) goes into the token.
      expect(claims.roomConfig).toEqual({ agents: [{ agentName: 'transcriber', metadata: '{"language":"fr"}', deployment: 'staging' }] })
      expect(claims.exp - claims.nbf).toBe(600)
    })

    test('gives livekit-client a fresh identity and room each time it asks for nothing', async () => {
      const first = await fetchToken({})
      const second = await fetchToken({})
      const [a, b] = [first, second].map((response) => verifyAccessToken(response.participantToken, credentials))
      for (const claims of [a!, b!]) {
        expect(claims.sub).toBeString()
        expect(claims.sub).not.toBe('')
        expect(claims.video?.room).toBeString()
        expect(claims.video?.room).not.toBe('')
        expect(claims.video).toMatchObject(fullGrant)
      }
      expect(a!.sub).not.toBe(b!.sub)
      expect(a!.video?.room).not.toBe(b!.video?.room)
      expect(a!.name).toBeUndefined()
    })

    test('surfaces a refusal to livekit-client as its error, with the status and message', async () => {
      const refused = fetchToken({ participantIdentity: 'x'.repeat(300) })
      await expect(refused).rejects.toThrow(/400/)
      await expect(refused).rejects.toThrow(/participant_identity/)
    })

    test('answers an empty object with a token and the server URL', async () => {
      const answer = await running.http.postJson('/token', {})
      expect(answer.status).toBe(200)
      expect(Object.keys(answer.json()).sort()).toEqual(['participant_token', 'server_url'])
      expect(answer.json().server_url).toBe(livekitUrl)
      const claims = verifyAccessToken(answer.json().participant_token, credentials)
      // Each request without room_name or participant_identity gets a room and an identity of its own.
      const again = verifyAccessToken((await running.http.postJson('/token', {})).json().participant_token, credentials)
      expect(again.video?.room).not.toBe(claims.video?.room)
      expect(again.sub).not.toBe(claims.sub)
    })

    test('accepts room_config with camelCase field names too', async () => {
      const answer = await running.http.postJson('/token', { room_config: { agents: [{ agentName: 'a1', metadata: 'm' }] } })
      const claims = verifyAccessToken(answer.json().participant_token, credentials)
      expect(claims.roomConfig?.agents).toEqual([expect.objectContaining({ agentName: 'a1', metadata: 'm' })])
    })

    test('never widens the grant, whatever the request adds', async () => {
      const answer = await running.http.postJson('/token', {
        room_name: 'r1',
        video: { roomAdmin: true, roomRecord: true, hidden: true, room: 'other' },
        grants: { roomAdmin: true },
        roomAdmin: true,
        hidden: true,
        can_publish_sources: ['camera'],
        kind: 'egress',
      })
      expect(answer.status).toBe(200)
      const claims = verifyAccessToken(answer.json().participant_token, credentials)
      expect(claims.video).toEqual({ ...fullGrant, room: 'r1' })
      expect(claims.kind).toBeUndefined()
    })

    test('still serves the OpenVidu contract when roomName or participantName is present', async () => {
      const openVidu = await running.http.postJson('/token', { roomName: 'r1', participantName: 'alice', room_name: 'ignored' })
      expect(Object.keys(openVidu.json())).toEqual(['token'])
      expect(verifyAccessToken(openVidu.json().token, credentials).video?.room).toBe('r1')
      const incomplete = await running.http.postJson('/token', { roomName: 'r1', participant_identity: 'bob' })
      expect(incomplete.status).toBe(400)
      expect(incomplete.json().errorMessage).toBe('roomName and participantName are required')
    })

    test('tells caches to keep neither the token nor a refusal (RFC 6749 §5.1, §5.2)', async () => {
      const answers = {
        200: await running.http.postJson('/token', { room_name: 'standup' }),
        400: await running.http.postJson('/token', { room_name: 7 }),
        403: await running.http.postJson('/token', { room_config: { max_participants: 1000 } }),
      }
      for (const [status, answer] of Object.entries(answers)) {
        expect([status, answer.status]).toEqual([status, Number(status)])
        expect([status, answer.headers.get('cache-control')]).toEqual([status, 'no-store'])
      }
    })

    const multiByte = '€' // 3 bytes in UTF-8
    const refusals: [string, unknown, number, RegExp][] = [
      ['a room_name over 256 characters', { room_name: 'r'.repeat(257) }, 400, /room_name/],
      ['a participant_identity over 256 characters', { participant_identity: 'i'.repeat(257) }, 400, /participant_identity/],
      ['a participant_name over 256 characters', { participant_name: 'n'.repeat(257) }, 400, /participant_name/],
      ['participant_metadata over 64 KiB', { participant_metadata: multiByte.repeat(22_000) }, 400, /participant_metadata/],
      ['more than 64 attributes', { participant_attributes: Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`k${i}`, 'v'])) }, 400, /participant_attributes/],
      ['attributes over 64 KiB in all', { participant_attributes: { a: 'x'.repeat(40_000), b: 'y'.repeat(30_000) } }, 400, /participant_attributes/],
      ['an attribute value that is not a string', { participant_attributes: { a: 1 } }, 400, /participant_attributes/],
      ['participant_attributes that is an array', { participant_attributes: ['a'] }, 400, /participant_attributes/],
      ['a room_name that is a number', { room_name: 7 }, 400, /room_name/],
      ['participant_metadata that is an object', { participant_metadata: { role: 'host' } }, 400, /participant_metadata/],
      ['room_config that is a string', { room_config: 'agents' }, 400, /room_config/],
      ['room_config with an unknown field', { room_config: { bogus: true } }, 400, /room_config/],
      ['room_config whose agents is not a list', { room_config: { agents: 'a' } }, 400, /room_config/],
      ['room_config asking for recording', { room_config: { egress: { room: { room_name: 'r' } } } }, 403, /room_config may only request agents/],
      ['room_config changing room limits', { room_config: { max_participants: 1000 } }, 403, /room_config may only request agents/],
    ]
    for (const [what, body, status, message] of refusals) {
      test(`refuses ${what} with ${status} and an errorMessage`, async () => {
        const answer = await running.http.postJson('/token', body)
        expect(answer.status).toBe(status)
        expect(answer.json().errorMessage).toMatch(message)
      })
    }

    test('accepts every bound at its limit', async () => {
      const answer = await running.http.postJson('/token', {
        room_name: 'r'.repeat(256),
        participant_identity: 'i'.repeat(256),
        participant_name: 'n'.repeat(256),
        participant_metadata: 'm'.repeat(64 * 1024),
        participant_attributes: Object.fromEntries(Array.from({ length: 64 }, (_, i) => [`k${String(i).padStart(2, '0')}`, 'v'.repeat(1000)])),
      })
      expect(answer.status).toBe(200)
      const claims = verifyAccessToken(answer.json().participant_token, credentials)
      expect(claims.metadata).toHaveLength(64 * 1024)
      expect(Object.keys(claims.attributes!)).toHaveLength(64)
    })
  })
}
