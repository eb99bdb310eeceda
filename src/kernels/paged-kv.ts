// Reference paged KV layout, append and exact attention over block lists (plain TypeScript, fp64 math).
import { fromHalf, toHalf, type HalfDtype } from './half.js';

/** Shape of one layer's region: [numBlocks, numKvHeads, blockSize, 2 (K,V), headDim] of 16-bit values. */
export interface PagedShape {
  numBlocks: number;
  numKvHeads: number;
  headDim: number;
  blockSize: number;
  dtype: HalfDtype;
}

/** Bytes of one (token, head) unit: its K and V rows, 16-bit. */
export const unitBytes = (headDim: number): number => 2 * headDim * 2;

export function blockBytes(s: Omit<PagedShape, 'numBlocks' | 'dtype'>): number {
  return s.numKvHeads * s.blockSize * unitBytes(s.headDim);
}

/** Index (in 16-bit elements) of the K row of (slot, head); the V row follows it. */
export function rowIndex(s: PagedShape, slot: number, head: number): number {
  const block = Math.floor(slot / s.blockSize);
  const off = slot % s.blockSize;
  return (block * s.numKvHeads * s.blockSize + head * s.blockSize + off) * 2 * s.headDim;
}

/** Reference append: writes K/V rows of n tokens into a region image. k, v: [n, numKvHeads, headDim]. */
export function appendRef(s: PagedShape, region: Uint16Array, slots: Int32Array, k: Float32Array, v: Float32Array): void {
  const D = s.headDim;
  for (let i = 0; i < slots.length; i++) {
    for (let h = 0; h < s.numKvHeads; h++) {
      const r = rowIndex(s, slots[i], h);
      const src = (i * s.numKvHeads + h) * D;
      for (let c = 0; c < D; c++) {
        region[r + c] = toHalf(k[src + c], s.dtype);
        region[r + D + c] = toHalf(v[src + c], s.dtype);
      }
    }
  }
}

export interface AttendRefArgs {
  blockIds: Int32Array;
  numTokens: number;
  kvHead: number;
  groupSize: number;
  q: Float32Array; // [groupSize, headDim]
  scale: number;
  exclude?: Int32Array;
}

/**
 * Two-pass softmax attention in fp64 over the listed tokens of one KV head.
 * Returns o [groupSize, headDim] and lse [groupSize]; an empty set gives o = 0, lse = -inf.
 */
export function attendRef(s: PagedShape, region: Uint16Array, a: AttendRefArgs): { o: Float32Array; lse: Float32Array } {
  const D = s.headDim;
  const skip = new Set(a.exclude ?? []);
  const o = new Float32Array(a.groupSize * D);
  const lse = new Float32Array(a.groupSize).fill(-Infinity);
  for (let g = 0; g < a.groupSize; g++) {
    const scores: number[] = [];
    const rows: number[] = [];
    for (let p = 0; p < a.numTokens; p++) {
      if (skip.has(p)) continue;
      const slot = a.blockIds[Math.floor(p / s.blockSize)] * s.blockSize + (p % s.blockSize);
      const r = rowIndex(s, slot, a.kvHead);
      let dot = 0;
      for (let c = 0; c < D; c++) dot += a.q[g * D + c] * fromHalf(region[r + c], s.dtype);
      scores.push(dot * a.scale);
      rows.push(r);
    }
    if (scores.length === 0) continue;
    const m = Math.max(...scores);
    let sum = 0;
    const acc = new Float64Array(D);
    for (let i = 0; i < scores.length; i++) {
      const p = Math.exp(scores[i] - m);
      sum += p;
      for (let c = 0; c < D; c++) acc[c] += p * fromHalf(region[rows[i] + D + c], s.dtype);
    }
    for (let c = 0; c < D; c++) o[g * D + c] = acc[c] / sum;
    lse[g] = m + Math.log(sum);
  }
  return { o, lse };
}

/** Reference gather: units (K row then V row) of `positions` [nh, n] per head into [nh, n, 2, headDim]. */
export function gatherRef(s: PagedShape, region: Uint16Array, blockIds: Int32Array, kvHeads: Int32Array, n: number, positions: Int32Array): Uint16Array {
  const D = s.headDim;
  const out = new Uint16Array(kvHeads.length * n * 2 * D);
  for (let h = 0; h < kvHeads.length; h++) {
    for (let i = 0; i < n; i++) {
      const p = positions[h * n + i];
      const slot = blockIds[Math.floor(p / s.blockSize)] * s.blockSize + (p % s.blockSize);
      const r = rowIndex(s, slot, kvHeads[h]);
      out.set(region.subarray(r, r + 2 * D), (h * n + i) * 2 * D);
    }
  }
  return out;
}
