// What an attack run walked through, each finding held by a test: admission bound to the token
// handler however the request is spelled, the proxy's hop rather than the client's, agent dispatch
// bounds, the token route's body limit, bodies in flight, and what log lines may carry.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from 'bun:test'
import { httpClient, runtimeNames, serveDuringTests, startServer, testCredentials, waitForLog, warningLinesCaughtUp } from './server'
import { signWebhook, verifyAccessToken, webhookEvent } from './livekit'
import { audience, idToken, issuer, makeKey, startIdentityProvider, type SigningKey } from './identity-provider'
import { open, rawRequest } from './raw-http'

// Real servers, browsers and Redis start here: 30 s a test (bunfig's [test] timeout is not read by Bun 1.4).
setDefaultTimeout(30_000)

const credentials = testCredentials()
const livekitEnv = { LIVEKIT_API_KEY: credentials.apiKey, LIVEKIT_API_SECRET: credentials.apiSecret }
const tokenBody = JSON.stringify({ room_name: 'boardroom', participant_identity: 'ceo' })
const jsonHeaders = { 'content-type': 'application/json', 'content-length': String(tokenBody.length) }

/** POST /token over a raw socket, with the request target and Host exactly as given. */
const postTokenAs = (url: string, path: string, host?: string) =>
  rawRequest(url, host === undefined ? jsonHeaders : { ...jsonHeaders, host }, [tokenBody], { path })

/** An Authorization header as LiveKit signs one (over a body the test may never finish sending). */
const signedHeader = () => signWebhook('{}', credentials)

/** A webhook signed as LiveKit signs it, over a raw socket, its body padded with spaces to `size` bytes. */
function postWebhook(url: string, size = 0) {
  const body = JSON.stringify(webhookEvent('room_started')).padEnd(size, ' ')
  const headers = { 'content-type': 'application/webhook+json', 'content-length': String(body.length), authorization: signWebhook(body, credentials) }
  return rawRequest(url, headers, [body], { path: '/livekit/webhook' })
}

// Each spelling, and where it routes: the token handler (its checks included) or nowhere.
const tokenPathSpellings: [string, 'token' | 'token or 404' | '404'][] = [
  ['/token/', 'token'],
  ['/token?x=1', 'token'],
  ['/token/?x=1', 'token'],
  ['/./token', 'token or 404'], // Bun resolves dot segments, Deno does not
  ['/x/../token', 'token or 404'],
  ['//token', '404'],
  ['/%2Ftoken', '404'],
  ['/token%2F', '404'],
  ['/TOKEN', '404'],
  ['/token;x', '404'],
  ['/token/x', '404'],
]

// A Host header that is not a host name: Elysia used to find the path by position, after it.
const oddHosts: [string, string][] = [
  ['a', '/ab/token'],
  ['ab', '/a/token'],
  ['abc', '//token'],
  ['x', '/xtoken'],
  ['a b', '/abcdef/token'],
  ['a/token', '/'],
  ['a?', '/token'],
  ['', '/token'],
]

for (const runtime of runtimeNames) {
  describe(`${runtime}: POST /token admission, however the request is spelled`, () => {
    const provider = startIdentityProvider()
    let key: SigningKey
    const running = serveDuringTests(runtime, () => ({ ...livekitEnv, AUTH_JWKS_URL: provider.jwksUrl, AUTH_ISSUER: issuer, AUTH_AUDIENCE: audience, TOKEN_RATE_LIMIT: '100' }))
    beforeAll(async () => {
      key = await makeKey('k1', 'ES256')
      provider.state.published = [key]
    })
    afterAll(() => provider.server.stop(true))

    for (const [path, routesTo] of tokenPathSpellings) {
      test(`${path} without a bearer token answers ${routesTo === 'token' ? '401' : routesTo === '404' ? '404' : '401 or 404'}, never a token`, async () => {
        const answer = await postTokenAs(running.server.url, path)
        if (routesTo === 'token') expect(answer.status).toBe(401)
        else if (routesTo === '404') expect(answer.status).toBe(404)
        else expect([401, 404]).toContain(answer.status)
        expect(answer.body).not.toContain('token":"')
      })
    }

    for (const [host, path] of oddHosts) {
      test(`Host ${JSON.stringify(host)} with ${path} never answers a token without a bearer`, async () => {
        const answer = await postTokenAs(running.server.url, path, host)
        expect([400, 401, 404]).toContain(answer.status)
        expect(answer.body).not.toContain('token":"')
      })
    }

    test('a bearer token still gets a token at /token/', async () => {
      const bearer = await idToken(key, { sub: 'ceo' })
      const answer = await rawRequest(running.server.url, { ...jsonHeaders, authorization: `Bearer ${bearer}` }, [tokenBody], { path: '/token/' })
      expect(answer.status).toBe(200)
      expect(verifyAccessToken(answer.json().participant_token, credentials).sub).toBe('ceo')
    })

    test('serves GET /health whatever the Host header says', async () => {
      for (const host of ['x', 'a', 'ab', 'a:1', '[::1]', '']) {
        const answer = await rawRequest(running.server.url, { host }, [], { method: 'GET', path: '/health' })
        expect([host, answer.status]).toEqual([host, 200])
      }
    })
  })

  describe(`${runtime}: POST /token rate limit, however the path is spelled`, () => {
    const running = serveDuringTests(runtime, { ...livekitEnv, TOKEN_RATE_LIMIT: '2' })

    test('routes no request by a path shifted by a Host header that is no host name', async () => {
      const shifted: [string, string][] = [['a b', '/abcdef/token'], ['a b', '/abcdef/livekit/webhook'], ['a/token', '/']]
      for (const [host, path] of shifted) {
        const answer = await postTokenAs(running.server.url, path, host)
        expect([host, path, [400, 404].includes(answer.status)]).toEqual([host, path, true])
      }
    })

    test('counts /token/ and /token?x against the same allowance as /token', async () => {
      const statuses = []
      for (const path of ['/token', '/token/', '/token?x=1', '/token/', '/token']) statuses.push((await postTokenAs(running.server.url, path)).status)
      expect(statuses).toEqual([200, 200, 429, 429, 429])
    })
  })

  describe(`${runtime}: the client address behind TRUST_PROXY`, () => {
    /** Statuses of token requests, one per X-Forwarded-For value, against a limit of 2. */
    async function statusesFor(trustProxy: string, forwardedFor: string[]): Promise<number[]> {
      const server = await startServer(runtime, { ...livekitEnv, TOKEN_RATE_LIMIT: '2', TRUST_PROXY: trustProxy })
      try {
        const http = httpClient(server.url)
        const statuses = []
        for (const hops of forwardedFor) statuses.push((await http.postJson('/token', { roomName: 'r', participantName: 'p' }, { 'x-forwarded-for': hops })).status)
        return statuses
      } finally {
        await server.stop()
      }
    }

    test('counts the hop the proxy appended, not the ones the client wrote before it', async () => {
      const spoofed = [1, 2, 3, 4].map((i) => `198.51.100.${i}, 203.0.113.7`)
      expect(await statusesFor('1', spoofed)).toEqual([200, 200, 429, 429])
    })

    test('tells clients behind the proxy apart by the hop it appended', async () => {
      expect(await statusesFor('1', ['203.0.113.1', '203.0.113.1', '203.0.113.1', '10.0.0.9, 203.0.113.2'])).toEqual([200, 200, 429, 200])
    })

    test('with TRUST_PROXY=2, counts the hop the outer of two proxies appended', async () => {
      const hops = (client: string, spoofed: string) => `${spoofed}, ${client}, 10.0.0.1`
      expect(await statusesFor('2', [hops('203.0.113.1', '1.1.1.1'), hops('203.0.113.1', '2.2.2.2'), hops('203.0.113.1', '3.3.3.3'), hops('203.0.113.2', '1.1.1.1')])).toEqual([200, 200, 429, 200])
    })

    test('counts IPv6 clients by their /64: every address in one /64 shares an allowance, the next /64 has its own', async () => {
      const hops = ['2001:db8:1:2::1', '2001:DB8:1:2:ffff:ffff:ffff:9', '2001:db8:1:2:0:0:0:abcd', '2001:db8:1:3::1']
      expect(await statusesFor('1', hops)).toEqual([200, 200, 429, 200])
    })

    test('counts an IPv4 client by its address however it is written (IPv4-mapped IPv6 included)', async () => {
      expect(await statusesFor('1', ['::ffff:203.0.113.9', '203.0.113.9', '::ffff:203.0.113.9', '203.0.113.10'])).toEqual([200, 200, 429, 200])
    })

    test('takes the address of a hop written with a port, IPv4 or bracketed IPv6, dropping the port', async () => {
      expect(await statusesFor('1', ['203.0.113.7:5678', '203.0.113.7:9999', '203.0.113.7', '203.0.113.8:5678'])).toEqual([200, 200, 429, 200])
      expect(await statusesFor('1', ['[2001:db8::1]:443', '[2001:db8::2]:80', '2001:db8::3', '[2001:db9::1]:443'])).toEqual([200, 200, 429, 200])
    })

    test('falls back to the connection address when the hop is not an IP address', async () => {
      const garbage = ['not-an-address', 'x'.repeat(15_000), '999.1.1.1', '203.0.113.1 extra']
      expect(await statusesFor('1', garbage)).toEqual([200, 200, 429, 429])
    })
  })

  describe(`${runtime}: POST /token agent dispatch`, () => {
    const running = serveDuringTests(runtime, livekitEnv)
    const withAgents = (agents: unknown[]) => running.http.postJson('/token', { room_name: 'r', room_config: { agents } })

    test('dispatches up to 8 agents with names and metadata', async () => {
      const agents = Array.from({ length: 8 }, (_, i) => ({ agent_name: `agent-${i}`.padEnd(256, 'x'), metadata: 'm'.repeat(8 * 1024) }))
      const answer = await withAgents(agents)
      expect(answer.status).toBe(200)
      const claims = verifyAccessToken(answer.json().participant_token, credentials)
      expect((claims.roomConfig as { agents: unknown[] }).agents).toHaveLength(8)
    })

    const refusals: [string, unknown[], number, RegExp][] = [
      ['9 agents', Array.from({ length: 9 }, (_, i) => ({ agent_name: `a${i}` })), 400, /at most 8 agents/],
      // Refused before it is parsed, by the bound on JSON values.
      ['5,000 agents', Array.from({ length: 5000 }, (_, i) => ({ agent_name: `a${i}` })), 400, /at most 1000 JSON values/],
      ['an agent name of 257 characters', [{ agent_name: 'a'.repeat(257) }], 400, /at most 256 characters/],
      ['more than 64 KiB of agent metadata in all', [{ agent_name: 'a', metadata: 'm'.repeat(40_000) }, { agent_name: 'b', metadata: 'm'.repeat(40_000) }], 400, /at most 65536 bytes/],
      ['an agent deployment of 257 characters', [{ agent_name: 'a', deployment: 'd'.repeat(257) }], 400, /at most 256 characters/],
      ['agent attributes under lk.', [{ agent_name: 'a', attributes: { 'lk.agent.state': 'x' } }], 403, /lk\./],
      ['an agent restart policy', [{ agent_name: 'a', restart_policy: 'JRP_NEVER' }], 403, /restart_policy/],
    ]
    for (const [what, agents, status, message] of refusals) {
      test(`refuses ${what} with ${status}`, async () => {
        const answer = await withAgents(agents)
        expect(answer.status).toBe(status)
        expect(answer.json().errorMessage).toMatch(message)
      })
    }
  })

  describe(`${runtime}: POST /token body size`, () => {
    const running = serveDuringTests(runtime, livekitEnv)

    test('accepts the largest request the field bounds allow', async () => {
      const attributes = Object.fromEntries(Array.from({ length: 64 }, (_, i) => [`k${String(i).padStart(2, '0')}`, 'v'.repeat(1020)]))
      const agents = Array.from({ length: 8 }, (_, i) => ({ agent_name: `agent-${i}`, metadata: 'm'.repeat(8 * 1024) }))
      const body = { room_name: 'r', participant_metadata: 'm'.repeat(64 * 1024), participant_attributes: attributes, room_config: { agents } }
      expect((await running.http.postJson('/token', body)).status).toBe(200)
    })

    test('refuses a token request over 256 KiB with 413 before reading it, though webhooks may be larger', async () => {
      const size = 256 * 1024 + 1
      const answer = await rawRequest(running.server.url, { 'content-type': 'application/json', 'content-length': String(size) }, [], { path: '/token' })
      expect(answer.status).toBe(413)
      expect(answer.json()).toEqual({ errorMessage: `Request body must be at most ${256 * 1024} bytes` })
      expect((await postWebhook(running.server.url, size)).status).toBe(200)
    })

    const postText = (body: string) => running.http.request('/token', { method: 'POST', headers: { 'content-type': 'application/json' }, body })

    test('refuses the worst-shaped body it parses (deep, wide, invalid room_config, 1,000 JSON values) with 400', async () => {
      // 28 arrays in agents in room_config in the body: 31 levels, one short of the limit, and under 1,000 values.
      const nest = `${'['.repeat(28)}${']'.repeat(28)}`
      const body = `{"room_config":{"agents":[${Array(34).fill(nest).join(',')}]},"padding":"${'x'.repeat(250 * 1024)}"}`
      const answer = await postText(body)
      expect(answer.status).toBe(400)
      expect(answer.json().errorMessage).toMatch(/room_config/)
    })

    test('reads a body of 1,000 JSON values, and refuses one of 1,001 with 400 before parsing it', async () => {
      // Two members, and the elements of one of them: count + 2 values.
      const withElements = (count: number) => `{"room_name":"r","x":[${Array(count).fill(0).join(',')}]}`
      expect((await postText(withElements(998))).status).toBe(200)
      const answer = await postText(withElements(999))
      expect(answer.status).toBe(400)
      expect(answer.json()).toEqual({ errorMessage: 'Request body must hold at most 1000 JSON values' })
    })
  })

  describe(`${runtime}: request bodies in flight`, () => {
    const running = serveDuringTests(runtime, { ...livekitEnv, MAX_PENDING_BODY_BYTES: String(1024 * 1024) })

    test('answers 503 with Retry-After before reading a body that does not fit beside those being read', async () => {
      const pending = await open(new URL(running.server.url))
      try {
        pending.write(`POST /livekit/webhook HTTP/1.1\r\nhost: x\r\nauthorization: ${signedHeader()}\r\ncontent-length: ${900 * 1024}\r\n\r\n${' '.repeat(1024)}`)
        await Bun.sleep(200) // the server has started reading it
        const refused = await rawRequest(running.server.url, { authorization: signedHeader(), 'content-length': String(200 * 1024), origin: 'http://localhost:5080' }, [], { path: '/livekit/webhook' })
        expect(refused.status).toBe(503)
        expect(refused.headers.get('retry-after')).toBe('1')
        expect(refused.headers.get('access-control-allow-origin')).toBe('*')
        // Deno would read the whole upload before closing; the server cuts the answer short instead.
        if (runtime !== 'deno') expect(refused.json().errorMessage).toMatch(/busy/)
        else expect(refused.truncated).toBe(true)
        // A small body still fits.
        expect((await postWebhook(running.server.url)).status).toBe(200)
      } finally {
        pending.destroy()
      }
      // Once the upload broke off, its bytes are free again.
      await waitForLog(running.server, (entry) => entry.msg === 'request aborted by client')
      expect((await postWebhook(running.server.url, 200 * 1024)).status).toBe(200)
      expect(running.server.logs().filter((entry) => entry.level === 'error')).toEqual([])
    })

    test('refuses a webhook without a valid signature before reading its body, so it holds no share', async () => {
      // Declares a megabyte and sends nothing: answered at once, not after waiting for the body.
      const answer = await rawRequest(running.server.url, { 'content-length': String(1024 * 1024), authorization: 'not.a.jwt' }, [], { path: '/livekit/webhook', timeoutMs: 2000 })
      expect(answer.status).toBe(401)
    })

    test('keeps a share for webhooks that a crowd of token requests cannot take', async () => {
      const crowd = await Promise.all(Array.from({ length: 4 }, () => open(new URL(running.server.url))))
      try {
        for (const socket of crowd) socket.write(`POST /token HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: ${256 * 1024}\r\n\r\n{`)
        await Bun.sleep(200) // 1 MiB of token bodies being read: the token route's share is full
        const token = await rawRequest(running.server.url, { 'content-type': 'application/json', 'content-length': '2' }, ['{}'], { path: '/token' })
        expect(token.status).toBe(503)
        expect((await postWebhook(running.server.url, 200 * 1024)).status).toBe(200)
      } finally {
        for (const socket of crowd) socket.destroy()
      }
    })

    test('gives up on a body that has not arrived within 10 s: 408, and its share is free again', async () => {
      const socket = await open(new URL(running.server.url))
      try {
        const head = new Promise<string>((resolve) => socket.on('data', (data: Buffer) => resolve(data.toString('latin1'))))
        socket.write(`POST /livekit/webhook HTTP/1.1\r\nhost: x\r\nauthorization: ${signedHeader()}\r\ncontent-length: ${900 * 1024}\r\n\r\n{"event":`)
        const started = Date.now()
        // Bun answers in full and closes; Deno sends the status and headers but keeps the connection
        // until the client closes it (it has no way to close it), so the status line is what counts.
        expect((await head).split('\r\n')[0]).toBe('HTTP/1.1 408 Request Timeout')
        expect(Date.now() - started).toBeGreaterThanOrEqual(9_500)
      } finally {
        socket.destroy()
      }
      // 200 KiB more would not fit beside the 900 KiB, had they not been given back.
      expect((await postWebhook(running.server.url, 200 * 1024)).status).toBe(200)
    }, 20_000)
  })

  describe(`${runtime}: log lines`, () => {
    const running = serveDuringTests(runtime, livekitEnv)

    test('escape U+2028 and U+2029, which some log readers take for line ends', async () => {
      const room = 'line\u2028separated\u2029room'
      const body = JSON.stringify(webhookEvent('room_started', { room: { sid: 'RM_ls', name: room } }))
      expect((await running.http.request('/livekit/webhook', { method: 'POST', headers: { authorization: signWebhook(body, credentials) }, body })).status).toBe(200)
      const [line] = await waitForLog(running.server, (entry) => entry.room === room)
      expect(line).toMatchObject({ msg: 'webhook', room })
      const raw = running.server.lines.find((text) => text.includes('RM_ls') || text.includes('separated'))!
      expect(raw).toContain('line\\u2028separated\\u2029room')
      expect(running.server.lines.join('\n')).not.toMatch(/[\u2028\u2029]/)
    })

    test('log a client that aborts its own upload as info, not as an error', async () => {
      const socket = await open(new URL(running.server.url))
      socket.write(`POST /livekit/webhook HTTP/1.1\r\nhost: x\r\nauthorization: ${signedHeader()}\r\ncontent-length: 100000\r\n\r\n${' '.repeat(1000)}`)
      await Bun.sleep(200)
      socket.destroy()
      const [line] = await waitForLog(running.server, (entry) => entry.msg === 'request aborted by client')
      expect(line!.level).toBe('info')
      await warningLinesCaughtUp(running.server)
      expect(running.server.logs().filter((entry) => entry.level === 'error')).toEqual([])
    })
  })
}
