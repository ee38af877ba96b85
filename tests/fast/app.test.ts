// The rest of the HTTP surface in this process: /health, CORS, unknown routes, the API description.
import { describe, expect, test } from 'bun:test'
import { testCredentials } from '../server'
import { appWith } from './app'

const credentials = testCredentials()
const livekitEnv = { LIVEKIT_API_KEY: credentials.apiKey, LIVEKIT_API_SECRET: credentials.apiSecret }

describe('GET /health', () => {
  test('answers {"status": "ok"} without Redis', async () => {
    const answer = await appWith(livekitEnv).request('/health')
    expect([answer.status, answer.json()]).toEqual([200, { status: 'ok' }])
    expect(answer.headers.get('content-type')).toStartWith('application/json')
  })
})

describe('CORS', () => {
  const app = appWith(livekitEnv)

  test('answers a preflight with 204, any origin, the methods served and the headers asked for', async () => {
    const answer = await app.request('/token', {
      method: 'OPTIONS',
      headers: {
        origin: 'http://localhost:5080',
        'access-control-request-method': 'POST',
        'access-control-request-headers': 'content-type,authorization',
      },
    })
    expect(answer.status).toBe(204)
    expect(answer.text).toBe('')
    expect(Object.fromEntries(answer.headers)).toMatchObject({
      'access-control-allow-origin': '*',
      'access-control-allow-methods': 'GET, POST',
      'access-control-allow-headers': 'content-type,authorization',
      'access-control-max-age': '600',
    })
    expect(answer.headers.get('access-control-allow-credentials')).toBeNull()
  })

  test('allows no header a preflight did not ask for', async () => {
    const answer = await app.request('/livekit/webhook', {
      method: 'OPTIONS',
      headers: { origin: 'http://a.test', 'access-control-request-method': 'POST' },
    })
    expect(answer.status).toBe(204)
    expect(answer.headers.get('access-control-allow-headers')).toBeNull()
  })

  test('lets any origin read answers and errors, without credentials', async () => {
    for (const [path, init] of [
      ['/health', {}],
      ['/token', { method: 'POST', body: '{}' }],
      ['/nowhere', {}],
    ] as const) {
      const answer = await app.request(path, { ...init, headers: { origin: 'http://localhost:5080' } })
      expect([
        path,
        answer.headers.get('access-control-allow-origin'),
        answer.headers.get('access-control-allow-credentials'),
      ]).toEqual([path, '*', null])
    }
  })
})

describe('unknown routes', () => {
  const app = appWith(livekitEnv)

  test('answers 404 with an errorMessage naming the method and path', async () => {
    for (const [method, path] of [
      ['GET', '/nope'],
      ['GET', '/token'],
      ['POST', '/health'],
      ['GET', '/livekit/webhook'],
      ['POST', '/openapi.json'],
    ]) {
      const answer = await app.request(path!, { method })
      expect([answer.status, answer.json()]).toEqual([404, { errorMessage: `No route for ${method} ${path}` }])
    }
  })
})

describe('GET /openapi.json', () => {
  test('is served by default, describing both routes and their error answers', async () => {
    const answer = await appWith(livekitEnv).request('/openapi.json')
    expect(answer.status).toBe(200)
    const document = answer.json()
    expect(Object.keys(document.paths)).toEqual(expect.arrayContaining(['/token', '/livekit/webhook', '/health']))
    expect(Object.keys(document.paths['/token'].post.responses)).toEqual([
      '200',
      '400',
      '401',
      '403',
      '408',
      '413',
      '429',
      '503',
    ])
    expect(Object.keys(document.paths['/livekit/webhook'].post.responses)).toEqual([
      '200',
      '400',
      '401',
      '408',
      '413',
      '500',
      '503',
    ])
  })

  test('is not served with OPENAPI=0', async () => {
    expect((await appWith({ ...livekitEnv, OPENAPI: '0' }).request('/openapi.json')).status).toBe(404)
  })
})
