// Reference for the CUDA attention kernels over device KV rows ([numKvHeads, capacity, 2, headDim] 16-bit), in
// plain TypeScript with fp64 math, and the decode scratch size (the same formula as native/src/cuda/cuda_attention.h).
import { appendRef, type PagedShape } from './paged-kv.js';
import { fromHalf, type HalfDtype } from './half.js';

// ---- Decode scratch: mirrors attend_chunk_rows / attend_chunk_bound / attend_scratch_bytes in cuda_attention.h ----

/** (KV head, chunk) work items a decode call aims for: several waves of CTAs on an H100, partials near 1% of the KV read. */
export const ATTEND_TARGET_CTAS = 2048;
const CHUNK_QUANTUM = 64;

/** Rows per chunk of a decode call whose longest head attends maxCount rows. */
export function attendChunkRows(numKvHeads: number, maxCount: number): number {
  const per = Math.ceil((maxCount * numKvHeads) / ATTEND_TARGET_CTAS);
  return Math.max(CHUNK_QUANTUM, Math.ceil(per / CHUNK_QUANTUM) * CHUNK_QUANTUM);
}

/** Chunks per head of such a call (one chunk: no partials, no scratch). */
export function attendChunks(numKvHeads: number, maxCount: number): number {
  return Math.ceil(maxCount / attendChunkRows(numKvHeads, maxCount));
}

/**
 * Scratch bytes cudaAttendDecode needs for every call whose counts stay <= maxRows: [Hkv, chunks, G, headDim + 2]
 * f32 partials, chunks bounded by both maxRows / 64 and ATTEND_TARGET_CTAS / Hkv. Equals the native
 * cudaAttendScratchBytes; usable without the addon.
 */
export function cudaAttendScratchBytes(o: { numKvHeads: number; groupSize: number; headDim: number; maxRows: number }): number {
  const chunks = Math.min(Math.ceil(o.maxRows / CHUNK_QUANTUM), Math.ceil(ATTEND_TARGET_CTAS / o.numKvHeads));
  return chunks <= 1 ? 0 : o.numKvHeads * chunks * o.groupSize * (o.headDim + 2) * 4;
}

// ---- Layout ----

/** A device region is the paged layout with one block of `capacity` rows: [1, Hkv, capacity, 2, D]. */
export function deviceShape(numKvHeads: number, headDim: number, capacity: number, dtype: HalfDtype): PagedShape {
  return { numBlocks: 1, numKvHeads, headDim, blockSize: capacity, dtype };
}

/** Rows of `tokens` tokens `stride` floats apart, compacted to [tokens, rowFloats]. */
export function compactRows(src: Float32Array, tokens: number, stride: number, rowFloats: number): Float32Array {
  const out = new Float32Array(tokens * rowFloats);
  for (let t = 0; t < tokens; t++) out.set(src.subarray(t * stride, t * stride + rowFloats), t * rowFloats);
  return out;
}

/** cudaKvWrite: tokens' K/V ([tokens, Hkv, D]) into rows slot.. of every head of a device region image (kvAppend's rounding). */
export function kvWriteRef(region: Uint16Array, s: { numKvHeads: number; headDim: number; capacity: number; dtype: HalfDtype }, slot: number, k: Float32Array, v: Float32Array): void {
  const tokens = k.length / (s.numKvHeads * s.headDim);
  appendRef(deviceShape(s.numKvHeads, s.headDim, s.capacity, s.dtype), region, Int32Array.from({ length: tokens }, (_, i) => slot + i), k, v);
}

/** cudaKvStoreHost: the same tokens at positions start.. of a paged host region, through the block table. */
export function kvStoreHostRef(region: Uint16Array, s: PagedShape, blockIds: Int32Array, start: number, k: Float32Array, v: Float32Array): void {
  const tokens = k.length / (s.numKvHeads * s.headDim);
  const slots = Int32Array.from({ length: tokens }, (_, i) => blockIds[Math.floor((start + i) / s.blockSize)] * s.blockSize + ((start + i) % s.blockSize));
  appendRef(s, region, slots, k, v);
}

// ---- Attention ----

export interface DeviceKvRef {
  kv: Uint16Array; // [numKvHeads, capacity, 2, headDim]
  capacity: number;
  numKvHeads: number;
  headDim: number;
  dtype: HalfDtype;
  groupSize: number;
}

/** Rows [0, n) of head h decoded to fp64: K [n, D] and V [n, D]. */
function decodeHead(r: DeviceKvRef, h: number, n: number): { K: Float64Array; V: Float64Array } {
  const D = r.headDim;
  const K = new Float64Array(n * D), V = new Float64Array(n * D);
  const base = h * r.capacity * 2 * D;
  for (let j = 0; j < n; j++)
    for (let c = 0; c < D; c++) {
      K[j * D + c] = fromHalf(r.kv[base + j * 2 * D + c], r.dtype);
      V[j * D + c] = fromHalf(r.kv[base + j * 2 * D + D + c], r.dtype);
    }
  return { K, V };
}

/**
 * Two-pass softmax attention in fp64 of query rows q [rows, D] over the first n decoded rows of K and V.
 * Writes o [rows, D] and natural-log lse [rows]; n = 0 gives zeros and -inf.
 */
function attendRows(K: Float64Array, V: Float64Array, D: number, n: number, q: Float64Array, rows: number, scale: number, o: Float32Array, oOff: number, lse: Float32Array, lseOff: number): void {
  if (n === 0) {
    for (let i = 0; i < rows; i++) lse[lseOff + i] = -Infinity;
    return;
  }
  const s = new Float64Array(n), acc = new Float64Array(D);
  for (let i = 0; i < rows; i++) {
    let m = -Infinity;
    for (let j = 0; j < n; j++) {
      let dot = 0;
      for (let c = 0; c < D; c++) dot += q[i * D + c] * K[j * D + c];
      s[j] = dot * scale;
      if (s[j] > m) m = s[j];
    }
    acc.fill(0);
    let sum = 0;
    for (let j = 0; j < n; j++) {
      const p = Math.exp(s[j] - m);
      sum += p;
      for (let c = 0; c < D; c++) acc[c] += p * V[j * D + c];
    }
    for (let c = 0; c < D; c++) o[oOff + i * D + c] = acc[c] / sum;
    lse[lseOff + i] = m + Math.log(sum);
  }
}

/** cudaAttendDecode: query row h * G + g of q [Hkv * G, D] attends rows [0, counts[h]) of head h. */
export function decodeRef(r: DeviceKvRef, counts: Int32Array, q: Float32Array, scale: number): { out: Float32Array; lse: Float32Array } {
  const { numKvHeads: H, groupSize: G, headDim: D } = r;
  const out = new Float32Array(H * G * D), lse = new Float32Array(H * G);
  for (let h = 0; h < H; h++) {
    const { K, V } = decodeHead(r, h, counts[h]);
    attendRows(K, V, D, counts[h], Float64Array.from(q.subarray(h * G * D, (h + 1) * G * D)), G, scale, out, h * G * D, lse, h * G);
  }
  return { out, lse };
}

/** cudaAttendPrefill: query (t, h * G + g) of q [T, Hkv * G, D] (tokens qRowStride floats apart) attends rows [0, start + t] of head h. */
export function prefillRef(r: DeviceKvRef, q: Float32Array, T: number, start: number, scale: number, qRowStride = r.numKvHeads * r.groupSize * r.headDim): { out: Float32Array; lse: Float32Array } {
  const { numKvHeads: H, groupSize: G, headDim: D } = r;
  const out = new Float32Array(T * H * G * D), lse = new Float32Array(T * H * G);
  for (let h = 0; h < H; h++) {
    const { K, V } = decodeHead(r, h, start + T);
    for (let t = 0; t < T; t++) {
      const row = t * H * G + h * G; // first of the G query rows
      const qh = Float64Array.from(q.subarray(t * qRowStride + h * G * D, t * qRowStride + (h + 1) * G * D));
      attendRows(K, V, D, start + t + 1, qh, G, scale, out, row * D, lse, row);
    }
  }
  return { out, lse };
}
