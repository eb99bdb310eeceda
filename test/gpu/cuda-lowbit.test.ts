// The low-bit CUDA kernels against the TypeScript references on a real GPU: cudaKiviQuantize (bit-exact with
// quantizeKeysRef / quantizeValuesRef, untouched bytes stay untouched), cudaKiviScores (scoreKeysRef),
// cudaTopK (topKRef: ties, NaN, +-0, k = 1 .. n, n = 131072) and cudaKiviAttend (kiviAttendRef with exclusions).
import { afterEach, describe, expect, it } from 'vitest';
import { cudaKiviAttendScratchBytes, deviceLowBitLayout, deviceTopKRef, type DeviceLowBitLayout, type DeviceLowBitShape } from '../../src/kernels/device-lowbit-layout.js';
import { f16ToF32, fromHalf, toHalf, type HalfDtype } from '../../src/kernels/half.js';
import { kiviAttendRef } from '../../src/kernels/kivi-attention.js';
import { quantizeKeysRef, quantizeValuesRef, scoreKeysRef, type KiviBits, type QuantKeys, type QuantValues } from '../../src/kernels/kivi.js';
import { topKRef } from '../../src/kernels/topk.js';
import { native } from '../../src/native.js';
import { randn, rng } from '../helpers.js';
import { DevArena, gpuUsable } from './cuda-helpers.js';

const devs: DevArena[] = [];
const streams: number[] = [];
afterEach(async () => {
  if (gpuUsable) await native().cudaStreamSynchronize({});
  for (const s of streams.splice(0)) native().cudaStreamDestroy({ stream: s });
  for (const d of devs.splice(0)) d.free();
});

function dev(bytes: number): DevArena {
  const d = new DevArena(Math.max(bytes, 256));
  devs.push(d);
  return d;
}
const readBytes = (d: DevArena, offset: number, bytes: number): Uint8Array => native().cudaArenaRead({ handle: d.handle, offset, bytes });
const readI32 = (d: DevArena, offset: number, count: number): Int32Array => {
  const b = readBytes(d, offset, count * 4);
  return new Int32Array(b.buffer.slice(b.byteOffset, b.byteOffset + count * 4));
};
const bytesOf = (a: ArrayBufferView): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

/** Throws at the first differing byte, naming the buffer and offset (vitest's diff of megabytes is unreadable). */
function expectSameBytes(got: Uint8Array, want: Uint8Array, label: string): void {
  expect(got.length, label).toBe(want.length);
  if (Buffer.compare(Buffer.from(got), Buffer.from(want)) === 0) return;
  let i = 0;
  while (got[i] === want[i]) i++;
  throw new Error(`${label}: first difference at byte ${i} of ${want.length}: got ${got[i]}, want ${want[i]}`);
}

// ---- KV regions and the low-bit image built by the references ----

type Mode = 'normal' | 'constant' | 'extreme' | 'special';

/** A standard normal draw (Box-Muller), without randn's per-call array. */
function gauss(r: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
}

/** One 16-bit element: gaussian with per-channel offsets, or the adversarial patterns the mode asks for. */
function element(mode: Mode, c: number, r: () => number, dtype: HalfDtype): number {
  const g = gauss(r);
  let x = g + (c % 7) - 3;
  if (mode === 'constant' && c % 3 === 0) x = 0.75 * (c % 5); // the whole channel / group constant: scale 0
  if (mode === 'extreme') x = (r() < 0.5 ? -1 : 1) * 65504 * (0.98 + 0.02 * r()); // near fp16 max: params clamp
  if (mode === 'special') {
    const u = r();
    if (u < 0.04) return dtype === 'f16' ? 0x7e00 : 0x7fc0; // NaN
    if (u < 0.10) return 0x8000; // -0
    if (u < 0.16) return 0x0000; // +0
    if (u < 0.19) return dtype === 'f16' ? 0xfc00 : 0xff80; // -inf
    if (u < 0.21) return dtype === 'f16' ? 0x7c00 : 0x7f80; // +inf
    x = Math.abs(g); // most values positive so that the zeros are the group minimum
  }
  return toHalf(x, dtype);
}

interface Region {
  words: Uint16Array; // [H, kvCap, 2, D]
  at: (h: number, row: number, kv: 0 | 1, c: number) => number; // the exact f32 value
}

function region(H: number, kvCap: number, D: number, dtype: HalfDtype, mode: Mode, r: () => number): Region {
  const words = new Uint16Array(H * kvCap * 2 * D);
  for (let i = 0; i < words.length; i++) words[i] = element(mode, i % D, r, dtype);
  return { words, at: (h, row, kv, c) => fromHalf(words[((h * kvCap + row) * 2 + kv) * D + c]!, dtype) };
}

/** Writes quantized keys (groups g0..) and values (tokens t0..) of head h into a layer image at the layout's offsets. */
function place(img: Uint8Array, L: DeviceLowBitLayout, s: DeviceLowBitShape, h: number, keys?: { g0: number; q: QuantKeys }, values?: { t0: number; q: QuantValues }): void {
  const base = h * L.sectionBytes;
  const rowBytes = (s.headDim * s.bits) / 8;
  if (keys) {
    img.set(keys.q.codes, base + L.keyCodes + keys.g0 * s.keyGroupSize * rowBytes);
    img.set(bytesOf(keys.q.zero), base + L.keyZero + keys.g0 * s.headDim * 2);
    img.set(bytesOf(keys.q.scale), base + L.keyScale + keys.g0 * s.headDim * 2);
  }
  if (values) {
    const ng = s.headDim / s.valueGroupSize;
    img.set(values.q.codes, base + L.valueCodes + values.t0 * rowBytes);
    img.set(bytesOf(values.q.zero), base + L.valueZero + values.t0 * ng * 2);
    img.set(bytesOf(values.q.scale), base + L.valueScale + values.t0 * ng * 2);
  }
}

/** Random keys and values of n tokens per head, quantized by the references: the image and the per-head parts. */
function referenceCopy(s: DeviceLowBitShape, numGroups: number, r: () => number, mode: Mode = 'normal') {
  const L = deviceLowBitLayout(s);
  const D = s.headDim;
  const n = numGroups * s.keyGroupSize;
  const img = new Uint8Array(L.layerBytes);
  const keys: QuantKeys[] = [];
  const values: QuantValues[] = [];
  const f32 = (i: number) => fromHalf(element(mode, i % D, r, 'f16'), 'f16');
  for (let h = 0; h < s.numKvHeads; h++) {
    keys.push(quantizeKeysRef(Float32Array.from({ length: n * D }, (_, i) => f32(i)), numGroups, s.keyGroupSize, D, s.bits));
    values.push(s.keysOnly ? { codes: new Uint8Array(0), zero: new Uint16Array(0), scale: new Uint16Array(0) } : quantizeValuesRef(Float32Array.from({ length: n * D }, (_, i) => f32(i)), n, s.valueGroupSize, D, s.bits));
    place(img, L, s, h, { g0: 0, q: keys[h]! }, s.keysOnly ? undefined : { t0: 0, q: values[h]! });
  }
  return { L, img, keys, values, n };
}

// ---- cudaKiviQuantize ----

describe.skipIf(!gpuUsable)('cudaKiviQuantize', () => {
  // [first, tokens] pairs: bulk (capacity not a group multiple), unaligned, one token (no key group), one exact group.
  const ranges = (KG: number): [number, number][] => [[0, 200], [37, 150], [70, 1], [KG, KG]];
  let seed = 1;
  for (const bits of [1, 2, 4] as const)
    for (const D of [32, 64, 128] as const)
      for (const KG of [32, 64] as const)
        it(`is bit-exact with quantizeKeysRef / quantizeValuesRef: ${bits} bits, head_dim ${D}, key groups of ${KG}`, async () => {
          for (const [first, tokens] of ranges(KG)) {
            const dtype: HalfDtype = (first + bits) % 2 ? 'bf16' : 'f16';
            const modes: Mode[] = D === 64 ? ['normal', 'constant', 'extreme', 'special'] : ['normal'];
            for (const mode of modes) {
              const r = rng(seed++);
              const VG = mode === 'constant' ? 8 : D === 32 ? 16 : 32;
              const s: DeviceLowBitShape = { numKvHeads: 3, headDim: D, bits, keyGroupSize: KG, valueGroupSize: VG, capacityTokens: 210 };
              const L = deviceLowBitLayout(s);
              const kvCap = tokens + 9, kvFirstRow = 4;
              const reg = region(3, kvCap, D, dtype, mode, r);
              const kv = dev(reg.words.byteLength + 256);
              kv.write(256, reg.words); // a 256-byte offset: the region need not start the arena
              const lb = dev(L.layerBytes + 512);
              const want = new Uint8Array(L.layerBytes).fill(0xcd); // bytes the call must not touch keep this
              lb.write(512, want);
              const res = native().cudaKiviQuantize({ ...s, kv: kv.ref(256), dtype, kvCapacity: kvCap, kvFirstRow, first, tokens, lowBit: lb.ref(512) });
              const g0 = Math.ceil(first / KG), g1 = Math.floor((first + tokens) / KG);
              expect(res).toEqual({ firstKeyGroup: g0, keyGroups: Math.max(0, g1 - g0) });
              for (let h = 0; h < 3; h++) {
                const src = (kvOrV: 0 | 1, t0: number, count: number) => {
                  const out = new Float32Array(count * D); // [count, D]
                  for (let t = 0; t < count; t++) for (let c = 0; c < D; c++) out[t * D + c] = reg.at(h, kvFirstRow + t0 - first + t, kvOrV, c);
                  return out;
                };
                const vq = quantizeValuesRef(src(1, first, tokens), tokens, VG, D, bits);
                const kq = g1 > g0 ? quantizeKeysRef(src(0, g0 * KG, (g1 - g0) * KG), g1 - g0, KG, D, bits) : undefined;
                place(want, L, s, h, kq && { g0, q: kq }, { t0: first, q: vq });
              }
              await native().cudaStreamSynchronize({});
              expectSameBytes(readBytes(lb, 512, L.layerBytes), want, `${mode} ${dtype} first ${first} tokens ${tokens}`);
            }
          }
        }, 30_000);

  it('with keysOnly writes keys only, on a user stream, and 131072 tokens in bulk', async () => {
    const r = rng(99);
    const stream = native().cudaStreamCreate();
    streams.push(stream);
    const s: DeviceLowBitShape = { numKvHeads: 1, headDim: 128, bits: 2, keyGroupSize: 64, valueGroupSize: 32, capacityTokens: 131072, keysOnly: true };
    const L = deviceLowBitLayout(s);
    const N = 131072;
    const reg = region(1, N, 128, 'bf16', 'normal', r);
    const kv = dev(reg.words.byteLength);
    kv.write(0, reg.words);
    const lb = dev(L.layerBytes);
    const want = new Uint8Array(L.layerBytes).fill(0xcd);
    lb.write(0, want);
    native().cudaKiviQuantize({ ...s, kv: kv.ref(0), dtype: 'bf16', kvCapacity: N, kvFirstRow: 0, first: 0, tokens: N, lowBit: lb.ref(0), stream });
    for (let h = 0; h < 1; h++) {
      const src = Float32Array.from({ length: N * 128 }, (_, i) => reg.at(h, Math.floor(i / 128), 0, i % 128));
      place(want, L, s, h, { g0: 0, q: quantizeKeysRef(src, N / 64, 64, 128, 2) });
    }
    await native().cudaStreamSynchronize({ stream });
    expectSameBytes(readBytes(lb, 0, L.layerBytes), want, 'keysOnly bulk');
  }, 30_000);
});

// ---- cudaKiviScores ----

describe.skipIf(!gpuUsable)('cudaKiviScores', () => {
  let seed = 1000;
  for (const bits of [1, 2, 4] as const)
    for (const D of [32, 64, 128, 256] as const)
      it(`matches scoreKeysRef (mean over the GQA group): ${bits} bits, head_dim ${D}`, async () => {
        for (const KG of [32, 64] as const)
          for (const G of [1, 4, 8])
            for (const numGroups of [1, 37]) {
              const r = rng(seed++);
              const s: DeviceLowBitShape = { numKvHeads: 3, headDim: D, bits, keyGroupSize: KG, valueGroupSize: D, capacityTokens: 40 * KG + 5, keysOnly: true };
              const { L, img, keys, n } = referenceCopy(s, numGroups, r, G === 4 ? 'constant' : 'normal');
              const q = randn(3 * G * D, r);
              const ldOut = n + 7;
              const lb = dev(L.layerBytes);
              lb.write(0, img);
              const io = dev(q.byteLength + 3 * ldOut * 4 + 256);
              io.write(0, q);
              const outAt = Math.ceil(q.byteLength / 256) * 256;
              io.write(outAt, new Float32Array(3 * ldOut).fill(-7)); // the tail of each row must stay -7
              native().cudaKiviScores({ ...s, lowBit: lb.ref(0), groupSize: G, q: io.ref(0), numGroups, out: io.ref(outAt), ldOut });
              await native().cudaStreamSynchronize({});
              const got = io.readF32(outAt, 3 * ldOut);
              const levels = (1 << bits) - 1;
              for (let h = 0; h < 3; h++) {
                const qh = q.subarray(h * G * D, (h + 1) * G * D);
                const want = scoreKeysRef(qh, G, keys[h]!, numGroups, KG, D, bits);
                // f32 accumulation of D terms (and the f32 mean query) against the fp64 reference: bound the error by
                // D * 2^-23 times the sum of term magnitudes |qm_c| (|zero_c| + |scale_c| * levels) of the token's group.
                const qm = Float64Array.from({ length: D }, (_, c) => {
                  let v = 0;
                  for (let j = 0; j < G; j++) v += qh[j * D + c]!;
                  return Math.abs(v / G);
                });
                const mags = Float64Array.from({ length: numGroups }, (_, g) => {
                  let m = 0;
                  for (let c = 0; c < D; c++) m += qm[c]! * (Math.abs(f16ToF32(keys[h]!.zero[g * D + c]!)) + Math.abs(f16ToF32(keys[h]!.scale[g * D + c]!)) * levels);
                  return m;
                });
                for (let t = 0; t < n; t++) {
                  const mag = mags[Math.floor(t / KG)]!;
                  const err = Math.abs(got[h * ldOut + t]! - want[t]!);
                  if (!(err <= D * 2 ** -23 * mag + 1e-6)) throw new Error(`KG ${KG} G ${G} groups ${numGroups} head ${h} token ${t}: got ${got[h * ldOut + t]}, want ${want[t]}`);
                }
                for (let t = n; t < ldOut; t++) expect(got[h * ldOut + t]).toBe(-7);
              }
            }
      }, 30_000);
});

// ---- cudaTopK ----

/** Runs cudaTopK on scores [rows, ld] (with a mask) and compares positions and mask with the reference exactly. */
async function checkTopK(scores: Float32Array, rows: number, ld: number, first: number, n: number, ks: number[], label: string, stream = 0): Promise<void> {
  const sd = dev(scores.byteLength + 16);
  sd.write(4, scores); // 4 bytes in: rows start off the 16-byte grid, so the float4 head and tail paths run
  const kmax = Math.max(...ks);
  // One reference order per row (the top-k lists are prefixes of it), not one sort per k.
  const full: Int32Array[] = [];
  for (let r = 0; r < rows; r++) full.push(topKRef(scores.subarray(r * ld + first, r * ld + first + n), 1, n, kmax));
  for (const k of ks) {
    const od = dev(rows * k * 4);
    const md = dev(rows * ld);
    md.write(0, new Uint8Array(rows * ld).fill(0xab));
    native().cudaTopK({ scores: sd.ref(4), rows, ld, first, n, k, out: od.ref(0), mask: md.ref(0), stream });
    await native().cudaStreamSynchronize({ stream });
    const got = readI32(od, 0, rows * k);
    const want = new Int32Array(rows * k);
    const wantMask = new Uint8Array(rows * ld);
    for (let r = 0; r < rows; r++)
      for (let j = 0; j < k; j++) {
        want[r * k + j] = first + full[r]![j]!;
        wantMask[r * ld + first + full[r]![j]!] = 1;
      }
    expectSameBytes(bytesOf(got), bytesOf(want), `${label} k ${k} positions`);
    expectSameBytes(readBytes(md, 0, rows * ld), wantMask, `${label} k ${k} mask`);
  }
}

describe.skipIf(!gpuUsable)('cudaTopK', () => {
  it('matches topKRef on distinct scores, k = 1 .. n, at unaligned offsets', async () => {
    const r = rng(7);
    for (const first of [0, 1, 2, 3, 13]) {
      const rows = 3, ld = 1000 + first, n = 997 - first;
      await checkTopK(randn(rows * ld, r), rows, ld, first, n, [1, 17, 64, n], `distinct first ${first}`);
    }
    await checkTopK(Float32Array.of(3), 1, 1, 0, 1, [1], 'n 1');
    await checkTopK(Float32Array.of(0, 2, 1, 2, 2), 1, 5, 0, 5, [1, 2, 3, 5], 'n 5');
  }, 30_000);

  it('breaks ties to the lower index, ranks NaN last, and treats -0 as +0', async () => {
    const r = rng(8);
    const rows = 4, ld = 5003, n = 5000, first = 3;
    const s = new Float32Array(rows * ld);
    for (let i = 0; i < s.length; i++) {
      const row = Math.floor(i / ld);
      const u = r();
      if (row === 0) s[i] = Math.round(gauss(r) * 2) / 2; // few distinct values: ties at every threshold
      else if (row === 1) s[i] = u < 0.3 ? NaN : u < 0.4 ? -0 : u < 0.5 ? 0 : u < 0.55 ? -Infinity : u < 0.6 ? Infinity : gauss(r);
      else if (row === 2) s[i] = 1.5; // all equal: the first k positions
      else s[i] = NaN; // all NaN: also the first k positions
    }
    await checkTopK(s, rows, ld, first, n, [1, 100, 2000, 4096], 'ties');
    await checkTopK(s.subarray(0, 2 * ld), 2, ld, first, 4000, [4000], 'ties, k = n');
  }, 30_000);

  it('handles 8 rows of 131072 (the 8B Llama shape) on a user stream', async () => {
    const r = rng(9);
    const stream = native().cudaStreamCreate();
    streams.push(stream);
    const rows = 8, n = 131072, ld = n + 64;
    const s = randn(rows * ld, r);
    for (let i = 0; i < s.length; i += 97) s[i] = s[i - (i % 1000)]!; // some exact duplicates
    await checkTopK(s, rows, ld, 0, n, [64, 512, 4096], '131072', stream);
    await checkTopK(s, rows, ld, 64, n, [256], '131072 at first 64', stream);
  }, 60_000);
});

// ---- cudaKiviAttend ----

type Copy = ReturnType<typeof referenceCopy> & { s: DeviceLowBitShape; lb: DevArena };

/** A reference-quantized layer (keys and values of every head), written to the device once and shared by cases. */
function attendCopy(bits: KiviBits, D: 32 | 64 | 128, KG: 32 | 64, VG: number, H: number, numGroups: number, seed: number): Copy {
  const s: DeviceLowBitShape = { numKvHeads: H, headDim: D, bits, keyGroupSize: KG, valueGroupSize: VG, capacityTokens: numGroups * KG + 11 };
  const copy = referenceCopy(s, numGroups, rng(seed));
  const lb = dev(copy.L.layerBytes);
  lb.write(0, copy.img);
  return { ...copy, s, lb };
}

interface AttendCase {
  G: number;
  first: number;
  end: number;
  exclude: 'none' | 'some' | 'all';
  scale?: number;
  stream?: number;
  rows?: number; // > 1: one call for `rows` query rows (strided q and out), each checked against its own rows = 1 reference
}

async function checkAttend(cp: Copy, c: AttendCase, seed: number): Promise<void> {
  const r = rng(seed);
  const { s, keys, values, n } = cp;
  const { headDim: D, numKvHeads: H, bits, keyGroupSize: KG, valueGroupSize: VG } = s;
  const numGroups = n / KG;
  const G = c.G;
  const R = c.rows ?? 1;
  const rowFloats = H * G * D;
  // Rows of q and out a few floats further apart than their size: the strides are honoured, the gaps untouched.
  const qStride = R > 1 ? rowFloats + 40 : rowFloats, oStride = R > 1 ? rowFloats + 24 : rowFloats;
  const q = randn((R - 1) * qStride + rowFloats, r);
  const oFloats = (R - 1) * oStride + rowFloats;
  const scale = c.scale ?? 1 / Math.sqrt(D);
  const ldEx = n + 3;
  const mask = new Uint8Array(H * ldEx);
  for (let i = 0; i < mask.length; i++) mask[i] = c.exclude === 'all' ? 1 : c.exclude === 'some' ? (r() < 0.3 ? 1 + Math.floor(r() * 200) : 0) : 0;
  const scratchBytes = cudaKiviAttendScratchBytes({ numKvHeads: H, groupSize: G, headDim: D, maxTokens: c.end - c.first, ...(R > 1 ? { rows: R } : {}) });
  const io = dev(5 * 256 + q.byteLength + oFloats * 4 + R * H * G * 4 + mask.length + scratchBytes);
  let at = 0;
  const take = (bytes: number) => {
    const o = at;
    at += Math.ceil(bytes / 256) * 256;
    return o;
  };
  const qAt = take(q.byteLength), oAt = take(oFloats * 4), lseAt = take(R * H * G * 4), exAt = take(mask.length), scAt = take(scratchBytes);
  io.write(qAt, q);
  io.write(oAt, new Float32Array(oFloats).fill(NaN)); // every output must be written
  io.write(lseAt, new Float32Array(R * H * G).fill(NaN));
  io.write(exAt, mask);
  native().cudaKiviAttend({
    ...s, lowBit: cp.lb.ref(0), groupSize: G, q: io.ref(qAt), scale, first: c.first, end: c.end,
    ...(c.exclude === 'none' ? {} : { exclude: io.ref(exAt), ldExclude: ldEx }),
    out: io.ref(oAt), lse: io.ref(lseAt), scratch: io.ref(scAt), scratchBytes, ...(c.stream ? { stream: c.stream } : {}),
    ...(R > 1 ? { rows: R, qRowStride: qStride, outRowStride: oStride } : {}),
  });
  await native().cudaStreamSynchronize({ stream: c.stream ?? 0 });
  const oAll = io.readF32(oAt, oFloats);
  const lseAll = io.readF32(lseAt, R * H * G);
  for (let rr = 0; rr + 1 < R; rr++) for (let i = rowFloats; i < oStride; i++) expect(oAll[rr * oStride + i], 'a gap between out rows').toBeNaN();
  const levels = (1 << bits) - 1;
  for (let rr = 0; rr < R; rr++) {
    for (let h = 0; h < H; h++) {
      const o = oAll.subarray(rr * oStride, rr * oStride + rowFloats);
      const lse = lseAll.subarray(rr * H * G, (rr + 1) * H * G);
      const skip: number[] = [];
      for (let t = 0; t < n; t++) if (t < c.first || t >= c.end || (c.exclude !== 'none' && mask[h * ldEx + t] !== 0)) skip.push(t);
      const qh = q.subarray(rr * qStride + h * G * D, rr * qStride + (h + 1) * G * D);
      const want = kiviAttendRef({
        bits, headDim: D, keyGroupSize: KG, valueGroupSize: VG, numGroups, queryHeads: G, q: qh, scale, keys: keys[h]!, values: values[h]!, exclude: skip,
      });
      // Tolerance, from the kernel's arithmetic: a score is an f32 sum of D products against fp64, so its error is at most
      // D * 2^-23 * sum_c |scale q_c| (|zero_c| + |scale_c| levels) (the worst key group); the output is a convex
      // combination, so that moves it by at most ~2 err max|v|; 1e-4 max|v| covers f32 accumulation over <= 512 tokens
      // a chunk and the combine. The kernel sums p z and (p s) code apart (v = z + s code reassociated): each term is at
      // most p (|z| + |s| levels) <= p max|v|, so that bound stands unchanged. Rows > 1 share the codes, not the
      // arithmetic: each row is summed as a row of its own. A wrong or missing token in the 40-token case moves o by
      // ~max|v| / 40: far outside.
      let vmax = 0;
      for (const z of [values[h]!.zero, values[h]!.scale]) for (let i = 0; i < z.length; i++) vmax = Math.max(vmax, Math.abs(f16ToF32(z[i]!)));
      vmax *= levels + 1;
      for (let g = 0; g < G; g++) {
        let errS = 0;
        for (let grp = 0; grp < numGroups; grp++) {
          let m = 0;
          for (let ch = 0; ch < D; ch++) m += Math.abs(scale * qh[g * D + ch]!) * (Math.abs(f16ToF32(keys[h]!.zero[grp * D + ch]!)) + Math.abs(f16ToF32(keys[h]!.scale[grp * D + ch]!)) * levels);
          errS = Math.max(errS, D * 2 ** -23 * m);
        }
        const row = h * G + g;
        const label = `bits ${bits} D ${D} KG ${KG} VG ${VG} G ${G} rows ${R} [${c.first}, ${c.end}) exclude ${c.exclude}, row ${rr} head ${h} g ${g}`;
        if (want.lse[g] === -Infinity) {
          expect(lse[row], label).toBe(-Infinity);
          for (let ch = 0; ch < D; ch++) expect(o[row * D + ch], label).toBe(0);
          continue;
        }
        const lseTol = 2 * errS + 1e-5 * Math.max(1, Math.abs(want.lse[g]!));
        if (!(Math.abs(lse[row]! - want.lse[g]!) <= lseTol)) throw new Error(`${label}: lse ${lse[row]}, want ${want.lse[g]} (tol ${lseTol})`);
        const oTol = (2 * errS + 1e-4) * vmax;
        for (let ch = 0; ch < D; ch++) {
          const e = Math.abs(o[row * D + ch]! - want.o[g * D + ch]!);
          if (!(e <= oTol)) throw new Error(`${label} channel ${ch}: o ${o[row * D + ch]}, want ${want.o[g * D + ch]} (tol ${oTol})`);
        }
      }
    }
  }
}

describe.skipIf(!gpuUsable)('cudaKiviAttend', () => {
  let seed = 5000;
  for (const bits of [1, 2, 4] as const)
    for (const D of [32, 64, 128] as const)
      it(`matches kiviAttendRef: ${bits} bits, head_dim ${D}, GQA 1/3/4/8, with exclusions`, async () => {
        for (const KG of [32, 64] as const) {
          const VG = KG === 32 ? 8 : D === 32 ? 16 : 32;
          const ng = Math.ceil(1300 / KG); // 3 chunks of 512
          const n = ng * KG;
          const cp = attendCopy(bits, D, KG, VG, 2, ng, seed++);
          for (const G of [1, 3, 4, 8]) {
            // The whole range; an unaligned range across chunk edges with some excluded; a small range (single-token
            // errors show); one token; an empty range; every token excluded.
            await checkAttend(cp, { G, first: 0, end: n, exclude: 'none' }, seed++);
            await checkAttend(cp, { G, first: 37, end: n - 5, exclude: 'some' }, seed++);
            await checkAttend(cp, { G, first: 500, end: 540, exclude: 'some', scale: 0.5 }, seed++);
            await checkAttend(cp, { G, first: 5, end: 6, exclude: 'none' }, seed++);
            await checkAttend(cp, { G, first: 9, end: 9, exclude: 'none' }, seed++);
            await checkAttend(cp, { G, first: 3, end: 2 * KG, exclude: 'all' }, seed++);
          }
          // Several rows in one call (rows * G up to 16): each row as its own rows = 1 reference.
          for (const [G, R] of [[1, 2], [3, 2], [4, 2], [8, 2], [4, 4]]) {
            await checkAttend(cp, { G: G!, rows: R!, first: 37, end: n - 5, exclude: 'some' }, seed++);
            await checkAttend(cp, { G: G!, rows: R!, first: 500, end: 540, exclude: 'some', scale: 0.5 }, seed++);
            await checkAttend(cp, { G: G!, rows: R!, first: 3, end: 2 * KG, exclude: 'all' }, seed++);
          }
        }
      }, 60_000);

  // One value group a token (specache's and tiered's shape: the zero term folded per row, the scale into p), every
  // range case, both key group sizes, every width, and the row counts the resident steps use.
  for (const bits of [1, 2, 4] as const)
    for (const D of [32, 64, 128] as const)
      it(`matches kiviAttendRef with one value group a token: ${bits} bits, head_dim ${D}`, async () => {
        for (const KG of [32, 64] as const) {
          const ng = Math.ceil(1300 / KG);
          const n = ng * KG;
          const cp = attendCopy(bits, D, KG, D, 2, ng, seed++);
          for (const [G, R] of [[4, 1], [8, 1], [4, 2], [8, 2], [3, 2], [4, 4]]) {
            const base = { G: G!, rows: R! };
            await checkAttend(cp, { ...base, first: 0, end: n, exclude: 'none' }, seed++);
            await checkAttend(cp, { ...base, first: 37, end: n - 5, exclude: 'some' }, seed++);
            await checkAttend(cp, { ...base, first: 500, end: 540, exclude: 'some', scale: 0.5 }, seed++);
            await checkAttend(cp, { ...base, first: 5, end: 6, exclude: 'none' }, seed++);
            await checkAttend(cp, { ...base, first: 9, end: 9, exclude: 'none' }, seed++);
            await checkAttend(cp, { ...base, first: 3, end: 2 * KG, exclude: 'all' }, seed++);
          }
        }
      }, 120_000);

  it('runs the 8B Llama layer shape (8 KV heads x 4, head_dim 128, 2-bit, 16 chunks) on a user stream', async () => {
    const stream = native().cudaStreamCreate();
    streams.push(stream);
    const cp = attendCopy(2, 128, 64, 32, 8, 128, 41);
    await checkAttend(cp, { G: 4, first: 0, end: 8192, exclude: 'some', stream }, 42);
    await checkAttend(cp, { G: 4, first: 100, end: 8000, exclude: 'none', stream }, 43);
  }, 60_000);

  // Blocks that walk several chunks each (the staged form runs about two blocks an SM, here 32 heads x 12 chunks over
  // ~9 blocks a head), so the next chunk's copy overlaps this chunk's sums; one value group a token and several.
  it('walks several chunks a block: 32 KV heads, 12 chunks, 1- and 2-bit, one and several value groups', async () => {
    for (const [bits, VG] of [[1, 64], [2, 16]] as const) {
      const cp = attendCopy(bits, 64, 64, VG, 32, 96, 60 + bits + VG);
      await checkAttend(cp, { G: 4, rows: 2, first: 4, end: 96 * 64 - 64, exclude: 'some' }, 62 + bits + VG);
      await checkAttend(cp, { G: 1, first: 700, end: 96 * 64 - 9, exclude: 'none' }, 63 + bits + VG);
    }
  }, 120_000);

  // The unstaged form (one chunk a block, read straight from the section) and the staged form wherever shared memory
  // holds it (built for rows x G <= 8), forced through KVOFF_ATTEND_STAGED, over shapes where the default picks the other.
  for (const form of ['0', '1'])
    it(`matches kiviAttendRef with KVOFF_ATTEND_STAGED=${form}`, async () => {
      const before = process.env.KVOFF_ATTEND_STAGED;
      process.env.KVOFF_ATTEND_STAGED = form;
      try {
        for (const [bits, D, KG, VG] of [[1, 128, 64, 128], [2, 64, 32, 8], [4, 128, 32, 8]] as const) {
          const cp = attendCopy(bits, D, KG, VG, 8, Math.ceil(2000 / KG), 70 + bits + D + KG + VG);
          const n = cp.n;
          for (const [G, R] of [[4, 1], [4, 2], [2, 4]]) {
            await checkAttend(cp, { G: G!, rows: R!, first: 37, end: n - 5, exclude: 'some' }, 80 + G! + R!);
            await checkAttend(cp, { G: G!, rows: R!, first: 3, end: 2 * KG, exclude: 'all' }, 95 + G! + R!);
          }
        }
      } finally {
        if (before === undefined) delete process.env.KVOFF_ATTEND_STAGED;
        else process.env.KVOFF_ATTEND_STAGED = before;
      }
    }, 120_000);

  it('runs the specache decode shape: 2 rows of 8 KV heads x 4, head_dim 128, 1- and 2-bit, one value group per token', async () => {
    for (const bits of [1, 2] as const) {
      const cp = attendCopy(bits, 128, 64, 128, 8, 128, 44 + bits);
      await checkAttend(cp, { G: 4, rows: 2, first: 4, end: 8192 - 64, exclude: 'some' }, 46 + bits);
      await checkAttend(cp, { G: 4, first: 4, end: 8192 - 64, exclude: 'some' }, 48 + bits);
    }
  }, 60_000);
});
