// The API described the Elysia way: GET /openapi.json generated from the routes' schemas (and valid
// OpenAPI 3.1), a docs page that renders with no internet, and a client typed from `App` (Eden).
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from 'bun:test'
import { Validator } from '@seriousme/openapi-schema-validator'
import { chromium, type Browser } from 'playwright-core'
import { runtimeNames, serveDuringTests, testCredentials } from './server'
import { verifyAccessToken } from './livekit'
import { health, openViduToken, standardToken } from './fixtures/typed-client'

// Real servers, browsers and Redis start here: 30 s a test (bunfig's [test] timeout is not read by Bun 1.4).
setDefaultTimeout(30_000)

const credentials = testCredentials()
const livekitEnv = { LIVEKIT_API_KEY: credentials.apiKey, LIVEKIT_API_SECRET: credentials.apiSecret, LIVEKIT_URL: 'wss://livekit.example.test' }
const root = new URL('..', import.meta.url).pathname

test('a TypeScript client typed from App type-checks (tsc), wrong bodies included as errors', async () => {
  const tsc = Bun.spawn(['node_modules/.bin/tsc', '--noEmit', '-p', 'tsconfig.json'], { cwd: root, stdout: 'pipe', stderr: 'pipe' })
  const output = await new Response(tsc.stdout).text()
  expect({ code: await tsc.exited, output }).toEqual({ code: 0, output: '' })
}, 60_000)

for (const runtime of runtimeNames) {
  describe(`${runtime}: GET /openapi.json`, () => {
    const running = serveDuringTests(runtime, livekitEnv)

    test('is an OpenAPI 3.1 document that validates', async () => {
      const answer = await running.http.request('/openapi.json')
      expect(answer.status).toBe(200)
      const document = answer.json()
      expect(document.openapi).toStartWith('3.1')
      const result = await new Validator().validate(document)
      expect(result).toEqual({ valid: true })
    })

    test('describes both /token contracts with their bounds, and every answer the route gives', async () => {
      const { paths } = (await running.http.request('/openapi.json')).json()
      const token = paths['/token'].post
      const [openVidu, standard] = token.requestBody.content['application/json'].schema.anyOf
      expect(openVidu.required).toEqual(['roomName', 'participantName'])
      expect(openVidu.properties.roomName).toMatchObject({ type: 'string', minLength: 1, maxLength: 256 })
      expect(standard.properties.room_name).toMatchObject({ type: 'string', maxLength: 256 })
      expect(standard.properties.participant_attributes).toMatchObject({ maxProperties: 64 })
      expect(Object.keys(token.responses).sort()).toEqual(['200', '400', '401', '403', '408', '413', '429', '503'])
      const answers = token.responses['200'].content['application/json'].schema.anyOf
      expect(answers.map((answer: { required: string[] }) => answer.required)).toEqual([['token'], ['server_url', 'participant_token']])
      expect(token.responses['429'].content['application/json'].schema).toMatchObject({ required: ['errorMessage'] })
      const webhook = paths['/livekit/webhook'].post
      expect(Object.keys(webhook.responses).sort()).toEqual(['200', '400', '401', '408', '413', '500', '503'])
      expect(Object.keys(paths).sort()).toEqual(['/health', '/livekit/webhook', '/token'])
    })
  })

  describe(`${runtime}: the docs page, GET /openapi`, () => {
    // The README's command for each runtime: under Deno, no permission beyond it.
    const running = serveDuringTests(runtime, livekitEnv)
    let browser: Browser
    beforeAll(async () => {
      browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox', '--headless', '--disable-gpu', '--disable-background-networking'] })
    })
    afterAll(() => browser?.close())

    test('renders both routes, with no error on the page, in a browser that may reach no other host', async () => {
      const page = await browser.newPage()
      const pageErrors: string[] = []
      page.on('pageerror', (error) => pageErrors.push(error.message))
      const elsewhere: string[] = []
      const server = new URL(running.server.url)
      await page.route('**/*', (route) => {
        const url = new URL(route.request().url())
        if (url.port === server.port && ['localhost', '127.0.0.1'].includes(url.hostname)) return route.continue()
        elsewhere.push(url.href)
        return route.abort()
      })
      try {
        await page.goto(`${running.server.url}/openapi`)
        await page.getByText('/livekit/webhook').first().waitFor({ timeout: 10_000 })
        await page.getByText('/token', { exact: true }).first().waitFor({ timeout: 1000 })
        expect({ elsewhere, pageErrors }).toEqual({ elsewhere: [], pageErrors: [] })
      } finally {
        await page.close()
      }
    }, 20_000)
  })

  describe(`${runtime}: with OPENAPI=0`, () => {
    const running = serveDuringTests(runtime, { ...livekitEnv, OPENAPI: '0' })

    test('serves neither the document nor the docs page', async () => {
      for (const path of ['/openapi.json', '/openapi', '/openapi/swagger-ui-bundle.js']) {
        expect([path, (await running.http.request(path)).status]).toEqual([path, 404])
      }
    })
  })

  describe(`${runtime}: a client typed from App (Eden Treaty)`, () => {
    const running = serveDuringTests(runtime, livekitEnv)

    test('gets tokens under both contracts, typed, and errors typed as { errorMessage } with their status', async () => {
      const answer = await openViduToken(running.server.url, 'room1', 'alice')
      expect(verifyAccessToken((answer as { token: string }).token, credentials)).toMatchObject({ sub: 'alice', video: { room: 'room1' } })
      expect(await openViduToken(running.server.url, 'room1', '')).toEqual({ status: 400, errorMessage: 'roomName and participantName are required' })
      const standard = await standardToken(running.server.url, 'standup')
      expect(standard.server_url).toBe('wss://livekit.example.test')
      expect(verifyAccessToken(standard.participant_token, credentials)).toMatchObject({ name: 'Ada', video: { room: 'standup' } })
      expect(await health(running.server.url)).toBe('ok')
    })
  })
}
