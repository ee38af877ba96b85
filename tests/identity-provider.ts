// A stand-in for the application's identity provider: a JWKS endpoint on loopback with keys made
// here, and ID tokens signed with them, so auth tests need no outside service.
import { exportJWK, generateKeyPair, SignJWT, type CryptoKey, type JWK } from 'jose'

export interface SigningKey {
  kid: string
  alg: 'RS256' | 'ES256'
  privateKey: CryptoKey
  publicJwk: JWK
}

export async function makeKey(kid: string, alg: SigningKey['alg']): Promise<SigningKey> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true })
  return { kid, alg, privateKey, publicJwk: { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' } }
}

export const issuer = 'https://id.example.test/'
export const audience = 'livekit-app'

/** Signs an ID token; claims and timing can be overridden to make bad ones. */
export function idToken(key: SigningKey, claims: Record<string, unknown> = {}, { expiresIn = '10m', issuedBy = issuer, forAudience = audience } = {}) {
  return new SignJWT({ sub: 'user-1', name: 'Ada Lovelace', ...claims })
    .setProtectedHeader({ alg: key.alg, kid: key.kid, typ: 'JWT' })
    .setIssuer(issuedBy)
    .setAudience(forAudience)
    .setIssuedAt()
    .setExpirationTime(expiresIn)
    .sign(key.privateKey)
}

/** Serves { keys } at /.well-known/jwks.json; `published`, `down` and `delayMs` change what it does. */
export function startIdentityProvider(port = 0) {
  const state = { published: [] as SigningKey[], down: false, delayMs: 0, fetches: 0 }
  const server = Bun.serve({
    port,
    hostname: '127.0.0.1',
    async fetch(request) {
      state.fetches += 1
      if (state.delayMs) await Bun.sleep(state.delayMs)
      if (state.down) return new Response('unavailable', { status: 503 })
      if (new URL(request.url).pathname !== '/.well-known/jwks.json') return new Response('not found', { status: 404 })
      return Response.json({ keys: state.published.map((key) => key.publicJwk) })
    },
  })
  return { state, server, jwksUrl: `http://127.0.0.1:${server.port}/.well-known/jwks.json` }
}
