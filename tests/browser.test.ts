// A page on another origin asks for a token as OpenVidu's browser clients do, in a real Chromium:
// the JSON POST needs a CORS preflight, and the page must be able to read answers and errors alike.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from 'bun:test'
import { chromium, type Browser } from 'playwright-core'
import { runtimeNames, startServer, testCredentials, type ServerProcess } from './server'
import { verifyAccessToken } from './livekit'

// Real servers, browsers and Redis start here: 30 s a test (bunfig's [test] timeout is not read by Bun 1.4).
setDefaultTimeout(30_000)

const credentials = testCredentials()

/** What the page's fetch() of /token gave it: the status and JSON body, or the error it threw. */
interface TokenRequestOutcome {
  status?: number
  body?: { token?: string; errorMessage?: string }
  error?: string
}

declare global {
  interface Window {
    tokenRequests: Promise<TokenRequestOutcome[]>
  }
}

// The application server's URL comes in the query string; the page fetches /token and nothing else.
const clientPage = `<!doctype html>
<meta charset="utf-8">
<title>OpenVidu-style client</title>
<script>
  const applicationServer = new URLSearchParams(location.search).get('server')
  async function getToken(body) {
    try {
      const response = await fetch(applicationServer + '/token', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(5000),
      })
      return { status: response.status, body: await response.json() }
    } catch (error) {
      return { error: String(error) }
    }
  }
  window.tokenRequests = Promise.all([
    getToken({ roomName: 'room1', participantName: 'alice' }),
    getToken({ roomName: 'room1' }),
  ])
</script>`

let browser: Browser
let pageServer: ReturnType<typeof Bun.serve>

beforeAll(async () => {
  pageServer = Bun.serve({
    port: 0,
    fetch: (request) =>
      new URL(request.url).pathname === '/'
        ? new Response(clientPage, { headers: { 'content-type': 'text/html; charset=utf-8' } })
        : new Response('Not found', { status: 404 }),
  })
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    timeout: 20_000,
    args: ['--no-sandbox', '--headless', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
  })
})

afterAll(async () => {
  // Bounded: a browser that will not close must not hang the run (Playwright kills it on exit).
  await Promise.race([browser?.close(), Bun.sleep(5_000)])
  pageServer?.stop(true)
})

for (const runtime of runtimeNames) {
  describe(`${runtime}: a page on another origin, in Chromium`, () => {
    let server: ServerProcess
    let pageOrigin: string
    let outcomes: TokenRequestOutcome[]

    beforeAll(async () => {
      server = await startServer(runtime, { LIVEKIT_API_KEY: credentials.apiKey, LIVEKIT_API_SECRET: credentials.apiSecret })
      const page = await browser.newPage()
      try {
        await page.goto(`http://localhost:${pageServer.port}/?server=${encodeURIComponent(server.url)}`, { timeout: 10_000 })
        pageOrigin = await page.evaluate(() => location.origin)
        outcomes = await page.evaluate(() => window.tokenRequests)
      } finally {
        await page.close()
      }
    })

    afterAll(async () => {
      await server?.stop()
    })

    test('is served from an origin other than the server’s', () => {
      expect(pageOrigin).not.toBe(new URL(server.url).origin)
    })

    test('gets a token for the named room and participant from POST /token', () => {
      const [ok] = outcomes
      expect(ok).toEqual({ status: 200, body: { token: expect.any(String) } })
      const claims = verifyAccessToken(ok!.body!.token!, credentials)
      expect(claims.sub).toBe('alice')
      expect(claims.name).toBe('alice')
      expect(claims.video).toMatchObject({ roomJoin: true, room: 'room1' })
    })

    test('can read the 400 status and errorMessage of a request without participantName', () => {
      const [, refused] = outcomes
      expect(refused).toEqual({ status: 400, body: { errorMessage: 'roomName and participantName are required' } })
    })
  })
}
