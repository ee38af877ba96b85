// PROMETHEUS_PORT: GET /metrics on a listener of its own, scraped by a real Prometheus (Debian's)
// that these tests start. After a known mix of requests, Prometheus's own query API must return
// exactly those counts; the standard process series are there; promtool finds nothing but prom-client's
// own three gauges named *_total; with WORKERS=2 one scrape reports every worker; an app's own Counter
// is served beside the server's series; a busy or invalid PROMETHEUS_PORT is one line and exit code 1.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from 'bun:test'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { denoCommandWith, freePort, httpClient, runtimeNames, runUntilExit, sourceRuntimes, startServer, testCredentials, type Runtime, type ServerProcess } from './server'
import { signWebhook, webhookEvent } from './livekit'
import { audience, idToken, issuer, makeKey, startIdentityProvider, type SigningKey } from './identity-provider'
import { rawRequest } from './raw-http'
import { startRedis, type RedisServer } from './redis'
import * as appServer from '../index.ts'

// Servers, Redis and Prometheus on a machine that may be busy; Prometheus scrapes every second.
setDefaultTimeout(30_000)

const credentials = testCredentials()
const livekitEnv = { LIVEKIT_API_KEY: credentials.apiKey, LIVEKIT_API_SECRET: credentials.apiSecret }

/** A real Prometheus on loopback, scraping each job's one target every second; it throws (never skips) if not installed. */
async function startPrometheus(targets: Record<string, number>) {
  if (!Bun.which('prometheus')) throw new Error('prometheus is not installed, and the metrics tests need a real one: apt-get install -y prometheus')
  const dir = mkdtempSync(`${tmpdir()}/prometheus-test-`)
  const jobs = Object.entries(targets).map(([job, port]) => `  - job_name: ${job}\n    static_configs:\n      - targets: ['127.0.0.1:${port}']\n`)
  writeFileSync(`${dir}/prometheus.yml`, `global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n${jobs.join('')}`)
  const port = await freePort()
  const child = Bun.spawn(['prometheus', `--config.file=${dir}/prometheus.yml`, `--storage.tsdb.path=${dir}/data`, `--web.listen-address=127.0.0.1:${port}`], {
    stdout: 'pipe',
    stderr: 'pipe',
    stdin: 'ignore',
  })
  const output: string[] = []
  const drain = async (stream: ReadableStream<Uint8Array>) => {
    for await (const chunk of stream) output.push(new TextDecoder().decode(chunk))
  }
  void drain(child.stdout)
  void drain(child.stderr)
  const url = `http://127.0.0.1:${port}`
  const stop = async () => {
    child.kill('SIGKILL')
    await child.exited
    rmSync(dir, { recursive: true, force: true })
  }
  const deadline = Date.now() + 20_000
  while ((await fetch(`${url}/-/ready`).then((answer) => answer.status, () => 0)) !== 200) {
    if (Date.now() > deadline || child.exitCode !== null) {
      await stop()
      throw new Error(`prometheus did not become ready:\n${output.join('')}`)
    }
    await Bun.sleep(100)
  }

  /** An instant query through Prometheus's HTTP API: each series' labels and value. */
  async function query(promql: string): Promise<{ metric: Record<string, string>; value: number }[]> {
    const answer = await (await fetch(`${url}/api/v1/query?query=${encodeURIComponent(promql)}`)).json()
    if (answer.status !== 'success') throw new Error(`prometheus refused ${promql}: ${JSON.stringify(answer)}`)
    return answer.data.result.map(({ metric, value }: { metric: Record<string, string>; value: [number, string] }) => ({ metric, value: Number(value[1]) }))
  }

  /** Waits until Prometheus has scraped the job successfully after this moment, so that what it holds is what the server has now. */
  async function scrapedNow(job: string): Promise<void> {
    const since = Date.now() / 1000
    const deadline = Date.now() + 15_000
    // timestamp() of the raw series: applied to `up == 1`, it would read the query's own time.
    while (!(await query(`timestamp(up{job="${job}"}) and up{job="${job}"} == 1`)).some(({ value }) => value > since)) {
      if (Date.now() > deadline) throw new Error(`prometheus did not scrape ${job} within 15 s: ${JSON.stringify(await query(`up{job="${job}"}`))}`)
      await Bun.sleep(200)
    }
  }

  /** One series' values, keyed by the values of the labels named (e.g. "openvidu 200"). */
  async function countsBy(series: string, job: string, labels: string[], matchers = ''): Promise<Record<string, number>> {
    const results = await query(`sum by (${labels.join(', ')}) (${series}{job="${job}"${matchers}})`)
    return Object.fromEntries(results.map(({ metric, value }) => [labels.map((label) => metric[label]).join(' '), value]))
  }

  return { query, scrapedNow, countsBy, stop }
}

type Prometheus = Awaited<ReturnType<typeof startPrometheus>>

/** Each job Prometheus scrapes, and the port its server serves metrics on: chosen before Prometheus starts. */
const jobs = [
  ...runtimeNames.map((runtime) => `${runtime}-mix`),
  ...sourceRuntimes.map((runtime) => `${runtime}-failing-handler`),
  ...runtimeNames.map((runtime) => `${runtime}-workers`),
]
const metricsPorts: Record<string, number> = {}
let prometheus: Prometheus

beforeAll(async () => {
  for (const job of jobs) metricsPorts[job] = await freePort()
  prometheus = await startPrometheus(metricsPorts)
})

afterAll(async () => {
  await prometheus?.stop()
})

/**
 * What `promtool check metrics` says of a page: its exit code and each line. prom-client's default
 * metrics hold three gauges named *_total (Node's names, which dashboards made for Node read), which
 * promtool flags; these are the only findings a page may have.
 */
async function promtoolFindings(page: string): Promise<{ code: number; lines: string[] }> {
  const check = Bun.spawn(['promtool', 'check', 'metrics'], { stdin: new TextEncoder().encode(page), stdout: 'pipe', stderr: 'pipe' })
  const [code, output] = await Promise.all([check.exited, Promise.all([new Response(check.stdout).text(), new Response(check.stderr).text()])])
  return { code, lines: output.join('\n').split('\n').filter((line) => line.trim()).sort() }
}
const promClientFindings = {
  code: 3,
  lines: ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total'].map((name) => `${name} non-counter metrics should not have "_total" suffix`),
}

const bearer = (token: string) => ({ authorization: `Bearer ${token}` })
const webhookHeaders = (text: string) => ({ 'content-type': 'application/webhook+json', authorization: signWebhook(text, credentials) })

/** A signed webhook on a connection of its own, so that with workers the kernel may give it to any of them. */
function postWebhookAlone(url: string, event: Record<string, unknown>) {
  const text = JSON.stringify(event)
  return rawRequest(new URL('/livekit/webhook', url).href, { ...webhookHeaders(text), 'content-length': String(Buffer.byteLength(text)) }, [text])
}

for (const runtime of runtimeNames) {
  describe(`${runtime}: PROMETHEUS_PORT, read by Prometheus after a known mix of requests`, () => {
    const job = `${runtime}-mix`
    const provider = startIdentityProvider()
    let key: SigningKey
    let server: ServerProcess
    let startedAt: number
    const statuses: Record<string, number[]> = { tokens: [], webhooks: [] }

    beforeAll(async () => {
      key = await makeKey('rsa-1', 'RS256')
      provider.state.published = [key]
      startedAt = Date.now() / 1000
      server = await startServer(runtime, {
        ...livekitEnv,
        PROMETHEUS_PORT: String(metricsPorts[job]),
        AUTH_JWKS_URL: provider.jwksUrl,
        AUTH_ISSUER: issuer,
        AUTH_AUDIENCE: audience,
        // Each caller below asks at most twice, but "eve", whose third request is refused.
        TOKEN_RATE_LIMIT: '2',
        // Below a 400 000-byte webhook, above the largest token request (256 KiB).
        MAX_PENDING_BODY_BYTES: '300000',
      })
      const http = httpClient(server.url)
      const asCaller = async (sub: string) => bearer(await idToken(key, { sub }))
      const openVidu = { roomName: 'room1', participantName: 'alice' }
      const tokenAnswers = [
        await http.postJson('/token', openVidu, await asCaller('ada')), // openvidu 200
        await http.postJson('/token', { room_name: 'room1' }, await asCaller('ada')), // standard 200
        await http.postJson('/token', { roomName: 'room1' }, await asCaller('bob')), // openvidu 400
        await http.postJson('/token', { participant_metadata: 7 }, await asCaller('bob')), // standard 400
        await http.request('/token', { method: 'POST', headers: { 'content-type': 'application/json', ...(await asCaller('cy')) }, body: '{"roomName":' }), // none 400
        await http.postJson('/token', { participant_identity: 'someone-else' }, await asCaller('dee')), // standard 403
        await http.postJson('/token', openVidu), // none 401
        await http.postJson('/token', openVidu, { authorization: 'Bearer not.a.token' }), // none 401
        await http.postJson('/token', openVidu, await asCaller('eve')), // openvidu 200
        await http.postJson('/token', openVidu, await asCaller('eve')), // openvidu 200
        await http.postJson('/token', openVidu, await asCaller('eve')), // none 429
      ]
      // Over the token route's 256 KiB, refused before it is read (a raw socket reads the early answer).
      const tooLarge = await rawRequest(new URL('/token', server.url).href, { 'content-type': 'application/json', 'content-length': '300000', ...(await asCaller('cy')) }, [
        '{"roomName":"',
      ])
      // A body whose second half arrives 1.5 s after its first: an answer known to take over 1 s.
      const slowText = JSON.stringify(openVidu)
      const slowPieces = [slowText.slice(0, 10), slowText.slice(10)]
      const slowHeaders = { 'content-type': 'application/json', 'content-length': String(slowText.length), ...(await asCaller('fay')) }
      const slow = await rawRequest(new URL('/token', server.url).href, slowHeaders, slowPieces, { delayMs: 1500 }) // openvidu 200
      statuses.tokens = [...tokenAnswers.map((answer) => answer.status), tooLarge.status, slow.status]

      const joined = [webhookEvent('participant_joined'), webhookEvent('participant_joined')]
      const postWebhook = (event: unknown, headers?: Record<string, string>) => {
        const text = JSON.stringify(event)
        return http.request('/livekit/webhook', { method: 'POST', headers: headers ?? webhookHeaders(text), body: text })
      }
      const webhookAnswers = [
        await postWebhook(joined[0]), // participant_joined handled
        await postWebhook(joined[1]), // participant_joined handled
        await postWebhook(webhookEvent('room_finished')), // room_finished handled
        await postWebhook(joined[0]), // participant_joined duplicate
        await postWebhook({ ...webhookEvent('agent_job_started'), room: undefined, job: { id: 'AJ_1', agentName: 'a' } }), // agent_job_started handled
        await postWebhook(webhookEvent('room_exploded')), // unknown handled
        await postWebhook(webhookEvent('room_started'), { 'content-type': 'application/webhook+json', authorization: signWebhook('other bytes', credentials) }), // unknown refused
        await postWebhook(webhookEvent('room_started'), { 'content-type': 'application/webhook+json' }), // unknown refused
      ]
      // Signed, but its declared length does not fit what may be read at once: 503 before the body is read.
      const busy = await rawRequest(new URL('/livekit/webhook', server.url).href, { ...webhookHeaders('{}'), 'content-length': '400000' }, ['{'])
      statuses.webhooks = [...webhookAnswers.map((answer) => answer.status), busy.status]

      for (let i = 0; i < 2; i++) expect((await http.request('/health')).status).toBe(200)
      expect((await http.request('/metrics')).status).toBe(404) // route "other"
      await prometheus.scrapedNow(job)
    })

    afterAll(async () => {
      await server?.stop()
      provider.server.stop(true)
    })

    test('the mix was answered as intended (the counts below are of these answers)', () => {
      expect(statuses).toEqual({ tokens: [200, 200, 400, 400, 400, 403, 401, 401, 200, 200, 429, 413, 200], webhooks: [200, 200, 200, 200, 200, 200, 401, 401, 503] })
    })

    test('token_requests_total: each token issued and refused, by contract (none: refused before the body told) and status', async () => {
      expect(await prometheus.countsBy('app_server_token_requests_total', job, ['contract', 'status'])).toEqual({
        'openvidu 200': 4,
        'standard 200': 1,
        'openvidu 400': 1,
        'standard 400': 1,
        'none 400': 1,
        'standard 403': 1,
        'none 401': 2,
        'none 429': 1,
        'none 413': 1,
      })
    })

    test('webhooks_total: handled and duplicate by event name, agent events under their own, names no one knows as "unknown"; refused and busy, whose event is not verified, as "unknown"', async () => {
      expect(await prometheus.countsBy('app_server_webhooks_total', job, ['event', 'outcome'])).toEqual({
        'participant_joined handled': 2,
        'room_finished handled': 1,
        'participant_joined duplicate': 1,
        'agent_job_started handled': 1,
        'unknown handled': 1,
        'unknown refused': 2,
        'unknown busy': 1,
      })
    })

    test('http_request_duration_seconds: every answer, by route and status, /metrics on the public port as "other"', async () => {
      expect(await prometheus.countsBy('app_server_http_request_duration_seconds_count', job, ['route', 'status'])).toEqual({
        '/token 200': 5,
        '/token 400': 3,
        '/token 401': 2,
        '/token 403': 1,
        '/token 413': 1,
        '/token 429': 1,
        '/livekit/webhook 200': 6,
        '/livekit/webhook 401': 2,
        '/livekit/webhook 503': 1,
        '/health 200': 2,
        'other 404': 1,
      })
      // Every answer falls in a bucket up to +Inf, and none took more than 10 s.
      const infinite = await prometheus.countsBy('app_server_http_request_duration_seconds_bucket', job, ['route'], ',le="+Inf"')
      const upTo10s = await prometheus.countsBy('app_server_http_request_duration_seconds_bucket', job, ['route'], ',le="10"')
      expect(infinite).toEqual({ '/token': 13, '/livekit/webhook': 9, '/health': 2, other: 1 })
      expect(upTo10s).toEqual(infinite)
    })

    test('http_request_duration_seconds is in seconds: the token whose body took 1.5 s is above the 1 s bucket, within 2.5 s', async () => {
      const tokens200 = (series: string, le = '') => `app_server_http_request_duration_seconds_${series}{job="${job}",route="/token",status="200"${le && `,le="${le}"`}}`
      const bucket = async (le: string) => (await prometheus.query(tokens200('bucket', le)))[0]!.value
      // Five answers: four at once, and the slow one (1.5 s after its first bytes, less whatever the server took to see them).
      expect({ upTo1s: await bucket('1'), upTo2_5s: await bucket('2.5'), all: await bucket('+Inf') }).toEqual({ upTo1s: 4, upTo2_5s: 5, all: 5 })
      // Over the slow one's second, under what the buckets allow: four within 1 s, one within 2.5 s.
      const [sum] = await prometheus.query(tokens200('sum'))
      expect(sum!.value).toBeGreaterThan(1)
      expect(sum!.value).toBeLessThan(4 * 1 + 2.5)
    })

    test("the standard process series: the process's start time, resident memory, heap, CPU seconds, event-loop lag; bodies pending 0 by route", async () => {
      const value = async (series: string) => (await prometheus.query(`${series}{job="${job}"}`)).map((result) => result.value)
      const [start] = await value('process_start_time_seconds')
      // prom-client rounds it to the second.
      expect(start).toBeGreaterThanOrEqual(Math.floor(startedAt) - 1)
      expect(start).toBeLessThanOrEqual(Date.now() / 1000)
      expect((await value('process_resident_memory_bytes'))[0]).toBeGreaterThan(10 * 1024 * 1024)
      // (Bun's heap "used" can exceed its "total": JavaScriptCore counts them apart.)
      expect((await value('nodejs_heap_size_used_bytes'))[0]).toBeGreaterThan(1024 * 1024)
      expect((await value('nodejs_heap_size_total_bytes'))[0]).toBeGreaterThan(1024 * 1024)
      expect((await value('process_cpu_seconds_total'))[0]).toBeGreaterThan(0)
      expect((await value('nodejs_eventloop_lag_seconds'))[0]).toBeGreaterThanOrEqual(0)
      if (runtime === 'deno') {
        // Deno lets only --allow-all read /proc/self: series read there are left out rather than served as 0.
        expect(await value('process_open_fds')).toEqual([])
        expect(await value('process_virtual_memory_bytes')).toEqual([])
      } else {
        expect((await value('process_open_fds'))[0]).toBeGreaterThan(3)
        expect((await value('process_max_fds'))[0]).toBeGreaterThanOrEqual((await value('process_open_fds'))[0]!)
      }
      expect(await prometheus.countsBy('app_server_request_body_bytes_pending', job, ['route'])).toEqual({ '/token': 0, '/livekit/webhook': 0 })
      // Only with REDIS_URL.
      expect(await prometheus.query(`app_server_shared_state_up{job="${job}"}`)).toEqual([])
    })

    test("promtool check metrics finds nothing in the page but prom-client's own three *_total gauges", async () => {
      const page = await (await fetch(`http://127.0.0.1:${metricsPorts[job]}/metrics`)).text()
      expect(page).toContain('app_server_token_requests_total{contract="openvidu",status="200"} 4')
      expect(await promtoolFindings(page)).toEqual(promClientFindings)
    })

    test('the metrics port serves GET /metrics alone, in the text format; on the public port /metrics stays a 404', async () => {
      const metricsUrl = `http://127.0.0.1:${metricsPorts[job]}`
      expect((await fetch(`${metricsUrl}/metrics`)).headers.get('content-type')).toStartWith('text/plain; version=0.0.4')
      for (const [path, method] of [['/', 'GET'], ['/token', 'POST'], ['/metrics', 'POST']] as const) {
        const answer = await fetch(`${metricsUrl}${path}`, { method })
        expect({ path, method, status: answer.status, body: await answer.json() }).toEqual({ path, method, status: 404, body: { errorMessage: 'Only GET /metrics is served on this port' } })
      }
      expect((await fetch(new URL('/metrics', server.url))).status).toBe(404)
    })
  })
}

for (const runtime of sourceRuntimes) {
  describe(`${runtime}: PROMETHEUS_PORT with a webhook handler that throws`, () => {
    const job = `${runtime}-failing-handler`

    test('webhooks_total counts the failed delivery and the redelivery handled', async () => {
      // index.ts's app with a room_started handler that fails on an event's first delivery.
      const server = await startServer(runtime, { ...livekitEnv, PROMETHEUS_PORT: String(metricsPorts[job]) }, { entry: 'tests/fixtures/custom-handlers-server.ts' })
      try {
        const event = webhookEvent('room_started', { room: { sid: 'RM_flaky', name: 'flaky-room' } })
        expect([(await postWebhookAlone(server.url, event)).status, (await postWebhookAlone(server.url, event)).status]).toEqual([500, 200])
        await prometheus.scrapedNow(job)
        expect(await prometheus.countsBy('app_server_webhooks_total', job, ['event', 'outcome'])).toEqual({ 'room_started failed': 1, 'room_started handled': 1 })
      } finally {
        await server.stop()
      }
    })
  })
}

for (const runtime of sourceRuntimes) {
  describe(`${runtime}: PROMETHEUS_PORT with a metric of the app's own`, () => {
    test("a Counter the app made with prom-client's defaults, counted by its webhook handler, is served beside the server's series", async () => {
      // index.ts's app with a participant_joined handler counting joins in app_participants_joined_total.
      const metricsPort = await freePort()
      const server = await startServer(runtime, { ...livekitEnv, PROMETHEUS_PORT: String(metricsPort) }, { entry: 'tests/fixtures/own-metrics-server.ts' })
      try {
        const joined = [webhookEvent('participant_joined'), webhookEvent('participant_joined')]
        const statuses = [joined[0], joined[1], joined[0]].map((event) => postWebhookAlone(server.url, event!).then((answer) => answer.status))
        expect(await Promise.all(statuses)).toEqual([200, 200, 200])
        const page = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text()
        // The duplicate is answered without running the handler.
        expect(page).toContain('\n# TYPE app_participants_joined_total counter\napp_participants_joined_total 2\n')
        expect(page).toContain('app_server_webhooks_total{event="participant_joined",outcome="handled"} 2\n')
        expect(page).toContain('app_server_webhooks_total{event="participant_joined",outcome="duplicate"} 1\n')
        expect(page).toMatch(/\nprocess_start_time_seconds \d{10}\n/)
        expect(await promtoolFindings(page)).toEqual(promClientFindings)
      } finally {
        await server.stop()
      }
    })
  })
}

describe('in one process: several apps made with PROMETHEUS_PORT (createApp and startServer from index.ts)', () => {
  test('none throws that a metric is already registered, and each metrics port counts its own app\'s answers', async () => {
    const metricsPorts = [await freePort(), await freePort()]
    const apps = metricsPorts.map((port) => appServer.createApp(appServer.loadConfig({ ...livekitEnv, PROMETHEUS_PORT: String(port) })))
    const servers = await Promise.all(apps.map((app) => appServer.startServer(app, 0)))
    try {
      for (const [index, server] of servers.entries()) {
        for (let i = 0; i <= index; i++) expect((await fetch(`http://127.0.0.1:${server.port}/health`)).status).toBe(200)
      }
      const counts = await Promise.all(
        metricsPorts.map(async (port) => {
          const page = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text()
          return /app_server_http_request_duration_seconds_count\{route="\/health",status="200"\} (\d+)/.exec(page)?.[1]
        }),
      )
      expect(counts).toEqual(['1', '2'])
    } finally {
      await Promise.all(servers.map((server) => server.stop()))
    }
    // Stopped with its server, each metrics port is closed.
    for (const port of metricsPorts) expect(await fetch(`http://127.0.0.1:${port}/metrics`).then((answer) => answer.status, () => 'closed')).toBe('closed')
  })
})

/** With WORKERS, Deno needs to read the entry file again (its web workers) and to share the port. */
const workerOptions = (runtime: Runtime) => (runtime === 'deno' ? { command: denoCommandWith('--allow-read=.', '--unstable-net') } : {})

for (const runtime of runtimeNames) {
  describe(`${runtime}: PROMETHEUS_PORT with WORKERS=2`, () => {
    const job = `${runtime}-workers`
    let redis: RedisServer
    let server: ServerProcess

    beforeAll(async () => {
      redis = await startRedis()
      server = await startServer(
        runtime,
        { ...livekitEnv, WORKERS: '2', SERVER_PORT: String(await freePort()), REDIS_URL: redis.url, PROMETHEUS_PORT: String(metricsPorts[job]) },
        workerOptions(runtime),
      )
    })

    afterAll(async () => {
      if (server && server.child.exitCode === null) await server.stop()
      await redis?.stop()
    })

    test('one scrape counts every request, whichever worker answered: 24 tokens and 24 webhooks on connections of their own', async () => {
      const text = JSON.stringify({ roomName: 'room1', participantName: 'alice' })
      const postTokenAlone = () => rawRequest(new URL('/token', server.url).href, { 'content-type': 'application/json', 'content-length': String(text.length) }, [text])
      const events = Array.from({ length: 24 }, () => webhookEvent('participant_joined'))
      const statuses: number[] = []
      for (let i = 0; i < 24; i += 4) {
        const batch = events.slice(i, i + 4)
        statuses.push(...(await Promise.all([...batch.map((event) => postWebhookAlone(server.url, event)), ...batch.map(postTokenAlone)])).map((answer) => answer.status))
      }
      expect(statuses).toEqual(Array(48).fill(200))
      // Both workers took part (each webhook's log line names its worker).
      const ids = new Set(events.map((event) => event.id))
      const workers = () => new Set(server.logs().filter((entry) => entry.msg === 'webhook' && ids.has(entry.id as string)).map((entry) => entry.worker))
      const deadline = Date.now() + 5000
      while (workers().size < 2 && Date.now() < deadline) await Bun.sleep(50)
      expect([...workers()].sort()).toEqual([1, 2])

      await prometheus.scrapedNow(job)
      expect(await prometheus.countsBy('app_server_token_requests_total', job, ['contract', 'status'])).toEqual({ 'openvidu 200': 24 })
      expect(await prometheus.countsBy('app_server_webhooks_total', job, ['event', 'outcome'])).toEqual({ 'participant_joined handled': 24 })
      expect(await prometheus.countsBy('app_server_http_request_duration_seconds_count', job, ['route', 'status'])).toEqual({ '/token 200': 24, '/livekit/webhook 200': 24 })
      // Every worker uses Redis (the supervisor, which holds no state, reports none).
      expect((await prometheus.query(`app_server_shared_state_up{job="${job}"}`)).map(({ value }) => value)).toEqual([1])
    })

    test("the summed page: promtool finds nothing but prom-client's own *_total gauges; the start time is the first process's, once", async () => {
      const page = await (await fetch(`http://127.0.0.1:${metricsPorts[job]}/metrics`)).text()
      expect(await promtoolFindings(page)).toEqual(promClientFindings)
      const starts = page.split('\n').filter((line) => line.startsWith('process_start_time_seconds '))
      expect(starts).toEqual([expect.stringMatching(/^process_start_time_seconds \d{10}$/)])
      const start = Number(starts[0]!.split(' ')[1])
      expect(start).toBeLessThanOrEqual(Date.now() / 1000)
      expect(start).toBeGreaterThan(Date.now() / 1000 - 120)
    })

    test('SIGTERM stops the workers and the metrics listener with them: exit code 0, the port closed', async () => {
      expect(await server.stop()).toBe(0)
      expect(await fetch(`http://127.0.0.1:${metricsPorts[job]}/metrics`).then((answer) => answer.status, () => 'closed')).toBe('closed')
    })
  })
}

for (const runtime of runtimeNames) {
  describe(`${runtime}: PROMETHEUS_PORT busy or invalid`, () => {
    const expectOneLine = async (env: Record<string, string>, fragment: string) => {
      const { code, output } = await runUntilExit(runtime, { ...livekitEnv, SERVER_PORT: '0', ...env })
      expect({ code, lines: output.split('\n').filter((line) => line.trim()) }).toEqual({ code: 1, lines: [expect.stringContaining(fragment)] })
    }

    test('a port already in use: exit code 1 and one line saying PROMETHEUS_PORT is in use', async () => {
      const other = Bun.serve({ port: 0, fetch: () => new Response('someone else') })
      try {
        await expectOneLine({ PROMETHEUS_PORT: String(other.port) }, `PROMETHEUS_PORT ${other.port} is already in use`)
      } finally {
        other.stop(true)
      }
    })

    test('not a port number: exit code 1 and one line naming PROMETHEUS_PORT', async () => {
      await expectOneLine({ PROMETHEUS_PORT: '9o9o' }, 'Configuration error: PROMETHEUS_PORT must be an integer from 1 to 65535, got "9o9o"')
      await expectOneLine({ PROMETHEUS_PORT: '70000' }, 'Configuration error: PROMETHEUS_PORT must be an integer from 1 to 65535, got "70000"')
    })

    test('the public port itself: exit code 1 and one line saying PROMETHEUS_PORT must differ from SERVER_PORT', async () => {
      const port = String(await freePort())
      await expectOneLine({ SERVER_PORT: port, PROMETHEUS_PORT: port }, 'Configuration error: PROMETHEUS_PORT must differ from SERVER_PORT')
    })
  })
}
