// The batched forms of the step kernels (one launch for a batch of sequences, a token each) against the batched
// references (src/kernels/device-batch-ref.ts: the single-sequence reference per sequence): cudaKvWrite with slots,
// cudaKvStoreHost with blocks and offsets, cudaAttendDecode with seqs and qSeqStride, cudaTopK with per-row counts
// and over many rows (fewer blocks a row), and cudaKvGatherDevice with seqs. Sequences stand at different positions
// (counts 1, 63, 65, 1000: not multiples of the 64-row chunk), GQA 1, 4 and 8, and the bounds are refused with the
// numbers.
import { describe, expect, it } from 'vitest';
import { HostArena } from '../../src/arena.js';
import { compactRows, cudaAttendScratchBytes } from '../../src/kernels/device-attention-ref.js';
import { decodeBatchRef, kvStoreHostBatchRef, kvWriteBatchRef, topKRowsRef } from '../../src/kernels/device-batch-ref.js';
import { toHalf, type HalfDtype } from '../../src/kernels/half.js';
import { blockBytes, gatherRef, type PagedShape } from '../../src/kernels/paged-kv.js';
import { native } from '../../src/native.js';
import { rng, shuffled, worstRatio } from '../helpers.js';
import { expectSameWords, gpuUsable, randomU16, sweptArenas, uniform } from './cuda-helpers.js';

const { dev, upload, keep } = sweptArenas();

/** B fused-qkv-like rows: k at column kOff, v at vOff, `stride` floats apart (as the step's activations lie). */
function fusedRows(B: number, H: number, D: number, r: () => number) {
  const stride = 3 * H * D + 5, kOff = H * D + 1, vOff = 2 * H * D + 3;
  const buf = uniform(B * stride, r, 50);
  buf[kOff] = 70000; // rounds to inf in f16: the batched write rounds as the single one does
  return { buf, stride, kOff, vOff, k: compactRows(buf.subarray(kOff), B, stride, H * D), v: compactRows(buf.subarray(vOff), B, stride, H * D) };
}

describe.skipIf(!gpuUsable)('batched cudaKvWrite and cudaKvStoreHost', () => {
  for (const [B, H, D, dtype] of [[1, 8, 128, 'bf16'], [3, 2, 64, 'f16'], [5, 1, 6, 'bf16'], [64, 2, 32, 'bf16']] as const)
    it(`writes token t into sequence t's region at its own slot: ${B} sequences, ${H} heads, head_dim ${D}, ${dtype}`, async () => {
      const r = rng(B * 31 + D);
      const cap = 70;
      const { buf, stride, kOff, vOff, k, v } = fusedRows(B, H, D, r);
      const src = upload(buf);
      const init = randomU16(B * H * cap * 2 * D, r);
      const dst = upload(init);
      const slots = Int32Array.from({ length: B }, (_, t) => (t === 0 ? cap - 1 : t === 1 ? 0 : Math.floor(r() * cap)));
      native().cudaKvWrite({ k: src.ref(kOff * 4), v: src.ref(vOff * 4), srcRowStride: stride, tokens: B, numKvHeads: H, headDim: D, dtype, dst: dst.ref(0), capacity: cap, slots });
      await native().cudaStreamSynchronize({});
      const want = init.slice();
      kvWriteBatchRef(want, { numKvHeads: H, headDim: D, capacity: cap, dtype }, slots, k, v);
      expectSameWords(dst.readU16(0, want.length), want, `B ${B} H ${H} D ${D}`);
    });

  it('stores token t at row offsets[t] of block blocks[t] of the pinned host paged KV', async () => {
    for (const [B, H, D, bs] of [[4, 8, 128, 16], [3, 2, 64, 1], [64, 1, 32, 4]] as const) {
      const r = rng(B + D);
      const shape: PagedShape = { numBlocks: 2 * B + 3, numKvHeads: H, headDim: D, blockSize: bs, dtype: 'bf16' };
      const offset = 128;
      const host = new HostArena(offset + shape.numBlocks * blockBytes(shape));
      keep(host);
      const init = randomU16(shape.numBlocks * blockBytes(shape) / 2, r);
      host.write(offset, init);
      const blocks = shuffled(shape.numBlocks, r).slice(0, B); // a sequence's block each: distinct rows
      const offsets = Int32Array.from({ length: B }, () => Math.floor(r() * bs));
      const { buf, stride, kOff, vOff, k, v } = fusedRows(B, H, D, r);
      const src = upload(buf);
      native().cudaKvStoreHost({ handle: host.handle, offset, ...shape, k: src.ref(kOff * 4), v: src.ref(vOff * 4), srcRowStride: stride, tokens: B, blocks, offsets });
      await native().cudaStreamSynchronize({});
      const want = init.slice();
      kvStoreHostBatchRef(want, shape, blocks, offsets, k, v);
      const got = host.read(offset, init.byteLength);
      expectSameWords(new Uint16Array(got.buffer, got.byteOffset, init.length), want, `store B ${B} H ${H} D ${D} bs ${bs}`);
    }
  }, 30_000);

  it('refuses more than 64 tokens, a slot past the capacity, slots of the wrong length and two tokens on one host row', () => {
    const src = dev(70 * 2 * 64 * 4);
    const dst = dev(70 * 2 * 4 * 64 * 4);
    const write = { k: src.ref(0), v: src.ref(0), numKvHeads: 2, headDim: 64, dtype: 'bf16' as const, dst: dst.ref(0), capacity: 4 };
    expect(() => native().cudaKvWrite({ ...write, tokens: 65, slots: new Int32Array(65) })).toThrow('Expected cudaKvWrite.tokens in [0, 64] but received 65');
    expect(() => native().cudaKvWrite({ ...write, tokens: 2, slots: Int32Array.of(0, 4) })).toThrow('Expected cudaKvWrite.slots in [0, 3] but received 4');
    expect(() => native().cudaKvWrite({ ...write, tokens: 3, slots: Int32Array.of(0, 1) })).toThrow(/slots/);
    const shape: PagedShape = { numBlocks: 4, numKvHeads: 2, headDim: 64, blockSize: 16, dtype: 'bf16' };
    const host = new HostArena(shape.numBlocks * blockBytes(shape));
    keep(host);
    expect(() => native().cudaKvStoreHost({ handle: host.handle, offset: 0, ...shape, k: src.ref(0), v: src.ref(0), tokens: 2, blocks: Int32Array.of(1, 1), offsets: Int32Array.of(3, 3) }))
      .toThrow(/a distinct \(block, offset\) for each token.*block 1 offset 3 twice/);
    expect(() => native().cudaKvStoreHost({ handle: host.handle, offset: 0, ...shape, k: src.ref(0), v: src.ref(0), tokens: 2, blocks: Int32Array.of(1, 4), offsets: Int32Array.of(3, 3) }))
      .toThrow('Expected cudaKvStoreHost.blocks in [0, 3] but received 4');
  });
});

/** A device KV image [B * H, cap, 2, D] of random values, rows past each head's count NaN (read past: NaN out). */
function kvImage(heads: number, cap: number, D: number, dtype: HalfDtype, counts: Int32Array, r: () => number): Uint16Array {
  const img = new Uint16Array(heads * cap * 2 * D).fill(dtype === 'f16' ? 0x7e00 : 0x7fc0);
  for (let h = 0; h < heads; h++)
    for (let j = 0; j < counts[h]; j++)
      for (let c = 0; c < 2 * D; c++) img[(h * cap + j) * 2 * D + c] = toHalf(2 * r() - 1, dtype);
  return img;
}

describe.skipIf(!gpuUsable)('batched cudaAttendDecode', () => {
  for (const [G, D, dtype] of [[1, 64, 'f16'], [4, 128, 'bf16'], [8, 128, 'bf16']] as const)
    it(`attends each sequence's heads over its own rows, queries qSeqStride apart: GQA ${G}, head_dim ${D}`, async () => {
      const r = rng(G * 7 + D);
      const H = 2, cap = 1000;
      const seqCounts = [1, 63, 65, 1000];
      const B = seqCounts.length;
      const counts = Int32Array.from({ length: B * H }, (_, i) => (i === 1 ? 0 : seqCounts[Math.floor(i / H)])); // one head of sequence 0 empty
      const img = kvImage(B * H, cap, D, dtype, counts, r);
      const qSeqStride = H * G * D + 37; // as in the fused qkv rows: k and v between the sequences' queries
      const q = uniform(B * qSeqStride, r, 2);
      const scale = 1 / Math.sqrt(D);
      const kv = upload(img), qd = upload(q);
      const out = dev(B * H * G * D * 4), lse = dev(B * H * G * 4);
      const scratchBytes = cudaAttendScratchBytes({ numKvHeads: B * H, groupSize: G, headDim: D, maxRows: cap });
      const scratch = dev(scratchBytes);
      native().cudaAttendDecode({
        kv: kv.ref(0), capacity: cap, numKvHeads: H, seqs: B, qSeqStride, headDim: D, dtype, groupSize: G, counts, q: qd.ref(0), scale,
        out: out.ref(0), lse: lse.ref(0), scratch: scratch.ref(0), scratchBytes,
      });
      await native().cudaStreamSynchronize({});
      const want = decodeBatchRef({ kv: img, capacity: cap, numKvHeads: H, headDim: D, dtype, groupSize: G }, B, counts, q, qSeqStride, scale);
      const gotOut = out.readF32(0, B * H * G * D), gotLse = lse.readF32(0, B * H * G);
      for (let g = 0; g < G; g++) expect(gotLse[G + g]).toBe(-Infinity); // sequence 0's empty head
      expect(worstRatio(gotOut, want.out, 5e-5, 5e-4)).toBeLessThanOrEqual(1);
      expect(worstRatio(gotLse, want.lse, 1e-5, 1e-5)).toBeLessThanOrEqual(1);
    }, 60_000);

  it('refuses more than 256 heads in all and a qSeqStride shorter than a sequence\'s queries', () => {
    const d = dev(1 << 20);
    const call = { kv: d.ref(0), capacity: 4, numKvHeads: 8, headDim: 64, dtype: 'bf16' as const, groupSize: 4, q: d.ref(0), scale: 1, out: d.ref(0), lse: d.ref(0), scratch: d.ref(0), scratchBytes: 0 };
    expect(() => native().cudaAttendDecode({ ...call, seqs: 33, counts: new Int32Array(33 * 8) })).toThrow('Expected seqs * numKvHeads <= 256 for cudaAttendDecode.seqs but received 33 * 8');
    expect(() => native().cudaAttendDecode({ ...call, seqs: 2, qSeqStride: 100, counts: new Int32Array(16) })).toThrow(/qSeqStride/);
  });
});

describe.skipIf(!gpuUsable)('cudaTopK with per-row counts', () => {
  it('ranks row r over its own first counts[r] positions, exactly as topKRef', async () => {
    const r = rng(5);
    const rows = 24, ld = 3000, first = 4, k = 64;
    const scores = uniform(rows * ld, r);
    scores.fill(1e9, 0 * ld + first + 500, 0 * ld + first + 600); // past row 0's count: must never be picked
    const counts = Int32Array.from({ length: rows }, (_, i) => [64, 65, 499, 2996][i % 4]);
    const sd = upload(scores), od = dev(rows * k * 4);
    native().cudaTopK({ scores: sd.ref(0), rows, ld, first, n: 2996, counts, k, out: od.ref(0) });
    await native().cudaStreamSynchronize({});
    const got = new Int32Array(native().cudaArenaRead({ handle: od.handle, offset: 0, bytes: rows * k * 4 }).slice().buffer);
    expect(got).toEqual(topKRowsRef(scores, ld, first, counts, k));
  });

  // A batch's many rows share the GPU with fewer blocks a row: 20, 40, 100 rows take clusters of 4, 2 and 1 block
  // on a 132-SM H100 (topk_cluster_size), all exactly as the reference.
  for (const rows of [20, 40, 100])
    it(`ranks ${rows} rows of 3001 (with ties) exactly as topKRef`, async () => {
      const r = rng(rows);
      const ld = 3010, first = 3, n = 3001, k = 64;
      const scores = uniform(rows * ld, r);
      for (let i = 0; i < scores.length; i += 7) scores[i] = 0.5; // ties go to the lower index
      const sd = upload(scores), od = dev(rows * k * 4);
      native().cudaTopK({ scores: sd.ref(0), rows, ld, first, n, k, out: od.ref(0) });
      await native().cudaStreamSynchronize({});
      const got = new Int32Array(native().cudaArenaRead({ handle: od.handle, offset: 0, bytes: rows * k * 4 }).slice().buffer);
      expect(got).toEqual(topKRowsRef(scores, ld, first, new Int32Array(rows).fill(n), k));
    }, 60_000);

  it('refuses a count below k or above n, and counts for more than 256 rows', () => {
    const d = dev(1 << 20);
    const call = { scores: d.ref(0), ld: 100, first: 0, n: 100, k: 8, out: d.ref(1 << 19) };
    expect(() => native().cudaTopK({ ...call, rows: 2, counts: Int32Array.of(8, 7) })).toThrow('Expected cudaTopK.counts in [8, 100] but received 7');
    expect(() => native().cudaTopK({ ...call, rows: 2, counts: Int32Array.of(8, 101) })).toThrow('Expected cudaTopK.counts in [8, 100] but received 101');
    expect(() => native().cudaTopK({ ...call, rows: 257, counts: new Int32Array(257).fill(8) })).toThrow(/at most 256 rows with counts/);
  });
});

describe.skipIf(!gpuUsable)('batched cudaKvGatherDevice', () => {
  it('gathers each sequence\'s picks through its own block table row into its own heads', async () => {
    const r = rng(9);
    const B = 3, H = 8, D = 128, n = 40, tableLen = 30, cap = n + 9, slot = 5;
    const shape: PagedShape = { numBlocks: B * tableLen, numKvHeads: H, headDim: D, blockSize: 16, dtype: 'bf16' };
    const host = new HostArena(shape.numBlocks * blockBytes(shape));
    keep(host);
    const image = randomU16(host.bytes / 2, r);
    host.write(0, image);
    const order = shuffled(shape.numBlocks, r);
    const tables = Array.from({ length: B }, (_, s) => order.slice(s * tableLen, (s + 1) * tableLen));
    const positions = Int32Array.from({ length: B * H * n }, () => Math.floor(r() * tableLen * 16));
    const io = dev(B * tableLen * 4 + B * H * n * 4 + B * H * n * 8);
    tables.forEach((t, s) => io.write(s * tableLen * 4, t));
    io.write(B * tableLen * 4, positions);
    const dst = dev(B * H * cap * 4 * D);
    const units = native().cudaKvGatherDevice({
      handle: host.handle, offset: 0, ...shape, seqs: B, blockTable: io.ref(0), tableLen, positions: io.ref(B * tableLen * 4), n,
      dst: dst.ref(0), dstCapacity: cap, dstSlot: slot, table: io.ref(B * tableLen * 4 + B * H * n * 4),
    });
    expect(units).toBe(B * H * n);
    await native().cudaStreamSynchronize({});
    for (let s = 0; s < B; s++) {
      const want = gatherRef(shape, image, tables[s], Int32Array.from({ length: H }, (_, h) => h), n, positions.subarray(s * H * n, (s + 1) * H * n));
      for (let h = 0; h < H; h++)
        expectSameWords(dst.readU16(((s * H + h) * cap + slot) * 4 * D, n * 2 * D), want.subarray(h * n * 2 * D, (h + 1) * n * 2 * D), `sequence ${s} head ${h}`);
    }
  }, 30_000);
});
