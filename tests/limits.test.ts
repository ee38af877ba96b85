// MAX_BODY_BYTES: bodies over the limit get a JSON 413 on both routes, without the server reading them whole.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from 'bun:test'
import { runtimeNames, startServer, testCredentials, type ServerProcess } from './server'
import { signWebhook, verifyAccessToken, webhookEvent } from './livekit'
import { chunk, rawRequest, type RawAnswer } from './raw-http'

// Real servers, browsers and Redis start here: 30 s a test (bunfig's [test] timeout is not read by Bun 1.4).
setDefaultTimeout(30_000)

const credentials = testCredentials()
const limit = 64 * 1024
const origin = 'http://localhost:5080'

/** JSON padded with trailing whitespace (still the same JSON) to exactly `size` bytes. */
const padded = (json: string, size: number) => json + ' '.repeat(size - json.length)

interface Route {
  path: string
  /** A request that would be accepted, its body `size` bytes long. */
  request(size: number): { headers: Record<string, string>; body: string }
  expectAccepted(answer: RawAnswer): void
}

const routes: Route[] = [
  {
    path: '/token',
    request: (size) => ({
      headers: { 'content-type': 'application/json' },
      body: padded(JSON.stringify({ roomName: 'room1', participantName: 'alice' }), size),
    }),
    expectAccepted: (answer) => {
      expect(answer.status).toBe(200)
      expect(verifyAccessToken(answer.json().token, credentials)).toMatchObject({ sub: 'alice', video: { room: 'room1' } })
    },
  },
  {
    path: '/livekit/webhook',
    request: (size) => {
      const body = padded(JSON.stringify(webhookEvent('room_started')), size)
      return { headers: { 'content-type': 'application/webhook+json', authorization: signWebhook(body, credentials) }, body }
    },
    expectAccepted: (answer) => {
      expect(answer.status).toBe(200)
      expect(answer.json()).toEqual({ received: true })
    },
  },
]

/** The body cut into `size`-byte pieces, each sent as one chunk of a chunked body. */
const chunks = (body: string, size = 8 * 1024) =>
  Array.from({ length: Math.ceil(body.length / size) }, (_, i) => chunk(body.slice(i * size, (i + 1) * size)))

function expectRefusedAsTooLarge(answer: RawAnswer) {
  expect(answer.status).toBe(413)
  expect(answer.headers.get('content-type')).toStartWith('application/json')
  // Without CORS headers a browser would report a CORS failure instead of the 413.
  expect(answer.headers.get('access-control-allow-origin')).toBe('*')
  expect(answer.json()).toEqual({ errorMessage: `Request body must be at most ${limit} bytes` })
}

for (const runtime of runtimeNames) {
  describe(`${runtime}: request bodies and MAX_BODY_BYTES`, () => {
    let server: ServerProcess

    beforeAll(async () => {
      server = await startServer(runtime, {
        LIVEKIT_API_KEY: credentials.apiKey,
        LIVEKIT_API_SECRET: credentials.apiSecret,
        MAX_BODY_BYTES: String(limit),
      })
    })

    afterAll(async () => {
      await server?.stop()
    })

    for (const route of routes) {
      test(`refuses a ${route.path} body whose Content-Length is one byte over the limit with 413, before it is sent`, async () => {
        const { headers, body } = route.request(limit + 1)
        // Only the first kilobyte is ever sent: an answer can only come from the announced length.
        const answer = await rawRequest(
          new URL(route.path, server.url).href,
          { ...headers, origin, 'content-length': String(limit + 1) },
          [body.slice(0, 1024)],
          { timeoutMs: 3000 },
        )
        expectRefusedAsTooLarge(answer)
      })

      test(`refuses a chunked ${route.path} body that grows past the limit with 413, without waiting for its end`, async () => {
        const { headers, body } = route.request(limit + 1)
        // The last chunk is never sent: a server that read the whole body first would never answer.
        const answer = await rawRequest(
          new URL(route.path, server.url).href,
          { ...headers, origin, 'transfer-encoding': 'chunked' },
          chunks(body),
          { delayMs: 5, timeoutMs: 3000 },
        )
        expectRefusedAsTooLarge(answer)
      })

      test(`accepts a ${route.path} body of exactly the limit`, async () => {
        const { headers, body } = route.request(limit)
        const answer = await rawRequest(new URL(route.path, server.url).href, { ...headers, 'content-length': String(limit) }, [body])
        route.expectAccepted(answer)
      })

      test(`accepts a chunked ${route.path} body of exactly the limit`, async () => {
        const { headers, body } = route.request(limit)
        const answer = await rawRequest(
          new URL(route.path, server.url).href,
          { ...headers, 'transfer-encoding': 'chunked' },
          [...chunks(body), chunk('')],
        )
        route.expectAccepted(answer)
      })
    }

    test('keeps answering GET /health after refusing bodies', async () => {
      const answer = await rawRequest(new URL('/health', server.url).href, {}, [], { method: 'GET' })
      expect(answer.status).toBe(200)
      expect(answer.json()).toEqual({ status: 'ok' })
    })
  })
}
