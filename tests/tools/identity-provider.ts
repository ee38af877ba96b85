// `bun run identity-provider [--port N] [--audience A] [--key-file PATH]`: an identity provider for trying
// caller authentication (AUTH_JWKS_URL) on one machine. It publishes a JWKS on loopback and mints an ID
// token for whoever asks, with the claims asked for: a development tool, never a production one. Its
// signing key is kept in a file (by default under node_modules/.cache), so tokens outlive a restart.
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { dirname } from 'node:path'
import { parseArgs } from 'node:util'
import { exportJWK, importJWK, type CryptoKey, type JWK } from 'jose'
import { idToken, makeKey, type SigningKey } from '../identity-provider.ts'

const root = new URL('../..', import.meta.url).pathname
const defaultKeyFile = `${root}node_modules/.cache/identity-provider/key.json`
const defaults = { port: 6090, audience: 'livekit-app', keyFile: defaultKeyFile }

const usage = `usage: bun run identity-provider [--port N] [--audience A] [--key-file PATH]

  --port      where to serve, on 127.0.0.1 (default ${defaults.port}; 0 picks a free one)
  --audience  the aud of the tokens it mints (default ${defaults.audience})
  --key-file  where its signing key is kept (default node_modules/.cache/identity-provider/key.json)

GET /id-token?sub=alice&name=Alice&roles=host&org=acme mints an ID token: sub (default alice), name
(default the sub, capitalised), and any other parameter as a claim of that name (repeated: an array;
roles and groups: always arrays; true and false: booleans). email adds email_verified: true unless
given. claims={…} adds a JSON object's claims as they are (nested ones, say). aud and iss override the
token's audience and issuer, ttl its lifetime in seconds (default 3600; negative: already expired).`

const fail = (message: string): never => {
  console.error(`identity-provider: ${message}`)
  process.exit(1)
}

/** The signing key from the key file, or a new ES256 key written there (readable by this user only). */
async function loadOrMakeKey(path: string): Promise<SigningKey> {
  if (existsSync(path)) {
    try {
      const { kid, privateJwk } = JSON.parse(readFileSync(path, 'utf8')) as { kid: string; privateJwk: JWK }
      const privateKey = (await importJWK(privateJwk, 'ES256')) as CryptoKey
      const { d: _private, ...publicJwk } = privateJwk
      return { kid, alg: 'ES256', privateKey, publicJwk: { ...publicJwk, kid, alg: 'ES256', use: 'sig' } }
    } catch (error) {
      return fail(`${path} is not a key this tool wrote (${(error as Error).message}): delete it to make a new one`)
    }
  }
  const key = await makeKey(`dev-${crypto.randomUUID().slice(0, 8)}`, 'ES256')
  mkdirSync(dirname(path), { recursive: true })
  writeFileSync(path, JSON.stringify({ kid: key.kid, privateJwk: await exportJWK(key.privateKey) }), { mode: 0o600 })
  chmodSync(path, 0o600)
  return key
}

// Bounds on a request for a token: it is a development tool, but it answers whatever reaches it.
const maxUrlLength = 8192
const maxParameters = 64
const maxValueLength = 1024
const reserved = new Set(['aud', 'iss', 'ttl', 'claims'])
const givenOnce = new Set([...reserved, 'sub', 'name', 'email'])
const alwaysArrays = new Set(['roles', 'groups'])

class BadRequest extends Error {}

/** The claims and token options a query asks for; a BadRequest names what is wrong. */
export function tokenRequest(query: URLSearchParams, issuer: string, audience: string) {
  if ([...query.keys()].length > maxParameters) throw new BadRequest(`at most ${maxParameters} parameters`)
  const asked: [string, unknown][] = []
  for (const name of new Set(query.keys())) {
    const values = query.getAll(name)
    if (!/^[\w.:/@$-]{1,128}$/.test(name)) throw new BadRequest(`parameter "${name.slice(0, 40)}" is not a claim name`)
    if (values.some((value) => value.length > maxValueLength)) {
      throw new BadRequest(`${name} is longer than ${maxValueLength} characters`)
    }
    if (givenOnce.has(name) && values.length > 1) throw new BadRequest(`${name} given more than once`)
    if (reserved.has(name)) continue
    const typed = values.map((value) => (value === 'true' ? true : value === 'false' ? false : value))
    asked.push([name, typed.length > 1 || alwaysArrays.has(name) ? typed : typed[0]])
  }
  // Made as own properties (fromEntries, spread): a claim named __proto__ stays a claim.
  let claims: Record<string, unknown> = Object.fromEntries(asked)
  const json = query.get('claims')
  if (json !== null) {
    let extra: unknown
    try {
      extra = JSON.parse(json)
    } catch {
      throw new BadRequest('claims is not JSON')
    }
    if (typeof extra !== 'object' || extra === null || Array.isArray(extra)) {
      throw new BadRequest('claims is not a JSON object')
    }
    claims = { ...claims, ...extra }
  }
  const sub = typeof claims.sub === 'string' && claims.sub ? claims.sub : 'alice'
  claims.sub = sub
  claims.name ??= sub.charAt(0).toUpperCase() + sub.slice(1)
  if (typeof claims.email === 'string') claims.email_verified ??= true
  const ttlText = query.get('ttl') ?? '3600'
  if (!/^-?\d{1,5}$/.test(ttlText) || Math.abs(Number(ttlText)) > 86400 || ttlText === '0') {
    throw new BadRequest('ttl must be a number of seconds from -86400 to 86400, not 0')
  }
  const asIssuer = query.get('iss') ?? issuer
  return { claims, ttlSeconds: Number(ttlText), issuer: asIssuer, audience: query.get('aud') ?? audience }
}

async function main() {
  let values
  try {
    ;({ values } = parseArgs({
      options: {
        port: { type: 'string' },
        audience: { type: 'string' },
        'key-file': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    }))
  } catch (error) {
    return fail(`${(error as Error).message}\n${usage}`)
  }
  if (values.help) return console.log(usage)
  const portText = values.port ?? String(defaults.port)
  if (!/^\d{1,5}$/.test(portText) || Number(portText) > 65535) fail(`--port must be 0 to 65535, got "${portText}"`)
  const audience = values.audience ?? defaults.audience
  if (!audience.trim()) fail('--audience must not be empty')
  const keyFile = values['key-file'] ?? defaults.keyFile
  const key = await loadOrMakeKey(keyFile)

  let base = ''
  const serve = (request: Request) => answer(request, key, base, audience)
  const error = (error: Error) => {
    console.error(`identity-provider: ${error.message}`)
    return Response.json({ errorMessage: 'Internal error' }, { status: 500 })
  }
  let server: ReturnType<typeof Bun.serve>
  try {
    server = Bun.serve({ hostname: '127.0.0.1', port: Number(portText), fetch: serve, error })
  } catch (error) {
    const { code, message } = error as { code?: string; message?: string }
    return fail(`cannot listen on 127.0.0.1:${portText}: ${code ?? message}`)
  }
  base = `http://127.0.0.1:${server.port}`
  const env = [`AUTH_JWKS_URL=${base}/.well-known/jwks.json`, `AUTH_ISSUER=${base}`, `AUTH_AUDIENCE=${audience}`]
  const serverPort = /^[1-9]\d{0,4}$/.test(process.env.SERVER_PORT ?? '') ? process.env.SERVER_PORT : '6080'
  const bearer = `-H "Authorization: Bearer $(curl -s '${base}/id-token?sub=alice')"`
  const sample = `curl -X POST http://localhost:${serverPort}/token ${bearer} ${jsonBody('{"room_name":"room1"}')}`
  console.log(`Development identity provider on ${base}: it signs an ID token for anyone who asks.
Never use it in production. Key ${key.kid} (ES256), kept in ${keyFile}.

Run the server with:
${env.join('\n')}

  ${env.join(' ')} bun run index.ts

An ID token (any other parameter becomes a claim; roles repeat: roles=host&roles=admin):
curl '${base}/id-token?sub=alice&name=Alice&roles=host&org=acme'

A LiveKit token with it:
${sample}
`)
}

const jsonBody = (json: string) => `-H 'Content-Type: application/json' -d '${json}'`

async function answer(request: Request, key: SigningKey, base: string, audience: string): Promise<Response> {
  if (request.url.length > maxUrlLength) {
    return Response.json({ errorMessage: `URL longer than ${maxUrlLength}` }, { status: 414 })
  }
  if (request.method !== 'GET' && request.method !== 'HEAD') {
    return Response.json({ errorMessage: 'GET only' }, { status: 405 })
  }
  const url = new URL(request.url)
  switch (url.pathname) {
    case '/.well-known/jwks.json':
      return Response.json({ keys: [key.publicJwk] })
    case '/.well-known/openid-configuration':
      return Response.json({
        issuer: base,
        jwks_uri: `${base}/.well-known/jwks.json`,
        id_token_signing_alg_values_supported: [key.alg],
      })
    case '/id-token': {
      let asked
      try {
        asked = tokenRequest(url.searchParams, base, audience)
      } catch (error) {
        if (!(error instanceof BadRequest)) throw error
        return Response.json({ errorMessage: error.message }, { status: 400 })
      }
      const token = await idToken(key, asked.claims, {
        expiresIn: `${asked.ttlSeconds}s`,
        issuedBy: asked.issuer,
        forAudience: asked.audience,
      })
      const sub = String(asked.claims.sub).slice(0, 80)
      console.log(`minted an ID token for sub "${sub}", aud "${asked.audience.slice(0, 80)}", ${asked.ttlSeconds} s`)
      return new Response(`${token}\n`, {
        headers: { 'content-type': 'text/plain; charset=utf-8', 'cache-control': 'no-store' },
      })
    }
    case '/':
      return new Response(`${usage}\n`, { headers: { 'content-type': 'text/plain; charset=utf-8' } })
    default:
      return Response.json({ errorMessage: 'Not found' }, { status: 404 })
  }
}

if (import.meta.main) await main()
