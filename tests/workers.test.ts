// WORKERS=N: one port served by N processes (Bun) or N threads (Deno), sharing state through Redis;
// the first process says when all listen, stops them all on SIGTERM/SIGINT, and (Bun) restarts a
// worker that dies. And a busy port: one line, exit code 1.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from 'bun:test'
import { readdirSync, readFileSync } from 'node:fs'
import { availableParallelism } from 'node:os'
import { assertNoLeaks, denoCommandWith, freePort, runtimes, runUntilExit, runtimeNames, startServer, testCredentials, waitForLog, type Runtime, type ServerProcess, type StartOptions } from './server'
import { signWebhook, webhookEvent } from './livekit'
import { open, rawRequest, type RawAnswer } from './raw-http'
import { startRedis, type RedisServer } from './redis'

// These tests start servers and Redis, on a machine that may be busy: room beyond bun's 5 s default (hooks too).
setDefaultTimeout(20_000)

const credentials = testCredentials()
const livekitEnv = { LIVEKIT_API_KEY: credentials.apiKey, LIVEKIT_API_SECRET: credentials.apiSecret }

/** With WORKERS, Deno needs to read the entry file again (its web workers) and to share the port. */
const denoWorkersCommand = denoCommandWith('--allow-read=.', '--unstable-net')
const workerOptions = (runtime: Runtime): StartOptions => (runtime === 'deno' ? { command: denoWorkersCommand } : {})
const workersCommand = (runtime: Runtime) => (runtime === 'deno' ? denoWorkersCommand : runtimes[runtime])
/** Bun (and its compiled binary) run each worker as a child process; Deno runs them as threads of its one process. */
const workerProcesses = (runtime: Runtime) => (runtime === 'deno' ? 0 : 2)

/** The live (not zombie) child processes of a process, read from /proc/<pid>/stat. */
function childPids(parent: number): number[] {
  return readdirSync('/proc').flatMap((name) => {
    if (!/^\d+$/.test(name)) return []
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8')
      // "pid (comm) state ppid …": comm may hold spaces and parentheses, so read after the last ")".
      const [state, ppid] = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      return Number(ppid) === parent && state !== 'Z' ? [Number(name)] : []
    } catch {
      return [] // exited meanwhile
    }
  })
}

/** Whether a process is still running (not gone, not a zombie). */
function isRunning(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z'
  } catch {
    return false // no such process
  }
}

async function eventually(what: string, condition: () => boolean | Promise<boolean>, timeoutMs: number) {
  const deadline = Date.now() + timeoutMs
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`not within ${timeoutMs} ms: ${what}`)
    await Bun.sleep(50)
  }
}

const exitWithin = (server: ServerProcess, ms: number) => Promise.race([server.exited, Bun.sleep(ms).then(() => 'still running' as const)])

/** A signed webhook on a connection of its own (raw socket), so the kernel may give it to any worker. */
function postWebhookAlone(url: string, event: Record<string, unknown>, body: (string | (() => unknown))[] | undefined = undefined): Promise<RawAnswer> {
  const text = JSON.stringify(event)
  const headers = { 'content-type': 'application/webhook+json', 'content-length': String(Buffer.byteLength(text)), authorization: signWebhook(text, credentials) }
  return rawRequest(new URL('/livekit/webhook', url).href, headers, body ?? [text])
}

function postTokenAlone(url: string): Promise<RawAnswer> {
  const text = JSON.stringify({ roomName: 'room1', participantName: 'alice' })
  return rawRequest(new URL('/token', url).href, { 'content-type': 'application/json', 'content-length': String(text.length) }, [text])
}

/** The worker numbers in the lines that handled these events (one line per event expected). */
const handledBy = (server: ServerProcess, ids: Set<unknown>) => server.logs().filter((entry) => entry.msg === 'webhook' && ids.has(entry.id))

/** Warnings that a worker left Redis for its own memory: with a healthy Redis, there should be none. */
const redisWarnings = (server: ServerProcess) => server.logs().filter((entry) => entry.level === 'warn' && /redis/i.test(String(entry.msg)))

/** Waits until /health, asked on 8 connections in a row (so of either worker), says every time that Redis is in use. */
async function untilWorkersUseRedis(url: string) {
  let inARow = 0
  await eventually('8 answers in a row from /health saying redis is ok', async () => {
    const answer = await rawRequest(new URL('/health', url).href, {}, [], { method: 'GET' })
    inARow = answer.body === '{"status":"ok","redis":"ok"}' ? inARow + 1 : 0
    return inARow >= 8
  }, 10_000)
}

/**
 * Serves WORKERS=2 sharing a Redis of its own, hands the server and its worker processes to `use`,
 * and then kills whatever is left of them and stops Redis, even when `use` failed.
 */
async function withTwoWorkers(runtime: Runtime, use: (server: ServerProcess, children: number[]) => Promise<void>): Promise<void> {
  const redis = await startRedis()
  const port = await freePort()
  const server = await startServer(runtime, { ...livekitEnv, WORKERS: '2', SERVER_PORT: String(port), REDIS_URL: redis.url }, workerOptions(runtime))
  const children = childPids(server.child.pid)
  try {
    await use(server, children)
  } finally {
    server.child.kill('SIGKILL')
    for (const pid of children) if (isRunning(pid)) process.kill(pid, 'SIGKILL')
    await server.exited
    await redis.stop()
  }
}

/** Sends `count` webhooks, each on its own connection, four at a time; returns their ids and answers. */
async function sendWebhooksAlone(url: string, count: number) {
  const events = Array.from({ length: count }, () => webhookEvent('participant_joined', { participant: { sid: 'PA_1', identity: 'alice' } }))
  const answers: RawAnswer[] = []
  for (let i = 0; i < events.length; i += 4) answers.push(...(await Promise.all(events.slice(i, i + 4).map((event) => postWebhookAlone(url, event)))))
  return { ids: new Set(events.map((event) => event.id)), answers }
}

for (const runtime of runtimeNames) {
  describe(`${runtime}: WORKERS=2 with REDIS_URL`, () => {
    let redis: RedisServer
    let server: ServerProcess
    let port: number
    /** Every worker process seen, so that none outlives the tests even when one fails. */
    const seenChildren = new Set<number>()
    const noteChildren = () => childPids(server.child.pid).forEach((pid) => seenChildren.add(pid))

    beforeAll(async () => {
      redis = await startRedis()
      port = await freePort()
      server = await startServer(runtime, { ...livekitEnv, WORKERS: '2', SERVER_PORT: String(port), REDIS_URL: redis.url, TOKEN_RATE_LIMIT: '5' }, workerOptions(runtime))
      noteChildren()
      await untilWorkersUseRedis(server.url)
    })

    afterAll(async () => {
      if (server && server.child.exitCode === null) {
        noteChildren()
        server.child.kill('SIGKILL')
      }
      for (const pid of seenChildren) if (isRunning(pid)) process.kill(pid, 'SIGKILL')
      await server?.exited
      await redis?.stop()
    })

    test('says once, in a line with no worker field, that it listens on the port asked for, with workers: 2', () => {
      expect(server.url).toBe(`http://localhost:${port}`)
      const primaryLines = server.logs().filter((entry) => String(entry.msg).startsWith('listening on') && !('worker' in entry))
      expect(primaryLines).toHaveLength(1)
      expect(primaryLines[0]).toMatchObject({ level: 'info', msg: `listening on http://localhost:${port}`, port, workers: 2 })
    })

    test('both workers serve: 40 webhooks on separate connections are handled by worker 1 and by worker 2, each event once', async () => {
      const { ids, answers } = await sendWebhooksAlone(server.url, 40)
      expect(answers.map((answer) => `${answer.status} ${answer.body}`)).toEqual(Array(40).fill('200 {"received":true}'))
      await eventually('a handled line for each of the 40 events', () => handledBy(server, ids).length >= 40, 5000)
      await Bun.sleep(200)
      const lines = handledBy(server, ids)
      expect(lines).toHaveLength(40)
      expect(new Set(lines.map((entry) => entry.id)).size).toBe(40)
      // Every line a worker writes carries its number.
      expect([...new Set(lines.map((entry) => entry.worker))].sort()).toEqual([1, 2])
    })

    test('the workers share handled ids: an event delivered 10 times on separate connections is handled once', async () => {
      const event = webhookEvent('room_finished')
      const answers: string[] = []
      for (let i = 0; i < 10; i++) answers.push((await postWebhookAlone(server.url, event)).body)
      await Bun.sleep(200)
      // First: had a worker left Redis for its own memory (it would then not share)?
      expect(redisWarnings(server)).toEqual([])
      expect(answers).toEqual(['{"received":true}', ...Array(9).fill('{"received":"duplicate"}')])
      expect(handledBy(server, new Set([event.id]))).toHaveLength(1)
      expect(server.logs().filter((entry) => entry.msg === 'webhook duplicate' && entry.id === event.id)).toHaveLength(9)
    })

    test('the workers share the rate limit: with TOKEN_RATE_LIMIT=5, a caller gets 5 tokens in all over separate connections', async () => {
      const statuses: number[] = []
      for (let i = 0; i < 8; i++) statuses.push((await postTokenAlone(server.url)).status)
      expect(redisWarnings(server)).toEqual([])
      expect(statuses).toEqual([200, 200, 200, 200, 200, 429, 429, 429])
    })

    if (workerProcesses(runtime) > 0) {
      test('a worker killed with SIGKILL is restarted: a warn line saying so, two worker processes again, both serving', async () => {
        const before = childPids(server.child.pid)
        expect(before).toHaveLength(2)
        const linesBefore = server.lines.length
        process.kill(before[0]!, 'SIGKILL')
        await waitForLog(server, (entry) => entry.level === 'warn' && /restart/i.test(String(entry.msg)), 10_000)
        await eventually('two worker processes again, one of them new', () => {
          const now = childPids(server.child.pid)
          return now.length === 2 && !now.includes(before[0]!)
        }, 10_000)
        noteChildren()
        // Requests keep being answered meanwhile, and soon by both workers again.
        const workersSeen = new Set<unknown>()
        await eventually('webhooks handled by both workers after the restart', async () => {
          const { ids, answers } = await sendWebhooksAlone(server.url, 12)
          expect(answers.map((answer) => answer.status)).toEqual(Array(12).fill(200))
          await Bun.sleep(100)
          for (const entry of handledBy(server, ids)) workersSeen.add(entry.worker)
          return workersSeen.size === 2
        }, 10_000)
        expect([...workersSeen].sort()).toEqual([1, 2])
        expect(server.lines.slice(linesBefore).filter((line) => /"level":"error"/.test(line))).toEqual([])
      }, 30_000)
    }

    test('SIGTERM: the webhook in flight is answered, every worker stops, the first process exits 0 and leaves no process behind', async () => {
      noteChildren()
      const children = childPids(server.child.pid)
      expect(children).toHaveLength(workerProcesses(runtime))
      const event = webhookEvent('room_finished')
      const text = JSON.stringify(event)
      const half = Math.floor(text.length / 2)
      const answer = await postWebhookAlone(server.url, event, [
        text.slice(0, half),
        async () => {
          await Bun.sleep(100) // the worker has started on the request
          server.child.kill('SIGTERM')
          await Bun.sleep(300)
        },
        text.slice(half),
      ])
      expect(`${answer.status} ${answer.body}`).toBe('200 {"received":true}')
      expect(await exitWithin(server, 10_000)).toBe(0)
      await eventually('no worker process left', () => children.every((pid) => !isRunning(pid)), 2000)
      const connection = await open(new URL(server.url)).catch((error: Error) => error)
      if (!(connection instanceof Error)) connection.destroy()
      expect(connection).toBeInstanceOf(Error) // no one listens on the port any more
      expect(handledBy(server, new Set([event.id]))).toHaveLength(1)
      expect(server.logs().filter((entry) => entry.level === 'error')).toEqual([])
      expect(server.lines.join('\n')).not.toContain(redis.password)
      // Stopped by a signal, not by server.stop(), so audit here what stop() would have.
      assertNoLeaks(`${runtime} server log`, server.lines.join('\n'), { tokensAllowed: false })
    }, 20_000)
  })

  describe(`${runtime}: WORKERS=2 on SIGINT`, () => {
    test('every worker stops, the first process exits 0 and leaves no process behind', () =>
      withTwoWorkers(runtime, async (server, children) => {
        expect(children).toHaveLength(workerProcesses(runtime))
        expect((await postTokenAlone(server.url)).status).toBe(200)
        server.child.kill('SIGINT')
        expect(await exitWithin(server, 10_000)).toBe(0)
        await eventually('no worker process left', () => children.every((pid) => !isRunning(pid)), 2000)
        expect(await open(new URL(server.url)).then((socket) => (socket.destroy(), 'still listening')).catch(() => 'closed')).toBe('closed')
        assertNoLeaks(`${runtime} server log`, server.lines.join('\n'), { tokensAllowed: false })
      }), 20_000)
  })

  if (workerProcesses(runtime) > 0) {
    describe(`${runtime}: WORKERS=2 with a worker that does not stop`, () => {
      test('SIGTERM: a frozen worker is killed 11 s later, with a warn line, and the first process exits 1 leaving no process behind', () =>
        withTwoWorkers(runtime, async (server, children) => {
          expect(children).toHaveLength(2)
          process.kill(children[0]!, 'SIGSTOP') // it will not see the SIGTERM passed on to it
          const stopped = Date.now()
          server.child.kill('SIGTERM')
          expect(await exitWithin(server, 15_000)).toBe(1)
          expect(Date.now() - stopped).toBeGreaterThanOrEqual(10_500)
          expect(server.logs().filter((entry) => entry.level === 'warn' && !('worker' in entry)).map((entry) => entry.msg)).toEqual(['workers still running after 11 s, stopping them now'])
          await eventually('no worker process left', () => children.every((pid) => !isRunning(pid)), 2000)
        }), 30_000)
    })
  }

  describe(`${runtime}: WORKERS configuration errors`, () => {
    const expectOneLine = (output: string, ...fragments: string[]) => {
      const lines = output.split('\n').filter((line) => line.trim())
      expect(lines).toHaveLength(1)
      expect(lines[0]).toStartWith('Configuration error: ')
      for (const fragment of fragments) expect(lines[0]).toContain(fragment)
    }

    test('WORKERS=2 without REDIS_URL stops the server with one line naming REDIS_URL, exit code 1', async () => {
      const { code, output } = await runUntilExit(runtime, { ...livekitEnv, WORKERS: '2', SERVER_PORT: String(await freePort()) }, workerOptions(runtime))
      expect(code).toBe(1)
      expectOneLine(output, 'REDIS_URL')
    })

    test('WORKERS=2 with SERVER_PORT=0 stops the server with one line naming SERVER_PORT, exit code 1', async () => {
      const { code, output } = await runUntilExit(runtime, { ...livekitEnv, WORKERS: '2', SERVER_PORT: '0', REDIS_URL: 'redis://127.0.0.1:6379' }, workerOptions(runtime))
      expect(code).toBe(1)
      expectOneLine(output, 'SERVER_PORT')
    })

    test('WORKERS that is neither a number nor "auto" stops the server with one line naming WORKERS, exit code 1', async () => {
      const { code, output } = await runUntilExit(runtime, { ...livekitEnv, WORKERS: 'many', SERVER_PORT: String(await freePort()) }, workerOptions(runtime))
      expect(code).toBe(1)
      expectOneLine(output, 'WORKERS')
    })
  })

  describe(`${runtime}: a port already in use`, () => {
    test('a second server on the port of a running one exits with code 1 and one line saying the port is in use', async () => {
      const port = await freePort()
      const first = await startServer(runtime, { ...livekitEnv, SERVER_PORT: String(port) })
      try {
        const { code, output } = await runUntilExit(runtime, { ...livekitEnv, SERVER_PORT: String(port) })
        const lines = output.split('\n').filter((line) => line.trim())
        expect({ code, lines }).toEqual({ code: 1, lines: [expect.stringContaining(`port ${port} is already in use`)] })
        // The first one still serves.
        expect((await fetch(new URL('/health', first.url))).status).toBe(200)
      } finally {
        expect(await first.stop()).toBe(0)
      }
    })
  })
}

/**
 * Runs the command until it exits or `ms` pass (then SIGTERM, which the first process forwards to
 * its workers); returns the exit code, or 'still running', and what it printed.
 */
async function runFor(command: readonly string[], env: Record<string, string>, ms: number) {
  const child = Bun.spawn([...command], {
    cwd: new URL('..', import.meta.url).pathname,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', NO_COLOR: '1', ...env },
    stdout: 'pipe',
    stderr: 'pipe',
    stdin: 'ignore',
  })
  const output = Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text()]).then((texts) => texts.join('\n'))
  const code = await Promise.race([child.exited, Bun.sleep(ms).then(() => 'still running' as const)])
  if (code === 'still running') {
    child.kill('SIGTERM')
    if ((await Promise.race([child.exited, Bun.sleep(5000).then(() => 'hung')])) === 'hung') child.kill('SIGKILL')
  }
  return { code, output: await output }
}

for (const runtime of runtimeNames) {
  describe(`${runtime}: WORKERS=2 on a port already in use`, () => {
    test('exits with code 1 saying the port is in use, rather than restarting its workers for ever', async () => {
      const redis = await startRedis()
      const port = await freePort()
      const first = await startServer(runtime, { ...livekitEnv, SERVER_PORT: String(port) })
      try {
        const { code, output } = await runFor(workersCommand(runtime), { ...livekitEnv, WORKERS: '2', SERVER_PORT: String(port), REDIS_URL: redis.url }, 10_000)
        expect({ code, inUse: output.includes(`port ${port} is already in use`) }).toEqual({ code: 1, inUse: true })
      } finally {
        expect(await first.stop()).toBe(0)
        await redis.stop()
      }
    }, 30_000)
  })
}

for (const runtime of runtimeNames) {
  describe(`${runtime}: WORKERS=2 on the port of another WORKERS=2 server`, () => {
    test('the second exits with code 1 and one line saying the port is in use, and the first still serves', () =>
      withTwoWorkers(runtime, async (first) => {
        const port = new URL(first.url).port
        const redis = await startRedis()
        try {
          const { code, output } = await runFor(workersCommand(runtime), { ...livekitEnv, WORKERS: '2', SERVER_PORT: port, REDIS_URL: redis.url }, 10_000)
          const lines = output.split('\n').filter((line) => line.trim())
          expect({ code, lines }).toEqual({ code: 1, lines: [expect.stringContaining(`port ${port} is already in use`)] })
          // Every request still reaches the first server's workers.
          await untilWorkersUseRedis(first.url)
        } finally {
          await redis.stop()
        }
      }),
    30_000)
  })
}

// Bun's workers are processes the test can kill; Deno's are threads of one process.
for (const runtime of runtimeNames.filter((runtime) => workerProcesses(runtime) > 0)) {
  describe(`${runtime}: WORKERS=2 with a worker that keeps crashing`, () => {
    test('restarts it 1 s, then 2 s, then 4 s later, and at the fourth crash in a minute stops every worker with one error line and exit code 1', () =>
      withTwoWorkers(runtime, async (server) => {
        const restartLines = () => server.logs().filter((entry) => entry.level === 'warn' && /restarting/.test(String(entry.msg)))
        // The same worker each time: the one started in place of the last one killed.
        let [pid] = childPids(server.child.pid)
        for (const [crash, delaySeconds] of [1, 2, 4].entries()) {
          const others = childPids(server.child.pid).filter((child) => child !== pid)
          process.kill(pid!, 'SIGKILL')
          const killedAt = Date.now()
          await eventually('a restart line', () => restartLines().length === crash + 1, 5000)
          expect(String(restartLines().at(-1)!.msg)).toEndWith(`restarting it in ${delaySeconds} s`)
          await eventually('two worker processes again', () => childPids(server.child.pid).length === 2 && !childPids(server.child.pid).includes(pid!), 10_000)
          // Not before its time (later is the machine's doing).
          expect(Date.now() - killedAt).toBeGreaterThanOrEqual(delaySeconds * 1000 - 50)
          ;[pid] = childPids(server.child.pid).filter((child) => !others.includes(child))
          // Serving, as a worker must be to count as crashing (one that never listened stops the server).
          const number = Number(/^worker (\d+)/.exec(String(restartLines().at(-1)!.msg))![1])
          await eventually('the restarted worker handles a webhook', async () => {
            const { ids } = await sendWebhooksAlone(server.url, 4)
            await Bun.sleep(100)
            return handledBy(server, ids).some((entry) => entry.worker === number)
          }, 10_000)
        }
        const children = childPids(server.child.pid)
        process.kill(pid!, 'SIGKILL')
        expect(await exitWithin(server, 15_000)).toBe(1)
        const errors = server.logs().filter((entry) => entry.level === 'error')
        expect(errors.map((entry) => entry.msg)).toEqual([expect.stringMatching(/^workers crashed 4 times within a minute .*: stopping$/)])
        expect(children.filter(isRunning)).toEqual([])
      }),
    60_000)
  })
}

describe('bun: WORKERS=auto', () => {
  test('starts one worker per core, as its listening line says', async () => {
    const redis = await startRedis()
    const server = await startServer('bun', { ...livekitEnv, WORKERS: 'auto', SERVER_PORT: String(await freePort()), REDIS_URL: redis.url })
    const children = childPids(server.child.pid)
    try {
      const [line] = server.logs().filter((entry) => String(entry.msg).startsWith('listening on') && !('worker' in entry))
      expect(line?.workers).toBe(availableParallelism())
      expect(children).toHaveLength(availableParallelism() > 1 ? availableParallelism() : 0)
    } finally {
      expect(await server.stop()).toBe(0)
      for (const pid of children) if (isRunning(pid)) process.kill(pid, 'SIGKILL')
      await redis.stop()
    }
  }, 20_000)
})
