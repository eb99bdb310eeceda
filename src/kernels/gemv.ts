// Reference bf16 GEMV (plain TypeScript, fp64 accumulation): y = W x, the decode-time projection the CUDA kernel implements.
import { bf16ToF32 } from './half.js';

/** y [rows] = W [rows, cols] (raw bf16, row-major) . x [cols] (f32), accumulated in fp64 and rounded to f32 once. */
export function gemvBf16Ref(w: Uint16Array, rows: number, cols: number, x: Float32Array): Float32Array {
  if (w.length < rows * cols) throw new RangeError(`gemvBf16Ref: w has ${w.length} values, needs ${rows * cols}`);
  if (x.length < cols) throw new RangeError(`gemvBf16Ref: x has ${x.length} values, needs ${cols}`);
  const y = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    let acc = 0;
    const base = r * cols;
    for (let k = 0; k < cols; k++) acc += bf16ToF32(w[base + k]) * x[k];
    y[r] = acc;
  }
  return y;
}

/**
 * Per row, sum over k of |w_rk * x_k| in fp64: the scale of the rounding error an f32 accumulation may
 * make, so a comparison can allow error relative to it rather than to a result that may cancel to ~0.
 */
export function gemvBf16AbsRef(w: Uint16Array, rows: number, cols: number, x: Float32Array): Float64Array {
  const out = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let acc = 0;
    for (let k = 0; k < cols; k++) acc += Math.abs(bf16ToF32(w[r * cols + k]) * x[k]);
    out[r] = acc;
  }
  return out;
}
