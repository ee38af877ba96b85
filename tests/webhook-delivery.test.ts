// How /livekit/webhook handles delivery: dispatch by event name, redeliveries, failing handlers.
import { describe, expect, setDefaultTimeout, test } from 'bun:test'
import { RecentIds, webhookHandlers } from '../index'
import { assertNoLeaks, httpClient, infoLinesCaughtUp, runtimeNames, serveDuringTests, sourceRuntimes, testCredentials, waitForLog } from './server'
import { signWebhook, webhookEvent } from './livekit'

// Real servers, browsers and Redis start here: 30 s a test (bunfig's [test] timeout is not read by Bun 1.4).
setDefaultTimeout(30_000)

const credentials = testCredentials()

const postSigned = (http: ReturnType<typeof httpClient>, event: Record<string, unknown>) => {
  const body = JSON.stringify(event)
  return http.request('/livekit/webhook', {
    method: 'POST',
    headers: { 'content-type': 'application/webhook+json', authorization: signWebhook(body, credentials) },
    body,
  })
}

const eventsByName: Record<string, Record<string, unknown>> = {
  room_started: {},
  room_finished: {},
  participant_joined: { participant: { sid: 'PA_1', identity: 'alice' } },
  participant_left: { participant: { sid: 'PA_1', identity: 'alice' } },
  participant_connection_aborted: { participant: { sid: 'PA_1', identity: 'alice' } },
  track_published: { participant: { sid: 'PA_1', identity: 'alice' }, track: { sid: 'TR_1', type: 'VIDEO' } },
  track_unpublished: { participant: { sid: 'PA_1', identity: 'alice' }, track: { sid: 'TR_1', type: 'VIDEO' } },
  egress_started: { egressInfo: { egressId: 'EG_1', roomName: 'room1' } },
  egress_updated: { egressInfo: { egressId: 'EG_1', roomName: 'room1' } },
  egress_ended: { egressInfo: { egressId: 'EG_1', roomName: 'room1' } },
  ingress_started: { ingressInfo: { ingressId: 'IN_1', roomName: 'room1' } },
  ingress_ended: { ingressInfo: { ingressId: 'IN_1', roomName: 'room1' } },
}

// LiveKit's agent events (2026-08): a `job`, and no top-level room (the job's room, on the first only).
const agentEvents: Record<string, Record<string, unknown>> = {
  agent_job_started: { job: { id: 'AJ_1', type: 'JT_ROOM', agentName: 'transcriber', state: { status: 'JS_RUNNING' }, room: { sid: 'RM_1', name: 'room1' } } },
  agent_job_ended: { job: { id: 'AJ_1', type: 'JT_ROOM', agentName: 'transcriber', state: { status: 'JS_SUCCESS' } } },
}

test('the dispatch table has a handler for each of the fourteen LiveKit event names', () => {
  expect(Object.keys(webhookHandlers).sort()).toEqual([...Object.keys(eventsByName), ...Object.keys(agentEvents)].sort())
})

for (const runtime of runtimeNames) {
  describe(`${runtime}: POST /livekit/webhook delivery`, () => {
    const running = serveDuringTests(runtime, { LIVEKIT_API_KEY: credentials.apiKey, LIVEKIT_API_SECRET: credentials.apiSecret })

    const handledLines = (id: unknown) => running.server.logs().filter((entry) => entry.id === id && entry.msg === 'webhook')

    for (const [name, fields] of Object.entries(eventsByName)) {
      test(`handles ${name} and logs one JSON line naming what it is about`, async () => {
        const event = webhookEvent(name, fields)
        expect((await postSigned(running.http, event)).status).toBe(200)
        const [line] = await waitForLog(running.server, (entry) => entry.id === event.id)
        expect(line).toMatchObject({ level: 'info', msg: 'webhook', event: name, room: 'room1', id: event.id })
        const subject = { participant: 'alice', track: 'TR_1', egress: 'EG_1', ingress: 'IN_1' }
        if (fields.participant) expect(line!.participant).toBe(subject.participant)
        if (fields.track) expect(line!.track).toBe(subject.track)
        if (fields.egressInfo) expect(line!.egress).toBe(subject.egress)
        if (fields.ingressInfo) expect(line!.ingress).toBe(subject.ingress)
      })
    }

    for (const [name, fields] of Object.entries(agentEvents)) {
      test(`handles ${name} and logs the job, its agent and its room when it has one`, async () => {
        const { room: _, ...event } = webhookEvent(name, fields)
        expect((await postSigned(running.http, event)).status).toBe(200)
        const [line] = await waitForLog(running.server, (entry) => entry.id === event.id)
        const room = name === 'agent_job_started' ? { room: 'room1' } : {}
        expect(line).toMatchObject({ level: 'info', msg: 'webhook', event: name, job: 'AJ_1', agent: 'transcriber', ...room })
        if (name === 'agent_job_ended') expect(line).not.toHaveProperty('room')
      })
    }

    test('acknowledges an event name it does not know, and logs it', async () => {
      const event = webhookEvent('room_exploded')
      expect((await postSigned(running.http, event)).status).toBe(200)
      const [line] = await waitForLog(running.server, (entry) => entry.id === event.id)
      expect(line).toMatchObject({ event: 'room_exploded', msg: expect.stringContaining('unknown') })
    })

    test('acknowledges a redelivered event without handling it again, and logs it as a duplicate', async () => {
      const event = webhookEvent('participant_joined', { participant: { sid: 'PA_2', identity: 'bob' } })
      expect((await postSigned(running.http, event)).status).toBe(200)
      expect((await postSigned(running.http, event)).status).toBe(200)
      const [duplicate] = await waitForLog(running.server, (entry) => entry.id === event.id && entry.msg === 'webhook duplicate')
      expect(duplicate).toMatchObject({ event: 'participant_joined', id: event.id })
      expect(handledLines(event.id)).toHaveLength(1)
    })

    // proto3 JSON may use the .proto's names; without created_at (the event's own other spelling) beside
    // them, only the part's own name tells that the event must be decoded whole to be read right.
    const protoSpellings: [string, Record<string, unknown>, Record<string, string>][] = [
      [
        'egress_info, egress_id, room_name',
        { event: 'egress_started', egress_info: { egress_id: 'EG_9', room_name: 'room9' } },
        { room: 'room9', egress: 'EG_9' },
      ],
      [
        'ingress_info, ingress_id, room_name',
        { event: 'ingress_started', ingress_info: { ingress_id: 'IN_9', room_name: 'room9' } },
        { room: 'room9', ingress: 'IN_9' },
      ],
      [
        'egressInfo, egress_id, room_name',
        { event: 'egress_ended', egressInfo: { egress_id: 'EG_8', room_name: 'room8' } },
        { room: 'room8', egress: 'EG_8' },
      ],
    ]
    for (const [names, fields, subject] of protoSpellings) {
      test(`logs an event written with the .proto field names (${names}) as one written in camelCase`, async () => {
        const id = `EV_${crypto.randomUUID()}`
        expect((await postSigned(running.http, { ...fields, id })).status).toBe(200)
        const [line] = await waitForLog(running.server, (entry) => entry.id === id)
        expect(line).toMatchObject({ msg: 'webhook', event: fields.event, ...subject })
      })
    }

    test('refuses with 401 a signed event whose fields are not a WebhookEvent', async () => {
      const answer = await postSigned(running.http, { event: 'room_started', id: `EV_${crypto.randomUUID()}`, room: { name: 7 } })
      expect(answer.status).toBe(401)
    })

    test('handles every delivery of an event that has no id', async () => {
      const event = webhookEvent('room_started', { room: { sid: 'RM_noid', name: 'no-id-room' } })
      delete event.id
      expect((await postSigned(running.http, event)).status).toBe(200)
      expect((await postSigned(running.http, event)).status).toBe(200)
      const lines = await waitForLog(running.server, (entry) => entry.room === 'no-id-room' && entry.msg === 'webhook')
      await infoLinesCaughtUp(running.server, credentials)
      expect(running.server.logs().filter((entry) => entry.room === 'no-id-room' && entry.msg === 'webhook')).toHaveLength(2)
      expect(lines[0]!.id).toBeUndefined()
    })
  })
}

for (const runtime of sourceRuntimes) {
  describe(`${runtime}: POST /livekit/webhook with a handler that throws`, () => {
    // index.ts's createApp and startServer, with room_started replaced by a handler that fails once per event.
    const running = serveDuringTests(
      runtime,
      { LIVEKIT_API_KEY: credentials.apiKey, LIVEKIT_API_SECRET: credentials.apiSecret },
      { entry: 'tests/fixtures/custom-handlers-server.ts' },
    )

    test('answers 500 with a generic message, logs the error, and handles the redelivery once', async () => {
      const event = webhookEvent('room_started', { room: { sid: 'RM_flaky', name: 'flaky-room' } })
      const first = await postSigned(running.http, event)
      expect(first.status).toBe(500)
      expect(first.json()).toEqual({ errorMessage: 'Webhook handler failed' })
      expect(first.text).not.toContain('hunter2')
      const [failure] = await waitForLog(running.server, (entry) => entry.id === event.id && entry.msg === 'webhook handler failed')
      expect(failure).toMatchObject({ level: 'error', event: 'room_started', room: 'flaky-room', error: expect.stringContaining('database down') })
      // LiveKit's redelivery is handled, and a repeat after that is a duplicate.
      const redelivery = await postSigned(running.http, event)
      expect([redelivery.status, redelivery.json()]).toEqual([200, { received: true }])
      await waitForLog(running.server, (entry) => entry.id === event.id && entry.msg === 'webhook')
      const repeat = await postSigned(running.http, event)
      expect([repeat.status, repeat.json()]).toEqual([200, { received: 'duplicate' }])
      await waitForLog(running.server, (entry) => entry.id === event.id && entry.msg === 'webhook duplicate')
      expect(running.server.logs().filter((entry) => entry.id === event.id).map((entry) => entry.msg)).toEqual(['webhook handler failed', 'webhook', 'webhook duplicate'])
    })

    test("hands the app's own handler the whole event, decoded as the SDK's WebhookEvent", async () => {
      const event = webhookEvent('room_started', { room: { sid: 'RM_decoded', name: 'decoded-room', numParticipants: 3 } })
      expect((await postSigned(running.http, event)).status).toBe(200)
      const [line] = await waitForLog(running.server, (entry) => entry.id === event.id && entry.msg === 'handler saw')
      expect(line).toMatchObject({ decoded: true, createdAt: 'bigint', numParticipants: 3 })
    })

    test('keeps handling other events after a handler failed, with no stack trace or API secret in its log', async () => {
      const failing = webhookEvent('room_started', { room: { sid: 'RM_flaky', name: 'flaky-room' } })
      expect((await postSigned(running.http, failing)).status).toBe(500)
      await waitForLog(running.server, (entry) => entry.id === failing.id && entry.msg === 'webhook handler failed', 3000)
      const event = webhookEvent('room_started', { room: { sid: 'RM_fine', name: 'fine-room' } })
      expect((await postSigned(running.http, event)).status).toBe(200)
      await waitForLog(running.server, (entry) => entry.id === event.id && entry.msg === 'webhook')
      assertNoLeaks(`${runtime} server log`, running.server.lines.join('\n'), { tokensAllowed: false })
    })
  })
}

describe('RecentIds', () => {
  /** Claims the id and, when new, completes it: one delivery handled, as the webhook route does. */
  const deliver = (ids: RecentIds, id: string, now: number) => {
    const claim = ids.claim(id, now)
    if (claim === 'new') ids.complete(id, now)
    return claim
  }

  test('knows an id it handled, and forgets it after the time to live', () => {
    const ids = new RecentIds(100, 60_000)
    expect(deliver(ids, 'EV_1', 0)).toBe('new')
    expect(deliver(ids, 'EV_1', 59_999)).toBe('handled')
    expect(deliver(ids, 'EV_1', 60_000)).toBe('new')
  })

  test('says an id is being handled while its claim holds, for 30 s', () => {
    const ids = new RecentIds()
    expect(ids.claim('EV_1', 0)).toBe('new')
    expect(ids.claim('EV_1', 29_999)).toBe('being handled')
    expect(ids.claim('EV_1', 30_000)).toBe('new') // its handler is taken for dead
  })

  test('remembers at most its capacity, forgetting the oldest ids first', () => {
    const ids = new RecentIds(1000)
    for (let i = 0; i < 50_000; i++) deliver(ids, `EV_${i}`, i)
    expect(ids.size).toBe(1000)
    expect(deliver(ids, 'EV_49000', 50_000)).toBe('handled')
    expect(deliver(ids, 'EV_48999', 50_000)).toBe('new')
  })

  test('keeps an id given again after its time to live, when its first slot is reused', () => {
    const ids = new RecentIds(3, 10)
    deliver(ids, 'a', 0)
    deliver(ids, 'a', 20) // expired, so handled again (in its first slot still)
    deliver(ids, 'b', 21)
    deliver(ids, 'c', 22)
    expect(deliver(ids, 'a', 23)).toBe('handled')
  })

  test('releases an id on request, so that its redelivery is handled', () => {
    const ids = new RecentIds()
    ids.claim('EV_1')
    ids.release('EV_1')
    expect(ids.claim('EV_1')).toBe('new')
  })
})
