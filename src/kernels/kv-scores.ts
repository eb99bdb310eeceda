// Reference for the native kvScores kernel: scale * q . k of query rows against one KV head's keys (fp64 math).
import { fromHalf } from './half.js';
import { rowIndex, type PagedShape } from './paged-kv.js';

export interface ScoresRefArgs {
  blockIds: Int32Array; // logical -> physical block
  numTokens: number;
  kvHead: number;
  rows: number;
  q: Float32Array; // [rows, headDim]
  scale: number;
}

/** Scores [rows, numTokens] over a region image [numBlocks, numKvHeads, blockSize, 2, headDim] of 16-bit values. */
export function kvScoresRef(s: PagedShape, region: Uint16Array, a: ScoresRefArgs): Float64Array {
  const D = s.headDim;
  const out = new Float64Array(a.rows * a.numTokens);
  for (let p = 0; p < a.numTokens; p++) {
    const slot = a.blockIds[Math.floor(p / s.blockSize)] * s.blockSize + (p % s.blockSize);
    const r = rowIndex(s, slot, a.kvHead);
    for (let g = 0; g < a.rows; g++) {
      let dot = 0;
      for (let c = 0; c < D; c++) dot += a.q[g * D + c] * fromHalf(region[r + c], s.dtype);
      out[g * a.numTokens + p] = dot * a.scale;
    }
  }
  return out;
}
