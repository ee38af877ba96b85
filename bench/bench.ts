// Measures the server as a user runs it (`bun run index.ts`, and with --deno the Deno command too),
// side by side with what it is compared against, in one run: a bare Elysia app doing the same work
// (bench/floor.ts, issue 11), the server with its shared state on Redis and with WORKERS=2 (issue 9),
// and with each webhook appended to a Redis Stream (EVENTS_STREAM) against Redis dedupe alone.
// Each comparison is a ratio of two processes loaded by wrk in the same round, rounds interleaved.
// With --costs, also copies of index.ts each without one behaviour (CORS, bounded reading, …), to say
// what each costs. Usage: bun run bench [--seconds N] [--deno] [--costs]. The report (markdown) goes
// to stdout, progress to stderr.
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { availableParallelism, tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import type { Subprocess } from 'bun'
import { signWebhook, verifyAccessToken, webhookEvent, type Credentials, type TokenClaims } from '../tests/livekit.ts'
import { startRedis, type RedisServer } from '../tests/redis.ts'
import { denoCommandWith, denoPath, freePort, runtimes, startServer, type Runtime, type ServerProcess, type StartOptions } from '../tests/server.ts'

const root = new URL('..', import.meta.url).pathname

// What is measured

type RouteKey = 'health' | 'openvidu' | 'standard' | 'webhook'
type CostKey = 'cors' | 'bodyBounds' | 'tokenParser' | 'dedupe' | 'responseSchemas'
type VariantKey = 'server' | 'floor' | 'floorCors' | 'limitMemory' | 'limitRedis' | 'stream' | 'workers1' | 'workers2' | 'metrics' | 'policy' | `without ${CostKey}`

interface Variant {
  label: string
  /** The file the runtime's command runs, relative to the project root. */
  entry: string
  /** Set on top of the bench credentials and SERVER_PORT=0. */
  env: Record<string, string>
  /** REDIS_URL = the redis-server this run starts. */
  redis: boolean
  /** SERVER_PORT = a free port picked here (WORKERS needs a fixed one), and Deno's command for workers. */
  workers: boolean
  /** Timed from spawn to first answer, five times, before the load. */
  timeStartup: boolean
  /** PROMETHEUS_PORT = a free port picked here (nothing scrapes it: the cost measured is the counting). */
  metricsPort?: boolean
}

// TOKEN_RATE_LIMIT's largest value: the limiter runs on every token request, and never refuses one
// here (one caller, the loopback address, would need over 16,000 requests/s for a minute).
const limit = '1000000'
const streamKey = 'bench-events'

/**
 * TOKEN_POLICY with 10 roles of 2 room patterns each; without authentication every request has the
 * default role, whose first pattern (a {claim} the anonymous caller lacks) fails before "bench-*" matches.
 */
const benchPolicy = JSON.stringify({
  defaultRole: 'role-9',
  roles: Object.fromEntries(
    Array.from({ length: 10 }, (_, i) => [
      `role-${i}`,
      { rooms: [`team-{org}-${i}-*`, i === 9 ? 'bench-*' : `room-${i}-*`], agents: [`agent-${i}`, 'bench-agent'], grants: { canPublish: true, canSubscribe: true, canPublishData: true } },
    ]),
  ),
  roomConfig: { emptyTimeout: 300, departureTimeout: 20, maxParticipants: 100 },
})

/**
 * With --costs, what each behaviour the server adds to the floor costs: a copy of index.ts without
 * it (these edits, each of which must match index.ts exactly once), measured beside the server.
 */
const costs: Record<CostKey, { label: string; routes: RouteKey[]; edits: [find: string, replace: string][] }> = {
  cors: { label: 'the CORS plugin', routes: ['health', 'openvidu', 'webhook'], edits: [['.use(corsPlugin())', '']] },
  bodyBounds: {
    label: 'bounded body reading (size, budget, 10 s)',
    routes: ['openvidu', 'webhook'],
    edits: [
      ["await readBody(request, maxTokenBodyBytes, 'token', 'text')", 'await request.text()'],
      ["await readBody(request, config.maxBodyBytes, 'webhook', 'bytes')", 'await request.bytes()'],
    ],
  },
  tokenParser: {
    label: "the token route's own parser (admission, Host, Content-Type and JSON checks, bounded reading) for Elysia's",
    routes: ['openvidu'],
    edits: [["parse: [readTokenRequest, 'json'],", '']],
  },
  dedupe: {
    label: 'duplicate detection (webhook ids claimed and remembered, in memory)',
    routes: ['webhook'],
    edits: [
      ["const claim = event.id ? await state.claim(event.id) : 'new'", "const claim = 'new' as Claim"],
      ['if (event.id) await state.complete(event.id)', ''],
    ],
  },
  responseSchemas: {
    label: 'response schemas (validated on every answer)',
    routes: ['health', 'openvidu', 'webhook'],
    edits: [
      ['response: { 200: HealthAnswer },', ''],
      ['response: { 200: t.Union([OpenViduTokenAnswer, StandardTokenAnswer]), ...errorAnswers(400, 401, 403, 408, 413, 429, 503) },', ''],
      ['response: { 200: WebhookAnswer, ...errorAnswers(401, 408, 413, 500, 503) },', ''],
    ],
  },
}
const costKeys = Object.keys(costs) as CostKey[]
/** Where the copies are written: inside the project, so that they import its node_modules. */
const costsDir = '.bench-costs'
const costEntry = (key: CostKey) => `${costsDir}/without-${key}.ts`

/** Every process a run starts, per runtime. */
const variants: Record<VariantKey, Variant> = {
  // First, so that each round measures it right before the server it is compared with (and the server right before the floor).
  policy:      { label: 'TOKEN_POLICY',    entry: 'index.ts',       env: { TOKEN_POLICY: benchPolicy }, redis: false, workers: false, timeStartup: false },
  server:      { label: 'server',          entry: 'index.ts',       env: {},                            redis: false, workers: false, timeStartup: true },
  floor:       { label: 'floor',           entry: 'bench/floor.ts', env: {},                            redis: false, workers: false, timeStartup: true },
  floorCors:   { label: 'floor + cors',    entry: 'bench/floor.ts', env: { FLOOR_CORS: '1' },           redis: false, workers: false, timeStartup: false },
  limitMemory: { label: 'Redis off',       entry: 'index.ts',       env: { TOKEN_RATE_LIMIT: limit },   redis: false, workers: false, timeStartup: false },
  limitRedis:  { label: 'Redis on',        entry: 'index.ts',       env: { TOKEN_RATE_LIMIT: limit },   redis: true,  workers: false, timeStartup: false },
  stream:      { label: 'EVENTS_STREAM',   entry: 'index.ts',       env: { TOKEN_RATE_LIMIT: limit, EVENTS_STREAM: streamKey }, redis: true, workers: false, timeStartup: false },
  workers1:    { label: 'WORKERS=1',       entry: 'index.ts',       env: { WORKERS: '1' },              redis: true,  workers: true,  timeStartup: false },
  workers2:    { label: 'WORKERS=2',       entry: 'index.ts',       env: { WORKERS: '2' },              redis: true,  workers: true,  timeStartup: false },
  metrics:     { label: 'metrics on',      entry: 'index.ts',       env: {},                            redis: false, workers: false, timeStartup: true, metricsPort: true },
  ...(Object.fromEntries(
    costKeys.map((key) => [`without ${key}`, { label: `server without ${key}`, entry: costEntry(key), env: {}, redis: false, workers: false, timeStartup: false }]),
  ) as Record<`without ${CostKey}`, Variant>),
}

interface Comparison {
  title: string
  /** What the ratio is: numerator's requests/s ÷ denominator's, per round. */
  numerator: VariantKey
  denominator: VariantKey
  routes: RouteKey[]
  /** The ratio a runtime's rows are held to, and what that means. */
  goal?: { runtime: Runtime; atLeast: number; meaning: string }
}

/** Every ratio the report gives (besides the server's own "vs /health"); a variant is measured on the routes its comparisons name. */
const comparisons: Record<'floor' | 'cors' | 'redis' | 'stream' | 'workers' | 'metrics' | 'policy', Comparison> = {
  floor:   { title: 'server ÷ floor',            numerator: 'server',     denominator: 'floor',        routes: ['health', 'openvidu', 'webhook'] },
  cors:    { title: 'floor+cors ÷ floor',        numerator: 'floorCors',  denominator: 'floor',        routes: ['health', 'openvidu', 'webhook'] },
  redis:   { title: 'Redis on ÷ off',            numerator: 'limitRedis', denominator: 'limitMemory',  routes: ['openvidu', 'webhook'],
             goal: { runtime: 'bun', atLeast: 0.75, meaning: 'shared state costs at most 25 % of throughput on Bun' } },
  stream:  { title: 'stream ÷ Redis dedupe',     numerator: 'stream',     denominator: 'limitRedis',   routes: ['webhook'],
             goal: { runtime: 'bun', atLeast: 0.85, meaning: 'appending each event to a Redis Stream costs at most 15 % of webhook throughput on Bun' } },
  workers: { title: 'WORKERS=2 ÷ WORKERS=1',     numerator: 'workers2',   denominator: 'workers1',     routes: ['health', 'openvidu'] },
  metrics: { title: 'metrics on ÷ off',          numerator: 'metrics',    denominator: 'server',       routes: ['health', 'openvidu', 'standard', 'webhook'],
             goal: { runtime: 'bun', atLeast: 0.97, meaning: 'PROMETHEUS_PORT costs at most 3 % of throughput on Bun' } },
  policy:  { title: 'TOKEN_POLICY ÷ none',       numerator: 'policy',     denominator: 'server',       routes: ['openvidu', 'standard'],
             goal: { runtime: 'bun', atLeast: 0.95, meaning: 'a 10-role, 20-pattern policy costs /token at most 5 % on Bun' } },
}

/** With --costs: the server without each behaviour ÷ the server. */
const costComparisons: Comparison[] = costKeys.map((key) => ({
  title: `without ${key} ÷ server`,
  numerator: `without ${key}`,
  denominator: 'server',
  routes: costs[key].routes,
}))

/** The comparisons a run makes. */
const activeComparisons = (options: Options) => [...Object.values(comparisons), ...(options.costs ? costComparisons : [])]

/** Writes the copies of index.ts that --costs measures, each without one behaviour. */
function writeCostVariants(): void {
  const source = readFileSync(join(root, 'index.ts'), 'utf8')
  mkdirSync(join(root, costsDir), { recursive: true })
  for (const key of costKeys) {
    let copy = source
    for (const [find, replace] of costs[key].edits) {
      const found = copy.split(find).length - 1
      if (found !== 1) throw new Error(`--costs: index.ts holds ${found} copies of "${find}" (for ${key}), not one: update bench/bench.ts`)
      copy = copy.replace(find, replace)
    }
    writeFileSync(join(root, costEntry(key)), copy)
  }
}

/** Measured besides what the comparisons need: the server on every route, for its "vs /health" column. */
const alsoMeasured: [VariantKey, RouteKey[]][] = [['server', ['health', 'openvidu', 'standard', 'webhook']]]

// How

const wrkThreads = 2
const wrkConnections = 32
const warmupSeconds = 1
// Short rounds, alternating between routes, processes and runtimes, spread whatever else the machine does.
const roundSeconds = 1
const startupRuns = 5
// Every process measured alone (all but the WORKERS ones) runs on the last core, and wrk, Redis and
// this script on the others: the measured process then has a core of its own, and its figures stop
// swaying with whatever wrk and the log reading take. WORKERS processes may use every core.
const cores = availableParallelism()
const serverCore = String(cores - 1)
const loadCores = cores > 2 ? `0-${cores - 2}` : '0'
const allCores = `0-${cores - 1}`
const pinnedTo = (core: string, command: readonly string[]) => ['taskset', '-c', core, ...command]
const luaScript = new URL('wrk.lua', import.meta.url).pathname
/** Deno's workers are web workers (they read the entry file again) sharing the port. */
const denoWorkersCommand = denoCommandWith('--allow-read=.', '--unstable-net')
// Non-default credentials, so the run also proves the server reads its configuration.
const credentials: Credentials = { apiKey: 'bench-api-key', apiSecret: `bench-secret-${crypto.randomUUID()}` }
const baseEnv = { SERVER_PORT: '0', LIVEKIT_API_KEY: credentials.apiKey, LIVEKIT_API_SECRET: credentials.apiSecret }

interface Options {
  seconds: number
  rounds: number
  runtimes: Runtime[]
  costs: boolean
}

function parseOptions(): Options {
  const { values } = parseArgs({
    args: Bun.argv.slice(2),
    options: { seconds: { type: 'string', default: '10' }, deno: { type: 'boolean', default: false }, costs: { type: 'boolean', default: false } },
  })
  const seconds = Number(values.seconds)
  if (!Number.isInteger(seconds) || seconds < 1 || seconds > 300) {
    throw new Error(`--seconds must be a whole number from 1 to 300, got "${values.seconds}"`)
  }
  return { seconds, rounds: Math.ceil(seconds / roundSeconds), runtimes: values.deno ? ['bun', 'deno'] : ['bun'], costs: values.costs }
}

/** What is missing to run, and how to get it: this script installs nothing itself. */
function missingTools(): string[] {
  const needed: [tool: string, install: string][] = [
    ['wrk', 'apt-get install -y wrk'],
    ['bun', 'npm install -g bun'],
    ['redis-server', 'apt-get install -y redis-server'],
    ['taskset', 'apt-get install -y util-linux'],
  ]
  return needed.filter(([tool]) => !Bun.which(tool)).map(([tool, install]) => `${tool} is not on the PATH; install it with: ${install}`)
}

// Processes: every one this run starts, so that each is stopped even when the run fails or is interrupted.

const servers = new Set<ServerProcess>()
const wrkProcesses = new Set<Subprocess>()
let redis: RedisServer | undefined

async function variantEnv(variant: Variant): Promise<Record<string, string>> {
  const env: Record<string, string> = { ...baseEnv, ...variant.env }
  if (variant.redis) env.REDIS_URL = redis!.url
  if (variant.workers) env.SERVER_PORT = String(await freePort())
  if (variant.metricsPort) env.PROMETHEUS_PORT = String(await freePort())
  return env
}

function variantOptions(runtime: Runtime, variant: Variant, pinned: boolean): StartOptions {
  const command = variant.workers && runtime === 'deno' ? denoWorkersCommand : runtimes[runtime]
  // Set either way: a child inherits this script's cores.
  return { entry: variant.entry, command: pinnedTo(pinned ? serverCore : allCores, command) }
}

/** A variant's process, on a core of its own if `pinned` (never the WORKERS ones, which need them all). */
async function launch(runtime: Runtime, key: VariantKey, { pinned = false } = {}): Promise<ServerProcess> {
  const variant = variants[key]
  const server = await startServer(runtime, await variantEnv(variant), variantOptions(runtime, variant, pinned && !variant.workers))
  servers.add(server)
  if (variant.redis && !(await redisInUse(server))) throw new Error(`${runtime} ${variant.label}: /health says Redis is not in use; nothing measured`)
  return server
}

/** /health says whether the server uses Redis: a variant meant to must, or it measures its memory. */
async function redisInUse(server: ServerProcess): Promise<boolean> {
  const json = (await fetch(loopbackUrl(server) + '/health').then((response) => response.json())) as { redis?: string }
  return json.redis === 'ok'
}

async function stopServer(server: ServerProcess): Promise<void> {
  // The server gives requests in flight 10 s after SIGTERM; past that it is stuck.
  const kill = setTimeout(() => server.child.kill('SIGKILL'), 15_000)
  await server.stop()
  clearTimeout(kill)
  servers.delete(server)
}

async function stopEverything(): Promise<void> {
  for (const child of wrkProcesses) child.kill('SIGKILL')
  await Promise.all([...servers].map(stopServer))
  await redis?.stop()
  redis = undefined
}

/** A file under /proc, or "" once its process is gone. */
function readProc(path: string): string {
  try {
    return readFileSync(path, 'utf8')
  } catch {
    return '' // gone meanwhile
  }
}

/** A process and its descendants (Bun's workers are child processes). */
function processTree(pid: number): number[] {
  const children = readProc(`/proc/${pid}/task/${pid}/children`).split(' ').filter(Boolean).map(Number)
  return [pid, ...children.flatMap(processTree)]
}

/** Resident memory of a process and its descendants, in MB. */
const treeRssMegabytes = (pid: number) => sum(processTree(pid).map((one) => Number(/^VmRSS:\s+(\d+) kB/m.exec(readProc(`/proc/${one}/status`))?.[1] ?? 0) / 1024))

/** CPU time (user and system) a process and its descendants have used so far, in µs. */
const treeCpuMicros = (pid: number) => sum(processTree(pid).map(cpuMicros))

function cpuMicros(pid: number): number {
  const stat = readProc(`/proc/${pid}/stat`)
  if (!stat) return 0
  // Fields after the command (which may hold spaces): utime and stime are the 12th and 13th.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return ((Number(fields[11]) + Number(fields[12])) * 1e6) / clockTicksPerSecond
}

const clockTicksPerSecond = Number(Bun.spawnSync(['getconf', 'CLK_TCK']).stdout.toString().trim()) || 100

// Requests

interface HttpRequest {
  method: 'GET' | 'POST'
  path: string
  contentType?: string
  authorization?: string
  body?: string
}

/** The request as wrk.lua sends it: complete HTTP/1.1, ended by the NUL byte that separates requests. */
function rawRequest({ method, path, contentType, authorization, body = '' }: HttpRequest, host: string): string {
  const headers = [`Host: ${host}`]
  if (contentType) headers.push(`Content-Type: ${contentType}`)
  if (authorization) headers.push(`Authorization: ${authorization}`)
  if (method === 'POST') headers.push(`Content-Length: ${Buffer.byteLength(body)}`)
  const raw = `${method} ${path} HTTP/1.1\r\n${headers.join('\r\n')}\r\n\r\n${body}`
  // JSON escapes control characters, so a NUL here would be a bug in this file.
  if (raw.includes('\0')) throw new Error(`request to ${path} contains a NUL byte`)
  return `${raw}\0`
}

const toFetchInit = ({ method, contentType, authorization, body }: HttpRequest): RequestInit => ({
  method,
  headers: { ...(contentType && { 'content-type': contentType }), ...(authorization && { authorization }) },
  body,
})

interface Scenario {
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
const scenarios: Record<RouteKey, Scenario> = {
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
const routeKeys = Object.keys(scenarios) as RouteKey[]

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

// Running wrk

interface WrkResult {
  requests: number
  durationUs: number
  p50Us: number
  p99Us: number
  statusErrors: number
  socketErrors: number
  exhaustedThreads: number
}

const workDir = mkdtempSync(join(tmpdir(), 'livekit-bench-'))
let wrkRuns = 0

/** wrk wants an address: "localhost" may resolve to ::1 first, so name IPv4 loopback outright. */
const loopbackUrl = (server: ServerProcess) => `http://127.0.0.1:${new URL(server.url).port}`

async function runWrk(server: ServerProcess, perThread: HttpRequest[][], seconds: number, cycle: boolean, pinned: boolean): Promise<WrkResult> {
  wrkRuns += 1
  const prefix = join(workDir, `requests-${wrkRuns}`)
  const host = new URL(loopbackUrl(server)).host
  const files = perThread.map((requests, i) => {
    const file = `${prefix}.${i + 1}`
    writeFileSync(file, requests.map((request) => rawRequest(request, host)).join(''))
    return file
  })
  const args = [`-t${wrkThreads}`, `-c${wrkConnections}`, `-d${seconds}s`, '--timeout', '5s', '-s', luaScript]
  const command = ['wrk', ...args, loopbackUrl(server), '--', prefix, cycle ? 'cycle' : 'once']
  const child = Bun.spawn(pinned ? pinnedTo(loadCores, command) : command, {
    stdout: 'pipe',
    stderr: 'pipe',
  })
  wrkProcesses.add(child)
  const [output, errors, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited])
  wrkProcesses.delete(child)
  for (const file of files) rmSync(file)
  const summary = output.split('\n').find((line) => line.startsWith('BENCH_RESULT '))
  if (code !== 0 || !summary) throw new Error(`wrk failed (exit ${code}):\n${output}${errors}`)
  return JSON.parse(summary.slice('BENCH_RESULT '.length)) as WrkResult
}

/** Runs a scenario under wrk; distinct requests are sized per thread, so no two threads share one. */
function runScenario(target: Target, seconds: number): Promise<WrkResult> {
  const scenario = scenarios[target.route]
  const requests = Array.from({ length: wrkThreads }, () => scenario.requests(scenario.distinct ? target.perThread : 1))
  return runWrk(target.server, requests, seconds, !scenario.distinct, target.pinned)
}

// Checks around each measurement

/** Sends a few requests of the kind wrk will send and insists on the success answer. */
async function verifySample(server: ServerProcess, scenario: Scenario, where: string): Promise<void> {
  // Distinct requests get their own sample, generated the same way: a sampled event is then handled,
  // and sending it again under load would only measure the duplicate path.
  const sample = scenario.distinct ? scenario.requests(20) : scenario.requests(1)
  for (const request of sample) {
    const response = await fetch(loopbackUrl(server) + request.path, toFetchInit(request))
    const text = await response.text()
    let json: unknown
    try {
      json = JSON.parse(text)
    } catch {
      json = text
    }
    const problem = scenario.wrongAnswer(response.status, json)
    if (problem) throw new Error(`${where}: ${problem}; nothing measured`)
  }
}

/** The server writes its log lines as it answers; wait until the pipe has been drained too. */
async function settledLines(server: ServerProcess, from: number): Promise<string[]> {
  let count = -1
  for (let waited = 0; count !== server.lines.length && waited < 5000; waited += 100) {
    count = server.lines.length
    await Bun.sleep(100)
  }
  return server.lines.slice(from)
}

interface ServerLog {
  warningsAndErrors: number
  handledWebhooks: number
  refusedWebhooks: number
  duplicateWebhooks: number
}

/** Counts by substring: the log is one JSON object per line, keys in a fixed order. */
function readServerLog(lines: string[]): ServerLog {
  const count = (needle: string) => lines.reduce((sum, line) => sum + (line.includes(needle) ? 1 : 0), 0)
  return {
    warningsAndErrors: count('"level":"warn"') + count('"level":"error"'),
    handledWebhooks: count('"msg":"webhook",'),
    refusedWebhooks: count('"msg":"webhook refused"'),
    duplicateWebhooks: count('"msg":"webhook duplicate"'),
  }
}

// Measuring

interface Round {
  result: WrkResult
  /** CPU time the measured process (and its workers) used during the round, in µs. */
  cpuMicros: number
  log: ServerLog
  /** Why the round does not measure what its row claims: it is then left out of every figure. */
  problems: string[]
}

/** A process of the run: one variant on one runtime. */
interface Running {
  runtime: Runtime
  variant: VariantKey
  server: ServerProcess
  pinned: boolean
}

/** One route on one process of one runtime, measured over rounds that alternate with every other target's. */
interface Target {
  runtime: Runtime
  variant: VariantKey
  route: RouteKey
  server: ServerProcess
  /** Whether the process runs on a core of its own (and wrk on the others). */
  pinned: boolean
  /** Distinct requests each wrk thread gets per round. */
  perThread: number
  /** One per round, in order. */
  rounds: Round[]
}

const where = (target: Target) => `${target.runtime} ${variants[target.variant].label} ${scenarios[target.route].label}`

/** The routes each variant is measured on: what the comparisons and alsoMeasured name. */
function routesByVariant(options: Options): Map<VariantKey, Set<RouteKey>> {
  const needed = new Map<VariantKey, Set<RouteKey>>()
  const add = (variant: VariantKey, routes: RouteKey[]) => {
    const set = needed.get(variant) ?? new Set()
    routes.forEach((route) => set.add(route))
    needed.set(variant, set)
  }
  for (const { numerator, denominator, routes } of activeComparisons(options)) (add(numerator, routes), add(denominator, routes))
  for (const [variant, routes] of alsoMeasured) add(variant, routes)
  return needed
}

const variantKeys = Object.keys(variants) as VariantKey[]

/** The variants something is measured on, in the order of the variants table. */
const measuredVariants = (needed: Map<VariantKey, Set<RouteKey>>) => variantKeys.filter((variant) => needed.has(variant))

/** Route by route, then runtime, then process: the two sides of every comparison run next to each other. */
function planTargets(running: Running[], options: Options): Target[] {
  const needed = routesByVariant(options)
  const processOf = (runtime: Runtime, variant: VariantKey) => running.find((one) => one.runtime === runtime && one.variant === variant)!
  return routeKeys.flatMap((route) =>
    options.runtimes.flatMap((runtime) =>
      measuredVariants(needed)
        .filter((variant) => needed.get(variant)!.has(route))
        .map((variant) => {
          const { server, pinned } = processOf(runtime, variant)
          return { runtime, variant, route, server, pinned, perThread: 1, rounds: [] }
        }),
    ),
  )
}

/** Distinct webhooks prepared per second of warm-up: above any rate this server reaches here. */
const warmupWebhookRate = 40_000

/** Checks the answers, warms the route up, and sizes its distinct requests from the warm-up rate. */
async function warmUp(target: Target): Promise<void> {
  const scenario = scenarios[target.route]
  await verifySample(target.server, scenario, where(target))
  target.perThread = Math.ceil((warmupWebhookRate * warmupSeconds) / wrkThreads)
  const warmup = await runScenario(target, warmupSeconds)
  if (warmup.statusErrors > 0) {
    throw new Error(`${where(target)}: ${warmup.statusErrors} error answers during the warm-up; nothing measured`)
  }
  const rate = warmup.exhaustedThreads > 0 ? 2 * warmupWebhookRate : warmup.requests / (warmup.durationUs / 1e6)
  // Twice what the warm-up rate needs, and then some: the route gets faster as it warms.
  target.perThread = Math.ceil((2 * rate * roundSeconds) / wrkThreads) + 1000
}

async function measureRound(target: Target): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    const from = target.server.lines.length
    const cpuBefore = treeCpuMicros(target.server.child.pid)
    const result = await runScenario(target, roundSeconds)
    const cpuMicros = treeCpuMicros(target.server.child.pid) - cpuBefore
    const log = readServerLog(await settledLines(target.server, from))
    // A server that gave up on Redis during the round measured its own memory, for part of it at least.
    const lostRedis = variants[target.variant].redis && !(await redisInUse(target.server))
    // A thread that ran out of distinct requests resent one: discard the round, retry with twice as many.
    if (result.exhaustedThreads > 0 && attempt < 3) {
      target.perThread *= 2
      continue
    }
    const problems = [...roundProblems(target, result, log), ...(lostRedis ? ['/health says Redis was not in use at the end'] : [])]
    target.rounds.push({ result, cpuMicros, log, problems })
    return
  }
}

/** Every target once per round; every other round in reverse, so neither side of a pair always goes first. */
async function measureRounds(targets: Target[], rounds: number): Promise<void> {
  for (let round = 1; round <= rounds; round++) {
    console.error(`Round ${round} of ${rounds}…`)
    for (const target of round % 2 === 1 ? targets : [...targets].reverse()) await measureRound(target)
  }
}

/** Why a round does not measure what its row claims; empty when it does. */
function roundProblems(target: Target, result: WrkResult, log: ServerLog): string[] {
  const problems: string[] = []
  if (result.exhaustedThreads > 0) problems.push('ran out of distinct requests; the figures include repeats')
  if (result.statusErrors > 0) problems.push(`${result.statusErrors} answers were 4xx/5xx`)
  if (result.socketErrors > 0) problems.push(`${result.socketErrors} socket errors`)
  if (log.warningsAndErrors > 0) problems.push(`the server logged ${log.warningsAndErrors} warnings or errors`)
  if (scenarios[target.route].distinct) {
    if (log.refusedWebhooks > 0) problems.push(`${log.refusedWebhooks} webhooks were refused`)
    if (log.duplicateWebhooks > 0) problems.push(`${log.duplicateWebhooks} webhooks were duplicates`)
    // Each answer wrk counted must come from a handled event (a few more may be in flight at the end).
    if (log.handledWebhooks < result.requests) problems.push(`${result.requests} answers but only ${log.handledWebhooks} webhooks handled`)
  }
  return problems
}

/** Spawn to the first successful /health answer, as a user (or an orchestrator's probe) sees it. */
async function startupMs(runtime: Runtime, variant: VariantKey): Promise<number> {
  const started = performance.now()
  const server = await launch(runtime, variant)
  try {
    for (const deadline = started + 20_000; performance.now() < deadline; await Bun.sleep(5)) {
      const ok = await fetch(loopbackUrl(server) + '/health').then((response) => response.ok, () => false)
      if (ok) return performance.now() - started
    }
    throw new Error(`${runtime} ${variants[variant].label}: /health did not answer within 20 s of the start`)
  } finally {
    await stopServer(server)
  }
}

// Figures: medians over the rounds left after discarding those with problems

const sum = (values: number[]) => values.reduce((total, value) => total + value, 0)

/** The middle value, or the mean of the two middle ones; undefined for no values. */
function median(values: number[]): number | undefined {
  const sorted = [...values].sort((a, b) => a - b)
  const middle = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[middle] : sorted.length === 0 ? undefined : (sorted[middle - 1]! + sorted[middle]!) / 2
}
const rate = (round: Round) => round.result.requests / (round.result.durationUs / 1e6)
/** Requests answered per second of the process's CPU time: what the work of one request costs, whatever else ran. */
const efficiency = (round: Round) => round.result.requests / (round.cpuMicros / 1e6)
const cpuMicrosPerRequest = (round: Round) => round.cpuMicros / round.result.requests
const isClean = (round: Round | undefined): round is Round => round !== undefined && round.problems.length === 0

interface Ratio {
  median: number
  low: number
  high: number
  /** Rounds where both sides were clean. */
  rounds: number
}

/** The per-round ratio numerator ÷ denominator of requests/s (or of another measure), over the rounds clean on both sides. */
function ratio(numerator: Target | undefined, denominator: Target | undefined, measure = rate): Ratio | undefined {
  if (!numerator || !denominator) return undefined
  const ratios = numerator.rounds.flatMap((round, i) => {
    const other = denominator.rounds[i]
    return isClean(round) && isClean(other) ? [measure(round) / measure(other)] : []
  })
  if (ratios.length === 0) return undefined
  return { median: median(ratios)!, low: Math.min(...ratios), high: Math.max(...ratios), rounds: ratios.length }
}

const cleanRounds = (target: Target) => target.rounds.filter(isClean)
const medianRate = (target: Target | undefined) => target && median(cleanRounds(target).map(rate))
const medianCpu = (target: Target | undefined) => target && median(cleanRounds(target).map(cpuMicrosPerRequest))
const medianLatencyMs = (target: Target, pick: (result: WrkResult) => number) => {
  const value = median(cleanRounds(target).map((round) => pick(round.result)))
  return value === undefined ? undefined : value / 1000
}

/** Looks up the target of a runtime, process and route, if it was measured. */
type Find = (runtime: Runtime, variant: VariantKey, route: RouteKey) => Target | undefined

function finder(targets: Target[]): Find {
  const byKey = new Map(targets.map((target) => [`${target.runtime} ${target.variant} ${target.route}`, target]))
  return (runtime, variant, route) => byKey.get(`${runtime} ${variant} ${route}`)
}

// Reporting

async function commandOutput(command: string[]): Promise<string> {
  const child = Bun.spawn(command, { stdout: 'pipe', stderr: 'pipe' })
  const [out, err] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited])
  return out + err
}

async function describeMachine(runtimes: Runtime[]): Promise<string> {
  const versions = [`Bun ${(await commandOutput(['bun', '--version'])).trim()}`]
  if (runtimes.includes('deno')) versions.push(`Deno ${/deno (\S+)/.exec(await commandOutput([denoPath, '--version']))?.[1]}`)
  // Debian's wrk reports e.g. "wrk debian/4.1.0-3+b2 [epoll]".
  const wrk = /wrk (?:\w+\/)?([\d.]+)/.exec(await commandOutput(['wrk', '--version']))?.[1] ?? '?'
  const redisVersion = /v=(\S+)/.exec(await commandOutput(['redis-server', '--version']))?.[1] ?? '?'
  return `${cores} cores, ${process.platform} ${process.arch}; ${versions.join(', ')}; wrk ${wrk}; redis-server ${redisVersion}`
}

type Align = 'left' | 'right'

function markdownTable(header: string[], align: Align[], rows: string[][]): string {
  const widths = header.map((title, i) => Math.max(title.length, ...rows.map((row) => row[i]!.length)))
  const pad = (cell: string, i: number) => (align[i] === 'right' ? cell.padStart(widths[i]!) : cell.padEnd(widths[i]!))
  const line = (cells: string[]) => `| ${cells.map(pad).join(' | ')} |`
  const rule = `|${widths.map((width, i) => (align[i] === 'right' ? `${'-'.repeat(width + 1)}:` : `${'-'.repeat(width + 2)}`)).join('|')}|`
  return [line(header), rule, ...rows.map(line)].join('\n')
}

const none = '—'
const integer = (value: number | undefined) => (value === undefined ? none : Math.round(value).toLocaleString('en-US'))
const micros = (value: number | undefined) => (value === undefined ? none : `${value.toFixed(1)} µs`)
const latency = (target: Target) => {
  const [p50, p99] = [medianLatencyMs(target, (r) => r.p50Us), medianLatencyMs(target, (r) => r.p99Us)]
  return p50 === undefined || p99 === undefined ? none : `${p50.toFixed(2)} / ${p99.toFixed(2)} ms`
}
/** "0.62× (0.58–0.66)": the median per-round ratio, then the lowest and highest. */
const times = (ratio: Ratio | undefined) =>
  ratio ? `${ratio.median.toFixed(2)}× (${ratio.low.toFixed(2)}–${ratio.high.toFixed(2)})` : none

const howToRead = (rounds: number) =>
  `How to read these tables: every figure comes from this one run. Each row's process was loaded by wrk ` +
  `(${wrkThreads} threads, ${wrkConnections} connections) for ${rounds} rounds of ${roundSeconds} s, after a ${warmupSeconds} s warm-up, ` +
  `and every round measured every row once, route by route with the two sides of each comparison back to back ` +
  `(the order reversed every other round), so that whatever else the machine did weighed on all rows alike. ` +
  `Every process but the WORKERS ones ran on a core of its own (the last, \`taskset\`), wrk, Redis and this script on the others. ` +
  `"CPU/req" is the CPU time (user and system) the process used in a round divided by the requests it answered there, ` +
  `median over the rounds; a "(CPU)" ratio is B's CPU per request divided by A's, per round, so that like the requests/s ` +
  `ratio 0.70× means A does 30 % less in the same time, and it holds even when wrk, not the process, sets the pace ` +
  `(which it can for /health: wrk has one core). ` +
  `Requests/s and latencies are medians over the rounds. A ratio "A ÷ B" is A's requests/s divided by B's in the same round, ` +
  `median over the rounds, with the lowest and highest round in brackets: 1.00× means no difference, 0.70× that A answers 30 % fewer ` +
  `requests than B, and a wide bracket means a noisy machine rather than a real difference. Absolute figures drift from run to run ` +
  `and machine to machine; ratios measured side by side are what carries. "server ÷ floor" is what the server's own work ` +
  `with its default settings (bounded body reading, JSON checks, both token contracts on one route, duplicate detection, CORS, ` +
  `error mapping; no authentication or rate limit) costs beyond ` +
  `a bare Elysia app minting the same tokens and verifying the same webhooks (bench/floor.ts); "floor+cors ÷ floor" is the CORS plugin's ` +
  `cost alone; "vs /health" relates each route to the server's cheapest. "Redis on ÷ off" is the server with TOKEN_RATE_LIMIT and ` +
  `REDIS_URL (rate limit and webhook ids on Redis) against the same server keeping them in memory. "WORKERS=2 ÷ WORKERS=1" is two ` +
  `serving processes (threads on Deno) against one, both with REDIS_URL and no rate limit (so these routes do not wait on Redis); ` +
  `wrk, Redis and the server share the machine's cores, ` +
  `so it cannot reach 2×. Rounds with an error answer, a socket error, a warning in the server's log, or a webhook count that does ` +
  `not match the answers are left out of every figure and listed below the tables.`

/** Per runtime: the server against the floor and the floor with CORS, route by route (issue 11). */
function floorTable(runtime: Runtime, find: Find): string {
  const rows = routeKeys
    .filter((route) => find(runtime, 'server', route))
    .map((route) => {
      const server = find(runtime, 'server', route)!
      const floor = find(runtime, 'floor', route)
      const floorCors = find(runtime, 'floorCors', route)
      return [
        scenarios[route].label,
        integer(medianRate(server)),
        integer(medianRate(floor)),
        times(ratio(server, floor)),
        micros(medianCpu(server)),
        micros(medianCpu(floor)),
        times(ratio(server, floor, efficiency)),
        times(ratio(floorCors, floor)),
        times(ratio(floorCors, floor, efficiency)),
        times(ratio(server, find(runtime, 'server', 'health'))),
        latency(server),
      ]
    })
  return markdownTable(
    [
      'route',
      'server req/s',
      'floor req/s',
      `${comparisons.floor.title} (req/s)`,
      'server CPU/req',
      'floor CPU/req',
      `${comparisons.floor.title} (CPU)`,
      `${comparisons.cors.title} (req/s)`,
      `${comparisons.cors.title} (CPU)`,
      'server vs /health',
      'server p50 / p99',
    ],
    ['left', ...Array<Align>(10).fill('right')],
    rows,
  )
}

/** One comparison, every runtime and route: both sides' requests/s and their ratio (and its goal). */
function comparisonTable(comparison: Comparison, runtimes: Runtime[], find: Find): string {
  const { numerator, denominator, goal } = comparison
  const rows = runtimes.flatMap((runtime) =>
    comparison.routes.map((route) => {
      const [top, bottom] = [find(runtime, numerator, route), find(runtime, denominator, route)]
      const measured = ratio(top, bottom)
      const verdict = !goal || goal.runtime !== runtime || !measured ? none : measured.median >= goal.atLeast ? 'met' : 'NOT met'
      const cells = [runtime, scenarios[route].label, integer(medianRate(bottom)), integer(medianRate(top)), times(measured)]
      return goal ? [...cells, verdict] : cells
    }),
  )
  const header = ['runtime', 'route', `${variants[denominator].label} req/s`, `${variants[numerator].label} req/s`, comparison.title]
  const goalColumn = goal ? [`goal: ≥ ${goal.atLeast.toFixed(2)}× on ${goal.runtime}`] : []
  return markdownTable([...header, ...goalColumn], [...header.map((_, i) => (i < 2 ? 'left' : 'right') as Align), ...goalColumn.map(() => 'right' as Align)], rows)
}

/** With --costs: per behaviour, the server without it against the server, in requests/s and in CPU per request. */
function costsSection(runtimes: Runtime[], find: Find): string {
  const rows = costKeys.flatMap((key) =>
    runtimes.flatMap((runtime) =>
      costs[key].routes.map((route) => {
        const [without, server] = [find(runtime, `without ${key}`, route), find(runtime, 'server', route)]
        return [costs[key].label, runtime, scenarios[route].label, times(ratio(without, server)), times(ratio(without, server, efficiency))]
      }),
    ),
  )
  return [
    '#### What each behaviour costs: the server without it ÷ the server (issue 11)',
    '',
    markdownTable(['without', 'runtime', 'route', 'req/s', 'CPU'], ['left', 'left', 'left', 'right', 'right'], rows),
    '',
    '1.10× means the server answers 10 % more without it: that is what the behaviour costs.',
    '',
  ].join('\n')
}

interface ProcessFigures {
  runtime: Runtime
  variant: VariantKey
  startupMs?: number
  rssMb: number
}

function processTable(figures: ProcessFigures[]): string {
  const rows = figures.map(({ runtime, variant, startupMs, rssMb }) => [
    runtime,
    variants[variant].label,
    startupMs === undefined ? none : `${integer(startupMs)} ms`,
    `${integer(rssMb)} MB`,
  ])
  return markdownTable(['runtime', 'process', `start to first answer (median of ${startupRuns})`, 'RSS after the load'], ['left', 'left', 'right', 'right'], rows)
}

function webhookNote(targets: Target[]): string {
  const notes = targets
    .filter((target) => scenarios[target.route].distinct)
    .map((target) => {
      const total = (pick: (log: ServerLog) => number) => integer(sum(target.rounds.map((round) => pick(round.log))))
      return `${target.runtime} ${variants[target.variant].label} handled ${total((l) => l.handledWebhooks)} (${total((l) => l.refusedWebhooks)} refused, ${total((l) => l.duplicateWebhooks)} duplicates)`
    })
  return `Webhooks: each sent once, with its own event id and signature; ${notes.join('; ')}.`
}

/** Every discarded round, and every warning a process logged outside the measured rounds. */
function problemList(targets: Target[], strayWarnings: string[]): string[] {
  const discarded = targets.flatMap((target) =>
    target.rounds.flatMap((round, i) => (round.problems.length > 0 ? [`${where(target)}, round ${i + 1}: ${round.problems.join('; ')}`] : [])),
  )
  return [...discarded, ...strayWarnings]
}

interface Report {
  options: Options
  machine: string
  targets: Target[]
  processes: ProcessFigures[]
  problems: string[]
}

/** A comparison's table under its heading, and the goal it is held to. */
function goalSection(comparison: Comparison, heading: string, runtimes: Runtime[], find: Find): string[] {
  const goal = comparison.goal!
  return [`#### ${heading}`, '', comparisonTable(comparison, runtimes, find), '', `Goal: ${goal.meaning} (${comparison.title} ≥ ${goal.atLeast.toFixed(2)}×).`, '']
}

function report({ options, machine, targets, processes, problems }: Report): string {
  const find = finder(targets)
  return [
    `### Benchmark, ${new Date().toISOString().slice(0, 10)}`,
    '',
    `- Machine: ${machine}; the measured process on core ${serverCore} (WORKERS: all cores), wrk, Redis and this script on ${loadCores}.`,
    `- ${options.rounds} rounds of ${roundSeconds} s per row (\`--seconds ${options.seconds}\`).`,
    '',
    howToRead(options.rounds),
    '',
    ...options.runtimes.flatMap((runtime) => [`#### ${runtime}: the server against the floor (issue 11)`, '', floorTable(runtime, find), '']),
    ...goalSection(comparisons.redis, `Shared state: ${comparisons.redis.title}, TOKEN_RATE_LIMIT=${limit} on both (issue 9)`, options.runtimes, find),
    ...goalSection(comparisons.stream, `Events onward: ${comparisons.stream.title}, EVENTS_STREAM=${streamKey} against REDIS_URL alone, TOKEN_RATE_LIMIT on both`, options.runtimes, find),
    ...goalSection(comparisons.metrics, `Metrics: ${comparisons.metrics.title} (PROMETHEUS_PORT set, or not)`, options.runtimes, find),
    `#### Workers: ${comparisons.workers.title}, REDIS_URL on both (issue 9)`,
    '',
    comparisonTable(comparisons.workers, options.runtimes, find),
    '',
    ...goalSection(comparisons.policy, `Token policy: ${comparisons.policy.title} (10 roles, 20 patterns, a roomConfig; no authentication)`, options.runtimes, find),
    ...(options.costs ? [costsSection(options.runtimes, find)] : []),
    '#### Processes',
    '',
    processTable(processes),
    '',
    webhookNote(targets),
    ...(problems.length > 0 ? ['', `Left out of the figures (${problems.length}):`, ...problems.map((problem) => `- ${problem}`)] : []),
  ].join('\n')
}

// The run

async function timeStartups(options: Options): Promise<Map<string, number>> {
  const timed = variantKeys.filter((variant) => variants[variant].timeStartup)
  console.error(`Timing ${startupRuns} starts of ${timed.map((variant) => variants[variant].label).join(' and ')} per runtime…`)
  const samples = new Map<string, number[]>()
  for (let run = 0; run < startupRuns; run++) {
    for (const runtime of options.runtimes) {
      for (const variant of timed) {
        const key = `${runtime} ${variant}`
        samples.set(key, [...(samples.get(key) ?? []), await startupMs(runtime, variant)])
      }
    }
  }
  return new Map([...samples].map(([key, values]) => [key, median(values)!]))
}

/** Every process the plan needs, per runtime, all up for the whole measurement. */
async function launchAll(options: Options): Promise<Running[]> {
  const running: Running[] = []
  for (const runtime of options.runtimes) {
    for (const variant of measuredVariants(routesByVariant(options))) {
      console.error(`Starting ${runtime} ${variants[variant].label}…`)
      const pinned = !variants[variant].workers
      running.push({ runtime, variant, pinned, server: await launch(runtime, variant, { pinned }) })
    }
  }
  return running
}

/** Warnings and errors a process logged outside its measured rounds (at start, in a warm-up, between rounds). */
function strayWarnings(running: Running[], targets: Target[]): string[] {
  return running.flatMap(({ runtime, variant, server }) => {
    const inRounds = sum(targets.filter((target) => target.server === server).flatMap((target) => target.rounds.map((round) => round.log.warningsAndErrors)))
    const warnings = server.lines.filter((line) => readServerLog([line]).warningsAndErrors > 0)
    if (warnings.length <= inRounds) return []
    const messages = [...new Set(warnings.map(logMessage))].map((message) => `"${message}"`).join(', ')
    return [`${runtime} ${variants[variant].label}: ${warnings.length - inRounds} warnings or errors outside the measured rounds (its log's: ${messages})`]
  })
}

/** A log line's msg, or the line itself when it is not JSON. */
function logMessage(line: string): string {
  try {
    return String(JSON.parse(line).msg)
  } catch {
    return line.slice(0, 200)
  }
}

async function main(): Promise<number> {
  let options: Options
  try {
    options = parseOptions()
  } catch (error) {
    console.error(`${(error as Error).message}\nUsage: bun run bench [--seconds N] [--deno] [--costs]`)
    return 2
  }
  const missing = missingTools()
  if (missing.length > 0) {
    console.error(`Cannot benchmark:\n- ${missing.join('\n- ')}`)
    return 1
  }
  const machine = await describeMachine(options.runtimes)
  // This script (every thread of it) and what it starts unpinned (Redis) share wrk's cores, not the measured process's.
  Bun.spawnSync(['taskset', '-a', '-p', '-c', loadCores, String(process.pid)], { stdout: 'ignore' })
  const startups = await timeStartups(options)

  redis = await startRedis()
  if (options.costs) writeCostVariants()
  // Every process stays up, and every round measures each target once, so that whatever else the
  // machine is doing weighs on all rows alike.
  const running = await launchAll(options)
  const targets = planTargets(running, options)
  for (const target of targets) {
    console.error(`Warming up ${where(target)}…`)
    await warmUp(target)
  }
  await measureRounds(targets, options.rounds)

  const processes = running.map(({ runtime, variant, server }) => ({
    runtime,
    variant,
    startupMs: startups.get(`${runtime} ${variant}`),
    rssMb: treeRssMegabytes(server.child.pid),
  }))
  const problems = problemList(targets, strayWarnings(running, targets))
  console.log(report({ options, machine, targets, processes, problems }))
  if (problems.length > 0) {
    console.error(`\n${problems.length} rounds or processes did not measure what they claim; they are listed at the end of the report.`)
    return 1
  }
  return 0
}

async function cleanUp(): Promise<void> {
  await stopEverything()
  rmSync(workDir, { recursive: true, force: true })
  rmSync(join(root, costsDir), { recursive: true, force: true })
}

let interrupted = false
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    interrupted = true
    console.error(`\n${signal}: stopping what the benchmark started`)
    cleanUp().finally(() => process.exit(130))
  })
}

let exitCode = 1
try {
  exitCode = await main()
} catch (error) {
  // Once interrupted, the failure is only the killed wrk or server; the signal said why.
  if (!interrupted) console.error((error as Error).message)
} finally {
  await cleanUp()
}
process.exit(exitCode)
