// POST /token under a token policy (TOKEN_POLICY): which caller gets which grant, in which room, with
// which room settings, for how long; roles taken from ID tokens shaped as Keycloak's, Auth0's and a
// plain `roles` claim issues them.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from 'bun:test'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { TokenSource } from 'livekit-client'
import { denoCommandWith, httpClient, runtimeNames, runUntilExit, startServer, testCredentials, withAuditedFetch, type Runtime, type ServerProcess } from './server'
import { verifyAccessToken, type TokenClaims } from './livekit'
import { audience, idToken, issuer, makeKey, startIdentityProvider, type SigningKey } from './identity-provider'

// Real servers, browsers and Redis start here: 30 s a test (bunfig's [test] timeout is not read by Bun 1.4).
setDefaultTimeout(30_000)

const credentials = testCredentials()
const bearer = (token: string) => ({ authorization: `Bearer ${token}` })
const policyDir = mkdtempSync(join(tmpdir(), 'livekit-policy-'))
afterAll(() => rmSync(policyDir, { recursive: true, force: true }))

// The issue's policy, with an agent the server always dispatches and a host's own room settings
// (the host listed after the member: a role's own settings win over the top-level's whatever the order).
const keycloakPolicy = {
  rolesClaim: 'realm_access.roles',
  defaultRole: 'viewer',
  roles: {
    member: {
      rooms: ['team-{org}/*', 'user-{sub}'],
      agents: ['transcriber'],
      grants: { canPublish: true, canPublishSources: ['camera', 'microphone'], canSubscribe: true, canPublishData: true },
    },
    host: {
      rooms: ['*'],
      ttl: '2h',
      agents: ['*'],
      grants: { canPublish: true, canSubscribe: true, canPublishData: true, roomAdmin: true, roomRecord: true },
      roomConfig: { maxParticipants: 10 },
    },
    viewer: { rooms: ['webinar-*'], grants: { canPublish: false, canSubscribe: true, canPublishData: false, hidden: true } },
  },
  roomConfig: { emptyTimeout: 300, departureTimeout: 20, maxParticipants: 100, agents: [{ agentName: 'notetaker' }] },
}

// Auth0 puts roles (and other custom claims) under a namespaced name; no default role here.
const auth0Policy = {
  rolesClaim: 'https://my-app.com/roles',
  roles: {
    admin: { rooms: ['*'], grants: { canPublish: true, canSubscribe: true, canPublishData: true, roomAdmin: true } },
    student: { rooms: ['class-{https://my-app.com/school}/*'], ttl: '45m', grants: { canSubscribe: true, canPublishData: true } },
  },
}

// rolesClaim unset: the plain `roles` claim, an array or a single string.
const plainPolicy = {
  roles: {
    speaker: { rooms: ['stage'], grants: { canPublish: true, canPublishSources: ['microphone'], canSubscribe: true } },
    listener: { rooms: ['stage'], ttl: '8h', grants: { canSubscribe: true } },
  },
}

// Without authentication every caller has the default role.
const openPolicy = { defaultRole: 'guest', roles: { guest: { rooms: ['lobby-*'], grants: { canSubscribe: true } } } }

const tokenTtl = 600
const baseEnv = { LIVEKIT_API_KEY: credentials.apiKey, LIVEKIT_API_SECRET: credentials.apiSecret, TOKEN_TTL: `${tokenTtl}s` }

/** The `video` grant LiveKit reads; canPublish, canSubscribe and canPublishData always written out. */
const hostGrant = { roomJoin: true, canPublish: true, canSubscribe: true, canPublishData: true, roomAdmin: true, roomRecord: true }
const memberGrant = { roomJoin: true, canPublish: true, canPublishSources: ['camera', 'microphone'], canSubscribe: true, canPublishData: true }
const viewerGrant = { roomJoin: true, canPublish: false, canSubscribe: true, canPublishData: false, hidden: true }

type Contract = 'openvidu' | 'standard'
const contracts: Contract[] = ['openvidu', 'standard']

/** A token request's body in either contract. */
function tokenRequest(contract: Contract, room: string | undefined, extra: Record<string, unknown> = {}) {
  if (contract === 'openvidu') return { roomName: room, participantName: 'typed-name', ...extra }
  return { ...(room !== undefined && { room_name: room }), participant_name: 'typed-name', ...extra }
}

/** Posts a token request; the status, and the token's claims (verified as LiveKit does) or the error message. */
async function askToken(http: ReturnType<typeof httpClient>, body: object, headers: Record<string, string> = {}) {
  const answer = await http.postJson('/token', body, headers)
  const json = answer.json()
  const token = json.token ?? json.participant_token
  const claims: TokenClaims | undefined = token ? verifyAccessToken(token, credentials) : undefined
  return { status: answer.status, claims, errorMessage: json.errorMessage as string | undefined }
}

/** A server with the policy (in TOKEN_POLICY, or in the file TOKEN_POLICY_FILE names) and, if a provider is given, authentication. */
function servePolicy(runtime: Runtime, policy: object, { provider, fromFile = false }: { provider?: ReturnType<typeof startIdentityProvider>; fromFile?: boolean } = {}) {
  const running = {} as { server: ServerProcess; http: ReturnType<typeof httpClient> }
  beforeAll(async () => {
    const file = join(policyDir, `${runtime}-${crypto.randomUUID()}.json`)
    if (fromFile) writeFileSync(file, `${JSON.stringify(policy, null, 2)}\n`)
    const auth: Record<string, string> = provider ? { AUTH_JWKS_URL: provider.jwksUrl, AUTH_ISSUER: issuer, AUTH_AUDIENCE: audience } : {}
    const setting: Record<string, string> = fromFile ? { TOKEN_POLICY_FILE: file } : { TOKEN_POLICY: JSON.stringify(policy) }
    const options = fromFile && runtime === 'deno' ? { command: denoCommandWith(`--allow-read=${policyDir}`) } : {}
    running.server = await startServer(runtime, { ...baseEnv, ...auth, ...setting }, options)
    running.http = httpClient(running.server.url)
  })
  afterAll(async () => {
    await running.server?.stop()
  })
  return running
}

/** An identity provider for the enclosing describe block, publishing one key made before its tests. */
function identityProviderDuringTests(kid: string, alg: 'RS256' | 'ES256') {
  const provider = startIdentityProvider()
  const signing = {} as { key: SigningKey }
  beforeAll(async () => {
    signing.key = await makeKey(kid, alg)
    provider.state.published = [signing.key]
  })
  afterAll(() => provider.server.stop(true))
  return { provider, signing }
}

for (const runtime of runtimeNames) {
  describe(`${runtime}: POST /token under a Keycloak-shaped policy (realm_access.roles, a default role)`, () => {
    const { provider, signing } = identityProviderDuringTests('kc-1', 'RS256')
    const running = servePolicy(runtime, keycloakPolicy, { provider })
    const keycloak = async (roles: string[] | undefined, claims: Record<string, unknown> = {}) =>
      bearer(await idToken(signing.key, { ...(roles && { realm_access: { roles } }), org: 'acme', ...claims }))

    for (const contract of contracts) {
      test(`gives a host (${contract}) every grant it lists in any room, for the host's TTL, with the server's room settings and the host's own over them`, async () => {
        const { status, claims } = await askToken(running.http, tokenRequest(contract, 'board-meeting'), await keycloak(['host', 'offline_access']))
        expect(status).toBe(200)
        expect(claims!.video).toEqual({ ...hostGrant, room: 'board-meeting' })
        expect(claims!.exp - claims!.nbf).toBe(7200)
        expect(claims!.sub).toBe('user-1')
        expect(claims!.roomConfig).toMatchObject({ emptyTimeout: 300, departureTimeout: 20, maxParticipants: 10, agents: [expect.objectContaining({ agentName: 'notetaker' })] })
      })

      test(`gives a member (${contract}) the camera and microphone in a room of their organisation, for TOKEN_TTL`, async () => {
        const { status, claims } = await askToken(running.http, tokenRequest(contract, 'team-acme/standup'), await keycloak(['member']))
        expect(status).toBe(200)
        expect(claims!.video).toEqual({ ...memberGrant, room: 'team-acme/standup' })
        expect(claims!.exp - claims!.nbf).toBe(tokenTtl)
        expect(claims!.roomConfig).toMatchObject({ emptyTimeout: 300, departureTimeout: 20, maxParticipants: 100 })
      })

      test(`lets a member (${contract}) into their own user-{sub} room and no one else's`, async () => {
        const own = await askToken(running.http, tokenRequest(contract, 'user-user-1'), await keycloak(['member']))
        expect([own.status, own.claims?.video?.room]).toEqual([200, 'user-user-1'])
        const other = await askToken(running.http, tokenRequest(contract, 'user-user-2'), await keycloak(['member']))
        expect([other.status, other.errorMessage]).toEqual([403, 'Room "user-user-2" is not one this caller may join'])
      })

      test(`refuses a member (${contract}) another organisation's room, naming the room`, async () => {
        const { status, errorMessage, claims } = await askToken(running.http, tokenRequest(contract, 'team-globex/standup'), await keycloak(['member']))
        expect([status, errorMessage, claims]).toEqual([403, 'Room "team-globex/standup" is not one this caller may join', undefined])
      })

      test(`gives a caller with none of the policy's roles (${contract}) the default role: a hidden viewer of webinars`, async () => {
        for (const headers of [await keycloak(['offline_access']), await keycloak(undefined)]) {
          const webinar = await askToken(running.http, tokenRequest(contract, 'webinar-42'), headers)
          expect(webinar.status).toBe(200)
          expect(webinar.claims!.video).toEqual({ ...viewerGrant, room: 'webinar-42' })
          const team = await askToken(running.http, tokenRequest(contract, 'team-acme/standup'), headers)
          expect([team.status, team.errorMessage]).toEqual([403, 'Room "team-acme/standup" is not one this caller may join'])
        }
      })

      test(`grants a member who is also a viewer (${contract}) only what the roles allowing the room give there`, async () => {
        const headers = await keycloak(['member', 'viewer'])
        expect((await askToken(running.http, tokenRequest(contract, 'webinar-42'), headers)).claims!.video).toEqual({ ...viewerGrant, room: 'webinar-42' })
        expect((await askToken(running.http, tokenRequest(contract, 'team-acme/x'), headers)).claims!.video).toEqual({ ...memberGrant, room: 'team-acme/x' })
      })

      test(`grants a host who is also a member (${contract}) the union of both roles' grants, unlimited sources, the longest TTL and the host's own room settings`, async () => {
        const { status, claims } = await askToken(running.http, tokenRequest(contract, 'team-acme/x'), await keycloak(['member', 'host']))
        expect(status).toBe(200)
        expect(claims!.video).toEqual({ ...hostGrant, room: 'team-acme/x' })
        expect(claims!.exp - claims!.nbf).toBe(7200)
        expect(claims!.roomConfig).toMatchObject({ emptyTimeout: 300, maxParticipants: 10 })
      })

      test(`matches {org} only when the claim is a room-name piece (${contract})`, async () => {
        for (const org of ['acme corp', '', ['acme'], 'a'.repeat(129)]) {
          const { status } = await askToken(running.http, tokenRequest(contract, `team-${org}/x`), await keycloak(['member'], { org }))
          expect(status).toBe(403)
        }
      })
    }

    test('makes a member without room_name their user-{sub} room (the first pattern with no *)', async () => {
      const { status, claims } = await askToken(running.http, {}, await keycloak(['member']))
      expect(status).toBe(200)
      expect(claims!.video).toEqual({ ...memberGrant, room: 'user-user-1' })
    })

    test('makes a host without room_name a fresh room-… each time ("*" allows it)', async () => {
      const [first, second] = [await askToken(running.http, {}, await keycloak(['host'])), await askToken(running.http, {}, await keycloak(['host']))]
      expect(first.claims!.video?.room).toMatch(/^room-\w+$/)
      expect(second.claims!.video?.room).not.toBe(first.claims!.video?.room)
    })

    test('refuses a viewer without room_name: no room of theirs can be made', async () => {
      const { status, errorMessage } = await askToken(running.http, {}, await keycloak(['viewer']))
      expect([status, errorMessage]).toEqual([403, 'room_name is required: the token policy makes no room for this caller'])
    })

    test("adds the agents a member may dispatch to the server's own", async () => {
      const body = { room_name: 'team-acme/x', room_config: { agents: [{ agent_name: 'transcriber', metadata: '{"lang":"fr"}' }] } }
      const { status, claims } = await askToken(running.http, body, await keycloak(['member']))
      expect(status).toBe(200)
      const agents = (claims!.roomConfig!.agents as { agentName: string; metadata?: string }[]).map(({ agentName, metadata }) => [agentName, metadata])
      expect(agents).toEqual([['notetaker', undefined], ['transcriber', '{"lang":"fr"}']])
    })

    test('refuses an agent the role does not list, naming it, and any agent to a role that lists none', async () => {
      const asking = (agent: string) => ({ room_name: 'team-acme/x', room_config: { agents: [{ agent_name: agent }] } })
      const member = await askToken(running.http, asking('translator'), await keycloak(['member']))
      expect([member.status, member.errorMessage]).toEqual([403, 'Agent "translator" is not one this caller may dispatch'])
      const viewer = await askToken(running.http, { ...asking('transcriber'), room_name: 'webinar-1' }, await keycloak(['viewer']))
      expect([viewer.status, viewer.errorMessage]).toEqual([403, 'Agent "transcriber" is not one this caller may dispatch'])
      const host = await askToken(running.http, asking('anything'), await keycloak(['host']))
      expect(host.status).toBe(200)
    })

    test('lets a member who is also a viewer dispatch only the agents a role allowing the room lists', async () => {
      const headers = await keycloak(['member', 'viewer'])
      const asking = (room: string) => ({ room_name: room, room_config: { agents: [{ agent_name: 'transcriber' }] } })
      // Only the viewer role allows webinar rooms, and it lists no agent: the member's transcriber is not for there.
      const webinar = await askToken(running.http, asking('webinar-42'), headers)
      const refusal = 'Agent "transcriber" is not one this caller may dispatch'
      expect([webinar.status, webinar.errorMessage]).toEqual([403, refusal])
      const team = await askToken(running.http, asking('team-acme/x'), headers)
      const dispatched = (team.claims?.roomConfig?.agents ?? []) as { agentName: string }[]
      const agents = dispatched.map(({ agentName }) => agentName)
      expect([team.status, agents]).toEqual([200, ['notetaker', 'transcriber']])
    })

    test("keeps today's bound on agents, counting the server's", async () => {
      const agents = Array.from({ length: 8 }, (_, i) => ({ agent_name: `agent-${i}` }))
      const { status, errorMessage } = await askToken(running.http, { room_name: 'x', room_config: { agents } }, await keycloak(['host']))
      expect([status, errorMessage]).toEqual([403, 'room_config may request at most 7 agents besides the 1 the server dispatches'])
    })

    test('still gives the token under the identity of the ID token, and refuses another participant_identity', async () => {
      const headers = await keycloak(['member'], { sub: 'kc-42' })
      expect((await askToken(running.http, { room_name: 'user-kc-42', participant_identity: 'kc-42' }, headers)).claims!.sub).toBe('kc-42')
      const other = await askToken(running.http, { room_name: 'user-kc-42', participant_identity: 'someone-else' }, headers)
      expect([other.status, other.errorMessage]).toEqual([403, 'participant_identity must be the authenticated caller'])
    })

    test("surfaces the policy's 403 to livekit-client's TokenSource.endpoint as an error carrying the message", async () => {
      const source = TokenSource.endpoint(new URL('/token', running.server.url).href, { headers: await keycloak(['viewer']) })
      const refused = withAuditedFetch(() => source.fetch({ roomName: 'team-acme/standup' }))
      await expect(refused).rejects.toThrow(/403/)
      await expect(refused).rejects.toThrow(/Room \\?"team-acme\/standup\\?" is not one this caller may join/)
    })
  })

  describe(`${runtime}: POST /token under an Auth0-shaped policy (a namespaced roles claim, from TOKEN_POLICY_FILE)`, () => {
    const { provider, signing } = identityProviderDuringTests('auth0-1', 'RS256')
    const running = servePolicy(runtime, auth0Policy, { provider, fromFile: true })
    const auth0 = async (claims: Record<string, unknown>) => bearer(await idToken(signing.key, { sub: 'auth0|5f7c8ec7c33c6c004bbafe82', ...claims }))

    for (const contract of contracts) {
      test(`gives an admin (${contract}) the admin grant in any room`, async () => {
        const { status, claims } = await askToken(running.http, tokenRequest(contract, 'anywhere'), await auth0({ 'https://my-app.com/roles': ['admin'] }))
        expect(status).toBe(200)
        expect(claims!.video).toEqual({ roomJoin: true, room: 'anywhere', canPublish: true, canSubscribe: true, canPublishData: true, roomAdmin: true })
        expect(claims!.sub).toBe('auth0|5f7c8ec7c33c6c004bbafe82')
        expect(claims!.roomConfig).toBeUndefined()
      })

      test(`lets a student (${contract}) into their school's classes, by a namespaced claim, to listen and send data for 45 minutes`, async () => {
        const headers = await auth0({ 'https://my-app.com/roles': ['student'], 'https://my-app.com/school': 'lycee-hugo' })
        const { status, claims } = await askToken(running.http, tokenRequest(contract, 'class-lycee-hugo/maths'), headers)
        expect(status).toBe(200)
        expect(claims!.video).toEqual({ roomJoin: true, room: 'class-lycee-hugo/maths', canPublish: false, canSubscribe: true, canPublishData: true })
        expect(claims!.exp - claims!.nbf).toBe(45 * 60)
        const elsewhere = await askToken(running.http, tokenRequest(contract, 'class-other/maths'), headers)
        expect([elsewhere.status, elsewhere.errorMessage]).toEqual([403, 'Room "class-other/maths" is not one this caller may join'])
      })

      test(`refuses a caller without a role (${contract}) when the policy has no default role`, async () => {
        for (const claims of [{}, { 'https://my-app.com/roles': [] }, { 'https://my-app.com/roles': ['teacher'] }]) {
          const { status, errorMessage } = await askToken(running.http, tokenRequest(contract, 'anywhere'), await auth0(claims))
          expect([status, errorMessage]).toEqual([403, 'The token policy gives this caller no role'])
        }
      })
    }
  })

  describe(`${runtime}: POST /token under a policy reading a plain roles claim`, () => {
    const { provider, signing } = identityProviderDuringTests('plain-1', 'ES256')
    const running = servePolicy(runtime, plainPolicy, { provider })

    for (const contract of contracts) {
      test(`reads roles as an array or a single string (${contract})`, async () => {
        for (const roles of [['speaker'], 'speaker']) {
          const { status, claims } = await askToken(running.http, tokenRequest(contract, 'stage'), bearer(await idToken(signing.key, { roles })))
          expect(status).toBe(200)
          expect(claims!.video).toEqual({ roomJoin: true, room: 'stage', canPublish: true, canPublishSources: ['microphone'], canSubscribe: true, canPublishData: false })
        }
        const listener = await askToken(running.http, tokenRequest(contract, 'stage'), bearer(await idToken(signing.key, { roles: 'listener' })))
        expect(listener.claims!.video).toEqual({ roomJoin: true, room: 'stage', canPublish: false, canSubscribe: true, canPublishData: false })
        expect(listener.claims!.exp - listener.claims!.nbf).toBe(8 * 3600)
      })
    }

    test('makes a speaker without room_name the one room the role names', async () => {
      const { status, claims } = await askToken(running.http, {}, bearer(await idToken(signing.key, { roles: ['speaker'] })))
      expect([status, claims?.video?.room]).toEqual([200, 'stage'])
    })
  })

  describe(`${runtime}: POST /token under a policy without authentication`, () => {
    const running = servePolicy(runtime, openPolicy)

    for (const contract of contracts) {
      test(`gives every caller (${contract}) the default role, in its rooms only`, async () => {
        const lobby = await askToken(running.http, tokenRequest(contract, 'lobby-1'))
        expect([lobby.status, lobby.claims?.video]).toEqual([200, { roomJoin: true, room: 'lobby-1', canPublish: false, canSubscribe: true, canPublishData: false }])
        const other = await askToken(running.http, tokenRequest(contract, 'backstage'))
        expect([other.status, other.errorMessage]).toEqual([403, 'Room "backstage" is not one this caller may join'])
      })
    }

    test('keeps the identities a caller names when no one is authenticated', async () => {
      expect((await askToken(running.http, { roomName: 'lobby-1', participantName: 'ada' })).claims!.sub).toBe('ada')
      expect((await askToken(running.http, { room_name: 'lobby-1', participant_identity: 'grace' })).claims!.sub).toBe('grace')
    })

    test('makes a room-… for a standard request without room_name only if a pattern allows it', async () => {
      const { status, errorMessage } = await askToken(running.http, {})
      expect([status, errorMessage]).toEqual([403, 'room_name is required: the token policy makes no room for this caller'])
    })
  })

  describe(`${runtime}: POST /token under a policy whose room pattern has two *s`, () => {
    const policy = { defaultRole: 'guest', roles: { guest: { rooms: ['a-*-b-*-c'], grants: { canSubscribe: true } } } }
    const running = servePolicy(runtime, policy)
    const status = async (room: string) => (await askToken(running.http, { room_name: room })).status

    test('lets a caller into every room the pattern spells, whatever each * stands for (empty too)', async () => {
      for (const room of ['a-1-b-2-c', 'a--b--c', 'a-x-y-b-z-c', 'a-b-b-b-c', 'a-c-b-a-c', 'a--b--b--c']) {
        expect({ room, status: await status(room) }).toEqual({ room, status: 200 })
      }
    })

    test('refuses a room missing a piece, with pieces overlapping or out of order, or text past an end', async () => {
      const missingAPiece = ['a-1-c', 'a-c', 'a-1-b-2', '1-b-2-c']
      const overlapping = ['a-b-c', 'a--b-c', 'a-b--c']
      const outOfOrderOrPastAnEnd = ['a-1-c-2-b', 'x-a-1-b-2-c', 'a-1-b-2-c-x']
      for (const room of [...missingAPiece, ...overlapping, ...outOfOrderOrPastAnEnd]) {
        expect({ room, status: await status(room) }).toEqual({ room, status: 403 })
      }
    })
  })

  describe(`${runtime}: a bad TOKEN_POLICY stops the server at start, naming the place in the JSON`, () => {
    const withRole = (role: object, top: object = {}) => JSON.stringify({ roles: { host: { rooms: ['*'], ...role } }, ...top })
    const cases: [string, string, RegExp][] = [
      ['not JSON', '{roles: host}', /^Configuration error: TOKEN_POLICY: is not JSON/m],
      ['an unknown grant key', withRole({ grants: { canPublsh: true } }), /^Configuration error: TOKEN_POLICY: roles\.host\.grants\.canPublsh is not a grant/m],
      ['an unknown role as the default', withRole({}, { defaultRole: 'guest' }), /^Configuration error: TOKEN_POLICY: defaultRole "guest" is not one of the roles \(host\)$/m],
      ['an unknown role setting', withRole({ grant: {} }), /^Configuration error: TOKEN_POLICY: roles\.host\.grant is not a role setting/m],
      ['a pattern with an unclosed {claim}', withRole({ rooms: ['*', 'team-{org-*'] }), /^Configuration error: TOKEN_POLICY: roles\.host\.rooms\.1 "team-\{org-\*" has a \{ or \}/m],
      ['a bad TTL', withRole({ ttl: '2 hours' }), /^Configuration error: TOKEN_POLICY: roles\.host\.ttl must be a positive duration/m],
      ['a roomConfig that is no RoomConfiguration', withRole({}, { roomConfig: { emptyTimeot: 300 } }), /^Configuration error: TOKEN_POLICY: roomConfig is not a RoomConfiguration: .*"emptyTimeot"/m],
      ["a role's roomConfig with a bad value", withRole({ roomConfig: { maxParticipants: 'many' } }), /^Configuration error: TOKEN_POLICY: roles\.host\.roomConfig is not a RoomConfiguration/m],
      ['a grant that is no boolean', withRole({ grants: { hidden: 'yes' } }), /^Configuration error: TOKEN_POLICY: roles\.host\.grants\.hidden must be true or false$/m],
      ['an unknown track source', withRole({ grants: { canPublish: true, canPublishSources: ['webcam'] } }), /^Configuration error: TOKEN_POLICY: roles\.host\.grants\.canPublishSources\.0 must be one of camera/m],
    ]
    for (const [what, policy, message] of cases) {
      test(`refuses ${what}, with exit code 1 and one line`, async () => {
        const { code, output } = await runUntilExit(runtime, { ...baseEnv, TOKEN_POLICY: policy })
        expect(code).toBe(1)
        expect(output).toMatch(message)
        expect(output.trim().split('\n')).toHaveLength(1)
      })
    }
  })
}
