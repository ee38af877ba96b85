// A soak run, on demand (not a test): the load test's mixed traffic sent without a pause for a few
// minutes at a concurrency of 50, against the server started as a user starts it, with its RSS
// sampled every 10 s. Exits 1 if any request failed or the server died.
// Usage: bun run bench/soak.ts [--runtime bun|deno] [--minutes N]
import { parseArgs } from 'node:util'
import { runtimeNames, startServer, testCredentials, type Runtime } from '../tests/server.ts'
import { newCounts, rssMegabytes, sendTraffic } from '../tests/traffic.ts'

const concurrency = 50
const sampleEveryMs = 10_000
const maxMinutes = 60

function parseOptions(): { runtime: Runtime; minutes: number } {
  const { values } = parseArgs({
    args: Bun.argv.slice(2),
    options: { runtime: { type: 'string', default: 'bun' }, minutes: { type: 'string', default: '2' } },
  })
  const runtime = values.runtime as Runtime
  const minutes = Number(values.minutes)
  if (!runtimeNames.includes(runtime) || !(minutes > 0 && minutes <= maxMinutes)) {
    console.error(`usage: bun run bench/soak.ts [--runtime ${runtimeNames.join('|')}] [--minutes N (at most ${maxMinutes})]`)
    process.exit(2)
  }
  return { runtime, minutes }
}

const { runtime, minutes } = parseOptions()
const credentials = testCredentials()
const server = await startServer(runtime, { LIVEKIT_API_KEY: credentials.apiKey, LIVEKIT_API_SECRET: credentials.apiSecret })
process.once('SIGINT', () => server.stop().then(() => process.exit(130)))

const counts = newCounts()
const started = Date.now()
const deadline = started + minutes * 60_000
const traffic = sendTraffic({
  baseUrl: server.url,
  credentials,
  concurrency,
  // Far above what this machine can send in that time: the deadline is what ends the run.
  maxRequests: minutes * 60 * 50_000,
  deadline,
  counts,
})
let trafficDone = false
void traffic.then(() => (trafficDone = true))

const rssSamples: number[] = []
let serverErrorLines = 0
let previous = { at: started, requests: 0 }
const serverDied = () => server.child.exitCode !== null || server.child.signalCode !== null
let died = false

console.log(`soak: ${runtime} server at ${server.url}, ${minutes} min, concurrency ${concurrency}`)
console.log(`${'time'.padStart(6)} ${'requests'.padStart(9)} ${'errors'.padStart(7)} ${'req/s'.padStart(7)} ${'RSS MB'.padStart(7)}`)

async function sample(): Promise<void> {
  const now = Date.now()
  const rss = await rssMegabytes(server.child.pid)
  rssSamples.push(rss)
  const rate = now > previous.at ? Math.round(((counts.requests - previous.requests) * 1000) / (now - previous.at)) : 0
  previous = { at: now, requests: counts.requests }
  // The server logs every webhook; keep only what matters, or the lines would fill this process's memory.
  serverErrorLines += server.lines.filter((line) => line.includes('"level":"error"') || /^\s+at /.test(line)).length
  server.lines.length = 0
  const seconds = Math.round((now - started) / 1000)
  console.log(`${`${seconds}s`.padStart(6)} ${String(counts.requests).padStart(9)} ${String(counts.errors).padStart(7)} ${String(rate).padStart(7)} ${rss.toFixed(1).padStart(7)}`)
}

try {
  await sample()
  for (let next = started + sampleEveryMs; next <= deadline && !trafficDone && !died; next += sampleEveryMs) {
    await Promise.race([Bun.sleep(Math.max(0, next - Date.now())), traffic])
    died = serverDied()
    if (!trafficDone && !died) await sample()
  }
  await traffic
  died = serverDied()
  if (!died && Date.now() - previous.at > 1000) await sample()
} finally {
  await server.stop()
}

const seconds = (Date.now() - started) / 1000
const [firstRss, lastRss] = [rssSamples[1] ?? rssSamples[0]!, rssSamples.at(-1)!]
console.log(
  `soak ${runtime}: ${counts.requests} requests in ${seconds.toFixed(0)} s (${Math.round(counts.requests / seconds)}/s), ` +
    `${counts.errors} errors, ${serverErrorLines} error lines in the server log; ` +
    `RSS ${firstRss.toFixed(1)} MB after 10 s, ${lastRss.toFixed(1)} MB at the end, at most ${Math.max(...rssSamples).toFixed(1)} MB` +
    (died ? '; the server died during the run' : ''),
)
for (const error of counts.samples) console.log(`  ${error}`)
process.exit(counts.errors > 0 || died ? 1 : 0)
