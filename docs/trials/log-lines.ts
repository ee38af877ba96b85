// Trial: log line writers. Usage: bun run docs/trials/log-lines.ts MODE N [exit]  (stdout: the lines; stderr: ns/line)
// MODE: console (today: console.log(JSON.stringify(...))), sonic (pino's destination, SonicBoom, sync: false),
// bun (Bun.stdout.writer()). With "exit", process.exit(3) right after the last line, as after SIGTERM or a config error.
import SonicBoom from 'sonic-boom'

const [mode = 'console', count = '100000', exit] = process.argv.slice(2)
const lineSeparators = /[\u2028\u2029]/g
const escapeCharacter = (character: string) => `\\u${character.charCodeAt(0).toString(16)}`
const format = (level: string, msg: string, fields: Record<string, unknown>) =>
  JSON.stringify({ time: new Date().toISOString(), level, msg, worker: undefined, ...fields }).replace(lineSeparators, escapeCharacter)

let write: (line: string) => void
if (mode === 'none') write = () => {}
else if (mode === 'console') write = (line) => console.log(line)
else if (mode === 'sonic') {
  const destination = new SonicBoom({ fd: 1, sync: false, minLength: Number(process.env.MIN ?? 4096), maxWrite: Number(process.env.MAXW ?? 16384) })
  // What pino.destination leaves to its caller: flushing what is buffered when the process exits.
  process.on('exit', () => destination.flushSync())
  write = (line) => void destination.write(line + '\n')
} else {
  const writer = Bun.stdout.writer({ highWaterMark: Number(process.env.HWM ?? 64 * 1024) })
  process.on('exit', () => void writer.flush())
  write = (line) => void writer.write(line + '\n')
}
const n = Number(count)
const start = performance.now()
for (let i = 0; i < n; i++) write(format('info', 'webhook', { event: 'participant_joined', id: `EV_${i}`, room: 'room1', text: 'a\u2028b' }))
console.error(`${mode}: ${(((performance.now() - start) * 1e6) / n).toFixed(0)} ns/line`)
if (exit === 'crash') throw new Error('crash after the last line')
if (exit) process.exit(3)
