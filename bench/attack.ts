// What the costliest token requests an attacker can send cost the server, one at a time. The bodies
// are generated: each field of each contract made invalid in turn (wrong type, too long, too many),
// and valid requests of both contracts, each beside wide unknown fields of every JSON kind, filled to
// the largest size the route reads; with and without caller authentication. It prints the worst
// refusals, and each refusal against the acceptance of a body of the same bulk.
// Usage: bun run bench/attack.ts [--deno] [--requests N] [--top N]. Prints markdown tables.
import { parseArgs } from 'node:util'
import { startServer, type Runtime } from '../tests/server.ts'
import { audience, idToken, issuer, makeKey, startIdentityProvider } from '../tests/identity-provider.ts'

const { values } = parseArgs({
  args: Bun.argv.slice(2),
  options: { deno: { type: 'boolean', default: false }, requests: { type: 'string', default: '5' }, top: { type: 'string', default: '8' } },
})
const runtimes: Runtime[] = values.deno ? ['bun', 'deno'] : ['bun']
const requests = Number(values.requests)
const tokenBodyLimit = 256 * 1024
const goalMs: Record<string, number> = { bun: 20, deno: 40 }

// The fields each contract reads, each with the ways a client can get it wrong.
const long = (characters: number, character = 'é') => character.repeat(characters)
const wrongTypes = { 'a number': 5, 'an array': ['x'], 'an object': { a: 'x' }, null: null }
const nameField = { ...wrongTypes, 'too long': long(257, 'x'), 'too long in bytes': long(257) }
const invalidFields: Record<string, Record<string, unknown>> = {
  roomName: { ...nameField, empty: '' },
  participantName: { ...nameField, empty: '' },
  room_name: nameField,
  participant_identity: nameField,
  participant_name: nameField,
  participant_metadata: { ...wrongTypes, 'too long': long(32 * 1024 + 1) },
  participant_attributes: {
    'a number': 5,
    'an array': ['x'],
    null: null,
    'a value not a string': { a: 1 },
    'too many': Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`k${i}`, 'v'])),
    'too long': { a: long(32 * 1024 + 1) },
  },
  room_config: {
    ...wrongTypes,
    'not a RoomConfiguration': { agents: 5 },
    'a field the server keeps': { empty_timeout: 5 },
    'too many agents': { agents: Array.from({ length: 9 }, (_, i) => ({ agent_name: `a${i}` })) },
    'an agent name too long': { agents: [{ agent_name: long(257, 'x') }] },
    'agent metadata too long': { agents: [{ agent_name: 'a', metadata: long(32 * 1024 + 1) }] },
    'an agent field the server keeps': { agents: [{ agent_name: 'a', deployment: 'x' }] },
  },
}
const openViduFields = new Set(['roomName', 'participantName'])
const validOpenVidu = { roomName: 'room1', participantName: 'alice' }
const validStandard = { room_name: 'room1', participant_identity: 'alice', room_config: { agents: [{ agent_name: 'transcriber' }] } }

// Unknown fields, wide, of each JSON kind: what the server must carry past without walking it twice.
// Each fills the route's limit in bytes: once with as many values as fit (over the server's bound on
// values), once with as many as the bound allows and a long string for the rest.
const maxJsonValues = 1000
const nested = (levels: number) => `${'['.repeat(levels)}${']'.repeat(levels)}`
const kinds: Record<string, { item: (i: number) => string; values: number; open: string; close: string }> = {
  'deep arrays': { item: () => nested(28), values: 28, open: '[', close: ']' },
  'small objects': { item: () => '{"a":[1,{"b":null}]}', values: 5, open: '[', close: ']' },
  'long strings': { item: () => `"${'x'.repeat(1000)}\\"\\u00e9"`, values: 1, open: '[', close: ']' },
  // Each key its own name, of one length, or JSON.parse would keep one.
  'many keys': { item: (i) => `"k${i.toString(36).padStart(4, '0')}":0`, values: 1, open: '{', close: '}' },
}
type Filler = { name: string; text: (room: number) => string }
const fillers: Filler[] = Object.entries(kinds).flatMap(([name, kind]) => {
  const repeated = (count: number) => `${kind.open}${Array.from({ length: count }, (_, i) => kind.item(i)).join(',')}${kind.close}`
  const fitting = (room: number) => Math.max(0, Math.floor((room - kind.open.length - kind.close.length + 1) / (kind.item(0).length + 1)))
  return [
    { name, text: (room: number) => repeated(fitting(room)) },
    {
      name: `${name}, as many values as allowed`,
      text: (room: number) => {
        const values = repeated(Math.min(fitting(room - 7), Math.floor((maxJsonValues - 20) / (kind.values + 1))))
        return `${values},"y":"${'x'.repeat(Math.max(0, room - values.length - 7))}"`
      },
    },
  ]
})

/** `fields` as a JSON object whose last field, `x`, is the filler, sized to the route's limit in bytes. */
function filled(fields: Record<string, unknown>, filler: Filler): string {
  const head = JSON.stringify(fields).slice(0, -1)
  const prefix = `${head}${head.length > 1 ? ',' : ''}"x":`
  const body = `${prefix}${filler.text(tokenBodyLimit - Buffer.byteLength(prefix) - 1)}}`
  if (Buffer.byteLength(body) > tokenBodyLimit) throw new Error(`a generated body (${filler.name}) is over the limit`)
  return body
}

interface Shape {
  name: string
  filler: string
  body: string
  /** Whether a field is invalid, so that anything but a 4xx is a failure of the server. */
  invalid: boolean
}

function shapes(): Shape[] {
  const all: Shape[] = []
  for (const filler of fillers) {
    const fillerName = filler.name
    const valid = { openvidu: filled(validOpenVidu, filler), standard: filled(validStandard, filler) }
    all.push({ name: 'valid OpenVidu request', filler: fillerName, body: valid.openvidu, invalid: false })
    all.push({ name: 'valid standard request', filler: fillerName, body: valid.standard, invalid: false })
    for (const [field, variants] of Object.entries(invalidFields)) {
      const contract = openViduFields.has(field) ? 'openvidu' : 'standard'
      for (const [variant, value] of Object.entries(variants)) {
        const fields = contract === 'openvidu' ? { ...validOpenVidu, [field]: value } : { [field]: value }
        all.push({ name: `${field} ${variant}`, filler: fillerName, body: filled(fields, filler), invalid: true })
      }
    }
    all.push({ name: 'participant_identity not the caller (with auth)', filler: fillerName, body: filled({ participant_identity: 'someone-else' }, filler), invalid: true })
  }
  return all
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!

interface Result extends Shape {
  status: number
  ms: number
}

async function measure(url: string, all: Shape[], headers: Record<string, string>): Promise<Result[]> {
  const timings = all.map(() => [] as number[])
  const statuses = all.map(() => 0)
  // Interleaved, so that whatever else the machine does hits every body alike.
  for (let round = 0; round < requests + 1; round++) {
    for (const [index, shape] of all.entries()) {
      const started = performance.now()
      const response = await fetch(`${url}/token`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: shape.body })
      await response.arrayBuffer()
      if (round > 0) timings[index]!.push(performance.now() - started) // the first round warms up
      statuses[index] = response.status
    }
  }
  return all.map((shape, index) => ({ ...shape, status: statuses[index]!, ms: median(timings[index]!) }))
}

const provider = startIdentityProvider()
const key = await makeKey('attack-1', 'ES256')
provider.state.published = [key]
const all = shapes()
const credentials = { LIVEKIT_API_KEY: 'bench-key', LIVEKIT_API_SECRET: `bench-secret-${crypto.randomUUID()}` }
const worstRows: string[] = []
const summaryRows: string[] = []
try {
  for (const runtime of runtimes) {
    for (const auth of [false, true]) {
      const server = await startServer(runtime, auth ? { ...credentials, AUTH_JWKS_URL: provider.jwksUrl, AUTH_ISSUER: issuer, AUTH_AUDIENCE: audience } : credentials)
      try {
        const headers: Record<string, string> = auth ? { authorization: `Bearer ${await idToken(key, { sub: 'alice' }, { expiresIn: '1h' })}` } : {}
        const shapesHere = auth ? all : all.filter((shape) => !shape.name.endsWith('(with auth)'))
        const results = await measure(server.url, shapesHere, headers)
        // Every body is of the route's largest size: each refusal is compared with the typical acceptance.
        const accepted = results.filter((result) => result.status === 200)
        const refused = results.filter((result) => result.status !== 200)
        const unexpected = results.filter((result) => (result.invalid || result.status !== 200) && !(result.status >= 400 && result.status < 500))
        if (unexpected.length > 0) throw new Error(`not refused with a 4xx: ${unexpected.map((result) => `${result.name} (${result.filler}) → ${result.status}`).join('; ')}`)
        const typicalAcceptance = median(accepted.map((result) => result.ms))
        const mode = auth ? 'with auth' : 'no auth'
        for (const result of [...refused].sort((a, b) => b.ms - a.ms).slice(0, Number(values.top))) {
          worstRows.push(`| ${runtime} | ${mode} | ${result.name} | ${result.filler} | ${result.status} | ${result.ms.toFixed(2)} ms | ${(result.ms / typicalAcceptance).toFixed(2)}× |`)
        }
        const worst = Math.max(...refused.map((result) => result.ms))
        const verdict = worst < goalMs[runtime]! ? 'under the goal' : 'OVER the goal'
        summaryRows.push(
          `| ${runtime} | ${mode} | ${refused.length} | ${median(refused.map((result) => result.ms)).toFixed(2)} ms | ${worst.toFixed(2)} ms | ${accepted.length} | ${typicalAcceptance.toFixed(2)} ms | ${Math.max(...accepted.map((result) => result.ms)).toFixed(2)} ms | ${goalMs[runtime]} ms: ${verdict} |`,
        )
      } finally {
        await server.stop()
      }
    }
  }
} finally {
  provider.server.stop(true)
}
console.log(`Token requests of ${tokenBodyLimit / 1024} KiB, one at a time over loopback, median of ${requests} each, ${new Date().toISOString().slice(0, 10)}.\n`)
console.log('| runtime | callers | refusals | median refusal | worst refusal | acceptances | median acceptance | worst acceptance | goal (worst refusal) |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |')
console.log(summaryRows.join('\n'))
console.log('\nThe costliest refusals (÷ the median acceptance, of the same size):\n')
console.log('| runtime | callers | request | unknown fields | status | median | ÷ acceptance |\n| --- | --- | --- | --- | --- | ---: | ---: |')
console.log(worstRows.join('\n'))
