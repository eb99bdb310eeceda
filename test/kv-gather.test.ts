// The hot-set gather: scattered (token, head) units copied in runs, sync and on the copy thread, equal the reference.
import { afterEach, describe, expect, it } from 'vitest';
import { HostArena } from '../src/arena.js';
import { KvoffDisposedError, KvoffRangeError } from '../src/errors.js';
import { native, type KvRegion } from '../src/native.js';
import { appendRef, blockBytes, gatherRef, type PagedShape } from '../src/kernels/paged-kv.js';
import { randn, rng, shuffled } from './helpers.js';

const arenas: HostArena[] = [];
afterEach(() => {
  for (const a of arenas.splice(0)) a.dispose();
});

function setup(numTokens: number, D: number, seed: number) {
  const r = rng(seed);
  const shape: PagedShape = { numBlocks: Math.ceil(numTokens / 16) + 2, numKvHeads: 4, headDim: D, blockSize: 16, dtype: 'bf16' };
  const arena = new HostArena(shape.numBlocks * blockBytes(shape));
  arenas.push(arena);
  const blockIds = shuffled(shape.numBlocks, r).slice(0, Math.ceil(numTokens / 16));
  const slots = Int32Array.from({ length: numTokens }, (_, p) => blockIds[Math.floor(p / 16)] * 16 + (p % 16));
  const k = randn(numTokens * 4 * D, r);
  const v = randn(numTokens * 4 * D, r);
  const region: KvRegion = { handle: arena.handle, offset: 0, ...shape };
  native().kvAppend({ ...region, slots, k, v });
  const image = new Uint16Array(shape.numBlocks * blockBytes(shape) / 2);
  appendRef(shape, image, slots, k, v);
  return { r, shape, region, blockIds, image };
}

/** Per head: n positions, a mix of runs of consecutive tokens and isolated ones, crossing block edges. */
function positionsFor(nh: number, n: number, numTokens: number, r: () => number): Int32Array {
  const out = new Int32Array(nh * n);
  for (let h = 0; h < nh; h++) {
    let p = Math.floor(r() * numTokens);
    for (let i = 0; i < n; i++) {
      out[h * n + i] = p;
      p = r() < 0.6 ? (p + 1) % numTokens : Math.floor(r() * numTokens);
    }
  }
  return out;
}

describe('kvGather', () => {
  for (const D of [64, 128]) {
    it(`matches the reference, sync and async (head_dim ${D})`, async () => {
      const { r, shape, region, blockIds, image } = setup(150, D, D);
      const kvHeads = Int32Array.of(3, 0, 2);
      const n = 40;
      const positions = positionsFor(3, n, 150, r);
      const want = gatherRef(shape, image, blockIds, kvHeads, n, positions);
      const dst = new Uint16Array(want.length);
      const runs = native().kvGather({ ...region, blockIds, kvHeads, n, positions, dst });
      expect(dst).toEqual(want);
      expect(runs).toBeLessThan(3 * n); // consecutive tokens went as runs, not one copy per row
      const dev = new HostArena(want.byteLength);
      arenas.push(dev);
      await native().kvGatherAsync({ ...region, blockIds, kvHeads, n, positions, dst: dev.ref(0) });
      expect(new Uint16Array(dev.read(0, want.byteLength).buffer)).toEqual(want);
    });
  }

  it('many gathers on the copy thread, interleaved with attention on the main thread, all land intact', async () => {
    const { r, shape, region, blockIds, image } = setup(300, 64, 5);
    const kvHeads = Int32Array.of(0, 1, 2, 3);
    const jobs = Array.from({ length: 16 }, () => {
      const positions = positionsFor(4, 32, 300, r);
      return { positions, want: gatherRef(shape, image, blockIds, kvHeads, 32, positions), dst: new Uint16Array(4 * 32 * 2 * 64) };
    });
    const pending = jobs.map((j) => native().kvGatherAsync({ ...region, blockIds, kvHeads, n: 32, positions: j.positions, dst: j.dst }));
    const out = new Float32Array(4 * 64);
    const lse = new Float32Array(4);
    for (let i = 0; i < 20; i++) // compute meanwhile, reading the same source region
      native().kvAttend({ ...region, blockIds, numTokens: 300, kvHeads, groupSize: 1, q: randn(4 * 64, r), scale: 0.125, out, lse });
    await Promise.all(pending);
    for (const j of jobs) expect(j.dst).toEqual(j.want);
  });

  it('an arena freed while a gather is in flight stays alive until the copy ends', async () => {
    const { region, blockIds } = setup(64, 64, 9);
    const src = arenas.pop()!;
    const p = native().kvGatherAsync({ ...region, blockIds, kvHeads: Int32Array.of(0), n: 64, positions: Int32Array.from({ length: 64 }, (_, i) => i), dst: new Uint16Array(64 * 128) });
    src.dispose();
    await expect(p).resolves.toBeGreaterThan(0);
    expect(() => native().kvGather({ ...region, blockIds, kvHeads: Int32Array.of(0), n: 1, positions: Int32Array.of(0), dst: new Uint16Array(128) })).toThrow(KvoffDisposedError);
  });

  it('with dstSlots, units land in the given slots of a resident buffer and nothing else is touched', () => {
    const { r, shape, region, blockIds, image } = setup(120, 64, 4);
    const kvHeads = Int32Array.of(1, 3);
    const n = 10, cap = 32, unit = 2 * 64;
    const positions = positionsFor(2, n, 120, r);
    const dstSlots = Int32Array.from({ length: 2 * n }, (_, i) => (i % n) * 3 % cap); // scattered, some adjacent
    const dst = new Uint16Array(2 * cap * unit).fill(7);
    native().kvGather({ ...region, blockIds, kvHeads, n, positions, dst, dstSlots, dstCapacity: cap });
    const dense = gatherRef(shape, image, blockIds, kvHeads, n, positions); // [2, n, unit]
    const want = new Uint16Array(2 * cap * unit).fill(7);
    for (let h = 0; h < 2; h++)
      for (let i = 0; i < n; i++) want.set(dense.subarray((h * n + i) * unit, (h * n + i + 1) * unit), (h * cap + dstSlots[h * n + i]) * unit);
    expect(dst).toEqual(want);
    expect(() => native().kvGather({ ...region, blockIds, kvHeads, n, positions, dst, dstSlots: dstSlots.map(() => cap), dstCapacity: cap })).toThrow(KvoffRangeError);
  });

  it('refuses out-of-range positions, heads and block ids, and a wrong-sized destination', () => {
    const { region, blockIds } = setup(40, 64, 3);
    const base = { ...region, blockIds, kvHeads: Int32Array.of(0), n: 2, positions: Int32Array.of(0, 1), dst: new Uint16Array(2 * 128) };
    expect(() => native().kvGather({ ...base, positions: Int32Array.of(0, 48) })).toThrow('Expected kvGather.positions in [0, 47] but received 48');
    expect(() => native().kvGather({ ...base, kvHeads: Int32Array.of(4) })).toThrow(KvoffRangeError);
    expect(() => native().kvGather({ ...base, blockIds: Int32Array.of(0, 99, 1) })).toThrow(KvoffRangeError);
    expect(() => native().kvGather({ ...base, dst: new Uint16Array(10) })).toThrow('Expected Uint16Array(256) for kvGather.dst but received Uint16Array(10)');
    expect(() => native().kvGatherAsync({ ...base, positions: Int32Array.of(-1, 0) })).toThrow(KvoffRangeError);
  });
});
