// The shared harness: starting the processes a run measures (each pinned with taskset), loading them
// with wrk, reading their CPU time and memory from /proc, the Redis they share, and medians. It knows
// nothing of what is compared (bench/variants.ts) or what is sent (bench/scenarios.ts): a Variant
// says how to start one process, whether ours or another server measured beside it.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { availableParallelism, tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Subprocess } from 'bun'
import type { Credentials } from '../tests/livekit.ts'
import { startRedis, type RedisServer } from '../tests/redis.ts'
import { denoCommandWith, denoPath, freePort, runtimes, startServer, type Runtime, type ServerProcess, type StartOptions } from '../tests/server.ts'

export const root = new URL('..', import.meta.url).pathname

/** One process to start: on each runtime of the run, or, with `command`, once per run. */
export interface Variant {
  label: string
  /** The file the runtime's command runs, relative to the project root (for a variant without `command`). */
  entry?: string
  /**
   * A process that runs on no runtime of the run (another server measured beside this one, e.g. the
   * Go peer): its whole command, given the port it is to listen on (picked here, as for WORKERS).
   * It is started once per run, and counts as started once it answers HTTP on that port.
   */
  command?: (port: string) => string[]
  /** The substring of the log line the process writes per webhook it handled, when not the server's. */
  handledLog?: string
  /** Set on top of the bench credentials and SERVER_PORT=0. */
  env: Record<string, string>
  /** REDIS_URL = the redis-server this run starts. */
  redis: boolean
  /** SERVER_PORT = a free port picked here (WORKERS needs a fixed one), and Deno's command for workers. */
  workers: boolean
  /** Timed from spawn to first answer, five times, before the load. */
  timeStartup: boolean
  /** PROMETHEUS_PORT = a free port picked here (nothing scrapes it: the cost measured is the counting). */
  metricsPort?: boolean
}

// Load, pinning and credentials

export const wrkThreads = 2
export const wrkConnections = 32
export const warmupSeconds = 1
// Short rounds, alternating between routes, processes and runtimes, spread whatever else the machine does.
export const roundSeconds = 1
export const startupRuns = 5
// Every process measured alone (all but the WORKERS ones) runs on the last core, and wrk, Redis and
// this script on the others: the measured process then has a core of its own, and its figures stop
// swaying with whatever wrk and the log reading take. WORKERS processes may use every core.
const cores = availableParallelism()
export const serverCore = String(cores - 1)
export const loadCores = cores > 2 ? `0-${cores - 2}` : '0'
const allCores = `0-${cores - 1}`
const pinnedTo = (core: string, command: readonly string[]) => ['taskset', '-c', core, ...command]
const luaScript = new URL('wrk.lua', import.meta.url).pathname
/** Deno's workers are web workers (they read the entry file again) sharing the port. */
const denoWorkersCommand = denoCommandWith('--allow-read=.', '--unstable-net')
// Non-default credentials, so the run also proves the server reads its configuration.
export const credentials: Credentials = { apiKey: 'bench-api-key', apiSecret: `bench-secret-${crypto.randomUUID()}` }
const baseEnv = { SERVER_PORT: '0', LIVEKIT_API_KEY: credentials.apiKey, LIVEKIT_API_SECRET: credentials.apiSecret }

// Processes: every one this run starts, so that each is stopped even when the run fails or is interrupted.

const servers = new Set<ServerProcess>()
const wrkProcesses = new Set<Subprocess>()
let redis: RedisServer | undefined

export async function startBenchRedis(): Promise<void> {
  redis = await startRedis()
}

async function variantEnv(variant: Variant): Promise<Record<string, string>> {
  const env: Record<string, string> = { ...baseEnv, ...variant.env }
  if (variant.redis) env.REDIS_URL = redis!.url
  if (variant.workers || variant.command) env.SERVER_PORT = String(await freePort())
  if (variant.metricsPort) env.PROMETHEUS_PORT = String(await freePort())
  return env
}

function variantOptions(runtime: Runtime | undefined, variant: Variant, port: string, pinned: boolean): StartOptions {
  // Set either way: a child inherits this script's cores.
  const core = pinned ? serverCore : allCores
  if (variant.command) return { command: pinnedTo(core, variant.command(port)), listensAt: `http://127.0.0.1:${port}`, name: variant.label }
  if (!runtime) throw new Error(`${variant.label}: a variant without a command runs on a runtime`)
  const command = variant.workers && runtime === 'deno' ? denoWorkersCommand : runtimes[runtime]
  return { entry: variant.entry, command: pinnedTo(core, command) }
}

/**
 * A variant's process, on a core of its own if `pinned` (never the WORKERS ones, which need them all);
 * `runtime` is undefined for a variant with its own command.
 */
export async function launch(runtime: Runtime | undefined, variant: Variant, { pinned = false } = {}): Promise<ServerProcess> {
  const env = await variantEnv(variant)
  // The runtime names the process only when the variant brings its own command (and its own name).
  const server = await startServer(runtime ?? 'binary', env, variantOptions(runtime, variant, env.SERVER_PORT!, pinned && !variant.workers))
  servers.add(server)
  if (variant.redis && !(await redisInUse(server))) throw new Error(`${label(runtime, variant)}: /health says Redis is not in use; nothing measured`)
  return server
}

/** "bun server", or the label alone for a variant that runs on no runtime of the run. */
export const label = (runtime: Runtime | undefined, variant: Variant) => (runtime ? `${runtime} ${variant.label}` : variant.label)

/** /health says whether the server uses Redis: a variant meant to must, or it measures its memory. */
export async function redisInUse(server: ServerProcess): Promise<boolean> {
  const json = (await fetch(loopbackUrl(server) + '/health').then((response) => response.json())) as { redis?: string }
  return json.redis === 'ok'
}

async function stopServer(server: ServerProcess): Promise<void> {
  // The server gives requests in flight 10 s after SIGTERM; past that it is stuck.
  const kill = setTimeout(() => server.child.kill('SIGKILL'), 15_000)
  await server.stop()
  clearTimeout(kill)
  servers.delete(server)
}

export async function stopEverything(): Promise<void> {
  for (const child of wrkProcesses) child.kill('SIGKILL')
  await Promise.all([...servers].map(stopServer))
  await redis?.stop()
  redis = undefined
}

/** A file under /proc, or "" once its process is gone. */
function readProc(path: string): string {
  try {
    return readFileSync(path, 'utf8')
  } catch {
    return '' // gone meanwhile
  }
}

/** A process and its descendants (Bun's workers are child processes). */
function processTree(pid: number): number[] {
  const children = readProc(`/proc/${pid}/task/${pid}/children`).split(' ').filter(Boolean).map(Number)
  return [pid, ...children.flatMap(processTree)]
}

/** Resident memory of a process and its descendants, in MB. */
export const treeRssMegabytes = (pid: number) => sum(processTree(pid).map((one) => Number(/^VmRSS:\s+(\d+) kB/m.exec(readProc(`/proc/${one}/status`))?.[1] ?? 0) / 1024))

/** CPU time (user and system) a process and its descendants have used so far, in µs. */
export const treeCpuMicros = (pid: number) => sum(processTree(pid).map(cpuMicros))

function cpuMicros(pid: number): number {
  const stat = readProc(`/proc/${pid}/stat`)
  if (!stat) return 0
  // Fields after the command (which may hold spaces): utime and stime are the 12th and 13th.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return ((Number(fields[11]) + Number(fields[12])) * 1e6) / clockTicksPerSecond
}

const clockTicksPerSecond = Number(Bun.spawnSync(['getconf', 'CLK_TCK']).stdout.toString().trim()) || 100

// Requests, as wrk sends them

export interface HttpRequest {
  method: 'GET' | 'POST'
  path: string
  contentType?: string
  authorization?: string
  body?: string
}

/** The request as wrk.lua sends it: complete HTTP/1.1, ended by the NUL byte that separates requests. */
function rawRequest({ method, path, contentType, authorization, body = '' }: HttpRequest, host: string): string {
  const headers = [`Host: ${host}`]
  if (contentType) headers.push(`Content-Type: ${contentType}`)
  if (authorization) headers.push(`Authorization: ${authorization}`)
  if (method === 'POST') headers.push(`Content-Length: ${Buffer.byteLength(body)}`)
  const raw = `${method} ${path} HTTP/1.1\r\n${headers.join('\r\n')}\r\n\r\n${body}`
  // JSON escapes control characters, so a NUL here would be a bug in this file.
  if (raw.includes('\0')) throw new Error(`request to ${path} contains a NUL byte`)
  return `${raw}\0`
}

export const toFetchInit = ({ method, contentType, authorization, body }: HttpRequest): RequestInit => ({
  method,
  headers: { ...(contentType && { 'content-type': contentType }), ...(authorization && { authorization }) },
  body,
})

// Running wrk

export interface WrkResult {
  requests: number
  durationUs: number
  p50Us: number
  p99Us: number
  statusErrors: number
  socketErrors: number
  exhaustedThreads: number
}

export const workDir = mkdtempSync(join(tmpdir(), 'livekit-bench-'))
let wrkRuns = 0

/** wrk wants an address: "localhost" may resolve to ::1 first, so name IPv4 loopback outright. */
export const loopbackUrl = (server: ServerProcess) => `http://127.0.0.1:${new URL(server.url).port}`

export async function runWrk(server: ServerProcess, perThread: HttpRequest[][], seconds: number, cycle: boolean, pinned: boolean): Promise<WrkResult> {
  wrkRuns += 1
  const prefix = join(workDir, `requests-${wrkRuns}`)
  const host = new URL(loopbackUrl(server)).host
  const files = perThread.map((requests, i) => {
    const file = `${prefix}.${i + 1}`
    writeFileSync(file, requests.map((request) => rawRequest(request, host)).join(''))
    return file
  })
  const args = [`-t${wrkThreads}`, `-c${wrkConnections}`, `-d${seconds}s`, '--timeout', '5s', '-s', luaScript]
  const command = ['wrk', ...args, loopbackUrl(server), '--', prefix, cycle ? 'cycle' : 'once']
  const child = Bun.spawn(pinned ? pinnedTo(loadCores, command) : command, {
    stdout: 'pipe',
    stderr: 'pipe',
  })
  wrkProcesses.add(child)
  const [output, errors, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited])
  wrkProcesses.delete(child)
  for (const file of files) rmSync(file)
  const summary = output.split('\n').find((line) => line.startsWith('BENCH_RESULT '))
  if (code !== 0 || !summary) throw new Error(`wrk failed (exit ${code}):\n${output}${errors}`)
  return JSON.parse(summary.slice('BENCH_RESULT '.length)) as WrkResult
}

/** Spawn to the first successful /health answer, as a user (or an orchestrator's probe) sees it. */
export async function startupMs(runtime: Runtime | undefined, variant: Variant): Promise<number> {
  const started = performance.now()
  const server = await launch(runtime, variant)
  try {
    for (const deadline = started + 20_000; performance.now() < deadline; await Bun.sleep(5)) {
      const ok = await fetch(loopbackUrl(server) + '/health').then((response) => response.ok, () => false)
      if (ok) return performance.now() - started
    }
    throw new Error(`${label(runtime, variant)}: /health did not answer within 20 s of the start`)
  } finally {
    await stopServer(server)
  }
}

// Medians

export const sum = (values: number[]) => values.reduce((total, value) => total + value, 0)

/** The middle value, or the mean of the two middle ones; undefined for no values. */
export function median(values: number[]): number | undefined {
  const sorted = [...values].sort((a, b) => a - b)
  const middle = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[middle] : sorted.length === 0 ? undefined : (sorted[middle - 1]! + sorted[middle]!) / 2
}

// The machine

async function commandOutput(command: string[]): Promise<string> {
  const child = Bun.spawn(command, { stdout: 'pipe', stderr: 'pipe' })
  const [out, err] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited])
  return out + err
}

export async function describeMachine(runtimes: Runtime[], goPeer: boolean): Promise<string> {
  const versions = [`Bun ${(await commandOutput(['bun', '--version'])).trim()}`]
  if (runtimes.includes('deno')) versions.push(`Deno ${/deno (\S+)/.exec(await commandOutput([denoPath, '--version']))?.[1]}`)
  // "go version go1.19.8 linux/amd64"
  if (goPeer) versions.push(`Go ${/go version go(\S+)/.exec(await commandOutput(['go', 'version']))?.[1]} (the Go peer)`)
  // Debian's wrk reports e.g. "wrk debian/4.1.0-3+b2 [epoll]".
  const wrk = /wrk (?:\w+\/)?([\d.]+)/.exec(await commandOutput(['wrk', '--version']))?.[1] ?? '?'
  const redisVersion = /v=(\S+)/.exec(await commandOutput(['redis-server', '--version']))?.[1] ?? '?'
  return `${cores} cores, ${process.platform} ${process.arch}; ${versions.join(', ')}; wrk ${wrk}; redis-server ${redisVersion}`
}
