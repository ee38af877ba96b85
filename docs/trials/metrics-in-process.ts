// What PROMETHEUS_PORT costs a request, in CPU time, three servers in this one process: index.ts
// without it ("off"), with it ("after": prom-client's Counter and Histogram), and a copy of index.ts
// as it was before (BEFORE, default .bench-costs/before-index.ts: plain-number tallies behind
// hand-made registry objects). This process is also their client (fetch, 32 requests in flight),
// so each figure is CPU µs per request of client and server together: the client's share is the
// same for all three, and the differences are the servers'. CPU time, unlike the clock, barely
// moves when other work shares the machine. Rounds interleaved, order reversed every other round.
//     git show ca7c3b5:index.ts > .bench-costs/before-index.ts
//     bun run docs/trials/metrics-in-process.ts [rounds] > /dev/null
import { signWebhook, webhookEvent } from '../../tests/livekit.ts'

const rounds = Number(process.argv[2] ?? 15)
const perRound = 4000
const inFlight = 32
const credentials = { apiKey: 'trial-key', apiSecret: 'trial-secret-of-at-least-32-characters!' }
const env = { LIVEKIT_API_KEY: credentials.apiKey, LIVEKIT_API_SECRET: credentials.apiSecret, LOG_LEVEL: 'warn' }
const root = new URL('../../', import.meta.url).pathname
// Today's index.ts reads LOG_LEVEL when imported; the copy before had setLogLevel.
process.env.LOG_LEVEL = 'warn'
const after = await import(`${root}index.ts`)
const before = await import(process.env.BEFORE ?? `${root}.bench-costs/before-index.ts`)
before.setLogLevel?.('warn')

const freePort = () => {
  const server = Bun.serve({ port: 0, fetch: () => new Response() })
  const { port } = server
  server.stop(true)
  return String(port)
}
// Before, the metrics were module state, started before the app; after, the app's own.
await before.startMetrics(before.loadConfig({ ...env, PROMETHEUS_PORT: freePort() }))
const servers = {
  off: await after.startServer(after.createApp(after.loadConfig(env)), 0),
  before: await before.startServer(before.createApp(before.loadConfig(env)), 0),
  after: await after.startServer(after.createApp(after.loadConfig({ ...env, PROMETHEUS_PORT: freePort() })), 0),
}

type Route = 'health' | 'token' | 'webhook'
const token = JSON.stringify({ roomName: 'trial-room', participantName: 'alice' })
const request = (route: Route, port: number): [string, RequestInit] => {
  const url = `http://127.0.0.1:${port}`
  if (route === 'health') return [`${url}/health`, {}]
  if (route === 'token') return [`${url}/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: token }]
  const body = JSON.stringify(webhookEvent('participant_joined'))
  return [`${url}/livekit/webhook`, { method: 'POST', headers: { 'content-type': 'application/webhook+json', authorization: signWebhook(body, credentials) }, body }]
}

/** CPU µs per request over `perRound` requests, `inFlight` at a time. */
async function measure(route: Route, port: number): Promise<number> {
  // Webhooks signed beforehand: signing is the client's work, not the server's.
  const requests = Array.from({ length: perRound }, () => request(route, port))
  let next = 0
  const started = process.cpuUsage()
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      while (next < requests.length) {
        const [url, init] = requests[next++]!
        const answer = await fetch(url, init)
        if (answer.status !== 200) throw new Error(`${url}: ${answer.status} ${await answer.text()}`)
        await answer.arrayBuffer()
      }
    }),
  )
  const { user, system } = process.cpuUsage(started)
  return (user + system) / perRound
}

const routes: Route[] = ['health', 'token', 'webhook']
const samples: Record<string, number[]> = {}
for (const route of routes) for (const [name, server] of Object.entries(servers)) await measure(route, server.port) // warm-up
for (let round = 0; round < rounds; round++) {
  for (const route of routes) {
    const names = Object.keys(servers) as (keyof typeof servers)[]
    for (const name of round % 2 ? names.reverse() : names) (samples[`${name} ${route}`] ??= []).push(await measure(route, servers[name].port))
  }
}
const median = (values: number[]) => [...values].sort((a, b) => a - b)[values.length >> 1]!
const paired = (a: string, b: string) => samples[a]!.map((value, i) => value - samples[b]![i]!)
const show = (values: number[]) => `${median(values).toFixed(2)} (${Math.min(...values).toFixed(2)} – ${Math.max(...values).toFixed(2)})`
console.error(`${'Bun' in globalThis ? 'Bun' : 'Deno'}: CPU µs per request, client and server, median of ${rounds} rounds of ${perRound} (lowest – highest)`)
console.error('| route | off | before − off | after − off | after − before |')
console.error('|---|---:|---:|---:|---:|')
for (const route of routes) {
  const [off, b, a] = ['off', 'before', 'after'].map((name) => `${name} ${route}`)
  console.error(`| ${route} | ${median(samples[off!]!).toFixed(1)} | ${show(paired(b!, off!))} | ${show(paired(a!, off!))} | ${show(paired(a!, b!))} |`)
}
process.exit(0)
