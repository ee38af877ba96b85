// A bounded load test over real HTTP: rounds of mixed traffic at a concurrency of 50, on each runtime.
// Every answer must be a 200, and the server's memory must not keep growing from one round to the next.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from 'bun:test'
import { runtimeNames, startServer, testCredentials, type Runtime, type ServerProcess } from './server.ts'
import { rssMegabytes, sendTraffic, type Counts } from './traffic.ts'

// Real servers, browsers and Redis start here: 30 s a test (bunfig's [test] timeout is not read by Bun 1.4).
setDefaultTimeout(30_000)

const credentials = testCredentials()
const requestsPerRound = 3000
const concurrency = 50
const roundTimeLimitMs = 30_000

// Growth allowed from the end of round 1 to the end of round 2, in MB. Measured here: Bun's RSS moves
// by about 1 MB; Deno's by 5-8 MB, and V8 resizes its heap in steps of tens of MB, so it gets more.
// Fixed amounts, not a share of the RSS, so that a leak does not widen its own allowance.
const allowedGrowthMb: Record<Runtime, number> = { bun: 15, deno: 40, binary: 15 }

interface Round {
  name: string
  counts: Counts
  seconds: number
  rssBefore: number
  rssAfter: number
}

for (const runtime of runtimeNames) {
  describe(`${runtime}: under load`, () => {
    let server: ServerProcess

    beforeAll(async () => {
      server = await startServer(runtime, { LIVEKIT_API_KEY: credentials.apiKey, LIVEKIT_API_SECRET: credentials.apiSecret })
    })

    afterAll(async () => {
      await server?.stop()
    })

    async function round(name: string): Promise<Round> {
      const rssBefore = await rssMegabytes(server.child.pid)
      const started = performance.now()
      const counts = await sendTraffic({
        baseUrl: server.url,
        credentials,
        concurrency,
        maxRequests: requestsPerRound,
        deadline: Date.now() + roundTimeLimitMs,
      })
      const seconds = (performance.now() - started) / 1000
      const rssAfter = await rssMegabytes(server.child.pid)
      console.log(
        `${runtime} ${name}: ${counts.requests} requests, ${counts.errors} errors, ${Math.round(counts.requests / seconds)} requests/s, ` +
          `RSS ${rssBefore.toFixed(1)} → ${rssAfter.toFixed(1)} MB${counts.samples.length ? `\n  ${counts.samples.join('\n  ')}` : ''}`,
      )
      return { name, counts, seconds, rssBefore, rssAfter }
    }

    test(`answers ${requestsPerRound} mixed requests per round at a concurrency of ${concurrency}, all with a 200, without growing its memory`, async () => {
      // The warm-up round lets the runtime size its heap and JIT the code; only later rounds are compared.
      const rounds = [await round('warm-up'), await round('round 1'), await round('round 2')]
      const [, first, second] = rounds as [Round, Round, Round]
      const growth = second.rssAfter - first.rssAfter
      const allowed = allowedGrowthMb[runtime]
      console.log(`${runtime}: RSS growth from round 1 to round 2: ${growth.toFixed(1)} MB (allowed ${allowed} MB)`)

      for (const { counts } of rounds) expect(counts).toEqual({ requests: requestsPerRound, errors: 0, samples: [] })
      expect(server.child.exitCode).toBeNull()
      expect(growth).toBeLessThan(allowed)
    }, 120_000)
  })
}
