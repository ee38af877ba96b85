// REDIS_URL: processes sharing one Redis (Debian's redis-server, real) share the webhook ids they
// handled and the callers' token allowances; when Redis fails they keep answering from their own
// memory, and share again once it is back.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from 'bun:test'
import { freePort, httpClient, infoLinesCaughtUp, runUntilExit, runtimeNames, startServer, testCredentials, type Answer, type Runtime, type ServerProcess } from './server'
import { signWebhook, webhookEvent, type Credentials } from './livekit'
import { randomPassword, startRedis, type RedisServer } from './redis'

// These tests start servers and Redis, on a machine that may be busy: room beyond bun's 5 s default (hooks too).
setDefaultTimeout(20_000)

const credentials = testCredentials()
const tokenRequest = { roomName: 'room1', participantName: 'alice' }

/** A server and a client for it; the client speaks to 127.0.0.1 so every request has the same caller address. */
interface Node {
  name: string
  server: ServerProcess
  http: ReturnType<typeof httpClient>
}

/** Every server and client of this file, so that the last checks can read all their logs and answers. */
const everyNode: Node[] = []

async function startNode(name: string, runtime: Runtime, env: Record<string, string>, options: { entry?: string; creds?: Credentials } = {}): Promise<Node> {
  const creds = options.creds ?? credentials
  const server = await startServer(runtime, { LIVEKIT_API_KEY: creds.apiKey, LIVEKIT_API_SECRET: creds.apiSecret, ...env }, { entry: options.entry })
  const http = httpClient(server.url.replace('localhost', '127.0.0.1'))
  // A request that fails says which server it went to, and how that server is (a crash shows).
  const request: typeof http.request = (path, init) =>
    http.request(path, init).catch((error: Error) => {
      const state = server.child.exitCode ?? server.child.signalCode ?? 'running'
      throw new Error(`${init?.method ?? 'GET'} ${path} to ${name} (${state}): ${error.message}\nits last lines:\n${server.lines.slice(-10).join('\n')}`)
    })
  const node = { name, server, http: { ...http, request } }
  everyNode.push(node)
  return node
}

/** Stops the node; a node killed already just has its exit awaited. */
const stopNode = (node: Node | undefined) => node?.server.stop()

function postWebhook(node: Node, event: Record<string, unknown>, { creds = credentials, timeoutMs = 5000 } = {}): Promise<Answer> {
  const body = JSON.stringify(event)
  return node.http.request('/livekit/webhook', {
    method: 'POST',
    headers: { 'content-type': 'application/webhook+json', authorization: signWebhook(body, creds) },
    body,
    signal: AbortSignal.timeout(timeoutMs),
  })
}

/** A token request; `caller` is sent as X-Forwarded-For (heeded only by servers with TRUST_PROXY=1). */
const postToken = (node: Node, timeoutMs = 5000, caller?: string) =>
  node.http.request('/token', {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(caller ? { 'x-forwarded-for': caller } : {}) },
    body: JSON.stringify(tokenRequest),
    signal: AbortSignal.timeout(timeoutMs),
  })

/**
 * The Retry-After a 429 must carry once a caller used its whole allowance of `perMinute` within
 * `elapsedMs`: the time one request takes to drip in (60 / perMinute s), less what dripped meanwhile;
 * as bounds for toBeWithin (the upper one exclusive).
 */
const refillWait = (perMinute: number, elapsedMs: number): [number, number] => [
  Math.ceil(60 / perMinute - elapsedMs / 1000),
  Math.ceil(60 / perMinute) + 1,
]

/** A 429's Retry-After, as a number, once the errorMessage was found to say the same. */
function retryAfter(answer: Answer): number {
  const seconds = Number(answer.headers.get('retry-after'))
  const errorMessage = `Too many token requests, retry in ${seconds} s`
  expect([answer.status, answer.json()]).toEqual([429, { errorMessage }])
  return seconds
}

/** What a webhook answer says, in one word, or the whole answer when it is none of the allowed ones. */
function outcome(answer: Answer): string {
  const body = (() => {
    try {
      return answer.json()
    } catch {
      return undefined
    }
  })()
  if (answer.status === 200 && body?.received === true) return 'handled'
  if (answer.status === 200 && body?.received === 'duplicate') return 'duplicate'
  if (answer.status === 503 && /^\d+$/.test(answer.headers.get('retry-after') ?? '') && typeof body?.errorMessage === 'string') return 'being handled'
  return `${answer.status} ${answer.headers.get('retry-after') ?? '-'} ${answer.text}`
}

/** The lines in which the node handled (ran the handler for) the event. */
const handledLines = (node: Node, id: unknown) => node.server.logs().filter((entry) => entry.msg === 'webhook' && entry.id === id)
const duplicateLines = (node: Node, id: unknown) => node.server.logs().filter((entry) => entry.msg === 'webhook duplicate' && entry.id === id)

/** Waits until one of the nodes logged a matching line, then a moment more for lines that would come late. */
async function settleLogs(nodes: Node[], predicate: (entry: Record<string, unknown>) => boolean, timeoutMs = 5000) {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline && !nodes.some((node) => node.server.logs().some(predicate))) await Bun.sleep(20)
  await Bun.sleep(200)
}

/** The log entries the node wrote from line `from` on. */
const entriesSince = (node: Node, from: number) =>
  node.server.lines.slice(from).flatMap((line) => {
    try {
      return [JSON.parse(line) as Record<string, unknown>]
    } catch {
      return []
    }
  })

const aboutRedis = (level: string) => (entry: Record<string, unknown>) => entry.level === level && /redis/i.test(String(entry.msg))

/** Polls until the condition holds; throws with `what` when it does not within the time. */
async function eventually(what: string, condition: () => Promise<boolean> | boolean, timeoutMs: number, everyMs = 100) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (await condition()) return
    if (Date.now() > deadline) throw new Error(`not within ${timeoutMs} ms: ${what}`)
    await Bun.sleep(everyMs)
  }
}

const healthOf = async (node: Node) => (await node.http.request('/health', { signal: AbortSignal.timeout(2000) })).text

/**
 * Waits until every node says on /health that it uses Redis. Each connects as it starts, and on a
 * busy machine that can take a moment: the tests of sharing start once it is done.
 */
const untilUsingRedis = (nodes: Node[]) =>
  eventually('/health says redis is ok on every node', async () => (await Promise.all(nodes.map(healthOf))).every((text) => text === '{"status":"ok","redis":"ok"}'), 10_000)

const pairs: [Runtime, Runtime][] = [
  ['bun', 'bun'],
  ['bun', 'deno'],
]

for (const [runtimeA, runtimeB] of pairs) {
  describe(`${runtimeA} and ${runtimeB} sharing one Redis`, () => {
    let redis: RedisServer
    const nodes = {} as { a: Node; b: Node }
    const env = () => ({ REDIS_URL: redis.url, TOKEN_RATE_LIMIT: '5' })
    let firstNode: number // this block's nodes are everyNode's from there on

    beforeAll(async () => {
      redis = await startRedis()
      firstNode = everyNode.length
      ;[nodes.a, nodes.b] = await Promise.all([startNode(`A (${runtimeA})`, runtimeA, env()), startNode(`B (${runtimeB})`, runtimeB, env())])
    })

    afterAll(async () => {
      await Promise.all([stopNode(nodes.a), stopNode(nodes.b)])
      await redis?.stop()
    })

    test('both say on /health that Redis is in use', async () => {
      await untilUsingRedis([nodes.a, nodes.b])
      for (const node of [nodes.a, nodes.b]) {
        const answer = await node.http.request('/health')
        expect([answer.status, answer.text]).toEqual([200, '{"status":"ok","redis":"ok"}'])
      }
    })

    test('an event delivered to both at once is handled once: the other answer is a duplicate or a 503 to retry', async () => {
      const events = Array.from({ length: 10 }, () => webhookEvent('room_started'))
      const answers = await Promise.all(events.map((event) => Promise.all([postWebhook(nodes.a, event), postWebhook(nodes.b, event)])))
      const handledCount = (event: Record<string, unknown>) => handledLines(nodes.a, event.id).length + handledLines(nodes.b, event.id).length
      await eventually('a handled line for every event', () => events.every((event) => handledCount(event) > 0), 5000).catch(() => {})
      // A second handled line, on either, would come before each one's marker line.
      await Promise.all([infoLinesCaughtUp(nodes.a.server, credentials), infoLinesCaughtUp(nodes.b.server, credentials)])
      for (const [index, event] of events.entries()) {
        const outcomes = answers[index]!.map(outcome).sort()
        expect([['duplicate', 'handled'], ['being handled', 'handled']]).toContainEqual(outcomes)
        expect(handledCount(event)).toBe(1)
      }
      // LiveKit retries the 503s: by now every redelivery, to either, is a duplicate.
      for (const event of events) {
        expect([outcome(await postWebhook(nodes.a, event)), outcome(await postWebhook(nodes.b, event))]).toEqual(['duplicate', 'duplicate'])
      }
    })

    test('an event handled by one is a duplicate at the other, logged as such and not handled again', async () => {
      const event = webhookEvent('participant_joined', { participant: { sid: 'PA_1', identity: 'alice' } })
      expect(outcome(await postWebhook(nodes.a, event))).toBe('handled')
      expect(outcome(await postWebhook(nodes.b, event))).toBe('duplicate')
      const [line] = await settleLogs([nodes.b], (entry) => entry.msg === 'webhook duplicate' && entry.id === event.id).then(() => duplicateLines(nodes.b, event.id))
      expect(line).toMatchObject({ level: 'info', event: 'participant_joined', id: event.id })
      expect([handledLines(nodes.a, event.id).length, handledLines(nodes.b, event.id).length]).toEqual([1, 0])
      // And the other way round.
      const second = webhookEvent('room_finished')
      expect([outcome(await postWebhook(nodes.b, second)), outcome(await postWebhook(nodes.a, second))]).toEqual(['handled', 'duplicate'])
    })

    test('a caller gets TOKEN_RATE_LIMIT tokens a minute in total across both, then a 429 with the wait', async () => {
      const started = performance.now()
      const answers = []
      const { a, b } = nodes
      for (const node of [a, b, a, b, a, b, a]) answers.push(await postToken(node))
      const elapsedMs = performance.now() - started
      expect(answers.map((answer) => answer.status)).toEqual([200, 200, 200, 200, 200, 429, 429])
      for (const refused of answers.slice(5)) expect(retryAfter(refused)).toBeWithin(...refillWait(5, elapsedMs))
    })

    test('servers with another LIVEKIT_API_KEY on the same Redis do not see these ids: each handles the same event id once', async () => {
      const others = { apiKey: 'other-api-key', apiSecret: testCredentials().apiSecret }
      const c = await startNode(`C (${runtimeB}, other key)`, runtimeB, env(), { creds: others })
      try {
        await untilUsingRedis([c])
        const event = webhookEvent('room_started')
        expect(outcome(await postWebhook(nodes.a, event))).toBe('handled')
        expect(outcome(await postWebhook(c, event, { creds: others }))).toBe('handled')
        expect(outcome(await postWebhook(c, event, { creds: others }))).toBe('duplicate')
        expect(outcome(await postWebhook(nodes.b, event))).toBe('duplicate')
        await settleLogs([c], (entry) => entry.msg === 'webhook' && entry.id === event.id)
        expect(handledLines(c, event.id)).toHaveLength(1)
      } finally {
        await stopNode(c)
      }
    })

    test('after both restart, an event handled before is still a duplicate at either', async () => {
      const event = webhookEvent('egress_ended', { egressInfo: { egressId: 'EG_1', roomName: 'room1' } })
      expect(outcome(await postWebhook(nodes.a, event))).toBe('handled')
      expect(await Promise.all([stopNode(nodes.a), stopNode(nodes.b)])).toEqual([0, 0])
      ;[nodes.a, nodes.b] = await Promise.all([startNode(`A (${runtimeA}, restarted)`, runtimeA, env()), startNode(`B (${runtimeB}, restarted)`, runtimeB, env())])
      await untilUsingRedis([nodes.a, nodes.b])
      expect([outcome(await postWebhook(nodes.a, event)), outcome(await postWebhook(nodes.b, event))]).toEqual(['duplicate', 'duplicate'])
      await settleLogs([nodes.a, nodes.b], (entry) => entry.msg === 'webhook duplicate' && entry.id === event.id)
      expect([handledLines(nodes.a, event.id).length, handledLines(nodes.b, event.id).length]).toEqual([0, 0])
    })

    test('neither left Redis for its own memory meanwhile: no warn line about redis', () => {
      for (const node of everyNode.slice(firstNode)) {
        expect(node.server.logs().filter(aboutRedis('warn'))).toEqual([])
      }
    })
  })
}

describe('a handler running in one process (bun, slow and failing handlers) and another process (deno) sharing one Redis', () => {
  let redis: RedisServer
  const nodes = {} as { a: Node; b: Node }

  beforeAll(async () => {
    redis = await startRedis()
    ;[nodes.a, nodes.b] = await Promise.all([
      startNode('A (bun fixture)', 'bun', { REDIS_URL: redis.url }, { entry: 'tests/fixtures/custom-handlers-server.ts' }),
      startNode('B (deno)', 'deno', { REDIS_URL: redis.url }),
    ])
    await untilUsingRedis([nodes.a, nodes.b])
  })

  afterAll(async () => {
    nodes.a?.server.child.kill('SIGKILL') // its slow handler may still run
    await Promise.all([stopNode(nodes.a), stopNode(nodes.b)])
    await redis?.stop()
  })

  test('a handler that throws releases its claim at once: 500, then the redelivery to the other process is handled', async () => {
    const event = webhookEvent('room_started', { room: { sid: 'RM_flaky', name: 'flaky-room' } })
    const failed = await postWebhook(nodes.a, event)
    expect([failed.status, failed.json()]).toEqual([500, { errorMessage: 'Webhook handler failed' }])
    expect(outcome(await postWebhook(nodes.b, event))).toBe('handled')
    expect(outcome(await postWebhook(nodes.a, event))).toBe('duplicate')
  })

  test(
    'an event whose handler runs in one process is a 503 with Retry-After at the other, and if that process is killed, a redelivery within 35 s is handled',
    async () => {
      const event = webhookEvent('room_started', { room: { sid: 'RM_slow', name: 'slow-room' } })
      // Not awaited: its handler takes 60 s, and its process is killed meanwhile.
      const first = postWebhook(nodes.a, event, { timeoutMs: 60_000 }).catch((error: Error) => error)
      await settleLogs([nodes.a], (entry) => entry.msg === 'slow handler started' && entry.id === event.id, 10_000)
      expect(nodes.a.server.logs().filter((entry) => entry.msg === 'slow handler started' && entry.id === event.id)).toHaveLength(1)
      expect(outcome(await postWebhook(nodes.b, event))).toBe('being handled')

      nodes.a.server.child.kill('SIGKILL')
      const killedAt = Date.now()
      await nodes.a.server.exited
      expect(await first).toBeInstanceOf(Error) // the connection broke: LiveKit would redeliver

      // LiveKit's redeliveries, once a second: 503s while the dead process's claim holds, then handled.
      const outcomes: string[] = []
      while (Date.now() - killedAt < 35_000 && outcomes.at(-1) !== 'handled') {
        outcomes.push(outcome(await postWebhook(nodes.b, event)))
        if (outcomes.at(-1) !== 'handled') await Bun.sleep(1000)
      }
      expect(outcomes.at(-1)).toBe('handled')
      expect(outcomes.slice(0, -1).filter((o) => o !== 'being handled')).toEqual([])
      await settleLogs([nodes.b], (entry) => entry.msg === 'webhook' && entry.id === event.id)
      expect(handledLines(nodes.b, event.id)).toHaveLength(1)
      expect(outcome(await postWebhook(nodes.b, event))).toBe('duplicate')
    },
    60_000,
  )
})

// TOKEN_RATE_LIMIT=5: a caller never waits more than 12 s for its next token.
const atMost12s = /^([1-9]|1[0-2])$/

/**
 * Token and webhook requests to every node, round after round until stopped, each bounded: every
 * answer must come within 1 s and be a 200 (a 429 for a token, a 503 with Retry-After for a webhook
 * being handled elsewhere); anything else is kept as a problem.
 */
function startTraffic(nodes: Node[]) {
  const problems: string[] = []
  /** Every request: when it started, to whom, what came back and how fast (to explain a failure). */
  const history: { at: number; line: string }[] = []
  let rounds = 0
  // Each token request from a caller of its own (X-Forwarded-For, TRUST_PROXY=1), so none is over the limit.
  let callers = 0
  const nextCaller = () => (callers += 1, `10.${(callers >> 16) & 255}.${(callers >> 8) & 255}.${callers & 255}`)
  let running = true
  const timed = async (node: Node, kind: 'token' | 'webhook') => {
    const started = performance.now()
    try {
      const answer = kind === 'token' ? await postToken(node, 3000, nextCaller()) : await postWebhook(node, webhookEvent('participant_left', { participant: { sid: 'PA_9', identity: 'bob' } }), { timeoutMs: 3000 })
      const ms = Math.round(performance.now() - started)
      const allowed =
        kind === 'token'
          ? answer.status === 200 || (answer.status === 429 && atMost12s.test(answer.headers.get('retry-after') ?? ''))
          : ['handled', 'being handled'].includes(outcome(answer))
      const line = `${node.name} ${kind}: ${answer.status} ${answer.text.slice(0, 60)} after ${ms} ms`
      history.push({ at: Date.now() - ms, line })
      if (ms >= 1000 || !allowed) problems.push(line)
    } catch (error) {
      const line = `${node.name} ${kind}: ${String(error).split('\n')[0]} after ${Math.round(performance.now() - started)} ms`
      history.push({ at: Date.now(), line })
      problems.push(line)
    }
  }
  const loop = (async () => {
    while (running) {
      await Promise.all(nodes.flatMap((node) => [timed(node, 'token'), timed(node, 'webhook')]))
      rounds += 1
      await Bun.sleep(50)
    }
  })()
  return {
    problems,
    /** The requests started since `from` (a Date.now()), one line each. */
    since: (from: number) => history.filter((entry) => entry.at >= from).map((entry) => `${new Date(entry.at).toISOString()} ${entry.line}`),
    stop: async () => {
      running = false
      await loop
      return rounds
    },
  }
}

describe('bun and deno sharing one Redis that is killed, restarted, frozen and thawed mid-traffic', () => {
  let redis: RedisServer
  const nodes = {} as { a: Node; b: Node }
  let traffic: ReturnType<typeof startTraffic>
  let mark = { a: 0, b: 0, at: 0 }
  const both = () => [nodes.a, nodes.b]
  const setMark = () => (mark = { a: nodes.a.server.lines.length, b: nodes.b.server.lines.length, at: Date.now() })
  const since = () => [entriesSince(nodes.a, mark.a), entriesSince(nodes.b, mark.b)]

  beforeAll(async () => {
    redis = await startRedis()
    ;[nodes.a, nodes.b] = await Promise.all([
      startNode('A (bun)', 'bun', { REDIS_URL: redis.url, TOKEN_RATE_LIMIT: '5', TRUST_PROXY: '1' }),
      startNode('B (deno)', 'deno', { REDIS_URL: redis.url, TOKEN_RATE_LIMIT: '5', TRUST_PROXY: '1' }),
    ])
    // Both connected to Redis before it fails: what follows is about losing it mid-run.
    await untilUsingRedis(both())
    traffic = startTraffic(both())
    await Bun.sleep(500)
  })

  afterAll(async () => {
    await traffic?.stop()
    await Promise.all([stopNode(nodes.a), stopNode(nodes.b)])
    await redis?.stop()
  })

  /** Both log one warn line about Redis and say "unavailable" on /health. */
  async function expectDegraded() {
    const missing = () => both().filter((node, index) => !since()[index]!.some(aboutRedis('warn')))
    await eventually('a warn line about redis from each process', () => missing().length === 0, 5000).catch((error: Error) => {
      const lines = (node: Node) => node.server.lines.slice(node === nodes.a ? mark.a : mark.b).join('\n')
      const requests = traffic.since(mark.at).join('\n')
      throw new Error(`${error.message}; none from ${missing().map((node) => `${node.name}, whose lines since are:\n${lines(node)}`).join('\n')}\nrequests since ${new Date(mark.at).toISOString()}:\n${requests}`)
    })
    await eventually('/health says redis is unavailable on both', async () => (await Promise.all(both().map(healthOf))).every((text) => text === '{"status":"ok","redis":"unavailable"}'), 2000)
  }

  /** The statuses of token requests from one caller, to the nodes in turn. */
  const tokenStatuses = async (caller: string, order: Node[]) => {
    const statuses = []
    for (const node of order) statuses.push((await postToken(node, 1000, caller)).status)
    return statuses
  }
  let callerCount = 0
  const newCaller = () => `203.0.113.${(callerCount += 1)}`

  /**
   * Within 10 s: both say "ok" on /health and have logged the info line; an id handled by A is then
   * a duplicate at B, and a caller's allowance is shared again.
   */
  async function expectShared(recoveredAt: number) {
    await eventually('/health says redis is ok on both', async () => (await Promise.all(both().map(healthOf))).every((text) => text === '{"status":"ok","redis":"ok"}'), 10_000)
    expect(Date.now() - recoveredAt).toBeLessThanOrEqual(10_000)
    await eventually('an info line about redis from each process', () => since().every((entries) => entries.some(aboutRedis('info'))), 1000)
    const event = webhookEvent('track_published', { participant: { sid: 'PA_1', identity: 'alice' }, track: { sid: 'TR_1', type: 'VIDEO' } })
    expect([outcome(await postWebhook(nodes.a, event)), outcome(await postWebhook(nodes.b, event))]).toEqual(['handled', 'duplicate'])
    const { a, b } = nodes
    expect(await tokenStatuses(newCaller(), [a, b, a, b, a, b, a])).toEqual([200, 200, 200, 200, 200, 429, 429])
    // One warn when it degraded and one info when it came back, each process, however many requests failed meanwhile.
    for (const entries of since()) {
      expect([entries.filter(aboutRedis('warn')).length, entries.filter(aboutRedis('info')).length]).toEqual([1, 1])
    }
  }

  test('Redis killed: each process logs one warn line about redis, and /health says "unavailable"', async () => {
    setMark()
    await redis.kill()
    await expectDegraded()
  }, 15_000)

  test('meanwhile each process dedupes and rate-limits in its own memory', async () => {
    const event = webhookEvent('room_started')
    expect([outcome(await postWebhook(nodes.a, event)), outcome(await postWebhook(nodes.a, event))]).toEqual(['handled', 'duplicate'])
    expect([outcome(await postWebhook(nodes.b, event)), outcome(await postWebhook(nodes.b, event))]).toEqual(['handled', 'duplicate'])
    const caller = newCaller()
    const { a, b } = nodes
    expect(await tokenStatuses(caller, [a, a, a, a, a, a])).toEqual([200, 200, 200, 200, 200, 429])
    // B's memory has not seen this caller: nothing is shared while Redis is away.
    expect(await tokenStatuses(caller, [b])).toEqual([200])
  })

  test('Redis restarted on the same port with the same password: shared again within 10 s, with one info line each', async () => {
    await Bun.sleep(500) // some traffic while it is down
    await redis.restart()
    await expectShared(Date.now())
  }, 20_000)

  test('Redis frozen (SIGSTOP): each process logs one warn line about redis, and /health says "unavailable"', async () => {
    setMark()
    redis.freeze()
    await expectDegraded()
  }, 15_000)

  test('Redis thawed (SIGCONT): shared again within 10 s, with one info line each', async () => {
    await Bun.sleep(500)
    redis.thaw()
    await expectShared(Date.now())
  }, 20_000)

  test('every token and webhook request meanwhile was answered within 1 s, with a 200 (or a 429, or a 503 to retry)', async () => {
    const rounds = await traffic.stop()
    expect(rounds).toBeGreaterThan(10)
    expect(traffic.problems).toEqual([])
  })
})

for (const runtime of runtimeNames) {
  describe(`${runtime}: Retry-After, with and without REDIS_URL`, () => {
    test('TOKEN_RATE_LIMIT=1: after one token, the 429 says to wait a minute, on Redis as in memory', async () => {
      const redis = await startRedis()
      const inMemory = await startNode(`${runtime}, in memory`, runtime, { TOKEN_RATE_LIMIT: '1' })
      const onRedis = await startNode(`${runtime}, on Redis`, runtime, { TOKEN_RATE_LIMIT: '1', REDIS_URL: redis.url })
      try {
        await untilUsingRedis([onRedis])
        for (const node of [inMemory, onRedis]) {
          const started = performance.now()
          const answers = [await postToken(node), await postToken(node)]
          const elapsedMs = performance.now() - started
          const statuses = answers.map((answer) => answer.status)
          expect({ node: node.name, statuses }).toEqual({ node: node.name, statuses: [200, 429] })
          expect(retryAfter(answers[1]!)).toBeWithin(...refillWait(1, elapsedMs))
        }
        // The allowance was Redis's: the node never fell back to its memory.
        const troubles = [aboutRedis('warn'), aboutRedis('error')].map((about) => onRedis.server.logs().filter(about))
        expect(troubles).toEqual([[], []])
        expect(await healthOf(onRedis)).toBe('{"status":"ok","redis":"ok"}')
      } finally {
        await Promise.all([stopNode(inMemory), stopNode(onRedis)])
        await redis.stop()
      }
    })
  })

  describe(`${runtime}: Redis unreachable at start`, () => {
    let node: Node
    let redis: RedisServer | undefined
    let port: number
    const password = randomPassword()

    beforeAll(async () => {
      port = await freePort()
      node = await startNode(`${runtime}, Redis not there`, runtime, { REDIS_URL: `redis://:${password}@127.0.0.1:${port}`, TOKEN_RATE_LIMIT: '100' })
    })

    afterAll(async () => {
      await stopNode(node)
      await redis?.stop()
    })

    // First in this block: nothing has been asked of the server yet.
    test('answers the first requests, sent as soon as it says it listens, within 1 s: a rate-limited token, and /health', async () => {
      expect((await postToken(node, 1000)).status).toBe(200)
      const health = await node.http.request('/health', { signal: AbortSignal.timeout(1000) })
      expect(health.text).toBe('{"status":"ok","redis":"unavailable"}')
    })

    test('starts anyway, logs one error line about redis, and /health says "unavailable"', async () => {
      await settleLogs([node], (entry) => entry.level === 'error')
      expect(node.server.logs().filter((entry) => entry.level === 'error').map((entry) => /redis/i.test(String(entry.msg)))).toEqual([true])
      expect(await healthOf(node)).toBe('{"status":"ok","redis":"unavailable"}')
    })

    test('answers token and webhook requests from its own memory within 1 s', async () => {
      const event = webhookEvent('room_started')
      for (const send of [() => postToken(node, 1000), () => postWebhook(node, event, { timeoutMs: 1000 })]) {
        expect((await send()).status).toBe(200)
      }
      expect(outcome(await postWebhook(node, event, { timeoutMs: 1000 }))).toBe('duplicate')
    })

    test('uses Redis within 10 s of it starting on that port', async () => {
      redis = await startRedis({ port, password })
      const startedAt = Date.now()
      await eventually('/health says redis is ok', async () => (await healthOf(node)) === '{"status":"ok","redis":"ok"}', 10_000)
      expect(Date.now() - startedAt).toBeLessThanOrEqual(10_000)
      expect(outcome(await postWebhook(node, webhookEvent('room_finished')))).toBe('handled')
      expect(Number((await redis.command('DBSIZE')).slice(1))).toBeGreaterThan(0)
    }, 15_000)
  })

  describe(`${runtime}: a Redis that refuses it at start`, () => {
    const refusals: [string, (redis: RedisServer) => string][] = [
      ['a wrong password', (redis) => `redis://:${randomPassword()}@127.0.0.1:${redis.port}`],
      ['rediss:// (TLS) to a Redis without TLS', (redis) => `rediss://:${redis.password}@127.0.0.1:${redis.port}`],
      // A "%" that escapes nothing: the URL is valid, and the password must still be masked, not crash the masking.
      ['a wrong password holding a stray %', (redis) => `redis://:${randomPassword()}%zz@127.0.0.1:${redis.port}`],
    ]
    for (const [what, urlFor] of refusals) {
      test(`${what}: starts anyway, logs one error line about redis, /health says "unavailable", and no password shows`, async () => {
        const redis = await startRedis()
        const url = urlFor(redis)
        let node: Node | undefined
        try {
          node = await startNode(`${runtime}, ${what}`, runtime, { REDIS_URL: url })
          await settleLogs([node], (entry) => entry.level === 'error')
          expect(node.server.logs().filter((entry) => entry.level === 'error').map((entry) => /redis/i.test(String(entry.msg)))).toEqual([true])
          expect(await healthOf(node)).toBe('{"status":"ok","redis":"unavailable"}')
          expect(outcome(await postWebhook(node, webhookEvent('room_started'), { timeoutMs: 1000 }))).toBe('handled')
          expect(node.server.lines.join('\n')).not.toContain(new URL(url).password)
        } finally {
          await stopNode(node)
          await redis.stop()
        }
      }, 15_000)
    }
  })

  describe(`${runtime}: REDIS_URL with a user name and a database number`, () => {
    test('keeps its keys in that database, not in database 0', async () => {
      const redis = await startRedis()
      let node: Node | undefined
      try {
        node = await startNode(`${runtime}, database 3`, runtime, { REDIS_URL: `redis://default:${redis.password}@127.0.0.1:${redis.port}/3` })
        await untilUsingRedis([node])
        expect(outcome(await postWebhook(node, webhookEvent('room_started')))).toBe('handled')
        expect([await redis.commandInDb(3, 'DBSIZE'), await redis.commandInDb(0, 'DBSIZE')]).toEqual([':1\r\n', ':0\r\n'])
      } finally {
        await stopNode(node)
        await redis.stop()
      }
    })
  })

  describe(`${runtime}: without REDIS_URL`, () => {
    test('GET /health answers exactly {"status":"ok"}', async () => {
      const node = await startNode(`${runtime}, no Redis`, runtime, {})
      try {
        const answer = await node.http.request('/health')
        expect([answer.status, answer.text]).toEqual([200, '{"status":"ok"}'])
      } finally {
        await stopNode(node)
      }
    })
  })

  describe(`${runtime}: a malformed REDIS_URL`, () => {
    const password = randomPassword()
    const malformed = [
      'localhost:6379',
      'http://x',
      'redis://',
      `redis://:${password}@`,
      `redis://:${password}@127.0.0.1:port`,
      `redis://user:${password}@127.0.0.1:6379/notanumber`,
      `redis://:${password}/x@127.0.0.1:6379`, // a "/" in a password that is not URL-encoded
      `redis://:${password}@127.0.0.1:6379/99999999999999999999`,
    ]

    test('stops the server with one line, "Configuration error: REDIS_URL …", exit code 1, and never the password', async () => {
      const results = await Promise.all(
        malformed.map((url) => runUntilExit(runtime, { LIVEKIT_API_KEY: credentials.apiKey, LIVEKIT_API_SECRET: credentials.apiSecret, REDIS_URL: url })),
      )
      for (const [index, { code, output }] of results.entries()) {
        const lines = output.split('\n').filter((line) => line.trim())
        expect({ url: malformed[index], code, lines: lines.length, first: lines[0]?.startsWith('Configuration error: REDIS_URL') }).toEqual({ url: malformed[index], code: 1, lines: 1, first: true })
        expect(output).not.toContain(password)
      }
    }, 30_000)
  })
}

test('no log line or answer of any server above shows a Redis password', () => {
  expect(everyNode.length).toBeGreaterThan(10)
  for (const node of everyNode) {
    const text = [...node.server.lines, ...node.http.transcript].join('\n')
    expect(text).not.toMatch(/redis-pw-[0-9a-f]{32}/)
  }
})
