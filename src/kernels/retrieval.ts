// References for the native retrieval kernels (fp64 math): kvColumnScores (SparQ) and pageBounds (Quest).
import { f16ToF32, fromHalf } from './half.js';
import { rowIndex, type PagedShape } from './paged-kv.js';

export interface ColumnScoresRefArgs {
  blockIds: Int32Array; // logical -> physical block
  numTokens: number;
  kvHead: number;
  rows: number;
  q: Float32Array; // [rows, headDim]
  columns: Int32Array; // [r] distinct channels
}

/** q . k over the chosen channels only, [rows, numTokens], over a region image [numBlocks, numKvHeads, blockSize, 2, headDim]. */
export function kvColumnScoresRef(s: PagedShape, region: Uint16Array, a: ColumnScoresRefArgs): Float64Array {
  const D = s.headDim;
  const out = new Float64Array(a.rows * a.numTokens);
  for (let p = 0; p < a.numTokens; p++) {
    const slot = a.blockIds[Math.floor(p / s.blockSize)] * s.blockSize + (p % s.blockSize);
    const r = rowIndex(s, slot, a.kvHead);
    for (let g = 0; g < a.rows; g++) {
      let dot = 0;
      for (const c of a.columns) dot += a.q[g * D + c] * fromHalf(region[r + c], s.dtype);
      out[g * a.numTokens + p] = dot;
    }
  }
  return out;
}

/**
 * Per page, the upper bound of q . k over the keys inside it: sum_i max(q_i min_i, q_i max_i), max over the G
 * query heads. q [G, D]; meta [numPages, 2 (min, max), D] of fp16 bits -> [numPages]. A channel with q_i = 0
 * adds nothing (also when its range is infinite).
 */
export function pageBoundsRef(q: Float32Array, meta: Uint16Array, G: number, D: number, numPages: number): Float64Array {
  const out = new Float64Array(numPages);
  for (let p = 0; p < numPages; p++) {
    let best = -Infinity;
    for (let g = 0; g < G; g++) {
      let s = 0;
      for (let i = 0; i < D; i++) {
        const qi = q[g * D + i];
        if (qi !== 0) s += Math.max(qi * f16ToF32(meta[p * 2 * D + i]), qi * f16ToF32(meta[(p * 2 + 1) * D + i]));
      }
      best = Math.max(best, s);
    }
    out[p] = best;
  }
  return out;
}
