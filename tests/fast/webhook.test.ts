// POST /livekit/webhook in this process: signed as a LiveKit server signs (../livekit.ts, without
// the SDK), verified or refused, each event handled once, a failing handler's 500 and redelivery.
import { describe, expect, test } from 'bun:test'
import { createHash, createHmac } from 'node:crypto'
import { WebhookEvent } from 'livekit-server-sdk'
import { createWebhookVerifier, loadConfig, type WebhookHandler } from '../../index'
import { testCredentials } from '../server'
import { livekitEventNames, signJwt, signWebhook, verifyAccessToken, webhookEvent, withinOneSecond } from '../livekit'
import { appWith, streamOf } from './app'

const credentials = testCredentials()
const livekitEnv = { LIVEKIT_API_KEY: credentials.apiKey, LIVEKIT_API_SECRET: credentials.apiSecret }
const refused = { errorMessage: 'Webhook signature is missing or invalid' }
const sha256 = (body: string) => createHash('sha256').update(body).digest('base64')
const nowSeconds = () => Math.floor(Date.now() / 1000)

/** Handlers that keep every event they are given, by name. */
function recordingHandlers(...names: string[]) {
  const seen: WebhookEvent[] = []
  const handlers: Record<string, WebhookHandler> = Object.fromEntries(
    names.map((name) => [name, (event: WebhookEvent) => void seen.push(event)]),
  )
  return { seen, handlers }
}

describe('POST /livekit/webhook, verified as LiveKit signs it', () => {
  const { seen, handlers } = recordingHandlers('participant_joined', 'agent_job_started')
  const app = appWith(livekitEnv, { handlers })

  test('answers {"received": true} and hands the decoded event to its handler', async () => {
    const event = webhookEvent('participant_joined', { participant: { sid: 'PA_1', identity: 'alice' } })
    const answer = await app.postWebhook(JSON.stringify(event), credentials)
    expect([answer.status, answer.json()]).toEqual([200, { received: true }])
    const handled = seen.find((each) => each.id === event.id)!
    expect(handled).toBeInstanceOf(WebhookEvent)
    expect([handled.event, handled.room?.name, handled.participant?.identity]).toEqual([
      'participant_joined',
      'room1',
      'alice',
    ])
    expect(handled.createdAt).toBe(BigInt(event.createdAt as string))
  })

  test('reads the exact bytes whatever the Content-Type, and proto field names too', async () => {
    const id = `EV_snake_${Date.now()}`
    const body = `{"event":"participant_joined","id":"${id}","participant":{"identity":"bob"},"created_at":"5"}`
    for (const contentType of ['application/json', 'text/plain']) {
      const answer = await app.postWebhook(body, credentials, { 'content-type': contentType })
      expect(answer.status).toBe(200)
    }
    expect(seen.find((each) => each.participant?.identity === 'bob')?.createdAt).toBe(5n)
  })

  test("hands the protocol's agent events, which the SDK does not name, to their handlers", async () => {
    const event = webhookEvent('agent_job_started', { room: undefined, job: { id: 'AJ_1', agentName: 'helper' } })
    expect((await app.postWebhook(JSON.stringify(event), credentials)).status).toBe(200)
    expect(seen.find((each) => each.id === event.id)?.job?.id).toBe('AJ_1')
  })

  test('reads a chunked body (no declared length) whole', async () => {
    const body = JSON.stringify(webhookEvent('participant_joined', { participant: { identity: 'chunked' } }))
    const headers = { authorization: signWebhook(body, credentials) }
    const answer = await app.request('/livekit/webhook', {
      method: 'POST',
      headers,
      body: streamOf(body.slice(0, 10), body.slice(10)),
    })
    expect(answer.status).toBe(200)
    expect(seen.some((each) => each.participant?.identity === 'chunked')).toBe(true)
  })

  const body = JSON.stringify(webhookEvent('participant_joined'))
  const claims = () => ({ iss: credentials.apiKey, nbf: nowSeconds(), exp: nowSeconds() + 300, sha256: sha256(body) })
  const jwt = (
    overrides: object = {},
    header: { alg: string; [name: string]: unknown } = { alg: 'HS256', typ: 'JWT' },
  ) => signJwt({ ...claims(), ...overrides }, credentials.apiSecret, header)
  const segments = (token: string) => token.split('.') as [string, string, string]
  /** A valid JWT whose signature has a "-" or "_", written as standard base64's "+" or "/": it decodes the same. */
  const inStandardBase64 = () => {
    const [header, payload, signature] = segments(
      Array.from({ length: 100 }, (_, jti) => jwt({ jti })).find((token) => /[-_]/.test(segments(token)[2]))!,
    )
    return `${header}.${payload}.${signature.replaceAll('-', '+').replaceAll('_', '/')}`
  }
  const encode = (json: unknown) => Buffer.from(JSON.stringify(json)).toString('base64url')
  /** A JWT with this header, signed with HS256 whatever the header says. */
  const hs256With = (header: object) => {
    const input = `${encode(header)}.${encode(claims())}`
    return `${input}.${createHmac('sha256', credentials.apiSecret).update(input).digest('base64url')}`
  }
  const refusals: [string, () => Record<string, string>, string?][] = [
    [
      'a header naming HS512 over an HS256 signature',
      () => ({ authorization: hs256With({ alg: 'HS512', typ: 'JWT' }) }),
    ],
    ['a header naming "none" over an HS256 signature', () => ({ authorization: hs256With({ alg: 'none' }) })],
    ['a header naming no algorithm', () => ({ authorization: hs256With({ typ: 'JWT' }) })],
    ['no Authorization header', () => ({})],
    ['an empty Authorization header', () => ({ authorization: '' })],
    [
      'a body altered after signing',
      () => ({ authorization: signWebhook(body, credentials) }),
      body.replace('room1', 'room2'),
    ],
    ['a body with a byte added', () => ({ authorization: signWebhook(body, credentials) }), `${body} `],
    [
      'a JWT signed with another secret',
      () => ({ authorization: signWebhook(body, { ...credentials, apiSecret: `${credentials.apiSecret}x` }) }),
    ],
    ['a JWT issued by an unknown API key', () => ({ authorization: jwt({ iss: 'someone-else' }) })],
    ['a JWT with no issuer', () => ({ authorization: jwt({ iss: undefined }) })],
    ['a JWT whose issuer is a number', () => ({ authorization: jwt({ iss: 7 }) })],
    ['a JWT with a "Bearer " prefix', () => ({ authorization: `Bearer ${jwt()}` })],
    ['a JWT signed with HS384', () => ({ authorization: jwt({}, { alg: 'HS384', typ: 'JWT' }) })],
    ['a JWT signed with HS512', () => ({ authorization: jwt({}, { alg: 'HS512' }) })],
    ['an unsigned JWT (alg "none")', () => ({ authorization: jwt({}, { alg: 'none' }) })],
    ['a JWT with a critical extension', () => ({ authorization: jwt({}, { alg: 'HS256', crit: ['exp'] }) })],
    ['a JWT of two segments', () => ({ authorization: segments(jwt()).slice(0, 2).join('.') })],
    ['a JWT of four segments', () => ({ authorization: `${jwt()}.x` })],
    ['a JWT whose signature is cut short', () => ({ authorization: jwt().slice(0, -2) })],
    ['a JWT whose signature is longer', () => ({ authorization: `${jwt()}AA` })],
    ['a JWT in padded base64url', () => ({ authorization: `${jwt()}=` })],
    ['a signature with standard-base64 characters (same bytes)', () => ({ authorization: inStandardBase64() })],
    [
      'a header that is not JSON',
      () => ({ authorization: `${Buffer.from('{alg').toString('base64url')}.${segments(jwt())[1]}.x` }),
    ],
    ['a header that is a JSON array', () => ({ authorization: `${encode(['HS256'])}.${segments(jwt())[1]}.x` })],
    [
      'claims that are not JSON',
      () => ({ authorization: `${segments(jwt())[0]}.${Buffer.from('{').toString('base64url')}.x` }),
    ],
    ['claims that are JSON null', () => ({ authorization: `${segments(jwt())[0]}.${encode(null)}.x` })],
    ['a JWT with no exp', () => ({ authorization: jwt({ exp: undefined }) })],
    ['a JWT whose exp is text', () => ({ authorization: jwt({ exp: String(nowSeconds() + 300) }) })],
    ['a JWT whose nbf is text', () => ({ authorization: jwt({ nbf: String(nowSeconds()) }) })],
    ['a JWT whose iat is text', () => ({ authorization: jwt({ iat: String(nowSeconds()) }) })],
    ['a JWT with no sha256', () => ({ authorization: jwt({ sha256: undefined }) })],
    [
      'a sha256 in base64url, unpadded',
      () => ({ authorization: jwt({ sha256: createHash('sha256').update(body).digest('base64url') }) }),
    ],
    ['a sha256 in hex', () => ({ authorization: jwt({ sha256: createHash('sha256').update(body).digest('hex') }) })],
    ['a sha256 that is a number', () => ({ authorization: jwt({ sha256: 5 }) })],
  ]
  for (const [what, headers, sent = body] of refusals) {
    test(`refuses ${what} with 401, handling nothing`, async () => {
      const before = seen.length
      const answer = await app.request('/livekit/webhook', { method: 'POST', headers: headers(), body: sent })
      expect([answer.status, answer.json()]).toEqual([401, refused])
      expect(seen.length).toBe(before)
    })
  }

  test('accepts the hand-made JWT of the refusals above when its header says HS256', async () => {
    const answer = await app.request('/livekit/webhook', {
      method: 'POST',
      headers: { authorization: hs256With({ alg: 'HS256' }) },
      body,
    })
    expect(answer.status).toBe(200)
  })

  test('accepts a JWT with numeric iat, no nbf, and the JS SDK header {"alg":"HS256"}', async () => {
    const body = JSON.stringify(webhookEvent('participant_joined'))
    const authorization = signJwt(
      { iss: credentials.apiKey, iat: nowSeconds(), exp: nowSeconds() + 60, sha256: sha256(body) },
      credentials.apiSecret,
      {
        alg: 'HS256',
      },
    )
    const answer = await app.request('/livekit/webhook', { method: 'POST', headers: { authorization }, body })
    expect(answer.status).toBe(200)
  })

  test('allows 10 s of clock skew: exp now-9 and nbf now+10 pass, exp now-10 and nbf now+11 do not', async () => {
    const statuses = await withinOneSecond(async (now) => {
      const post = async (times: { nbf?: number; exp: number }) => {
        const body = JSON.stringify(webhookEvent('participant_joined'))
        const authorization = signJwt(
          { iss: credentials.apiKey, ...times, sha256: sha256(body) },
          credentials.apiSecret,
        )
        return (await app.request('/livekit/webhook', { method: 'POST', headers: { authorization }, body })).status
      }
      return [
        await post({ exp: now - 9 }),
        await post({ exp: now - 10 }),
        await post({ nbf: now + 10, exp: now + 60 }),
        await post({ nbf: now + 11, exp: now + 60 }),
      ]
    })
    expect(statuses).toEqual([200, 401, 200, 401])
  })

  test('refuses a signed body that is not a JSON object with 401', async () => {
    for (const sent of ['not json', '[]', '"event"', 'null', '']) {
      const answer = await app.request('/livekit/webhook', {
        method: 'POST',
        headers: { authorization: signWebhook(sent, credentials) },
        body: sent,
      })
      expect([sent, answer.status]).toEqual([sent, 401])
    }
  })
})

describe('POST /livekit/webhook with LIVEKIT_KEYS (key rotation)', () => {
  const keys = { old: `test-secret-${crypto.randomUUID()}`, new: `test-secret-${crypto.randomUUID()}` }
  const app = appWith({
    LIVEKIT_KEYS: `# rotation\nold-key: ${keys.old}\n\nnew-key:${keys.new}`,
    LIVEKIT_API_KEY: 'new-key',
  })

  test('verifies a webhook signed with any listed key', async () => {
    for (const [apiKey, apiSecret] of [
      ['old-key', keys.old],
      ['new-key', keys.new],
    ] as const) {
      const answer = await app.postWebhook(JSON.stringify(webhookEvent('room_started')), { apiKey, apiSecret })
      expect([apiKey, answer.status]).toEqual([apiKey, 200])
    }
  })

  test("refuses a webhook signed with one key's name and another's secret", async () => {
    const answer = await app.postWebhook(JSON.stringify(webhookEvent('room_started')), {
      apiKey: 'old-key',
      apiSecret: keys.new,
    })
    expect(answer.status).toBe(401)
  })

  test('signs tokens with LIVEKIT_API_KEY', async () => {
    const answer = await app.postJson('/token', { roomName: 'r', participantName: 'p' })
    expect(verifyAccessToken(answer.json().token, { apiKey: 'new-key', apiSecret: keys.new }).sub).toBe('p')
  })
})

describe('POST /livekit/webhook, its body', () => {
  const app = appWith({ ...livekitEnv, MAX_BODY_BYTES: '1000' })
  const eventOfBytes = (bytes: number) => {
    const event = JSON.stringify(webhookEvent('room_started', { room: { name: '' } }))
    return event.replace('"name":""', `"name":"${'r'.repeat(bytes - Buffer.byteLength(event))}"`)
  }

  test('accepts a body of MAX_BODY_BYTES, and refuses one a byte longer with 413', async () => {
    expect((await app.postWebhook(eventOfBytes(1000), credentials)).status).toBe(200)
    const answer = await app.postWebhook(eventOfBytes(1001), credentials)
    expect([answer.status, answer.json()]).toEqual([413, { errorMessage: 'Request body must be at most 1000 bytes' }])
  })

  test('checks the signature before the body: an unsigned oversized body is a 401', async () => {
    const answer = await app.request('/livekit/webhook', { method: 'POST', body: eventOfBytes(5000) })
    expect([answer.status, answer.json()]).toEqual([401, refused])
  })

  test('counts a chunked body while reading it', async () => {
    const body = eventOfBytes(1001)
    const headers = { authorization: signWebhook(body, credentials) }
    const answer = await app.request('/livekit/webhook', {
      method: 'POST',
      headers,
      body: streamOf(body.slice(0, 600), body.slice(600)),
    })
    expect(answer.status).toBe(413)
  })

  test('answers 503 to a body past MAX_PENDING_BODY_BYTES being read at once, counted apart from /token', async () => {
    const busy = appWith({ ...livekitEnv, MAX_PENDING_BODY_BYTES: '600' })
    const slowUpload = (path: string, headers: Record<string, string>) => {
      let finish = () => {}
      let started = () => {}
      const reading = new Promise<void>((resolve) => (started = resolve))
      const body = new ReadableStream<Uint8Array>({
        start: (controller) => (finish = () => controller.close()),
        // Asked for the first chunk once the body's bytes are reserved.
        pull: () => started(),
      })
      const answer = busy.request(path, { method: 'POST', headers: { ...headers, 'content-length': '500' }, body })
      return { reading, finish, answer }
    }
    const token = slowUpload('/token', { 'content-type': 'application/json' })
    await token.reading
    // The token route's share is nearly full; the webhook route's is not.
    expect((await busy.postWebhook(eventOfBytes(400), credentials)).status).toBe(200)
    const body = JSON.stringify(webhookEvent('room_started'))
    const webhook = slowUpload('/livekit/webhook', { authorization: signWebhook(body, credentials) })
    await webhook.reading
    const refused = await busy.postWebhook(eventOfBytes(400), credentials)
    expect([refused.status, refused.json()]).toEqual([
      503,
      { errorMessage: 'The server is busy receiving other requests, retry shortly' },
    ])
    expect(refused.headers.get('retry-after')).toBe('1')
    webhook.finish()
    token.finish()
    expect((await webhook.answer).status).toBe(401)
    expect((await token.answer).status).toBe(400)
    expect((await busy.postWebhook(eventOfBytes(400), credentials)).status).toBe(200)
  })

  // What the server reads of an event itself is checked as a whole decoding would check it: the same
  // answer whether or not a handler of the app's own (which gets the decoded event) is listening.
  const everyPart = {
    room: { name: 'r' },
    participant: { identity: 'alice' },
    track: { sid: 'TR_1' },
    egressInfo: { egressId: 'EG_1', roomName: 'r' },
    ingressInfo: { ingressId: 'IN_1', roomName: 'r' },
  }
  const eventBodies: [string, Record<string, unknown>, number][] = [
    ['a createdAt that is no number', { createdAt: 'abc' }, 401],
    ['a createdAt past 64 bits', { createdAt: '99999999999999999999' }, 401],
    ['a createdAt as a JSON number', { createdAt: 1764000000 }, 200],
    ['a negative createdAt', { createdAt: '-5' }, 200],
    ['created_at, the proto name', { createdAt: undefined, created_at: '1764000000' }, 200],
    ['a room that is text', { room: 'room1' }, 401],
    ['a room name that is a number', { room: { name: 5 } }, 401],
    ['a room that is null', { room: null }, 200],
    ['a participant identity that is a number', { participant: { identity: 5 } }, 401],
    ['a track sid that is a number', { track: { sid: 1 } }, 401],
    ['egressInfo with a roomName that is a number', { egressInfo: { roomName: 5 } }, 401],
    ['egressInfo with room_name, the proto name, a number', { egressInfo: { room_name: 5 } }, 401],
    ['egress_info, the proto name, with a room_name that is a number', { egress_info: { room_name: 5 } }, 401],
    ['ingress_info with an ingress_id that is a number', { ingress_info: { ingress_id: 5 } }, 401],
    ['ingressInfo with an ingress_id that is a number', { ingressInfo: { ingress_id: 5 } }, 401],
    ['ingressInfo with proto names', { ingressInfo: { room_name: 'r', ingress_id: 'IN_1' } }, 200],
    ['a createdAt with a letter before its digits', { createdAt: 'x5' }, 401],
    ['a createdAt with letters after a digit', { createdAt: '1abc' }, 401],
    ['created_at that is no number, beside createdAt', { created_at: 'abc' }, 401],
    ['egressInfo with an egressId that is a number', { egressInfo: { egressId: 5 } }, 401],
    ['egressInfo with egress_id, the proto name, a number', { egressInfo: { egress_id: 5 } }, 401],
    ['ingressInfo with a roomName that is a number', { ingressInfo: { roomName: 5 } }, 401],
    ['ingressInfo with an ingressId that is a number', { ingressInfo: { ingressId: 5 } }, 401],
    ['ingressInfo with room_name, the proto name, a number', { ingressInfo: { room_name: 5 } }, 401],
    ['no room, and egressInfo with room_name a number', { room: undefined, egressInfo: { room_name: 5 } }, 401],
    ['every part read, and a room that is text', { ...everyPart, room: 'room1' }, 401],
    ['every part read, each well formed', everyPart, 200],
    ['an id that is a number', { id: 5 }, 401],
    ['an event name that is a number', { event: 5 }, 401],
    ['no event name', { event: undefined }, 200],
    ['fields no LiveKit version sends', { future: { x: 1 }, room: { name: 'r', future: true } }, 200],
  ]
  for (const [what, fields, status] of eventBodies) {
    for (const handled of ['built-in', 'own'] as const) {
      test(`answers ${status} to a signed event with ${what} (${handled} handlers)`, async () => {
        const { handlers } = recordingHandlers('room_started', '')
        const target = handled === 'own' ? appWith(livekitEnv, { handlers }) : app
        const answer = await target.postWebhook(JSON.stringify(webhookEvent('room_started', fields)), credentials)
        expect(answer.status).toBe(status)
      })
    }
  }
})

describe('POST /livekit/webhook, each event handled once', () => {
  test('answers a redelivered id {"received": "duplicate"} without handling it again', async () => {
    const { seen, handlers } = recordingHandlers('room_started')
    const app = appWith(livekitEnv, { handlers })
    const body = JSON.stringify(webhookEvent('room_started'))
    expect((await app.postWebhook(body, credentials)).json()).toEqual({ received: true })
    expect((await app.postWebhook(body, credentials)).json()).toEqual({ received: 'duplicate' })
    // The same id in another body (re-signed) is the same event.
    const again = JSON.stringify({ ...JSON.parse(body), room: { name: 'elsewhere' } })
    expect((await app.postWebhook(again, credentials)).json()).toEqual({ received: 'duplicate' })
    expect(seen).toHaveLength(1)
  })

  test('handles every delivery of an event without an id', async () => {
    const { seen, handlers } = recordingHandlers('room_started')
    const app = appWith(livekitEnv, { handlers })
    const body = JSON.stringify({ ...webhookEvent('room_started'), id: undefined })
    for (let i = 0; i < 2; i++) expect((await app.postWebhook(body, credentials)).json()).toEqual({ received: true })
    expect(seen).toHaveLength(2)
  })

  for (const [kind, fail] of [
    [
      'throws',
      () => {
        throw new Error('database down')
      },
    ],
    ['rejects', () => Promise.reject(new Error('database down'))],
  ] as const) {
    test(`answers 500 when the handler ${kind}, then handles LiveKit's redelivery`, async () => {
      let calls = 0
      const app = appWith(livekitEnv, { handlers: { room_started: () => (++calls === 1 ? fail() : undefined) } })
      const body = JSON.stringify(webhookEvent('room_started'))
      const failed = await app.postWebhook(body, credentials)
      expect([failed.status, failed.json()]).toEqual([500, { errorMessage: 'Webhook handler failed' }])
      expect(failed.text).not.toContain('database down')
      expect((await app.postWebhook(body, credentials)).json()).toEqual({ received: true })
      expect((await app.postWebhook(body, credentials)).json()).toEqual({ received: 'duplicate' })
      expect(calls).toBe(2)
    })
  }

  test('answers 503 with Retry-After to a redelivery while the first is still being handled', async () => {
    let release = () => {}
    const running = new Promise<void>((resolve) => (release = resolve))
    let calls = 0
    const app = appWith(livekitEnv, { handlers: { room_started: () => (calls++, running) } })
    const body = JSON.stringify(webhookEvent('room_started'))
    const first = app.postWebhook(body, credentials)
    while (calls === 0) await Bun.sleep(1)
    const busy = await app.postWebhook(body, credentials)
    expect([busy.status, busy.json()]).toEqual([503, { errorMessage: 'This event is being handled, retry shortly' }])
    expect(busy.headers.get('retry-after')).toBe('5')
    release()
    expect((await first).json()).toEqual({ received: true })
    expect((await app.postWebhook(body, credentials)).json()).toEqual({ received: 'duplicate' })
    expect(calls).toBe(1)
  })

  test('answers 200 to an event no handler is named for, and to names on Object.prototype', async () => {
    const { seen, handlers } = recordingHandlers('room_started')
    const app = appWith(livekitEnv, { handlers })
    for (const name of ['room_exploded', '__proto__', 'constructor', 'toString', 'hasOwnProperty']) {
      const answer = await app.postWebhook(JSON.stringify(webhookEvent(name)), credentials)
      expect([name, answer.status, answer.json()]).toEqual([name, 200, { received: true }])
    }
    expect(seen).toHaveLength(0)
  })

  test("answers 200 to each of LiveKit's events with the built-in handlers", async () => {
    const app = appWith(livekitEnv)
    for (const name of livekitEventNames) {
      const event = webhookEvent(name, {
        participant: { identity: 'alice' },
        track: { sid: 'TR_1' },
        egressInfo: { egressId: 'EG_1', roomName: 'room1' },
        ingressInfo: { ingressId: 'IN_1', roomName: 'room1' },
      })
      const body = JSON.stringify(event)
      expect([name, (await app.postWebhook(body, credentials)).json()]).toEqual([name, { received: true }])
      expect([name, (await app.postWebhook(body, credentials)).json()]).toEqual([name, { received: 'duplicate' }])
    }
  })
})

describe('createWebhookVerifier, the verifier apart from the route', () => {
  const verify = createWebhookVerifier(loadConfig(livekitEnv))
  const bytes = (text: string) => new TextEncoder().encode(text)

  test('returns the decoded event of a body signed as LiveKit signs it, and throws on anything else', () => {
    const body = JSON.stringify(webhookEvent('participant_left', { participant: { identity: 'alice' } }))
    const event = verify(bytes(body), signWebhook(body, credentials))
    expect(event).toBeInstanceOf(WebhookEvent)
    expect([event.event, event.participant?.identity]).toEqual(['participant_left', 'alice'])
    expect(() => verify(bytes(`${body} `), signWebhook(body, credentials))).toThrow()
    expect(() => verify(bytes(body), null)).toThrow()
  })
})
