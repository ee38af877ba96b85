// Measuring: every process up at once, each route of each process a target, and rounds in which
// every target is loaded once, the two sides of each comparison back to back, so that whatever else
// the machine does weighs on all rows alike. A round is checked against the server's log and left
// out of every figure when it did not measure what its row claims.
import type { Runtime, ServerProcess } from '../tests/server.ts'
import {
  label,
  launch,
  loopbackUrl,
  median,
  redisInUse,
  roundSeconds,
  runWrk,
  startupMs,
  startupRuns,
  sum,
  toFetchInit,
  treeCpuMicros,
  warmupSeconds,
  wrkThreads,
  type WrkResult,
} from './harness.ts'
import { routeKeys, scenarios, type RouteKey, type Scenario } from './scenarios.ts'
import { activeComparisons, alsoMeasured, placements, variantKeys, variantOf, type Options, type VariantKey } from './variants.ts'

export interface Round {
  result: WrkResult
  /** CPU time the measured process (and its workers) used during the round, in µs. */
  cpuMicros: number
  log: ServerLog
  /** Why the round does not measure what its row claims: it is then left out of every figure. */
  problems: string[]
}

/** A process of the run: one variant on one runtime (none for a variant with its own command). */
export interface Running {
  runtime: Runtime | undefined
  variant: VariantKey
  server: ServerProcess
  pinned: boolean
}

/** One route on one process of one runtime, measured over rounds that alternate with every other target's. */
export interface Target {
  runtime: Runtime | undefined
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

export const where = (target: Target) => `${label(target.runtime, variantOf(target.variant))} ${scenarios[target.route].label}`

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


/** The variants something is measured on, in the order of the variants table. */
const measuredVariants = (needed: Map<VariantKey, Set<RouteKey>>) => variantKeys.filter((variant) => needed.has(variant))

/**
 * Route by route, then runtime, then process: the two sides of every comparison run next to each
 * other. A process on no runtime of the run (the Go peer) goes first on each route, once per round.
 */
export function planTargets(running: Running[], options: Options): Target[] {
  const needed = routesByVariant(options)
  const processOf = (runtime: Runtime | undefined, variant: VariantKey) => running.find((one) => one.runtime === runtime && one.variant === variant)!
  return routeKeys.flatMap((route) =>
    placements(measuredVariants(needed).filter((variant) => needed.get(variant)!.has(route)), options).map(({ runtime, variant }) => {
      const { server, pinned } = processOf(runtime, variant)
      return { runtime, variant, route, server, pinned, perThread: 1, rounds: [] }
    }),
  )
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

export interface ServerLog {
  warningsAndErrors: number
  handledWebhooks: number
  refusedWebhooks: number
  duplicateWebhooks: number
}

/** Counts by substring: the log is one JSON object per line, keys in a fixed order. */
function readServerLog(lines: string[], handledLog = '"msg":"webhook",'): ServerLog {
  const count = (needle: string) => lines.reduce((sum, line) => sum + (line.includes(needle) ? 1 : 0), 0)
  return {
    warningsAndErrors: count('"level":"warn"') + count('"level":"error"'),
    handledWebhooks: count(handledLog),
    refusedWebhooks: count('"msg":"webhook refused"'),
    duplicateWebhooks: count('"msg":"webhook duplicate"'),
  }
}

/** Distinct webhooks prepared per second of warm-up: above any rate this server reaches here. */
const warmupWebhookRate = 40_000

/** Checks the answers, warms the route up, and sizes its distinct requests from the warm-up rate. */
export async function warmUp(target: Target): Promise<void> {
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
    const log = readServerLog(await settledLines(target.server, from), variantOf(target.variant).handledLog)
    // A server that gave up on Redis during the round measured its own memory, for part of it at least.
    const lostRedis = variantOf(target.variant).redis && !(await redisInUse(target.server))
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
export async function measureRounds(targets: Target[], rounds: number): Promise<void> {
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

// Around the rounds

export async function timeStartups(options: Options): Promise<Map<string, number>> {
  const timed = variantKeys.filter((variant) => variantOf(variant).timeStartup && (options.goPeer || variant !== 'go'))
  console.error(`Timing ${startupRuns} starts of ${timed.map((variant) => variantOf(variant).label).join(', ')}…`)
  const samples = new Map<string, number[]>()
  for (let run = 0; run < startupRuns; run++) {
    for (const { runtime, variant } of placements(timed, options)) {
      const key = `${runtime} ${variant}`
      samples.set(key, [...(samples.get(key) ?? []), await startupMs(runtime, variantOf(variant))])
    }
  }
  return new Map([...samples].map(([key, values]) => [key, median(values)!]))
}

/** Every process the plan needs, per runtime, all up for the whole measurement. */
export async function launchAll(options: Options): Promise<Running[]> {
  const running: Running[] = []
  for (const { runtime, variant } of placements(measuredVariants(routesByVariant(options)), options)) {
    console.error(`Starting ${label(runtime, variantOf(variant))}…`)
    const pinned = !variantOf(variant).workers
    running.push({ runtime, variant, pinned, server: await launch(runtime, variantOf(variant), { pinned }) })
  }
  return running
}

/** Warnings and errors a process logged outside its measured rounds (at start, in a warm-up, between rounds). */
export function strayWarnings(running: Running[], targets: Target[]): string[] {
  return running.flatMap(({ runtime, variant, server }) => {
    const inRounds = sum(targets.filter((target) => target.server === server).flatMap((target) => target.rounds.map((round) => round.log.warningsAndErrors)))
    const warnings = server.lines.filter((line) => readServerLog([line]).warningsAndErrors > 0)
    if (warnings.length <= inRounds) return []
    const messages = [...new Set(warnings.map(logMessage))].map((message) => `"${message}"`).join(', ')
    return [`${label(runtime, variantOf(variant))}: ${warnings.length - inRounds} warnings or errors outside the measured rounds (its log's: ${messages})`]
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
