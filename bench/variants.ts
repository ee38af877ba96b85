// What a run compares: every process it starts (the variants), the ratios the report gives between
// them (the comparisons) with the goals they are held to, and, with --costs, the copies of index.ts
// each without one behaviour. A new process to measure is a row in `variants`; a new ratio, a row
// in `comparisons` (and, in bench/report.ts, the section that shows it).
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { Runtime } from '../tests/server.ts'
import { root, workDir, type Variant } from './harness.ts'
import { routeKeys, type RouteKey } from './scenarios.ts'

type CostKey =
  | 'cors' | 'bodyBounds' | 'tokenParser' | 'dedupe' | 'responseSchemas'
  // The speed tricks: each copy is index.ts with the trick replaced by the plain code.
  | 'eventView' | 'syncAsync' | 'roomGlob' | 'headerCache' | 'roomConfigShare' | 'bodyTimer'
export type VariantKey =
  | 'go' | 'server' | 'floor' | 'floorCors' | 'limitMemory' | 'limitRedis' | 'stream' | 'workers1' | 'workers2' | 'metrics' | 'policy'
  | `without ${CostKey}`
  | `at ${string}`

/** What a run measures, from its command line. */
export interface Options {
  seconds: number
  rounds: number
  runtimes: Runtime[]
  costs: boolean
  /** --against REV: index.ts as it was at each of these git revisions, measured beside the server. */
  against: string[]
  /** --only: the server and what --costs and --against add (and the Go peer), none of the other comparisons. */
  only: boolean
  /** Whether the Go peer was built (buildGoPeer), and so is measured. */
  goPeer: boolean
}

// TOKEN_RATE_LIMIT's largest value: the limiter runs on every token request, and never refuses one
// here (one caller, the loopback address, would need over 16,000 requests/s for a minute).
export const limit = '1000000'
export const streamKey = 'bench-events'

/**
 * TOKEN_POLICY with 10 roles of 2 room patterns each; without authentication every request has the
 * default role, whose first pattern (a {claim} the anonymous caller lacks) fails before "bench-*" matches.
 */
const benchPolicy = JSON.stringify({
  defaultRole: 'role-9',
  roles: Object.fromEntries(
    Array.from({ length: 10 }, (_, i) => [
      `role-${i}`,
      { rooms: [`team-{org}/${i}-*`, i === 9 ? 'bench-*' : `room-${i}-*`], agents: [`agent-${i}`, 'bench-agent'], grants: { canPublish: true, canSubscribe: true, canPublishData: true } },
    ]),
  ),
  roomConfig: { emptyTimeout: 300, departureTimeout: 20, maxParticipants: 100 },
})
const policyEnv = { TOKEN_POLICY: benchPolicy }

/**
 * With --costs, what each behaviour the server adds to the floor costs: a copy of index.ts without
 * it (these edits, each of which must match index.ts exactly once), measured beside the server.
 */
export interface Cost {
  label: string
  routes: RouteKey[]
  edits: [find: string, replace: string][]
  /** Measured beside the server under TOKEN_POLICY (the copy then run with the same policy), for what only a policy uses. */
  underPolicy?: boolean
}
export const costs: Record<CostKey, Cost> = {
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
    edits: [["parse: [tokens.read, 'json'],", '']],
  },
  dedupe: {
    label: 'duplicate detection (webhook ids claimed and remembered, in memory)',
    routes: ['webhook'],
    edits: [
      ["const claim = event.id ? (events?.holds(event.id) ? 'handled' : await state.claim(event.id)) : 'new'", "const claim = 'new' as Claim"],
      ['if (event.id) await state.complete(event.id)', ''],
    ],
  },
  responseSchemas: {
    label: 'response schemas (validated on every answer)',
    routes: ['health', 'openvidu', 'webhook'],
    edits: [
      ['response: { 200: HealthAnswer },', ''],
      ['response: { 200: TokenAnswer, ...errorAnswers(400, 401, 403, 408, 413, 429, 503) },', ''],
      ['response: { 200: WebhookAnswer, ...errorAnswers(400, 401, 408, 413, 500, 503) },', ''],
    ],
  },
  // The speed tricks: what each wins on its route. A trick stays where it wins at least 5 % (docs/design.md);
  // these edits write the plain code in its place.
  eventView: {
    label: 'trick: the event view (the JSON as it is) for decoding every event whole',
    routes: ['webhook'],
    edits: [
      ['const view = plainEventView(json)', 'const view = undefined as EventView | undefined'],
    ],
  },
  syncAsync: {
    label: 'trick: the sync/async split (whenSettled) for async and await throughout',
    routes: ['openvidu', 'standard'],
    edits: [
      ['  function readTokenRequest({ request, server }', '  async function readTokenRequest({ request, server }'],
      [
        "    if (authenticate || tokenRateLimit) return admitTokenRequest(request, server).then(() => readJsonObject(request))\n",
        '    if (authenticate || tokenRateLimit) await admitTokenRequest(request, server)\n',
      ],
      ['  function answerTokenRequest(', '  async function answerTokenRequest('],
      [
        'return whenSettled(decidedToken(request, { identity, name }, asked), (token) => ({ token }))',
        'return { token: await decidedToken(request, { identity, name }, asked) }',
      ],
      [
        'return whenSettled(decidedToken(request, { ...sent, identity, name }, asked), standardAnswer)',
        'return standardAnswer(await decidedToken(request, { ...sent, identity, name }, asked))',
      ],
      [
        "  function decidedToken(request: Request, participant: Omit<Participant, 'room'>, asked: TokenAsk) {\n" +
          '    return whenSettled(decide(callers.get(request), asked, config), (decision) => {\n',
        "  async function decidedToken(request: Request, participant: Omit<Participant, 'room'>, asked: TokenAsk) {\n" +
          '    const decision = await decide(callers.get(request), asked, config)\n    {\n',
      ],
      ['grant, ttlSeconds)\n    })\n  }', 'grant, ttlSeconds)\n    }\n  }'],
    ],
  },
  roomGlob: {
    label: "trick: TOKEN_POLICY's room-pattern matcher (runs, no RegExp) for a RegExp per pattern and request",
    routes: ['openvidu', 'standard'],
    underPolicy: true,
    edits: [
      [
        'function roomMatches(room: string, { runs }: RoomPattern, claims: Claims): boolean {',
        [
          'function roomMatches(room: string, { runs }: RoomPattern, claims: Claims): boolean {',
          '  const texts = runs.map((run) => runText(run, claims))',
          '  if (texts.some((text) => text === undefined)) return false',
          "  const source = texts.map((text) => text!.replace(/[.*+?^${}()|[\\]\\\\]/g, '\\\\$&')).join('.*')",
          "  return new RegExp(`^${source}$`, 's').test(room)",
          '}',
          '',
          'export function roomMatchesByRuns(room: string, { runs }: RoomPattern, claims: Claims): boolean {',
        ].join('\n'),
      ],
    ],
  },
  headerCache: {
    label: 'trick: the webhook JWT headers already seen (plainHeaders) for every header decoded and checked',
    routes: ['webhook'],
    edits: [
      ['    if (!plainHeaders.has(header)) {', '    {'],
      ['      if (plainHeaders.size < 16) plainHeaders.add(header)\n', ''],
    ],
  },
  roomConfigShare: {
    label: "trick: a role's room_config claim made once (WeakMap, deepFreeze) for toJson() per token",
    routes: ['openvidu', 'standard'],
    underPolicy: true,
    edits: [
      ['  sharedRoomConfigClaims.set(roomConfig, roomConfig.toJson())\n  return deepFreeze(roomConfig)', '  return roomConfig'],
      ['const claim = roomConfig && (sharedRoomConfigClaims.get(roomConfig) ?? roomConfig.toJson())', 'const claim = roomConfig?.toJson()'],
    ],
  },
  bodyTimer: {
    label: "trick: the body reads' one timer a second for a timer per read",
    routes: ['openvidu', 'webhook'],
    edits: [
      [
        'function createBodyTimeouts() {',
        [
          'function createBodyTimeouts() {',
          "  const timedOut = new HttpError(408, `Request body must arrive within ${bodyTimeoutMs / 1000} s`, { connection: 'close' })",
          '  return async <T>(reading: Promise<T>, release: () => void): Promise<T> => {',
          '    let timer: ReturnType<typeof setTimeout> | undefined',
          '    const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(timedOut), bodyTimeoutMs)))',
          '    try {',
          '      return await Promise.race([reading, timeout])',
          '    } catch (error) {',
          '      throw bodyReadError(error)',
          '    } finally {',
          '      clearTimeout(timer)',
          '      release()',
          '    }',
          '  }',
          '}',
          '',
          'export function createSweptBodyTimeouts() {',
        ].join('\n'),
      ],
    ],
  },
}
export const costKeys = Object.keys(costs) as CostKey[]
export type { CostKey }
/** Where the copies are written: inside the project, so that they import its node_modules. */
export const costsDir = '.bench-costs'
const costEntry = (key: CostKey) => `${costsDir}/without-${key}.ts`

/**
 * The Go peer: a server doing the three routes' work with Go's standard library (net/http,
 * encoding/json, crypto/hmac), kept outside this project; built by buildGoPeer into the run's folder.
 */
export const goPeerSource = '/work/shared/peers/go-stdlib'
const goPeerBinary = join(workDir, 'peer-go')

/** Every process a run starts, per runtime (or once per run, for one with its own command). */
export const variants: Record<VariantKey, Variant> = {
  // One Go thread (GOMAXPROCS=1) on the measured core, as each runtime's process.
  go:          { label: 'Go peer (net/http, GOMAXPROCS=1)', command: (port) => [goPeerBinary, port], env: { GOMAXPROCS: '1' },
                 handledLog: '"msg":"webhook received"', redis: false, workers: false, timeStartup: true },
  // First, so that each round measures it right before the server it is compared with (and the server right before the floor).
  policy:      { label: 'TOKEN_POLICY',    entry: 'index.ts',       env: policyEnv,                      redis: false, workers: false, timeStartup: false },
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
    costKeys.map((key) => [
      `without ${key}`,
      { label: `server without ${key}`, entry: costEntry(key), env: costs[key].underPolicy ? policyEnv : {}, redis: false, workers: false, timeStartup: false },
    ]),
  ) as Record<`without ${CostKey}`, Variant>),
}

export interface Comparison {
  title: string
  /** What the ratio is: numerator's requests/s ÷ denominator's, per round. */
  numerator: VariantKey
  denominator: VariantKey
  routes: RouteKey[]
  /** The ratio a runtime's rows are held to, and what that means; at most one per runtime. */
  goals?: { runtime: Runtime; atLeast: number; meaning: string }[]
}

/** Every ratio the report gives (besides the server's own "vs /health"); a variant is measured on the routes its comparisons name. */
export const comparisons: Record<'floor' | 'cors' | 'go' | 'redis' | 'stream' | 'workers' | 'metrics' | 'policy', Comparison> = {
  floor:   { title: 'server ÷ floor',            numerator: 'server',     denominator: 'floor',        routes: ['health', 'openvidu', 'webhook'] },
  cors:    { title: 'floor+cors ÷ floor',        numerator: 'floorCors',  denominator: 'floor',        routes: ['health', 'openvidu', 'webhook'] },
  // The Go peer does not serve the standard token contract (it answers 400), so it is not measured there.
  go:      { title: 'server ÷ Go peer',          numerator: 'server',     denominator: 'go',           routes: ['health', 'openvidu', 'webhook'],
             goals: [{ runtime: 'bun', atLeast: 1, meaning: 'on Bun the server answers at least as many requests per second as the Go peer' },
                     { runtime: 'deno', atLeast: 0.5, meaning: 'on Deno the server answers at least half as many requests per second as the Go peer' }] },
  redis:   { title: 'Redis on ÷ off',            numerator: 'limitRedis', denominator: 'limitMemory',  routes: ['openvidu', 'webhook'],
             goals: [{ runtime: 'bun', atLeast: 0.75, meaning: 'shared state costs at most 25 % of throughput on Bun' }] },
  stream:  { title: 'stream ÷ Redis dedupe',     numerator: 'stream',     denominator: 'limitRedis',   routes: ['webhook'],
             goals: [{ runtime: 'bun', atLeast: 0.85, meaning: 'appending each event to a Redis Stream costs at most 15 % of webhook throughput on Bun' }] },
  workers: { title: 'WORKERS=2 ÷ WORKERS=1',     numerator: 'workers2',   denominator: 'workers1',     routes: ['health', 'openvidu'] },
  metrics: { title: 'metrics on ÷ off',          numerator: 'metrics',    denominator: 'server',       routes: ['health', 'openvidu', 'standard', 'webhook'],
             goals: [{ runtime: 'bun', atLeast: 0.97, meaning: 'PROMETHEUS_PORT costs at most 3 % of throughput on Bun' }] },
  policy:  { title: 'TOKEN_POLICY ÷ none',       numerator: 'policy',     denominator: 'server',       routes: ['openvidu', 'standard'],
             goals: [{ runtime: 'bun', atLeast: 0.95, meaning: 'a 10-role, 20-pattern policy costs /token at most 5 % on Bun' }] },
}

/** With --costs: the server without each behaviour ÷ the server (under TOKEN_POLICY where the cost is the policy's). */
export const costBaseline = (key: CostKey): VariantKey => (costs[key].underPolicy ? 'policy' : 'server')
const costComparisons: Comparison[] = costKeys.map((key) => ({
  title: `without ${key} ÷ ${costBaseline(key)}`,
  numerator: `without ${key}`,
  denominator: costBaseline(key),
  routes: costs[key].routes,
}))

/** With --against: index.ts at each revision ÷ the server (today's index.ts), on every route. */
export const againstComparisons = (revisions: string[]): Comparison[] =>
  revisions.map((revision) => ({ title: `at ${revision} ÷ server`, numerator: `at ${revision}`, denominator: 'server', routes: routeKeys }))

/** The comparisons a run makes: the Go peer's only when it was built; with --only, the Go peer's and the asked ones. */
export const activeComparisons = (options: Options) => [
  ...Object.values(comparisons)
    .filter(({ numerator, denominator }) => options.goPeer || (numerator !== 'go' && denominator !== 'go'))
    .filter((comparison) => !options.only || comparison === comparisons.go),
  ...(options.costs ? costComparisons : []),
  ...againstComparisons(options.against),
]

/**
 * The processes of these variants a run starts, in order: first those on no runtime (a variant with
 * its own command, started once), then runtime by runtime, each in the order given.
 */
export const placements = (keys: VariantKey[], options: Options) =>
  [undefined, ...options.runtimes].flatMap((runtime) => keys.filter((key) => (variantOf(key).command === undefined) === (runtime !== undefined)).map((variant) => ({ runtime, variant })))

/** Builds the Go peer from `source` into the run's folder; when it cannot, says in one line why it is not measured. */
export function buildGoPeer(source: string): boolean {
  const build = () => {
    // A cache of the run's own: the default one may not be writable, and `source` is not written to.
    const env = { ...process.env, GOCACHE: join(workDir, 'go-cache') }
    const result = Bun.spawnSync(['go', 'build', '-o', goPeerBinary, '.'], { cwd: source, env, stdout: 'pipe', stderr: 'pipe' })
    return result.exitCode === 0 ? undefined : `go build failed in ${source}: ${result.stderr.toString().trim().split('\n').join(' ')}`
  }
  const why = !Bun.which('go') ? 'go is not on the PATH' : !existsSync(join(source, 'main.go')) ? `there is no ${join(source, 'main.go')}` : build()
  if (why) console.error(`The Go peer was not measured: ${why}.`)
  return why === undefined
}

/** Writes the copies of index.ts that --costs measures, each without one behaviour. */
export function writeCostVariants(): void {
  const source = readFileSync(join(root, 'index.ts'), 'utf8')
  mkdirSync(join(root, costsDir), { recursive: true })
  for (const key of costKeys) {
    let copy = source
    for (const [find, replace] of costs[key].edits) {
      const found = copy.split(find).length - 1
      if (found !== 1) throw new Error(`--costs: index.ts holds ${found} copies of "${find}" (for ${key}), not one: update bench/variants.ts`)
      // A function, so that a `$&` in the replacement is written as it is, not expanded.
      copy = copy.replace(find, () => replace)
    }
    writeFileSync(join(root, costEntry(key)), copy)
  }
}

/**
 * Writes index.ts as it was at each revision (`git show REV:index.ts`) beside the cost copies, and
 * adds it to the variants as `at REV`: before and after, measured in the same rounds.
 */
export function writeRevisionVariants(revisions: string[]): void {
  mkdirSync(join(root, costsDir), { recursive: true })
  for (const revision of revisions) {
    const shown = Bun.spawnSync(['git', 'show', `${revision}:index.ts`], { cwd: root, stdout: 'pipe', stderr: 'pipe' })
    if (shown.exitCode !== 0) throw new Error(`--against ${revision}: ${shown.stderr.toString().trim()}`)
    const entry = `${costsDir}/at-${revision.replace(/[^\w.-]/g, '_')}.ts`
    writeFileSync(join(root, entry), shown.stdout)
    const key: VariantKey = `at ${revision}`
    variants[key] = { label: `index.ts at ${revision}`, entry, env: {}, redis: false, workers: false, timeStartup: false }
    variantKeys.push(key)
  }
}

/** Measured besides what the comparisons need: the server on every route, for its "vs /health" column. */
export const alsoMeasured: [VariantKey, RouteKey[]][] = [['server', ['health', 'openvidu', 'standard', 'webhook']]]

/** A variant by its key (a revision's once writeRevisionVariants added it). */
export function variantOf(key: VariantKey): Variant {
  const variant = variants[key]
  if (!variant) throw new Error(`No variant "${key}"`)
  return variant
}

/** Every variant, in the order each round measures them (writeRevisionVariants adds to it). */
export const variantKeys = Object.keys(variants) as VariantKey[]
