// rate-limiter-flexible with node-redis (@redis/client), as index.ts uses it on Deno. Usage: deno run -A docs/trials/rlf-deno.ts URL
import { createClient } from '@redis/client'
import { RateLimiterMemory, RateLimiterRedis } from 'rate-limiter-flexible'
const client = createClient({ url: Deno.args[0], disableOfflineQueue: true })
client.on('error', () => {})
await client.connect()
const limiter = new RateLimiterRedis({ storeClient: client, useRedisPackage: true, points: 2, duration: 60, keyPrefix: 'deno', insuranceLimiter: new RateLimiterMemory({ points: 2, duration: 60 }) })
for (let i = 0; i < 3; i++) console.log(await limiter.consume('ada').then((r) => `allowed, remaining ${r.remainingPoints}`, (r) => `refused, msBeforeNext ${r.msBeforeNext ?? r}`))
console.log('key in redis:', await client.get('deno:ada'))
await client.quit()
