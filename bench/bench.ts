// Measures the server as a user runs it (`bun run index.ts`, and with --deno the Deno command too),
// side by side with what it is compared against, in one run: a bare Elysia app doing the same work
// (bench/floor.ts), the server with its shared state on Redis and with WORKERS=2, with each webhook
// appended to a Redis Stream (EVENTS_STREAM), with metrics on, and with a token policy; and a Go
// server doing the same three routes' work with Go's standard library (the Go peer, built from
// --go-peer DIR when `go` is on the PATH). Each comparison is a ratio of two processes loaded by wrk
// in the same round, rounds interleaved. With --costs, also copies of index.ts each without one
// behaviour (CORS, bounded reading, …), to say what each costs; with --against REV, index.ts as it
// was at that git revision (before and after); with --only, none of the other comparisons. With --svg FILE, also a bar chart of
// requests/s (bench/chart.ts). The report (markdown) goes to stdout, progress to stderr.
//
// The files: variants.ts (what is compared, and the goals), scenarios.ts (what each route is sent),
// harness.ts (starting, pinning and loading processes), rounds.ts (the measurement), figures.ts (the
// numbers), report.ts (the markdown), chart.ts (the SVG). This one reads the options, runs, and prints.
import { rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import type { Runtime } from '../tests/server.ts'
import { describeMachine, loadCores, root, roundSeconds, startBenchRedis, stopEverything, treeRssMegabytes, workDir } from './harness.ts'
import { chartSvg } from './chart.ts'
import { problemList, report } from './report.ts'
import { launchAll, measureRounds, planTargets, strayWarnings, timeStartups, warmUp, where } from './rounds.ts'
import { buildGoPeer, costsDir, goPeerSource, writeCostVariants, writeRevisionVariants, type Options } from './variants.ts'

const usage = 'Usage: bun run bench [--seconds N] [--deno] [--costs] [--against REV]… [--only] [--svg FILE] [--go-peer DIR]'

/** The options, and what to do besides measuring: where to write the chart, where the Go peer's source is. */
function parseOptions(): { options: Omit<Options, 'goPeer'>; svg?: string; goPeer: string } {
  const { values } = parseArgs({
    args: Bun.argv.slice(2),
    options: {
      seconds: { type: 'string', default: '10' },
      deno: { type: 'boolean', default: false },
      costs: { type: 'boolean', default: false },
      against: { type: 'string', multiple: true, default: [] },
      only: { type: 'boolean', default: false },
      svg: { type: 'string' },
      'go-peer': { type: 'string', default: goPeerSource },
    },
  })
  const seconds = Number(values.seconds)
  if (!Number.isInteger(seconds) || seconds < 1 || seconds > 300) {
    throw new Error(`--seconds must be a whole number from 1 to 300, got "${values.seconds}"`)
  }
  const runtimes: Runtime[] = values.deno ? ['bun', 'deno'] : ['bun']
  const rounds = Math.ceil(seconds / roundSeconds)
  const options = { seconds, rounds, runtimes, costs: values.costs, against: values.against, only: values.only }
  return { options, svg: values.svg, goPeer: values['go-peer'] }
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

async function main(): Promise<number> {
  let parsed: ReturnType<typeof parseOptions>
  try {
    parsed = parseOptions()
  } catch (error) {
    console.error(`${(error as Error).message}\n${usage}`)
    return 2
  }
  const missing = missingTools()
  if (missing.length > 0) {
    console.error(`Cannot benchmark:\n- ${missing.join('\n- ')}`)
    return 1
  }
  // Without go (or the peer's source), one line says so and the run goes on without the peer.
  const options: Options = { ...parsed.options, goPeer: buildGoPeer(parsed.goPeer) }
  const machine = await describeMachine(options.runtimes, options.goPeer)
  // This script (every thread of it) and what it starts unpinned (Redis) share wrk's cores, not the measured process's.
  Bun.spawnSync(['taskset', '-a', '-p', '-c', loadCores, String(process.pid)], { stdout: 'ignore' })
  const startups = options.only ? new Map<string, number>() : await timeStartups(options)

  await startBenchRedis()
  if (options.costs) writeCostVariants()
  writeRevisionVariants(options.against)
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
  if (parsed.svg) {
    writeFileSync(parsed.svg, chartSvg(targets, options, machine))
    console.error(`Wrote the chart to ${parsed.svg}`)
  }
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
