// InfiniGen's arithmetic, free of memory plumbing: RoPE and its inverse (HF rotate_half pairs (i, i + D/2)), the
// query Gram matrix the skew comes from, projection onto the first r skewed columns, RMSNorm, and the top-k pick.
import { native } from '../native.js';

/**
 * HF RoPE in place: per row of D, (x1, x2) -> (x1 c - x2 s, x2 c + x1 s) for the halves x1 = x[:D/2], x2 = x[D/2:].
 * x [T, heads, D]; cos, sin [T, D] (ropeTables: both halves hold the same frequencies).
 */
export function rotate(x: Float32Array, cos: Float32Array, sin: Float32Array, heads: number, D: number): void {
  turn(x, cos, sin, heads, D, 1);
}

/** The inverse of `rotate` (a rotation by the opposite angle): post-RoPE q or k back to pre-RoPE. */
export function unrotate(x: Float32Array, cos: Float32Array, sin: Float32Array, heads: number, D: number): void {
  turn(x, cos, sin, heads, D, -1);
}

function turn(x: Float32Array, cos: Float32Array, sin: Float32Array, heads: number, D: number, dir: 1 | -1): void {
  const half = D / 2;
  const T = x.length / (heads * D);
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < heads; h++) {
      const row = (t * heads + h) * D;
      for (let j = 0; j < half; j++) {
        const c = cos[t * D + j];
        const s = dir * sin[t * D + j];
        const x1 = x[row + j];
        const x2 = x[row + half + j];
        x[row + j] = x1 * c - x2 * s;
        x[row + half + j] = x2 * c + x1 * s;
      }
    }
  }
}

/** Adds X^T X of rows picked by `rowOffsets` (each a row of D floats in x) into g [D, D] (fp64). */
export function addGram(g: Float64Array, x: Float32Array, rowOffsets: ArrayLike<number>, D: number): void {
  for (let k = 0; k < rowOffsets.length; k++) {
    const o = rowOffsets[k];
    for (let i = 0; i < D; i++) {
      const xi = x[o + i];
      if (xi === 0) continue;
      for (let j = i; j < D; j++) g[i * D + j] += xi * x[o + j];
    }
  }
  for (let i = 0; i < D; i++) for (let j = 0; j < i; j++) g[i * D + j] = g[j * D + i];
}

/**
 * out[j] = sum_i x[xOff + i] * basis[i, j] for j < r: a row of D in the skewed space, cut to its first r columns.
 * basis [D, D] row-major (columns = skew directions, strongest first).
 */
export function skewRow(x: Float32Array, xOff: number, basis: Float32Array, D: number, r: number, out: Float32Array, outOff = 0): void {
  for (let j = 0; j < r; j++) {
    let acc = 0;
    for (let i = 0; i < D; i++) acc += x[xOff + i] * basis[i * D + j];
    out[outOff + j] = acc;
  }
}

/** RMSNorm as the model's graphs compute it: x / sqrt(mean(x^2) + eps) * w. x, w [hidden]. */
export function rmsNorm(x: Float32Array, w: Float32Array, eps: number): Float32Array {
  let ss = 0;
  for (let i = 0; i < x.length; i++) ss += x[i] * x[i];
  const inv = 1 / Math.sqrt(ss / x.length + eps);
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = x[i] * inv * w[i];
  return out;
}

/** y = W x + b: W [rows, cols] row-major, x [cols], b [rows] or null. */
export function matVec(w: Float32Array, x: Float32Array, b: Float32Array | null, rows: number): Float32Array {
  const cols = x.length;
  const y = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    let acc = b ? b[r] : 0;
    for (let c = 0; c < cols; c++) acc += w[r * cols + c] * x[c];
    y[r] = acc;
  }
  return y;
}

export interface Pick {
  topK: number;
  sinks: number;
  window: number;
}

/**
 * What one KV head attends among n tokens, as sorted positions: the first `sinks`, the last `window`, and the
 * `topK` best of the others by score. scores [n].
 */
export function selectPositions(scores: Float32Array, n: number, k: Pick): Int32Array {
  const keep = new Set<number>();
  for (let p = 0; p < Math.min(k.sinks, n); p++) keep.add(p);
  for (let p = Math.max(0, n - k.window); p < n; p++) keep.add(p);
  const fixed = keep.size;
  const want = Math.min(n, k.topK + fixed); // enough to fill top-k after skipping the fixed ones
  if (k.topK > 0 && want > 0) {
    const ranked = new Int32Array(want);
    native().topK({ rows: 1, n, k: want, scores: scores.subarray(0, n), out: ranked });
    let added = 0;
    for (const p of ranked) {
      if (added >= k.topK) break;
      if (keep.has(p)) continue;
      keep.add(p);
      added++;
    }
  }
  return Int32Array.from(keep).sort();
}
