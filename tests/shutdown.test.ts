// SIGTERM and SIGINT: the server takes no new requests, finishes the ones in flight, then exits with 0;
// a request still in flight 10 s after the signal does not hold it: it exits anyway, with 1.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from 'bun:test'
import { assertNoLeaks, runtimeNames, startServer, testCredentials, type ServerProcess } from './server'
import { signWebhook, webhookEvent } from './livekit'
import { open, rawRequest, type RawAnswer } from './raw-http'
import { audience, idToken, issuer, makeKey, startIdentityProvider } from './identity-provider'

// Real servers, browsers and Redis start here: 30 s a test (bunfig's [test] timeout is not read by Bun 1.4).
setDefaultTimeout(30_000)

const credentials = testCredentials()
const signals = ['SIGTERM', 'SIGINT'] as const

/** The exit code, or 'still running' when the process has not exited within `ms`. */
const exitWithin = (server: ServerProcess, ms: number) =>
  Promise.race([server.exited, Bun.sleep(ms).then(() => 'still running' as const)])

const settle = <T>(promise: Promise<T>) => promise.catch((error: Error) => error)

for (const runtime of runtimeNames) {
  for (const signal of signals) {
    describe(`${runtime}: on ${signal}`, () => {
      let server: ServerProcess
      const event = webhookEvent('room_finished')
      let inFlight: RawAnswer | Error
      let newRequest: RawAnswer | Error
      let exitCode: number | 'still running'
      let linesBeforeSignal: number

      beforeAll(async () => {
        server = await startServer(runtime, { LIVEKIT_API_KEY: credentials.apiKey, LIVEKIT_API_SECRET: credentials.apiSecret })
        const body = JSON.stringify(event)
        const half = Math.floor(body.length / 2)
        const headers = {
          'content-type': 'application/webhook+json',
          'content-length': String(body.length),
          authorization: signWebhook(body, credentials),
        }
        inFlight = await settle(
          rawRequest(new URL('/livekit/webhook', server.url).href, headers, [
            body.slice(0, half),
            async () => {
              // Give the server time to start on the request: bytes it has not read yet are not in flight.
              await Bun.sleep(100)
              linesBeforeSignal = server.lines.length
              server.child.kill(signal)
              await Bun.sleep(50)
              newRequest = await settle(rawRequest(new URL('/health', server.url).href, {}, [], { method: 'GET', timeoutMs: 1000 }))
              await Bun.sleep(250)
            },
            body.slice(half),
          ]),
        )
        exitCode = await exitWithin(server, 5000)
      })

      afterAll(() => {
        if (exitCode !== 0) server?.child.kill('SIGKILL')
      })

      test('finishes the webhook it was receiving with 200, and handles the event', () => {
        expect(inFlight).not.toBeInstanceOf(Error)
        expect((inFlight as RawAnswer).status).toBe(200)
        expect(server.logs().filter((entry) => entry.id === event.id && entry.msg === 'webhook')).toHaveLength(1)
      })

      test('takes no new request meanwhile: the connection is refused, or answered 503', () => {
        const outcome = newRequest instanceof Error ? newRequest.message : newRequest.status
        expect([expect.stringContaining('ECONNREFUSED'), 503]).toContainEqual(outcome)
      })

      test('exits with code 0 within 5 s', () => {
        expect(exitCode).toBe(0)
      })

      test('accepts no connection once it has exited', async () => {
        const connection = await settle(open(new URL(server.url)))
        if (!(connection instanceof Error)) connection.destroy()
        expect(connection).toBeInstanceOf(Error)
      })

      test('logs the shutdown as JSON lines, with no error, and its whole log shows no secret, stack trace or token', () => {
        const lines = server.lines.slice(linesBeforeSignal).filter((line) => line.trim())
        const entries = lines.map((line) => JSON.parse(line))
        expect(entries).toContainEqual(expect.objectContaining({ msg: expect.stringContaining(signal) }))
        expect(entries.filter((entry) => entry.level === 'error')).toEqual([])
        expect(lines.join('\n')).not.toMatch(/\bat .+:\d+:\d+|\n\s+at /)
        // Stopped by a signal, not by server.stop(), so audit here what stop() would have.
        assertNoLeaks(`${runtime} server log`, server.lines.join('\n'), { tokensAllowed: false })
      })
    })
  }

  describe(`${runtime}: stopping right after start`, () => {
    test('exits with code 0 on a signal sent as soon as it says it is listening', async () => {
      // Whoever waits for the "listening" line (a supervisor, a test) may stop the server at once.
      // An unhandled signal kills it only when it wins a race, so try a few times.
      const codes: (number | 'still running')[] = []
      for (const signal of [...signals, ...signals, ...signals]) {
        const server = await startServer(runtime, { LIVEKIT_API_KEY: credentials.apiKey, LIVEKIT_API_SECRET: credentials.apiSecret })
        server.child.kill(signal)
        codes.push(await exitWithin(server, 5000))
        server.child.kill('SIGKILL')
        await server.exited
        assertNoLeaks(`${runtime} server log`, server.lines.join('\n'), { tokensAllowed: false })
      }
      expect(codes).toEqual([0, 0, 0, 0, 0, 0])
    }, 30_000) // six starts in a row; bun test's default is 5 s (bunfig's timeout is not read)
  })

  describe(`${runtime}: a request still in flight 10 s after SIGTERM`, () => {
    // A token request held first by a slow identity provider (2 s, under its 3 s limit), then by a body
    // that never arrives (given up after 10 to 11 s): in flight until 12 s or more after the signal.
    const provider = startIdentityProvider()
    let server: ServerProcess
    let secondsToExit: number | 'still running'
    let exitCode: number | 'still running'
    let answer: RawAnswer | Error

    beforeAll(async () => {
      const key = await makeKey('k1', 'ES256')
      provider.state.published = [key]
      provider.state.delayMs = 2000
      server = await startServer(runtime, {
        LIVEKIT_API_KEY: credentials.apiKey,
        LIVEKIT_API_SECRET: credentials.apiSecret,
        AUTH_JWKS_URL: provider.jwksUrl,
        AUTH_ISSUER: issuer,
        AUTH_AUDIENCE: audience,
      })
      const authorization = `Bearer ${await idToken(key)}`
      const headers = { 'content-type': 'application/json', 'content-length': '100', authorization }
      let signalledAt = 0
      answer = await settle(
        rawRequest(new URL('/token', server.url).href, headers, [
          '{"roomName":"r',
          async () => {
            // The server is waiting for the key set: the request is in flight.
            while (provider.state.fetches === 0) await Bun.sleep(10)
            signalledAt = performance.now()
            server.child.kill('SIGTERM')
          },
        ], { timeoutMs: 20_000 }),
      )
      exitCode = await exitWithin(server, Math.max(0, 20_000 - (performance.now() - signalledAt)))
      secondsToExit = exitCode === 'still running' ? exitCode : (performance.now() - signalledAt) / 1000
    }, 30_000)

    afterAll(() => {
      if (exitCode === 'still running') server?.child.kill('SIGKILL')
      provider.server.stop(true)
    })

    test('exits with code 1, no sooner than 10 s after the signal and before the request ends', () => {
      expect(exitCode).toBe(1)
      expect(secondsToExit).toBeGreaterThanOrEqual(10)
      expect(secondsToExit).toBeLessThan(12)
    })

    test('gives the request no answer: its connection is closed as the process exits', () => {
      expect(answer).toBeInstanceOf(Error)
      expect((answer as Error).message).toMatch(/connection closed without a complete answer/)
    })

    test('says why in one warn line, after the line saying it received the signal', () => {
      const entries = server.logs().map(({ level, msg }) => ({ level, msg }))
      const signalled = entries.findIndex((entry) => entry.msg === 'SIGTERM received, finishing requests in flight')
      expect(signalled).toBeGreaterThanOrEqual(0)
      const deadline = { level: 'warn', msg: 'requests still in flight after 10 s, exiting anyway' }
      expect(entries.slice(signalled + 1)).toEqual([deadline])
      assertNoLeaks(`${runtime} server log`, server.lines.join('\n'), { tokensAllowed: false })
    })
  })
}
