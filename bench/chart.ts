// `bun run bench --svg FILE`: the run's requests/s as a self-contained SVG bar chart (no external
// fonts, scripts or styles, so that it reads the same in a browser and on GitHub). One panel per
// route, its own scale; in each, a group of bars per runtime: the server, the floor, the floor with
// CORS and the Go peer (when measured), each the median over the clean rounds (bench/figures.ts).
import type { Runtime } from '../tests/server.ts'
import { finder, medianRate } from './figures.ts'
import { roundSeconds } from './harness.ts'
import type { Target } from './rounds.ts'
import { scenarios, type RouteKey } from './scenarios.ts'
import { variantOf, type Options, type VariantKey } from './variants.ts'

const routes: RouteKey[] = ['health', 'openvidu', 'webhook']
/** The bars of each group, with colours told apart without colour vision too (Okabe–Ito). */
const bars: { variant: VariantKey; colour: string }[] = [
  { variant: 'server', colour: '#0072B2' },
  { variant: 'floor', colour: '#999999' },
  { variant: 'floorCors', colour: '#E69F00' },
  { variant: 'go', colour: '#009E73' },
]

const width = 860
const left = 90 // runtime names
const right = 70 // values at the end of the longest bars
const plotWidth = width - left - right
const barHeight = 16
const barGap = 4
const groupGap = 12
const font = "system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"

const escape = (text: string) => text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')
const number = (value: number) => Math.round(value).toLocaleString('en-US')
const text = (x: number, y: number, content: string, attributes = '') => `<text x="${x}" y="${y}" ${attributes}>${escape(content)}</text>`

/** A round step for about five ticks from 0 to at least `max`: 1, 2 or 5 times a power of ten. */
function tickStep(max: number): number {
  const rough = max / 5
  const power = 10 ** Math.floor(Math.log10(rough))
  return [1, 2, 5, 10].map((factor) => factor * power).find((step) => step >= rough)!
}

/** One route's panel, its top at `top`: returns its SVG and its height. */
function panel(route: RouteKey, top: number, runtimes: Runtime[], shown: typeof bars, rate: (runtime: Runtime, variant: VariantKey) => number | undefined) {
  const values = runtimes.flatMap((runtime) => shown.map(({ variant }) => rate(runtime, variant) ?? 0))
  const step = tickStep(Math.max(1, ...values))
  const scaleMax = Math.ceil(Math.max(1, ...values) / step) * step
  const x = (value: number) => left + (value / scaleMax) * plotWidth
  const groupHeight = shown.length * (barHeight + barGap) - barGap
  const plotTop = top + 26
  const plotHeight = runtimes.length * (groupHeight + groupGap) + groupGap
  const parts = [text(left, top + 16, scenarios[route].label, 'font-size="15" font-weight="600"')]
  for (let tick = 0; tick <= scaleMax; tick += step) {
    parts.push(`<line x1="${x(tick)}" y1="${plotTop}" x2="${x(tick)}" y2="${plotTop + plotHeight}" stroke="${tick === 0 ? '#444' : '#ddd'}"/>`)
    parts.push(text(x(tick), plotTop + plotHeight + 14, number(tick), 'font-size="11" text-anchor="middle" fill="#444"'))
  }
  parts.push(text(left + plotWidth / 2, plotTop + plotHeight + 32, 'requests per second (median over the rounds)', 'font-size="12" text-anchor="middle" fill="#444"'))
  runtimes.forEach((runtime, g) => {
    const groupTop = plotTop + groupGap + g * (groupHeight + groupGap)
    parts.push(text(left - 10, groupTop + groupHeight / 2 + 5, runtime === 'bun' ? 'Bun' : 'Deno', 'font-size="13" font-weight="600" text-anchor="end"'))
    shown.forEach(({ variant, colour }, b) => {
      const y = groupTop + b * (barHeight + barGap)
      const value = rate(runtime, variant)
      if (value === undefined) {
        parts.push(text(x(0) + 4, y + barHeight - 4, `${variantOf(variant).label}: no clean round`, 'font-size="11" fill="#888"'))
        return
      }
      parts.push(`<rect x="${x(0)}" y="${y}" width="${x(value) - x(0)}" height="${barHeight}" fill="${colour}"><title>${escape(`${runtime} ${variantOf(variant).label}: ${number(value)} req/s`)}</title></rect>`)
      parts.push(text(x(value) + 4, y + barHeight - 4, number(value), 'font-size="11" fill="#222"'))
    })
  })
  return { svg: parts.join('\n'), height: plotTop + plotHeight + 44 - top }
}

/** The chart of a run's targets: a complete SVG document. */
export function chartSvg(targets: Target[], options: Options, machine: string): string {
  const find = finder(targets)
  const shown = bars.filter(({ variant }) => variant !== 'go' || options.goPeer)
  // Each entry as wide as its label (about 0.6 em a character at 12 px), then a gap.
  let legendX = left
  const legend = shown.map(({ variant, colour }) => {
    const entry = `<rect x="${legendX}" y="58" width="12" height="12" fill="${colour}"/>` + text(legendX + 17, 69, variantOf(variant).label, 'font-size="12"')
    legendX += 17 + variantOf(variant).label.length * 7.2 + 24
    return entry
  })
  const header = [
    text(left, 24, 'Requests per second, by route and runtime', 'font-size="18" font-weight="600"'),
    text(left, 44, `${new Date().toISOString().slice(0, 10)}; ${options.rounds} round${options.rounds === 1 ? '' : 's'} of ${roundSeconds} s; ${machine}`, 'font-size="11" fill="#555"'),
    ...legend,
  ]
  const panels: string[] = []
  let top = 86
  for (const route of routes) {
    const drawn = panel(route, top, options.runtimes, shown, (runtime, variant) => medianRate(find(runtime, variant, route)))
    panels.push(drawn.svg)
    top += drawn.height + 10
  }
  const twice = options.goPeer && options.runtimes.length > 1
  const footnote = twice ? [text(left, top + 4, 'The Go peer is one process, measured once per round: its bar is the same in each runtime’s group.', 'font-size="11" fill="#555"')] : []
  const height = top + (twice ? 16 : 0)
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="${font}">`,
    `<rect width="${width}" height="${height}" fill="#ffffff"/>`,
    ...header,
    ...panels,
    ...footnote,
    '</svg>',
    '',
  ].join('\n')
}
