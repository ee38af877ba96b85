// A stand-in for the application's identity provider: a JWKS endpoint on loopback with keys made
// here, and ID tokens signed with them, so auth tests need no outside service.
import { exportJWK, generateKeyPair, SignJWT, type CryptoKey, type JWK } from 'jose'

export interface SigningKey {
  kid: string
  alg: 'RS256' | 'ES256' | 'PS256' | 'EdDSA' | 'HS256'
  /** The key that signs: a private key, or for HS256 the shared secret. */
  privateKey: CryptoKey | Uint8Array
  /** What the provider publishes in its JWKS: the public key, or for HS256 the secret itself. */
  publicJwk: JWK
}

export async function makeKey(kid: string, alg: Exclude<SigningKey['alg'], 'HS256'>): Promise<SigningKey> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true })
  return { kid, alg, privateKey, publicJwk: { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' } }
}

/**
 * A symmetric key published in the JWKS as { kty: "oct" }, as a careless provider might: anyone who
 * fetches the key set can then sign HS256 tokens with it, so the server must refuse HMAC algorithms.
 */
export async function makeSharedKey(kid: string): Promise<SigningKey> {
  const secret = crypto.getRandomValues(new Uint8Array(32))
  return { kid, alg: 'HS256', privateKey: secret, publicJwk: { ...(await exportJWK(secret)), kid, alg: 'HS256', use: 'sig' } }
}

export const issuer = 'https://id.example.test/'
export const audience = 'livekit-app'

/** Signs an ID token; claims and timing can be overridden to make bad ones (`expiresIn: null`: no exp). */
export function idToken(
  key: SigningKey,
  claims: Record<string, unknown> = {},
  { expiresIn = '10m' as string | null, issuedBy = issuer, forAudience = audience } = {},
) {
  const jwt = new SignJWT({ sub: 'user-1', name: 'Ada Lovelace', ...claims })
    .setProtectedHeader({ alg: key.alg, kid: key.kid, typ: 'JWT' })
    .setIssuer(issuedBy)
    .setAudience(forAudience)
    .setIssuedAt()
  if (expiresIn !== null) jwt.setExpirationTime(expiresIn)
  return jwt.sign(key.privateKey)
}

/**
 * Serves { keys } at /.well-known/jwks.json; `published`, `down` and `delayMs` change what it does.
 * `fetches` counts the requests for the key set (other paths are not counted).
 */
export function startIdentityProvider(port = 0) {
  const state = { published: [] as SigningKey[], down: false, delayMs: 0, fetches: 0 }
  const server = Bun.serve({
    port,
    hostname: '127.0.0.1',
    async fetch(request) {
      if (new URL(request.url).pathname !== '/.well-known/jwks.json') return new Response('not found', { status: 404 })
      state.fetches += 1
      if (state.delayMs) await Bun.sleep(state.delayMs)
      if (state.down) return new Response('unavailable', { status: 503 })
      return Response.json({ keys: state.published.map((key) => key.publicJwk) })
    },
  })
  return { state, server, jwksUrl: `http://127.0.0.1:${server.port}/.well-known/jwks.json` }
}
