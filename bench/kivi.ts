// KIVI low-bit tail kernels: kiviAttend (attention over the quantized tail) next to kiviScoreKeys (the
// selection scan over the same keys) at every SIMD level this CPU has, per KV head, in the same run.
import { performance } from 'node:perf_hooks';
import { native, type SimdLevel } from '../src/native.js';
import { timeReps, type Timing } from './memcpy.js';

type Bits = 1 | 2 | 4;

interface Shape {
  headDim: number;
  queryHeads: number; // GQA ratio
  bits: Bits;
}

interface Row extends Shape {
  level: SimdLevel;
  tokens: number;
  scoreMs: number;
  attendMs: number;
  scoreMtokPerS: number;
  attendMtokPerS: number;
  ratio: number; // attend time / score time: the target is <= ~3
  timing: { score: Timing; attend: Timing };
}

const KEY_GROUP = 32;
const HOT = 64; // positions excluded from the tail (the hot set attended elsewhere), as a decode step does

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 4294967296;
}

/** Per-call time of a fast op: each sample loops enough calls to last >= 2 ms, so timer resolution does not matter. */
function timeSmall(fn: () => void, reps: number): Timing {
  const t0 = performance.now();
  fn();
  const inner = Math.max(1, Math.ceil(2 / Math.max(performance.now() - t0, 1e-3)));
  const t = timeReps(() => { for (let i = 0; i < inner; i++) fn(); }, reps);
  return { medianMs: t.medianMs / inner, minMs: t.minMs / inner, maxMs: t.maxMs / inner, reps };
}

/** One KV head's low-bit copy of `tokens` random tokens, quantized by the native quantizers; one value group per head. */
function lowBitHead(s: Shape, tokens: number) {
  const D = s.headDim;
  const numGroups = tokens / KEY_GROUP;
  const row = (D * s.bits) / 8;
  const r = lcg(D * 31 + s.bits);
  const src = Float32Array.from({ length: tokens * D }, () => r() * 2 - 1); // [tokens, D]
  const keyCodes = new Uint8Array(tokens * row); // [numGroups, KEY_GROUP, D*bits/8]
  const keyZero = new Uint16Array(numGroups * D); // fp16 [numGroups, D]
  const keyScale = new Uint16Array(numGroups * D);
  native().kiviQuantizeKeys({ bits: s.bits, headDim: D, groupSize: KEY_GROUP, numGroups, src, codes: keyCodes, zero: keyZero, scale: keyScale });
  for (let i = 0; i < src.length; i++) src[i] = r() * 2 - 1;
  const valueCodes = new Uint8Array(tokens * row); // [tokens, D*bits/8]
  const valueZero = new Uint16Array(tokens); // fp16 [tokens, 1]
  const valueScale = new Uint16Array(tokens);
  native().kiviQuantizeValues({ bits: s.bits, headDim: D, groupSize: D, numTokens: tokens, src, codes: valueCodes, zero: valueZero, scale: valueScale });
  const q = Float32Array.from({ length: s.queryHeads * D }, () => r() * 2 - 1); // [G, D]
  return { numGroups, keyCodes, keyZero, keyScale, valueCodes, valueZero, valueScale, q };
}

function measure(level: SimdLevel, s: Shape, tokens: number, reps: number): Row {
  const h = lowBitHead(s, tokens);
  const D = s.headDim;
  const scores = new Float32Array(tokens);
  const out = new Float32Array(s.queryHeads * D);
  const lse = new Float32Array(s.queryHeads);
  const exclude = Int32Array.from({ length: HOT }, (_, i) => Math.floor(((i + 0.5) * tokens) / HOT));
  native().setSimd({ level });
  const score = timeSmall(() => native().kiviScoreKeys({
    bits: s.bits, headDim: D, groupSize: KEY_GROUP, numGroups: h.numGroups, queryHeads: s.queryHeads, q: h.q,
    codes: h.keyCodes, zero: h.keyZero, scale: h.keyScale, out: scores,
  }), reps);
  const attend = timeSmall(() => native().kiviAttend({
    bits: s.bits, headDim: D, keyGroupSize: KEY_GROUP, valueGroupSize: D, numGroups: h.numGroups, queryHeads: s.queryHeads,
    q: h.q, scale: 1 / Math.sqrt(D), keyCodes: h.keyCodes, keyZero: h.keyZero, keyScale: h.keyScale,
    valueCodes: h.valueCodes, valueZero: h.valueZero, valueScale: h.valueScale, exclude, out, lse,
  }), reps);
  return {
    level, ...s, tokens, scoreMs: score.medianMs, attendMs: attend.medianMs,
    scoreMtokPerS: tokens / score.medianMs / 1e3, attendMtokPerS: tokens / attend.medianMs / 1e3,
    ratio: attend.medianMs / score.medianMs, timing: { score, attend },
  };
}

function main(): void {
  const quick = process.argv.includes('--quick');
  const json = process.argv.includes('--json');
  const tokens = quick ? 4096 : 16384;
  const reps = quick ? 3 : 7;
  const shapes: Shape[] = quick
    ? [{ headDim: 64, queryHeads: 4, bits: 4 }]
    : [
        { headDim: 64, queryHeads: 4, bits: 4 },
        { headDim: 64, queryHeads: 4, bits: 2 },
        { headDim: 64, queryHeads: 4, bits: 1 },
        { headDim: 128, queryHeads: 8, bits: 4 },
        { headDim: 128, queryHeads: 4, bits: 2 },
        { headDim: 32, queryHeads: 4, bits: 1 },
      ];
  const rows: Row[] = [];
  try {
    for (const s of shapes) for (const level of native().buildInfo().simdLevels) rows.push(measure(level, s, tokens, reps));
  } finally {
    native().setSimd({ level: 'auto' });
  }
  if (json) {
    console.log(JSON.stringify({ tokens, keyGroup: KEY_GROUP, excluded: HOT, rows }, null, 2));
    return;
  }
  console.log(`KIVI tail kernels, one KV head, ${tokens} tokens, key group ${KEY_GROUP}, one value group per head, ${HOT} positions excluded from kiviAttend`);
  console.log('level   bits   D  G   kiviScoreKeys ms  Mtok/s   kiviAttend ms  Mtok/s   attend/score');
  for (const r of rows) {
    console.log(
      `${r.level.padEnd(7)} ${String(r.bits).padStart(4)} ${String(r.headDim).padStart(4)} ${String(r.queryHeads).padStart(2)}` +
      `   ${r.scoreMs.toFixed(3).padStart(14)} ${r.scoreMtokPerS.toFixed(1).padStart(7)}` +
      `   ${r.attendMs.toFixed(3).padStart(13)} ${r.attendMtokPerS.toFixed(1).padStart(7)}   ${r.ratio.toFixed(2).padStart(12)}`,
    );
  }
}

main();
