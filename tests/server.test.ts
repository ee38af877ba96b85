// The HTTP contract of index.ts, checked over real HTTP against `bun run index.ts` and the Deno command.
import { describe, expect, setDefaultTimeout, test } from 'bun:test'
import { httpClient, runtimeNames, runUntilExit, serveDuringTests, startServer, testCredentials, waitForLog, warningLinesCaughtUp } from './server'
import { signJwt, signWebhook, verifyAccessToken, webhookEvent } from './livekit'
import { rawRequest } from './raw-http'

// Real servers, browsers and Redis start here: 30 s a test (bunfig's [test] timeout is not read by Bun 1.4).
setDefaultTimeout(30_000)

const credentials = testCredentials()
const browserOrigin = 'http://localhost:5080'

for (const runtime of runtimeNames) {
  describe(`${runtime}: the server`, () => {
    const running = serveDuringTests(runtime, { LIVEKIT_API_KEY: credentials.apiKey, LIVEKIT_API_SECRET: credentials.apiSecret })

    describe('POST /token (OpenVidu contract)', () => {
      test('answers a token that joins the named room as the named participant', async () => {
        const answer = await running.http.postJson('/token', { roomName: 'room1', participantName: 'alice' })
        expect(answer.status).toBe(200)
        expect(answer.headers.get('content-type')).toStartWith('application/json')
        const claims = verifyAccessToken(answer.json().token, credentials)
        expect(claims.sub).toBe('alice')
        expect(claims.name).toBe('alice')
        expect(claims.video).toMatchObject({ roomJoin: true, room: 'room1' })
        expect(claims.exp - claims.nbf).toBe(6 * 3600)
        expect(Math.abs(claims.nbf - Date.now() / 1000)).toBeLessThan(60)
      })

      test('keeps unicode room and participant names intact', async () => {
        const roomName = 'Sala de reunión 会議室 🎥'
        const participantName = 'Zoë Ångström 山田 👩🏽‍💻'
        const answer = await running.http.postJson('/token', { roomName, participantName })
        const claims = verifyAccessToken(answer.json().token, credentials)
        expect([claims.sub, claims.name, claims.video?.room]).toEqual([participantName, participantName, roomName])
      })

      test('accepts names of exactly 256 characters', async () => {
        const [roomName, participantName] = ['r'.repeat(256), 'p'.repeat(256)]
        const answer = await running.http.postJson('/token', { roomName, participantName })
        expect(answer.status).toBe(200)
        expect(verifyAccessToken(answer.json().token, credentials)).toMatchObject({ sub: participantName, video: { room: roomName } })
      })

      const required = 'roomName and participantName are required'
      const tooLong = 'roomName and participantName must be at most 256 characters'
      const badBodies: [string, string, string][] = [
        ['roomName is missing', JSON.stringify({ participantName: 'alice' }), required],
        ['participantName is missing', JSON.stringify({ roomName: 'room1' }), required],
        ['participantName is empty', JSON.stringify({ roomName: 'room1', participantName: '' }), required],
        ['roomName is empty', JSON.stringify({ roomName: '', participantName: 'alice' }), required],
        ['roomName is a number', JSON.stringify({ roomName: 42, participantName: 'alice' }), required],
        ['participantName is null', JSON.stringify({ roomName: 'room1', participantName: null }), required],
        ['participantName is an object', JSON.stringify({ roomName: 'room1', participantName: { name: 'alice' } }), required],
        ['roomName is 257 characters long', JSON.stringify({ roomName: 'r'.repeat(257), participantName: 'alice' }), tooLong],
        ['participantName is 257 characters long', JSON.stringify({ roomName: 'room1', participantName: 'p'.repeat(257) }), tooLong],
      ]
      for (const [what, body, message] of badBodies) {
        test(`refuses a request whose ${what} with 400 and "${message}"`, async () => {
          const answer = await running.http.request('/token', { method: 'POST', headers: { 'content-type': 'application/json' }, body })
          expect(answer.status).toBe(400)
          expect(answer.json()).toEqual({ errorMessage: message })
        })
      }

      /** A request with an extra field holding arrays nested so that the body is `levels` deep. */
      const nestedBody = (levels: number) => `{"roomName":"room1","participantName":"alice","extra":${'['.repeat(levels - 1)}${']'.repeat(levels - 1)}}`

      test('accepts a body nested 32 levels deep', async () => {
        const answer = await running.http.request('/token', { method: 'POST', headers: { 'content-type': 'application/json' }, body: nestedBody(32) })
        expect(answer.status).toBe(200)
      })

      test('refuses a body nested 33 levels deep with 400', async () => {
        const answer = await running.http.request('/token', { method: 'POST', headers: { 'content-type': 'application/json' }, body: nestedBody(33) })
        expect(answer.status).toBe(400)
        expect(answer.json()).toEqual({ errorMessage: 'Request body must be nested at most 32 levels deep' })
      })

      // An escaped quote does not end the string it sits in: were it taken to, the brackets and commas
      // after it would be counted as JSON, and a request within the bounds refused.
      test('does not count brackets inside strings as nesting, even after an escaped quote', async () => {
        const participantName = '[{'.repeat(100)
        const note = `"\\${'['.repeat(33)}`
        const answer = await running.http.postJson('/token', { roomName: 'room1', participantName, note })
        expect(answer.status).toBe(200)
      })

      test('counts the nesting after a string ending in an escaped backslash: 33 levels refused with 400', async () => {
        const extra = `${'['.repeat(32)}${']'.repeat(32)}`
        const body = `{"roomName":"room1","participantName":"alice","path":"C:\\\\","extra":${extra}}`
        expect(JSON.parse(body).path).toBe('C:\\')
        const headers = { 'content-type': 'application/json' }
        const answer = await running.http.request('/token', { method: 'POST', headers, body })
        const refusal = { errorMessage: 'Request body must be nested at most 32 levels deep' }
        expect([answer.status, answer.json()]).toEqual([400, refusal])
      })

      const badRequests: [string, RequestInit, RegExp][] = [
        ['a null body', { body: 'null' }, /JSON object/],
        ['an array body', { body: '[]' }, /JSON object/],
        ['a string body', { body: '"room1"' }, /JSON object/],
        ['malformed JSON', { body: '{"roomName": "room1",' }, /valid JSON/],
        ['a body nested 20,000 levels deep', { body: `{"roomName":${'['.repeat(20_000)}${']'.repeat(20_000)},"participantName":"alice"}` }, /nested at most 32 levels/],
        ['an empty body', { body: '' }, /valid JSON/],
        ['no body at all', {}, /valid JSON/],
        ['a form-encoded body', { body: 'roomName=room1&participantName=alice', headers: { 'content-type': 'application/x-www-form-urlencoded' } }, /Content-Type/],
        ['a JSON body sent as text/plain', { body: '{"roomName":"room1","participantName":"alice"}', headers: { 'content-type': 'text/plain' } }, /Content-Type/],
      ]
      for (const [what, init, message] of badRequests) {
        test(`refuses ${what} with 400 and a clear errorMessage`, async () => {
          const answer = await running.http.request('/token', { method: 'POST', headers: { 'content-type': 'application/json' }, ...init })
          expect(answer.status).toBe(400)
          expect(answer.json().errorMessage).toMatch(message)
        })
      }

      test('passes a browser preflight from another origin', async () => {
        const answer = await running.http.request('/token', {
          method: 'OPTIONS',
          headers: { origin: browserOrigin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'content-type, authorization' },
        })
        expect(answer.status).toBeLessThan(300)
        expect(answer.headers.get('access-control-allow-origin')).toBe('*')
        expect(answer.headers.get('access-control-allow-methods')).toContain('POST')
        expect(answer.headers.get('access-control-allow-headers')).toContain('content-type')
        expect(answer.headers.get('access-control-allow-headers')).toContain('authorization')
        expect(answer.headers.get('access-control-allow-credentials')).toBeNull()
      })

      test('lets a page on another origin read the token and the errors', async () => {
        const ok = await running.http.postJson('/token', { roomName: 'room1', participantName: 'alice' }, { origin: browserOrigin })
        const refused = await running.http.postJson('/token', { roomName: 'room1' }, { origin: browserOrigin })
        expect(ok.headers.get('access-control-allow-origin')).toBe('*')
        expect(refused.headers.get('access-control-allow-origin')).toBe('*')
      })

      test('lets a page on another origin read a 404 too', async () => {
        const missing = await running.http.postJson('/tokens', { roomName: 'room1' }, { origin: browserOrigin })
        expect(missing.status).toBe(404)
        expect(missing.headers.get('access-control-allow-origin')).toBe('*')
      })

      test('opens other answers to any origin, without credentials, with Retry-After readable', async () => {
        const ok = await running.http.postJson('/token', { roomName: 'room1', participantName: 'alice' }, { origin: browserOrigin })
        expect(ok.status).toBe(200)
        expect(ok.headers.get('access-control-allow-origin')).toBe('*')
        expect(ok.headers.get('access-control-allow-credentials')).toBeNull()
        expect(ok.headers.get('access-control-expose-headers')).toBe('Retry-After')
      })

      test('tells caches to keep neither the token nor a refusal (RFC 6749 §5.1, §5.2)', async () => {
        const json = { 'content-type': 'application/json' }
        const tooLarge = { ...json, 'content-length': String(256 * 1024 + 1) }
        const answers = {
          200: await running.http.postJson('/token', { roomName: 'room1', participantName: 'alice' }),
          '400 (schema)': await running.http.postJson('/token', { roomName: 'room1' }),
          '400 (JSON)': await running.http.request('/token', { method: 'POST', headers: json, body: '{"roomName":' }),
          // Announced over the 256 KiB a token request may carry: refused before any of it is read.
          413: await rawRequest(new URL('/token', running.server.url).href, tooLarge),
        }
        for (const [what, answer] of Object.entries(answers)) {
          expect([what, answer.status]).toEqual([what, Number.parseInt(what)])
          expect([what, answer.headers.get('cache-control')]).toEqual([what, 'no-store'])
        }
      })
    })

    describe('POST /token (standard contract)', () => {
      const afterEscapedQuote: [string, string][] = [
        ['33 brackets', `say "hi ${'['.repeat(33)}`],
        ['1,001 commas', `say "hi ${','.repeat(1001)}`],
      ]
      for (const [what, metadata] of afterEscapedQuote) {
        test(`gives a token whose participant_metadata holds a quote followed by ${what}, kept as sent`, async () => {
          const body = { room_name: 'room1', participant_identity: 'alice', participant_metadata: metadata }
          const answer = await running.http.postJson('/token', body)
          expect(answer.status).toBe(200)
          expect(verifyAccessToken(answer.json().participant_token, credentials).metadata).toBe(metadata)
        })
      }
    })

    describe('POST /livekit/webhook', () => {
      const post = (body: string, authorization?: string, contentType = 'application/webhook+json') =>
        running.http.request('/livekit/webhook', {
          method: 'POST',
          headers: { 'content-type': contentType, 'user-agent': 'LiveKit', ...(authorization === undefined ? {} : { authorization }) },
          body,
        })

      test('accepts a signed event and logs it in one line', async () => {
        const event = webhookEvent('participant_joined', { participant: { sid: 'PA_1', identity: 'alice', name: 'Alice' } })
        const body = JSON.stringify(event)
        const answer = await post(body, signWebhook(body, credentials))
        expect(answer.status).toBe(200)
        const [line] = await waitForLog(running.server, (entry) => entry.id === event.id)
        expect(line).toMatchObject({ level: 'info', event: 'participant_joined', room: 'room1', participant: 'alice', id: event.id })
      })

      test('accepts a pretty-printed body, hashed over its exact bytes', async () => {
        const event = webhookEvent('room_started')
        const body = JSON.stringify(event, null, 2) + '\n'
        expect((await post(body, signWebhook(body, credentials))).status).toBe(200)
      })

      test('accepts an event whose Content-Type a proxy rewrote to application/json', async () => {
        const body = JSON.stringify(webhookEvent('room_finished'))
        expect((await post(body, signWebhook(body, credentials), 'application/json')).status).toBe(200)
      })

      const now = Math.floor(Date.now() / 1000)
      const refusals: [string, () => [string, string | undefined]][] = [
        ['has no Authorization header', () => [JSON.stringify(webhookEvent('room_started')), undefined]],
        ['has an empty Authorization header', () => [JSON.stringify(webhookEvent('room_started')), '']],
        ['has a garbage Authorization header', () => [JSON.stringify(webhookEvent('room_started')), 'not.a.jwt']],
        ['was altered after signing', () => {
          const body = JSON.stringify(webhookEvent('room_started'))
          return [body.replace('room1', 'room2'), signWebhook(body, credentials)]
        }],
        ['was signed with another secret', () => {
          const body = JSON.stringify(webhookEvent('room_started'))
          return [body, signWebhook(body, { ...credentials, apiSecret: 'another-secret' })]
        }],
        ['was signed for another API key', () => {
          const body = JSON.stringify(webhookEvent('room_started'))
          return [body, signWebhook(body, { ...credentials, apiKey: 'another-key' })]
        }],
        ['carries an expired token', () => {
          const body = JSON.stringify(webhookEvent('room_started'))
          return [body, signWebhook(body, credentials, now - 3600)]
        }],
        ['carries a token without the body hash', () => {
          const body = JSON.stringify(webhookEvent('room_started'))
          return [body, signJwt({ iss: credentials.apiKey, nbf: now, exp: now + 300 }, credentials.apiSecret)]
        }],
        ['is signed but not JSON', () => {
          const body = 'this is not json'
          return [body, signWebhook(body, credentials)]
        }],
      ]
      for (const [what, make] of refusals) {
        test(`refuses with 401 an event that ${what}`, async () => {
          const refusedLines = () => running.server.logs().filter((entry) => entry.msg === 'webhook refused')
          const before = refusedLines().length
          const [body, authorization] = make()
          const answer = await post(body, authorization)
          expect(answer.status).toBe(401)
          expect(answer.json()).toEqual({ errorMessage: expect.any(String) })
          await waitForLog(running.server, () => refusedLines().length > before)
          // The marker's own line comes after any second line this refusal would write.
          await warningLinesCaughtUp(running.server)
          expect(refusedLines().length).toBe(before + 2)
          expect(refusedLines().at(-2)!.level).toBe('warn')
        })
      }
    })

    describe('GET /health', () => {
      test('answers 200 with a small JSON body', async () => {
        const answer = await running.http.request('/health')
        expect(answer.status).toBe(200)
        expect(answer.json()).toEqual({ status: 'ok' })
      })
    })

    describe('what the server says', () => {
      test('prints one line with its URL when it starts', () => {
        expect(running.server.lines.filter((line) => line.includes('listening on'))).toEqual([expect.stringContaining(running.server.url)])
      })

      test('never shows the API secret, a stack trace or a token in a log line or a response', async () => {
        const everything = [...running.server.lines, ...running.http.transcript].join('\n')
        expect(everything).not.toContain(credentials.apiSecret)
        expect(running.server.lines.join('\n')).not.toMatch(/\n\s+at |eyJhbGci/)
        expect(running.http.transcript.join('\n')).not.toMatch(/\n\s+at /)
      })
    })
  })

  describe(`${runtime}: starting up`, () => {
    const failures: [string, Record<string, string>, RegExp][] = [
      ['a port that is not a number', { SERVER_PORT: 'eighty' }, /SERVER_PORT/],
      ['a port out of range', { SERVER_PORT: '70000' }, /SERVER_PORT/],
      ['an API key without its secret', { LIVEKIT_API_KEY: 'key-only' }, /LIVEKIT_API_SECRET/],
      ['an API secret without its key', { LIVEKIT_API_SECRET: 'secret-only-value' }, /LIVEKIT_API_KEY/],
      ['a token lifetime that is not a duration', { TOKEN_TTL: 'forever' }, /TOKEN_TTL/],
      ['a zero token lifetime', { TOKEN_TTL: '0' }, /TOKEN_TTL/],
      ['a LiveKit URL that is not a URL', { LIVEKIT_URL: 'localhost:7880' }, /LIVEKIT_URL/],
      ['a body limit that is not a number', { MAX_BODY_BYTES: '1MB' }, /MAX_BODY_BYTES/],
      ['a JWKS address that is not a URL', { AUTH_JWKS_URL: 'keys.json' }, /AUTH_JWKS_URL/],
      ['an issuer to check without a JWKS address', { AUTH_ISSUER: 'https://id.example.test/' }, /AUTH_ISSUER.*AUTH_JWKS_URL/],
      ['a rate limit of zero', { TOKEN_RATE_LIMIT: '0' }, /TOKEN_RATE_LIMIT/],
      ['a TRUST_PROXY that is not a number of proxies', { TRUST_PROXY: 'maybe' }, /TRUST_PROXY/],
      ['a TRUST_PROXY above 10', { TRUST_PROXY: '11' }, /TRUST_PROXY/],
      ['a bound on bodies in flight that is not a number', { MAX_PENDING_BODY_BYTES: 'lots' }, /MAX_PENDING_BODY_BYTES/],
    ]
    for (const [what, env, message] of failures) {
      test(`stops at once with a one-line message on ${what}`, async () => {
        const { code, output } = await runUntilExit(runtime, env)
        expect(code).toBe(1)
        expect(output.trim().split('\n')).toEqual([expect.stringMatching(message)])
        expect(output).not.toContain('secret-only-value')
      })
    }

    test('warns once when it falls back to the development credentials', async () => {
      const server = await startServer(runtime)
      try {
        const warnings = server.logs().filter((entry) => entry.level === 'warn')
        expect(warnings).toEqual([expect.objectContaining({ msg: expect.stringContaining('development credentials') })])
        const answer = await httpClient(server.url).postJson('/token', { roomName: 'r', participantName: 'p' })
        verifyAccessToken(answer.json().token, { apiKey: 'devkey', apiSecret: 'secret' })
      } finally {
        await server.stop()
      }
    })
  })
}

/** A test secret (the shape every log and answer is searched for) padded to exactly `bytes` bytes. */
const secretOfBytes = (bytes: number) => testCredentials().apiSecret.padEnd(bytes, 'x')

// HMAC pads a key of up to 64 bytes (SHA-256's block) with zeros and hashes a longer one first (RFC 2104):
// a signer that draws that line one byte off, or never hashes, signs with another key than LiveKit's.
const blockEdges: [string, number][] = [
  ['one byte short of', 63],
  ['exactly', 64],
  ['one byte past', 65],
  ['well past', 108],
]

for (const runtime of runtimeNames) {
  for (const [edge, bytes] of blockEdges) {
    describe(`${runtime}: a secret of ${bytes} bytes, ${edge} SHA-256's 64-byte block`, () => {
      const secret = { apiKey: `key-${bytes}`, apiSecret: secretOfBytes(bytes) }
      const env = { LIVEKIT_API_KEY: secret.apiKey, LIVEKIT_API_SECRET: secret.apiSecret }
      const running = serveDuringTests(runtime, env)
      const postWebhook = (body: string, authorization: string) => {
        const headers = { 'content-type': 'application/webhook+json', authorization }
        return running.http.request('/livekit/webhook', { method: 'POST', headers, body })
      }

      test('is the length it says', () => {
        expect(Buffer.byteLength(secret.apiSecret)).toBe(bytes)
      })

      test('signs tokens that verify with it as LiveKit verifies them', async () => {
        const answer = await running.http.postJson('/token', { roomName: 'room1', participantName: 'alice' })
        expect(verifyAccessToken(answer.json().token, secret).sub).toBe('alice')
      })

      test('accepts a webhook signed with it, and refuses one signed with it but for its last character', async () => {
        const body = JSON.stringify(webhookEvent('room_started'))
        expect((await postWebhook(body, signWebhook(body, secret))).status).toBe(200)
        const other = JSON.stringify(webhookEvent('room_started'))
        const almost = { ...secret, apiSecret: `${secret.apiSecret.slice(0, -1)}y` }
        expect((await postWebhook(other, signWebhook(other, almost))).status).toBe(401)
      })
    })
  }
}
