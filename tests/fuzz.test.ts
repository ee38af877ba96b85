// Property-based fuzzing of every route over real HTTP, on both runtimes: whatever arrives, the
// answer is a 2xx or a 4xx in JSON (a refusal always with an errorMessage), never a 5xx; the server
// keeps serving and logs no stack trace. Then, in-process, no payload pollutes a prototype.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, spyOn, test } from 'bun:test'
import fc from 'fast-check'
import { createHash } from 'node:crypto'
import { createApp, loadConfig } from '../index.ts'
import { assertNoLeaks, runtimeNames, startServer, testCredentials, type ServerProcess } from './server.ts'
import { signJwt, signWebhook, verifyAccessToken } from './livekit.ts'
import { rawRequest } from './raw-http.ts'

// Real servers, browsers and Redis start here: 30 s a test (bunfig's [test] timeout is not read by Bun 1.4).
setDefaultTimeout(30_000)

const credentials = testCredentials()
const numRuns = 200
const encode = (text: string) => new TextEncoder().encode(text)
const concat = (...parts: (string | Uint8Array)[]) => readable(Buffer.concat(parts.map((part) => (typeof part === 'string' ? encode(part) : part))))

/** Bytes that fast-check prints as text, with the bytes that are not ASCII as \xNN, in a counterexample. */
function readable<T extends Uint8Array>(bytes: T): T {
  const text = () => [...bytes].map((byte) => (byte >= 0x20 && byte < 0x7f ? String.fromCharCode(byte) : `\\x${byte.toString(16).padStart(2, '0')}`)).join('')
  return Object.assign(bytes, { [fc.toStringMethod]: () => `bytes\`${text()}\`` })
}

// Bodies as fetch() takes them.
type Bytes = Uint8Array<ArrayBuffer>

interface Probe {
  method: string
  path: string
  headers: Record<string, string>
  body?: string | Bytes
}

interface Answer {
  status: number
  headers: Headers
  text: string
}

async function send(baseUrl: string, { method, path, headers, body: text }: Probe): Promise<Answer> {
  // As bytes, so that fetch() adds no Content-Type of its own.
  const body = typeof text === 'string' ? encode(text) : text
  const url = new URL(baseUrl + path)
  if (url.hostname !== 'localhost') throw new Error(`refusing to leave loopback: ${url}`)
  if (method === 'GET' && body) {
    // fetch() refuses a GET with a body; HTTP/1.1 allows one, so write it on a socket.
    const answer = await rawRequest(url.href, { ...headers, 'content-length': String(body.byteLength) }, [body], { method, timeoutMs: 10_000 })
    return { status: answer.status, headers: answer.headers, text: answer.body }
  }
  const response = await fetch(url, { method, headers, body, signal: AbortSignal.timeout(10_000) })
  return { status: response.status, headers: response.headers, text: await response.text() }
}

/** What every answer must be; throws (so fast-check reports the request) when it is not. */
function expectWellFormed(probe: Probe, answer: Answer): void {
  const summary = `${probe.method} ${probe.path} answered ${answer.status} ${answer.text.slice(0, 300)}`
  if (answer.status >= 500) throw new Error(`a 5xx: ${summary}`)
  assertNoLeaks(summary, answer.text, { tokensAllowed: true })
  // A CORS preflight is the one answer without a body.
  if (probe.method === 'OPTIONS' && answer.status === 204 && answer.text === '') return
  let json: any
  try {
    json = JSON.parse(answer.text)
  } catch {
    throw new Error(`not JSON: ${summary}`)
  }
  if (answer.status >= 300 && typeof json?.errorMessage !== 'string') throw new Error(`a refusal without an errorMessage: ${summary}`)
}

const postJson = (path: string, body: string | Bytes, headers: Record<string, string> = {}): Probe => ({
  method: 'POST',
  path,
  headers: { 'content-type': 'application/json', ...headers },
  body,
})

const postWebhook = (body: string | Bytes, authorization: string): Probe => ({
  method: 'POST',
  path: '/livekit/webhook',
  headers: { 'content-type': 'application/webhook+json', authorization },
  body,
})

const printable = fc.integer({ min: 0x20, max: 0x7e }).map((code) => String.fromCharCode(code))
// Header values are bytes; these are the visible ones outside ASCII's control characters.
const latin1 = fc.integer({ min: 0x21, max: 0xff }).filter((code) => code < 0x7f || code >= 0xa0).map((code) => String.fromCharCode(code))

const anyPath = fc.oneof(
  fc.constantFrom('/token', '/livekit/webhook', '/health'),
  fc.constantFrom('/', '/nope', '/token/', '/TOKEN', '/livekit', '/livekit/webhook/extra', '/health/../token', '/%ff%00', '/token?x=1', '//token', '/a%2F..%2Ftoken'),
  fc.webPath().map((path) => (path.startsWith('/') ? path : `/${path}`)),
)

const oddContentType = fc.oneof(
  fc.constantFrom(
    'application/json',
    'application/json; charset=utf-16',
    'APPLICATION/JSON',
    'application/webhook+json',
    'application/vnd.api+json',
    'application/json;;;',
    'application/x-www-form-urlencoded',
    'multipart/form-data; boundary=----fuzz',
    'text/plain',
    'application/octet-stream',
    '*/*',
    'json',
    '',
  ),
  fc.string({ unit: printable, maxLength: 60 }),
)

const contentTypeHeaders = fc.option(oddContentType, { nil: undefined }).map((type): Record<string, string> => (type === undefined ? {} : { 'content-type': type }))

// The fields of both token contracts, and values of every JSON type but the one a field takes.
const openViduFields = ['roomName', 'participantName'] as const
const standardStringFields = ['room_name', 'participant_identity', 'participant_name', 'participant_metadata'] as const
const scalar = fc.oneof(fc.integer(), fc.double({ noNaN: true, noDefaultInfinity: true }), fc.boolean(), fc.constant(null))
const notAString = fc.oneof(scalar, fc.array(fc.jsonValue({ maxDepth: 2 }), { maxLength: 3 }), fc.dictionary(fc.string({ maxLength: 6 }), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 3 }))
const notAnObject = fc.oneof(scalar, fc.string({ maxLength: 20 }), fc.array(fc.jsonValue({ maxDepth: 2 }), { maxLength: 3 }))
const name = fc.string({ minLength: 1, maxLength: 40 })

const validStandardRequest = fc.record(
  {
    room_name: name,
    participant_identity: name,
    participant_name: name,
    participant_metadata: fc.string({ maxLength: 100 }),
    participant_attributes: fc.dictionary(fc.string({ minLength: 1, maxLength: 10 }), fc.string({ maxLength: 20 }), { maxKeys: 4 }),
    room_config: fc.constant({ agents: [{ agent_name: 'transcriber' }] }),
  },
  { requiredKeys: [] },
)

const wrongStandardField = fc.oneof(
  ...standardStringFields.map((field) => fc.record({ field: fc.constant<string>(field), value: notAString })),
  fc.record({ field: fc.constant('participant_attributes'), value: notAnObject }),
  fc.record({ field: fc.constant('participant_attributes'), value: fc.dictionary(fc.string({ maxLength: 10 }), notAString, { minKeys: 1, maxKeys: 3 }) }),
  fc.record({ field: fc.constant('room_config'), value: notAnObject }),
)

// Keys that reach Object.prototype when an object is merged or assigned carelessly.
const dangerousKey = fc.constantFrom('__proto__', 'constructor', 'prototype')
const fieldName = fc.constantFrom(...openViduFields, ...standardStringFields, 'participant_attributes', 'room_config', 'agents', 'agent_name', 'metadata', 'polluted')

/** A JSON object whose keys are own properties even when one is "__proto__" (Object.fromEntries defines them). */
const objectOf = (key: fc.Arbitrary<string>, value: fc.Arbitrary<unknown>) =>
  fc.array(fc.tuple(key, value), { minLength: 1, maxLength: 4 }).map((entries) => Object.fromEntries(entries))

const { tree: pollutingTree } = fc.letrec<{ tree: unknown; object: Record<string, unknown>; array: unknown[] }>((tie) => ({
  tree: fc.oneof({ depthSize: 'small', maxDepth: 4 }, fc.jsonValue({ maxDepth: 1 }), tie('object'), tie('array')),
  object: objectOf(fc.oneof(dangerousKey, dangerousKey, fieldName), tie('tree')),
  array: fc.array(tie('tree'), { maxLength: 3 }),
}))

const canaryPayloads = [
  '{"__proto__":{"polluted":"yes"}}',
  '{"constructor":{"prototype":{"polluted":"yes"}}}',
  '{"__proto__":{"roomName":"polluted","participantName":"polluted"}}',
  '{"constructor":{"prototype":{"roomName":"polluted","participantName":"polluted"}}}',
  '{"roomName":"room1","participantName":"alice","__proto__":{"polluted":"yes"}}',
  '{"participant_attributes":{"__proto__":{"polluted":"yes"}}}',
  '{"participant_attributes":{"__proto__":"polluted","constructor":"polluted","prototype":"polluted"}}',
  '{"room_config":{"__proto__":{"polluted":"yes"}}}',
  '{"room_config":{"constructor":{"prototype":{"polluted":"yes"}}}}',
  '{"room_config":{"agents":[{"agent_name":"a","__proto__":{"polluted":"yes"}}]}}',
  '{"room_config":{"agents":{"__proto__":{"polluted":"yes"}}}}',
]

const pollutingBody = fc.oneof(
  fc.constantFrom(...canaryPayloads),
  objectOf(fc.oneof(dangerousKey, fieldName), pollutingTree).map((body) => JSON.stringify(body)),
  objectOf(dangerousKey, fc.oneof(fc.string({ maxLength: 10 }), pollutingTree)).map((attributes) => JSON.stringify({ participant_attributes: attributes })),
  objectOf(fc.oneof(dangerousKey, fc.constant('agents')), pollutingTree).map((roomConfig) => JSON.stringify({ room_config: roomConfig })),
  objectOf(fc.oneof(dangerousKey, fc.constant('agent_name')), pollutingTree).map((agent) => JSON.stringify({ room_config: { agents: [agent] } })),
  fc.tuple(dangerousKey, pollutingTree).map(([key, value]) => `{"roomName":"room1","participantName":"alice",${JSON.stringify(key)}:${JSON.stringify(value) ?? 'null'}}`),
)

// A lone surrogate, as UTF-8 bytes no decoder accepts, or as a JSON escape that parses to one.
const invalidUtf8 = fc.constantFrom([0xed, 0xa0, 0x80], [0xed, 0xbf, 0xbf], [0xff], [0xc0, 0x80], [0xe2, 0x82], [0x80], [0xf4, 0x90, 0x80, 0x80]).map((bytes) => new Uint8Array(bytes))
const surrogateEscape = fc.constantFrom('\\ud800', '\\udfff', '\\udc00\\ud800', 'a\\ud83d', '\\ud83db')
const surrogateString = fc.tuple(fc.string({ maxLength: 8 }), fc.oneof(invalidUtf8, surrogateEscape), fc.string({ maxLength: 8 })).map(([before, odd, after]) =>
  concat(JSON.stringify(before).slice(0, -1), odd, JSON.stringify(after).slice(1)),
)
const surrogateBody = fc.tuple(surrogateString, fc.constantFrom('roomName', 'participantName', 'both', 'room_name', 'participant_identity', 'participant_name', 'participant_metadata', 'attribute key', 'attribute value', 'agent_name')).map(
  ([text, place]) => {
    switch (place) {
      case 'roomName': return concat('{"roomName":', text, ',"participantName":"alice"}')
      case 'participantName': return concat('{"roomName":"room1","participantName":', text, '}')
      case 'both': return concat('{"roomName":', text, ',"participantName":', text, '}')
      case 'attribute key': return concat('{"participant_attributes":{', text, ':"x"}}')
      case 'attribute value': return concat('{"participant_attributes":{"team":', text, '}}')
      case 'agent_name': return concat('{"room_config":{"agents":[{"agent_name":', text, '}]}}')
      default: return concat(`{"${place}":`, text, '}')
    }
  },
)

// Nesting thousands of levels deep, in every place a value can go.
const deepPlaces = ['top', ...openViduFields, ...standardStringFields, 'participant_attributes', 'room_config', 'room_config.agents', 'webhook'] as const
const nested = (depth: number, shape: 'array' | 'object') =>
  shape === 'array' ? `${'['.repeat(depth)}1${']'.repeat(depth)}` : `${'{"a":'.repeat(depth)}1${'}'.repeat(depth)}`

function deepProbe(place: (typeof deepPlaces)[number], inner: string): Probe {
  switch (place) {
    case 'top': return postJson('/token', inner)
    case 'roomName': return postJson('/token', `{"roomName":${inner},"participantName":"alice"}`)
    case 'participantName': return postJson('/token', `{"roomName":"room1","participantName":${inner}}`)
    case 'participant_attributes': return postJson('/token', `{"participant_attributes":{"team":${inner}}}`)
    case 'room_config': return postJson('/token', `{"room_config":{"metadata":${inner}}}`)
    case 'room_config.agents': return postJson('/token', `{"room_config":{"agents":[{"agent_name":"a","metadata":${inner}}]}}`)
    case 'webhook': {
      const body = `{"event":"room_started","id":"EV_deep_${crypto.randomUUID()}","room":${inner}}`
      return postWebhook(body, signWebhook(body, credentials))
    }
    default: return postJson('/token', `{"${place}":${inner}}`)
  }
}

// Authorization headers no LiveKit server sends; each is a function of the body, to sign it when useful.
const now = () => Math.floor(Date.now() / 1000)
const sha256Of = (body: string | Bytes) => createHash('sha256').update(body).digest('base64')
const claimsFor = (body: string | Bytes) => ({ iss: credentials.apiKey, nbf: now(), exp: now() + 300, sha256: sha256Of(body) })
const base64urlText = fc.string({ unit: fc.constantFrom(...'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'), maxLength: 40 })

const absurdAuthorization: fc.Arbitrary<(body: string | Bytes) => string> = fc.oneof(
  fc.string({ unit: printable, minLength: 1000, maxLength: 8000 }).map((text) => () => text),
  fc.string({ unit: latin1, minLength: 1, maxLength: 300 }).map((text) => () => text),
  fc.integer({ min: 2, max: 3000 }).map((count) => () => '.'.repeat(count)),
  fc.array(base64urlText, { minLength: 4, maxLength: 50 }).map((parts) => () => parts.join('.')),
  fc.string({ unit: printable, maxLength: 200 }).map((garbage) => () => `Bearer ${garbage}`),
  fc.constantFrom('none', 'None', 'NONE', 'nOnE', '').map((alg) => (body: string | Bytes) => signJwt(claimsFor(body), credentials.apiSecret, { alg, typ: 'JWT' })),
  fc.constantFrom('HS384', 'HS512').map((alg) => (body: string | Bytes) => signJwt(claimsFor(body), credentials.apiSecret, { alg, typ: 'JWT' })),
  fc.constant((body: string | Bytes) => `Bearer ${signWebhook(body, credentials)}`),
  fc.constant((body: string | Bytes) => signWebhook(body, { ...credentials, apiSecret: `${credentials.apiSecret}x` })),
  fc.constant((body: string | Bytes) => signWebhook(concat(body, ' '), credentials)),
  fc.constant((body: string | Bytes) => signWebhook(body, credentials, now() - 3600)),
  fc.constant((body: string | Bytes) => signWebhook(body, credentials) + '.'),
  fc.constant((body: string | Bytes) => signWebhook(body, credentials).split('.').slice(0, 2).join('.')),
)

// Webhook bodies a LiveKit server would never send, but signed as if it had.
const eventName = fc.oneof(
  fc.constantFrom('room_started', 'participant_joined', 'track_published', 'egress_ended', 'agent_job_started'),
  // The names of Object.prototype's members: the app looks event names up in a table.
  fc.constantFrom('__proto__', 'constructor', 'prototype', 'hasOwnProperty', 'toString', 'valueOf', 'isPrototypeOf', '__defineGetter__'),
  fc.string({ maxLength: 20 }),
)
// Well-typed, so that it decodes as a WebhookEvent and reaches the handlers.
const wellTypedEvent = fc.record(
  {
    event: eventName,
    id: fc.uuid().map((id) => `EV_${id}`),
    createdAt: fc.nat().map(String),
    room: fc.record({ sid: fc.string({ maxLength: 10 }), name: fc.string({ maxLength: 10 }) }),
    participant: fc.record({ identity: fc.string({ maxLength: 10 }), name: fc.string({ maxLength: 10 }) }),
  },
  { requiredKeys: ['event', 'id'] },
)
const eventLike = fc.record(
  {
    event: fc.oneof(eventName, fc.jsonValue({ maxDepth: 1 })),
    id: fc.oneof(fc.uuid().map((id) => `EV_${id}`), fc.string({ maxLength: 10 }), fc.jsonValue({ maxDepth: 1 })),
    createdAt: fc.oneof(fc.integer().map(String), fc.string({ maxLength: 10 }), fc.double(), fc.jsonValue({ maxDepth: 1 })),
    room: fc.oneof(fc.record({ sid: fc.string({ maxLength: 10 }), name: fc.string({ maxLength: 10 }) }), fc.jsonValue({ maxDepth: 2 })),
    participant: fc.oneof(fc.record({ identity: fc.string({ maxLength: 10 }), state: fc.oneof(fc.constantFrom('JOINED', 'ACTIVE'), fc.integer()) }), fc.jsonValue({ maxDepth: 2 })),
    track: fc.jsonValue({ maxDepth: 2 }),
    numDropped: fc.oneof(fc.integer(), fc.string({ maxLength: 10 })),
  },
  { requiredKeys: ['event'] },
)
const signedWebhookBody: fc.Arbitrary<string | Bytes> = fc.oneof(
  wellTypedEvent.map((event) => JSON.stringify(event)),
  eventLike.map((event) => JSON.stringify(event)),
  fc.jsonValue().map((value) => JSON.stringify(value) ?? ''),
  pollutingBody,
  surrogateBody,
  fc.string({ maxLength: 200 }),
  fc.uint8Array({ maxLength: 500 }).map(readable),
)

const peakRssMegabytes = async (pid: number) => Number(/^VmHWM:\s+(\d+) kB/m.exec(await Bun.file(`/proc/${pid}/status`).text())?.[1]) / 1024

for (const runtime of runtimeNames) {
  describe(`${runtime}: fuzzing every route`, () => {
    let server: ServerProcess

    beforeAll(async () => {
      server = await startServer(runtime, { LIVEKIT_API_KEY: credentials.apiKey, LIVEKIT_API_SECRET: credentials.apiSecret })
    })

    afterAll(async () => {
      await server?.stop()
    })

    /** After each batch: the process still runs, answers /health, and has printed no stack trace. */
    async function expectStillServing(): Promise<void> {
      expect(server.child.exitCode).toBeNull()
      const health = await send(server.url, { method: 'GET', path: '/health', headers: {} })
      expect(health.status).toBe(200)
      assertNoLeaks(`${runtime} server log`, server.lines.join('\n'), { tokensAllowed: false })
    }

    const check = (probe: Probe) => send(server.url, probe).then((answer) => (expectWellFormed(probe, answer), answer))

    test('never answers a 5xx to random bytes, on any route, with any method and Content-Type', async () => {
      const body = fc.oneof(fc.uint8Array({ maxLength: 2048 }), fc.constant(new Uint8Array(0)), fc.constant(undefined), fc.jsonValue().map((value) => encode(JSON.stringify(value) ?? '')))
      const probe = fc.record({
        method: fc.constantFrom('POST', 'PUT', 'PATCH', 'DELETE', 'GET', 'OPTIONS', 'PROPFIND'),
        path: anyPath,
        headers: contentTypeHeaders,
        body,
      })
      await fc.assert(fc.asyncProperty(probe, async (probe) => void (await check(probe))), { numRuns })
      await expectStillServing()
    })

    test('never answers a 5xx to an empty body, on any route and with any method', async () => {
      const probe = fc.record({ method: fc.constantFrom('POST', 'PUT', 'PATCH', 'DELETE', 'GET', 'OPTIONS'), path: anyPath, headers: contentTypeHeaders })
      await fc.assert(fc.asyncProperty(probe, async (probe) => void (await check({ ...probe, body: probe.method === 'GET' ? undefined : new Uint8Array(0) }))), { numRuns })
      await expectStillServing()
    })

    test('refuses with a 400 a wrong type in any field of the OpenVidu contract', async () => {
      const request = fc
        .record({ roomName: fc.oneof(name, notAString), participantName: fc.oneof(name, notAString) }, { requiredKeys: [] })
        // At least one of its fields, or the request is one of the standard contract.
        .filter((body) => Object.keys(body).length > 0 && (typeof body.roomName !== 'string' || typeof body.participantName !== 'string'))
      await fc.assert(
        fc.asyncProperty(request, async (body) => {
          const answer = await check(postJson('/token', JSON.stringify(body)))
          expect(answer.status).toBe(400)
          expect(JSON.parse(answer.text).errorMessage).toContain('roomName and participantName')
        }),
        { numRuns },
      )
      await expectStillServing()
    })

    test('refuses with a 400 naming the field a wrong type in any field of the standard contract', async () => {
      await fc.assert(
        fc.asyncProperty(validStandardRequest, wrongStandardField, async (valid, { field, value }) => {
          const answer = await check(postJson('/token', JSON.stringify({ ...valid, [field]: value })))
          expect(answer.status).toBe(400)
          expect(JSON.parse(answer.text).errorMessage).toContain(field)
        }),
        { numRuns },
      )
      await expectStillServing()
    })

    test('never answers a 5xx to __proto__, constructor or prototype keys, at the top or nested', async () => {
      await fc.assert(
        fc.asyncProperty(pollutingBody, async (body) => {
          const answer = await check(postJson('/token', body))
          expect([200, 400, 403]).toContain(answer.status)
        }),
        { numRuns, examples: canaryPayloads.map((payload) => [payload]) },
      )
      // Had Object.prototype gained a roomName, an empty request would be taken for the OpenVidu contract.
      const answer = await check(postJson('/token', '{}'))
      expect(answer.status).toBe(200)
      const { participant_token } = JSON.parse(answer.text)
      expect(verifyAccessToken(participant_token, credentials).video?.room).toStartWith('room-')
      await expectStillServing()
    })

    test('never answers a 5xx to lone surrogates, as raw invalid UTF-8 or as JSON escapes', async () => {
      await fc.assert(
        fc.asyncProperty(surrogateBody, async (body) => {
          const answer = await check(postJson('/token', body))
          expect([200, 400]).toContain(answer.status)
          // A token minted from such a name must still be a token LiveKit can read.
          const { token, participant_token } = answer.status === 200 ? JSON.parse(answer.text) : {}
          if (answer.status === 200) verifyAccessToken(token ?? participant_token, credentials)
        }),
        { numRuns },
      )
      await expectStillServing()
    })

    test('answers JSON nested thousands of levels deep at once, without a 5xx or a spike in memory', async () => {
      const baseline = await peakRssMegabytes(server.child.pid)
      const sample = fc.record({ place: fc.constantFrom(...deepPlaces), shape: fc.constantFrom('array' as const, 'object' as const), depth: fc.integer({ min: 1000, max: 100_000 }) })
      await fc.assert(
        fc.asyncProperty(sample, async ({ place, shape, depth }) => {
          await check(deepProbe(place, nested(depth, shape)))
          // Elysia's ValidationError pretty-prints a refused value: a 30 KB body can become a 1 GB string.
          const growth = (await peakRssMegabytes(server.child.pid)) - baseline
          if (growth > 200) throw new Error(`peak RSS grew by ${growth.toFixed(0)} MB`)
        }),
        // Each failing sample can cost seconds: stop at the first, do not shrink.
        { numRuns: 50, endOnFailure: true, examples: [[{ place: 'roomName', shape: 'array', depth: 10_000 }]] },
      )
      await expectStillServing()
    }, 60_000)

    test('refuses with a 401 every webhook whose Authorization header is absurd, and never answers a 5xx on other routes', async () => {
      const sample = fc.record({ body: signedWebhookBody, authorization: absurdAuthorization, path: anyPath })
      await fc.assert(
        fc.asyncProperty(sample, async ({ body, authorization, path }) => {
          const webhook = await check(postWebhook(body, authorization(body)))
          expect(webhook.status).toBe(401)
          await check({ method: 'POST', path, headers: { 'content-type': 'application/json', authorization: authorization(body) }, body })
        }),
        { numRuns },
      )
      await expectStillServing()
    })

    // Measured here: Bun (and its binary) refuses a header section over 16 KiB (431), Deno one over 64 KiB (400), both
    // with an empty body and before the app sees the request. 15 KB reaches the app on both.
    const headerSizeTheAppSees = 15_000
    const refusalOfHugeHeaders = { bun: 431, deno: 400, binary: 431 }[runtime]

    test('answers an Authorization header of 15 KB as the app itself does, on every route', async () => {
      const authorization = 'a'.repeat(headerSizeTheAppSees)
      const expected: [Probe, number, unknown][] = [
        [postJson('/token', '{}', { authorization }), 200, { server_url: 'ws://localhost:7880', participant_token: expect.any(String) }],
        [postJson('/livekit/webhook', '{}', { authorization }), 401, { errorMessage: 'Webhook signature is missing or invalid' }],
        [{ method: 'GET', path: '/health', headers: { authorization } }, 200, { status: 'ok' }],
        [postJson('/nope', '{}', { authorization }), 404, { errorMessage: 'No route for POST /nope' }],
      ]
      for (const [probe, status, body] of expected) {
        const answer = await check(probe)
        expect([probe.path, answer.status, JSON.parse(answer.text)]).toEqual([probe.path, status, body])
      }
      // A webhook signed as LiveKit signs, whose token is padded to 15 KB, is verified and handled.
      const body = JSON.stringify({ event: 'room_started', id: `EV_big_header_${crypto.randomUUID()}`, room: { name: 'room1' } })
      const padded = signJwt({ ...claimsFor(body), padding: 'p'.repeat(Math.floor((headerSizeTheAppSees * 3) / 4) - 200) }, credentials.apiSecret)
      expect(padded.length).toBeWithin(headerSizeTheAppSees - 1000, headerSizeTheAppSees + 100)
      const webhook = await check(postWebhook(body, padded))
      expect([webhook.status, JSON.parse(webhook.text)]).toEqual([200, { received: true }])
      await expectStillServing()
    })

    test(`refuses an Authorization header of 100 KB with ${runtime}'s own ${refusalOfHugeHeaders}, and keeps serving`, async () => {
      for (const path of ['/token', '/livekit/webhook', '/health', '/nope']) {
        const answer = await send(server.url, postJson(path, '{}', { authorization: 'a'.repeat(100_000) }))
        expect([path, answer.status, answer.text]).toEqual([path, refusalOfHugeHeaders, ''])
      }
      await expectStillServing()
    })

    test('never sends a header whose value is the text "undefined"', async () => {
      const probe = fc.record({
        method: fc.constantFrom('OPTIONS', 'GET', 'POST'),
        path: anyPath,
        // A preflight, a bare OPTIONS, or anything between: each CORS header may be there or not.
        headers: fc.record(
          { origin: fc.constant('http://localhost:5080'), 'access-control-request-method': fc.constantFrom('POST', 'GET'), 'access-control-request-headers': fc.constantFrom('content-type', 'content-type, authorization') },
          { requiredKeys: [] },
        ),
      })
      await fc.assert(
        fc.asyncProperty(probe, async (probe) => {
          const answer = await send(server.url, probe)
          for (const [name, value] of answer.headers) {
            if (value === 'undefined') throw new Error(`${probe.method} ${probe.path} answered ${answer.status} with ${name}: undefined`)
          }
        }),
        { numRuns: 50, examples: [[{ method: 'OPTIONS', path: '/token', headers: {} }], [{ method: 'OPTIONS', path: '/', headers: {} }]] },
      )
    })

    test('answers 200 or a 4xx, never a 5xx, to any body signed as LiveKit signs', async () => {
      await fc.assert(
        fc.asyncProperty(signedWebhookBody, async (body) => {
          const answer = await check(postWebhook(body, signWebhook(body, credentials)))
          if (answer.status !== 200 && (answer.status < 400 || answer.status > 499)) throw new Error(`answered ${answer.status}`)
        }),
        { numRuns: numRuns * 2 },
      )
      await expectStillServing()
    })

    test('has printed only JSON log lines, none with a stack trace, after all of the above', () => {
      const notJson = server.lines.filter((line) => {
        try {
          return typeof JSON.parse(line) !== 'object'
        } catch {
          return true
        }
      })
      expect(notJson).toEqual([])
      assertNoLeaks(`${runtime} server log`, server.lines.join('\n'), { tokensAllowed: false })
    })
  })
}

describe('in-process: prototype pollution', () => {
  test('no __proto__, constructor or prototype payload, to /token or a signed webhook, pollutes a prototype', async () => {
    const app = createApp(loadConfig({ LIVEKIT_API_KEY: credentials.apiKey, LIVEKIT_API_SECRET: credentials.apiSecret }))
    const prototypes = [Object.prototype, Array.prototype, Function.prototype, String.prototype, Number.prototype, Boolean.prototype]
    const ownKeys = () => prototypes.map((prototype) => Reflect.ownKeys(prototype).map(String).sort())
    const before = ownKeys()
    const handle = async (probe: Probe) => {
      const response = await app.handle(new Request(`http://localhost${probe.path}`, { method: probe.method, headers: probe.headers, body: probe.body }))
      expectWellFormed(probe, { status: response.status, headers: response.headers, text: await response.text() })
    }
    // The app logs every webhook; here those lines are noise.
    const quiet = [spyOn(console, 'log').mockImplementation(() => {}), spyOn(console, 'error').mockImplementation(() => {})]
    try {
      await fc.assert(
        fc.asyncProperty(pollutingBody, async (body) => {
          await handle(postJson('/token', body))
          await handle(postWebhook(body, signWebhook(body, credentials)))
        }),
        { numRuns: 200, examples: canaryPayloads.map((payload) => [payload]) },
      )
    } finally {
      for (const spy of quiet) spy.mockRestore()
    }
    const canary: Record<string, unknown> = {}
    expect([canary.polluted, canary.roomName, canary.participantName]).toEqual([undefined, undefined, undefined])
    expect(ownKeys()).toEqual(before)
  })
})
