// The fast tier's harness: index.ts's app answering Requests in this process (Elysia's app.handle),
// with no server, socket nor build in between, so that the whole tier runs in seconds (and under
// mutation testing, once per mutant). The black-box suite in tests/ holds the real servers to it.
// The app logs to this process's own stdout and stderr, between the test results: only errors (LOG_LEVEL=error,
// set by log-level.ts, which bunfig.toml preloads), which no test here causes but those failing a handler or an
// identity provider on purpose. (The black-box suite reads the log lines.)
import { createApp, loadConfig, type TokenDecider, type WebhookHandler } from '../../index'
import { signWebhook, type Credentials } from '../livekit'
import { assertNoLeaks, type Answer } from '../server'

type Extras = { handlers?: Record<string, WebhookHandler>; decide?: TokenDecider }

/** The app as loadConfig(env) configures it, and a client that sends it Requests as a browser or LiveKit would. */
export function appWith(env: Record<string, string>, { handlers, decide }: Extras = {}) {
  const app = createApp(loadConfig(env), handlers, decide)

  async function request(path: string, init: RequestInit = {}): Promise<Answer> {
    const headers = new Headers(init.headers)
    // What fetch declares for a body it knows the length of; without it the app reads the body as chunked.
    if (typeof init.body === 'string' && !headers.has('content-length')) {
      headers.set('content-length', String(Buffer.byteLength(init.body)))
    }
    const response = await app.handle(new Request(`http://localhost${path}`, { ...init, headers }))
    const text = await response.text()
    // Every answer audited as the black-box suite audits them: no API secret, no stack trace, headers included.
    assertNoLeaks(`answer to ${init.method ?? 'GET'} ${path}`, `${JSON.stringify([...response.headers])}\n${text}`, {
      tokensAllowed: true,
    })
    return { status: response.status, headers: response.headers, text, json: () => JSON.parse(text) }
  }

  return {
    request,
    postJson: (path: string, body: unknown, headers: Record<string, string> = {}) =>
      request(path, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...headers },
        body: JSON.stringify(body),
      }),
    /** A webhook as LiveKit posts it: the body's exact text, and the bare JWT signed over it. */
    postWebhook: (body: string, credentials: Credentials, headers: Record<string, string> = {}) =>
      request('/livekit/webhook', {
        method: 'POST',
        headers: {
          'content-type': 'application/webhook+json',
          authorization: signWebhook(body, credentials),
          ...headers,
        },
        body,
      }),
  }
}

export type TestApp = ReturnType<typeof appWith>

/** A body sent as a stream of chunks, with no declared length (chunked, as a proxy may forward it). */
export function streamOf(...chunks: string[]): ReadableStream<Uint8Array> {
  return new ReadableStream({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(new TextEncoder().encode(chunk))
      controller.close()
    },
  })
}
