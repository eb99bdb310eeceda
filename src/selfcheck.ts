// Kernel self-check: runs each native kernel against its TypeScript reference on random data and
// times the attention kernel; what `kvoff selfcheck` prints until a model runs end to end.
import { performance } from 'node:perf_hooks';
import { HostArena } from './arena.js';
import { native, type KvDtype } from './native.js';
import { appendRef, attendRef, blockBytes, type PagedShape } from './kernels/paged-kv.js';
import { lseMergeRef } from './kernels/merge.js';
import { quantizeKeysRef, scoreKeysRef } from './kernels/kivi.js';
import { topKRef } from './kernels/topk.js';

export interface CheckRow {
  kernel: string;
  shape: string;
  maxError: number;
  tolerance: number;
  ok: boolean;
}

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 4294967296) * 2 - 1;
}

function fill(n: number, r: () => number): Float32Array {
  return Float32Array.from({ length: n }, r);
}

function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let scale = 1e-30;
  for (let i = 0; i < b.length; i++) scale = Math.max(scale, Math.abs(b[i]));
  let e = 0;
  for (let i = 0; i < a.length; i++) e = Math.max(e, a[i] === b[i] ? 0 : Math.abs(a[i] - b[i]) / scale);
  return e;
}

function checkAttention(groupSize: number, headDim: number, numTokens: number, dtype: KvDtype, r: () => number): CheckRow {
  const blockSize = 16;
  const nb = Math.ceil(numTokens / blockSize);
  const shape: PagedShape = { numBlocks: nb, numKvHeads: 1, headDim, blockSize, dtype };
  using arena = new HostArena(nb * blockBytes(shape));
  const slots = Int32Array.from({ length: numTokens }, (_, i) => i);
  const k = fill(numTokens * headDim, r);
  const v = fill(numTokens * headDim, r);
  const region = { handle: arena.handle, offset: 0, ...shape };
  native().kvAppend({ ...region, slots, k, v });
  const image = new Uint16Array(nb * blockBytes(shape) / 2);
  appendRef(shape, image, slots, k, v);
  const blockIds = Int32Array.from({ length: nb }, (_, i) => nb - 1 - i);
  const q = fill(groupSize * headDim, r);
  const out = new Float32Array(q.length);
  const lse = new Float32Array(groupSize);
  const scale = 1 / Math.sqrt(headDim);
  native().kvAttend({ ...region, blockIds, numTokens, kvHeads: Int32Array.of(0), groupSize, q, scale, out, lse });
  const ref = attendRef(shape, image, { blockIds, numTokens, kvHead: 0, groupSize, q, scale });
  const err = Math.max(relErr(out, ref.o), relErr(lse, ref.lse));
  return { kernel: 'attention', shape: `G${groupSize} D${headDim} T${numTokens} ${dtype}`, maxError: err, tolerance: 1e-4, ok: err <= 1e-4 };
}

function checkMerge(r: () => number): CheckRow {
  const rows = 8, D = 64;
  const oA = fill(rows * D, r), oB = fill(rows * D, r);
  const lseA = fill(rows, r), lseB = fill(rows, r);
  lseA[0] = -Infinity;
  const out = new Float32Array(rows * D), lseOut = new Float32Array(rows);
  native().lseMerge({ rows, headDim: D, oA, lseA, oB, lseB, out, lseOut });
  const ref = lseMergeRef(rows, D, oA, lseA, oB, lseB);
  const err = Math.max(relErr(out, ref.o), relErr(lseOut, ref.lse));
  return { kernel: 'lse merge', shape: `rows ${rows} D${D}`, maxError: err, tolerance: 1e-6, ok: err <= 1e-6 };
}

function checkKivi(bits: 1 | 2 | 4, r: () => number): CheckRow {
  const D = 64, G = 32, ng = 4;
  const src = fill(ng * G * D, r);
  const codes = new Uint8Array((ng * G * D * bits) / 8), zero = new Uint16Array(ng * D), scale = new Uint16Array(ng * D); // fp16 bits
  native().kiviQuantizeKeys({ bits, headDim: D, groupSize: G, numGroups: ng, src, codes, zero, scale });
  const ref = quantizeKeysRef(src, ng, G, D, bits);
  let mismatched = 0;
  for (let i = 0; i < codes.length; i++) mismatched += codes[i] === ref.codes[i] ? 0 : 1;
  const q = fill(4 * D, r);
  const out = new Float32Array(ng * G);
  native().kiviScoreKeys({ bits, headDim: D, groupSize: G, numGroups: ng, queryHeads: 4, q, codes, zero, scale, out });
  const err = Math.max(mismatched, relErr(out, scoreKeysRef(q, 4, ref, ng, G, D, bits)));
  return { kernel: `kivi ${bits}-bit`, shape: `keys ${ng}x${G}x${D}`, maxError: err, tolerance: 1e-5, ok: err <= 1e-5 };
}

function checkTopK(r: () => number): CheckRow {
  const rows = 4, n = 4096, k = 64;
  const scores = fill(rows * n, r);
  const out = new Int32Array(rows * k);
  native().topK({ rows, n, k, scores, out });
  const ref = topKRef(scores, rows, n, k);
  const bad = out.reduce((acc, x, i) => acc + (x === ref[i] ? 0 : 1), 0);
  return { kernel: 'top-k', shape: `${rows}x${n} k${k}`, maxError: bad, tolerance: 0, ok: bad === 0 };
}

export function runSelfCheck(): CheckRow[] {
  const r = lcg(42);
  return [
    checkAttention(1, 64, 1, 'f16', r),
    checkAttention(4, 128, 1000, 'bf16', r),
    checkAttention(8, 128, 333, 'f16', r),
    checkMerge(r),
    checkKivi(1, r),
    checkKivi(2, r),
    checkKivi(4, r),
    checkTopK(r),
  ];
}

/** Single-thread memcpy GB/s (bytes copied per second), best of 5 over 128 MiB: the yardstick for the attention kernel. */
export function memcpyBandwidth(): number {
  const n = 128 << 20;
  const a = Buffer.alloc(n, 1);
  const b = Buffer.alloc(n, 2);
  a.copy(b);
  let best = Infinity;
  for (let i = 0; i < 5; i++) {
    const t0 = performance.now();
    a.copy(b);
    best = Math.min(best, performance.now() - t0);
  }
  return n / (best * 1e6);
}

/** GB/s of KV read by one thread's attention over `tokens` tokens (8 KV heads, D128, GQA 4, bf16). */
export function attentionBandwidth(tokens: number): { gbPerS: number; ms: number } {
  const shape: PagedShape = { numBlocks: Math.ceil(tokens / 32), numKvHeads: 8, headDim: 128, blockSize: 32, dtype: 'bf16' };
  using arena = new HostArena(shape.numBlocks * blockBytes(shape));
  arena.write(0, new Uint8Array(arena.bytes).fill(0x3c)); // touch every page: small finite bf16 values
  const blockIds = Int32Array.from({ length: shape.numBlocks }, (_, i) => i);
  const kvHeads = Int32Array.from({ length: 8 }, (_, i) => i);
  const q = new Float32Array(8 * 4 * 128).fill(0.01);
  const out = new Float32Array(q.length);
  const lse = new Float32Array(32);
  const run = () => native().kvAttend({ handle: arena.handle, offset: 0, ...shape, blockIds, numTokens: tokens, kvHeads, groupSize: 4, q, scale: 0.088, out, lse });
  run();
  const times: number[] = [];
  for (let i = 0; i < 5; i++) {
    const t0 = performance.now();
    run();
    times.push(performance.now() - t0);
  }
  const ms = times.sort((a, b) => a - b)[2];
  return { gbPerS: (tokens * 8 * 2 * 128 * 2) / (ms * 1e6), ms };
}
