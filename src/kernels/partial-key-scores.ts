// Reference for the native partialKeyScores kernel: q . k of query rows against dense 16-bit key rows (fp64 math).
import { fromHalf, type HalfDtype } from './half.js';

/** Scores [rows, n]: q [rows, dim] against keys [n, dim] of 16-bit values, unscaled. */
export function partialKeyScoresRef(dtype: HalfDtype, dim: number, keys: Uint16Array, q: Float32Array): Float64Array {
  const n = keys.length / dim;
  const rows = q.length / dim;
  const out = new Float64Array(rows * n);
  for (let t = 0; t < n; t++) {
    for (let r = 0; r < rows; r++) {
      let dot = 0;
      for (let c = 0; c < dim; c++) dot += q[r * dim + c] * fromHalf(keys[t * dim + c], dtype);
      out[r * n + t] = dot;
    }
  }
  return out;
}
