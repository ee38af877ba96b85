// The floor the benchmark measures the server against: a bare Elysia app doing the same
// work as index.ts in the plainest way. Same token minter, same webhook verifier, same log line, but
// Elysia's default JSON parsing and validation, no body bounds, no rate limit, no hooks, no CORS
// (FLOOR_CORS=1 adds the CORS plugin as the server applies it, so that plugin's cost shows on its own).
// Run it as the server runs: `bun run bench/floor.ts`, or `deno run --allow-net --allow-env bench/floor.ts`,
// with SERVER_PORT (0 for a free port) and LIVEKIT_API_KEY / LIVEKIT_API_SECRET; it prints the same
// `listening on http://localhost:PORT` JSON line as the server.
import { Elysia, status, t } from 'elysia'
import type { WebhookEvent } from 'livekit-server-sdk'
import { corsPlugin, createTokenMinter, createWebhookVerifier, loadConfig, log } from '../index.ts'

// The one part of Deno's API used here; declared so this file type-checks under tsc (Bun's types).
declare const Deno: {
  serve(options: { port: number; onListen?: (address: { port: number }) => void }, handler: (request: Request) => Response | Promise<Response>): unknown
}

const config = loadConfig(process.env)
const mintToken = createTokenMinter(config)
const verifyWebhook = createWebhookVerifier(config)

/** The fields the server's webhook log line names (index.ts's describeEvent, for the events the bench sends). */
const describeEvent = (event: WebhookEvent) => ({
  event: event.event || undefined,
  id: event.id || undefined,
  room: event.room?.name || undefined,
  participant: event.participant?.identity || undefined,
})

const withCors = process.env.FLOOR_CORS === '1'
const app = new Elysia()
// The CORS plugin as the server configures and applies it; Elysia applies a plugin to the routes added after it.
if (withCors) {
  app.use(corsPlugin())
}
app
  .get('/health', () => ({ status: 'ok' }))
  .post(
    '/token',
    ({ body: { roomName, participantName } }) => ({
      token: mintToken({ identity: participantName, name: participantName, room: roomName }),
    }),
    { body: t.Object({ roomName: t.String(), participantName: t.String() }) },
  )
  .post(
    '/livekit/webhook',
    async ({ request }) => {
      const body = new Uint8Array(await request.arrayBuffer())
      let event: WebhookEvent
      try {
        event = verifyWebhook(body, request.headers.get('authorization'))
      } catch (error) {
        log('warn', 'webhook refused', { reason: (error as Error).message })
        return status(401, { errorMessage: 'Webhook signature is missing or invalid' })
      }
      log('info', 'webhook', describeEvent(event))
      return { received: true }
    },
    { parse: 'none' },
  )

const sayListening = (port: number) => log('info', `listening on http://localhost:${port}`, { port, cors: withCors })

if ('Bun' in globalThis) {
  app.listen({ port: config.port })
  sayListening(app.server!.port!)
} else {
  Deno.serve({ port: config.port, onListen: ({ port }) => sayListening(port) }, app.fetch)
}
