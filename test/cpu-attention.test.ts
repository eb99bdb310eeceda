// CPU attention pool: sharded + merged attention equals one native call; crash, abort and dispose behave; shard planning.
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import fc from 'fast-check';
import { HostArena } from '../src/arena.js';
import { native, type KvDtype, type KvRegion } from '../src/native.js';
import { blockBytes } from '../src/kernels/paged-kv.js';
import { CpuAttentionPool, KvoffWorkerError, type CpuAttentionRequest } from '../src/cpu-attention.js';
import { excludeBounds, planShards, shardsPerThread, splitEven } from '../src/cpu-attention-plan.js';
import { KvoffDisposedError, KvoffRangeError } from '../src/errors.js';
import { randn, rng, shuffled } from './helpers.js';

const arenas: HostArena[] = [];
afterEach(() => {
  for (const a of arenas.splice(0)) a.dispose();
});

interface KvCase {
  groupSize: number;
  headDim: number;
  dtype: KvDtype;
  numTokens: number;
  numKvHeads?: number;
  blockSize?: number;
}

/** Random KV in a fresh arena at shuffled physical blocks, plus a random query for every head. */
function buildKv(c: KvCase, seed: number) {
  const r = rng(seed);
  const numKvHeads = c.numKvHeads ?? 3;
  const blockSize = c.blockSize ?? 16;
  const used = Math.max(1, Math.ceil(c.numTokens / blockSize));
  const numBlocks = used + 2; // spare blocks so physical ids are not contiguous
  const shape = { numKvHeads, headDim: c.headDim, blockSize };
  const offset = 128;
  const arena = new HostArena(offset + numBlocks * blockBytes(shape));
  arenas.push(arena);
  const region: KvRegion = { handle: arena.handle, offset, numBlocks, ...shape, dtype: c.dtype };
  const blockIds = shuffled(numBlocks, r).slice(0, used);
  const slots = Int32Array.from({ length: c.numTokens }, (_, p) => blockIds[Math.floor(p / blockSize)]! * blockSize + (p % blockSize));
  const n = c.numTokens * numKvHeads * c.headDim;
  native().kvAppend({ ...region, slots, k: randn(n, r), v: randn(n, r) });
  // Reversed head order: shards must follow kvHeads' order, not the region's.
  const kvHeads = Int32Array.from({ length: numKvHeads }, (_, h) => numKvHeads - 1 - h);
  const q = randn(numKvHeads * c.groupSize * c.headDim, r);
  return { r, region, blockIds, kvHeads, q };
}

function request(kv: ReturnType<typeof buildKv>, c: KvCase, exclude?: Int32Array): CpuAttentionRequest {
  const nh = kv.kvHeads.length;
  return {
    region: kv.region, blockIds: kv.blockIds, numTokens: c.numTokens, kvHeads: kv.kvHeads, groupSize: c.groupSize, q: kv.q,
    scale: 1 / Math.sqrt(c.headDim),
    out: new Float32Array(nh * c.groupSize * c.headDim).fill(NaN),
    lse: new Float32Array(nh * c.groupSize).fill(NaN),
    ...(exclude ? { exclude } : {}),
  };
}

/** The reference: one native call over the whole sequence in this thread. */
function direct(req: CpuAttentionRequest): { out: Float32Array; lse: Float32Array } {
  const out = new Float32Array(req.out.length);
  const lse = new Float32Array(req.lse.length);
  native().kvAttend({ ...req.region, ...req, out, lse });
  return { out, lse };
}

function expectClose(got: Float32Array, ref: Float32Array, what: string, rel: boolean): void {
  let worst = 0;
  for (let i = 0; i < ref.length; i++) {
    if (got[i] === ref[i]) continue; // also covers -inf == -inf
    worst = Math.max(worst, Math.abs(got[i]! - ref[i]!) / (rel ? 1 + Math.abs(ref[i]!) : 1));
    if (Number.isNaN(got[i])) worst = Infinity;
  }
  expect(worst, what).toBeLessThanOrEqual(1e-5);
}

/** Positions on both sides of every block-range boundary the pool will cut at, plus random ones. */
function straddlingExclude(c: KvCase, threads: number, r: () => number): Int32Array {
  const plan = planShards({ heads: c.numKvHeads ?? 3, numTokens: c.numTokens, blockSize: c.blockSize ?? 16, threads });
  const s = new Set<number>();
  for (const range of plan.ranges) for (const p of [range.token0 - 1, range.token0, range.token0 + 1, range.token1 - 1]) s.add(p);
  for (let p = 0; p < c.numTokens; p++) if (r() < 0.2) s.add(p);
  return Int32Array.from([...s].filter((p) => p >= 0 && p < c.numTokens).sort((a, b) => a - b));
}

const threadCounts = [1, 2, 3, 4];
const pools = new Map<number, CpuAttentionPool>();
beforeAll(() => {
  for (const t of threadCounts) pools.set(t, new CpuAttentionPool({ threads: t }));
});
afterAll(async () => {
  for (const p of pools.values()) await p.dispose();
});

const cases: KvCase[] = [];
for (const groupSize of [1, 4, 8])
  for (const headDim of [64, 128])
    for (const dtype of ['f16', 'bf16'] as const) for (const numTokens of [1, 17, 16 * 6 + 5]) cases.push({ groupSize, headDim, dtype, numTokens });
// Odd block size and a single KV head: every thread's work comes from splitting blocks.
cases.push({ groupSize: 4, headDim: 64, dtype: 'bf16', numTokens: 5 * 9 + 2, numKvHeads: 1, blockSize: 5 });
cases.push({ groupSize: 8, headDim: 128, dtype: 'f16', numTokens: 16 * 8, numKvHeads: 8, blockSize: 16 });

describe('CpuAttentionPool sharded attention', () => {
  it.each(cases.map((c, i) => [i, c] as const))('case %i equals one native kvAttend on 1-4 threads', async (i, c) => {
    const kv = buildKv(c, 500 + i);
    for (const threads of threadCounts) {
      for (const exclude of [undefined, straddlingExclude(c, threads, kv.r)]) {
        const req = request(kv, c, exclude);
        const ref = direct(req);
        await pools.get(threads)!.attend(req);
        const tag = `threads ${threads}, exclude ${exclude ? exclude.length : 'none'}`;
        expectClose(req.out, ref.out, `o (${tag})`, true);
        expectClose(req.lse, ref.lse, `lse (${tag})`, false);
      }
    }
  });

  it('several shards a thread (queued, taken by whichever thread is free) equal one native kvAttend', async () => {
    const pool = new CpuAttentionPool({ threads: 2, shardsPerThread: 4 });
    try {
      for (const [i, c] of [cases[cases.length - 1]!, cases[cases.length - 2]!, cases[5]!].entries()) {
        const kv = buildKv(c, 900 + i);
        for (const exclude of [undefined, straddlingExclude(c, 8, kv.r)]) {
          const req = request(kv, c, exclude);
          const ref = direct(req);
          await pool.attend(req);
          expectClose(req.out, ref.out, `o (case ${i}, exclude ${exclude ? exclude.length : 'none'})`, true);
          expectClose(req.lse, ref.lse, `lse (case ${i})`, false);
        }
      }
    } finally {
      await pool.dispose();
    }
  });

  it('plans no more shards than the threads plus a capped queue take (piscina would reject the rest)', async () => {
    const c = cases[cases.length - 1]!;
    const kv = buildKv(c, 950);
    const pool = new CpuAttentionPool({ threads: 2, shardsPerThread: 8, maxQueue: 1 });
    try {
      const req = request(kv, c);
      const ref = direct(req);
      await pool.attend(req); // 16 shards would overflow a queue of 1; 3 fit
      expectClose(req.out, ref.out, 'o', true);
      expectClose(req.lse, ref.lse, 'lse', false);
    } finally {
      await pool.dispose();
    }
  });

  it('rejects a shardsPerThread that is not auto or an integer in [1, 64]', () => {
    for (const bad of [0, 1.5, 65, Number.NaN, 'many'])
      expect(() => new CpuAttentionPool({ threads: 1, shardsPerThread: bad as number })).toThrow(/'auto' or an integer in \[1, 64\] for CpuAttentionPool shardsPerThread/);
  });

  it('a fully excluded range or sequence merges to the right result (o = 0, lse = -inf when all)', async () => {
    const c: KvCase = { groupSize: 4, headDim: 64, dtype: 'bf16', numTokens: 64, numKvHeads: 1 };
    const kv = buildKv(c, 11);
    const pool = pools.get(4)!;
    const all = Int32Array.from({ length: 64 }, (_, p) => p);
    for (const exclude of [all.slice(0, 16), all.slice(16, 32), all]) {
      const req = request(kv, c, exclude);
      const ref = direct(req);
      await pool.attend(req);
      expectClose(req.out, ref.out, 'o', true);
      expectClose(req.lse, ref.lse, 'lse', false);
    }
    const req = request(kv, c, all);
    await pool.attend(req);
    expect(Array.from(req.out).every((x) => x === 0)).toBe(true);
    expect(Array.from(req.lse).every((x) => x === -Infinity)).toBe(true);
  });

  it('zero tokens gives o = 0 and lse = -inf; buffers on SharedArrayBuffers are accepted', async () => {
    const c: KvCase = { groupSize: 4, headDim: 64, dtype: 'f16', numTokens: 40 };
    const kv = buildKv(c, 12);
    const empty = request(kv, { ...c, numTokens: 0 });
    await pools.get(2)!.attend(empty);
    expect(Array.from(empty.out).every((x) => x === 0) && Array.from(empty.lse).every((x) => x === -Infinity)).toBe(true);
    const shared = <T extends Float32Array | Int32Array>(a: T): T => {
      const s = new (a.constructor as new (b: SharedArrayBuffer) => T)(new SharedArrayBuffer(a.byteLength));
      s.set(a);
      return s;
    };
    for (const threads of [1, 3]) {
      const plain = request(kv, c);
      const ref = direct(plain);
      const req = { ...plain, q: shared(kv.q), blockIds: shared(kv.blockIds), out: shared(plain.out), lse: shared(plain.lse) };
      await pools.get(threads)!.attend(req);
      expectClose(req.out, ref.out, 'o', true);
      expectClose(req.lse, ref.lse, 'lse', false);
    }
  });

  it('concurrent requests on one pool do not share scratch', async () => {
    const c: KvCase = { groupSize: 4, headDim: 64, dtype: 'bf16', numTokens: 16 * 7 + 3 };
    const kvs = [0, 1, 2, 3, 4].map((k) => buildKv(c, 40 + k));
    const reqs = kvs.map((kv, k) => request(kv, c, k % 2 ? straddlingExclude(c, 3, kv.r) : undefined));
    const refs = reqs.map(direct);
    await Promise.all(reqs.map((req) => pools.get(3)!.attend(req)));
    reqs.forEach((req, k) => expectClose(req.out, refs[k]!.out, `o of request ${k}`, true));
  });

  it('rejects bad requests in the main thread, naming the field', async () => {
    const c: KvCase = { groupSize: 4, headDim: 64, dtype: 'f16', numTokens: 40 };
    const kv = buildKv(c, 13);
    const pool = pools.get(2)!;
    await expect(pool.attend(request(kv, c, Int32Array.of(3, 40)))).rejects.toBeInstanceOf(KvoffRangeError);
    await expect(pool.attend(request(kv, c, Int32Array.of(5, 5)))).rejects.toThrow(/strictly increasing/);
    await expect(pool.attend({ ...request(kv, c), numTokens: 49 })).rejects.toThrow(/numTokens/);
    await expect(pool.attend({ ...request(kv, c), q: new Float32Array(3) })).rejects.toThrow(/attend q/);
    // Kernel errors raised inside a worker come back as the same typed class.
    const badBlock = { ...request(kv, c), blockIds: Int32Array.of(0, 1, 99) };
    await expect(pool.attend(badBlock)).rejects.toBeInstanceOf(KvoffRangeError);
  });
});

describe('CpuAttentionPool failure handling', () => {
  const c: KvCase = { groupSize: 4, headDim: 64, dtype: 'bf16', numTokens: 16 * 5 + 3 };

  it('a crashed worker rejects with KvoffWorkerError, and the pool keeps working on fresh threads', async () => {
    const pool = new CpuAttentionPool({ threads: 2 });
    try {
      const err = await pool.runTask({ kind: 'crash' }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(KvoffWorkerError);
      expect((err as KvoffWorkerError).code).toBe('KVOFF_E_WORKER');
      expect((err as KvoffWorkerError).exitCode).toBe(1);

      // attend() itself: one of its shards lands on a dying thread.
      const kv = buildKv(c, 21);
      const runTask = pool.runTask.bind(pool);
      const spy = vi.spyOn(pool, 'runTask').mockImplementationOnce((_task, opts) => runTask({ kind: 'crash' }, opts));
      await expect(pool.attend(request(kv, c))).rejects.toBeInstanceOf(KvoffWorkerError);
      spy.mockRestore();

      const req = request(kv, c);
      const ref = direct(req);
      await pool.attend(req);
      expectClose(req.out, ref.out, 'o after crashes', true);
      // Both threads exist again: two tasks that each hold a thread land on distinct threads
      // (retried, since a replacement thread may still be starting on a loaded machine).
      let distinct = 0;
      for (let attempt = 0; attempt < 50 && distinct < 2; attempt++) {
        const held = await Promise.all([pool.runTask({ kind: 'noop', holdMs: 50 }), pool.runTask({ kind: 'noop', holdMs: 50 })]);
        distinct = new Set(held.map((h) => h.threadId)).size;
      }
      expect(distinct).toBe(2);
    } finally {
      await pool.dispose();
    }
  });

  it('abort rejects with an AbortError, queued or running, and the pool survives', async () => {
    const pool = new CpuAttentionPool({ threads: 1 });
    try {
      const kv = buildKv(c, 22);
      const pre = new AbortController();
      pre.abort();
      await expect(pool.attend(request(kv, c), { signal: pre.signal })).rejects.toMatchObject({ name: 'AbortError' });

      // Queued behind a task that holds the only thread for 10 s: the abort must not wait for it.
      const holder = new AbortController();
      const hold = pool.runTask({ kind: 'noop', holdMs: 10_000 }, { signal: holder.signal });
      const ac = new AbortController();
      const pending = pool.attend(request(kv, c), { signal: ac.signal });
      setTimeout(() => ac.abort(new Error('user stop')), 20);
      const first = await Promise.race([pending.then(() => 'resolved', (e: unknown) => e), hold.then(() => 'hold finished', () => 'hold failed')]);
      expect(first).toMatchObject({ name: 'AbortError' });

      // Running: aborting ends the holding thread itself; piscina replaces it.
      holder.abort();
      await expect(hold).rejects.toMatchObject({ name: 'AbortError' });
      const req = request(kv, c);
      const ref = direct(req);
      await pool.attend(req);
      expectClose(req.out, ref.out, 'o after aborts', true);
    } finally {
      await pool.dispose();
    }
  });

  it('dispose() rejects in-flight work and every later call with KvoffDisposedError', async () => {
    const pool = new CpuAttentionPool({ threads: 1 });
    const kv = buildKv(c, 23);
    const settle = (p: Promise<unknown>) => p.then(() => 'resolved', (e: unknown) => e);
    const inFlight = settle(pool.runTask({ kind: 'noop', holdMs: 200 }));
    const queued = settle(pool.attend(request(kv, c)));
    await pool.dispose();
    expect(await inFlight).toBeInstanceOf(KvoffDisposedError);
    expect(await queued).toBeInstanceOf(KvoffDisposedError);
    await expect(pool.attend(request(kv, c))).rejects.toBeInstanceOf(KvoffDisposedError);
    await expect(pool.runTask({ kind: 'noop' })).rejects.toBeInstanceOf(KvoffDisposedError);
    await pool.dispose(); // idempotent
  });

  it('supports await using', async () => {
    const kv = buildKv(c, 24);
    let escaped: CpuAttentionPool;
    {
      await using pool = new CpuAttentionPool({ threads: 1 });
      escaped = pool;
      await pool.attend(request(kv, c));
    }
    await expect(escaped.attend(request(kv, c))).rejects.toBeInstanceOf(KvoffDisposedError);
  });
});

describe('planShards', () => {
  const coverage = (heads: number, numTokens: number, blockSize: number, threads: number, minBlocksPerRange?: number) => {
    const plan = planShards({ heads, numTokens, blockSize, threads, ...(minBlocksPerRange ? { minBlocksPerRange } : {}) });
    const seen = new Uint8Array(heads * numTokens);
    for (const s of plan.shards) {
      expect(s.token0).toBe(Math.min(numTokens, s.block0 * blockSize));
      expect(s.token1).toBe(Math.min(numTokens, s.block1 * blockSize));
      for (let h = s.head0; h < s.head1; h++) for (let t = s.token0; t < s.token1; t++) seen[h * numTokens + t]!++;
    }
    expect(seen.every((x) => x === 1)).toBe(true); // every (head, token) exactly once
    expect(plan.shards.length).toBeLessThanOrEqual(Math.max(1, threads));
    expect(plan.shards.length).toBe(plan.headGroups.length * plan.ranges.length);
    return plan;
  };

  it('covers every head × token exactly once, never more shards than threads', () => {
    for (const heads of [1, 2, 3, 8, 32])
      for (const numTokens of [1, 15, 16, 17, 100, 32768])
        for (const threads of [1, 2, 3, 4, 7, 16]) for (const blockSize of [1, 5, 16]) coverage(heads, numTokens, blockSize, threads);
  });

  it('splits heads when there are enough, blocks when there are not', () => {
    const a = coverage(8, 32768, 16, 2);
    expect([a.headGroups.length, a.ranges.length]).toEqual([2, 1]);
    const b = coverage(8, 32768, 16, 16);
    expect([b.headGroups.length, b.ranges.length]).toEqual([8, 2]);
    const c = coverage(1, 1000, 16, 4);
    expect([c.headGroups.length, c.ranges.length]).toEqual([1, 4]);
    // 8 heads on 3 threads: three block ranges of all heads beat head groups of 3, 3, 2.
    const d = coverage(8, 32768, 16, 3);
    expect([d.headGroups.length, d.ranges.length]).toEqual([1, 3]);
  });

  it('keeps ranges balanced and respects minBlocksPerRange', () => {
    const p = coverage(2, 16 * 10, 16, 8);
    const sizes = p.ranges.map((r) => r.block1 - r.block0);
    expect(Math.max(...sizes) - Math.min(...sizes)).toBeLessThanOrEqual(1);
    const q = coverage(1, 16 * 10, 16, 8, 4);
    expect(q.ranges.length).toBe(2);
    expect(coverage(3, 1, 16, 4).ranges.length).toBe(1); // one block cannot be split
  });

  it('gives large requests up to 4 shards a thread, each of at least 8 MiB, and small ones 1', () => {
    const MiB = 1 << 20;
    expect(shardsPerThread(7.8 * MiB, 2)).toBe(1); // the demo model's layer
    expect(shardsPerThread(16 * 8 * MiB * 2, 16)).toBe(2);
    expect(shardsPerThread(512 * MiB, 16)).toBe(4); // the 8B shape's layer at 131k
    expect(shardsPerThread(512 * MiB, 0)).toBe(4);
    fc.assert(fc.property(fc.double({ min: 0, max: 2 ** 36, noNaN: true }), fc.integer({ min: 1, max: 256 }), (bytes, threads) => {
      const k = shardsPerThread(bytes, threads);
      return k >= 1 && k <= 4 && (k === 1 || bytes / (k * threads) >= 8 * MiB);
    }));
  });

  it('handles zero heads and zero tokens', () => {
    expect(planShards({ heads: 0, numTokens: 10, blockSize: 4, threads: 4 }).shards).toEqual([]);
    const z = planShards({ heads: 2, numTokens: 0, blockSize: 4, threads: 4 });
    expect(z.shards.length).toBe(1);
    expect(z.ranges).toEqual([{ block0: 0, block1: 0, token0: 0, token1: 0 }]);
  });

  it('splitEven and excludeBounds', () => {
    expect(splitEven(10, 3)).toEqual([[0, 4], [4, 7], [7, 10]]);
    expect(splitEven(2, 3)).toEqual([[0, 1], [1, 2], [2, 2]]);
    const ex = Int32Array.of(0, 3, 4, 9, 15, 16);
    expect(excludeBounds(ex, 0, 4)).toEqual([0, 2]);
    expect(excludeBounds(ex, 4, 16)).toEqual([2, 5]);
    expect(excludeBounds(ex, 16, 20)).toEqual([5, 6]);
    expect(excludeBounds(ex, 10, 15)).toEqual([4, 4]);
    expect(excludeBounds(new Int32Array(0), 0, 5)).toEqual([0, 0]);
  });
});
