// cudaKvGatherDevice (positions and block table in device memory, as a top-k leaves them) against gatherRef:
// every KV head, destination slots at an offset, a block table that scatters, and out-of-range ids clamped.
import { describe, expect, it } from 'vitest';
import { HostArena } from '../../src/arena.js';
import { blockBytes, gatherRef, type PagedShape } from '../../src/kernels/paged-kv.js';
import { native } from '../../src/native.js';
import { rng, shuffled } from '../helpers.js';
import { expectSameWords, gpuUsable, randomU16, sweptArenas } from './cuda-helpers.js';

const { dev, keep } = sweptArenas();

describe.skipIf(!gpuUsable)('cudaKvGatherDevice', () => {
  for (const D of [32, 64, 128])
    it(`equals gatherRef into slots [dstSlot, dstSlot + n) of every head: head_dim ${D}`, async () => {
      const r = rng(D);
      const H = 4;
      const numTokens = 333; // not a block multiple
      const shape: PagedShape = { numBlocks: 30, numKvHeads: H, headDim: D, blockSize: 16, dtype: 'bf16' };
      const host = new HostArena(shape.numBlocks * blockBytes(shape));
      keep(host);
      const image = randomU16(host.bytes / 2, r);
      host.write(0, image);
      const blockIds = shuffled(shape.numBlocks, r).slice(0, Math.ceil(numTokens / 16));
      const n = 37;
      const ld = 40;
      const positions = new Int32Array(H * ld).fill(-1); // padding past n must not be read
      for (let h = 0; h < H; h++) for (let j = 0; j < n; j++) positions[h * ld + j] = Math.floor(r() * numTokens);
      const dense = new Int32Array(H * n);
      for (let h = 0; h < H; h++) dense.set(positions.subarray(h * ld, h * ld + n), h * n);
      const want = gatherRef(shape, image, blockIds, Int32Array.from({ length: H }, (_, h) => h), n, dense); // [H, n, 2, D]
      const cap = n + 9;
      const slot = 5;
      const io = dev(4096 + H * n * 8 + H * ld * 4);
      io.write(0, blockIds);
      io.write(1024, positions);
      const dst = dev(H * cap * 4 * D);
      const units = native().cudaKvGatherDevice({
        handle: host.handle, offset: 0, ...shape, blockTable: io.ref(0), tableLen: blockIds.length, positions: io.ref(1024), ldPositions: ld, n,
        dst: dst.ref(0), dstCapacity: cap, dstSlot: slot, table: io.ref(4096),
      });
      expect(units).toBe(H * n);
      await native().cudaStreamSynchronize({});
      for (let h = 0; h < H; h++)
        expectSameWords(dst.readU16((h * cap + slot) * 4 * D, n * 2 * D), want.subarray(h * n * 2 * D, (h + 1) * n * 2 * D), `head ${h}`);
    }, 30_000);

  it('clamps out-of-range positions and block ids into the region instead of reading past it', async () => {
    const shape: PagedShape = { numBlocks: 4, numKvHeads: 1, headDim: 64, blockSize: 16, dtype: 'bf16' };
    const host = new HostArena(shape.numBlocks * blockBytes(shape));
    keep(host);
    const io = dev(4096);
    io.write(0, Int32Array.of(0, 99)); // block 99 does not exist
    io.write(1024, Int32Array.of(-5, 1 << 30, 20));
    const dst = dev(3 * 256);
    native().cudaKvGatherDevice({
      handle: host.handle, offset: 0, ...shape, blockTable: io.ref(0), tableLen: 2, positions: io.ref(1024), n: 3, dst: dst.ref(0), dstCapacity: 3, table: io.ref(2048),
    });
    await native().cudaStreamSynchronize({}); // no fault: compute-sanitizer runs this file too
  });

  it('rejects a destination slot range past its capacity before touching the GPU', () => {
    const host = new HostArena(4 * 16 * 256);
    keep(host);
    const io = dev(4096);
    expect(() => native().cudaKvGatherDevice({
      handle: host.handle, offset: 0, numBlocks: 4, numKvHeads: 1, headDim: 64, blockSize: 16, dtype: 'bf16',
      blockTable: io.ref(0), tableLen: 1, positions: io.ref(64), n: 4, dst: io.ref(1024), dstCapacity: 4, dstSlot: 1, table: io.ref(2048),
    })).toThrow(/dstSlot/);
  });
});
