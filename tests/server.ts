// Starts index.ts the way a user does, as a child process, and keeps everything it prints.
import { afterAll, beforeAll } from 'bun:test'
import type { Subprocess } from 'bun'
import { existsSync } from 'node:fs'
import { signJwt, signWebhook, webhookEvent, type Credentials } from './livekit'

const root = new URL('..', import.meta.url).pathname
export const binaryPath = `${root}dist/livekit-server`

/** Deno as the `deno` devDependency installs it (its platform package), else whichever is on the PATH. */
export const denoPath = (() => {
  const platform = `${process.platform}-${process.arch}${process.platform === 'linux' ? '-glibc' : ''}`
  const installed = `${root}node_modules/@deno/${platform}/deno`
  return existsSync(installed) ? installed : 'deno'
})()

/** The commands the README gives, per runtime. */
export const runtimes = {
  bun: ['bun', 'run', 'index.ts'],
  deno: [denoPath, 'run', '--allow-net', '--allow-env', 'index.ts'],
  /** `bun run build`'s single executable; tests/build-binary.ts (preloaded) builds it first. */
  binary: [binaryPath],
} as const

/** The README's Deno command with more permissions or flags, e.g. `--allow-read` for a secret file. */
export const denoCommandWith = (...flags: string[]) => [...runtimes.deno.slice(0, -1), ...flags, 'index.ts']

export type Runtime = keyof typeof runtimes
export const runtimeNames = Object.keys(runtimes) as Runtime[]
/** The runtimes that run a TypeScript entry file, as fixtures serving createApp with other handlers need. */
export const sourceRuntimes: Runtime[] = ['bun', 'deno']

/** The README's command for the runtime, on another entry file (relative to the project root) if given. */
function commandFor(runtime: Runtime, { entry, fileLimit, command: base = runtimes[runtime] }: StartOptions = {}): string[] {
  if (entry && runtime === 'binary') throw new Error(`the binary runs only its own code, not ${entry}: use sourceRuntimes`)
  const command = entry ? [...base.slice(0, -1), entry] : [...base]
  // exec keeps the server's pid the shell's, so signals and /proc/<pid> reach the server itself.
  return fileLimit ? ['bash', '-c', `ulimit -n ${fileLimit} && exec "$@"`, 'bash', ...command] : command
}

export interface StartOptions {
  /** An entry file to run instead of index.ts, e.g. a fixture that serves createApp with other handlers. */
  entry?: string
  /** The most file descriptors the server may hold open (`ulimit -n`). */
  fileLimit?: number
  /** The whole command, ending with the entry file, instead of the README's for the runtime (e.g. Deno's with WORKERS). */
  command?: readonly string[]
  /** The working directory (by default the project's root). */
  cwd?: string
  /** For a process that prints no `listening on` line (another server, measured beside this one): its URL; it has started once it answers HTTP there. */
  listensAt?: string
  /** What the errors call the process (by default "<runtime> server"). */
  name?: string
}

export interface ServerProcess {
  url: string
  child: Subprocess
  /** Every line the server printed so far, stdout and stderr. */
  lines: string[]
  /** The lines that are JSON log entries, parsed. */
  logs(): Record<string, unknown>[]
  exited: Promise<number>
  stop(signal?: NodeJS.Signals): Promise<number>
}

function spawnServer(runtime: Runtime, env: Record<string, string>, options: StartOptions = {}) {
  const child = Bun.spawn(commandFor(runtime, options), {
    cwd: options.cwd ?? root,
    // A clean environment: only what the test sets, plus what the runtimes need to run.
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/tmp', NO_COLOR: '1', ...env },
    stdout: 'pipe',
    stderr: 'pipe',
    stdin: 'ignore',
  })
  const lines: string[] = []
  const listeners = new Set<(line: string) => void>()
  // Drain both pipes for the child's whole life, so a chatty server never blocks on a full pipe.
  const drain = async (stream: ReadableStream<Uint8Array>) => {
    const decoder = new TextDecoder()
    let pending = ''
    for await (const chunk of stream) {
      pending += decoder.decode(chunk, { stream: true })
      const parts = pending.split('\n')
      pending = parts.pop()!
      for (const line of parts) {
        lines.push(line)
        for (const listener of listeners) listener(line)
      }
    }
    if (pending) lines.push(pending)
  }
  const drained = Promise.all([drain(child.stdout), drain(child.stderr)])
  const exited = child.exited.then(async (code) => (await drained, code))
  return { child, lines, listeners, exited }
}

const parseLogs = (lines: string[]) =>
  lines.flatMap((line) => {
    try {
      const entry = JSON.parse(line)
      return typeof entry === 'object' && entry !== null ? [entry as Record<string, unknown>] : []
    } catch {
      return []
    }
  })

/** Starts the server on a free port (SERVER_PORT=0) and resolves once it says where it listens. */
export async function startServer(runtime: Runtime, env: Record<string, string> = {}, options: StartOptions = {}): Promise<ServerProcess> {
  const { child, lines, listeners, exited } = spawnServer(runtime, { SERVER_PORT: '0', ...env }, options)
  const name = options.name ?? `${runtime} server`
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL') // nothing could stop it otherwise
      reject(new Error(`${name} did not start:\n${lines.join('\n')}`))
    }, 20_000)
    const { listensAt } = options
    if (listensAt) firstAnswer(listensAt, exited).then((answered) => answered && (clearTimeout(timer), resolve(listensAt)))
    const onLine = (line: string) => {
      const match = /listening on (http:\/\/\S+?)"/.exec(line)
      // With WORKERS, the primary's line (no "worker" field) says the server listens, not a worker's.
      if (match && !/"worker":/.test(line)) {
        clearTimeout(timer)
        resolve(match[1]!)
      }
    }
    lines.forEach(onLine)
    listeners.add(onLine)
    exited.then((code) => reject(new Error(`${name} exited with ${code}:\n${lines.join('\n')}`)))
  })
  return {
    url,
    child,
    lines,
    logs: () => parseLogs(lines),
    exited,
    stop: async (signal = 'SIGTERM') => {
      child.kill(signal)
      const code = await exited
      assertNoLeaks(`${name} log`, lines.join('\n'), { tokensAllowed: false })
      return code
    },
  }
}

/** Polls the URL until anything answers HTTP there (any status): true, or false once the process has exited. */
async function firstAnswer(url: string, exited: Promise<number>): Promise<boolean> {
  let gone = false
  exited.then(() => (gone = true))
  for (; !gone; await Bun.sleep(5)) {
    if (await fetch(url).then((response) => response.arrayBuffer()).then(() => true, () => false)) return true
  }
  return false
}

/** Runs the server expecting it to exit on its own (a configuration error); returns code and output. */
export async function runUntilExit(runtime: Runtime, env: Record<string, string>, options: StartOptions = {}): Promise<{ code: number; output: string }> {
  const { child, lines, exited } = spawnServer(runtime, env, options)
  const timer = setTimeout(() => child.kill('SIGKILL'), 20_000)
  const code = await exited
  clearTimeout(timer)
  assertNoLeaks(`${runtime} server log`, lines.join('\n'), { tokensAllowed: false })
  return { code, output: lines.join('\n') }
}

/** A TCP port free on loopback right now: bound to port 0, then closed. */
export async function freePort(): Promise<number> {
  const { createServer } = await import('node:net')
  return new Promise((resolve, reject) => {
    const listener = createServer()
    listener.once('error', reject)
    listener.listen(0, '127.0.0.1', () => {
      const { port } = listener.address() as { port: number }
      listener.close(() => resolve(port))
    })
  })
}

/** Waits until the server has logged a line matching the predicate (logs are written asynchronously). */
export async function waitForLog(server: ServerProcess, predicate: (entry: Record<string, unknown>) => boolean, timeoutMs = 5000) {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    const found = server.logs().filter(predicate)
    if (found.length > 0) return found
    await Bun.sleep(20)
  }
  throw new Error(`no log line matched within ${timeoutMs} ms:\n${server.lines.join('\n')}`)
}

/**
 * Waits until the server has written every info line that what it did before would write: it posts
 * a webhook that logs an info line of its own and waits for that line, since a process writes each
 * stream's lines in order (info lines to stdout).
 */
export async function infoLinesCaughtUp(server: ServerProcess, credentials: Credentials): Promise<void> {
  const body = JSON.stringify(webhookEvent('room_started', { room: { sid: 'RM_marker', name: 'marker-room' } }))
  const { id } = JSON.parse(body)
  const headers = { 'content-type': 'application/webhook+json', authorization: signWebhook(body, credentials) }
  const response = await fetch(new URL('/livekit/webhook', server.url), { method: 'POST', headers, body })
  if (response.status !== 200) throw new Error(`the marker webhook was answered ${response.status}: ${await response.text()}`)
  await waitForLog(server, (entry) => entry.msg === 'webhook' && entry.id === id)
}

// What the warning marker's refusal logs: a JWT signed with HS512, refused before anything else is looked at.
const markerReason = 'JWT must be signed with HS256 and nothing else'

/**
 * Waits until the server has written every warning and error line that what it did before would
 * write: it posts a webhook it refuses with a warning of its own (warnings and errors go to stderr,
 * in order) and waits for that line.
 */
export async function warningLinesCaughtUp(server: ServerProcess): Promise<void> {
  const markers = () => server.logs().filter((entry) => entry.msg === 'webhook refused' && entry.reason === markerReason).length
  const before = markers()
  const authorization = signJwt({ iss: 'marker', exp: Math.floor(Date.now() / 1000) + 60 }, 'marker', { alg: 'HS512', typ: 'JWT' })
  const response = await fetch(new URL('/livekit/webhook', server.url), { method: 'POST', headers: { authorization }, body: '{}' })
  await response.text()
  if (response.status !== 401) throw new Error(`the marker webhook was answered ${response.status}`)
  await waitForLog(server, () => markers() > before)
}

/** Test credentials: never the dev defaults, and a secret long and random enough to search for. */
export function testCredentials() {
  return { apiKey: 'test-api-key', apiSecret: `test-secret-${crypto.randomUUID()}` }
}

export interface Answer {
  status: number
  headers: Headers
  text: string
  json(): any
}

/** fetch() against one server, keeping every answer (status, headers, body) for later checks. */
export function httpClient(baseUrl: string) {
  const transcript: string[] = []
  async function request(path: string, init: RequestInit = {}): Promise<Answer> {
    const response = await fetch(new URL(path, baseUrl), init)
    const text = await response.text()
    assertNoLeaks(`answer to ${init.method ?? 'GET'} ${path}`, text, { tokensAllowed: true })
    transcript.push(`${response.status} ${JSON.stringify([...response.headers])} ${text}`)
    return { status: response.status, headers: response.headers, text, json: () => JSON.parse(text) }
  }
  const postJson = (path: string, body: unknown, headers: Record<string, string> = {}) =>
    request(path, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) })
  return { request, postJson, transcript }
}

/**
 * Runs `use` with globalThis.fetch wrapped so that every answer fetched meanwhile (headers and body)
 * is audited as httpClient's are: for client libraries that fetch by themselves (livekit-client).
 */
export async function withAuditedFetch<T>(use: () => Promise<T>): Promise<T> {
  const original = globalThis.fetch
  const leaks: unknown[] = []
  const audited = async (input: Parameters<typeof fetch>[0], init?: Parameters<typeof fetch>[1]) => {
    const response = await original(input, init)
    const text = await response.clone().text()
    try {
      assertNoLeaks(`answer to ${init?.method ?? 'GET'} ${String(input)}`, `${JSON.stringify([...response.headers])}\n${text}`, { tokensAllowed: true })
    } catch (leak) {
      leaks.push(leak) // thrown below: the client library might swallow or rewrap it
    }
    return response
  }
  globalThis.fetch = Object.assign(audited, original)
  let outcome: { value: T } | { error: unknown }
  try {
    outcome = { value: await use() }
  } catch (error) {
    outcome = { error }
  } finally {
    globalThis.fetch = original
  }
  if (leaks.length > 0) throw leaks[0]
  if ('error' in outcome) throw outcome.error
  return outcome.value
}

// Every test's credentials come from testCredentials(), so one pattern finds any test's secret.
const leakPatterns: [string, RegExp][] = [
  ['an API secret', /test-secret-[0-9a-f-]{36}/],
  // A stack frame on a line of its own, or escaped inside a JSON log line ("\\n    at f (file:1:2)").
  ['a stack trace', /(^|\\n)\s*at \S.*?:\d+:\d+/m],
]
const tokenPattern: [string, RegExp] = ['a token', /eyJ[\w-]{10,}\.[\w-]+\.[\w-]+/]

/**
 * Fails when a log or an answer shows what it must never show: the API secret, a stack trace,
 * or (in a log) a token. Called on every answer httpClient gets and every log a server leaves.
 */
export function assertNoLeaks(where: string, text: string, { tokensAllowed }: { tokensAllowed: boolean }): void {
  for (const [what, pattern] of tokensAllowed ? leakPatterns : [...leakPatterns, tokenPattern]) {
    const found = pattern.exec(text)
    if (found) throw new Error(`${where} shows ${what}: ${found[0].slice(0, 60)}…`)
  }
}

/**
 * Starts a server (the README's command for the runtime) before the tests of the enclosing
 * describe block and stops it after them; the tests read `running.server` and `running.http`.
 */
export function serveDuringTests(runtime: Runtime, env: Record<string, string> | (() => Record<string, string>) = {}, options: StartOptions = {}) {
  const running = {} as { server: ServerProcess; http: ReturnType<typeof httpClient> }
  beforeAll(async () => {
    running.server = await startServer(runtime, typeof env === 'function' ? env() : env, options)
    running.http = httpClient(running.server.url)
  })
  afterAll(async () => {
    await running.server?.stop()
  })
  return running
}
