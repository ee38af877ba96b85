// Trial: index.ts's token bucket (RateLimiter; takeTokenScript on Redis) against rate-limiter-flexible
// (RateLimiterMemory; RateLimiterRedis with insuranceLimiter). Usage: bun run docs/trials/rate-limit.ts
import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes, RLWrapperTimeouts } from 'rate-limiter-flexible'
import { createHash } from 'node:crypto'
import { RateLimiter } from '../../index.ts'
import { startRedis } from '../../tests/redis.ts'

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!
const perMinute = 1_000_000 // never refuses: measures the bookkeeping

// 1. Memory, per call, one caller and 100,000 callers.
async function memoryRound(kind: 'bucket' | 'flexible', callers: number, n: number): Promise<number> {
  const bucket = new RateLimiter(perMinute)
  const flexible = new RateLimiterMemory({ points: perMinute, duration: 60 })
  const names = Array.from({ length: n }, (_, i) => `caller-${i % callers}`)
  const start = performance.now()
  if (kind === 'bucket') for (const name of names) bucket.take(name)
  else for (const name of names) await flexible.consume(name)
  return ((performance.now() - start) * 1e6) / n
}
for (const callers of [1, 100_000]) {
  const results = { bucket: [] as number[], flexible: [] as number[] }
  for (let r = 0; r < 7; r++) for (const kind of (r % 2 ? ['flexible', 'bucket'] : ['bucket', 'flexible']) as ('bucket' | 'flexible')[]) results[kind].push(await memoryRound(kind, callers, 200_000))
  console.log(`memory, ${callers} caller(s): bucket ${median(results.bucket).toFixed(0)} ns/take, rate-limiter-flexible ${median(results.flexible).toFixed(0)} ns/consume (median of 7 × 200,000)`)
}

// 2. The window's edge: 10 a second (TOKEN_RATE_LIMIT scaled 60× down to keep this short).
{
  const flexible = new RateLimiterMemory({ points: 10, duration: 1 })
  const first = await flexible.consume('edge') // opens the window
  await Bun.sleep(first.msBeforeNext - 60) // near its end
  let allowed = 0
  const start = performance.now()
  for (let i = 0; i < 9; i++) await flexible.consume('edge').then(() => allowed++, () => {})
  await Bun.sleep(80) // the next window
  for (let i = 0; i < 10; i++) await flexible.consume('edge').then(() => allowed++, () => {})
  const refused = await flexible.consume('edge').catch((res: RateLimiterRes) => res)
  console.log(`fixed window, 10 per 1 s: ${allowed + 1} allowed within ${(performance.now() - start + 940).toFixed(0)} ms of the window's opening (2× the limit at the edge); the next refused with msBeforeNext ${(refused as RateLimiterRes).msBeforeNext} ms`)
  // The bucket at the same edge, TOKEN_RATE_LIMIT=60 on a fake clock: 60 at once from full, then the refill.
  const bucket = new RateLimiter(60)
  let atOnce = 0
  while (bucket.take('edge', 1_000_000) === 0) atOnce++
  let nextSecond = 0
  for (let t = 0; t <= 1000; t += 10) if (bucket.take('edge', 1_000_000 + t) === 0) nextSecond++
  let minute = 0
  for (let t = 0; t < 60_000; t += 10) if (bucket.take('edge', 1_001_000 + t) === 0) minute++
  console.log(`token bucket, 60/min: ${atOnce} at once, ${nextSecond} more in the next second, ${minute} in the minute after (never 2× within a moment)`)
  const perMin = new RateLimiterMemory({ points: 60, duration: 60 })
  for (let i = 0; i < 60; i++) await perMin.consume('m')
  const m = await perMin.consume('m').catch((res: RateLimiterRes) => res)
  const mb = new RateLimiter(60)
  for (let i = 0; i < 60; i++) mb.take('m', 5_000_000)
  console.log(`TOKEN_RATE_LIMIT=60, 61st at once: fixed window Retry-After ${Math.ceil((m as RateLimiterRes).msBeforeNext / 1000)} s (then 60 more at once); bucket Retry-After ${mb.take('m', 5_000_000)} s (then one a second)`)
}

// 3. Redis: Bun's RedisClient through a shim (rate-limiter-flexible asks for ioredis's defineCommand, or node-redis's eval).
const redis = await startRedis()
try {
  const client = new Bun.RedisClient(redis.url, { enableOfflineQueue: false, connectionTimeout: 1000 })
  await client.connect()
  const send = (command: string, args: string[]) => client.send(command, args)
  // ioredis's shape: defineCommand(name, { lua }) adds client[name](keysAndArgs).
  const shim: Record<string, unknown> = {
    defineCommand(name: string, { lua }: { lua: string }) {
      shim[name] = ([key, ...args]: string[]) => send('EVAL', [lua, '1', key!, ...args])
    },
  }
  const limiter = new RateLimiterRedis({ storeClient: shim, points: perMinute, duration: 60, keyPrefix: 'trial', insuranceLimiter: new RateLimiterMemory({ points: perMinute, duration: 60 }) })
  const script = (await Bun.file(new URL('../../index.ts', import.meta.url)).text()).match(/const takeTokenScript = `([^`]*)`/)![1]!
  const hash = createHash('sha1').update(script).digest('hex')
  await send('SCRIPT', ['LOAD', script])
  const ours = (caller: string) => send('EVALSHA', [hash, '1', `rate:${caller}`, String(perMinute)])
  const theirs = (caller: string) => limiter.consume(caller)
  const round = async (take: (caller: string) => Promise<unknown>, n: number) => {
    let next = 0
    const start = performance.now()
    await Promise.all(Array.from({ length: 32 }, async () => { while (next++ < n) await take(`c${next % 1000}`) }))
    return n / ((performance.now() - start) / 1000)
  }
  const results = { ours: [] as number[], theirs: [] as number[] }
  for (let r = 0; r < 7; r++) {
    results.ours.push(await round(ours, 20_000))
    results.theirs.push(await round(theirs, 20_000))
  }
  console.log(`redis, 32 in flight: takeTokenScript (EVALSHA) ${median(results.ours).toFixed(0)}/s, RateLimiterRedis via the shim (EVAL) ${median(results.theirs).toFixed(0)}/s (median of 7 × 20,000)`)
  console.log(`redis key for a caller: ${await send('TYPE', ['trial:c1'])} ${await send('GET', ['trial:c1'])}`)

  // 4. A frozen Redis.
  redis.freeze()
  const start = performance.now()
  const outcome = await Promise.race([limiter.consume('frozen').then(() => 'allowed', (e) => `refused ${e}`), Bun.sleep(5000).then(() => 'no answer after 5 s')])
  console.log(`frozen Redis, RateLimiterRedis + insuranceLimiter: ${outcome} (${(performance.now() - start).toFixed(0)} ms)`)
  const wrapped = new RLWrapperTimeouts({ limiter, timeoutMs: 250 })
  const wrappedStart = performance.now()
  const wrappedOutcome = await Promise.race([wrapped.consume('frozen').then((r: RateLimiterRes) => `allowed (remaining ${r.remainingPoints})`, (e) => `refused ${e}`), Bun.sleep(5000).then(() => 'no answer after 5 s')])
  console.log(`frozen Redis, RLWrapperTimeouts({ timeoutMs: 250 }) around it: ${wrappedOutcome} (${(performance.now() - wrappedStart).toFixed(0)} ms)`)
  redis.thaw()
  await Bun.sleep(100)
  await send('PING', [])
  client.close()
} finally {
  await redis.stop()
}
