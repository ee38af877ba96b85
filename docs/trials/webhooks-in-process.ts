// Webhooks per second through createApp(...).handle(...), in this process, for each index file given,
// rounds interleaved. Usage: bun run docs/trials/webhooks-in-process.ts [--level info|warn] FILE...
// (stdout carries the server's log lines: send it to a pipe or /dev/null; the figures go to stderr).
import { signWebhook, webhookEvent } from '../../tests/livekit.ts'

const args = process.argv.slice(2)
const level = args[0] === '--level' ? (args.splice(0, 2)[1] as 'info' | 'warn') : 'warn'
const files = args
const credentials = { apiKey: 'benchkey', apiSecret: 'bench-secret-of-at-least-32-characters!' }
const env = { LIVEKIT_API_KEY: credentials.apiKey, LIVEKIT_API_SECRET: credentials.apiSecret, LOG_LEVEL: level }
// Today's index.ts reads LOG_LEVEL when imported; older ones had setLogLevel.
process.env.LOG_LEVEL = level
const apps = await Promise.all(
  files.map(async (file) => {
    const server = await import(new URL(`../../${file}`, import.meta.url).href)
    const config = server.loadConfig(env)
    server.setLogLevel?.(config.logLevel ?? level)
    return server.createApp(config)
  }),
)

const perRound = 20_000
const inFlight = 32
function prepare(n: number) {
  return Array.from({ length: n }, () => {
    const body = JSON.stringify(webhookEvent('participant_joined', { participant: { sid: 'PA_1', identity: 'ada' } }))
    return { body, authorization: signWebhook(body, credentials) }
  })
}
async function round(app: { handle(request: Request): Promise<Response> }, webhooks: { body: string; authorization: string }[]): Promise<number> {
  let next = 0
  const start = performance.now()
  const lane = async () => {
    while (next < webhooks.length) {
      const { body, authorization } = webhooks[next++]!
      const response = await app.handle(
        new Request('http://localhost/livekit/webhook', { method: 'POST', headers: { 'content-type': 'application/webhook+json', 'content-length': String(Buffer.byteLength(body)), authorization }, body }),
      )
      if (response.status !== 200) throw new Error(`answer ${response.status}: ${await response.text()}`)
      await response.arrayBuffer()
    }
  }
  await Promise.all(Array.from({ length: inFlight }, lane))
  return webhooks.length / ((performance.now() - start) / 1000)
}

const rounds = Number(process.env.ROUNDS ?? 7)
const results = files.map(() => [] as number[])
await round(apps[0]!, prepare(2000)) // warm-up
for (let r = 0; r < rounds; r++) {
  const order = r % 2 ? [...files.keys()].reverse() : [...files.keys()]
  for (const i of order) results[i]!.push(await round(apps[i]!, prepare(perRound)))
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!
for (const [i, file] of files.entries()) {
  console.error(`${file} (LOG_LEVEL=${level}): ${median(results[i]!).toFixed(0)} webhooks/s median of ${rounds} × ${perRound} (${results[i]!.map((x) => x.toFixed(0)).join(' ')})`)
}
