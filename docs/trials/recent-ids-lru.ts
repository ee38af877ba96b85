// Trial: RecentIds (index.ts's ring) against the same contract on lru-cache. Usage: bun run docs/trials/recent-ids-lru.ts
// The lru-cache version is trial-lru.ts: index.ts with recent-ids-lru-cache.diff's RecentIds (see README.md).
import { RecentIds, type Claim } from '../../index.ts'
import { RecentIds as LruRecentIds } from '../../trial-lru.ts'

type Ids = { claim(id: string, now?: number): Claim; complete(id: string, now?: number): void }
const makers: Record<string, () => Ids> = { ring: () => new RecentIds(), lru: () => new LruRecentIds() }

function loop(ids: Ids, n: number, offset: number): number {
  const names = Array.from({ length: n }, (_, i) => `EV_${offset + i}`)
  const start = performance.now()
  for (let i = 0; i < n; i++) {
    const id = names[i]!
    if (ids.claim(id) === 'new') ids.complete(id)
  }
  return ((performance.now() - start) * 1e6) / n // ns per id
}

function heapFor(make: () => Ids): number {
  Bun.gc(true)
  const before = process.memoryUsage().heapUsed
  const keep: Ids[] = []
  for (let k = 0; k < 10; k++) {
    const ids = make()
    for (let i = 0; i < 10_000; i++) ids.complete(`EV_${k}_${i}_${'x'.repeat(0)}`)
    keep.push(ids)
  }
  Bun.gc(true)
  const after = process.memoryUsage().heapUsed
  if (keep.length !== 10) throw new Error()
  return (after - before) / 10
}

const rounds = Number(process.argv[2] ?? 11)
const n = 200_000
const results: Record<string, number[]> = { ring: [], lru: [] }
const instances = { ring: makers.ring!(), lru: makers.lru!() }
for (let r = 0; r < rounds; r++) {
  for (const name of r % 2 ? ['lru', 'ring'] : ['ring', 'lru']) results[name]!.push(loop(instances[name as 'ring'], n, r * n))
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!
for (const name of ['ring', 'lru']) {
  console.log(`${name}: claim+complete ${median(results[name]!).toFixed(0)} ns/id (median of ${rounds} × ${n} distinct ids; all: ${results[name]!.map((x) => x.toFixed(0)).join(' ')}), heap for 10,000 ids ${(heapFor(makers[name]!) / 1024).toFixed(0)} KiB`)
}
