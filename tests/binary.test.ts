// `bun run build`'s single executable, copied where there is neither Bun nor node_modules: it runs,
// reads a .env in its working directory as `bun run index.ts` does, and stops on SIGTERM. (Every
// other test file runs its routes' tests against the binary too, as the runtime "binary".)
import { afterAll, describe, expect, setDefaultTimeout, test } from 'bun:test'
import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { binaryPath, httpClient, startServer, testCredentials } from './server'
import { verifyAccessToken } from './livekit'

// Real servers, browsers and Redis start here: 30 s a test (bunfig's [test] timeout is not read by Bun 1.4).
setDefaultTimeout(30_000)

const elsewhere = mkdtempSync(join(tmpdir(), 'livekit-binary-'))
afterAll(() => rmSync(elsewhere, { recursive: true, force: true }))

describe('the binary, copied to a directory of its own', () => {
  test('serves with the settings of the .env beside it, with no Bun on the PATH, and stops on SIGTERM', async () => {
    const credentials = testCredentials()
    const copy = join(elsewhere, 'livekit-server')
    copyFileSync(binaryPath, copy)
    writeFileSync(join(elsewhere, '.env'), `LIVEKIT_API_KEY=${credentials.apiKey}\nLIVEKIT_API_SECRET=${credentials.apiSecret}\nLIVEKIT_URL=wss://from-dotenv.example.test\n`)
    const server = await startServer('binary', { PATH: '/nonexistent' }, { command: [copy], cwd: elsewhere })
    let code: number | undefined
    try {
      const http = httpClient(server.url)
      const answer = await http.postJson('/token', { room_name: 'room1' })
      expect(answer.json().server_url).toBe('wss://from-dotenv.example.test')
      expect(verifyAccessToken(answer.json().participant_token, credentials).video).toMatchObject({ room: 'room1' })
      expect((await http.request('/openapi')).status).toBe(200)
      expect((await http.request('/openapi/swagger-ui-bundle.js')).status).toBe(200)
    } finally {
      code = await server.stop()
    }
    expect(code).toBe(0)
    expect(server.logs().at(-1)).toMatchObject({ msg: 'stopped' })
  })
})
