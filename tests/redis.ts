// A real redis-server (Debian's) for the tests of REDIS_URL: on a free loopback port, with a random
// password, no persistence (unless durable); it can be killed, frozen, thawed and restarted on the same port.
import { connect } from 'node:net'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Subprocess } from 'bun'
import { freePort } from './server'

export interface RedisServer {
  /** redis://:PASSWORD@127.0.0.1:PORT */
  url: string
  password: string
  port: number
  /** The pid of the redis-server running now (a restart changes it). */
  readonly pid: number
  /** SIGKILL: the server and every connection to it are gone at once. */
  kill(): Promise<void>
  /** SIGSTOP: connections stay open, nothing answers. */
  freeze(): void
  /** SIGCONT after freeze(). */
  thaw(): void
  /** Starts it again on the same port with the same password (killing it first if it still runs); empty unless durable. */
  restart(): Promise<void>
  /** Sends one command (after AUTH) and resolves with the raw RESP answer. */
  command(...args: string[]): Promise<string>
  /** The same, in database `db` (SELECT db first). */
  commandInDb(db: number, ...args: string[]): Promise<string>
  /** Stops it for good (thawing it first if frozen). */
  stop(): Promise<void>
}

const binary = 'redis-server'

/** A password long and random enough that a search for it in logs and answers cannot match by chance. */
export const randomPassword = () => `redis-pw-${crypto.randomUUID().replaceAll('-', '')}`

/**
 * Starts redis-server (on a free port with a random password, unless given) and resolves once it
 * answers AUTH and PING. Throws (never skips) if it is not installed.
 */
export async function startRedis(options: { port?: number; password?: string; durable?: boolean } = {}): Promise<RedisServer> {
  if (!Bun.which(binary)) {
    throw new Error(`${binary} is not installed, and the REDIS_URL tests need a real one: apt-get install -y redis-server`)
  }
  const port = options.port ?? (await freePort())
  const password = options.password ?? randomPassword()
  let child: Subprocess
  let output: string[] = []
  // durable: every write in an append-only file, synced before Redis answers, so that what it
  // acknowledged survives a SIGKILL and restart (as a Redis holding a stream would be run).
  const dataDir = options.durable ? mkdtempSync(join(tmpdir(), 'redis-test-')) : undefined
  const persistence = dataDir ? ['--appendonly', 'yes', '--appendfsync', 'always', '--dir', dataDir] : ['--appendonly', 'no']

  const spawn = async () => {
    output = []
    child = Bun.spawn([binary, '--port', String(port), '--bind', '127.0.0.1', '--requirepass', password, '--save', '', ...persistence], {
      stdout: 'pipe',
      stderr: 'pipe',
      stdin: 'ignore',
    })
    const drain = async (stream: ReadableStream<Uint8Array>) => {
      for await (const chunk of stream) output.push(new TextDecoder().decode(chunk))
    }
    void drain(child.stdout as ReadableStream<Uint8Array>)
    void drain(child.stderr as ReadableStream<Uint8Array>)
    const deadline = Date.now() + 10_000
    while (Date.now() < deadline) {
      if (child.exitCode !== null || child.signalCode !== null) break
      const answer = await send(port, password, ['PING']).catch(() => '')
      if (answer === '+PONG\r\n') return
      await Bun.sleep(25)
    }
    child.kill('SIGKILL')
    throw new Error(`redis-server on port ${port} did not answer AUTH and PING:\n${output.join('')}`)
  }

  const killNow = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return
    child.kill('SIGKILL')
    await child.exited
  }

  await spawn()
  return {
    url: `redis://:${password}@127.0.0.1:${port}`,
    password,
    port,
    get pid() {
      return child.pid
    },
    kill: killNow,
    freeze: () => void child.kill('SIGSTOP'),
    thaw: () => void child.kill('SIGCONT'),
    restart: async () => {
      await killNow()
      await spawn()
    },
    command: (...args) => send(port, password, args),
    commandInDb: (db, ...args) => send(port, password, args, db),
    stop: async () => {
      child.kill('SIGCONT')
      await killNow()
      if (dataDir) rmSync(dataDir, { recursive: true, force: true })
    },
  }
}

const encode = (args: string[]) => `*${args.length}\r\n${args.map((arg) => `$${Buffer.byteLength(arg)}\r\n${arg}\r\n`).join('')}`

/**
 * AUTH (and SELECT db), then one command, over a fresh connection; resolves with the command's raw answer. Enough
 * for simple, error and integer answers and short bulk or array ones (read until the server is quiet).
 */
function send(port: number, password: string, args: string[], db?: number, timeoutMs = 1000): Promise<string> {
  const preamble = db === undefined ? '+OK\r\n' : '+OK\r\n+OK\r\n'
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port })
    let received = ''
    let quiet: ReturnType<typeof setTimeout> | undefined
    const timer = setTimeout(() => finish(new Error(`redis did not answer ${args[0]} within ${timeoutMs} ms`)), timeoutMs)
    const finish = (result: string | Error) => {
      clearTimeout(timer)
      clearTimeout(quiet)
      socket.destroy()
      if (result instanceof Error) reject(result)
      else resolve(result)
    }
    const select = db === undefined ? '' : encode(['SELECT', String(db)])
    socket.on('connect', () => socket.write(encode(['AUTH', password]) + select + encode(args)))
    socket.on('data', (data) => {
      received += data.toString()
      if (!received.startsWith(preamble)) {
        if (received.length >= preamble.length) finish(new Error(`redis refused AUTH or SELECT: ${received.trim()}`))
        return
      }
      clearTimeout(quiet)
      // The answer is complete once it ends a line and nothing more arrives for a moment.
      if (received.length > preamble.length && received.endsWith('\r\n')) quiet = setTimeout(() => finish(received.slice(preamble.length)), 30)
    })
    socket.on('error', (error) => finish(error))
    socket.on('close', () => finish(new Error(`redis closed the connection; got ${JSON.stringify(received)}`)))
  })
}
