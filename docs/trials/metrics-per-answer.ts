// What counting an answer costs, in CPU time: a GET /health answer is one histogram observation (by
// route and status), a POST one observation and one counter increment (by contract or event, and
// status or outcome). Each call three ways, interleaved, median of 11 rounds of 200,000 calls: the
// plain-number tallies index.ts kept until 2026-12 (copied below), prom-client's public
// `observe`/`inc` with label objects (what index.ts does now), and the same through children made
// once with `labels(…)` and kept (in prom-client 15 they still hash the labels on every call).
//     bun run docs/trials/metrics-per-answer.ts
//     deno run --allow-env docs/trials/metrics-per-answer.ts
import { Counter, Histogram, Registry } from 'prom-client'

const buckets = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
const calls = 200_000
const rounds = 11
// A mix of label values, as traffic gives them.
const mix = Array.from({ length: 64 }, (_, i) => ({
  route: ['/token', '/livekit/webhook', '/health'][i % 3]!,
  status: [200, 200, 200, 401, 429][i % 5]!,
  contract: i % 2 ? 'openvidu' : 'standard',
  seconds: 0.0004 + (i % 7) * 0.0007,
}))
type Answer = (typeof mix)[number]

// The tallies, as index.ts had them (Tally and DurationTally, the counting half).
class Tally {
  private readonly counts = new Map<string, Map<string | number, { labels: Record<string, string>; value: number }>>()
  add(first: string, second: string | number): void {
    let bySecond = this.counts.get(first)
    if (!bySecond) this.counts.set(first, (bySecond = new Map()))
    const entry = bySecond.get(second)
    if (entry) entry.value++
    else bySecond.set(second, { labels: { contract: first, status: String(second) }, value: 1 })
  }
}
class DurationTally {
  private readonly series = new Map<string, Map<number, { buckets: number[]; sum: number; count: number }>>()
  observe(route: string, status: number, seconds: number): void {
    let byStatus = this.series.get(route)
    if (!byStatus) this.series.set(route, (byStatus = new Map()))
    let series = byStatus.get(status)
    if (!series) byStatus.set(status, (series = { buckets: buckets.map(() => 0), sum: 0, count: 0 }))
    let bucket = 0
    while (bucket < buckets.length && seconds > buckets[bucket]!) bucket++
    if (bucket < buckets.length) series.buckets[bucket]!++
    series.sum += seconds
    series.count++
  }
}

const registers = () => [new Registry()]
const histogram = () => new Histogram({ name: 'd_seconds', help: 'd', labelNames: ['route', 'status'] as const, buckets, registers: registers() })
const counter = () => new Counter({ name: 't_total', help: 't', labelNames: ['contract', 'status'] as const, registers: registers() })

/** Children made once per label values, in nested maps (no key built per call). */
function children<Child>(make: (first: string, second: number) => Child) {
  const byFirst = new Map<string, Map<number, Child>>()
  return (first: string, second: number): Child => {
    let bySecond = byFirst.get(first)
    if (!bySecond) byFirst.set(first, (bySecond = new Map()))
    let child = bySecond.get(second)
    if (!child) bySecond.set(second, (child = make(first, second)))
    return child
  }
}

const ways: Record<string, () => (answer: Answer) => void> = {
  'observe: tallies': () => {
    const tally = new DurationTally()
    return ({ route, status, seconds }) => tally.observe(route, status, seconds)
  },
  'observe: prom-client': () => {
    const durations = histogram()
    return ({ route, status, seconds }) => durations.observe({ route, status }, seconds)
  },
  'observe: prom-client children': () => {
    const durations = histogram()
    const child = children((route, status) => durations.labels(route, status))
    return ({ route, status, seconds }) => child(route, status).observe(seconds)
  },
  'inc: tallies': () => {
    const tally = new Tally()
    return ({ contract, status }) => tally.add(contract, status)
  },
  'inc: prom-client': () => {
    const tokens = counter()
    return ({ contract, status }) => tokens.inc({ contract, status })
  },
  'inc: prom-client children': () => {
    const tokens = counter()
    const child = children((contract, status) => tokens.labels(contract, status))
    return ({ contract, status }) => child(contract, status).inc()
  },
}

const timings: Record<string, number[]> = Object.fromEntries(Object.keys(ways).map((name) => [name, []]))
for (let round = 0; round < rounds; round++) {
  for (const name of round % 2 ? Object.keys(ways).reverse() : Object.keys(ways)) {
    const call = ways[name]!()
    // CPU time, not the clock: on a shared machine the clock also counts the waits for a core.
    const started = process.cpuUsage()
    for (let i = 0; i < calls; i++) call(mix[i & 63]!)
    const { user, system } = process.cpuUsage(started)
    timings[name]!.push(((user + system) * 1e3) / calls)
  }
}
const median = (values: number[]) => [...values].sort((a, b) => a - b)[values.length >> 1]!
console.log(`${'Bun' in globalThis ? 'Bun' : 'Deno'}: CPU ns per call, median of ${rounds} × ${calls} (lowest–highest)`)
for (const [name, values] of Object.entries(timings)) {
  console.log(`${name.padEnd(32)} ${median(values).toFixed(0).padStart(5)} (${Math.min(...values).toFixed(0)}–${Math.max(...values).toFixed(0)})`)
}
