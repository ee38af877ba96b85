// The markdown report: how to read it, a table per comparison (the server against the floor per
// runtime, then each comparison with its goal), what each behaviour costs (--costs), the processes'
// start-up and memory, and every round left out with why. The numbers come from bench/figures.ts.
import type { Runtime } from '../tests/server.ts'
import { efficiency, finder, medianCpu, medianLatencyMs, medianRate, ratio, type Find, type Ratio } from './figures.ts'
import { label, loadCores, roundSeconds, serverCore, startupRuns, sum, warmupSeconds, wrkConnections, wrkThreads } from './harness.ts'
import { where, type ServerLog, type Target } from './rounds.ts'
import { routeKeys, scenarios } from './scenarios.ts'
import { againstComparisons, comparisons, costBaseline, costKeys, costs, limit, streamKey, variantOf, type Comparison, type Options, type VariantKey } from './variants.ts'

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

/** Per runtime: the server against the floor and the floor with CORS, route by route, and beside them the Go peer if measured. */
function floorTable(runtime: Runtime, find: Find, goPeer: boolean): string {
  const rows = routeKeys
    .filter((route) => find(runtime, 'server', route))
    .map((route) => {
      const server = find(runtime, 'server', route)!
      const floor = find(runtime, 'floor', route)
      const floorCors = find(runtime, 'floorCors', route)
      const go = find(runtime, 'go', route)
      const goCells = goPeer ? [integer(medianRate(go)), micros(medianCpu(go)), times(ratio(server, go, efficiency))] : []
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
        ...goCells,
      ]
    })
  const goHeader = goPeer ? ['Go peer req/s', 'Go peer CPU/req', `${comparisons.go.title} (CPU)`] : []
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
      ...goHeader,
    ],
    ['left', ...Array<Align>(10 + goHeader.length).fill('right')],
    rows,
  )
}

/** One comparison, every runtime and route: both sides' requests/s and their ratio (and its goals). */
function comparisonTable(comparison: Comparison, runtimes: Runtime[], find: Find): string {
  const { numerator, denominator, goals = [] } = comparison
  const rows = runtimes.flatMap((runtime) =>
    comparison.routes.map((route) => {
      const [top, bottom] = [find(runtime, numerator, route), find(runtime, denominator, route)]
      const measured = ratio(top, bottom)
      const goal = goals.find((one) => one.runtime === runtime)
      const verdict = !goal || !measured ? none : measured.median >= goal.atLeast ? 'met' : 'NOT met'
      const cells = [runtime, scenarios[route].label, integer(medianRate(bottom)), integer(medianRate(top)), times(measured)]
      return goals.length > 0 ? [...cells, verdict] : cells
    }),
  )
  const header = ['runtime', 'route', `${variantOf(denominator).label} req/s`, `${variantOf(numerator).label} req/s`, comparison.title]
  const goalColumn = goals.length > 0 ? [`goal: ${goals.map((goal) => `≥ ${goal.atLeast.toFixed(2)}× on ${goal.runtime}`).join(', ')}`] : []
  return markdownTable([...header, ...goalColumn], [...header.map((_, i) => (i < 2 ? 'left' : 'right') as Align), ...goalColumn.map(() => 'right' as Align)], rows)
}

/** With --costs: per behaviour, the server without it against the server, in requests/s and in CPU per request. */
function costsSection(runtimes: Runtime[], find: Find): string {
  const rows = costKeys.flatMap((key) =>
    runtimes.flatMap((runtime) =>
      costs[key].routes.map((route) => {
        const [without, server] = [find(runtime, `without ${key}`, route), find(runtime, costBaseline(key), route)]
        return [costs[key].label, runtime, scenarios[route].label, times(ratio(without, server)), times(ratio(without, server, efficiency))]
      }),
    ),
  )
  return [
    '#### What each behaviour costs: the server without it ÷ the server (under TOKEN_POLICY for the policy\'s tricks)',
    '',
    markdownTable(['without', 'runtime', 'route', 'req/s', 'CPU'], ['left', 'left', 'left', 'right', 'right'], rows),
    '',
    '1.10× means the server answers 10 % more without it: that is what the behaviour costs.',
    '',
  ].join('\n')
}

export interface ProcessFigures {
  /** None for a process on no runtime of the run (the Go peer). */
  runtime: Runtime | undefined
  variant: VariantKey
  startupMs?: number
  rssMb: number
}

function processTable(figures: ProcessFigures[]): string {
  const rows = figures.map(({ runtime, variant, startupMs, rssMb }) => [
    runtime ?? none,
    variantOf(variant).label,
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
      return `${label(target.runtime, variantOf(target.variant))} handled ${total((l) => l.handledWebhooks)} (${total((l) => l.refusedWebhooks)} refused, ${total((l) => l.duplicateWebhooks)} duplicates)`
    })
  return `Webhooks: each sent once, with its own event id and signature; ${notes.join('; ')}.`
}

/** Every discarded round, and every warning a process logged outside the measured rounds. */
export function problemList(targets: Target[], strayWarnings: string[]): string[] {
  const discarded = targets.flatMap((target) =>
    target.rounds.flatMap((round, i) => (round.problems.length > 0 ? [`${where(target)}, round ${i + 1}: ${round.problems.join('; ')}`] : [])),
  )
  return [...discarded, ...strayWarnings]
}

export interface Report {
  options: Options
  machine: string
  targets: Target[]
  processes: ProcessFigures[]
  problems: string[]
}

/** A comparison's table under its heading, the goals it is held to, and what else the reader must know. */
function goalSection(comparison: Comparison, heading: string, runtimes: Runtime[], find: Find, note: string[] = []): string[] {
  const goals = comparison.goals!.filter((goal) => runtimes.includes(goal.runtime))
  const lines = goals.map((goal) => `Goal: ${goal.meaning} (${comparison.title} ≥ ${goal.atLeast.toFixed(2)}×).`)
  return [`#### ${heading}`, '', comparisonTable(comparison, runtimes, find), '', ...lines, ...(note.length > 0 ? ['', ...note] : []), '']
}

/** What the Go peer does and does not do that the server does, so that its ratio is read for what it is. */
const goPeerNote = [
  'The Go peer is a separate program (Go\'s net/http and encoding/json, `GOMAXPROCS=1`, on the same core as each runtime\'s process), ',
  'started once per run and measured once per round on each route, before the runtimes\' rows; each runtime\'s ratio pairs its rounds with the same Go rounds. ',
  'It answers 200 to every request these routes are sent here, with `Access-Control-Allow-Origin: *` on every answer. It does less than the server: ',
  '/token serves the OpenVidu contract only (the standard one, with room_config, is answered 400, so it is not measured there), signs the claims by hand ',
  'and checks no Content-Type or Host; the webhook is checked (HS256, iss, exp, the body\'s SHA-256) and decoded as generic JSON, ',
  'with no duplicate detection and a shorter log line (event and id); no response schemas, no error mapping. ',
  'On /health, wrk (one core) may set the pace rather than the process: the CPU ratio holds there.',
].join('')

export function report({ options, machine, targets, processes, problems }: Report): string {
  const find = finder(targets)
  return [
    `### Benchmark, ${new Date().toISOString().slice(0, 10)}`,
    '',
    `- Machine: ${machine}; the measured process on core ${serverCore} (WORKERS: all cores), wrk, Redis and this script on ${loadCores}.`,
    `- ${options.rounds} rounds of ${roundSeconds} s per row (\`--seconds ${options.seconds}\`).`,
    '',
    howToRead(options.rounds),
    '',
    ...options.runtimes.flatMap((runtime) => [`#### ${runtime}: the server against the floor`, '', floorTable(runtime, find, options.goPeer), '']),
    ...(options.goPeer ? goalSection(comparisons.go, `Against a compiled peer: ${comparisons.go.title}`, options.runtimes, find, [goPeerNote]) : []),
    ...(options.only ? [] : otherSections(options, find)),
    ...(options.costs ? [costsSection(options.runtimes, find)] : []),
    ...againstComparisons(options.against).flatMap((comparison) => [
      `#### Before and after: ${comparison.title}`,
      '',
      comparisonTable(comparison, options.runtimes, find),
      '',
    ]),
    '#### Processes',
    '',
    processTable(processes),
    '',
    webhookNote(targets),
    ...(problems.length > 0 ? ['', `Left out of the figures (${problems.length}):`, ...problems.map((problem) => `- ${problem}`)] : []),
  ].join('\n')
}

/** The comparisons --only leaves out: shared state, the stream, metrics, workers, the policy. */
function otherSections(options: Options, find: Find): string[] {
  return [
    ...goalSection(comparisons.redis, `Shared state: ${comparisons.redis.title}, TOKEN_RATE_LIMIT=${limit} on both`, options.runtimes, find),
    ...goalSection(comparisons.stream, `Events onward: ${comparisons.stream.title}, EVENTS_STREAM=${streamKey} against REDIS_URL alone, TOKEN_RATE_LIMIT on both`, options.runtimes, find),
    ...goalSection(comparisons.metrics, `Metrics: ${comparisons.metrics.title} (PROMETHEUS_PORT set, or not)`, options.runtimes, find),
    `#### Workers: ${comparisons.workers.title}, REDIS_URL on both`,
    '',
    comparisonTable(comparisons.workers, options.runtimes, find),
    '',
    ...goalSection(comparisons.policy, `Token policy: ${comparisons.policy.title} (10 roles, 20 patterns, a roomConfig; no authentication)`, options.runtimes, find),
  ]
}
