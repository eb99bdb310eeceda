// SparQ's rules (Ribar et al. 2024), free of memory plumbing: the query's top-r channels, the approximate softmax
// they give, the top-k positions and the mass alpha they cover, and the mean-value interpolation of the output.
import { native } from '../native.js';

/**
 * The r channels with the largest |q|, summed over the G query heads of a KV head (GQA: one set of columns per
 * KV head, so its keys are read once). q: [G, headDim]. Ties go to the lower channel; returned in rank order.
 */
export function topComponents(q: Float32Array, G: number, D: number, r: number): Int32Array {
  const mag = new Float64Array(D); // [D]
  for (let g = 0; g < G; g++) for (let i = 0; i < D; i++) mag[i] += Math.abs(q[g * D + i]);
  const order = Array.from({ length: D }, (_, i) => i).sort((a, b) => mag[b] - mag[a] || a - b);
  return Int32Array.from(order.slice(0, Math.min(r, D)));
}

/**
 * The approximate attention of each query head from its r channels: softmax over n tokens of
 * raw * scale / sqrt(share), where raw = q[cols] . K[cols] and share = sum |q[cols]| / sum |q| (SparQ's
 * temperature: the partial dot product carries about that share of the full one's spread). raw: [G, n];
 * returns [G, n], each row summing to 1.
 */
export function approximateSoftmax(raw: Float32Array, q: Float32Array, G: number, D: number, cols: Int32Array, scale: number): Float32Array {
  const n = raw.length / G;
  const out = new Float32Array(G * n);
  for (let g = 0; g < G; g++) {
    let all = 0;
    let part = 0;
    for (let i = 0; i < D; i++) all += Math.abs(q[g * D + i]);
    for (const c of cols) part += Math.abs(q[g * D + c]);
    const temp = part > 0 ? scale / Math.sqrt(part / all) : 0; // q = 0: every token alike
    let m = -Infinity;
    for (let t = 0; t < n; t++) m = Math.max(m, raw[g * n + t] * temp);
    let sum = 0;
    for (let t = 0; t < n; t++) sum += out[g * n + t] = Math.exp(raw[g * n + t] * temp - m);
    for (let t = 0; t < n; t++) out[g * n + t] /= sum;
  }
  return out;
}

/**
 * The k positions with the most approximate attention summed over the G heads (sorted by position), and per
 * head the approximate mass alpha they cover. When they are every token, alpha is exactly 1.
 */
export function topPositions(approx: Float32Array, G: number, k: number): { positions: Int32Array; alpha: Float32Array } {
  const n = approx.length / G;
  const alpha = new Float32Array(G).fill(1);
  if (k >= n) return { positions: Int32Array.from({ length: n }, (_, t) => t), alpha };
  const total = new Float32Array(n); // [n]
  for (let g = 0; g < G; g++) for (let t = 0; t < n; t++) total[t] += approx[g * n + t];
  const picked = new Int32Array(k);
  native().topK({ rows: 1, n, k, scores: total, out: picked });
  const positions = picked.sort();
  for (let g = 0; g < G; g++) {
    let a = 0;
    for (const t of positions) a += approx[g * n + t];
    alpha[g] = a;
  }
  return { positions, alpha };
}

/**
 * out = alpha * o + (1 - alpha) * vMean per head, in place; lse becomes lse - log(alpha): the exact top-k part
 * holds the share alpha of the (estimated) total mass, so the whole sum is e^lse / alpha. o: [G, D]; lse,
 * alpha: [G]; vMean: [D].
 */
export function interpolate(o: Float32Array, lse: Float32Array, alpha: Float32Array, vMean: Float32Array): void {
  const D = vMean.length;
  for (let g = 0; g < alpha.length; g++) {
    const a = alpha[g];
    if (a >= 1) continue;
    for (let i = 0; i < D; i++) o[g * D + i] = a * o[g * D + i] + (1 - a) * vMean[i];
    lse[g] -= Math.log(a);
  }
}

/** Folds values of new tokens into a running mean of `count` tokens: mean [D]; v rows [T, D] at stride `stride`. */
export function foldMean(mean: Float64Array, count: number, v: Float32Array, offset: number, stride: number, T: number): number {
  const D = mean.length;
  for (let t = 0; t < T; t++) {
    count++;
    for (let i = 0; i < D; i++) mean[i] += (v[offset + t * stride + i] - mean[i]) / count;
  }
  return count;
}
