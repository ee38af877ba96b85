// What the heaviest requests an attacker can send cost the server, one at a time, beside a plain
// token request measured in the same run: the largest body /token reads, shaped to be worst (deep,
// wide, an invalid room_config), and the same bulk nested past the depth limit.
// Usage: bun run bench/attack.ts [--deno] [--requests N]. Prints a markdown table.
import { parseArgs } from 'node:util'
import { startServer, type Runtime } from '../tests/server.ts'

const { values } = parseArgs({ args: Bun.argv.slice(2), options: { deno: { type: 'boolean', default: false }, requests: { type: 'string', default: '200' } } })
const runtimes: Runtime[] = values.deno ? ['bun', 'deno'] : ['bun']
const requests = Number(values.requests)
const tokenBodyLimit = 256 * 1024

/** `count` copies of `item`, comma-separated, as many as fit in `bytes`. */
const fill = (item: string, bytes: number) => Array.from({ length: Math.floor(bytes / (item.length + 1)) }, () => item).join(',')
const nested = (levels: number) => `${'['.repeat(levels)}${']'.repeat(levels)}`

const bodies: [string, string][] = [
  ['plain OpenVidu token request', JSON.stringify({ roomName: 'room1', participantName: 'alice' })],
  // 3 levels of object and array around 28 nested arrays: 31, one short of the limit.
  ['largest body, deep and wide, invalid room_config', `{"room_config":{"agents":[${fill(nested(28), tokenBodyLimit - 64)}]}}`],
  ['largest body, nested past the limit', `{"x":[${fill(nested(40), tokenBodyLimit - 64)}]}`],
  ['largest body, 64 invalid attributes', JSON.stringify({ participant_attributes: Object.fromEntries(Array.from({ length: 64 }, (_, i) => [`k${i}`, [fill(nested(20), 3800)]])) })],
]

const median = (values: number[]) => values.sort((a, b) => a - b)[Math.floor(values.length / 2)]!

const rows: string[] = []
for (const runtime of runtimes) {
  const server = await startServer(runtime, { LIVEKIT_API_KEY: 'bench-key', LIVEKIT_API_SECRET: `bench-secret-${crypto.randomUUID()}` })
  try {
    const timings = new Map<string, number[]>(bodies.map(([name]) => [name, []]))
    const statuses = new Map<string, Set<number>>(bodies.map(([name]) => [name, new Set()]))
    // Interleaved, so that whatever else the machine does hits every body alike.
    for (let i = 0; i < requests; i++) {
      for (const [name, body] of bodies) {
        const started = performance.now()
        const response = await fetch(`${server.url}/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body })
        await response.arrayBuffer()
        timings.get(name)!.push(performance.now() - started)
        statuses.get(name)!.add(response.status)
      }
    }
    const plain = median(timings.get(bodies[0]![0])!)
    for (const [name, body] of bodies) {
      const ms = median(timings.get(name)!)
      rows.push(`| ${runtime} | ${name} | ${(body.length / 1024).toFixed(0)} KiB | ${[...statuses.get(name)!].join(', ')} | ${ms.toFixed(2)} ms | ${(ms / plain).toFixed(1)}× |`)
    }
  } finally {
    await server.stop()
  }
}
console.log(`Median time per request over ${requests} (sequential, over loopback), ${new Date().toISOString().slice(0, 10)}:\n`)
console.log('| runtime | body | size | status | median | vs plain |\n| --- | --- | ---: | --- | ---: | ---: |')
console.log(rows.join('\n'))
