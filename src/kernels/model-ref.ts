// Plain TypeScript references for the model-side CUDA kernels (native/src/cuda/cuda_model*.cu): bit-exact where the
// kernel's rounding is fixed (random fill, embedding, RoPE, add, argmax), f64 with an error scale where it is not.
import { argmax } from '../engine/sampling.js';
import { bf16ToF32, f32ToBf16, f32ToF16 } from './half.js';

const f = Math.fround;

/** Wellons' lowbias32, the hash cudaFillRandom uses (mix32 in cuda_model.cu). */
export function mix32(x: number): number {
  x = (x ^ (x >>> 16)) >>> 0;
  x = Math.imul(x, 0x7feb352d) >>> 0;
  x = (x ^ (x >>> 15)) >>> 0;
  x = Math.imul(x, 0x846ca68b) >>> 0;
  return (x ^ (x >>> 16)) >>> 0;
}

/**
 * Elements [start, start + count) of what cudaFillRandom writes: u(seed, i) * scale with
 * u = (h >> 8) * 2^-23 - 1 in [-1, 1) (exact in f32) and h = mix32(mix32(key ^ hi32(i)) ^ lo32(i)),
 * key = mix32(seed ^ 0x9e3779b9); the product is rounded to f32, then to the dtype. bf16 and f16 come back as raw bits.
 */
export function fillRandomRef(count: number, dtype: 'f32' | 'bf16' | 'f16', seed: number, scale: number, start = 0): Float32Array | Uint16Array {
  const key = mix32((seed ^ 0x9e3779b9) >>> 0);
  const s = f(scale);
  const out = dtype === 'f32' ? new Float32Array(count) : new Uint16Array(count);
  for (let j = 0; j < count; j++) {
    const i = start + j;
    const h = mix32((mix32((key ^ Math.floor(i / 4294967296)) >>> 0) ^ (i >>> 0)) >>> 0);
    const v = f(((h >>> 8) * 2 ** -23 - 1) * s); // the f64 product of two f32 values is exact: one rounding, as on the GPU
    out[j] = dtype === 'f32' ? v : dtype === 'bf16' ? f32ToBf16(v) : f32ToF16(v);
  }
  return out;
}

/** out [rows, hidden] f32 = table [vocab, hidden] (raw bf16) rows ids [rows]. */
export function embedRef(table: Uint16Array, hidden: number, ids: Int32Array): Float32Array {
  const out = new Float32Array(ids.length * hidden);
  for (let r = 0; r < ids.length; r++)
    for (let j = 0; j < hidden; j++) out[r * hidden + j] = bf16ToF32(table[ids[r] * hidden + j]);
  return out;
}

/**
 * out [rows, n] = x / sqrt(mean(x^2) + eps) * w, as the CPU graph's RMSNorm but with the mean in f64 (so it cannot
 * overflow); the normalized value is rounded to f32 before the f32 product with w, as the kernel does.
 */
export function rmsNormRef(x: Float32Array, weight: Uint16Array, rows: number, n: number, eps: number): Float32Array {
  const out = new Float32Array(rows * n);
  for (let r = 0; r < rows; r++) {
    let ss = 0;
    for (let j = 0; j < n; j++) ss += x[r * n + j] * x[r * n + j];
    const inv = 1 / Math.sqrt(ss / n + f(eps));
    for (let j = 0; j < n; j++) out[r * n + j] = f(f(x[r * n + j] * inv) * bf16ToF32(weight[j]));
  }
  return out;
}

/**
 * HF rotate_half RoPE on a copy of x: per (row, head), out1 = x1 cos1 - x2 sin1 and out2 = x2 cos2 + x1 sin2, each
 * product and sum rounded to f32 (the CPU graph's Mul/Neg/Add nodes; the kernel matches bit for bit). Rows are
 * rowStride floats apart; floats between heads * headDim and rowStride are left as they are.
 */
export function ropeRef(x: Float32Array, rows: number, heads: number, headDim: number, cos: Float32Array, sin: Float32Array,
  rowStride = heads * headDim): Float32Array {
  const out = Float32Array.from(x);
  const half = headDim / 2;
  for (let r = 0; r < rows; r++)
    for (let h = 0; h < heads; h++) {
      const base = r * rowStride + h * headDim;
      for (let j = 0; j < half; j++) {
        const x1 = x[base + j], x2 = x[base + half + j];
        const t = r * headDim;
        out[base + j] = f(f(x1 * cos[t + j]) + f(-x2 * sin[t + j]));
        out[base + half + j] = f(f(x2 * cos[t + half + j]) + f(x1 * sin[t + half + j]));
      }
    }
  return out;
}

export interface GemmRefResult {
  y: Float32Array; // [m, n]
  /** [m, n] sum over k of |w x| (plus |y0|): the scale a rounding-error bound is relative to. */
  scale: Float64Array;
}

/**
 * y [m, n] = (y0 +) x [m, k] . W^T with W [n, k] raw bf16 row-major, accumulated in f64 and rounded once.
 * roundX 'bf16' first rounds x to bf16, modelling the tensor-core path (m > 16), whose products are then exact.
 */
export function gemmBf16Ref(w: Uint16Array, x: Float32Array, m: number, n: number, k: number,
  opts: { roundX?: 'bf16'; y0?: Float32Array } = {}): GemmRefResult {
  if (w.length < n * k || x.length < m * k) throw new RangeError(`gemmBf16Ref: w has ${w.length} of ${n * k}, x ${x.length} of ${m * k} values`);
  const wf = new Float32Array(n * k);
  for (let i = 0; i < n * k; i++) wf[i] = bf16ToF32(w[i]);
  const xf = opts.roundX === 'bf16' ? Float32Array.from(x.subarray(0, m * k), (v) => bf16ToF32(f32ToBf16(v))) : x;
  const y = new Float32Array(m * n);
  const scale = new Float64Array(m * n);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let acc = opts.y0 ? opts.y0[i * n + j] : 0;
      let abs = Math.abs(acc);
      for (let c = 0; c < k; c++) {
        const p = wf[j * k + c] * xf[i * k + c];
        acc += p;
        abs += Math.abs(p);
      }
      y[i * n + j] = acc;
      scale[i * n + j] = abs;
    }
  return { y, scale };
}

/** out [m, inter] = silu(gate) * up = gate / (1 + exp(-gate)) * up in f64, rounded once; gateUp [m, 2 * inter]. */
export function swigluRef(gateUp: Float32Array, m: number, inter: number): Float32Array {
  const out = new Float32Array(m * inter);
  for (let r = 0; r < m; r++)
    for (let j = 0; j < inter; j++) {
      const g = gateUp[r * 2 * inter + j], u = gateUp[r * 2 * inter + inter + j];
      out[r * inter + j] = (g / (1 + Math.exp(-g))) * u;
    }
  return out;
}

/** out = a + b in f32 (exact: the f64 sum of two f32 values rounds like the f32 add). */
export function addRef(a: Float32Array, b: Float32Array): Float32Array {
  return Float32Array.from(a, (v, i) => v + b[i]);
}

/** x [rows, rowStride] with bias [n] added to the first n floats of every row (a copy; x is left alone). */
export function addBiasRef(x: Float32Array, bias: Float32Array, rows: number, n: number, rowStride = n): Float32Array {
  const out = x.slice();
  for (let r = 0; r < rows; r++) for (let i = 0; i < n; i++) out[r * rowStride + i] += bias[i];
  return out;
}

/** out [m] = sampling.ts argmax of each row of x [m, n]. */
export function argmaxRef(x: Float32Array, m: number, n: number): Int32Array {
  return Int32Array.from({ length: m }, (_, r) => argmax(x.subarray(r * n, (r + 1) * n)));
}
