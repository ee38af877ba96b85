// EVENTS_STREAM: every verified event whose handlers succeeded is appended to a Redis Stream (a real
// redis-server, frozen, killed and restarted by these tests), exactly once; and none is lost while
// Redis is away: the server holds it in its outbox, or answers a 5xx so that LiveKit delivers it again.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from 'bun:test'
import { RedisClient } from 'bun'
import { runUntilExit, runtimeNames, sourceRuntimes, startServer, testCredentials, waitForLog } from './server'
import type { Runtime, ServerProcess } from './server'
import { signWebhook, webhookEvent } from './livekit'
import { startRedis, type RedisServer } from './redis'

setDefaultTimeout(30_000)

const credentials = testCredentials()
// The key exactly as configured: the server must not prefix it.
const streamKey = 'livekit:events'
const customHandlers = 'tests/fixtures/custom-handlers-server.ts'

function startStreaming(runtime: Runtime, redis: RedisServer, env: Record<string, string> = {}, entry?: string): Promise<ServerProcess> {
  const settings = { LIVEKIT_API_KEY: credentials.apiKey, LIVEKIT_API_SECRET: credentials.apiSecret, REDIS_URL: redis.url, EVENTS_STREAM: streamKey }
  return startServer(runtime, { ...settings, ...env }, { entry })
}

/** An event as LiveKit posts it: the exact bytes of its body, their signature, and what the entry must say. */
interface SignedEvent {
  id: string
  body: string
  authorization: string
  /** The entry's fields, in order, as the stream must hold them. */
  entry: string[]
}

/** `expected.createdAt`: the entry's created_at when the event does not say it as createdAt. */
type EntryFields = { room: string; participant: string; job?: string; agent?: string; createdAt?: string }

function signed(event: Record<string, unknown>, expected: EntryFields, indent?: string | number): SignedEvent {
  const body = JSON.stringify(event, null, indent)
  const id = event.id as string
  const { room, participant, job = '', agent = '', createdAt = event.createdAt as string } = expected
  const entry = ['id', id, 'event', event.event as string, 'room', room, 'participant', participant, 'job', job, 'agent', agent]
  entry.push('created_at', createdAt, 'body', body)
  return { id, body, authorization: signWebhook(body, credentials), entry }
}

/** Event n of a varied mix: four names (one an agent's job), the room from where LiveKit puts it, bodies formatted four ways. */
function mixedEvent(n: number): SignedEvent {
  switch (n % 4) {
    case 0:
      return signed(webhookEvent('room_started'), { room: 'room1', participant: '' })
    case 1:
      return signed(webhookEvent('participant_joined', { participant: { sid: `PA_${n}`, identity: `zoë-${n}` } }), { room: 'room1', participant: `zoë-${n}` }, 1)
    case 2:
      return signed(webhookEvent('egress_ended', { room: undefined, egressInfo: { egressId: `EG_${n}`, roomName: 'recorded room' } }), { room: 'recorded room', participant: '' }, '\t')
    default:
      return signed(
        webhookEvent('agent_job_started', { room: undefined, job: { id: `AJ_${n}`, agentName: 'transcriber', room: { sid: 'RM_1', name: 'agent room' } } }),
        { room: 'agent room', participant: '', job: `AJ_${n}`, agent: 'transcriber' },
        2,
      )
  }
}

/** A room_started event whose first delivery the custom handlers fail (a 500), in the flaky room. */
const flakyEvent = () => signed(webhookEvent('room_started', { room: { sid: 'RM_flaky', name: 'flaky-room' } }), { room: 'flaky-room', participant: '' })

interface Attempt {
  status: number
  retryAfter: string | null
  text: string
  ms: number
}

async function post(server: ServerProcess, event: SignedEvent, timeoutMs = 5000): Promise<Attempt> {
  const started = performance.now()
  try {
    const response = await fetch(`${server.url}/livekit/webhook`, {
      method: 'POST',
      headers: { 'content-type': 'application/webhook+json', authorization: event.authorization },
      body: event.body,
      signal: AbortSignal.timeout(timeoutMs),
    })
    const text = await response.text()
    return { status: response.status, retryAfter: response.headers.get('retry-after'), text, ms: performance.now() - started }
  } catch (error) {
    return { status: 0, retryAfter: null, text: String(error), ms: performance.now() - started }
  }
}

const received = '{"received":true}'
const duplicate = '{"received":"duplicate"}'

/** What is wrong with an answer, if anything: only a 200, a failing handler's 500, or a 503 with Retry-After are allowed. */
function problemWith(attempt: Attempt, withinMs = Infinity): string | undefined {
  const said = `${attempt.status} ${attempt.retryAfter ?? '-'} ${attempt.text.slice(0, 80)} after ${Math.round(attempt.ms)} ms`
  if (attempt.ms >= withinMs) return said
  if (attempt.status === 200 && (attempt.text === received || attempt.text === duplicate)) return undefined
  if (attempt.status === 500 && attempt.text === '{"errorMessage":"Webhook handler failed"}') return undefined
  if (attempt.status === 503 && /^\d+$/.test(attempt.retryAfter ?? '')) return undefined
  return said
}

/**
 * Delivers as LiveKit does (go-retryablehttp): again after a 5xx or a failed request, waiting 1, 2, 4
 * and 8 s, five attempts in all; then, unlike LiveKit, again every 8 s until `giveUpAt`, so that a
 * test outlasts its outage, and counts the events LiveKit itself would have given up on.
 */
async function deliverLikeLiveKit(server: ServerProcess, event: SignedEvent, everyAttempt: Attempt[], giveUpAt: number): Promise<Attempt[]> {
  const waitsMs = [1000, 2000, 4000, 8000]
  const attempts: Attempt[] = []
  for (;;) {
    const attempt = await post(server, event, 3000)
    attempts.push(attempt)
    everyAttempt.push(attempt)
    if ((attempt.status > 0 && attempt.status < 500) || Date.now() > giveUpAt) return attempts
    await Bun.sleep(waitsMs[Math.min(attempts.length - 1, waitsMs.length - 1)]!)
  }
}

/** The stream's entries, each as its fields in order, read with Bun's own Redis client. */
async function streamEntries(redis: RedisServer): Promise<string[][]> {
  const client = new RedisClient(redis.url)
  try {
    const reply = (await client.send('XRANGE', [streamKey, '-', '+'])) as [string, string[]][]
    return reply.map(([, fields]) => fields)
  } finally {
    client.close()
  }
}

/** Exactly one entry per event, in the entry's fields the event's own, its body the bytes signed. */
function expectEachOnce(entries: string[][], events: SignedEvent[]): void {
  expect(entries.length).toBe(events.length)
  const byId = new Map(entries.map((fields) => [fields[1], fields]))
  expect(byId.size).toBe(events.length)
  const mismatched = events.filter((event) => !Bun.deepEquals(byId.get(event.id), event.entry))
  expect(mismatched.map((event) => ({ expected: event.entry, found: byId.get(event.id) }))).toEqual([])
}

async function eventually(what: string, condition: () => Promise<boolean> | boolean, timeoutMs: number) {
  const deadline = Date.now() + timeoutMs
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`not within ${timeoutMs} ms: ${what}`)
    await Bun.sleep(100)
  }
}

const streamLength = async (redis: RedisServer) => Number((await redis.command('XLEN', streamKey)).slice(1))
const handledLines = (server: ServerProcess, id: string) => server.logs().filter((entry) => entry.msg === 'webhook' && entry.id === id)

describe('EVENTS_STREAM: bun and deno sharing one Redis', () => {
  let redis: RedisServer
  let servers: ServerProcess[] = []

  beforeAll(async () => {
    redis = await startRedis()
    servers = await Promise.all([startStreaming('bun', redis), startStreaming('deno', redis)])
  })

  afterAll(async () => {
    await Promise.all(servers.map((server) => server.stop()))
    await redis?.stop()
  })

  test('1,000 distinct events, each delivered one to three times at once to either: 1,000 entries, one per event, with its fields and the exact bytes signed', async () => {
    const events = Array.from({ length: 1000 }, (_, n) => mixedEvent(n))
    const deliveries = events.flatMap((event, n) => Array.from({ length: 1 + (n % 3) }, () => event))
    // Shuffled within windows of 60, so that the deliveries of one event are in flight together.
    for (let start = 0; start < deliveries.length; start += 60) {
      for (let i = Math.min(start + 60, deliveries.length) - 1; i > start; i--) {
        const j = start + Math.floor(Math.random() * (i - start + 1))
        ;[deliveries[i], deliveries[j]] = [deliveries[j]!, deliveries[i]!]
      }
    }
    const attempts: { event: SignedEvent; attempt: Attempt }[] = []
    let next = 0
    const sender = async () => {
      while (next < deliveries.length) {
        const event = deliveries[next++]!
        attempts.push({ event, attempt: await post(servers[Math.floor(Math.random() * 2)]!, event) })
      }
    }
    await Promise.all(Array.from({ length: 32 }, sender))
    expect(attempts.map(({ attempt }) => problemWith(attempt)).filter(Boolean)).toEqual([])
    // Each event handled by one delivery; the others were duplicates, or 503s while it was being handled.
    expect(attempts.filter(({ attempt }) => attempt.text === received).length).toBe(1000)
    // LiveKit delivers a 503'd event again: by now a duplicate, wherever it goes.
    const retried = attempts.filter(({ attempt }) => attempt.status === 503).map(({ event }) => event)
    for (const event of retried) expect((await post(servers[Math.floor(Math.random() * 2)]!, event)).text).toBe(duplicate)
    expectEachOnce(await streamEntries(redis), events)
  })
})

/**
 * Delivers the events as LiveKit does, one every `everyMs`, each redelivered until it is taken, while
 * Redis is frozen and then killed a second in, and restarted; then checks each event is in the stream
 * once and every answer was allowed and came within 1 s.
 */
async function deliverThroughOutage(
  server: ServerProcess,
  redis: RedisServer,
  events: SignedEvent[],
  { everyMs, frozenMs, killedMs, giveUpMs }: { everyMs: number; frozenMs: number; killedMs: number; giveUpMs: number },
) {
  const everyAttempt: Attempt[] = []
  const giveUpAt = Date.now() + giveUpMs
  const deliveries = Promise.all(events.map(async (event, n) => (await Bun.sleep(n * everyMs), deliverLikeLiveKit(server, event, everyAttempt, giveUpAt))))
  await Bun.sleep(1000)
  redis.freeze()
  await Bun.sleep(frozenMs)
  await redis.kill()
  await Bun.sleep(killedMs)
  await redis.restart()
  const attemptsPerEvent = await deliveries
  await eventually('every event in the stream', async () => (await streamLength(redis)) >= events.length, 10_000)
  expectEachOnce(await streamEntries(redis), events)
  expect(everyAttempt.map((attempt) => problemWith(attempt, 1000)).filter(Boolean)).toEqual([])
  return { everyAttempt, attemptsPerEvent }
}

for (const runtime of runtimeNames) {
  describe(`${runtime}: Redis frozen, then killed, mid-delivery (an outbox of 20 events)`, () => {
    test('with deliveries as LiveKit makes them, every event ends in the stream once; each answer was a 200 or a 503 with Retry-After, within 1 s', async () => {
      const redis = await startRedis({ durable: true })
      const server = await startStreaming(runtime, redis, { EVENTS_OUTBOX: '20' })
      try {
        const events = Array.from({ length: 60 }, (_, n) => mixedEvent(n))
        // One new event every 100 ms.
        const { everyAttempt, attemptsPerEvent } = await deliverThroughOutage(server, redis, events, { everyMs: 100, frozenMs: 1500, killedMs: 1500, giveUpMs: 40_000 })
        const counts = {
          attempts: everyAttempt.length,
          refused: everyAttempt.filter((attempt) => attempt.status === 503).length,
          beyondLiveKitsFive: attemptsPerEvent.filter((attempts) => attempts.length > 5).length,
        }
        console.log(`${runtime}, 3 s outage: ${JSON.stringify(counts)}`)
        // The outbox filled, and the 503s kept those events with LiveKit, which never had to give up.
        expect(counts.refused).toBeGreaterThan(0)
        expect(counts.beyondLiveKitsFive).toBe(0)
        expect(server.logs().filter((entry) => entry.level === 'warn' && entry.msg === 'redis stream unavailable: holding events in the outbox until it answers')).toHaveLength(1)
      } finally {
        await server.stop()
        await redis.stop()
      }
    })
  })
}

describe('bun, with handlers that fail once: Redis frozen for 30 s, then killed for 30 s', () => {
  test('an outage of 60 s, longer than LiveKit retries, loses nothing: every event ends in the stream once; each answer was a 200, a 500 or a 503, within 1 s', async () => {
    const redis = await startRedis({ durable: true })
    const server = await startStreaming('bun', redis, {}, customHandlers)
    try {
      const events = Array.from({ length: 160 }, (_, n) => (n % 10 === 5 ? flakyEvent() : mixedEvent(n)))
      // One new event every 400 ms, from before the outage to after it.
      const { everyAttempt, attemptsPerEvent } = await deliverThroughOutage(server, redis, events, { everyMs: 400, frozenMs: 30_000, killedMs: 30_000, giveUpMs: 100_000 })
      const counts = {
        attempts: everyAttempt.length,
        failedHandlers: everyAttempt.filter((attempt) => attempt.status === 500).length,
        refused: everyAttempt.filter((attempt) => attempt.status === 503).length,
        beyondLiveKitsFive: attemptsPerEvent.filter((attempts) => attempts.length > 5).length,
      }
      console.log(`bun, 60 s outage: ${JSON.stringify(counts)}`)
      expect(counts.failedHandlers).toBe(16)
      expect(counts.beyondLiveKitsFive).toBe(0)
    } finally {
      await server.stop()
      await redis.stop()
    }
  }, 110_000)
})

for (const runtime of sourceRuntimes) {
  describe(`${runtime}: EVENTS_STREAM with a handler that throws`, () => {
    test('a 500 appends nothing; the redelivery, handled, appends the event once, and a repeat nothing more', async () => {
      const redis = await startRedis()
      const server = await startStreaming(runtime, redis, {}, customHandlers)
      try {
        const event = flakyEvent()
        expect((await post(server, event)).status).toBe(500)
        expect(await streamLength(redis)).toBe(0)
        expect((await post(server, event)).text).toBe(received)
        expect((await post(server, event)).text).toBe(duplicate)
        expectEachOnce(await streamEntries(redis), [event])
      } finally {
        await server.stop()
        await redis.stop()
      }
    })
  })
}

for (const runtime of runtimeNames) {
  describe(`${runtime}: stopping with events in the outbox`, () => {
    test('a redelivery of an event held in the outbox is a duplicate, not handled again; SIGTERM while Redis is frozen, thawed 1 s later: the held events are appended, in order, before the server exits', async () => {
      const redis = await startRedis()
      const server = await startStreaming(runtime, redis)
      try {
        const events = Array.from({ length: 6 }, (_, n) => mixedEvent(n))
        // One appended first, so that the appends during the freeze wait on an open connection (and run once it thaws).
        expect((await post(server, events[0]!)).text).toBe(received)
        expect(await streamLength(redis)).toBe(1)
        redis.freeze()
        for (const event of events.slice(1)) expect((await post(server, event)).text).toBe(received)
        expect((await post(server, events[1]!)).text).toBe(duplicate)
        expect(handledLines(server, events[1]!.id)).toHaveLength(1)
        const stopped = server.stop()
        await Bun.sleep(1000)
        redis.thaw()
        expect(await stopped).toBe(0)
        const entries = await streamEntries(redis)
        expectEachOnce(entries, events)
        // The outbox is appended in the order its events were taken.
        expect(entries.map((fields) => fields[1])).toEqual(events.map((event) => event.id))
      } finally {
        await server.stop()
        await redis.stop()
      }
    })

    test('SIGTERM while Redis is gone: one line says how many events were not appended and that they are lost', async () => {
      const redis = await startRedis()
      const server = await startStreaming(runtime, redis)
      try {
        await redis.kill()
        for (const event of Array.from({ length: 3 }, (_, n) => mixedEvent(n))) expect((await post(server, event)).text).toBe(received)
        await server.stop()
        const lost = server.logs().filter((entry) => /not appended/.test(String(entry.msg)))
        expect(lost).toHaveLength(1)
        expect(lost[0]).toMatchObject({ level: 'error', stream: streamKey, notAppended: 3, msg: expect.stringContaining('lost') })
      } finally {
        await redis.stop()
      }
    })
  })

  describe(`${runtime}: what the stream and its outbox hold of a signed event`, () => {
    test('an event without an id whose first append timed out (Redis frozen, then thawed) is appended once', async () => {
      const redis = await startRedis()
      const server = await startStreaming(runtime, redis)
      try {
        // One appended first, so that the append during the freeze is sent on an open connection, and runs on thaw.
        expect((await post(server, mixedEvent(0))).text).toBe(received)
        redis.freeze()
        const { id: _, ...withoutId } = webhookEvent('room_started', { room: { sid: 'RM_no_id', name: 'no-id-room' } })
        const body = JSON.stringify(withoutId)
        const event: SignedEvent = { id: '', body, authorization: signWebhook(body, credentials), entry: [] }
        expect((await post(server, event)).text).toBe(received)
        redis.thaw()
        await waitForLog(server, (entry) => entry.msg === 'redis stream available again: held events appended', 10_000)
        const entries = await streamEntries(redis)
        expect(entries.filter((fields) => fields.includes('no-id-room'))).toHaveLength(1)
        expect(entries).toHaveLength(2)
      } finally {
        await server.stop()
        await redis.stop()
      }
    })

    test("counts an entry's id and fields against the outbox's 64 MiB, not its body alone", async () => {
      const redis = await startRedis()
      const server = await startStreaming(runtime, redis, { MAX_BODY_BYTES: String(64 * 1024 * 1024), MAX_PENDING_BODY_BYTES: String(128 * 1024 * 1024) })
      try {
        await redis.kill()
        // A body of 64 MiB less 16 bytes: the body alone fits the outbox, the entry around it does not.
        const ofBytes = (bytes: number) => {
          const event = webhookEvent('room_started', { room: { sid: 'RM_big', name: 'big-room', metadata: '' } })
          const padding = bytes - JSON.stringify(event).length
          const body = JSON.stringify({ ...event, room: { sid: 'RM_big', name: 'big-room', metadata: 'm'.repeat(padding) } })
          return { id: event.id as string, body, authorization: signWebhook(body, credentials), entry: [] } satisfies SignedEvent
        }
        const tooMuch = await post(server, ofBytes(64 * 1024 * 1024 - 16), 20_000)
        expect([tooMuch.status, tooMuch.retryAfter]).toEqual([503, '5'])
        const fits = await post(server, ofBytes(64 * 1024 * 1024 - 4096), 20_000)
        expect(fits.text).toBe(received)
      } finally {
        await server.stop()
        await redis.stop()
      }
    }, 60_000)
  })

  describe(`${runtime}: a stream key that holds something else`, () => {
    test('events wait in the outbox while Redis refuses the append (WRONGTYPE, in one warn line); a redelivery meanwhile is a duplicate; once the key is free, each is appended once', async () => {
      const redis = await startRedis()
      const server = await startStreaming(runtime, redis)
      try {
        await redis.command('SET', streamKey, 'not a stream')
        const events = Array.from({ length: 3 }, (_, n) => mixedEvent(n))
        for (const event of events) expect((await post(server, event)).text).toBe(received)
        expect((await post(server, events[0]!)).text).toBe(duplicate)
        expect(handledLines(server, events[0]!.id)).toHaveLength(1)
        const warnings = server.logs().filter((entry) => entry.level === 'warn' && /redis stream/.test(String(entry.msg)))
        expect(warnings).toHaveLength(1)
        expect(warnings[0]!.error).toContain('WRONGTYPE')
        await redis.command('DEL', streamKey)
        await eventually('every event in the stream', async () => (await streamLength(redis)) >= events.length, 5000)
        expectEachOnce(await streamEntries(redis), events)
      } finally {
        await server.stop()
        await redis.stop()
      }
    })
  })

  describe(`${runtime}: events appended while Redis answers, delivered again while it does not`, () => {
    // The id an append marks handled in Redis is remembered in memory too: in an outage, memory is all there is.
    for (const outage of ['frozen (SIGSTOP)', 'killed'] as const) {
      test(`a redelivery while Redis is ${outage} is a duplicate, not handled again`, async () => {
        const redis = await startRedis()
        const server = await startStreaming(runtime, redis)
        try {
          const events = [mixedEvent(0), mixedEvent(1)]
          for (const event of events) expect((await post(server, event)).text).toBe(received)
          expectEachOnce(await streamEntries(redis), events)
          if (outage === 'killed') await redis.kill()
          else redis.freeze()
          for (const event of events) expect((await post(server, event)).text).toBe(duplicate)
          for (const { id } of events) {
            await waitForLog(server, (line) => line.msg === 'webhook duplicate' && line.id === id)
          }
          expect(events.map((event) => handledLines(server, event.id).length)).toEqual([1, 1])
          redis.thaw()
          if (outage !== 'killed') expectEachOnce(await streamEntries(redis), events)
        } finally {
          await server.stop()
          await redis.stop()
        }
      })
    }
  })

  describe(`${runtime}: the .proto spellings of an event, in the stream`, () => {
    test('an event with egress_info, ingress_info or created_at is appended with its room and created_at', async () => {
      const redis = await startRedis()
      const server = await startStreaming(runtime, redis)
      try {
        const id = () => `EV_${crypto.randomUUID()}`
        const unsaid = { participant: '', createdAt: '0' }
        const events = [
          signed(
            { event: 'egress_started', id: id(), egress_info: { egress_id: 'EG_7', room_name: 'room7' } },
            { ...unsaid, room: 'room7' },
          ),
          signed(
            { event: 'ingress_ended', id: id(), ingress_info: { ingress_id: 'IN_7', room_name: 'room8' } },
            { ...unsaid, room: 'room8' },
          ),
          signed(
            { event: 'room_finished', id: id(), room: { name: 'room9' }, created_at: '1764000000' },
            { room: 'room9', participant: '', createdAt: '1764000000' },
          ),
        ]
        for (const event of events) expect((await post(server, event)).text).toBe(received)
        expectEachOnce(await streamEntries(redis), events)
      } finally {
        await server.stop()
        await redis.stop()
      }
    })
  })

  describe(`${runtime}: EVENTS_STREAM_MAXLEN`, () => {
    test('keeps the stream at about that many, the newest: of 300, 50 to 59 (MAXLEN 50, nodes of 10)', async () => {
      const redis = await startRedis()
      // MAXLEN ~ trims whole nodes of the stream (100 entries by default): smaller nodes make "about" close.
      expect(await redis.command('CONFIG', 'SET', 'stream-node-max-entries', '10')).toBe('+OK\r\n')
      const server = await startStreaming(runtime, redis, { EVENTS_STREAM_MAXLEN: '50' })
      try {
        const events = Array.from({ length: 300 }, (_, n) => mixedEvent(n))
        for (const event of events) expect((await post(server, event)).text).toBe(received)
        const ids = (await streamEntries(redis)).map((fields) => fields[1])
        expect(ids.length).toBeGreaterThanOrEqual(50)
        expect(ids.length).toBeLessThan(60)
        expect(ids).toEqual(events.slice(-ids.length).map((event) => event.id))
      } finally {
        await server.stop()
        await redis.stop()
      }
    })
  })

  describe(`${runtime}: EVENTS_STREAM misconfigured`, () => {
    test('without REDIS_URL: one line, "Configuration error: EVENTS_STREAM …", and exit code 1', async () => {
      const { code, output } = await runUntilExit(runtime, { LIVEKIT_API_KEY: credentials.apiKey, LIVEKIT_API_SECRET: credentials.apiSecret, EVENTS_STREAM: streamKey })
      const lines = output.split('\n').filter((line) => line.trim())
      expect({ code, lines }).toEqual({ code: 1, lines: ['Configuration error: EVENTS_STREAM needs REDIS_URL: the stream is kept in Redis'] })
    })
  })
}
