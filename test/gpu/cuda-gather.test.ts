// cudaKvGather against gatherRef on a real GPU: head_dim 64/128 (and odd ones), unitTokens 1/2/4, random and
// adversarial positions, permuted destination slots, misaligned regions, two streams, and a source freed in flight.
import { describe, expect, it } from 'vitest';
import { HostArena } from '../../src/arena.js';
import { KvoffArgumentError, KvoffRangeError } from '../../src/errors.js';
import { blockBytes, gatherRef, type PagedShape } from '../../src/kernels/paged-kv.js';
import { native, type KvRegion } from '../../src/native.js';
import { rng, shuffled } from '../helpers.js';
import { expectSameWords, gpuUsable, randomU16, sweptArenas } from './cuda-helpers.js';

const { dev, keep } = sweptArenas();

interface Setup {
  shape: PagedShape;
  region: KvRegion;
  image: Uint16Array; // the region's bytes, as gatherRef reads them
  blockIds: Int32Array; // [ceil(numTokens / blockSize)] a shuffled subset of the physical blocks
  host: HostArena;
}

/** A region of random 16-bit words at `offset` bytes into a fresh pinned arena; numTokens need not fill the last block. */
function setup(numTokens: number, headDim: number, r: () => number, opts: { numKvHeads?: number; blockSize?: number; offset?: number } = {}): Setup {
  const blockSize = opts.blockSize ?? 16;
  const numKvHeads = opts.numKvHeads ?? 4;
  const offset = opts.offset ?? 0;
  const logical = Math.ceil(numTokens / blockSize);
  const shape: PagedShape = { numBlocks: logical + 3, numKvHeads, headDim, blockSize, dtype: 'bf16' };
  const bytes = shape.numBlocks * blockBytes(shape);
  const host = new HostArena(offset + bytes);
  keep(host);
  const image = randomU16(bytes / 2, r);
  host.write(offset, image);
  const blockIds = shuffled(shape.numBlocks, r).slice(0, logical);
  return { shape, region: { handle: host.handle, offset, ...shape }, image, blockIds, host };
}

/** n positions per head in random order: units of u consecutive tokens inside one block, below numTokens. */
function unitPositions(nh: number, n: number, u: number, numTokens: number, blockSize: number, r: () => number): Int32Array {
  const out = new Int32Array(nh * n);
  for (let h = 0; h < nh; h++) {
    for (let i = 0; i < n; i += u) {
      let p = Math.floor(r() * (numTokens - u + 1));
      const over = (p % blockSize) + u - blockSize;
      if (over > 0) p -= over; // pull the unit back inside its block
      for (let j = 0; j < u; j++) out[h * n + i + j] = p + j;
    }
  }
  return out;
}

describe.skipIf(!gpuUsable)('cudaKvGather', () => {
  for (const D of [64, 128])
    for (const u of [1, 2, 4])
      it(`equals gatherRef: head_dim ${D}, unitTokens ${u}, 150 tokens (not a block multiple)`, async () => {
        const r = rng(D * 10 + u);
        const { shape, region, image, blockIds, host } = setup(150, D, r);
        expect(host.method).toBe('cudaHostRegister');
        const kvHeads = Int32Array.of(3, 0, 2);
        const n = 40;
        const positions = unitPositions(3, n, u, 150, 16, r);
        const want = gatherRef(shape, image, blockIds, kvHeads, n, positions);
        const d = dev(want.byteLength + 64);
        const units = native().cudaKvGather({ ...region, blockIds, kvHeads, n, positions, unitTokens: u, dst: d.ref(64) });
        expect(units).toBe((3 * n) / u);
        await native().cudaStreamSynchronize({});
        expectSameWords(d.readU16(64, want.length), want);
      }, 30_000);

  it('fills only the given (permuted) slots of a resident buffer', async () => {
    for (const u of [1, 2, 4]) {
      const r = rng(100 + u);
      const { shape, region, image, blockIds } = setup(200, 128, r);
      const kvHeads = Int32Array.of(1, 3);
      const n = 24, cap = 64, unit = 2 * 128;
      const positions = unitPositions(2, n, u, 200, 16, r);
      const dstSlots = new Int32Array(2 * n);
      for (let h = 0; h < 2; h++) {
        const starts = shuffled(cap / u, r); // distinct unit-sized slot groups, in random order
        for (let i = 0; i < n; i += u) for (let j = 0; j < u; j++) dstSlots[h * n + i + j] = starts[i / u] * u + j;
      }
      const d = dev(2 * cap * unit * 2);
      const sentinel = new Uint16Array(2 * cap * unit).fill(0x7777);
      d.write(0, sentinel);
      const s = native().cudaStreamCreate();
      native().cudaKvGather({ ...region, blockIds, kvHeads, n, positions, unitTokens: u, dstSlots, dstCapacity: cap, dst: d.ref(0), stream: s });
      await native().cudaStreamSynchronize({ stream: s });
      native().cudaStreamDestroy({ stream: s });
      const dense = gatherRef(shape, image, blockIds, kvHeads, n, positions); // [2, n, unit]
      const want = sentinel.slice();
      for (let h = 0; h < 2; h++)
        for (let i = 0; i < n; i++) want.set(dense.subarray((h * n + i) * unit, (h * n + i + 1) * unit), (h * cap + dstSlots[h * n + i]) * unit);
      expectSameWords(d.readU16(0, want.length), want);
    }
  }, 30_000);

  it('handles n = 1, one head, the last token, and n = 0', async () => {
    const r = rng(7);
    const { shape, region, image, blockIds } = setup(33, 64, r);
    const d = dev(4096);
    for (const p of [0, 15, 16, 32]) {
      const positions = Int32Array.of(p);
      native().cudaKvGather({ ...region, blockIds, kvHeads: Int32Array.of(2), n: 1, positions, dst: d.ref(0) });
      await native().cudaStreamSynchronize({});
      expect(d.readU16(0, 128)).toEqual(gatherRef(shape, image, blockIds, Int32Array.of(2), 1, positions));
    }
    expect(native().cudaKvGather({ ...region, blockIds, kvHeads: Int32Array.of(2), n: 0, positions: new Int32Array(0), dst: d.ref(0) })).toBe(0);
  });

  it('copies correctly at odd alignments and head dims (narrower vector paths)', async () => {
    // [headDim, region offset, dst offset]: 16-byte rows at offset 2 force 2-byte vectors; D 6 gives 24-byte rows (8-byte vectors).
    for (const [D, offset, dstOff] of [[64, 2, 0], [128, 0, 6], [6, 0, 0], [80, 4, 4], [96, 8, 24]]) {
      const r = rng(D + offset);
      const { shape, region, image, blockIds } = setup(70, D, r, { offset, numKvHeads: 2, blockSize: 8 });
      const kvHeads = Int32Array.of(1, 0);
      const n = 12;
      const positions = unitPositions(2, n, 2, 70, 8, r);
      const want = gatherRef(shape, image, blockIds, kvHeads, n, positions);
      const d = dev(want.byteLength + 64);
      native().cudaKvGather({ ...region, blockIds, kvHeads, n, positions, unitTokens: 2, dst: d.ref(dstOff) });
      await native().cudaStreamSynchronize({});
      expectSameWords(d.readU16(dstOff, want.length), want, `D ${D} offset ${offset} dst ${dstOff}`);
    }
  }, 30_000);

  it('gathers a large scattered set (many blocks of the kernel) in one launch', async () => {
    const r = rng(11);
    const numTokens = 16384;
    const { shape, region, image, blockIds } = setup(numTokens, 128, r, { numKvHeads: 8, blockSize: 32 });
    const kvHeads = Int32Array.from({ length: 8 }, (_, i) => 7 - i);
    const n = 4096;
    for (const u of [1, 4]) {
      const positions = unitPositions(8, n, u, numTokens, 32, r);
      const want = gatherRef(shape, image, blockIds, kvHeads, n, positions);
      const d = dev(want.byteLength);
      native().cudaKvGather({ ...region, blockIds, kvHeads, n, positions, unitTokens: u, dst: d.ref(0) });
      await native().cudaStreamSynchronize({});
      expectSameWords(d.readU16(0, want.length), want);
    }
  }, 60_000);

  it('runs on two streams at once, and a source arena freed in flight stays readable until the copy ends', async () => {
    const r = rng(12);
    const a = setup(512, 64, r), b = setup(512, 128, r);
    const kvHeads = Int32Array.of(0, 1, 2, 3);
    const n = 256;
    const pa = unitPositions(4, n, 1, 512, 16, r), pb = unitPositions(4, n, 2, 512, 16, r);
    const wantA = gatherRef(a.shape, a.image, a.blockIds, kvHeads, n, pa);
    const wantB = gatherRef(b.shape, b.image, b.blockIds, kvHeads, n, pb);
    const d = dev(wantA.byteLength + wantB.byteLength);
    const s1 = native().cudaStreamCreate(), s2 = native().cudaStreamCreate();
    for (let rep = 0; rep < 20; rep++) {
      native().cudaKvGather({ ...a.region, blockIds: a.blockIds, kvHeads, n, positions: pa, dst: d.ref(0), stream: s1 });
      native().cudaKvGather({ ...b.region, blockIds: b.blockIds, kvHeads, n, positions: pb, unitTokens: 2, dst: d.ref(wantA.byteLength), stream: s2 });
    }
    b.host.dispose(); // in flight: the sweep's second dispose is a no-op
    await Promise.all([native().cudaStreamSynchronize({ stream: s1 }), native().cudaStreamSynchronize({ stream: s2 })]);
    expectSameWords(d.readU16(0, wantA.length), wantA);
    expectSameWords(d.readU16(wantA.byteLength, wantB.length), wantB);
    native().cudaStreamDestroy({ stream: s1 });
    native().cudaStreamDestroy({ stream: s2 });
  }, 30_000);

  it('refuses a host arena that is not mapped for the GPU, and a destination that is too small', () => {
    const r = rng(13);
    const { region, blockIds } = setup(32, 64, r);
    const pageable = new HostArena(region.numBlocks * blockBytes(region), { pin: false });
    keep(pageable);
    const d = dev(4096);
    const base = { ...region, blockIds, kvHeads: Int32Array.of(0), n: 2, positions: Int32Array.of(0, 1), dst: d.ref(0) };
    const e = (() => { try { native().cudaKvGather({ ...base, handle: pageable.handle }); } catch (err) { return err; } })();
    expect(e).toBeInstanceOf(KvoffArgumentError);
    expect((e as Error).message).toMatch(/pinned and mapped by cudaHostRegister .* for cudaKvGather.handle but received an arena pinned by pageable/);
    expect(() => native().cudaKvGather({ ...base, dst: d.ref(4096 - 256) })).toThrow(/Expected cudaKvGather.dst to fit in its device arena \(4096 bytes\)/);
    expect(() => native().cudaKvGather({ ...base, dst: d.ref(3) })).toThrow('Expected an offset aligned to 2 bytes for cudaKvGather.dst.devOffset but received 3');
    expect(() => native().cudaKvGather({ ...base, positions: Int32Array.of(0, 32) })).toThrow(KvoffRangeError);
  });
});
