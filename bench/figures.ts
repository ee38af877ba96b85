// The figures the report shows, as numbers: medians and per-round ratios over the rounds left after
// discarding those with problems, looked up by runtime, process and route. The tables read them from
// here, and so can anything else that shows a run.
import { median, type WrkResult } from './harness.ts'
import type { Round, Target } from './rounds.ts'
import type { RouteKey } from './scenarios.ts'
import type { Runtime } from '../tests/server.ts'
import { variantOf, type VariantKey } from './variants.ts'

export const rate = (round: Round) => round.result.requests / (round.result.durationUs / 1e6)
/** Requests answered per second of the process's CPU time: what the work of one request costs, whatever else ran. */
export const efficiency = (round: Round) => round.result.requests / (round.cpuMicros / 1e6)
const cpuMicrosPerRequest = (round: Round) => round.cpuMicros / round.result.requests
const isClean = (round: Round | undefined): round is Round => round !== undefined && round.problems.length === 0

export interface Ratio {
  median: number
  low: number
  high: number
  /** Rounds where both sides were clean. */
  rounds: number
}

/** The per-round ratio numerator ÷ denominator of requests/s (or of another measure), over the rounds clean on both sides. */
export function ratio(numerator: Target | undefined, denominator: Target | undefined, measure = rate): Ratio | undefined {
  if (!numerator || !denominator) return undefined
  const ratios = numerator.rounds.flatMap((round, i) => {
    const other = denominator.rounds[i]
    return isClean(round) && isClean(other) ? [measure(round) / measure(other)] : []
  })
  if (ratios.length === 0) return undefined
  return { median: median(ratios)!, low: Math.min(...ratios), high: Math.max(...ratios), rounds: ratios.length }
}

const cleanRounds = (target: Target) => target.rounds.filter(isClean)
export const medianRate = (target: Target | undefined) => target && median(cleanRounds(target).map(rate))
export const medianCpu = (target: Target | undefined) => target && median(cleanRounds(target).map(cpuMicrosPerRequest))
export const medianLatencyMs = (target: Target, pick: (result: WrkResult) => number) => {
  const value = median(cleanRounds(target).map((round) => pick(round.result)))
  return value === undefined ? undefined : value / 1000
}

/**
 * Looks up the target of a runtime, process and route, if it was measured; a process on no runtime
 * (the Go peer, measured once per round) is found for every runtime, beside that runtime's rows.
 */
export type Find = (runtime: Runtime, variant: VariantKey, route: RouteKey) => Target | undefined

export function finder(targets: Target[]): Find {
  const byKey = new Map(targets.map((target) => [`${target.runtime} ${target.variant} ${target.route}`, target]))
  return (runtime, variant, route) => byKey.get(`${variantOf(variant).command ? undefined : runtime} ${variant} ${route}`)
}
