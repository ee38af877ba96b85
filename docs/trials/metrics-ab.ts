// PROMETHEUS_PORT's cost through the bench's own harness: the server without it (twice: the second,
// "off again", against the first is the noise floor), with it before (a copy of index.ts as it was,
// with its tallies) and after (prom-client's Counter and Histogram), each pinned to the last core and
// loaded by wrk from the other; every round each (variant, route) once, the order reversed every
// other round. Per-round ratios of requests/s and of CPU µs per request (the process's own, from
// /proc), median and range. ROUTES=health,openvidu to measure fewer routes.
//     git show ca7c3b5:index.ts > .bench-costs/before-index.ts
//     bun run docs/trials/metrics-ab.ts bun 20
import { launch, runWrk, stopEverything, treeCpuMicros, median, wrkThreads, type Variant } from '../../bench/harness.ts'
import { scenarios, type RouteKey } from '../../bench/scenarios.ts'
import type { Runtime } from '../../tests/server.ts'

const runtime = (process.argv[2] ?? 'bun') as Runtime
const rounds = Number(process.argv[3] ?? 12)
const routes = (process.env.ROUTES?.split(',') ?? ['health', 'openvidu', 'standard', 'webhook']) as RouteKey[]
const base = { env: { LOG_LEVEL: 'info' }, redis: false, workers: false, timeStartup: false }
const variants: Record<string, Variant> = {
  off: { label: 'off', entry: 'index.ts', ...base },
  offAgain: { label: 'off again', entry: 'index.ts', ...base },
  before: { label: 'before', entry: '.bench-costs/before-index.ts', ...base, metricsPort: true },
  after: { label: 'after', entry: 'index.ts', ...base, metricsPort: true },
}
const servers = Object.fromEntries(await Promise.all(Object.entries(variants).map(async ([key, variant]) => [key, await launch(runtime, variant, { pinned: true })])))
type Sample = { rps: number; cpu: number }
const samples: Record<string, Sample[]> = {}
const perThread = (route: RouteKey, count: number) => Array.from({ length: wrkThreads }, () => scenarios[route].requests(count))
try {
  for (const route of routes) for (const key of Object.keys(variants)) await runWrk(servers[key]!, perThread(route, 60_000), 1, false, true)
  for (let round = 0; round < rounds; round++) {
    console.error(`round ${round + 1} of ${rounds}`)
    for (const route of routes) {
      const keys = round % 2 ? Object.keys(variants).reverse() : Object.keys(variants)
      for (const key of keys) {
        const server = servers[key]!
        const before = treeCpuMicros(server.child.pid)
        const result = await runWrk(server, perThread(route, scenarios[route].distinct ? 60_000 : 1), 1, !scenarios[route].distinct, true)
        const cpu = treeCpuMicros(server.child.pid) - before
        if (result.statusErrors || result.socketErrors || result.exhaustedThreads) console.error(`${key} ${route}: errors`, result)
        ;(samples[`${key} ${route}`] ??= []).push({ rps: result.requests / (result.durationUs / 1e6), cpu: cpu / result.requests })
      }
    }
  }
} finally {
  await stopEverything()
}
const ratio = (a: string, b: string, route: RouteKey, field: 'rps' | 'cpu') => {
  const values = samples[`${a} ${route}`]!.map((sample, i) => sample[field] / samples[`${b} ${route}`]![i]![field])
  return `${median(values)!.toFixed(2)}× (${Math.min(...values).toFixed(2)}–${Math.max(...values).toFixed(2)})`
}
console.log(`${runtime}, ${rounds} rounds of 1 s; req/s ratios, then CPU-per-request ratios (higher CPU = costlier)`)
console.log('| route | off req/s | off again ÷ off (req/s) | before ÷ off (req/s) | after ÷ off (req/s) | off CPU/req | off again ÷ off (CPU) | before ÷ off (CPU) | after ÷ off (CPU) | after ÷ before (CPU) |')
console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
for (const route of routes) {
  const off = samples[`off ${route}`]!
  console.log(
    `| ${scenarios[route].label} | ${median(off.map((s) => s.rps))!.toFixed(0)} | ${ratio('offAgain', 'off', route, 'rps')} | ` +
      `${ratio('before', 'off', route, 'rps')} | ${ratio('after', 'off', route, 'rps')} | ${median(off.map((s) => s.cpu))!.toFixed(1)} µs | ` +
      `${ratio('offAgain', 'off', route, 'cpu')} | ${ratio('before', 'off', route, 'cpu')} | ${ratio('after', 'off', route, 'cpu')} | ${ratio('after', 'before', route, 'cpu')} |`,
  )
}
