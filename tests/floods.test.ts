// Connection floods, run as an attacker would against the server process: thousands of uploads that
// never finish, and more idle connections than the process has file descriptors. The server must
// stay up, keep its memory bounded, and keep answering.
import { describe, expect, setDefaultTimeout, test } from 'bun:test'
import { runtimeNames, startServer, testCredentials, type ServerProcess } from './server'
import { openDescriptors, rssMegabytes } from './traffic'
import { open } from './raw-http'
import { signWebhook } from './livekit'
import type { Socket } from 'node:net'

// Real servers, browsers and Redis start here: 30 s a test (bunfig's [test] timeout is not read by Bun 1.4).
setDefaultTimeout(30_000)

const credentials = testCredentials()
const livekitEnv = { LIVEKIT_API_KEY: credentials.apiKey, LIVEKIT_API_SECRET: credentials.apiSecret }
const hangingUploads = new URL('fixtures/hanging-uploads.ts', import.meta.url).pathname

/** How long GET /health takes to answer 200, in ms; Infinity when it fails or takes over 5 s. */
async function healthMs(server: ServerProcess): Promise<number> {
  const started = performance.now()
  try {
    const response = await fetch(`${server.url}/health`, { signal: AbortSignal.timeout(5000) })
    await response.text()
    return response.status === 200 ? performance.now() - started : Infinity
  } catch {
    return Infinity
  }
}

for (const runtime of runtimeNames) {
  describe(`${runtime}: connection floods`, () => {
    test('3,000 uploads hanging 1,000 bytes short of their end keep memory under 400 MB, and /health answers within 1 s', async () => {
      const server = await startServer(runtime, livekitEnv)
      const idleRss = await rssMegabytes(server.child.pid)
      // Half at the webhook route's limit (1 MiB), half at the token route's (256 KiB).
      const floods = [
        ['/livekit/webhook', 1024 * 1024],
        ['/token', 256 * 1024],
      ] as const
      // The webhooks signed as LiveKit signs them (unsigned ones are refused before their body is read).
      const crowds = floods.map(([path, limit]) =>
        Bun.spawn(['bun', hangingUploads, server.url, path, '1500', String(limit), String(limit - 1000)], {
          env: { ...process.env, AUTHORIZATION: signWebhook('{}', credentials) },
          stdout: 'pipe',
          stderr: 'inherit',
        }),
      )
      try {
        const health: number[] = []
        const rss: number[] = []
        const deadline = Date.now() + 8000
        while (Date.now() < deadline) {
          health.push(await healthMs(server))
          rss.push(await rssMegabytes(server.child.pid))
          await Bun.sleep(100)
        }
        for (const crowd of crowds) crowd.kill('SIGTERM')
        const reports = await Promise.all(crowds.map(async (crowd) => JSON.parse(await new Response(crowd.stdout).text())))
        console.log(`${runtime}: RSS ${idleRss.toFixed(0)} MB idle, at most ${Math.max(...rss).toFixed(0)} MB; /health at most ${Math.max(...health).toFixed(0)} ms; ${JSON.stringify(reports)}`)
        expect(Math.max(...rss)).toBeLessThan(400)
        expect(Math.max(...health)).toBeLessThan(1000)
        expect(server.child.exitCode).toBeNull()
        // All but the few that fit in MAX_PENDING_BODY_BYTES (16 MiB) were refused, 503, before their
        // bodies were read, and their connections closed. (A client still writing when the server
        // closes may lose the answer to the reset, so the closed connections are what is counted.)
        for (const [index, { statuses, closedByServer }] of reports.entries()) {
          expect(Object.keys(statuses)).toEqual(['503'])
          expect(closedByServer).toBeGreaterThanOrEqual(1500 - (16 * 1024 * 1024) / floods[index]![1])
        }
      } finally {
        for (const crowd of crowds) crowd.kill()
        await server.stop()
      }
    }, 60_000)

    test('1,100 idle connections against 1,024 file descriptors do not stop the server, and /health answers within 15 s of them closing', async () => {
      const server = await startServer(runtime, livekitEnv, { fileLimit: 1024 })
      const sockets: Socket[] = []
      try {
        const target = new URL(server.url)
        for (let i = 0; i < 1100; i++) {
          const socket = await open(target).catch(() => undefined)
          socket?.on('error', () => {})
          if (socket) sockets.push(socket)
        }
        // Bun holds every connection it accepted: its descriptors are used up, to the last one.
        // (Deno closes them all again, and its log says so, below.) Either within 2 s.
        const recoveryLine = 'out of file descriptors: closing every connection and listening again'
        const recovered = () => server.logs().some((entry) => entry.msg === recoveryLine)
        const usedUp = async () =>
          runtime === 'deno' ? recovered() : (await openDescriptors(server.child.pid)) === 1024
        for (const deadline = Date.now() + 2000; Date.now() < deadline && !(await usedUp()); ) await Bun.sleep(50)
        if (runtime !== 'deno') expect(await openDescriptors(server.child.pid)).toBe(1024)
        for (const socket of sockets) socket.destroy()
        const closedAt = Date.now()
        let answeredAfterMs = Infinity
        while (Date.now() - closedAt < 15_000) {
          if ((await healthMs(server)) < Infinity) {
            answeredAfterMs = Date.now() - closedAt
            break
          }
          await Bun.sleep(200)
        }
        console.log(`${runtime}: /health answered ${answeredAfterMs} ms after 1,100 idle connections closed`)
        expect(answeredAfterMs).toBeLessThan(15_000)
        expect(server.child.exitCode).toBeNull()
        expect(server.lines.join('\n')).not.toMatch(/Uncaught|panicked/)
        // Deno closes no idle connection itself: the server found its descriptors used up and recovered.
        if (runtime === 'deno') expect(recovered()).toBe(true)
      } finally {
        for (const socket of sockets) socket.destroy()
        await server.stop()
      }
    }, 60_000)
  })
}
