// The exact bounds, each at its edge and one past it, and what must still hold after a refusal:
// run against the server as users start it, on every runtime.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from 'bun:test'
import { createHash } from 'node:crypto'
import { RoomConfiguration } from 'livekit-server-sdk'
import { httpClient, runtimeNames, runUntilExit, serveDuringTests, startServer, testCredentials, waitForLog, type ServerProcess } from './server'
import { signJwt, signWebhook, verifyAccessToken, webhookEvent, withinOneSecond } from './livekit'
import { chunk, open, rawRequest, type RawAnswer } from './raw-http'

// Real servers, browsers and Redis start here: 30 s a test (bunfig's [test] timeout is not read by Bun 1.4).
setDefaultTimeout(30_000)

const credentials = testCredentials()
const livekitEnv = { LIVEKIT_API_KEY: credentials.apiKey, LIVEKIT_API_SECRET: credentials.apiSecret }
const limit = 64 * 1024

/** Text of exactly `bytes` UTF-8 bytes, in three-byte characters (and one shorter at the end): its length in characters is a third of that. */
function textOfBytes(bytes: number): string {
  return '€'.repeat(Math.floor(bytes / 3)) + ['', 'a', 'é'][bytes % 3]
}

/** Four attributes whose keys and values come to exactly `bytes` UTF-8 bytes in all. */
function attributesOfBytes(bytes: number): Record<string, string> {
  const keys = ['名前', 'rôle', 'équipe', 'k']
  const valueBytes = bytes - keys.reduce((sum, key) => sum + Buffer.byteLength(key), 0)
  const share = Math.floor(valueBytes / keys.length)
  return Object.fromEntries(keys.map((key, index) => [key, textOfBytes(index === keys.length - 1 ? valueBytes - share * (keys.length - 1) : share)]))
}

/** Two agents whose metadata comes to exactly `bytes` UTF-8 bytes in all. */
const agentsWithMetadataOfBytes = (bytes: number) => [
  { agent_name: 'first-agent', metadata: textOfBytes(Math.floor(bytes / 2)) },
  { agent_name: 'second-agent', metadata: textOfBytes(bytes - Math.floor(bytes / 2)) },
]

const byteSize = (texts: string[]) => texts.reduce((sum, text) => sum + Buffer.byteLength(text), 0)

// Every field the SDK's RoomConfiguration has, so that a field added to the protocol is tried too.
const roomConfigFields = (RoomConfiguration.fields.list() as unknown as { name: string; jsonName: string }[]).filter((field) => field.name !== 'agents')

/** The first of a few values, one of each JSON kind, that the field takes and keeps (a default would not be written back). */
function valueFor(field: { name: string; jsonName: string }): unknown {
  const candidates = ['x', 1, true, {}, { key: 'x' }, ['x'], [1], [{}]]
  const kept = (value: unknown) => {
    try {
      return Object.keys(RoomConfiguration.fromJson({ [field.name]: value } as never).toJson() as object).join() === field.jsonName
    } catch {
      return false
    }
  }
  const value = candidates.find(kept)
  if (value === undefined) throw new Error(`no value found for room_config.${field.name}: add one of its kind to the candidates`)
  return value
}

/** The status of the first answer that is not a 200, sending `send` again until one is (at most 5 s). */
async function untilRefusedAsBusy(send: () => Promise<{ status: number }>): Promise<number> {
  const deadline = Date.now() + 5000
  for (;;) {
    const { status } = await send()
    if (status !== 200 || Date.now() > deadline) return status
    await Bun.sleep(20)
  }
}

for (const runtime of runtimeNames) {
  describe(`${runtime}: TOKEN_TTL`, () => {
    const lifetimes: [string, number][] = [
      ['1d', 86_400],
      ['2h', 7_200],
      ['600', 600],
      ['366d', 366 * 86_400],
      ['31622400', 366 * 86_400],
    ]
    for (const [ttl, seconds] of lifetimes) {
      test(`TOKEN_TTL=${ttl} gives tokens valid for exactly ${seconds.toLocaleString('en')} s`, async () => {
        const server = await startServer(runtime, { ...livekitEnv, TOKEN_TTL: ttl })
        try {
          const answer = await httpClient(server.url).postJson('/token', { room_name: 'r', participant_identity: 'p' })
          expect(answer.status).toBe(200)
          const claims = verifyAccessToken(answer.json().participant_token, credentials)
          expect(claims.exp - claims.nbf).toBe(seconds)
        } finally {
          await server.stop()
        }
      })
    }

    for (const ttl of ['367d', '31622401']) {
      test(`TOKEN_TTL=${ttl}, past 366 days, is a one-line configuration error, exit code 1`, async () => {
        const { code, output } = await runUntilExit(runtime, { ...livekitEnv, TOKEN_TTL: ttl })
        expect(code).toBe(1)
        expect(output.trim().split('\n')).toEqual([`Configuration error: TOKEN_TTL must be a positive duration such as 600, 10m or 6h (at most 366d), got "${ttl}"`])
      })
    }
  })

  describe(`${runtime}: POST /token, the standard contract's room_config`, () => {
    const running = serveDuringTests(runtime, livekitEnv)

    test('the SDK gives the fields to try, each with a value it takes', () => {
      expect(roomConfigFields.map((field) => field.name)).toEqual(expect.arrayContaining(['egress', 'max_participants', 'metadata', 'tags']))
      for (const field of roomConfigFields) expect(valueFor(field)).toBeDefined()
    })

    for (const field of roomConfigFields) {
      test(`answers 403 to room_config.${field.name}, beside an agent dispatch`, async () => {
        const room_config = { agents: [{ agent_name: 'helper' }], [field.name]: valueFor(field) }
        const answer = await running.http.postJson('/token', { room_name: 'r', room_config })
        expect([answer.status, answer.json()]).toEqual([403, { errorMessage: `room_config may only request agents, not ${field.name}` }])
      })
    }
  })

  describe(`${runtime}: POST /token, byte limits counted in UTF-8`, () => {
    const running = serveDuringTests(runtime, livekitEnv)
    const claimsOf = (answer: { json(): any }) => verifyAccessToken(answer.json().participant_token, credentials)

    test('the requests below are the sizes they say, and mostly characters of three bytes', () => {
      const attributes = attributesOfBytes(limit + 1)
      expect(byteSize(Object.entries(attributes).flat())).toBe(limit + 1)
      expect(Object.entries(attributes).flat().join('').length).toBeLessThan(limit / 2)
      expect(byteSize([textOfBytes(limit)])).toBe(limit)
      expect(byteSize(agentsWithMetadataOfBytes(limit + 1).map((agent) => agent.metadata))).toBe(limit + 1)
    })

    test('takes participant_attributes of exactly 65,536 bytes, keys and values, into the token', async () => {
      const attributes = attributesOfBytes(limit)
      const answer = await running.http.postJson('/token', { participant_identity: 'p', participant_attributes: attributes })
      expect(answer.status).toBe(200)
      expect(claimsOf(answer).attributes).toEqual(attributes)
    })

    test('refuses participant_attributes of 65,537 bytes with 400', async () => {
      const answer = await running.http.postJson('/token', { participant_identity: 'p', participant_attributes: attributesOfBytes(limit + 1) })
      expect([answer.status, answer.json()]).toEqual([400, { errorMessage: 'participant_attributes must be at most 65536 bytes in all' }])
    })

    test('takes participant_metadata of exactly 65,536 bytes into the token', async () => {
      const metadata = textOfBytes(limit)
      const answer = await running.http.postJson('/token', { participant_identity: 'p', participant_metadata: metadata })
      expect(answer.status).toBe(200)
      expect(claimsOf(answer).metadata).toBe(metadata)
    })

    test('refuses participant_metadata of 65,537 bytes with 400', async () => {
      const answer = await running.http.postJson('/token', { participant_identity: 'p', participant_metadata: textOfBytes(limit + 1) })
      expect([answer.status, answer.json()]).toEqual([400, { errorMessage: 'participant_metadata must be at most 65536 bytes' }])
    })

    test('takes agent metadata of exactly 65,536 bytes in all, over two agents, into the token', async () => {
      const agents = agentsWithMetadataOfBytes(limit)
      const answer = await running.http.postJson('/token', { participant_identity: 'p', room_config: { agents } })
      expect(answer.status).toBe(200)
      const dispatched = (claimsOf(answer).roomConfig as { agents: { agentName: string; metadata: string }[] }).agents
      expect(dispatched.map(({ agentName, metadata }) => ({ agent_name: agentName, metadata }))).toEqual(agents)
    })

    test('refuses agent metadata of 65,537 bytes in all, over two agents, with 400', async () => {
      const answer = await running.http.postJson('/token', { participant_identity: 'p', room_config: { agents: agentsWithMetadataOfBytes(limit + 1) } })
      expect([answer.status, answer.json()]).toEqual([400, { errorMessage: 'room_config agent metadata and attributes must be at most 65536 bytes in all' }])
    })

    test('takes a request with all three at their limits at once (the body is read whole)', async () => {
      const answer = await running.http.postJson('/token', {
        participant_identity: 'p',
        participant_metadata: textOfBytes(limit),
        participant_attributes: attributesOfBytes(limit),
        room_config: { agents: agentsWithMetadataOfBytes(limit) },
      })
      expect(answer.status).toBe(200)
    })
  })

  describe(`${runtime}: POST /token, agent metadata counted with the policy's own agents`, () => {
    // The server always dispatches an agent told 40 KiB; a client may add 24 KiB more, 64 KiB in all.
    const serverMetadata = textOfBytes(40 * 1024)
    const policy = {
      defaultRole: 'guest',
      roles: { guest: { rooms: ['*'], agents: ['*'] } },
      roomConfig: { agents: [{ agentName: 'notetaker', metadata: serverMetadata }] },
    }
    const running = serveDuringTests(runtime, { ...livekitEnv, TOKEN_POLICY: JSON.stringify(policy) })
    const asking = (bytes: number) => ({
      room_name: 'r',
      participant_identity: 'p',
      room_config: { agents: [{ agent_name: 'helper', metadata: textOfBytes(bytes) }] },
    })
    const refusal = { errorMessage: "room_config agent metadata and attributes must be at most 65536 bytes in all, with the server's" }

    test("takes 24 KiB more beside the server's 40 KiB (65,536 bytes in all), after the server's agent", async () => {
      const answer = await running.http.postJson('/token', asking(limit - 40 * 1024))
      expect(answer.status).toBe(200)
      const { roomConfig } = verifyAccessToken(answer.json().participant_token, credentials)
      const dispatched = (roomConfig as { agents: { agentName: string; metadata: string }[] }).agents
      const sizes = dispatched.map(({ agentName, metadata }) => [agentName, Buffer.byteLength(metadata)])
      expect(sizes).toEqual([['notetaker', 40 * 1024], ['helper', limit - 40 * 1024]])
      expect(dispatched[0]!.metadata).toBe(serverMetadata)
    })

    test("refuses one byte more with 403, naming the server's share", async () => {
      const answer = await running.http.postJson('/token', asking(limit - 40 * 1024 + 1))
      expect([answer.status, answer.json()]).toEqual([403, refusal])
    })

    test("refuses 40 KiB asked beside the server's 40 KiB with 403, though each is under 64 KiB alone", async () => {
      const answer = await running.http.postJson('/token', asking(40 * 1024))
      expect([answer.status, answer.json()]).toEqual([403, refusal])
    })
  })

  describe(`${runtime}: POST /livekit/webhook, the clock edges (10 s of tolerance, as the SDK's verifier draws them)`, () => {
    const running = serveDuringTests(runtime, livekitEnv)
    const body = JSON.stringify(webhookEvent('room_started'))
    const edges: [string, (now: number) => { nbf: number; exp: number }, number][] = [
      ['refuses with 401 a token whose exp is 10 s ago', (now) => ({ nbf: now - 300, exp: now - 10 }), 401],
      ['accepts a token whose exp is 9 s ago', (now) => ({ nbf: now - 300, exp: now - 9 }), 200],
      ['accepts a token whose nbf is 10 s ahead', (now) => ({ nbf: now + 10, exp: now + 300 }), 200],
      ['refuses with 401 a token whose nbf is 11 s ahead', (now) => ({ nbf: now + 11, exp: now + 300 }), 401],
    ]
    for (const [what, times, status] of edges) {
      test(what, async () => {
        // Each event once (a second delivery would be a duplicate): a fresh id per attempt.
        const answer = await withinOneSecond((now) => {
          const event = JSON.stringify({ ...JSON.parse(body), id: `EV_${crypto.randomUUID()}` })
          const authorization = signJwt({ iss: credentials.apiKey, ...times(now), sha256: createHash('sha256').update(event).digest('base64') }, credentials.apiSecret)
          return running.http.request('/livekit/webhook', { method: 'POST', headers: { 'content-type': 'application/webhook+json', authorization }, body: event })
        })
        expect(answer.status).toBe(status)
      }, 15_000)
    }
  })
}

// 5 s of idling, on every runtime at once, so that the wait is paid once.
describe('POST /token with TOKEN_RATE_LIMIT=60: a full allowance is the cap', () => {
  const servers = new Map<string, ServerProcess>()
  const statuses = new Map<string, number[]>()

  beforeAll(async () => {
    for (const runtime of runtimeNames) servers.set(runtime, await startServer(runtime, { ...livekitEnv, TOKEN_RATE_LIMIT: '60' }))
    for (const [runtime, server] of servers) statuses.set(runtime, [(await httpClient(server.url).postJson('/token', { room_name: 'r' })).status])
    // Long enough for 4 more than the allowance to drip in (one a second), were it not capped at 60:
    // 64 then, and all 61 below would pass.
    await Bun.sleep(5_000)
    for (const [runtime, server] of servers) {
      const http = httpClient(server.url)
      // At once, so that the second or so they take refills less than one request.
      const answers = await Promise.all(Array.from({ length: 61 }, () => http.postJson('/token', { room_name: 'r' })))
      statuses.get(runtime)!.push(...answers.map((answer) => answer.status))
    }
  }, 60_000)

  afterAll(async () => {
    await Promise.all([...servers.values()].map((server) => server.stop()))
  })

  for (const runtime of runtimeNames) {
    test(`${runtime}: after one request and 5 s idle, allows exactly 60 of 61 more sent at once, and answers the other 429`, () => {
      const [first, ...rest] = statuses.get(runtime)!
      expect(first).toBe(200)
      expect(rest.filter((status) => status === 200)).toHaveLength(60)
      expect(rest.filter((status) => status === 429)).toHaveLength(1)
    })
  }
})

for (const runtime of runtimeNames) {
  // One chunked upload (counted at the route's limit, 256 KiB) fills each route's share: any byte
  // leaked by a refused or aborted upload turns the next ordinary request into a 503.
  describe(`${runtime}: request bodies being read, with MAX_PENDING_BODY_BYTES at one chunked upload`, () => {
    const bodyLimit = 256 * 1024
    const running = serveDuringTests(runtime, { ...livekitEnv, MAX_PENDING_BODY_BYTES: String(bodyLimit), MAX_BODY_BYTES: String(bodyLimit) })
    // Over raw sockets: Deno sends a 503's status and headers, then cuts its body short.
    const tokenRequest = () => {
      const body = JSON.stringify({ room_name: 'r', participant_identity: 'p' })
      return rawRequest(new URL('/token', running.server.url).href, { 'content-type': 'application/json', 'content-length': String(body.length) }, [body])
    }
    const webhook = () => {
      const body = JSON.stringify(webhookEvent('room_started'))
      const headers = { 'content-type': 'application/webhook+json', 'content-length': String(body.length), authorization: signWebhook(body, credentials) }
      return rawRequest(new URL('/livekit/webhook', running.server.url).href, headers, [body])
    }
    const routes = [
      ['/token', { 'content-type': 'application/json' }, tokenRequest],
      ['/livekit/webhook', { 'content-type': 'application/webhook+json', authorization: signWebhook('{}', credentials) }, webhook],
    ] as const
    const abortedUploads = () => running.server.logs().filter((entry) => entry.msg === 'request aborted by client').length

    for (const [path, headers, ordinary] of routes) {
      test(`${path}: five chunked uploads over the limit answer 413, and an ordinary request then gets 200`, async () => {
        for (let i = 0; i < 5; i++) {
          const pieces = [chunk('{"x":"'), chunk('a'.repeat(100_000)), chunk('a'.repeat(100_000)), chunk('a'.repeat(100_000)), chunk('"}'), chunk('')]
          const answer = await rawRequest(new URL(path, running.server.url).href, { ...headers, 'transfer-encoding': 'chunked' }, pieces)
          expect(answer.status).toBe(413)
        }
        expect((await ordinary()).status).toBe(200)
      })

      for (const framing of ['chunked', 'with a declared length'] as const) {
        test(`${path}: three uploads ${framing}, each aborted while it holds the whole share, and after each an ordinary request gets 200`, async () => {
          for (let i = 0; i < 3; i++) {
            const socket = await open(new URL(running.server.url))
            socket.on('error', () => {})
            const before = abortedUploads()
            const framingHeader = framing === 'chunked' ? 'transfer-encoding: chunked' : `content-length: ${bodyLimit}`
            const head = Object.entries(headers).map(([name, value]) => `${name}: ${value}\r\n`).join('')
            socket.write(`POST ${path} HTTP/1.1\r\nhost: x\r\n${head}${framingHeader}\r\n\r\n`)
            socket.write(framing === 'chunked' ? chunk('{"x":"aaaa') : '{"x":"aaaa')
            try {
              // The share is held: an ordinary request is turned away while this upload is being read.
              expect(await untilRefusedAsBusy(ordinary)).toBe(503)
            } finally {
              socket.destroy()
            }
            await waitForLog(running.server, () => abortedUploads() > before)
            expect((await ordinary()).status).toBe(200)
          }
        }, 30_000)
      }
    }
  })

  describe(`${runtime}: SIGTERM while a webhook body is still arriving`, () => {
    let server: ServerProcess
    const event = webhookEvent('room_finished')
    const body = JSON.stringify(event).padEnd(2000, ' ')
    let answer: RawAnswer | Error
    let exitCode: number | 'still running'

    beforeAll(async () => {
      // Room for one 2,000-byte body and not for a 1,500-byte one beside it: the probe is turned away once the body is being read.
      server = await startServer(runtime, { ...livekitEnv, MAX_PENDING_BODY_BYTES: '3000' })
      const probe = () => {
        const probeBody = JSON.stringify(webhookEvent('room_started')).padEnd(1500, ' ')
        return rawRequest(new URL('/livekit/webhook', server.url).href, { 'content-length': '1500', authorization: signWebhook(probeBody, credentials) }, [probeBody])
      }
      const headers = { 'content-type': 'application/webhook+json', 'content-length': String(body.length), authorization: signWebhook(body, credentials) }
      answer = await rawRequest(
        new URL('/livekit/webhook', server.url).href,
        headers,
        [
          body.slice(0, 1000),
          async () => {
            if ((await untilRefusedAsBusy(probe)) !== 503) throw new Error('the webhook body was never being read')
            server.child.kill('SIGTERM')
            await waitForLog(server, (entry) => entry.msg === 'SIGTERM received, finishing requests in flight')
            await Bun.sleep(3000)
          },
          body.slice(1000),
        ],
        { timeoutMs: 10_000 },
      ).catch((error: Error) => error)
      exitCode = await Promise.race([server.exited, Bun.sleep(5000).then(() => 'still running' as const)])
    }, 30_000)

    afterAll(() => {
      if (exitCode !== 0) server?.child.kill('SIGKILL')
    })

    test('finishes the body that ends 3 s after the signal with 200, and handles the event', () => {
      expect(answer).not.toBeInstanceOf(Error)
      expect((answer as RawAnswer).status).toBe(200)
      expect(server.logs().filter((entry) => entry.id === event.id && entry.msg === 'webhook')).toHaveLength(1)
    })

    test('then exits with code 0', () => {
      expect(exitCode).toBe(0)
    })
  })
}
