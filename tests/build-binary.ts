// Preloaded by `bun test` (bunfig.toml): builds the single executable the suite also runs against,
// with `bun run build`, whenever it is missing or older than what goes into it.
import { existsSync, statSync } from 'node:fs'
import { binaryPath } from './server'

const root = new URL('..', import.meta.url).pathname
const inputs = ['index.ts', 'package.json', 'bun.lock'].map((file) => statSync(`${root}${file}`).mtimeMs)

if (!existsSync(binaryPath) || statSync(binaryPath).mtimeMs < Math.max(...inputs)) {
  const build = Bun.spawnSync(['bun', 'run', 'build'], { cwd: root, stdout: 'pipe', stderr: 'pipe' })
  if (build.exitCode !== 0) throw new Error(`bun run build failed:\n${build.stdout.toString()}${build.stderr.toString()}`)
}
