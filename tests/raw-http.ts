// HTTP/1.1 over a plain TCP socket, for what fetch() cannot show: a request sent piece by piece,
// and an answer that arrives before the body is sent (undici reports that as a failed request).
import { connect, type Socket } from 'node:net'
import { assertNoLeaks } from './server'

export interface RawAnswer {
  status: number
  headers: Headers
  body: string
  /** Set when the connection closed after the headers but before the whole body. */
  truncated?: boolean
  json(): any
}

/** A piece of the request body as written to the socket, or a step to await between two writes. */
export type BodyPiece = string | Uint8Array | (() => unknown)

export interface RawRequestOptions {
  method?: string
  /** Pause between two body pieces, so the server sees them arrive separately. */
  delayMs?: number
  /** Give up when no complete answer arrived by then. */
  timeoutMs?: number
  /** The request target exactly as written on the request line (by default the URL's path and query). */
  path?: string
  /** The address to connect from (any of 127.0.0.0/8 reaches a server on loopback). */
  localAddress?: string
}

/** One piece of a chunked (Transfer-Encoding: chunked) body; `chunk('')` is the last one. */
export function chunk(data: string | Uint8Array): Uint8Array {
  const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data
  return Buffer.concat([Buffer.from(`${bytes.byteLength.toString(16)}\r\n`), bytes, Buffer.from('\r\n')])
}

/**
 * Sends the request line and headers, then the body pieces in order, and resolves with the first
 * complete answer; it stops writing as soon as an answer has arrived. The socket is closed after.
 * Like httpClient, it fails on an answer that shows the API secret or a stack trace.
 */
export async function rawRequest(
  url: string,
  headers: Record<string, string>,
  body: BodyPiece[] = [],
  { method = 'POST', delayMs = 0, timeoutMs = 5000, path, localAddress }: RawRequestOptions = {},
): Promise<RawAnswer> {
  const target = new URL(url)
  const socket = await open(target, localAddress)
  const reader = readAnswer(socket, timeoutMs)
  try {
    const head = Object.entries({ host: target.host, ...headers }).map(([name, value]) => `${name}: ${value}\r\n`)
    await write(socket, `${method} ${path ?? target.pathname + target.search} HTTP/1.1\r\n${head.join('')}\r\n`)
    for (const [index, piece] of body.entries()) {
      if (reader.done()) break
      if (index > 0 && delayMs > 0) await Bun.sleep(delayMs)
      if (typeof piece === 'function') await piece()
      // A write can fail once the server has answered and closed; the answer is what counts.
      else await write(socket, piece).catch(() => {})
    }
    const answer = await reader.answer
    // Audited like every answer httpClient gets: headers and body, tokens allowed.
    assertNoLeaks(`answer to ${method} ${target.pathname} (raw socket)`, `${JSON.stringify([...answer.headers])}\n${answer.body}`, { tokensAllowed: true })
    return answer
  } finally {
    socket.destroy()
  }
}

/** Opens a TCP connection; rejects (e.g. ECONNREFUSED) when nothing accepts it. */
export function open(target: URL, localAddress?: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: target.hostname, port: Number(target.port), localAddress })
    socket.once('connect', () => {
      socket.off('error', reject)
      resolve(socket)
    })
    socket.once('error', reject)
  })
}

function write(socket: Socket, data: string | Uint8Array): Promise<void> {
  return new Promise((resolve, reject) => {
    if (socket.destroyed || !socket.writable) return reject(new Error('socket is closed'))
    socket.write(data, (error) => (error ? reject(error) : resolve()))
  })
}

function readAnswer(socket: Socket, timeoutMs: number) {
  let received = Buffer.alloc(0)
  let finished = false
  const answer = new Promise<RawAnswer>((resolve, reject) => {
    const finish = (result: RawAnswer | Error) => {
      if (finished) return
      finished = true
      clearTimeout(timer)
      if (result instanceof Error) reject(result)
      else resolve(result)
    }
    const timer = setTimeout(() => finish(new Error(`no complete answer within ${timeoutMs} ms; got: ${JSON.stringify(received.toString())}`)), timeoutMs)
    socket.on('data', (data: Buffer) => {
      received = Buffer.concat([received, data])
      const parsed = parseAnswer(received, false)
      if (parsed) finish(parsed)
    })
    const ended = (error?: Error) =>
      finish(parseAnswer(received, true) ?? new Error(`connection closed without a complete answer (${error?.message ?? 'end'}); got: ${JSON.stringify(received.toString())}`))
    socket.on('end', () => ended())
    socket.on('close', () => ended())
    socket.on('error', (error) => ended(error))
  })
  // Settled early (an answer before the whole request is written) is not an unhandled rejection.
  answer.catch(() => {})
  return { answer, done: () => finished }
}

/** The answer in `data` once it is complete (a body without a length ends with the connection). */
function parseAnswer(data: Buffer, closed: boolean): RawAnswer | Error | undefined {
  const headEnd = data.indexOf('\r\n\r\n')
  if (headEnd < 0) return undefined
  const [statusLine, ...headerLines] = data.subarray(0, headEnd).toString('latin1').split('\r\n')
  const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(statusLine!)?.[1])
  if (!status) return new Error(`not an HTTP answer: ${statusLine}`)
  const headers = new Headers()
  for (const line of headerLines) {
    const colon = line.indexOf(':')
    headers.append(line.slice(0, colon).trim(), line.slice(colon + 1).trim())
  }
  const rest = data.subarray(headEnd + 4)
  let body: Buffer | undefined
  if (headers.get('transfer-encoding')?.toLowerCase().includes('chunked')) body = dechunk(rest)
  else if (headers.has('content-length')) {
    const length = Number(headers.get('content-length'))
    if (rest.byteLength >= length) body = rest.subarray(0, length)
  } else if (closed || status === 204 || status === 304) body = rest
  // The connection closed before the body was complete: the status and headers are still an answer.
  if (!body && closed) return { status, headers, body: '', truncated: true, json: () => JSON.parse('') }
  if (!body) return undefined
  const text = body.toString('utf8')
  return { status, headers, body: text, json: () => JSON.parse(text) }
}

/** The decoded body of a complete chunked encoding, or undefined while the last chunk is missing. */
function dechunk(data: Buffer): Buffer | undefined {
  const parts: Buffer[] = []
  let offset = 0
  for (;;) {
    const lineEnd = data.indexOf('\r\n', offset)
    if (lineEnd < 0) return undefined
    const size = parseInt(data.subarray(offset, lineEnd).toString('latin1'), 16)
    if (size === 0) return Buffer.concat(parts)
    const start = lineEnd + 2
    if (data.byteLength < start + size + 2) return undefined
    parts.push(data.subarray(start, start + size))
    offset = start + size + 2
  }
}
