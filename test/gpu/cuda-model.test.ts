// The model-side kernels against src/kernels/model-ref.ts on a real GPU: staged upload/download, random fill (bit-exact,
// including indices past 2^32), embedding, RMSNorm, RoPE, GEMM on every path (m = 1, multi-row, tensor cores) with shapes
// off every tile, misaligned operands and accumulate, SwiGLU, add and argmax, with extreme values and a user stream.
import { afterEach, describe, expect, it } from 'vitest';
import { f32ToBf16, roundThrough } from '../../src/kernels/half.js';
import {
  addBiasRef, addRef, argmaxRef, embedRef, fillRandomRef, gemmBf16Ref, rmsNormRef, ropeRef, swigluRef,
} from '../../src/kernels/model-ref.js';
import { ropeInvFreq, ropeTables } from '../../src/model/rope.js';
import { native, type DevRef } from '../../src/native.js';
import { randn, rng } from '../helpers.js';
import { DevArena, gpuUsable } from './cuda-helpers.js';

const U = 2 ** -24; // unit roundoff of f32
const devs: DevArena[] = [];
const streams: number[] = [];
afterEach(async () => {
  if (!gpuUsable) return;
  await native().cudaStreamSynchronize({});
  for (const s of streams.splice(0)) native().cudaStreamDestroy({ stream: s });
  for (const d of devs.splice(0)) d.free();
});

function arena(bytes: number): DevArena {
  const d = new DevArena(Math.max(bytes, 16));
  devs.push(d);
  return d;
}

function userStream(): number {
  const s = native().cudaStreamCreate();
  streams.push(s);
  return s;
}

const up = (dst: DevRef, data: ArrayBufferView, stream = 0) => native().cudaUpload({ dst, data, stream });
async function downF32(src: DevRef, count: number, stream = 0): Promise<Float32Array> {
  const b = await native().cudaDownload({ src, bytes: count * 4, stream });
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + count * 4));
}
async function downU16(src: DevRef, count: number, stream = 0): Promise<Uint16Array> {
  const b = await native().cudaDownload({ src, bytes: count * 2, stream });
  return new Uint16Array(b.buffer.slice(b.byteOffset, b.byteOffset + count * 2));
}
async function downI32(src: DevRef, count: number, stream = 0): Promise<Int32Array> {
  const b = await native().cudaDownload({ src, bytes: count * 4, stream });
  return new Int32Array(b.buffer.slice(b.byteOffset, b.byteOffset + count * 4));
}

const toBf16 = (x: Float32Array) => Uint16Array.from(x, (v) => f32ToBf16(v));

/** Bit-for-bit equality of two f32 arrays (any NaN equals any NaN), naming the first difference. */
function expectSameF32(got: Float32Array, want: Float32Array, label: string): void {
  expect(got.length, label).toBe(want.length);
  for (let i = 0; i < want.length; i++) {
    if (Object.is(got[i], want[i]) || (Number.isNaN(got[i]) && Number.isNaN(want[i]))) continue;
    expect.fail(`${label}: element ${i}: got ${got[i]}, want ${want[i]}`);
  }
}

/** |got - want| <= tol(i) everywhere; a non-finite want (NaN, +-inf) must be matched exactly. */
function expectWithin(got: Float32Array, want: ArrayLike<number>, tol: (i: number) => number, label: string): void {
  expect(got.length, label).toBe(want.length);
  for (let i = 0; i < want.length; i++) {
    const w = want[i];
    if (!Number.isFinite(w) || !Number.isFinite(tol(i))) {
      if (!(Object.is(got[i], w) || (Number.isNaN(got[i]) && Number.isNaN(w)))) expect.fail(`${label}: element ${i}: got ${got[i]}, want ${w}`);
      continue;
    }
    const err = Math.abs(got[i] - w);
    if (!(err <= tol(i))) expect.fail(`${label}: element ${i}: got ${got[i]}, want ${w} (error ${err}, tolerance ${tol(i)})`);
  }
}

describe.skipIf(!gpuUsable)('cudaUpload / cudaDownload', () => {
  it('round-trips typed arrays, DataViews and subarrays at odd offsets and sizes', async () => {
    const d = arena(1 << 16);
    const bytes = Uint8Array.from({ length: 1001 }, (_, i) => (i * 37 + 5) & 255);
    up(d.ref(3), bytes);
    expect(await native().cudaDownload({ src: d.ref(3), bytes: 1001 })).toEqual(bytes);
    const f = randn(300, rng(1));
    up(d.ref(4096), f.subarray(7, 107)); // byteOffset 28: the view's bytes, not the buffer's
    expectSameF32(await downF32(d.ref(4096), 100), f.subarray(7, 107), 'subarray');
    up(d.ref(8192), new DataView(f.buffer, 40, 80));
    expectSameF32(await downF32(d.ref(8192), 20), f.subarray(10, 30), 'DataView');
    expect((await native().cudaDownload({ src: d.ref(0), bytes: 0 })).length).toBe(0);
  });

  it('stages the data: the JS buffer may be overwritten as soon as the call returns', async () => {
    const d = arena(1 << 20);
    const s = userStream();
    const data = new Float32Array(1000).fill(1);
    for (let i = 0; i < 8; i++) {
      data.fill(i);
      up(d.ref(i * 4096), data, s);
    }
    data.fill(-1); // before the copies have run
    for (let i = 0; i < 8; i++) expect(Array.from(new Set(await downF32(d.ref(i * 4096), 1000, s)))).toEqual([i]);
  });

  it('moves uploads larger than one staging piece (8 MiB) and keeps stream order with kernels', async () => {
    const count = 5_000_003; // 20 MB: three pieces, the last partial
    const a = randn(count, rng(2));
    const b = randn(count, rng(3));
    const d = arena(count * 12 + 64);
    const s = userStream();
    up(d.ref(0), a, s);
    up(d.ref(count * 4), b, s);
    native().cudaAdd({ a: d.ref(0), b: d.ref(count * 4), out: d.ref(count * 8), n: count, stream: s });
    expectSameF32(await downF32(d.ref(count * 8), count, s), addRef(a, b), 'a + b');
  }, 30_000);
});

describe.skipIf(!gpuUsable)('cudaFillRandom', () => {
  it('is bit-exact with fillRandomRef for every dtype, offset and tail', async () => {
    const d = arena(1 << 20);
    for (const dtype of ['f32', 'bf16', 'f16'] as const) {
      const size = dtype === 'f32' ? 4 : 2;
      for (const [offset, count] of [[0, 1], [0, 1003], [size, 1003], [3 * size, 77_777], [8, 7]]) {
        native().cudaFillRandom({ dst: d.ref(offset), count, dtype, seed: 1234, scale: 0.02 });
        const want = fillRandomRef(count, dtype, 1234, 0.02);
        const label = `${dtype} at ${offset}, ${count}`;
        if (dtype === 'f32') expectSameF32(await downF32(d.ref(offset), count), want as Float32Array, label);
        else expect(Buffer.from((await downU16(d.ref(offset), count)).buffer).equals(Buffer.from((want as Uint16Array).buffer)), label).toBe(true);
      }
    }
    // f16 with a scale that overflows it: +-inf where the f32 value rounds past 65504.
    native().cudaFillRandom({ dst: d.ref(0), count: 4096, dtype: 'f16', seed: 9, scale: 1e5 });
    expect(Array.from(await downU16(d.ref(0), 4096))).toEqual(Array.from(fillRandomRef(4096, 'f16', 9, 1e5)));
  });

  it('hashes the high word of indices past 2^32 (an 8.6 GB bf16 fill)', async () => {
    const count = 2 ** 32 + 4096;
    const d = arena(count * 2);
    native().cudaFillRandom({ dst: d.ref(0), count, dtype: 'bf16', seed: 77, scale: 1 });
    const at = 2 ** 32 - 1000; // a window across the 2^32 boundary
    const got = await downU16(d.ref(at * 2), 3000);
    expect(Array.from(got)).toEqual(Array.from(fillRandomRef(3000, 'bf16', 77, 1, at)));
    expect(Array.from(await downU16(d.ref((count - 5) * 2), 5))).toEqual(Array.from(fillRandomRef(5, 'bf16', 77, 1, count - 5)));
  }, 30_000);
});

describe.skipIf(!gpuUsable)('cudaEmbed', () => {
  it('gathers rows for the vector and the generic path, repeated ids, one row', async () => {
    const r = rng(4);
    for (const [vocab, hidden, outOff] of [[1000, 4096, 0], [333, 4097, 0], [50, 64, 4], [7, 1, 0]]) {
      const table = toBf16(randn(vocab * hidden, r));
      const d = arena(table.byteLength);
      up(d.ref(0), table);
      for (const ids of [Int32Array.of(vocab - 1), Int32Array.from({ length: 37 }, (_, i) => (i * 7919) % vocab), Int32Array.of(0, 0, 3 % vocab, 0)]) {
        const o = arena(outOff + ids.length * hidden * 4);
        native().cudaEmbed({ table: d.ref(0), vocab, hidden, ids, out: o.ref(outOff) });
        expectSameF32(await downF32(o.ref(outOff), ids.length * hidden), embedRef(table, hidden, ids), `${vocab}x${hidden} ids ${ids.length}`);
      }
    }
  });
});

describe.skipIf(!gpuUsable)('cudaRmsNorm', () => {
  // The kernel and rmsNormRef take the same steps; only the f64 sum of squares is ordered differently, which can move
  // the f32-rounded normalized value by one ulp, and the product with w by about one more: 2 ulps = 2^-22 relative.
  const tol = (want: Float32Array) => (i: number) => 2 ** -22 * Math.abs(want[i]) + 1e-44;

  it('matches the reference on odd sizes, one row, and in place', async () => {
    const r = rng(5);
    for (const [rows, n] of [[1, 1], [1, 4096], [7, 4097], [3, 33]]) {
      const x = randn(rows * n, r, 3);
      const w = toBf16(randn(n, r));
      const d = arena(rows * n * 8 + n * 2 + 64);
      const out = d.ref(rows * n * 4), wRef = d.ref(rows * n * 8);
      up(d.ref(0), x);
      up(wRef, w);
      const want = rmsNormRef(x, w, rows, n, 1e-5);
      native().cudaRmsNorm({ x: d.ref(0), weight: wRef, out, rows, n, eps: 1e-5 });
      expectWithin(await downF32(out, rows * n), want, tol(want), `${rows}x${n}`);
      native().cudaRmsNorm({ x: d.ref(0), weight: wRef, out: d.ref(0), rows, n, eps: 1e-5 });
      expectWithin(await downF32(d.ref(0), rows * n), want, tol(want), `${rows}x${n} in place`);
    }
  });

  it('does not overflow on huge activations or underflow on tiny ones; inf and NaN propagate', async () => {
    const n = 1000, rows = 5;
    const x = new Float32Array(rows * n);
    const r = rng(6);
    for (let j = 0; j < n; j++) {
      x[j] = (r() - 0.5) * 1e30; // x^2 overflows f32, not f64
      x[n + j] = (r() - 0.5) * 1e-30; // x^2 underflows f32: eps dominates
      x[2 * n + j] = j === 5 ? Infinity : 1; // inf: NaN there (inf * 0), 0 elsewhere
      x[3 * n + j] = j === 9 ? NaN : 1; // NaN everywhere
      x[4 * n + j] = j % 2 ? 3.4e38 : -3.4e38; // f32 max
    }
    const w = toBf16(Float32Array.from({ length: n }, (_, j) => (j % 3) - 1 + 0.5));
    const d = arena(rows * n * 4 + n * 2);
    up(d.ref(0), x);
    up(d.ref(rows * n * 4), w);
    native().cudaRmsNorm({ x: d.ref(0), weight: d.ref(rows * n * 4), out: d.ref(0), rows, n, eps: 1e-6 });
    const got = await downF32(d.ref(0), rows * n);
    const want = rmsNormRef(x, w, rows, n, 1e-6);
    expectWithin(got, want, tol(want), 'extremes');
    expect(Math.max(...Array.from(got.subarray(0, n), Math.abs))).toBeGreaterThan(1); // normalized, not zeroed
    expect(Number.isNaN(got[2 * n + 5]) && got[2 * n + 6] === 0).toBe(true);
    expect(got.subarray(3 * n, 4 * n).every(Number.isNaN)).toBe(true);
  });
});

describe.skipIf(!gpuUsable)('cudaRope', () => {
  it('is bit-exact with ropeRef, alone and inside a fused qkv row', async () => {
    for (const [rows, heads, headDim] of [[1, 1, 2], [5, 8, 64], [3, 3, 128], [2, 32, 6]]) {
      const { cos, sin } = ropeTables(ropeInvFreq({ headDim, ropeTheta: 500000, ropeScaling: null }), Int32Array.from({ length: rows }, (_, i) => 1000 * i + 17));
      const x = randn(rows * heads * headDim, rng(rows + heads), 2);
      const d = arena(x.byteLength + cos.byteLength * 2);
      up(d.ref(0), x);
      up(d.ref(x.byteLength), cos);
      up(d.ref(x.byteLength + cos.byteLength), sin);
      native().cudaRope({ x: d.ref(0), rows, heads, headDim, cos: d.ref(x.byteLength), sin: d.ref(x.byteLength + cos.byteLength) });
      expectSameF32(await downF32(d.ref(0), x.length), ropeRef(x, rows, heads, headDim, cos, sin), `${rows}x${heads}x${headDim}`);
    }
    // A fused qkv output [rows, (8 + 2 + 2) heads, 64]: rotate q (8 heads) and k (2 heads) in place, v untouched.
    const rows = 4, D = 64, stride = 12 * D;
    const { cos, sin } = ropeTables(ropeInvFreq({ headDim: D, ropeTheta: 10000, ropeScaling: null }), [0, 1, 2, 4095]);
    const qkv = randn(rows * stride, rng(8));
    const d = arena(qkv.byteLength + cos.byteLength * 2);
    const s = userStream();
    const c = d.ref(qkv.byteLength), sn = d.ref(qkv.byteLength + cos.byteLength);
    up(d.ref(0), qkv, s);
    up(c, cos, s);
    up(sn, sin, s);
    native().cudaRope({ x: d.ref(0), rows, heads: 8, headDim: D, rowStride: stride, cos: c, sin: sn, stream: s });
    native().cudaRope({ x: d.ref(8 * D * 4), rows, heads: 2, headDim: D, rowStride: stride, cos: c, sin: sn, stream: s });
    const q = ropeRef(qkv, rows, 8, D, cos, sin, stride);
    const want = ropeRef(q.subarray(8 * D), rows, 2, D, cos, sin, stride); // k starts 8 heads into each row
    expectSameF32((await downF32(d.ref(0), rows * stride, s)).subarray(8 * D), want, 'fused qkv (k and v part)');
    expectSameF32((await downF32(d.ref(0), 8 * D, s)), q.subarray(0, 8 * D), 'fused qkv (q of row 0)');
  });
});

/**
 * Runs cudaGemm with W at wOff and x at xOff (bytes) in one arena and y in another (pre-set to y0 when accumulating).
 */
async function gemm(w: Uint16Array, x: Float32Array, m: number, n: number, k: number,
  o: { wOff?: number; xOff?: number; y0?: Float32Array; stream?: number } = {}): Promise<Float32Array> {
  const wOff = o.wOff ?? 0;
  const xOff = o.xOff ?? Math.ceil((wOff + n * k * 2) / 256) * 256;
  const a = arena(xOff + m * k * 4);
  const y = arena(m * n * 4);
  const stream = o.stream ?? 0;
  up(a.ref(wOff), w.subarray(0, n * k), stream);
  up(a.ref(xOff), x.subarray(0, m * k), stream);
  if (o.y0) up(y.ref(0), o.y0, stream);
  native().cudaGemm({ w: a.ref(wOff), x: a.ref(xOff), y: y.ref(0), m, n, k, accumulate: o.y0 !== undefined, stream });
  return downF32(y.ref(0), m * n, stream);
}

/**
 * Tolerances, from how each path sums:
 * - m <= 16 (CUDA cores): each lane makes about k/32 f32 FMAs in sequence (k/256 chunks of 8, or every 32nd element),
 *   then 5 butterfly adds, then at most one add of y0: at most L = ceil(k/32) + 16 roundings on any path, so
 *   |error| <= L u sum|w x| (the classic gamma_L bound; random rounding makes the real error ~sqrt(L) smaller).
 * - m > 16 (tensor cores): x is rounded to bf16 first (relative 2^-9 per element, so up to 2^-9 sum|w x| against
 *   the f32 reference), after which products are exact and only the tensor cores' f32 accumulation errs; we allow one
 *   ulp (2^-23) of the running sum per product, (k + 32) 2^-23 sum|w x|, against the reference with x rounded alike.
 */
async function checkGemm(w: Uint16Array, x: Float32Array, m: number, n: number, k: number, label: string,
  o: { wOff?: number; xOff?: number; y0?: Float32Array; stream?: number } = {}): Promise<Float32Array> {
  const got = await gemm(w, x, m, n, k, o);
  if (m <= 16) {
    const { y, scale } = gemmBf16Ref(w, x, m, n, k, { y0: o.y0 });
    expectWithin(got, y, (i) => (Math.ceil(k / 32) + 16) * U * scale[i] + 1e-40, label);
  } else {
    const rounded = gemmBf16Ref(w, x, m, n, k, { y0: o.y0, roundX: 'bf16' });
    const acc = (i: number) => (k + 32) * 2 * U * rounded.scale[i] + 1e-40;
    expectWithin(got, rounded.y, acc, `${label} (x rounded to bf16)`);
    const exact = gemmBf16Ref(w, x, m, n, k, { y0: o.y0 });
    // bf16 keeps 8 significant bits: rounding x moves each term by at most 2^-8 of its size (unit roundoff).
    expectWithin(got, exact.y, (i) => 2 ** -8 * exact.scale[i] + acc(i), `${label} (f32 x)`);
  }
  return got;
}

describe.skipIf(!gpuUsable)('cudaGemm', () => {
  const MS = [1, 2, 3, 8, 16, 17, 64, 130];
  // [n, k]: odd n and k (generic loads on every path); k % 8 == 0 but k % 32 != 0 (vector loads, a partial last k-tile).
  for (const [n, k] of [[257, 1031], [1001, 1000]] as const)
    it(`equals the reference for m in ${MS.join(', ')} at n = ${n}, k = ${k}`, async () => {
      const r = rng(n + k);
      const w = toBf16(randn(n * k, r));
      const x = randn(130 * k, r);
      for (const m of MS) await checkGemm(w, x, m, n, k, `m=${m} ${n}x${k}`);
    }, 60_000);

  it('streams big decode shapes: 4096 x 4096 at m = 1, 14336 inner at m = 1, 2, 3, 8', async () => {
    const r = rng(11);
    const w = toBf16(randn(4096 * 4096, r, 0.02));
    await checkGemm(w, randn(4096, r), 1, 4096, 4096, 'm=1 4096x4096');
    const k = 14336, n = 333;
    const w2 = toBf16(randn(n * k, r, 0.02));
    const x = randn(8 * k, r);
    for (const m of [1, 2, 3, 8]) await checkGemm(w2, x, m, n, k, `m=${m} ${n}x${k}`);
  }, 60_000);

  it('covers tall m past several 128-row tiles, k = 1, and n below one tile', async () => {
    const r = rng(12);
    await checkGemm(toBf16(randn(200 * 96, r)), randn(300 * 96, r), 300, 200, 96, 'm=300 200x96');
    for (const m of [1, 5, 16, 40]) await checkGemm(toBf16(randn(33, r)), randn(m, r), m, 33, 1, `k=1 m=${m}`);
    for (const m of [1, 12, 20]) await checkGemm(toBf16(randn(3 * 8, r)), randn(m * 8, r), m, 3, 8, `n=3 m=${m}`);
  });

  it('takes the generic paths for misaligned operands and gives the same answer', async () => {
    const r = rng(13);
    const n = 37, k = 64;
    const w = toBf16(randn(n * k, r));
    const x = randn(40 * k, r);
    for (const m of [1, 5, 40])
      for (const [wOff, xOff] of [[2, 8192], [0, 8196], [6, 8200]]) await checkGemm(w, x, m, n, k, `m=${m} w@${wOff} x@${xOff}`, { wOff, xOff });
  });

  it('accumulates into y on every path', async () => {
    const r = rng(14);
    const n = 129, k = 520;
    const w = toBf16(randn(n * k, r));
    const x = randn(40 * k, r);
    for (const m of [1, 2, 9, 40]) await checkGemm(w, x, m, n, k, `accumulate m=${m}`, { y0: randn(m * n, r, 10) });
    await checkGemm(w, x, 3, n, k - 1, 'accumulate m=3 generic', { y0: randn(3 * n, r) });
  });

  it('gives every row of a multi-row call bitwise the m = 1 result (a speculative row pair decodes alike)', async () => {
    const r = rng(15);
    for (const [n, k] of [[1001, 1000], [257, 1031]]) {
      const w = toBf16(randn(n * k, r));
      const x = randn(16 * k, r);
      const rows = await gemm(w, x, 16, n, k);
      const pair = await gemm(w, x, 2, n, k);
      for (const i of [0, 1, 7, 8, 15]) {
        const one = await gemm(w, x.subarray(i * k, (i + 1) * k), 1, n, k);
        expectSameF32(rows.subarray(i * n, (i + 1) * n), one, `row ${i} of 16, ${n}x${k}`);
        if (i < 2) expectSameF32(pair.subarray(i * n, (i + 1) * n), one, `row ${i} of 2, ${n}x${k}`);
      }
    }
  });

  it('handles extreme values on every path: bf16 max, subnormals, signed zeros, inf, NaN', async () => {
    const n = 8, k = 40;
    const w = new Uint16Array(n * k);
    for (let c = 0; c < k; c++) {
      w[0 * k + c] = c % 3 ? 0x7f7f : 0xff7f; // +-3.39e38 (bf16 max) times ~1e-3: large but finite sums
      w[1 * k + c] = c === 7 ? 0x7f80 : 0x3f80; // one +inf -> +-inf
      w[2 * k + c] = c === 3 ? 0x7f80 : c === 9 ? 0xff80 : 0; // +inf and -inf -> NaN
      w[3 * k + c] = c === 20 ? 0x7fc0 : 0x4000; // NaN
      w[4 * k + c] = c % 2 ? 0x0001 : 0x8003; // subnormals
      w[5 * k + c] = c % 2 ? 0x8000 : 0x0000; // signed zeros
      w[6 * k + c] = f32ToBf16(1 + c / 64);
      w[7 * k + c] = f32ToBf16(c % 2 ? 1e30 : -1e30);
    }
    // x values exact in bf16, so the tensor path rounds nothing away and one tolerance serves all paths.
    for (const m of [1, 3, 20]) {
      const x = roundThrough(Float32Array.from({ length: m * k }, (_, i) => ((i % k) % 2 ? 1e-3 : -2e-3) * (1 + (i % 5))), 'bf16');
      const got = await checkGemm(w, x, m, n, k, `extremes m=${m}`);
      expect(Number.isNaN(got[2]) && Math.abs(got[1]) === Infinity, `m=${m}`).toBe(true);
      const poisoned = Float32Array.from(x);
      poisoned[5] = NaN; // poisons every output of row 0, and only row 0
      const all = await gemm(w, poisoned, m, n, k);
      expect(all.subarray(0, n).every(Number.isNaN), `m=${m}`).toBe(true);
      // Other rows keep only their own NaNs: W rows 2 (inf - inf) and 3 (a NaN weight).
      expect(Array.from(all.subarray(n)).filter(Number.isNaN).length, `m=${m}`).toBe((m - 1) * 2);
    }
  });

  it('runs on a user stream', async () => {
    const r = rng(16);
    const s = userStream();
    const n = 300, k = 512;
    const w = toBf16(randn(n * k, r));
    const x = randn(64 * k, r);
    for (const m of [1, 4, 64]) await checkGemm(w, x, m, n, k, `stream m=${m}`, { stream: s });
  });
});

describe.skipIf(!gpuUsable)('cudaSwiGlu', () => {
  // expf is within 2 ulps on the GPU; 1 + e, the division and two products add four roundings: 8 ulps is ample.
  const tol = (want: Float32Array) => (i: number) => 2 ** -20 * Math.abs(want[i]) + 1e-30;

  it('matches silu(gate) * up on odd shapes and extreme gates', async () => {
    const r = rng(17);
    for (const [m, inter] of [[1, 1], [1, 14336], [3, 11], [5, 1000]]) {
      const gu = randn(m * 2 * inter, r, 4);
      const d = arena(gu.byteLength * 2);
      up(d.ref(0), gu);
      native().cudaSwiGlu({ gateUp: d.ref(0), out: d.ref(gu.byteLength), m, inter });
      const want = swigluRef(gu, m, inter);
      expectWithin(await downF32(d.ref(gu.byteLength), m * inter), want, tol(want), `${m}x${inter}`);
    }
    const gates = [0, -0, 1, -1, 20, -20, 88, -88, 100, -100, 1e30, -1e30, Infinity, -Infinity, NaN, 1e-40];
    const gu = new Float32Array(gates.length * 2);
    gu.set(gates);
    gu.fill(1.5, gates.length);
    const d = arena(gu.byteLength * 2);
    up(d.ref(0), gu);
    native().cudaSwiGlu({ gateUp: d.ref(0), out: d.ref(gu.byteLength), m: 1, inter: gates.length });
    const got = await downF32(d.ref(gu.byteLength), gates.length);
    const want = swigluRef(gu, 1, gates.length);
    expectWithin(got, want, tol(want), 'extreme gates');
    expect(got[12]).toBe(Infinity);
    expect(Number.isNaN(got[13]) && Number.isNaN(got[14])).toBe(true); // silu(-inf) = -inf * 0, as torch
  });
});

describe.skipIf(!gpuUsable)('cudaAdd', () => {
  it('adds exactly, in place on either side, aligned or not', async () => {
    const r = rng(18);
    for (const [count, off] of [[1, 0], [5, 0], [1_000_003, 0], [1001, 4]]) {
      const a = randn(count, r), b = randn(count, r);
      const d = arena(off + count * 12);
      const ra = d.ref(off), rb = d.ref(off + count * 4), ro = d.ref(off + count * 8);
      up(ra, a);
      up(rb, b);
      native().cudaAdd({ a: ra, b: rb, out: ro, n: count });
      expectSameF32(await downF32(ro, count), addRef(a, b), `${count}@${off}`);
      native().cudaAdd({ a: ra, b: rb, out: ra, n: count }); // a += b
      native().cudaAdd({ a: ra, b: rb, out: rb, n: count }); // b = (a + b) + b
      const ab = addRef(a, b);
      expectSameF32(await downF32(ra, count), ab, `${count} out = a`);
      expectSameF32(await downF32(rb, count), addRef(ab, b), `${count} out = b`);
    }
  });
});

describe.skipIf(!gpuUsable)('cudaAddBias', () => {
  it('adds the bias to the first n floats of every row, leaving the rest of a strided row alone', async () => {
    const r = rng(19);
    for (const [rows, n, stride] of [[1, 1, 1], [1, 1536, 1536], [77, 640, 640], [9, 100, 131], [3000, 4608, 4608]]) {
      const x = randn((rows - 1) * stride + n, r), bias = randn(n, r);
      const d = arena((x.length + n) * 4);
      up(d.ref(0), x);
      up(d.ref(x.length * 4), bias);
      native().cudaAddBias({ x: d.ref(0), bias: d.ref(x.length * 4), rows, n, rowStride: stride });
      expectSameF32(await downF32(d.ref(0), x.length), addBiasRef(x, bias, rows, n, stride), `${rows} x ${n} / ${stride}`);
    }
  });

  it('refuses a bias overlapping x and a stride under n', () => {
    const d = arena(1 << 16);
    expect(() => native().cudaAddBias({ x: d.ref(0), bias: d.ref(64), rows: 4, n: 32 })).toThrow('Expected a range that does not overlap bias for cudaAddBias.x but received an overlapping range at offset 0');
    expect(() => native().cudaAddBias({ x: d.ref(0), bias: d.ref(8192), rows: 4, n: 32, rowStride: 16 })).toThrow('Expected cudaAddBias.rowStride in [32, 1099511627776] but received 16');
  });
});

describe.skipIf(!gpuUsable)('cudaArgmax', () => {
  it('follows sampling.ts argmax: first maximum, NaN skipped, NaN first gives 0', async () => {
    const n = 1000;
    const rowsOf: Float32Array[] = [];
    const row = (f: (x: Float32Array) => void) => {
      const x = randn(n, rng(rowsOf.length + 100));
      f(x);
      rowsOf.push(x);
    };
    row(() => undefined); // random
    row((x) => { x[500] = 50; x[900] = 50; }); // tie: the first
    row((x) => { x[999] = 1e30; }); // the last index
    row((x) => { x[0] = NaN; x[10] = 1e30; }); // NaN at 0 is never beaten: 0
    row((x) => { x[3] = NaN; x[4] = 100; x[700] = NaN; }); // NaN skipped
    row((x) => x.fill(-Infinity)); // all -inf: 0
    row((x) => { x.fill(-Infinity); x[0] = NaN; }); // NaN, then -inf: 0
    row((x) => { x.fill(0); x[0] = -0; x[5] = 0; }); // -0 == +0: the first
    row((x) => { x.fill(NaN); x[0] = -5; x[600] = -4; }); // only NaN besides two values
    row((x) => { x[250] = Infinity; x[251] = Infinity; });
    const m = rowsOf.length;
    const all = new Float32Array(m * n);
    rowsOf.forEach((x, i) => all.set(x, i * n));
    const d = arena(all.byteLength + m * 4);
    up(d.ref(0), all);
    native().cudaArgmax({ x: d.ref(0), m, n, out: d.ref(all.byteLength) });
    expect(Array.from(await downI32(d.ref(all.byteLength), m))).toEqual(Array.from(argmaxRef(all, m, n)));
    expect(Array.from(argmaxRef(all, m, n)).slice(1, 9)).toEqual([500, 999, 0, 4, 0, 0, 0, 600]);
  });

  it('handles n = 1 and a vocabulary-sized row on a user stream', async () => {
    const s = userStream();
    for (const [m, n] of [[3, 1], [2, 128256]]) {
      const x = randn(m * n, rng(n));
      const d = arena(x.byteLength + m * 4);
      up(d.ref(0), x, s);
      native().cudaArgmax({ x: d.ref(0), m, n, out: d.ref(x.byteLength), stream: s });
      expect(Array.from(await downI32(d.ref(x.byteLength), m, s))).toEqual(Array.from(argmaxRef(x, m, n)));
    }
  });
});
