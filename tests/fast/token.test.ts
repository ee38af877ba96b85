// POST /token in this process: both contracts, every refusal and bound, the body checks before
// them, rate limits and callers' addresses. Tokens are checked with node:crypto (../livekit.ts).
import { describe, expect, test } from 'bun:test'
import { testCredentials } from '../server'
import { verifyAccessToken } from '../livekit'
import { appWith, streamOf } from './app'

const credentials = testCredentials()
const livekitEnv = { LIVEKIT_API_KEY: credentials.apiKey, LIVEKIT_API_SECRET: credentials.apiSecret }
const livekitUrl = 'wss://livekit.example.test'
const fullGrant = { roomJoin: true, canPublish: true, canSubscribe: true, canPublishData: true }
const json = { 'content-type': 'application/json' }
const claimsOf = (token: string) => verifyAccessToken(token, credentials)
const headerOf = (token: string) => JSON.parse(Buffer.from(token.split('.')[0]!, 'base64url').toString())

/** Text of exactly `bytes` UTF-8 bytes, mostly in three-byte characters. */
const textOfBytes = (bytes: number) => '€'.repeat(Math.floor(bytes / 3)) + ['', 'a', 'é'][bytes % 3]

describe('POST /token (OpenVidu contract)', () => {
  const app = appWith({ ...livekitEnv, TOKEN_TTL: '10m' })

  test('answers a token that joins the named room as the named participant, for TOKEN_TTL', async () => {
    const answer = await app.postJson('/token', { roomName: 'room1', participantName: 'alice' })
    expect(answer.status).toBe(200)
    expect(answer.headers.get('content-type')).toStartWith('application/json')
    expect(Object.keys(answer.json())).toEqual(['token'])
    const { token } = answer.json()
    expect(headerOf(token)).toEqual({ alg: 'HS256', typ: 'JWT' })
    const claims = claimsOf(token)
    expect(claims).toMatchObject({ iss: credentials.apiKey, sub: 'alice', name: 'alice' })
    expect(claims.video).toEqual({ ...fullGrant, room: 'room1' })
    expect(claims.exp - claims.nbf).toBe(600)
    expect(Math.abs(claims.nbf - Date.now() / 1000)).toBeLessThan(5)
    expect(claims.metadata).toBeUndefined()
    expect(claims.attributes).toBeUndefined()
    expect(claims.roomConfig).toBeUndefined()
  })

  test('lasts 6 hours when TOKEN_TTL is unset', async () => {
    const answer = await appWith(livekitEnv).postJson('/token', { roomName: 'room1', participantName: 'alice' })
    const claims = claimsOf(answer.json().token)
    expect(claims.exp - claims.nbf).toBe(6 * 3600)
  })

  test('signs with the development credentials when none are set', async () => {
    const answer = await appWith({}).postJson('/token', { roomName: 'room1', participantName: 'alice' })
    expect(verifyAccessToken(answer.json().token, { apiKey: 'devkey', apiSecret: 'secret' }).sub).toBe('alice')
  })

  test('keeps unicode names, and names of exactly 256 characters, intact', async () => {
    for (const [roomName, participantName] of [
      ['Sala 会議室 🎥', 'Zoë 山田 👩🏽‍💻'],
      ['r'.repeat(256), 'p'.repeat(256)],
    ]) {
      const answer = await app.postJson('/token', { roomName, participantName })
      expect(answer.status).toBe(200)
      const claims = claimsOf(answer.json().token)
      expect([claims.sub, claims.name, claims.video?.room]).toEqual([participantName, participantName, roomName])
    }
  })

  test('ignores fields it does not know, and standard fields beside its own', async () => {
    const answer = await app.postJson('/token', {
      roomName: 'r1',
      participantName: 'alice',
      room_name: 'r2',
      video: { roomAdmin: true },
    })
    expect(answer.status).toBe(200)
    expect(claimsOf(answer.json().token).video).toEqual({ ...fullGrant, room: 'r1' })
  })

  const required = 'roomName and participantName are required'
  const tooLong = 'roomName and participantName must be at most 256 characters'
  const badBodies: [string, object, string][] = [
    ['roomName is missing', { participantName: 'alice' }, required],
    ['participantName is missing', { roomName: 'room1' }, required],
    ['participantName is empty', { roomName: 'room1', participantName: '' }, required],
    ['roomName is empty', { roomName: '', participantName: 'alice' }, required],
    ['roomName is a number', { roomName: 42, participantName: 'alice' }, required],
    ['participantName is null', { roomName: 'room1', participantName: null }, required],
    ['roomName is null beside standard fields', { roomName: null, room_name: 'r' }, required],
    ['participantName is an object', { roomName: 'room1', participantName: { name: 'alice' } }, required],
    ['roomName is 257 characters long', { roomName: 'r'.repeat(257), participantName: 'alice' }, tooLong],
    ['participantName is 257 characters long', { roomName: 'room1', participantName: 'p'.repeat(257) }, tooLong],
    [
      'roomName is 256 characters and participantName empty',
      { roomName: 'r'.repeat(256), participantName: '' },
      required,
    ],
    [
      'participantName is 257 characters and roomName a number',
      { roomName: 1, participantName: 'p'.repeat(257) },
      tooLong,
    ],
  ]
  for (const [what, body, message] of badBodies) {
    test(`refuses a request whose ${what} with 400 and "${message}"`, async () => {
      const answer = await app.postJson('/token', body)
      expect([answer.status, answer.json()]).toEqual([400, { errorMessage: message }])
    })
  }
})

describe('POST /token (LiveKit standard contract)', () => {
  const app = appWith({ ...livekitEnv, LIVEKIT_URL: livekitUrl, TOKEN_TTL: '10m' })

  test('answers server_url and a token carrying every field asked for', async () => {
    const answer = await app.postJson('/token', {
      room_name: 'standup',
      participant_identity: 'user-42',
      participant_name: 'Zoë 山田',
      participant_metadata: '{"role":"host"}',
      participant_attributes: { team: 'blue', émoji: '🎥' },
      room_config: { agents: [{ agent_name: 'transcriber', metadata: '{"language":"fr"}' }] },
    })
    expect(answer.status).toBe(200)
    expect(Object.keys(answer.json()).sort()).toEqual(['participant_token', 'server_url'])
    expect(answer.json().server_url).toBe(livekitUrl)
    const claims = claimsOf(answer.json().participant_token)
    expect(claims).toMatchObject({
      iss: credentials.apiKey,
      sub: 'user-42',
      name: 'Zoë 山田',
      metadata: '{"role":"host"}',
    })
    expect(claims.attributes).toEqual({ team: 'blue', émoji: '🎥' })
    expect(claims.video).toEqual({ ...fullGrant, room: 'standup' })
    expect(claims.roomConfig?.agents).toEqual([
      expect.objectContaining({ agentName: 'transcriber', metadata: '{"language":"fr"}' }),
    ])
    expect(claims.exp - claims.nbf).toBe(600)
  })

  test('answers the default LIVEKIT_URL, ws://localhost:7880, when it is unset', async () => {
    const answer = await appWith(livekitEnv).postJson('/token', {})
    expect(answer.json().server_url).toBe('ws://localhost:7880')
  })

  test('gives a fresh identity and room each time nothing is asked for', async () => {
    const [first, second] = await Promise.all([app.postJson('/token', {}), app.postJson('/token', {})])
    const [a, b] = [first!, second!].map((answer) => claimsOf(answer.json().participant_token))
    for (const claims of [a!, b!]) {
      expect(claims.sub).toMatch(/^participant-[0-9a-f]{12}$/)
      expect(claims.video?.room).toMatch(/^room-[0-9a-f]{12}$/)
      expect(claims.video).toMatchObject(fullGrant)
      expect([claims.name, claims.metadata, claims.attributes, claims.roomConfig]).toEqual([
        undefined,
        undefined,
        undefined,
        undefined,
      ])
    }
    expect(a!.sub).not.toBe(b!.sub)
    expect(a!.video?.room).not.toBe(b!.video?.room)
  })

  test('takes empty strings and an empty attribute map for fields not given', async () => {
    const body = {
      room_name: '',
      participant_identity: '',
      participant_name: '',
      participant_metadata: '',
      participant_attributes: {},
    }
    const claims = claimsOf((await app.postJson('/token', body)).json().participant_token)
    expect(claims.sub).toMatch(/^participant-[0-9a-f]{12}$/)
    expect(claims.video?.room).toMatch(/^room-[0-9a-f]{12}$/)
    expect([claims.name, claims.metadata, claims.attributes]).toEqual([undefined, undefined, undefined])
  })

  test('accepts room_config in camelCase too, and an agent with no metadata', async () => {
    const answer = await app.postJson('/token', {
      room_config: { agents: [{ agentName: 'a1', metadata: 'm' }, { agent_name: 'a2' }] },
    })
    expect(claimsOf(answer.json().participant_token).roomConfig?.agents).toEqual([
      { agentName: 'a1', metadata: 'm' },
      // No field at its default goes into the token.
      { agentName: 'a2' },
    ])
  })

  test('never widens the grant, whatever the request adds', async () => {
    const answer = await app.postJson('/token', {
      room_name: 'r1',
      video: { roomAdmin: true, roomRecord: true, hidden: true, room: 'other' },
      roomAdmin: true,
      can_publish_sources: ['camera'],
      kind: 'egress',
    })
    expect(answer.status).toBe(200)
    const claims = claimsOf(answer.json().participant_token)
    expect(claims.video).toEqual({ ...fullGrant, room: 'r1' })
    expect(claims.kind).toBeUndefined()
  })

  const refusals: [string, unknown, number, string][] = [
    [
      'a room_name over 256 characters',
      { room_name: 'r'.repeat(257) },
      400,
      'room_name must be a string of at most 256 characters',
    ],
    [
      'a participant_identity over 256 characters',
      { participant_identity: 'i'.repeat(257) },
      400,
      'participant_identity must be a string of at most 256 characters',
    ],
    [
      'a participant_name that is a number',
      { participant_name: 7 },
      400,
      'participant_name must be a string of at most 256 characters',
    ],
    [
      'participant_metadata that is an object',
      { participant_metadata: { role: 'host' } },
      400,
      'participant_metadata must be a string',
    ],
    [
      'more than 64 attributes',
      { participant_attributes: Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`k${i}`, 'v'])) },
      400,
      'participant_attributes must be an object of at most 64 string values',
    ],
    [
      'an attribute value that is not a string',
      { participant_attributes: { a: 1 } },
      400,
      'participant_attributes values must be strings',
    ],
    [
      'participant_attributes that is an array',
      { participant_attributes: ['a'] },
      400,
      'participant_attributes must be an object of at most 64 string values',
    ],
    ['room_config that is a string', { room_config: 'agents' }, 400, 'room_config must be a RoomConfiguration object'],
    ['room_config that is null', { room_config: null }, 400, 'room_config must be a RoomConfiguration object'],
    [
      'room_config with an unknown field',
      { room_config: { bogus: true } },
      400,
      'room_config.bogus is not a RoomConfiguration field',
    ],
    [
      'room_config whose agents is not a list',
      { room_config: { agents: 'a' } },
      400,
      'room_config.agents must be a list of agent dispatches',
    ],
    [
      'room_config asking for recording',
      { room_config: { egress: { room: { room_name: 'r' } } } },
      403,
      'room_config may only request agents, not egress',
    ],
    [
      'room_config changing room limits beside agents',
      { room_config: { agents: [{ agent_name: 'a' }], max_participants: 1000, empty_timeout: 5 } },
      403,
      'room_config may only request agents, not max_participants, empty_timeout',
    ],
    [
      "an agent's restart policy",
      { room_config: { agents: [{ agent_name: 'a', restart_policy: 'JRP_NEVER' }] } },
      403,
      "room_config.agents may not set restart_policy: it is the server's call",
    ],
  ]
  for (const [what, body, status, message] of refusals) {
    test(`refuses ${what} with ${status} and "${message}"`, async () => {
      const answer = await app.postJson('/token', body)
      expect(answer.status).toBe(status)
      // The RoomConfiguration parser's own words follow the colon.
      if (message.endsWith(': ')) expect(answer.json().errorMessage).toStartWith(message)
      else expect(answer.json()).toEqual({ errorMessage: message })
    })
  }
})

describe('POST /token, each bound at its edge and one past it (in UTF-8 bytes)', () => {
  const app = appWith(livekitEnv)
  const limit = 64 * 1024
  /** The status, and the errorMessage when refused. */
  const ask = async (body: object) => {
    const answer = await app.postJson('/token', body)
    return answer.status === 200
      ? [200, answer.json().participant_token as string]
      : [answer.status, answer.json().errorMessage]
  }
  const attributesOfBytes = (bytes: number) => ({ k: textOfBytes(bytes - 3), é: '' })
  const agents = (count: number, extra: object = {}) =>
    Array.from({ length: count }, (_, i) => ({ agent_name: `a${i}`, ...extra }))

  test('room_name, participant_identity and participant_name: 256 characters, not 257', async () => {
    const names = { participant_identity: 'i'.repeat(256), participant_name: 'n'.repeat(256) }
    const at = { room_name: '€'.repeat(256), ...names }
    const [status, token] = await ask(at)
    expect(status).toBe(200)
    expect(claimsOf(token).video?.room).toBe('€'.repeat(256))
    for (const field of Object.keys(at)) {
      expect(await ask({ ...at, [field]: 'x'.repeat(257) })).toEqual([
        400,
        `${field} must be a string of at most 256 characters`,
      ])
    }
  })

  test('participant_metadata: 64 KiB, not a byte more', async () => {
    const [status, token] = await ask({ participant_metadata: textOfBytes(limit) })
    expect(status).toBe(200)
    expect(claimsOf(token).metadata).toBe(textOfBytes(limit))
    expect(await ask({ participant_metadata: textOfBytes(limit + 1) })).toEqual([
      400,
      'participant_metadata must be at most 65536 bytes',
    ])
  })

  test('participant_attributes: 64 KiB of keys and values in all, not a byte more; 64 of them, not 65', async () => {
    expect((await ask({ participant_attributes: attributesOfBytes(limit) }))[0]).toBe(200)
    const refused = [400, 'participant_attributes must be at most 65536 bytes in all']
    expect(await ask({ participant_attributes: attributesOfBytes(limit + 1) })).toEqual(refused)
    const many = (count: number) => Object.fromEntries(Array.from({ length: count }, (_, i) => [`k${i}`, 'v']))
    const [status, token] = await ask({ participant_attributes: many(64) })
    expect(status).toBe(200)
    expect(Object.keys(claimsOf(token).attributes!)).toHaveLength(64)
    expect((await ask({ participant_attributes: many(65) }))[0]).toBe(400)
  })

  test('room_config agents: 8, not 9; names of 256 characters, not 257', async () => {
    const [status, token] = await ask({ room_config: { agents: agents(8) } })
    expect(status).toBe(200)
    expect(claimsOf(token).roomConfig?.agents).toHaveLength(8)
    expect(await ask({ room_config: { agents: agents(9) } })).toEqual([400, 'room_config may request at most 8 agents'])
    expect((await ask({ room_config: { agents: [{ agent_name: 'a'.repeat(256) }] } }))[0]).toBe(200)
    const tooLong = [400, 'room_config agent names must be plain text of at most 256 characters']
    expect(await ask({ room_config: { agents: [{ agent_name: 'a'.repeat(257) }] } })).toEqual(tooLong)
  })

  test("room_config agents' metadata: 64 KiB in all, not a byte more", async () => {
    const split = (bytes: number) => [
      { agent_name: 'a', metadata: textOfBytes(Math.floor(bytes / 2)) },
      { agent_name: 'b', metadata: textOfBytes(bytes - Math.floor(bytes / 2)) },
    ]
    expect((await ask({ room_config: { agents: split(limit) } }))[0]).toBe(200)
    const refused = [400, 'room_config agent metadata and attributes must be at most 65536 bytes in all']
    expect(await ask({ room_config: { agents: split(limit + 1) } })).toEqual(refused)
  })
})

describe('POST /token, the body before its fields', () => {
  const app = appWith({ ...livekitEnv, MAX_BODY_BYTES: '2000' })
  const post = (body: string | ReadableStream, headers: Record<string, string> = json) =>
    app.request('/token', { method: 'POST', headers, body })
  const openVidu = '{"roomName":"r","participantName":"p"}'

  const contentTypes: [string, number][] = [
    ['application/json', 200],
    ['application/json; charset=utf-8', 200],
    ['Application/JSON', 200],
    ['application/vnd.api+json', 200],
    ['application/jsonx', 400],
    ['text/plain', 400],
    ['application/x-www-form-urlencoded', 400],
    ['', 400],
  ]
  for (const [contentType, status] of contentTypes) {
    test(`answers ${status} to Content-Type "${contentType}"`, async () => {
      const answer = await post(openVidu, contentType ? { 'content-type': contentType } : {})
      expect(answer.status).toBe(status)
      if (status === 400) expect(answer.json()).toEqual({ errorMessage: 'Content-Type must be application/json' })
    })
  }

  const notObjects: [string, string, string][] = [
    ['text that is not JSON', '{"roomName":', 'Request body must be valid JSON'],
    ['an empty body', '', 'Request body must be valid JSON'],
    ['a JSON array', '[{"roomName":"r","participantName":"p"}]', 'Request body must be a JSON object'],
    ['JSON null', 'null', 'Request body must be a JSON object'],
    ['a JSON string', '"room"', 'Request body must be a JSON object'],
  ]
  for (const [what, body, message] of notObjects) {
    test(`refuses ${what} with 400 and "${message}"`, async () => {
      const answer = await post(body)
      expect([answer.status, answer.json()]).toEqual([400, { errorMessage: message }])
    })
  }

  /** An OpenVidu request with an extra field holding arrays nested so that the body is `levels` deep. */
  const nested = (levels: number) =>
    `{"roomName":"r","participantName":"p","extra":${'['.repeat(levels - 1)}${']'.repeat(levels - 1)}}`
  /** An OpenVidu request of exactly `count` JSON values, as the server counts them (containers and commas). */
  const values = (count: number) =>
    `{"roomName":"r","participantName":"p","extra":[${Array(count - 3)
      .fill(0)
      .join(',')}]}`

  test('accepts a body nested 32 levels deep, and refuses 33 with 400', async () => {
    expect((await post(nested(32))).status).toBe(200)
    expect((await post(nested(33))).json()).toEqual({
      errorMessage: 'Request body must be nested at most 32 levels deep',
    })
  })

  test('accepts a body of 1,000 JSON values, and refuses 1,001 with 400', async () => {
    const big = appWith(livekitEnv)
    expect((await big.request('/token', { method: 'POST', headers: json, body: values(1000) })).status).toBe(200)
    const answer = await big.request('/token', { method: 'POST', headers: json, body: values(1001) })
    expect([answer.status, answer.json()]).toEqual([
      400,
      { errorMessage: 'Request body must hold at most 1000 JSON values' },
    ])
  })

  test('counts no bracket, brace or comma inside a string, escaped quotes included', async () => {
    const participantName = `${'[{,'.repeat(400)}\\"${']'.repeat(40)}`
    const answer = await app.postJson('/token', {
      roomName: 'r',
      participantName: participantName.slice(0, 256),
      note: '"\\[[[',
    })
    expect(answer.status).toBe(200)
    expect((await post(`{"roomName":"r","participantName":"p","x":"${'[,'.repeat(600)}"}`)).status).toBe(200)
  })

  test('refuses a body over MAX_BODY_BYTES with 413 before reading it', async () => {
    const fits = `{"roomName":"r","participantName":"p","pad":"${'x'.repeat(2000 - 47)}"}`
    expect(Buffer.byteLength(fits)).toBe(2000)
    expect((await post(fits)).status).toBe(200)
    const answer = await post(`${fits} `)
    expect([answer.status, answer.json()]).toEqual([413, { errorMessage: 'Request body must be at most 2000 bytes' }])
  })

  test('counts a chunked body while reading it: 413 past MAX_BODY_BYTES, else read whole', async () => {
    const answer = await post(streamOf('{"roomName":"r",', '"participantName":"p"}'))
    expect(claimsOf(answer.json().token).video?.room).toBe('r')
    const tooLong = await post(
      streamOf('{"roomName":"r","participantName":"p","pad":"', 'x'.repeat(1000), 'x'.repeat(1000), '"}'),
    )
    expect([tooLong.status, tooLong.json()]).toEqual([413, { errorMessage: 'Request body must be at most 2000 bytes' }])
  })

  test('caps token requests at 256 KiB whatever MAX_BODY_BYTES allows', async () => {
    const large = appWith({ ...livekitEnv, MAX_BODY_BYTES: String(1024 * 1024) })
    const body = (bytes: number) => `{"roomName":"r","participantName":"p","pad":"${'x'.repeat(bytes - 47)}"}`
    expect((await large.request('/token', { method: 'POST', headers: json, body: body(256 * 1024) })).status).toBe(200)
    const answer = await large.request('/token', { method: 'POST', headers: json, body: body(256 * 1024 + 1) })
    expect([answer.status, answer.json()]).toEqual([413, { errorMessage: 'Request body must be at most 262144 bytes' }])
  })

  test('answers 503 to a body past MAX_PENDING_BODY_BYTES being read at once, 200 once the first is in', async () => {
    const busy = appWith({ ...livekitEnv, MAX_PENDING_BODY_BYTES: '100' })
    let finish = (_: string) => {}
    let started = () => {}
    const reading = new Promise<void>((resolve) => (started = resolve))
    const slow = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(new TextEncoder().encode('{"roomName":"r",'))
        finish = (rest) => (controller.enqueue(new TextEncoder().encode(rest)), controller.close())
      },
      // Asked for more once the first chunk is read: the body's bytes are reserved by then.
      pull: () => started(),
    })
    const first = busy.request('/token', { method: 'POST', headers: { ...json, 'content-length': '60' }, body: slow })
    await reading
    const refused = await busy.request('/token', {
      method: 'POST',
      headers: json,
      body: `{"roomName":"r","participantName":"${'p'.repeat(30)}"}`,
    })
    expect([refused.status, refused.json()]).toEqual([
      503,
      { errorMessage: 'The server is busy receiving other requests, retry shortly' },
    ])
    expect(refused.headers.get('retry-after')).toBe('1')
    expect(refused.headers.get('connection')).toBe('close')
    // Within the budget beside the first: 60 + 38 bytes.
    expect((await busy.request('/token', { method: 'POST', headers: json, body: openVidu })).status).toBe(200)
    finish('"participantName":"p"}')
    expect((await first).status).toBe(200)
    const after = await busy.request('/token', {
      method: 'POST',
      headers: json,
      body: `{"roomName":"r","participantName":"${'p'.repeat(30)}"}`,
    })
    expect(after.status).toBe(200)
  })
})

describe('POST /token with TOKEN_RATE_LIMIT', () => {
  const openVidu = { roomName: 'r', participantName: 'p' }

  test('answers 429 with Retry-After, readable cross-origin, once a caller has used its allowance', async () => {
    const app = appWith({ ...livekitEnv, TOKEN_RATE_LIMIT: '2' })
    expect((await app.postJson('/token', openVidu)).status).toBe(200)
    expect((await app.postJson('/token', openVidu)).status).toBe(200)
    const answer = await app.postJson('/token', openVidu)
    expect([answer.status, answer.json()]).toEqual([429, { errorMessage: 'Too many token requests, retry in 30 s' }])
    expect(answer.headers.get('retry-after')).toBe('30')
    expect(answer.headers.get('access-control-expose-headers')).toBe('Retry-After')
  })

  test('counts a refused request too, and refuses the next before reading its body', async () => {
    const app = appWith({ ...livekitEnv, TOKEN_RATE_LIMIT: '1' })
    const refused = await app.request('/token', { method: 'POST', headers: json, body: 'not json' })
    expect([refused.status, refused.json()]).toEqual([400, { errorMessage: 'Request body must be valid JSON' }])
    const answer = await app.request('/token/?x', { method: 'POST', headers: json, body: 'not json' })
    expect([answer.status, answer.headers.get('retry-after')]).toEqual([429, '60'])
  })

  test('checks an admitted body as it would without a limit: Content-Type, nesting, fields', async () => {
    const app = appWith({ ...livekitEnv, TOKEN_RATE_LIMIT: '100' })
    const post = (body: string, contentType = 'application/json') =>
      app.request('/token', { method: 'POST', headers: { 'content-type': contentType }, body })
    expect((await post('{}', 'text/plain')).json()).toEqual({ errorMessage: 'Content-Type must be application/json' })
    const deep = `{"roomName":"r","participantName":"p","x":${'['.repeat(40)}${']'.repeat(40)}}`
    expect((await post(deep)).json()).toEqual({ errorMessage: 'Request body must be nested at most 32 levels deep' })
    expect((await post('{"roomName":"r"}')).json()).toEqual({
      errorMessage: 'roomName and participantName are required',
    })
    expect(claimsOf((await post(JSON.stringify(openVidu))).json().token).sub).toBe('p')
  })

  test('without TRUST_PROXY, ignores X-Forwarded-For: every request counts as the connection', async () => {
    const app = appWith({ ...livekitEnv, TOKEN_RATE_LIMIT: '1' })
    expect((await app.postJson('/token', openVidu, { 'x-forwarded-for': '203.0.113.1' })).status).toBe(200)
    expect((await app.postJson('/token', openVidu, { 'x-forwarded-for': '203.0.113.2' })).status).toBe(429)
  })

  /** The statuses of a request from each X-Forwarded-For value in turn, with an allowance of one. */
  async function statusesFrom(trustProxy: string, hops: string[]): Promise<number[]> {
    const app = appWith({ ...livekitEnv, TOKEN_RATE_LIMIT: '1', TRUST_PROXY: trustProxy })
    const statuses = []
    for (const hop of hops) statuses.push((await app.postJson('/token', openVidu, { 'x-forwarded-for': hop })).status)
    return statuses
  }

  test('with TRUST_PROXY=1, counts each client by the last X-Forwarded-For hop', async () => {
    expect(await statusesFrom('1', ['203.0.113.1', '203.0.113.2', '198.51.100.9, 203.0.113.1'])).toEqual([
      200, 200, 429,
    ])
    expect(await statusesFrom('true', ['203.0.113.1', '203.0.113.2', '203.0.113.2'])).toEqual([200, 200, 429])
  })

  test('with TRUST_PROXY=2, counts the hop the second proxy appended', async () => {
    expect(
      await statusesFrom('2', ['203.0.113.1, 10.0.0.1', '203.0.113.1, 10.0.0.2', '203.0.113.2, 10.0.0.1']),
    ).toEqual([200, 429, 200])
  })

  test('reads a hop with a port, in brackets or not, as the address alone', async () => {
    expect(await statusesFrom('1', ['203.0.113.7:5678', '203.0.113.7'])).toEqual([200, 429])
    expect(await statusesFrom('1', ['[2001:db8::1]:443', '2001:db8::1'])).toEqual([200, 429])
    expect(await statusesFrom('1', ['[2001:db8::1]', '2001:db8::1'])).toEqual([200, 429])
  })

  test('counts an IPv4-mapped IPv6 address as the IPv4 address', async () => {
    expect(await statusesFrom('1', ['::ffff:198.51.100.4', '198.51.100.4'])).toEqual([200, 429])
  })

  test('counts IPv6 clients by their /64, however the address is spelt', async () => {
    expect(await statusesFrom('1', ['2001:db8:1:2::1', '2001:db8:1:2:ffff::9'])).toEqual([200, 429])
    expect(await statusesFrom('1', ['2001:db8:1:2::1', '2001:db8:1:3::1'])).toEqual([200, 200])
    expect(await statusesFrom('1', ['2001:0db8:0001:0002:0:0:0:1', '2001:db8:1:2::'])).toEqual([200, 429])
    expect(await statusesFrom('1', ['::1', '0:0:0:0:0:0:0:2'])).toEqual([200, 429])
    expect(await statusesFrom('1', ['fe80::1%eth0', 'fe80::2'])).toEqual([200, 429])
  })

  test('counts a hop that is no address (made up, or missing) as the connection', async () => {
    expect(await statusesFrom('1', ['not-an-address', 'also-made-up', '203.0.113.1'])).toEqual([200, 429, 200])
    expect(await statusesFrom('3', ['203.0.113.1', '203.0.113.2'])).toEqual([200, 429])
  })
})
