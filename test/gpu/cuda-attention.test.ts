// The CUDA attention kernels against the fp64 references on a real GPU: cudaKvWrite / cudaKvStoreHost (bit-exact with
// kvAppend's rounding), split-K cudaAttendDecode (GQA 1..12, head_dim 32..256, zero and odd counts, 70k rows, large
// logits, values near the f16 maximum, the scalar path), cudaLseMerge (-inf parts, aliasing) and causal cudaAttendPrefill.
//
// Tolerances: the kernels compute in f32. A score q.k over D terms carries a relative error of about D * 2^-24 of
// sum |q_i k_i|, exp2 (ex2.approx) adds 2^-22 relative, and the weighted sums run over up to 70k rows in f32, split
// into chunks and merged. That puts outputs within ~1e-5 relative of the fp64 reference; the checks allow 5e-5
// absolute + 5e-4 relative (1e-5 + 1e-5 for lse). With logits of hundreds, an absolute score error of
// |s| * 2^-22 moves each weight by that fraction, so those cases allow 2e-3 of the largest |V| instead.
import { describe, expect, it } from 'vitest';
import { HostArena } from '../../src/arena.js';
import { blockBytes, attendRef, type PagedShape } from '../../src/kernels/paged-kv.js';
import { lseMergeRef } from '../../src/kernels/merge.js';
import { compactRows, cudaAttendScratchBytes, decodeRef, deviceShape, kvStoreHostRef, kvWriteRef, prefillRef, type DeviceKvRef } from '../../src/kernels/device-attention-ref.js';
import { toHalf, type HalfDtype } from '../../src/kernels/half.js';
import { native, type DevRef } from '../../src/native.js';
import { maxAbs, rng, shuffled, worstRatio } from '../helpers.js';
import { expectSameWords, gpuUsable, randomU16, sweptArenas, uniform } from './cuda-helpers.js';

const { dev, upload, keep } = sweptArenas();

const NAN16: Record<HalfDtype, number> = { f16: 0x7e00, bf16: 0x7fc0 };

/**
 * A device KV image [H, cap, 2, D] of random values; rows at or past each head's count hold NaN, so a kernel that
 * reads past what it should attends NaN and fails loudly.
 */
function kvImage(H: number, cap: number, D: number, dtype: HalfDtype, counts: ArrayLike<number>, r: () => number, kScale = 1, vScale = 1): Uint16Array {
  const img = new Uint16Array(H * cap * 2 * D).fill(NAN16[dtype]);
  for (let h = 0; h < H; h++)
    for (let j = 0; j < counts[h]; j++) {
      const base = (h * cap + j) * 2 * D;
      for (let c = 0; c < D; c++) {
        img[base + c] = toHalf((2 * r() - 1) * kScale, dtype);
        img[base + D + c] = toHalf((2 * r() - 1) * vScale, dtype);
      }
    }
  return img;
}

interface DecodeCase {
  H: number;
  G: number;
  D: number;
  dtype: HalfDtype;
  counts: number[];
  cap?: number;
  qScale?: number;
  kScale?: number;
  vScale?: number;
  kvOffset?: number; // bytes; not a multiple of 16 forces the scalar path
  stream?: number;
}

async function checkDecode(c: DecodeCase, seed: number, tol: { atol: number; rtol: number } = { atol: 5e-5, rtol: 5e-4 }): Promise<void> {
  const r = rng(seed);
  const cap = c.cap ?? Math.max(1, ...c.counts);
  const counts = Int32Array.from(c.counts);
  const img = kvImage(c.H, cap, c.D, c.dtype, counts, r, c.kScale, c.vScale);
  const q = uniform(c.H * c.G * c.D, r, c.qScale ?? 1);
  const scale = 1 / Math.sqrt(c.D);
  const kvOff = c.kvOffset ?? 0;
  const kv = upload(img, kvOff), qd = upload(q);
  const out = dev(q.byteLength), lse = dev(c.H * c.G * 4);
  const scratchBytes = native().cudaAttendScratchBytes({ numKvHeads: c.H, groupSize: c.G, headDim: c.D, maxRows: cap });
  const scratch = dev(scratchBytes);
  native().cudaAttendDecode({
    kv: kv.ref(kvOff), capacity: cap, numKvHeads: c.H, headDim: c.D, dtype: c.dtype, groupSize: c.G, counts,
    q: qd.ref(0), scale, out: out.ref(0), lse: lse.ref(0), scratch: scratch.ref(0), scratchBytes, stream: c.stream,
  });
  await native().cudaStreamSynchronize({ stream: c.stream });
  const want = decodeRef({ kv: img, capacity: cap, numKvHeads: c.H, headDim: c.D, dtype: c.dtype, groupSize: c.G }, counts, q, scale);
  const label = JSON.stringify({ ...c, counts: c.counts.length > 8 ? '...' : c.counts });
  const gotOut = out.readF32(0, q.length), gotLse = lse.readF32(0, c.H * c.G);
  for (let h = 0; h < c.H; h++)
    if (counts[h] === 0)
      for (let g = 0; g < c.G; g++) {
        expect(gotLse[h * c.G + g], label).toBe(-Infinity);
        expect(maxAbs(gotOut.subarray((h * c.G + g) * c.D, (h * c.G + g + 1) * c.D)), label).toBe(0);
      }
  expect(worstRatio(gotOut, want.out, tol.atol, tol.rtol), `${label} out`).toBeLessThanOrEqual(1);
  expect(worstRatio(gotLse, want.lse, 1e-5, 1e-5), `${label} lse`).toBeLessThanOrEqual(1);
}

describe.skipIf(!gpuUsable)('cudaKvWrite and cudaKvStoreHost', () => {
  /** [tokens, stride] with k at column kOff and v at vOff: the fused-qkv case; includes NaN, overflow and subnormals. */
  function fused(tokens: number, H: number, D: number, r: () => number): { buf: Float32Array; stride: number; kOff: number; vOff: number } {
    const stride = 3 * H * D + 4, kOff = H * D + 1, vOff = 2 * H * D + 3;
    const buf = uniform(tokens * stride, r, 300);
    if (tokens > 0) {
      buf.set([NaN, 70000, -65519, 65520, 1e-8, -3e-6, Infinity, 1e30].slice(0, H * D), kOff);
      buf.set([65504, -1e-7, 2.5e-8, NaN].slice(0, H * D), vOff);
    }
    return { buf, stride, kOff, vOff };
  }

  for (const [H, D, dtype, dstOff] of [[2, 64, 'f16', 0], [3, 64, 'bf16', 16], [2, 6, 'f16', 4], [1, 5, 'bf16', 2], [8, 128, 'bf16', 6]] as const)
    it(`writes rows bit-exact like kvAppend: ${H} heads, head_dim ${D}, ${dtype}, dst offset ${dstOff}`, async () => {
      const r = rng(H * 100 + D + dstOff);
      const tokens = 7, cap = 20, slot = 13;
      const { buf, stride, kOff, vOff } = fused(tokens, H, D, r);
      const src = upload(buf);
      const init = randomU16(H * cap * 2 * D, r);
      const dst = upload(init, dstOff);
      native().cudaKvWrite({
        k: src.ref(kOff * 4), v: src.ref(vOff * 4), srcRowStride: stride, tokens, numKvHeads: H, headDim: D, dtype,
        dst: dst.ref(dstOff), capacity: cap, slot,
      });
      await native().cudaStreamSynchronize({});
      const want = init.slice();
      kvWriteRef(want, { numKvHeads: H, headDim: D, capacity: cap, dtype }, slot, compactRows(buf.subarray(kOff), tokens, stride, H * D), compactRows(buf.subarray(vOff), tokens, stride, H * D));
      expectSameWords(dst.readU16(dstOff, want.length), want, `H ${H} D ${D} ${dtype}`);
    });

  it('stores tokens into the pinned host paged KV through a scattered block table, bit-exact', async () => {
    for (const [H, D, dtype, bs, start, tokens] of [[2, 64, 'bf16', 16, 13, 40], [8, 128, 'f16', 16, 131, 1], [2, 32, 'f16', 1, 5, 1500], [3, 6, 'bf16', 4, 0, 9]] as const) {
      const r = rng(D * 7 + tokens);
      const logical = Math.ceil((start + tokens) / bs);
      const shape: PagedShape = { numBlocks: logical + 5, numKvHeads: H, headDim: D, blockSize: bs, dtype };
      const offset = 64;
      const host = new HostArena(offset + shape.numBlocks * blockBytes(shape));
      keep(host);
      expect(host.method).toBe('cudaHostRegister');
      const init = randomU16(shape.numBlocks * blockBytes(shape) / 2, r);
      host.write(offset, init);
      const blockIds = shuffled(shape.numBlocks, r).slice(0, logical);
      const { buf, stride, kOff, vOff } = fused(tokens, H, D, r);
      const src = upload(buf);
      const s = native().cudaStreamCreate();
      native().cudaKvStoreHost({
        handle: host.handle, offset, ...shape, k: src.ref(kOff * 4), v: src.ref(vOff * 4), srcRowStride: stride, tokens, blockIds, start, stream: s,
      });
      await native().cudaStreamSynchronize({ stream: s });
      native().cudaStreamDestroy({ stream: s });
      const want = init.slice();
      kvStoreHostRef(want, shape, blockIds, start, compactRows(buf.subarray(kOff), tokens, stride, H * D), compactRows(buf.subarray(vOff), tokens, stride, H * D));
      const got = host.read(offset, init.byteLength);
      expectSameWords(new Uint16Array(got.buffer, got.byteOffset, init.length), want, `store H ${H} D ${D} bs ${bs} tokens ${tokens}`);
    }
  }, 30_000);

  it('refuses a host arena that is not mapped for the GPU', () => {
    const pageable = new HostArena(4 * 2 * 16 * 2 * 64 * 2, { pin: false });
    keep(pageable);
    const src = dev(2 * 64 * 4);
    expect(() => native().cudaKvStoreHost({
      handle: pageable.handle, offset: 0, numBlocks: 4, numKvHeads: 2, headDim: 64, blockSize: 16, dtype: 'bf16',
      k: src.ref(0), v: src.ref(0), tokens: 1, blockIds: Int32Array.of(2), start: 0,
    })).toThrow(/pinned and mapped by cudaHostRegister .* for cudaKvStoreHost.handle but received an arena pinned by pageable/);
  });
});

describe.skipIf(!gpuUsable)('cudaAttendDecode', () => {
  it('matches attendRef (the paged reference) on a device region seen as one block', () => {
    // Ties decodeRef to the project's reference: the device layout is the paged layout with one block of cap rows.
    const r = rng(1);
    const H = 2, G = 4, D = 32, cap = 50;
    const counts = Int32Array.of(50, 17);
    const img = kvImage(H, cap, D, 'f16', counts, r);
    const q = uniform(H * G * D, r);
    const ref = decodeRef({ kv: img, capacity: cap, numKvHeads: H, headDim: D, dtype: 'f16', groupSize: G }, counts, q, 0.3);
    for (let h = 0; h < H; h++) {
      const a = attendRef(deviceShape(H, D, cap, 'f16'), img, { blockIds: Int32Array.of(0), numTokens: counts[h], kvHead: h, groupSize: G, q: q.subarray(h * G * D, (h + 1) * G * D), scale: 0.3 });
      expect(worstRatio(ref.out.subarray(h * G * D, (h + 1) * G * D), a.o, 1e-7, 1e-6)).toBeLessThanOrEqual(1);
      expect(worstRatio(ref.lse.subarray(h * G, (h + 1) * G), a.lse, 1e-7, 1e-6)).toBeLessThanOrEqual(1);
    }
  });

  it('reports the same scratch size as the TypeScript mirror', () => {
    for (const [H, G, D, maxRows] of [[8, 4, 128, 131072], [2, 4, 32, 4096], [1, 1, 64, 64], [32, 8, 128, 100000], [8, 4, 128, 0]])
      expect(native().cudaAttendScratchBytes({ numKvHeads: H, groupSize: G, headDim: D, maxRows })).toBe(cudaAttendScratchBytes({ numKvHeads: H, groupSize: G, headDim: D, maxRows }));
  });

  // One chunk (direct write) and many chunks; counts of 0, 1, and not multiples of the 64-row chunk quantum.
  const cases: DecodeCase[] = [
    { H: 2, G: 4, D: 32, dtype: 'f16', counts: [1, 0] },
    { H: 2, G: 4, D: 32, dtype: 'bf16', counts: [63, 64] },
    { H: 8, G: 4, D: 128, dtype: 'bf16', counts: [1000, 0, 1, 65, 4097, 129, 3000, 2] },
    { H: 8, G: 4, D: 128, dtype: 'f16', counts: [777, 777, 777, 777, 777, 777, 777, 777] },
    { H: 4, G: 1, D: 64, dtype: 'f16', counts: [300, 5, 0, 1999] },
    { H: 2, G: 8, D: 128, dtype: 'f16', counts: [513, 2048] },
    { H: 1, G: 2, D: 64, dtype: 'bf16', counts: [250] },
    { H: 2, G: 3, D: 32, dtype: 'f16', counts: [100, 70] },
    { H: 2, G: 5, D: 64, dtype: 'bf16', counts: [333, 1] },
    { H: 1, G: 12, D: 128, dtype: 'bf16', counts: [900] }, // two CTAs per chunk (8 + 4 query heads)
    { H: 2, G: 4, D: 256, dtype: 'f16', counts: [700, 64] },
    { H: 2, G: 4, D: 48, dtype: 'bf16', counts: [300, 12] }, // head_dim off the vector path
    { H: 2, G: 4, D: 128, dtype: 'f16', counts: [500, 99], kvOffset: 8 }, // misaligned region: scalar path
    { H: 32, G: 1, D: 64, dtype: 'bf16', counts: Array.from({ length: 32 }, (_, i) => (i * 37) % 200) },
  ];
  cases.forEach((c, i) =>
    it(`equals decodeRef: ${c.H} KV heads, G ${c.G}, head_dim ${c.D}, ${c.dtype}, counts ${c.counts.slice(0, 8).join(',')}${c.kvOffset ? ', misaligned' : ''}`, () =>
      checkDecode(c, 100 + i), 30_000));

  it('attends 70001 rows (hundreds of chunks) per head', () => checkDecode({ H: 2, G: 8, D: 128, dtype: 'bf16', counts: [70001, 69000] }, 7), 60_000);

  it('attends 20000 rows over 8 heads of mixed lengths', () =>
    checkDecode({ H: 8, G: 4, D: 128, dtype: 'f16', counts: [20000, 19999, 1, 0, 12345, 64, 8191, 20000] }, 8), 60_000);

  it('stays finite and accurate with large logits and values near the f16 maximum', async () => {
    // Scores of several hundred: the online max subtraction must keep exp2 in range.
    await checkDecode({ H: 2, G: 4, D: 64, dtype: 'f16', counts: [3000, 257], qScale: 40, kScale: 4 }, 9, { atol: 2e-3, rtol: 0 });
    // K near 65504 (dot products ~1e10 in f32) with small q, and V near 65504 (sums of p * v far past f16 range).
    await checkDecode({ H: 2, G: 4, D: 128, dtype: 'f16', counts: [1000, 3], qScale: 1e-4, kScale: 65504, vScale: 65000 }, 10, { atol: 2e-3 * 65000, rtol: 0 });
    await checkDecode({ H: 1, G: 8, D: 128, dtype: 'bf16', counts: [2500], qScale: 60, kScale: 3, vScale: 1e30 }, 11, { atol: 2e-3 * 1e30, rtol: 0 });
  }, 30_000);

  it('runs on a user stream', async () => {
    const s = native().cudaStreamCreate();
    await checkDecode({ H: 4, G: 4, D: 64, dtype: 'bf16', counts: [5000, 1, 0, 4999], stream: s }, 12);
    native().cudaStreamDestroy({ stream: s });
  }, 30_000);

  it('fails with needed vs given when scratch is too small', () => {
    const kv = dev(2 * 4096 * 4 * 64), q = dev(2 * 4 * 64 * 4), out = dev(2 * 4 * 64 * 4), lse = dev(64), scratch = dev(1024);
    const o = {
      kv: kv.ref(0), capacity: 4096, numKvHeads: 2, headDim: 64, dtype: 'f16' as const, groupSize: 4, counts: Int32Array.of(4096, 10),
      q: q.ref(0), scale: 0.125, out: out.ref(0), lse: lse.ref(0), scratch: scratch.ref(0), scratchBytes: 1024,
    };
    const need = cudaAttendScratchBytes({ numKvHeads: 2, groupSize: 4, headDim: 64, maxRows: 4096 });
    expect(() => native().cudaAttendDecode(o)).toThrow(`Expected room for ${need} bytes of cudaAttendDecode.scratch but only 1024 are available`);
    // One chunk per head needs none.
    native().cudaAttendDecode({ ...o, counts: Int32Array.of(64, 10), scratchBytes: 0 });
  });
});

describe.skipIf(!gpuUsable)('cudaLseMerge', () => {
  it('equals lseMergeRef with -inf parts, out = oA and out = oB', async () => {
    const r = rng(20);
    for (const [rows, D, alias] of [[37, 64, 'none'], [33, 40, 'a'], [9, 128, 'b'], [1, 1, 'none']] as const) {
      const oA = uniform(rows * D, r), oB = uniform(rows * D, r);
      const lseA = uniform(rows, r, 20), lseB = uniform(rows, r, 20);
      for (let i = 0; i < rows; i++) {
        if (i % 5 === 1) lseA[i] = -Infinity;
        if (i % 7 === 2) lseB[i] = -Infinity;
        if (i % 11 === 3) lseA[i] = lseB[i] = -Infinity;
      }
      const want = lseMergeRef(rows, D, oA, lseA, oB, lseB);
      const a = upload(oA), b = upload(oB), la = upload(lseA), lb = upload(lseB);
      const o = alias === 'a' ? a : alias === 'b' ? b : dev(oA.byteLength);
      const l = alias === 'a' ? la : alias === 'b' ? lb : dev(lseA.byteLength);
      native().cudaLseMerge({ rows, headDim: D, oA: a.ref(0), lseA: la.ref(0), oB: b.ref(0), lseB: lb.ref(0), out: o.ref(0), lseOut: l.ref(0) });
      await native().cudaStreamSynchronize({});
      expect(worstRatio(o.readF32(0, rows * D), want.o, 1e-6, 1e-5), `rows ${rows} alias ${alias}`).toBeLessThanOrEqual(1);
      expect(worstRatio(l.readF32(0, rows), want.lse, 1e-6, 1e-6), `rows ${rows} alias ${alias}`).toBeLessThanOrEqual(1);
    }
  });
});

describe.skipIf(!gpuUsable)('cudaAttendPrefill', () => {
  interface PrefillCase {
    H: number;
    G: number;
    D: number;
    dtype: HalfDtype;
    T: number;
    start: number;
    qScale?: number;
    tensorCores?: boolean; // false: the f32 kernel; default (true) is the mma kernel where head_dim allows
  }

  /**
   * The decode-step flow for a prompt chunk: q, k and v sit in one fused [T, (H*G + 2H) * D] buffer; cudaKvWrite puts
   * the chunk's K/V at rows start.. of a region whose first `start` rows hold earlier tokens, then prefill attends.
   */
  async function checkPrefill(c: PrefillCase, seed: number, stream?: number): Promise<void> {
    const r = rng(seed);
    const { H, G, D, dtype, T, start } = c;
    const cap = start + T + 3;
    const counts = new Array(H).fill(start);
    const img = kvImage(H, cap, D, dtype, counts, r); // rows past start are NaN until written
    const qw = H * G * D, stride = qw + 2 * H * D;
    const fusedBuf = uniform(T * stride, r);
    if (c.qScale) for (let t = 0; t < T; t++) for (let i = 0; i < qw; i++) fusedBuf[t * stride + i] *= c.qScale;
    const f = upload(fusedBuf);
    const kv = upload(img);
    const out = dev(T * qw * 4), lse = dev(T * H * G * 4);
    const scale = 1 / Math.sqrt(D);
    native().cudaKvWrite({ k: f.ref(qw * 4), v: f.ref((qw + H * D) * 4), srcRowStride: stride, tokens: T, numKvHeads: H, headDim: D, dtype, dst: kv.ref(0), capacity: cap, slot: start, stream });
    native().cudaAttendPrefill({ q: f.ref(0), qRowStride: stride, T, start, kv: kv.ref(0), capacity: cap, numKvHeads: H, headDim: D, dtype, groupSize: G, scale, out: out.ref(0), lse: lse.ref(0), stream, tensorCores: c.tensorCores ?? true });
    await native().cudaStreamSynchronize({ stream });
    kvWriteRef(img, { numKvHeads: H, headDim: D, capacity: cap, dtype }, start, compactRows(fusedBuf.subarray(qw), T, stride, H * D), compactRows(fusedBuf.subarray(qw + H * D), T, stride, H * D));
    const ref: DeviceKvRef = { kv: img, capacity: cap, numKvHeads: H, headDim: D, dtype, groupSize: G };
    const want = prefillRef(ref, fusedBuf, T, start, scale, stride);
    const label = JSON.stringify(c);
    const tol = c.qScale ? { atol: 2e-3, rtol: 0 } : { atol: 5e-5, rtol: 5e-4 };
    expect(worstRatio(out.readF32(0, T * qw), want.out, tol.atol, tol.rtol), `${label} out`).toBeLessThanOrEqual(1);
    expect(worstRatio(lse.readF32(0, T * H * G), want.lse, 1e-5, 1e-5), `${label} lse`).toBeLessThanOrEqual(1);
    // The last query of the chunk equals a decode step over start + T rows.
    const last = decodeRef(ref, new Int32Array(H).fill(start + T), fusedBuf.subarray((T - 1) * stride, (T - 1) * stride + qw), scale);
    expect(worstRatio(want.out.subarray((T - 1) * qw), last.out, 1e-7, 1e-6)).toBeLessThanOrEqual(1);
  }

  const cases: PrefillCase[] = [
    { H: 2, G: 4, D: 64, dtype: 'f16', T: 77, start: 50 }, // 308 query rows: not a multiple of the 64-row tile
    { H: 1, G: 1, D: 128, dtype: 'bf16', T: 130, start: 0 },
    { H: 2, G: 4, D: 32, dtype: 'bf16', T: 100, start: 3 }, // the demo model's shape
    { H: 2, G: 8, D: 128, dtype: 'f16', T: 9, start: 200 },
    { H: 1, G: 3, D: 256, dtype: 'bf16', T: 40, start: 33 },
    { H: 2, G: 2, D: 48, dtype: 'f16', T: 1, start: 70 },
    { H: 1, G: 4, D: 64, dtype: 'f16', T: 64, start: 64, qScale: 40 }, // large logits
    // Many KV tiles and query tiles, causal edges inside tiles, GQA 1/4/8 (the mma kernel's 64-row tiles, 64 or 32 KV rows)
    { H: 2, G: 1, D: 128, dtype: 'bf16', T: 301, start: 37 },
    { H: 1, G: 8, D: 64, dtype: 'f16', T: 97, start: 130 },
    { H: 2, G: 4, D: 256, dtype: 'f16', T: 70, start: 5 },
    { H: 1, G: 4, D: 128, dtype: 'f16', T: 40, start: 0, qScale: 1e6 }, // scaled queries past f16's range: the mma kernel rescales
  ];
  for (const tensorCores of [true, false])
    cases.forEach((c, i) =>
      it(`equals prefillRef (${tensorCores ? 'tensor-core' : 'f32'} kernel): ${c.H} KV heads, G ${c.G}, head_dim ${c.D}, ${c.dtype}, T ${c.T}, start ${c.start}${c.qScale ? `, queries x${c.qScale}` : ''}`, () =>
        checkPrefill({ ...c, tensorCores }, 200 + i), 30_000));

  it('runs on a user stream', async () => {
    const s = native().cudaStreamCreate();
    await checkPrefill({ H: 2, G: 4, D: 128, dtype: 'bf16', T: 33, start: 17 }, 300, s);
    native().cudaStreamDestroy({ stream: s });
  }, 30_000);

  it('refuses out overlapping q, and rows past capacity', () => {
    const a = dev(1 << 20);
    const o = { q: a.ref(0), T: 4, start: 0, kv: a.ref(1 << 19), capacity: 8, numKvHeads: 1, headDim: 64, dtype: 'f16' as const, groupSize: 1, scale: 1, out: a.ref(4096), lse: a.ref(8192) };
    expect(() => native().cudaAttendPrefill({ ...o, out: a.ref(512) })).toThrow(/for cudaAttendPrefill.out but received .* overlapping q/);
    expect(() => native().cudaAttendPrefill({ ...o, start: 5 })).toThrow('Expected cudaAttendPrefill.start in [0, 4] but received 5');
  });
});

describe.skipIf(!gpuUsable)('device references', () => {
  it('reject a freed arena after the GPU check', () => {
    const d = dev(4096);
    const at = (o: number): DevRef => d.ref(o);
    d.free();
    expect(() => native().cudaLseMerge({ rows: 1, headDim: 4, oA: at(0), lseA: at(64), oB: at(128), lseB: at(192), out: at(0), lseOut: at(64) }))
      .toThrow(/Expected a live device arena for cudaLseMerge.oA.devHandle/);
  });
});
