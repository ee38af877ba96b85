// Preloaded by `bun test` (bunfig.toml): builds the single executable the suite also runs against,
// with `bun run build`, whenever it is missing or older than what goes into it.
import { setDefaultTimeout } from 'bun:test'
import { existsSync, statSync } from 'node:fs'
import { binaryPath } from './server'

// The suites start real servers, a browser and Redis: give each test 30 s. Bun 1.4 does not read bunfig's
// [test] timeout (a test sleeping 6 s failed at 5 s), but takes this from a preload.
setDefaultTimeout(30_000)

const root = new URL('..', import.meta.url).pathname
const inputs = ['index.ts', 'package.json', 'bun.lock'].map((file) => statSync(`${root}${file}`).mtimeMs)

if (!existsSync(binaryPath) || statSync(binaryPath).mtimeMs < Math.max(...inputs)) {
  const build = Bun.spawnSync(['bun', 'run', 'build'], { cwd: root, stdout: 'pipe', stderr: 'pipe' })
  if (build.exitCode !== 0) throw new Error(`bun run build failed:\n${build.stdout.toString()}${build.stderr.toString()}`)
}
