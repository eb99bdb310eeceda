// Shard planning for CPU attention: a grid of head groups × contiguous block ranges that keeps every thread busy.

export interface PlanInput {
  heads: number; // KV heads to attend (length of kvHeads)
  numTokens: number;
  blockSize: number;
  threads: number;
  /** Smallest block range worth its own shard; ranges below it cost more to dispatch and merge than they save. */
  minBlocksPerRange?: number;
}

/** Heads [head0, head1) of the request, and its tokens [token0, token1) = blocks [block0, block1). */
export interface Shard {
  group: number; // index into headGroups
  range: number; // index into ranges; partials of the same head group merge across ranges
  head0: number;
  head1: number;
  block0: number;
  block1: number;
  token0: number;
  token1: number;
}

export interface ShardPlan {
  headGroups: Array<{ head0: number; head1: number }>;
  ranges: Array<{ block0: number; block1: number; token0: number; token1: number }>;
  shards: Shard[]; // every (group, range) pair, group-major
}

/**
 * Bytes of one shard below which splitting a request further costs more in dispatch and merge than it saves. On the
 * H100 host (16 threads), 2 or 4 shards a thread of 1-2 MiB halved a 32 MiB layer's rate; at 8 MiB and up they
 * gained 20% (bench/results/h100-pool-scaling.txt).
 */
export const MIN_SHARD_BYTES = 8 << 20;
/** The most shards a thread is planned: enough that a slow thread's share is picked up by the others. */
export const MAX_SHARDS_PER_THREAD = 4;

/**
 * How many shards a thread gets for a request of `bytes` KV: 1 for small requests, up to MAX_SHARDS_PER_THREAD
 * once every shard still holds MIN_SHARD_BYTES. One shard a thread makes the request wait on its slowest thread; on
 * a shared host a core taken by a neighbour for a few ms stalls the whole layer. With several, the queue hands the
 * slow thread's remaining shards to the others.
 */
export function shardsPerThread(bytes: number, threads: number): number {
  const k = Math.floor(bytes / (Math.max(1, threads) * MIN_SHARD_BYTES));
  return Math.max(1, Math.min(MAX_SHARDS_PER_THREAD, k));
}

/** Splits [0, n) into k contiguous parts whose sizes differ by at most one, larger parts first. */
export function splitEven(n: number, k: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  const base = Math.floor(n / k);
  const extra = n % k;
  let at = 0;
  for (let i = 0; i < k; i++) {
    const size = base + (i < extra ? 1 : 0);
    out.push([at, at + size]);
    at += size;
  }
  return out;
}

/**
 * Chooses gH head groups × gB block ranges (gH·gB ≤ threads) minimizing the largest shard's work
 * (heads × tokens). Ties go to fewer shards, then fewer ranges, since each extra range costs a merge.
 * Splitting blocks is what keeps threads busy when there are fewer heads than threads, and it also
 * beats uneven head splits (8 heads on 3 threads: 3 ranges of 8 heads do 8/3 each, not 3).
 */
export function planShards(p: PlanInput): ShardPlan {
  const heads = p.heads;
  const bs = p.blockSize;
  const blocks = Math.ceil(p.numTokens / bs);
  const threads = Math.max(1, Math.floor(p.threads));
  const minBlocks = Math.max(1, Math.floor(p.minBlocksPerRange ?? 1));
  if (heads <= 0) return { headGroups: [], ranges: [], shards: [] };
  const maxRanges = Math.max(1, Math.floor(blocks / minBlocks));
  const rangeTokens = (gB: number): number => Math.min(p.numTokens, Math.ceil(blocks / gB) * bs);
  let best = { gH: 1, gB: 1, cost: Infinity };
  for (let gH = 1; gH <= Math.min(heads, threads); gH++) {
    for (let gB = 1; gB <= Math.min(maxRanges, Math.floor(threads / gH)); gB++) {
      const cost = Math.ceil(heads / gH) * rangeTokens(gB);
      const n = gH * gB;
      const bestN = best.gH * best.gB;
      if (cost < best.cost || (cost === best.cost && (n < bestN || (n === bestN && gB < best.gB)))) best = { gH, gB, cost };
    }
  }
  const headGroups = splitEven(heads, best.gH).map(([head0, head1]) => ({ head0, head1 }));
  const ranges = splitEven(blocks, best.gB).map(([block0, block1]) => ({
    block0,
    block1,
    token0: Math.min(p.numTokens, block0 * bs),
    token1: Math.min(p.numTokens, block1 * bs),
  }));
  const shards: Shard[] = [];
  headGroups.forEach((g, group) => ranges.forEach((r, range) => shards.push({ group, range, ...g, ...r })));
  return { headGroups, ranges, shards };
}

/** [lo, hi): the entries of a sorted exclude list that fall in tokens [token0, token1). */
export function excludeBounds(exclude: ArrayLike<number>, token0: number, token1: number): [number, number] {
  return [lowerBound(exclude, token0), lowerBound(exclude, token1)];
}

function lowerBound(a: ArrayLike<number>, x: number): number {
  let lo = 0;
  let hi = a.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (a[mid]! < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
