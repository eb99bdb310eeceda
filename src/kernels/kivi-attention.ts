// Reference attention over KIVI-quantized keys and values (the low-bit tail): dequantize with the
// reference quantizers, then an fp64 two-pass softmax. Checks native kiviAttend.
import { dequantizeKeysRef, dequantizeValuesRef, type KiviBits, type QuantKeys, type QuantValues } from './kivi.js';

export interface KiviAttendRefArgs {
  bits: KiviBits;
  headDim: number;
  keyGroupSize: number;
  valueGroupSize: number;
  numGroups: number;
  queryHeads: number;
  q: Float32Array; // [queryHeads, headDim]
  scale: number;
  keys: QuantKeys; // codes [numGroups, keyGroupSize, headDim * bits / 8], fp16 zero/scale [numGroups, headDim]
  values: QuantValues; // codes [numTokens, headDim * bits / 8], fp16 zero/scale [numTokens, headDim / valueGroupSize]
  exclude?: ArrayLike<number>; // positions left out
}

/** o [queryHeads, headDim], lse [queryHeads]; o = 0 and lse = -inf when every token is excluded. */
export function kiviAttendRef(a: KiviAttendRefArgs): { o: Float32Array; lse: Float32Array } {
  const D = a.headDim;
  const n = a.numGroups * a.keyGroupSize;
  const k = dequantizeKeysRef(a.keys, a.numGroups, a.keyGroupSize, D, a.bits); // [n, D]
  const v = dequantizeValuesRef(a.values, n, a.valueGroupSize, D, a.bits); // [n, D]
  const skip = new Set(Array.from(a.exclude ?? []));
  const o = new Float32Array(a.queryHeads * D);
  const lse = new Float32Array(a.queryHeads).fill(-Infinity);
  for (let g = 0; g < a.queryHeads; g++) {
    const scores: number[] = [];
    const rows: number[] = [];
    for (let t = 0; t < n; t++) {
      if (skip.has(t)) continue;
      let dot = 0;
      for (let c = 0; c < D; c++) dot += a.q[g * D + c] * k[t * D + c];
      scores.push(dot * a.scale);
      rows.push(t);
    }
    if (scores.length === 0) continue;
    let m = -Infinity;
    for (const s of scores) m = Math.max(m, s);
    let sum = 0;
    const acc = new Float64Array(D);
    for (let i = 0; i < scores.length; i++) {
      const p = Math.exp(scores[i] - m);
      sum += p;
      for (let c = 0; c < D; c++) acc[c] += p * v[rows[i] * D + c];
    }
    for (let c = 0; c < D; c++) o[g * D + c] = acc[c] / sum;
    lse[g] = m + Math.log(sum);
  }
  return { o, lse };
}
