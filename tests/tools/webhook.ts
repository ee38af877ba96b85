// `bun run webhook <event> [room] [identity]`: posts one event to the running server, signed as a LiveKit
// server signs it (see ../../../shared/livekit-wire.md), with the key the server is configured with: the
// configuration is read by the server's own loadConfig from this process's environment (and Bun's .env),
// so LIVEKIT_API_KEY/SECRET, their _FILE forms and LIVEKIT_KEYS all apply. Signed with node:crypto alone.
import { createHash, createHmac } from 'node:crypto'
import { parseArgs } from 'node:util'
import { ConfigError, loadConfig } from '../../index.ts'

const usage = `usage: bun run webhook <event> [room] [identity] [--url URL] [--id ID]

  event     room_started, participant_joined, track_published, egress_ended, agent_job_started, …
            (any other name is sent as given, with the fields its prefix suggests)
  room      the room's name (default room1)
  identity  the participant's identity (default alice); for agent_job_* the agent's name (default my-agent)
  --url     the server (its /livekit/webhook), or the whole webhook URL
            (default http://localhost:$SERVER_PORT, 6080 unless set)
  --id      the event id (default a fresh EV_…): send one twice to see the repeat acknowledged

Signed with the server's own key: LIVEKIT_API_KEY/LIVEKIT_API_SECRET (or *_FILE, or LIVEKIT_KEYS), from
the environment or .env, read exactly as the server reads them.`

/** The event names a LiveKit server sends (livekit/protocol, late 2026). */
export const eventNames = [
  'room_started', 'room_finished', 'participant_joined', 'participant_left', 'participant_connection_aborted',
  'track_published', 'track_unpublished', 'egress_started', 'egress_updated', 'egress_ended',
  'ingress_started', 'ingress_ended', 'agent_job_started', 'agent_job_ended',
]

const fail = (message: string, code = 1): never => {
  console.error(`webhook: ${message}`)
  process.exit(code)
}

/** A LiveKit-looking id (`RM_k7Bqr3sZ8dQm`): derived from `seed` when given, so one room keeps one sid. */
function sid(prefix: string, seed?: string): string {
  const bytes =
    seed === undefined ? crypto.getRandomValues(new Uint8Array(16)) : createHash('sha256').update(seed).digest()
  return `${prefix}_${Buffer.from(bytes).toString('base64url').replace(/[-_]/g, '').slice(0, 12)}`
}

/**
 * A WebhookEvent as a LiveKit server writes it: proto3 JSON, camelCase, 64-bit integers as decimal
 * strings, in the .proto's field order. The parts follow the name's prefix: room_* carries the room,
 * participant_* the room and participant, track_* those and the track, egress_* and ingress_* their info,
 * agent_job_* the job (with the room on the started one, and no top-level room).
 */
export function webhookBody(event: string, room: string, identity: string | undefined, id: string, nowMs = Date.now()) {
  const seconds = String(Math.floor(nowMs / 1000))
  const nanos = `${nowMs}000000`
  const ended = /_(finished|ended|left|aborted|unpublished)$/.test(event)
  const kind = /^(room|participant|track|egress|ingress|agent_job)_/.exec(event)?.[1] ?? 'room'
  const who = identity ?? (kind === 'agent_job' ? 'my-agent' : 'alice')
  const roomInfo = {
    sid: sid('RM', `room ${room}`),
    name: room,
    emptyTimeout: 300,
    departureTimeout: 20,
    creationTime: seconds,
    creationTimeMs: String(nowMs),
    ...(kind === 'participant' || kind === 'track' ? { numParticipants: ended ? 0 : 1 } : {}),
  }
  const participant = {
    sid: sid('PA', `participant ${room} ${who}`),
    identity: who,
    state: ended ? 'DISCONNECTED' : 'ACTIVE',
    joinedAt: seconds,
    joinedAtMs: String(nowMs),
    name: who,
    version: 2,
    permission: { canSubscribe: true, canPublish: true, canPublishData: true },
    isPublisher: kind === 'track',
    ...(event === 'participant_left' ? { disconnectReason: 'CLIENT_INITIATED' } : {}),
    ...(event === 'participant_connection_aborted' ? { disconnectReason: 'CONNECTION_TIMEOUT' } : {}),
  }
  const track = {
    sid: sid('TR', `track ${room} ${who}`),
    type: 'VIDEO',
    name: 'camera',
    width: 1280,
    height: 720,
    simulcast: true,
    source: 'CAMERA',
    mimeType: 'video/VP8',
    mid: '1',
  }
  const egressId = sid('EG', `egress ${room} ${who}`)
  const filename = `${egressId}.mp4`
  const file = { filename, startedAt: nanos, endedAt: nanos, duration: '0', size: '0', location: `/out/${filename}` }
  const egressInfo = {
    egressId,
    roomId: roomInfo.sid,
    roomName: room,
    status:
      { egress_started: 'EGRESS_STARTING', egress_updated: 'EGRESS_ACTIVE' }[event] ??
      (ended ? 'EGRESS_COMPLETE' : 'EGRESS_ACTIVE'),
    startedAt: nanos,
    ...(ended ? { endedAt: nanos } : {}),
    updatedAt: nanos,
    participant: { roomName: room, identity: who },
    ...(ended ? { fileResults: [file] } : {}),
  }
  const ingressId = sid('IN', `ingress ${room} ${who}`)
  const ingressInfo = {
    ingressId,
    name: `${who}'s stream`,
    streamKey: sid('SK', `stream key ${ingressId}`).slice(3),
    url: 'rtmp://localhost:1935/x',
    inputType: 'RTMP_INPUT',
    roomName: room,
    participantIdentity: who,
    participantName: who,
    state: {
      status: ended ? 'ENDPOINT_INACTIVE' : 'ENDPOINT_PUBLISHING',
      roomId: roomInfo.sid,
      startedAt: nanos,
      ...(ended ? { endedAt: nanos } : {}),
      updatedAt: nanos,
      resourceId: sid('RS', `resource ${ingressId}`),
    },
  }
  const jobId = sid('AJ', `job ${room} ${who}`)
  const job = {
    id: jobId,
    dispatchId: sid('AD', `dispatch ${room} ${who}`),
    type: 'JT_ROOM',
    ...(ended ? {} : { room: roomInfo }),
    agentName: who,
    state: {
      status: ended ? 'JS_SUCCESS' : 'JS_RUNNING',
      startedAt: nanos,
      ...(ended ? { endedAt: nanos } : {}),
      updatedAt: nanos,
      participantIdentity: `agent-${jobId}`,
    },
  }
  return {
    event,
    ...(kind === 'room' || kind === 'participant' || kind === 'track' ? { room: roomInfo } : {}),
    ...(kind === 'participant' || kind === 'track' ? { participant } : {}),
    ...(kind === 'egress' ? { egressInfo } : {}),
    ...(kind === 'ingress' ? { ingressInfo } : {}),
    ...(kind === 'track' ? { track } : {}),
    ...(kind === 'agent_job' ? { job } : {}),
    id,
    createdAt: seconds,
  }
}

const base64url = (text: string) => Buffer.from(text).toString('base64url')

/**
 * The Authorization header LiveKit sends with a body: the bare HS256 JWT, issuer the API key, valid
 * from now for five minutes, whose sha256 claim is the standard base64 of the SHA-256 of the body.
 */
export function signWebhook(
  body: string,
  apiKey: string,
  apiSecret: string,
  nowSeconds = Math.floor(Date.now() / 1000),
): string {
  const sha256 = createHash('sha256').update(body).digest('base64')
  const claims = { iss: apiKey, nbf: nowSeconds, exp: nowSeconds + 5 * 60, sha256 }
  const signingInput = `${base64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))}.${base64url(JSON.stringify(claims))}`
  return `${signingInput}.${createHmac('sha256', apiSecret).update(signingInput).digest('base64url')}`
}

/** Where to post: --url (a server's root gets /livekit/webhook), else localhost on the server's port. */
function webhookUrl(given: string | undefined, port: number): URL {
  if (given === undefined) {
    if (port === 0) fail('SERVER_PORT is 0 (a free port, known only to the server): pass --url http://localhost:<port>')
    return new URL(`http://localhost:${port}/livekit/webhook`)
  }
  const url = URL.canParse(given) ? new URL(given) : undefined
  if (!url || !/^https?:$/.test(url.protocol)) return fail(`--url must be an http:// or https:// URL, got "${given}"`)
  if (url.pathname === '/') url.pathname = '/livekit/webhook'
  return url
}

async function main() {
  let parsed
  try {
    parsed = parseArgs({
      allowPositionals: true,
      options: { url: { type: 'string' }, id: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
    })
  } catch (error) {
    return fail(`${(error as Error).message}\n${usage}`, 2)
  }
  const { values, positionals } = parsed
  if (values.help) return console.log(usage)
  const [event, room = 'room1', identity] = positionals
  if (!event || positionals.length > 3) return fail(`${event ? 'too many arguments' : 'which event?'}\n${usage}`, 2)

  let config
  try {
    config = loadConfig(process.env)
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error
    return fail(`configuration error: ${error.message}`)
  }
  const url = webhookUrl(values.url, config.port)
  if (!eventNames.includes(event)) {
    console.error(`note: "${event}" is not one of LiveKit's event names (${eventNames.join(', ')}); sent as given`)
  }

  const body = JSON.stringify(webhookBody(event, room, identity, values.id ?? sid('EV')))
  const headers = {
    'content-type': 'application/webhook+json',
    authorization: signWebhook(body, config.apiKey, config.apiSecret),
    'user-agent': 'livekit-bun-server webhook tool',
  }
  console.log(`POST ${url} (signed with API key "${config.apiKey}")\n${body}`)
  let response: Response
  try {
    response = await fetch(url, { method: 'POST', headers, body, signal: AbortSignal.timeout(10_000) })
  } catch (error) {
    const { code, message } = error as { code?: string; message?: string }
    return fail(`no answer from ${url}: ${code ?? message ?? String(error)} (is the server running there?)`)
  }
  const answer = await response.text()
  console.log(`${response.status} ${answer.length > 2000 ? `${answer.slice(0, 2000)}…` : answer}`)
  if (response.status === 401) {
    fail('refused (401): does the server use the same LIVEKIT_API_KEY and LIVEKIT_API_SECRET as here?')
  }
  if (!response.ok) fail(`the server answered ${response.status}`)
}

if (import.meta.main) await main()
