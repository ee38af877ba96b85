// The traffic of the load test and the soak script: half token requests (both contracts), half
// webhooks, each a distinct event signed as LiveKit signs it, sent by a pool of fetch() workers.
import { readdir, readFile } from 'node:fs/promises'
import { signWebhook, webhookEvent, type Credentials } from './livekit.ts'

export interface Counts {
  requests: number
  errors: number
  /** The first few errors, to show what went wrong. */
  samples: string[]
}

export const newCounts = (): Counts => ({ requests: 0, errors: 0, samples: [] })

/** Request n of the mix: 0 mod 4 an OpenVidu token request, 2 mod 4 a standard one, odd ones a webhook. */
export function mixedRequest(n: number, credentials: Credentials): { path: string; init: RequestInit; expected: string } {
  if (n % 2 === 0) {
    const body =
      n % 4 === 0
        ? { roomName: `room-${n % 100}`, participantName: `user-${n}` }
        : {
            room_name: `room-${n % 100}`,
            participant_identity: `user-${n}`,
            participant_name: `User ${n}`,
            participant_attributes: { team: 'blue' },
            room_config: { agents: [{ agent_name: 'transcriber' }] },
          }
    const expected = n % 4 === 0 ? '"token":"' : '"participant_token":"'
    return { path: '/token', init: { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }, expected }
  }
  const body = JSON.stringify(webhookEvent('participant_joined', { participant: { sid: `PA_${n}`, identity: `user-${n}` } }))
  return {
    path: '/livekit/webhook',
    init: { method: 'POST', headers: { 'content-type': 'application/webhook+json', authorization: signWebhook(body, credentials) }, body },
    // Every event is new, so an answer saying "duplicate" would be an error too.
    expected: '{"received":true}',
  }
}

export interface TrafficOptions {
  baseUrl: string
  credentials: Credentials
  concurrency: number
  /** Stop after this many requests... */
  maxRequests: number
  /** ...or at this time (ms since the epoch), whichever comes first. */
  deadline: number
  /** Updated as answers arrive, so a caller can sample it while the traffic runs. */
  counts?: Counts
}

/** Sends the mix with `concurrency` workers; an answer other than a 200 with the expected body is an error. */
export async function sendTraffic({ baseUrl, credentials, concurrency, maxRequests, deadline, counts = newCounts() }: TrafficOptions): Promise<Counts> {
  let next = 0
  const worker = async () => {
    while (next < maxRequests && Date.now() < deadline) {
      const { path, init, expected } = mixedRequest(next++, credentials)
      let error: string | undefined
      try {
        const response = await fetch(baseUrl + path, { ...init, signal: AbortSignal.timeout(10_000) })
        const text = await response.text()
        if (response.status !== 200 || !text.includes(expected)) error = `${path} ${response.status} ${text.slice(0, 200)}`
      } catch (caught) {
        error = `${path} ${String(caught)}`
      }
      counts.requests += 1
      if (error !== undefined) {
        counts.errors += 1
        if (counts.samples.length < 5) counts.samples.push(error)
      }
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker))
  return counts
}

/** The resident memory of a process, in MB, as the kernel reports it. */
export async function rssMegabytes(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  const kilobytes = /^VmRSS:\s+(\d+) kB/m.exec(status)?.[1]
  if (kilobytes === undefined) throw new Error(`no VmRSS for process ${pid}`)
  return Number(kilobytes) / 1024
}

/** How many file descriptors the process holds open right now. */
export async function openDescriptors(pid: number): Promise<number> {
  return (await readdir(`/proc/${pid}/fd`)).length
}
