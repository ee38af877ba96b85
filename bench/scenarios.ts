// What is sent to each route, and what answer counts as the success measured: a round whose answers
// are anything else measures something else, so every sample is checked before the load.
import { signWebhook, verifyAccessToken, webhookEvent, type TokenClaims } from '../tests/livekit.ts'
import { credentials, type HttpRequest } from './harness.ts'

export type RouteKey = 'health' | 'openvidu' | 'standard' | 'webhook'

export interface Scenario {
  label: string
  /** Distinct requests are each sent once; otherwise the one request is repeated. */
  distinct: boolean
  requests(count: number): HttpRequest[]
  /** Why an answer is not the success this scenario measures, or undefined when it is. */
  wrongAnswer(status: number, json: any): string | undefined
}

const jsonPost = (body: unknown): HttpRequest => ({
  method: 'POST',
  path: '/token',
  contentType: 'application/json',
  body: JSON.stringify(body),
})

function tokenProblem(token: unknown, expect: (claims: TokenClaims) => boolean): string | undefined {
  try {
    return expect(verifyAccessToken(String(token), credentials)) ? undefined : 'the token lacks claims the request asked for'
  } catch (error) {
    return `the token does not verify: ${(error as Error).message}`
  }
}

/** The routes, in the order the tables list them. */
export const scenarios: Record<RouteKey, Scenario> = {
  health: {
    label: 'GET /health',
    distinct: false,
    requests: () => [{ method: 'GET', path: '/health' }],
    wrongAnswer: (status, json) => (status === 200 && json?.status === 'ok' ? undefined : `answered ${status}`),
  },
  openvidu: {
    label: 'POST /token (OpenVidu)',
    distinct: false,
    requests: () => [jsonPost({ roomName: 'bench-room', participantName: 'alice' })],
    wrongAnswer: (status, json) =>
      status !== 200 ? `answered ${status}` : tokenProblem(json?.token, (claims) => claims.sub === 'alice' && claims.video?.room === 'bench-room'),
  },
  standard: {
    label: 'POST /token (standard, with room_config)',
    distinct: false,
    requests: () => [
      jsonPost({
        room_name: 'bench-room',
        participant_identity: 'alice-id',
        participant_name: 'Alice',
        participant_metadata: '{"role":"speaker"}',
        participant_attributes: { team: 'blue', seat: '12' },
        room_config: { agents: [{ agent_name: 'bench-agent', metadata: 'm' }] },
      }),
    ],
    wrongAnswer: (status, json) =>
      status !== 200 || typeof json?.server_url !== 'string'
        ? `answered ${status}`
        : tokenProblem(json.participant_token, (claims) => claims.attributes?.team === 'blue' && claims.roomConfig !== undefined),
  },
  webhook: {
    label: 'POST /livekit/webhook',
    distinct: true,
    requests: signedWebhooks,
    // "duplicate" would mean the event was acknowledged without being handled.
    wrongAnswer: (status, json) => (status === 200 && json?.received === true ? undefined : `answered ${status} ${JSON.stringify(json)}`),
  },
}
export const routeKeys = Object.keys(scenarios) as RouteKey[]

/** Webhooks as a LiveKit server sends them: each its own event id, signed over its exact body. */
function signedWebhooks(count: number): HttpRequest[] {
  return Array.from({ length: count }, (_, i) => {
    const identity = `user-${i}`
    const body = JSON.stringify(
      webhookEvent('participant_joined', {
        participant: { sid: `PA_${i}`, identity, name: identity, state: 'ACTIVE', joinedAt: '1764000000' },
      }),
    )
    return {
      method: 'POST',
      path: '/livekit/webhook',
      contentType: 'application/webhook+json',
      authorization: signWebhook(body, credentials),
      body,
    }
  })
}
