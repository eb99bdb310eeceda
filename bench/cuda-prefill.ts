// Causal prefill attention on the GPU: the tensor-core kernel against the f32 one on the chunks a resident prefill
// runs (2048 queries after `start` cached tokens), in useful TFLOP/s, and the attention time of a whole 131k prefill
// of the Llama-3.1-8B shape projected from them. Run: node dist/bench/cuda-prefill.js [--json]
import { native } from '../src/native.js';
import { DevArena, Timer } from './cuda-timing.js';

interface Row {
  headDim: number;
  start: number;
  tensorMs: number;
  f32Ms: number;
  tensorTflops: number;
  f32Tflops: number;
}

const H = 8, G = 4, T = 2048; // Llama-3.1-8B (and 3.2-1B): 8 KV heads of 4 query heads
const STARTS = [0, 16384, 32768, 65536, 98304, 129024];
const CONTEXT = 131072, LAYERS = 32;

/** Useful flops of one chunk: QK and PV, 2 flops per multiply-add, each query over its start + t + 1 rows. */
function flops(start: number, D: number): number {
  const rows = T * start + (T * (T + 1)) / 2;
  return 4 * rows * D * G * H;
}

async function main(): Promise<void> {
  const json = process.argv.includes('--json');
  const info = native().buildInfo().cuda;
  if (info.deviceCount === 0) {
    console.error(`cuda-prefill bench: ${info.built ? 'no usable GPU' : 'CUDA not built'}: ${info.reason}`);
    process.exitCode = 1;
    return;
  }
  const rows: Row[] = [];
  for (const D of [128, 64]) {
    const cap = STARTS[STARTS.length - 1] + T;
    const qBytes = T * H * G * D * 4, kvBytes = H * cap * 2 * D * 2;
    using a = new DevArena(2 * qBytes + kvBytes + T * H * G * 4 + 4096);
    const q = a.ref(0), out = a.ref(qBytes), kv = a.ref(2 * qBytes), lse = a.ref(2 * qBytes + kvBytes);
    native().cudaFillRandom({ dst: q, count: T * H * G * D, dtype: 'f32', seed: 1, scale: 1 });
    native().cudaFillRandom({ dst: kv, count: H * cap * 2 * D, dtype: 'bf16', seed: 2, scale: 1 });
    using gate = new DevArena(64 << 20);
    const t = new Timer(gate, 32 << 20);
    for (const start of STARTS) {
      const call = (tensorCores: boolean) => () =>
        native().cudaAttendPrefill({ q, T, start, kv, capacity: cap, numKvHeads: H, headDim: D, dtype: 'bf16', groupSize: G, scale: 1 / Math.sqrt(D), out, lse, stream: t.stream, tensorCores });
      const best = (ms: number[]) => Math.min(...ms);
      const tensorMs = best(await t.time(3, 1, call(true)));
      const f32Ms = best(await t.time(start > 65536 ? 1 : 2, 1, call(false)));
      const f = flops(start, D);
      rows.push({ headDim: D, start, tensorMs, f32Ms, tensorTflops: f / tensorMs / 1e9, f32Tflops: f / f32Ms / 1e9 });
      if (!json) console.error(`head_dim ${D} start ${start}: tensor cores ${tensorMs.toFixed(2)} ms, f32 ${f32Ms.toFixed(2)} ms`);
    }
    t.dispose();
  }
  // 131k prefill of the 8B shape: 64 chunks of 2048 per layer, each timed by interpolating the measured starts.
  const at = (start: number, key: 'tensorMs' | 'f32Ms') => {
    const pts = rows.filter((r) => r.headDim === 128);
    const i = Math.max(1, pts.findIndex((p) => p.start >= start));
    const [a, b] = [pts[i - 1], pts[Math.min(i, pts.length - 1)]];
    const w = b.start === a.start ? 0 : (start - a.start) / (b.start - a.start);
    return a[key] + w * (b[key] - a[key]);
  };
  const projected = (key: 'tensorMs' | 'f32Ms') => {
    let ms = 0;
    for (let s = 0; s < CONTEXT; s += T) ms += at(s, key);
    return (ms * LAYERS) / 1000;
  };
  const summary = { gpu: info.deviceName, projected131kAttentionS: { tensorCores: projected('tensorMs'), f32: projected('f32Ms') } };
  if (json) console.log(JSON.stringify({ rows, ...summary }, null, 2));
  else {
    console.log('head_dim  start    tensor ms  TFLOP/s   f32 ms  TFLOP/s  speedup');
    for (const r of rows)
      console.log(`${String(r.headDim).padStart(8)}  ${String(r.start).padStart(6)}  ${r.tensorMs.toFixed(2).padStart(9)}  ${r.tensorTflops.toFixed(1).padStart(7)}  ${r.f32Ms.toFixed(2).padStart(7)}  ${r.f32Tflops.toFixed(1).padStart(7)}  ${(r.f32Ms / r.tensorMs).toFixed(2).padStart(7)}`);
    console.log(`attention of a 131072-token prefill, 8B shape, 32 layers: ${summary.projected131kAttentionS.tensorCores.toFixed(1)} s with tensor cores, ${summary.projected131kAttentionS.f32.toFixed(1)} s f32`);
  }
}

await main();
