// POST /token under TOKEN_POLICY, in this process: which caller gets which grant in which room, for
// how long, with which room settings and agents; room patterns at their edges; a policy's mistakes
// refused by loadConfig, naming their place. Roles come from ID tokens (../identity-provider.ts).
import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { ConfigError, loadConfig, type TokenAsk, type TokenDecider } from '../../index'
import { testCredentials } from '../server'
import { verifyAccessToken, type TokenClaims } from '../livekit'
import { audience, idToken, issuer, makeKey, startIdentityProvider, type SigningKey } from '../identity-provider'
import { appWith, type TestApp } from './app'

const credentials = testCredentials()
const tokenTtl = 600
const baseEnv = {
  LIVEKIT_API_KEY: credentials.apiKey,
  LIVEKIT_API_SECRET: credentials.apiSecret,
  TOKEN_TTL: `${tokenTtl}s`,
}

const provider = startIdentityProvider()
const signing = {} as { key: SigningKey }
beforeAll(async () => {
  signing.key = await makeKey('policy-1', 'ES256')
  provider.state.published = [signing.key]
})
afterAll(() => provider.server.stop(true))

/** The app under the policy, with authentication by the provider above unless `open`. */
const policyApp = (policy: object, { open = false } = {}) =>
  appWith({
    ...baseEnv,
    TOKEN_POLICY: JSON.stringify(policy),
    ...(!open && { AUTH_JWKS_URL: provider.jwksUrl, AUTH_ISSUER: issuer, AUTH_AUDIENCE: audience }),
  })
const bearerWith = async (claims: Record<string, unknown>) => ({
  authorization: `Bearer ${await idToken(signing.key, claims)}`,
})

type Contract = 'openvidu' | 'standard'
const contracts: Contract[] = ['openvidu', 'standard']

/** A token request's body in either contract. */
function tokenRequest(contract: Contract, room: string | undefined, extra: Record<string, unknown> = {}) {
  if (contract === 'openvidu') return { roomName: room, participantName: 'typed-name', ...extra }
  return { ...(room !== undefined && { room_name: room }), participant_name: 'typed-name', ...extra }
}

/** The status, and the token's claims (verified as LiveKit does) or the error message. */
async function askToken(app: TestApp, body: object, headers: Record<string, string> = {}) {
  const answer = await app.postJson('/token', body, headers)
  const json = answer.json()
  const token = json.token ?? json.participant_token
  const claims: TokenClaims | undefined = token ? verifyAccessToken(token, credentials) : undefined
  return { status: answer.status, claims, errorMessage: json.errorMessage as string | undefined }
}

const ttlOf = (claims: TokenClaims | undefined) => claims!.exp - claims!.nbf
const agentsOf = (claims: TokenClaims | undefined) =>
  // A policy's own settings are written without their defaults (metadata ""), a request's with them.
  ((claims!.roomConfig?.agents ?? []) as { agentName: string; metadata?: string }[]).map(({ agentName, metadata }) => [
    agentName,
    metadata ?? '',
  ])
const notJoinable = (room: string) => `Room "${room}" is not one this caller may join`

// Keycloak's shape: roles under realm_access.roles, a default role, an agent the server dispatches.
const keycloakPolicy = {
  rolesClaim: 'realm_access.roles',
  defaultRole: 'viewer',
  roles: {
    member: {
      rooms: ['team-{org}/*', 'user-{sub}'],
      agents: ['transcriber'],
      grants: {
        canPublish: true,
        canPublishSources: ['camera', 'microphone', 'camera'],
        canSubscribe: true,
        canPublishData: true,
      },
    },
    host: {
      rooms: ['*'],
      ttl: '2h',
      agents: ['*'],
      grants: {
        canPublish: true,
        canSubscribe: true,
        canPublishData: true,
        roomAdmin: true,
        roomRecord: true,
        hidden: false,
      },
      roomConfig: { maxParticipants: 10 },
    },
    viewer: {
      rooms: ['webinar-*'],
      grants: { canPublish: false, canSubscribe: true, canPublishData: false, hidden: true },
    },
  },
  roomConfig: { emptyTimeout: 300, departureTimeout: 20, maxParticipants: 100, agents: [{ agentName: 'notetaker' }] },
}
const hostGrant = {
  roomJoin: true,
  canPublish: true,
  canSubscribe: true,
  canPublishData: true,
  roomAdmin: true,
  roomRecord: true,
}
const memberGrant = {
  roomJoin: true,
  canPublish: true,
  canPublishSources: ['camera', 'microphone'],
  canSubscribe: true,
  canPublishData: true,
}
const viewerGrant = { roomJoin: true, canPublish: false, canSubscribe: true, canPublishData: false, hidden: true }

describe('POST /token under a Keycloak-shaped policy (realm_access.roles, a default role)', () => {
  const app = policyApp(keycloakPolicy)
  const keycloak = (roles: string[] | undefined, claims: Record<string, unknown> = {}) =>
    bearerWith({ ...(roles && { realm_access: { roles } }), org: 'acme', ...claims })

  for (const contract of contracts) {
    test(`gives a host (${contract}) its grant in any room, its TTL, the room settings with its own`, async () => {
      const { status, claims } = await askToken(
        app,
        tokenRequest(contract, 'board'),
        await keycloak(['host', 'offline_access']),
      )
      expect(status).toBe(200)
      expect(claims!.video).toEqual({ ...hostGrant, room: 'board' })
      expect([ttlOf(claims), claims!.sub]).toEqual([7200, 'user-1'])
      expect(claims!.roomConfig).toMatchObject({ emptyTimeout: 300, departureTimeout: 20, maxParticipants: 10 })
      expect(agentsOf(claims)).toEqual([['notetaker', '']])
    })

    test(`gives a member (${contract}) camera and microphone in their organisation's rooms`, async () => {
      const { status, claims } = await askToken(
        app,
        tokenRequest(contract, 'team-acme/standup'),
        await keycloak(['member']),
      )
      expect(status).toBe(200)
      expect(claims!.video).toEqual({ ...memberGrant, room: 'team-acme/standup' })
      expect(ttlOf(claims)).toBe(tokenTtl)
      expect(claims!.roomConfig).toMatchObject({ emptyTimeout: 300, departureTimeout: 20, maxParticipants: 100 })
    })

    test(`lets a member (${contract}) into their user-{sub} room, not another's nor another org's`, async () => {
      const own = await askToken(app, tokenRequest(contract, 'user-user-1'), await keycloak(['member']))
      expect([own.status, own.claims?.video?.room]).toEqual([200, 'user-user-1'])
      for (const room of ['user-user-2', 'team-globex/standup', 'user-user-1x', 'xuser-user-1']) {
        const other = await askToken(app, tokenRequest(contract, room), await keycloak(['member']))
        expect([other.status, other.errorMessage, other.claims]).toEqual([403, notJoinable(room), undefined])
      }
    })

    test(`gives a caller with none of the policy's roles (${contract}) the default role: hidden viewer`, async () => {
      for (const headers of [await keycloak(['offline_access']), await keycloak(undefined), await keycloak([])]) {
        const webinar = await askToken(app, tokenRequest(contract, 'webinar-42'), headers)
        expect([webinar.status, webinar.claims?.video]).toEqual([200, { ...viewerGrant, room: 'webinar-42' }])
        const team = await askToken(app, tokenRequest(contract, 'team-acme/standup'), headers)
        expect([team.status, team.errorMessage]).toEqual([403, notJoinable('team-acme/standup')])
      }
    })

    test(`grants a member who is also a viewer (${contract}) what the roles allowing the room give`, async () => {
      const headers = await keycloak(['member', 'viewer'])
      expect((await askToken(app, tokenRequest(contract, 'webinar-42'), headers)).claims!.video).toEqual({
        ...viewerGrant,
        room: 'webinar-42',
      })
      expect((await askToken(app, tokenRequest(contract, 'team-acme/x'), headers)).claims!.video).toEqual({
        ...memberGrant,
        room: 'team-acme/x',
      })
    })

    test(`grants a host who is also a member (${contract}) both grants, any source, the longer TTL`, async () => {
      for (const roles of [
        ['member', 'host'],
        ['host', 'member'],
      ]) {
        const { status, claims } = await askToken(app, tokenRequest(contract, 'team-acme/x'), await keycloak(roles))
        expect(status).toBe(200)
        expect(claims!.video).toEqual({ ...hostGrant, room: 'team-acme/x' })
        expect(ttlOf(claims)).toBe(7200)
        expect(claims!.roomConfig).toMatchObject({ emptyTimeout: 300, maxParticipants: 10 })
      }
    })

    test(`matches {org} only when the claim is a room-name piece of 1 to 128 characters (${contract})`, async () => {
      for (const org of ['acme corp', '', ['acme'], 42, 'a'.repeat(129), 'a/b', 'é']) {
        const room = `team-${org}/x`
        const { status } = await askToken(app, tokenRequest(contract, room), await keycloak(['member'], { org }))
        expect([org, status]).toEqual([org, 403])
      }
      for (const org of ['a'.repeat(128), 'auth0|5f7c:x+y=z', 'ada@example.test', 'a.b_c-d']) {
        const { status } = await askToken(
          app,
          tokenRequest(contract, `team-${org}/x`),
          await keycloak(['member'], { org }),
        )
        expect([org, status]).toEqual([org, 200])
      }
    })
  }

  test('makes a member without room_name their user-{sub} room (the first pattern with no *)', async () => {
    const { status, claims } = await askToken(app, {}, await keycloak(['member']))
    expect([status, claims?.video]).toEqual([200, { ...memberGrant, room: 'user-user-1' }])
  })

  test('makes a host without room_name a fresh room-… each time ("*" allows it)', async () => {
    const [first, second] = [
      await askToken(app, {}, await keycloak(['host'])),
      await askToken(app, {}, await keycloak(['host'])),
    ]
    expect(first.claims!.video?.room).toMatch(/^room-[0-9a-f]{12}$/)
    expect(second.claims!.video?.room).not.toBe(first.claims!.video?.room)
  })

  test('makes a viewer who is also a host a room-… without room_name: one role allowing it is enough', async () => {
    const { status, claims } = await askToken(app, {}, await keycloak(['viewer', 'host']))
    expect([status, claims?.video?.room]).toEqual([200, expect.stringMatching(/^room-[0-9a-f]{12}$/)])
  })

  test("sends an empty room_config as the policy's own settings, written without their defaults", async () => {
    const { status, claims } = await askToken(
      app,
      { room_name: 'team-acme/x', room_config: {} },
      await keycloak(['member']),
    )
    expect(status).toBe(200)
    expect(Object.keys(claims!.roomConfig!).sort()).toEqual([
      'agents',
      'departureTimeout',
      'emptyTimeout',
      'maxParticipants',
    ])
  })

  test('refuses a viewer without room_name: no room of theirs can be made', async () => {
    const { status, errorMessage } = await askToken(app, {}, await keycloak(['viewer']))
    expect([status, errorMessage]).toEqual([
      403,
      'room_name is required: the token policy makes no room for this caller',
    ])
  })

  test("adds the agents a member may dispatch to the server's own", async () => {
    const body = {
      room_name: 'team-acme/x',
      room_config: { agents: [{ agent_name: 'transcriber', metadata: '{"lang":"fr"}' }] },
    }
    const { status, claims } = await askToken(app, body, await keycloak(['member']))
    expect(status).toBe(200)
    expect(agentsOf(claims)).toEqual([
      ['notetaker', ''],
      ['transcriber', '{"lang":"fr"}'],
    ])
    expect(claims!.roomConfig).toMatchObject({ emptyTimeout: 300, maxParticipants: 100 })
  })

  test('leaves the policy untouched by what a request adds: the next token has only the server agent', async () => {
    const body = { room_name: 'team-acme/x', room_config: { agents: [{ agent_name: 'transcriber' }] } }
    await askToken(app, body, await keycloak(['member']))
    const { claims } = await askToken(app, { room_name: 'team-acme/x' }, await keycloak(['member']))
    expect(agentsOf(claims)).toEqual([['notetaker', '']])
  })

  test('refuses an agent the role does not list, naming it; a role listing "*" dispatches any', async () => {
    const asking = (room: string, agent: string) => ({
      room_name: room,
      room_config: { agents: [{ agent_name: agent }] },
    })
    const member = await askToken(app, asking('team-acme/x', 'translator'), await keycloak(['member']))
    expect([member.status, member.errorMessage]).toEqual([
      403,
      'Agent "translator" is not one this caller may dispatch',
    ])
    const viewer = await askToken(app, asking('webinar-1', 'transcriber'), await keycloak(['viewer']))
    expect([viewer.status, viewer.errorMessage]).toEqual([
      403,
      'Agent "transcriber" is not one this caller may dispatch',
    ])
    const both = await askToken(app, asking('team-acme/x', 'anything'), await keycloak(['member', 'host']))
    expect(both.status).toBe(200)
  })

  test("counts the server's agents within the bound of 8", async () => {
    const agents = (count: number) => Array.from({ length: count }, (_, i) => ({ agent_name: `agent-${i}` }))
    expect(
      (await askToken(app, { room_name: 'x', room_config: { agents: agents(7) } }, await keycloak(['host']))).status,
    ).toBe(200)
    const { status, errorMessage } = await askToken(
      app,
      { room_name: 'x', room_config: { agents: agents(8) } },
      await keycloak(['host']),
    )
    expect([status, errorMessage]).toEqual([
      403,
      'room_config may request at most 7 agents besides the 1 the server dispatches',
    ])
  })
})

describe('POST /token under a policy whose server agents carry metadata', () => {
  const serverMetadata = 'm'.repeat(1000)
  const app = policyApp({
    roles: {
      host: { rooms: ['*'], agents: ['*'], roomConfig: { agents: [{ agentName: 'a', metadata: serverMetadata }] } },
    },
  })

  test("counts the server's agent metadata within the 64 KiB a request may add to", async () => {
    const headers = await bearerWith({ roles: ['host'] })
    const asked = (bytes: number) => ({
      room_name: 'r',
      room_config: { agents: [{ agent_name: 'b', metadata: 'x'.repeat(bytes) }] },
    })
    const fits = await askToken(app, asked(64 * 1024 - 1000), headers)
    expect([fits.status, agentsOf(fits.claims).map(([name]) => name)]).toEqual([200, ['a', 'b']])
    const { status, errorMessage } = await askToken(app, asked(64 * 1024 - 999), headers)
    expect([status, errorMessage]).toEqual([
      403,
      "room_config agent metadata and attributes must be at most 65536 bytes in all, with the server's",
    ])
  })
})

describe('POST /token under an Auth0-shaped policy (a namespaced roles claim, no default role)', () => {
  const app = policyApp({
    rolesClaim: 'https://my-app.com/roles',
    roles: {
      admin: { rooms: ['*'], grants: { canPublish: true, canSubscribe: true, canPublishData: true, roomAdmin: true } },
      student: {
        rooms: ['class-{https://my-app.com/school}/*'],
        ttl: '45m',
        grants: { canSubscribe: true, canPublishData: true },
      },
    },
  })
  const auth0 = (claims: Record<string, unknown>) => bearerWith({ sub: 'auth0|5f7c8ec7c33c6c004bbafe82', ...claims })

  for (const contract of contracts) {
    test(`gives an admin (${contract}) the admin grant in any room, without room settings`, async () => {
      const { status, claims } = await askToken(
        app,
        tokenRequest(contract, 'anywhere'),
        await auth0({ 'https://my-app.com/roles': ['admin'] }),
      )
      expect(status).toBe(200)
      const grant = {
        roomJoin: true,
        room: 'anywhere',
        canPublish: true,
        canSubscribe: true,
        canPublishData: true,
        roomAdmin: true,
      }
      expect([claims!.video, claims!.sub, claims!.roomConfig]).toEqual([
        grant,
        'auth0|5f7c8ec7c33c6c004bbafe82',
        undefined,
      ])
    })

    test(`lets a student (${contract}) into their school's classes, by a namespaced claim, for 45 min`, async () => {
      const headers = await auth0({
        'https://my-app.com/roles': ['student'],
        'https://my-app.com/school': 'lycee-hugo',
      })
      const { status, claims } = await askToken(app, tokenRequest(contract, 'class-lycee-hugo/maths'), headers)
      expect(status).toBe(200)
      const grant = {
        roomJoin: true,
        room: 'class-lycee-hugo/maths',
        canPublish: false,
        canSubscribe: true,
        canPublishData: true,
      }
      expect([claims!.video, ttlOf(claims)]).toEqual([grant, 45 * 60])
      const elsewhere = await askToken(app, tokenRequest(contract, 'class-other/maths'), headers)
      expect([elsewhere.status, elsewhere.errorMessage]).toEqual([403, notJoinable('class-other/maths')])
    })

    test(`refuses a caller without a role (${contract}) when the policy has no default role`, async () => {
      for (const claims of [
        {},
        { 'https://my-app.com/roles': [] },
        { 'https://my-app.com/roles': ['teacher'] },
        { roles: ['admin'] },
      ]) {
        const { status, errorMessage } = await askToken(app, tokenRequest(contract, 'anywhere'), await auth0(claims))
        expect([status, errorMessage]).toEqual([403, 'The token policy gives this caller no role'])
      }
    })
  }
})

describe('POST /token under a policy reading a plain roles claim', () => {
  const app = policyApp({
    roles: {
      speaker: {
        rooms: ['stage'],
        grants: { canPublish: true, canPublishSources: ['microphone'], canSubscribe: true },
      },
      listener: { rooms: ['stage'], ttl: '8h', grants: { canSubscribe: true } },
      crew: {
        rooms: ['stage'],
        grants: { canPublish: true, canPublishSources: ['screen_share', 'screen_share_audio'] },
      },
      presenter: { rooms: ['stage'], grants: { canPublish: true } },
      nobody: { rooms: ['stage'] },
      dispatcher: { rooms: ['stage'], agents: ['*'] },
    },
  })
  const as = async (roles: unknown) => askToken(app, { room_name: 'stage' }, await bearerWith({ roles }))

  test('reads roles as an array or a single string', async () => {
    for (const roles of [['speaker'], 'speaker']) {
      const grant = {
        roomJoin: true,
        room: 'stage',
        canPublish: true,
        canPublishSources: ['microphone'],
        canSubscribe: true,
        canPublishData: false,
      }
      expect((await as(roles)).claims!.video).toEqual(grant)
    }
    const listener = await as('listener')
    expect(listener.claims!.video).toEqual({
      roomJoin: true,
      room: 'stage',
      canPublish: false,
      canSubscribe: true,
      canPublishData: false,
    })
    expect(ttlOf(listener.claims)).toBe(8 * 3600)
  })

  test('gives a role without grants none: LiveKit would take a missing one for true', async () => {
    expect((await as(['nobody'])).claims!.video).toEqual({
      roomJoin: true,
      room: 'stage',
      canPublish: false,
      canSubscribe: false,
      canPublishData: false,
    })
  })

  test('refuses roles that are neither text nor a list of it', async () => {
    for (const roles of [{ speaker: true }, 7, null]) expect((await as(roles)).status).toBe(403)
  })

  test('limits sources for several publishing roles only if each limits them, to all they list', async () => {
    const video = async (roles: string[]) => (await as(roles)).claims!.video
    expect((await video(['speaker', 'crew']))!.canPublishSources).toEqual([
      'microphone',
      'screen_share',
      'screen_share_audio',
    ])
    expect((await video(['speaker', 'presenter']))!.canPublishSources).toBeUndefined()
    expect(await video(['speaker', 'listener'])).toEqual({
      roomJoin: true,
      room: 'stage',
      canPublish: true,
      canPublishSources: ['microphone'],
      canSubscribe: true,
      canPublishData: false,
    })
    expect(ttlOf((await as(['speaker', 'listener'])).claims)).toBe(8 * 3600)
    expect((await video(['listener', 'nobody']))!.canPublishSources).toBeUndefined()
  })

  test('dispatches the agents asked for when neither the role nor the policy has room settings', async () => {
    const body = { room_name: 'stage', room_config: { agents: [{ agent_name: 'helper', metadata: 'm' }] } }
    const { status, claims } = await askToken(app, body, await bearerWith({ roles: ['dispatcher'] }))
    expect([status, agentsOf(claims)]).toEqual([200, [['helper', 'm']]])
  })

  test('makes a speaker without room_name the one room the role names', async () => {
    const { status, claims } = await askToken(app, {}, await bearerWith({ roles: ['speaker'] }))
    expect([status, claims?.video?.room]).toEqual([200, 'stage'])
  })
})

describe('POST /token under a policy without authentication', () => {
  const app = policyApp(
    { defaultRole: 'guest', roles: { guest: { rooms: ['lobby-*'], grants: { canSubscribe: true } } } },
    { open: true },
  )

  for (const contract of contracts) {
    test(`gives every caller (${contract}) the default role, in its rooms only`, async () => {
      const lobby = await askToken(app, tokenRequest(contract, 'lobby-1'))
      const grant = { roomJoin: true, room: 'lobby-1', canPublish: false, canSubscribe: true, canPublishData: false }
      expect([lobby.status, lobby.claims?.video]).toEqual([200, grant])
      const other = await askToken(app, tokenRequest(contract, 'backstage'))
      expect([other.status, other.errorMessage]).toEqual([403, notJoinable('backstage')])
    })
  }

  test('keeps the identities a caller names when no one is authenticated', async () => {
    expect((await askToken(app, { roomName: 'lobby-1', participantName: 'ada' })).claims!.sub).toBe('ada')
    expect((await askToken(app, { room_name: 'lobby-1', participant_identity: 'grace' })).claims!.sub).toBe('grace')
  })

  test('refuses a standard request without room_name when no pattern allows a made-up room', async () => {
    const { status, errorMessage } = await askToken(app, {})
    expect([status, errorMessage]).toEqual([
      403,
      'room_name is required: the token policy makes no room for this caller',
    ])
  })

  test('refuses every caller when the policy has no default role', async () => {
    const closed = policyApp({ roles: { guest: { rooms: ['*'] } } }, { open: true })
    expect(await askToken(closed, tokenRequest('openvidu', 'r'))).toEqual({
      status: 403,
      claims: undefined,
      errorMessage: 'The token policy gives this caller no role',
    })
  })
})

describe('POST /token under TOKEN_POLICY, room patterns at their edges', () => {
  const app = policyApp({
    roles: {
      stars: { rooms: ['x*y*z', 'ab*ba', '*core*', 'a*b*c*d', 'e*ff*f*g'] },
      claims: { rooms: ['team-{org}/*', '{org}/{dept.name}', 'pre-*/{sub}/*-post', 'exact', 'hall #{org}'] },
      teams: { rooms: ['{team}/*', '*/{team}', 'mid-*/{team}/*-end'] },
      made: { rooms: ['lobby-*', 'room-*'] },
    },
  })
  const statusFor = async (role: string, room: string, claims: Record<string, unknown> = {}) =>
    (
      await askToken(
        app,
        { room_name: room },
        await bearerWith({ roles: [role], org: 'acme', dept: { name: 'ops' }, sub: 'u1', ...claims }),
      )
    ).status

  const starRooms: [string, number][] = [
    ['xyz', 200],
    ['x-y-z', 200],
    ['xyyzz', 200],
    ['xz', 403],
    ['xzy', 403],
    ['yxz', 403],
    ['xy', 403],
    ['abba', 200],
    ['ab-ba', 200],
    ['aba', 403],
    ['ab', 403],
    ['ba', 403],
    ['core', 200],
    ['a-core-b', 200],
    ['cor', 403],
    ['abcd', 200],
    ['a-b-c-d', 200],
    ['acbd', 403],
    ['abdc', 403],
    ['efffg', 200],
    ['eff-fg', 200],
    ['effg', 403],
  ]
  for (const [room, status] of starRooms) {
    test(`"${room}" against x*y*z, ab*ba, *core*, a*b*c*d and e*ff*f*g: ${status}`, async () => {
      expect(await statusFor('stars', room)).toBe(status)
    })
  }

  const claimRooms: [string, number][] = [
    ['team-acme/1', 200],
    ['team-acme/', 200],
    ['team-acm/1', 403],
    ['team-acme', 403],
    ['acme/ops', 200],
    ['acme/opsx', 403],
    ['xacme/ops', 403],
    ['pre-a/u1/b-post', 200],
    ['pre-/u1/-post', 200],
    ['pre-x/u1/-post', 200],
    ['pre-x/u1-post', 403],
    ['pre-u1-post', 403],
    ['pre-/u2/-post', 403],
    ['pre-/u1/-pos', 403],
    ['exact', 200],
    ['exactx', 403],
    ['hall #acme', 200],
    ['hall #acm', 403],
  ]
  const claimPatterns = 'team-{org}/*, {org}/{dept.name}, pre-*/{sub}/*-post, exact, hall #{org}'
  for (const [room, status] of claimRooms) {
    test(`"${room}" against ${claimPatterns}: ${status}`, async () => {
      expect(await statusFor('claims', room)).toBe(status)
    })
  }

  test('reads a claim named with a dot by its full name before its path', async () => {
    expect(await statusFor('claims', 'acme/sales', { 'dept.name': 'sales' })).toBe(200)
    expect(await statusFor('claims', 'acme/ops', { 'dept.name': 'sales' })).toBe(403)
  })

  test('matches no pattern whose claim is missing, or reached through something not an object', async () => {
    expect(await statusFor('claims', 'acme/ops', { dept: undefined })).toBe(403)
    expect(await statusFor('claims', 'acme/ops', { dept: ['ops'] })).toBe(403)
    expect(await statusFor('claims', 'acme/ops', { dept: 'ops' })).toBe(403)
    expect(await statusFor('claims', 'team-undefined/1', { org: undefined })).toBe(403)
  })

  test('matches a {claim} first, last or between *s when the claim is there, and not when missing', async () => {
    const rooms = ['blue/1', 'a/blue', 'mid-/blue/-end']
    for (const room of rooms) expect([room, await statusFor('teams', room, { team: 'blue' })]).toEqual([room, 200])
    for (const room of rooms.map((room) => room.replace('blue', 'undefined'))) {
      expect([room, await statusFor('teams', room)]).toEqual([room, 403])
    }
  })

  test("makes a room-… without room_name when any one of the role's patterns allows it", async () => {
    const { status, claims } = await askToken(app, {}, await bearerWith({ roles: ['made'] }))
    expect([status, claims?.video?.room]).toEqual([200, expect.stringMatching(/^room-[0-9a-f]{12}$/)])
  })

  test('makes a room without room_name from the first one-run pattern whose claims are all there', async () => {
    const room = async (claims: Record<string, unknown>) =>
      (await askToken(app, {}, await bearerWith({ roles: ['claims'], org: 'acme', dept: { name: 'ops' }, ...claims })))
        .claims?.video?.room
    expect(await room({})).toBe('acme/ops')
    expect(await room({ dept: {} })).toBe('exact')
    expect(await room({ org: 'not a piece' })).toBe('exact')
  })
})

describe('POST /token with a TokenDecider of the app’s own (createApp’s third argument)', () => {
  test('hands it the contract, room, identity and agents asked for, and answers 403 with its refusal', async () => {
    const asked: TokenAsk[] = []
    const decide: TokenDecider = async (caller, ask) => {
      asked.push(ask)
      if (ask.room === 'closed') return { refused: 'Closed for today' }
      return { room: `app-${ask.room ?? 'made'}`, grant: { canSubscribe: true }, ttlSeconds: 60 }
    }
    const app = appWith(baseEnv, { decide })
    const openVidu = await askToken(app, { roomName: 'r1', participantName: 'ada' })
    expect([openVidu.claims?.video, ttlOf(openVidu.claims)]).toEqual([
      { roomJoin: true, room: 'app-r1', canSubscribe: true },
      60,
    ])
    const standard = await askToken(app, {
      participant_identity: 'grace',
      room_config: { agents: [{ agent_name: 'helper' }] },
    })
    expect(standard.claims?.video?.room).toBe('app-made')
    expect(await askToken(app, { room_name: 'closed' })).toMatchObject({
      status: 403,
      errorMessage: 'Closed for today',
    })
    expect(asked.map(({ contract, room, identity }) => [contract, room, identity])).toEqual([
      ['openvidu', 'r1', 'ada'],
      ['standard', undefined, 'grace'],
      ['standard', 'closed', expect.stringMatching(/^participant-/)],
    ])
    expect(asked[1]!.roomConfig?.agents.map((agent) => agent.agentName)).toEqual(['helper'])
  })
})

describe('loadConfig refuses a bad TOKEN_POLICY, naming the place in the JSON', () => {
  const withRole = (role: object, top: object = {}) =>
    JSON.stringify({ roles: { host: { rooms: ['*'], ...role } }, ...top })
  const cases: [string, string, string | RegExp][] = [
    ['not JSON', '{roles: host}', /^TOKEN_POLICY: is not JSON \(/],
    ['a JSON array', '[]', 'TOKEN_POLICY: must be a JSON object'],
    ['no roles', '{}', 'TOKEN_POLICY: roles is required'],
    ['no role at all', '{"roles":{}}', 'TOKEN_POLICY: roles must be an object of 1 to 256 roles'],
    [
      'an unknown top-level key',
      withRole({}, { role: {} }),
      /^TOKEN_POLICY: role is not a policy setting \(rolesClaim, defaultRole, roles, roomConfig\)$/,
    ],
    [
      'an unknown grant key',
      withRole({ grants: { canPublsh: true } }),
      /^TOKEN_POLICY: roles\.host\.grants\.canPublsh is not a grant \(the grants: canPublish, /,
    ],
    [
      'an unknown role as the default',
      withRole({}, { defaultRole: 'guest' }),
      'TOKEN_POLICY: defaultRole "guest" is not one of the roles (host)',
    ],
    [
      'an unknown role setting',
      withRole({ grant: {} }),
      'TOKEN_POLICY: roles.host.grant is not a role setting (rooms, grants, agents, ttl, roomConfig)',
    ],
    ['a role without rooms', '{"roles":{"host":{}}}', 'TOKEN_POLICY: roles.host.rooms is required'],
    [
      'a role with an empty name',
      '{"roles":{" ":{"rooms":["*"]}}}',
      'TOKEN_POLICY: roles has a role with an empty name',
    ],
    [
      'an empty rooms list',
      withRole({ rooms: [] }),
      'TOKEN_POLICY: roles.host.rooms must be a list of 1 to 256 room patterns',
    ],
    [
      'an empty pattern',
      withRole({ rooms: [''] }),
      'TOKEN_POLICY: roles.host.rooms.0 must be a room pattern of 1 to 256 characters',
    ],
    [
      'a pattern with an unclosed {claim}',
      withRole({ rooms: ['*', 'team-{org-*'] }),
      'TOKEN_POLICY: roles.host.rooms.1 "team-{org-*" has a { or } that opens or closes no {claim}',
    ],
    [
      'a pattern with a stray }',
      withRole({ rooms: ['team}'] }),
      'TOKEN_POLICY: roles.host.rooms.0 "team}" has a { or } that opens or closes no {claim}',
    ],
    [
      'a pattern with an empty {}',
      withRole({ rooms: ['team-{ }'] }),
      'TOKEN_POLICY: roles.host.rooms.0 "team-{ }" has an empty {}',
    ],
    [
      'a bad TTL',
      withRole({ ttl: '2 hours' }),
      'TOKEN_POLICY: roles.host.ttl must be a positive duration such as 600, 10m or 6h (at most 366d), got "2 hours"',
    ],
    ['a TTL past 366 days', withRole({ ttl: '367d' }), /^TOKEN_POLICY: roles\.host\.ttl must be a positive duration/],
    [
      'a roomConfig that is no RoomConfiguration',
      withRole({}, { roomConfig: { emptyTimeot: 300 } }),
      /^TOKEN_POLICY: roomConfig is not a RoomConfiguration: .*"emptyTimeot"/,
    ],
    [
      "a role's roomConfig with a bad value",
      withRole({ roomConfig: { maxParticipants: 'many' } }),
      /^TOKEN_POLICY: roles\.host\.roomConfig is not a RoomConfiguration/,
    ],
    [
      'a roomConfig naming the room',
      withRole({}, { roomConfig: { name: 'r' } }),
      "TOKEN_POLICY: roomConfig.name is the request's to say, not the policy's",
    ],
    [
      'a roomConfig of 9 agents',
      withRole({}, { roomConfig: { agents: Array(9).fill({ agentName: 'a' }) } }),
      'TOKEN_POLICY: roomConfig.agents may list at most 8 agents',
    ],
    [
      "a role's roomConfig of agents with over 64 KiB of metadata",
      withRole({ roomConfig: { agents: [{ agentName: 'a', metadata: 'm'.repeat(65537) }] } }),
      'TOKEN_POLICY: roles.host.roomConfig.agents metadata and attributes must be at most 65536 bytes in all',
    ],
    [
      'a grant that is no boolean',
      withRole({ grants: { hidden: 'yes' } }),
      'TOKEN_POLICY: roles.host.grants.hidden must be true or false',
    ],
    [
      'an unknown track source',
      withRole({ grants: { canPublish: true, canPublishSources: ['webcam'] } }),
      /^TOKEN_POLICY: roles\.host\.grants\.canPublishSources\.0 must be one of camera, /,
    ],
    [
      'sources without canPublish',
      withRole({ grants: { canPublishSources: ['camera'] } }),
      'TOKEN_POLICY: roles.host.grants.canPublishSources needs canPublish: true',
    ],
    [
      'a rolesClaim that is empty',
      withRole({}, { rolesClaim: '' }),
      'TOKEN_POLICY: rolesClaim must be the name of a claim',
    ],
    ['a misspelt key beside a missing one', '{"role":{}}', /^TOKEN_POLICY: role is not a policy setting/],
    [
      'a key with a slash in a role name',
      '{"roles":{"a/b":{"rooms":["*"],"bogus":1}}}',
      /^TOKEN_POLICY: roles\.a\/b\.bogus is not a role setting/,
    ],
  ]
  for (const [what, policy, message] of cases) {
    test(`refuses ${what}`, () => {
      let error: unknown
      try {
        loadConfig({ ...baseEnv, TOKEN_POLICY: policy })
      } catch (caught) {
        error = caught
      }
      expect(error).toBeInstanceOf(ConfigError)
      if (typeof message === 'string') expect((error as Error).message).toBe(message)
      else expect((error as Error).message).toMatch(message)
    })
  }

  test('takes every track source, and TOKEN_TTL for a role without ttl', async () => {
    const sources = ['camera', 'microphone', 'screen_share', 'screen_share_audio']
    const app = policyApp(
      {
        defaultRole: 'all',
        roles: { all: { rooms: ['*'], grants: { canPublish: true, canPublishSources: sources } } },
      },
      { open: true },
    )
    const { claims } = await askToken(app, { room_name: 'r' })
    expect([claims!.video?.canPublishSources, ttlOf(claims)]).toEqual([sources, tokenTtl])
  })
})
