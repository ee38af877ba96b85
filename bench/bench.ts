// Measures the server as a user runs it (`bun run index.ts`, and with --deno the Deno command too):
// requests/s and latency per route under wrk, startup time and memory, side by side in one run.
// Usage: bun run bench [--seconds N] [--deno]. The report (markdown) goes to stdout, progress to stderr.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import type { Subprocess } from 'bun'
import { signWebhook, verifyAccessToken, webhookEvent, type Credentials, type TokenClaims } from '../tests/livekit.ts'
import { startServer, type Runtime, type ServerProcess } from '../tests/server.ts'
import { rssMegabytes } from '../tests/traffic.ts'

const wrkThreads = 2
const wrkConnections = 32
const warmupSeconds = 1
// Short rounds, alternating between routes and runtimes, spread whatever else the machine does.
const roundSeconds = 1
const startupRuns = 5
const luaScript = new URL('wrk.lua', import.meta.url).pathname
// Non-default credentials, so the run also proves the server reads its configuration.
const credentials: Credentials = { apiKey: 'bench-api-key', apiSecret: `bench-secret-${crypto.randomUUID()}` }
const serverEnv = { SERVER_PORT: '0', LIVEKIT_API_KEY: credentials.apiKey, LIVEKIT_API_SECRET: credentials.apiSecret }

interface Options {
  seconds: number
  rounds: number
  runtimes: Runtime[]
}

function parseOptions(): Options {
  const { values } = parseArgs({
    args: Bun.argv.slice(2),
    options: { seconds: { type: 'string', default: '10' }, deno: { type: 'boolean', default: false } },
  })
  const seconds = Number(values.seconds)
  if (!Number.isInteger(seconds) || seconds < 1 || seconds > 300) {
    throw new Error(`--seconds must be a whole number from 1 to 300, got "${values.seconds}"`)
  }
  return { seconds, rounds: Math.ceil(seconds / roundSeconds), runtimes: values.deno ? ['bun', 'deno'] : ['bun'] }
}

/** What is missing to run, and how to get it: this script installs nothing itself. */
function missingTools(runtimes: Runtime[]): string[] {
  const needed: [tool: string, install: string][] = [
    ['wrk', 'apt-get install -y wrk'],
    ['bun', 'npm install -g bun'],
  ]
  if (runtimes.includes('deno')) needed.push(['deno', 'npm install -g deno'])
  return needed.filter(([tool]) => !Bun.which(tool)).map(([tool, install]) => `${tool} is not on the PATH; install it with: ${install}`)
}

// Every process this run starts, so that each is stopped even when the run fails or is interrupted.
const servers = new Set<ServerProcess>()
const wrkProcesses = new Set<Subprocess>()

async function launch(runtime: Runtime): Promise<ServerProcess> {
  const server = await startServer(runtime, serverEnv)
  servers.add(server)
  return server
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
}

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

const scenarios: Scenario[] = [
  {
    label: 'GET /health',
    distinct: false,
    requests: () => [{ method: 'GET', path: '/health' }],
    wrongAnswer: (status, json) => (status === 200 && json?.status === 'ok' ? undefined : `answered ${status}`),
  },
  {
    label: 'POST /token (OpenVidu)',
    distinct: false,
    requests: () => [jsonPost({ roomName: 'bench-room', participantName: 'alice' })],
    wrongAnswer: (status, json) =>
      status !== 200 ? `answered ${status}` : tokenProblem(json?.token, (claims) => claims.sub === 'alice'),
  },
  {
    label: 'POST /token (standard)',
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
  {
    label: 'POST /livekit/webhook',
    distinct: true,
    requests: signedWebhooks,
    // "duplicate" would mean the event was acknowledged without being handled.
    wrongAnswer: (status, json) => (status === 200 && json?.received === true ? undefined : `answered ${status} ${JSON.stringify(json)}`),
  },
]

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

async function runWrk(server: ServerProcess, perThread: HttpRequest[][], seconds: number, cycle: boolean): Promise<WrkResult> {
  wrkRuns += 1
  const prefix = join(workDir, `requests-${wrkRuns}`)
  const host = new URL(loopbackUrl(server)).host
  const files = perThread.map((requests, i) => {
    const file = `${prefix}.${i + 1}`
    writeFileSync(file, requests.map((request) => rawRequest(request, host)).join(''))
    return file
  })
  const args = [`-t${wrkThreads}`, `-c${wrkConnections}`, `-d${seconds}s`, '--timeout', '5s', '-s', luaScript]
  const child = Bun.spawn(['wrk', ...args, loopbackUrl(server), '--', prefix, cycle ? 'cycle' : 'once'], {
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
function runScenario(server: ServerProcess, scenario: Scenario, seconds: number, perThread: number): Promise<WrkResult> {
  const requests = Array.from({ length: wrkThreads }, () => scenario.requests(scenario.distinct ? perThread : 1))
  return runWrk(server, requests, seconds, !scenario.distinct)
}

// Checks around each measurement

/** Sends a few requests of the kind wrk will send and insists on the success answer. */
async function verifySample(server: ServerProcess, scenario: Scenario): Promise<void> {
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
    if (problem) throw new Error(`${server.url} ${scenario.label}: ${problem}; nothing measured`)
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

/** One route on one runtime, measured over rounds that alternate with every other target's. */
interface Target {
  runtime: Runtime
  server: ServerProcess
  scenario: Scenario
  /** Distinct requests each wrk thread gets per round. */
  perThread: number
  rounds: { result: WrkResult; log: ServerLog }[]
}

const where = (target: Target) => `${target.runtime} ${target.scenario.label}`

/** Distinct webhooks prepared per second of warm-up: above any rate this server reaches here. */
const warmupWebhookRate = 40_000

/** Checks the answers, warms the route up, and sizes its distinct requests from the warm-up rate. */
async function warmUp(target: Target): Promise<void> {
  await verifySample(target.server, target.scenario)
  const perThread = Math.ceil((warmupWebhookRate * warmupSeconds) / wrkThreads)
  const warmup = await runScenario(target.server, target.scenario, warmupSeconds, perThread)
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
    const result = await runScenario(target.server, target.scenario, roundSeconds, target.perThread)
    const log = readServerLog(await settledLines(target.server, from))
    // A thread that ran out of distinct requests resent one: discard the round, retry with twice as many.
    if (result.exhaustedThreads > 0 && attempt < 3) {
      target.perThread *= 2
      continue
    }
    target.rounds.push({ result, log })
    return
  }
}

/** Why a round does not measure what its row claims; empty when it does. */
function roundProblems(target: Target, result: WrkResult, log: ServerLog): string[] {
  const problems: string[] = []
  const at = where(target)
  if (result.exhaustedThreads > 0) problems.push(`${at}: ran out of distinct requests; the figures include repeats`)
  if (result.statusErrors > 0) problems.push(`${at}: ${result.statusErrors} answers were 4xx/5xx`)
  if (log.warningsAndErrors > 0) problems.push(`${at}: the server logged ${log.warningsAndErrors} warnings or errors`)
  if (target.scenario.distinct) {
    if (log.refusedWebhooks > 0) problems.push(`${at}: ${log.refusedWebhooks} webhooks were refused`)
    if (log.duplicateWebhooks > 0) problems.push(`${at}: ${log.duplicateWebhooks} webhooks were duplicates`)
    // Each answer wrk counted must come from a handled event (a few more may be in flight at the end).
    if (log.handledWebhooks < result.requests) {
      problems.push(`${at}: ${result.requests} answers but only ${log.handledWebhooks} webhooks handled`)
    }
  }
  return problems
}

interface Measurement {
  runtime: Runtime
  label: string
  requestsPerSecond: number
  p50Ms: number
  p99Ms: number
  /** What wrk counts as errors: statuses from 400 (verifySample has ruled out 1xx and 3xx). */
  non2xx: number
  socketErrors: number
  log: ServerLog
  problems: string[]
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!
const sum = (values: number[]) => values.reduce((total, value) => total + value, 0)

/** Medians over the rounds, so that a burst of other work on the machine skews one round, not the row. */
function summarize(target: Target): Measurement {
  const results = target.rounds.map((round) => round.result)
  const logs = target.rounds.map((round) => round.log)
  return {
    runtime: target.runtime,
    label: target.scenario.label,
    requestsPerSecond: median(results.map((result) => result.requests / (result.durationUs / 1e6))),
    p50Ms: median(results.map((result) => result.p50Us)) / 1000,
    p99Ms: median(results.map((result) => result.p99Us)) / 1000,
    non2xx: sum(results.map((result) => result.statusErrors)),
    socketErrors: sum(results.map((result) => result.socketErrors)),
    log: {
      warningsAndErrors: sum(logs.map((log) => log.warningsAndErrors)),
      handledWebhooks: sum(logs.map((log) => log.handledWebhooks)),
      refusedWebhooks: sum(logs.map((log) => log.refusedWebhooks)),
      duplicateWebhooks: sum(logs.map((log) => log.duplicateWebhooks)),
    },
    problems: target.rounds.flatMap((round) => roundProblems(target, round.result, round.log)),
  }
}

/** Spawn to the first successful /health answer, as a user (or an orchestrator's probe) sees it. */
async function startupMs(runtime: Runtime): Promise<number> {
  const started = performance.now()
  const server = await launch(runtime)
  try {
    for (const deadline = started + 20_000; performance.now() < deadline; await Bun.sleep(5)) {
      const ok = await fetch(loopbackUrl(server) + '/health').then((response) => response.ok, () => false)
      if (ok) return performance.now() - started
    }
    throw new Error(`${runtime}: /health did not answer within 20 s of the start`)
  } finally {
    await stopServer(server)
  }
}

// Reporting

async function commandOutput(command: string[]): Promise<string> {
  const child = Bun.spawn(command, { stdout: 'pipe', stderr: 'pipe' })
  const [out, err] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited])
  return out + err
}

async function describeMachine(runtimes: Runtime[]): Promise<string> {
  const versions = [`Bun ${(await commandOutput(['bun', '--version'])).trim()}`]
  if (runtimes.includes('deno')) versions.push(`Deno ${/deno (\S+)/.exec(await commandOutput(['deno', '--version']))?.[1]}`)
  // Debian's wrk reports e.g. "wrk debian/4.1.0-3+b2 [epoll]".
  const wrk = /wrk (?:\w+\/)?([\d.]+)/.exec(await commandOutput(['wrk', '--version']))?.[1] ?? '?'
  const cores = (await commandOutput(['nproc'])).trim()
  return `${cores} cores (nproc), ${process.platform} ${process.arch}; ${versions.join(', ')}; wrk ${wrk}`
}

type Align = 'left' | 'right'

function markdownTable(header: string[], align: Align[], rows: string[][]): string {
  const widths = header.map((title, i) => Math.max(title.length, ...rows.map((row) => row[i]!.length)))
  const pad = (cell: string, i: number) => (align[i] === 'right' ? cell.padStart(widths[i]!) : cell.padEnd(widths[i]!))
  const line = (cells: string[]) => `| ${cells.map(pad).join(' | ')} |`
  const rule = `|${widths.map((width, i) => (align[i] === 'right' ? `${'-'.repeat(width + 1)}:` : `${'-'.repeat(width + 2)}`)).join('|')}|`
  return [line(header), rule, ...rows.map(line)].join('\n')
}

const integer = (value: number) => Math.round(value).toLocaleString('en-US')
const milliseconds = (value: number) => `${value.toFixed(2)} ms`

function report(options: Options, machine: string, measurements: Measurement[], startups: Map<Runtime, number>, rss: Map<Runtime, number>): string {
  const health = (runtime: Runtime) => measurements.find((m) => m.runtime === runtime && m.label === 'GET /health')!
  const loadRows = measurements.map((m) => [
    m.runtime,
    m.label,
    integer(m.requestsPerSecond),
    `${(m.requestsPerSecond / health(m.runtime).requestsPerSecond).toFixed(2)}×`,
    milliseconds(m.p50Ms),
    milliseconds(m.p99Ms),
    String(m.non2xx),
    String(m.socketErrors),
  ])
  const runtimeRows = options.runtimes.map((runtime) => [runtime, `${integer(startups.get(runtime)!)} ms`, `${integer(rss.get(runtime)!)} MB`])
  const webhookNotes = measurements
    .filter((m) => m.label === 'POST /livekit/webhook')
    .map((m) => `${m.runtime} handled ${integer(m.log.handledWebhooks)} (${m.log.refusedWebhooks} refused, ${m.log.duplicateWebhooks} duplicates)`)
  return [
    `### Benchmark, ${new Date().toISOString().slice(0, 10)}`,
    '',
    `- Machine: ${machine}`,
    `- Load: wrk, ${wrkThreads} threads, ${wrkConnections} connections; per route and runtime a ${warmupSeconds} s warm-up, then ${options.rounds} rounds of ${roundSeconds} s, alternating with the other routes and runtimes; figures are medians over the rounds. wrk, the server and this script share the cores.`,
    '- Ratios, not absolute figures, carry from machine to machine.',
    '',
    markdownTable(
      ['runtime', 'route', 'requests/s', 'vs /health', 'p50', 'p99', 'non-2xx', 'socket errors'],
      ['left', 'left', 'right', 'right', 'right', 'right', 'right', 'right'],
      loadRows,
    ),
    '',
    markdownTable(['runtime', `start to first answer (median of ${startupRuns})`, 'RSS after the load'], ['left', 'right', 'right'], runtimeRows),
    '',
    `Webhooks: each sent once, with its own event id and signature; ${webhookNotes.join('; ')}.`,
  ].join('\n')
}

async function main(): Promise<number> {
  let options: Options
  try {
    options = parseOptions()
  } catch (error) {
    console.error(`${(error as Error).message}\nUsage: bun run bench [--seconds N] [--deno]`)
    return 2
  }
  const missing = missingTools(options.runtimes)
  if (missing.length > 0) {
    console.error(`Cannot benchmark:\n- ${missing.join('\n- ')}`)
    return 1
  }
  const machine = await describeMachine(options.runtimes)

  console.error(`Timing ${startupRuns} starts per runtime…`)
  const startupTimes = new Map<Runtime, number[]>(options.runtimes.map((runtime) => [runtime, []]))
  for (let run = 0; run < startupRuns; run++) {
    for (const runtime of options.runtimes) startupTimes.get(runtime)!.push(await startupMs(runtime))
  }
  const startups = new Map([...startupTimes].map(([runtime, times]) => [runtime, median(times)]))

  // Both runtimes' servers stay up, and every round measures each route on one and then the other,
  // so that whatever else the machine is doing weighs on all rows alike.
  const running = new Map<Runtime, ServerProcess>()
  for (const runtime of options.runtimes) running.set(runtime, await launch(runtime))
  const targets: Target[] = scenarios.flatMap((scenario) =>
    [...running].map(([runtime, server]) => ({ runtime, server, scenario, perThread: 1, rounds: [] })),
  )
  for (const target of targets) {
    console.error(`Warming up ${where(target)}…`)
    await warmUp(target)
  }
  for (let round = 1; round <= options.rounds; round++) {
    console.error(`Round ${round} of ${options.rounds}…`)
    for (const target of targets) await measureRound(target)
  }
  const measurements = targets.map(summarize)
  const rss = new Map(await Promise.all([...running].map(async ([runtime, server]) => [runtime, await rssMegabytes(server.child.pid)] as const)))

  console.log(report(options, machine, measurements, startups, rss))
  const problems = measurements.flatMap((measurement) => measurement.problems)
  if (problems.length > 0) {
    console.error(`\nThese figures do not measure what they claim:\n- ${problems.join('\n- ')}`)
    return 1
  }
  return 0
}

async function cleanUp(): Promise<void> {
  await stopEverything()
  rmSync(workDir, { recursive: true, force: true })
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
