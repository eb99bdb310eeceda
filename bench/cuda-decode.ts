// Decode speed of the device-resident CUDA step for a Llama-shaped model with random bf16 weights at a long context:
// dense (the whole KV on the GPU), specache (low-bit copy + hot set under a device KV budget, speculative prefetch)
// exact (device sinks/window + CPU workers over the pinned host KV) and cpu (all on the workers), with the bounds
// they are measured against.
// Usage (GPU machine): node dist/bench/cuda-decode.js [--shape llama-3.1-8b] [--context 131072] [--steps 16]
//   [--policies dense,specache,exact,cpu] [--budget 0.1] [--topk 64] [--json FILE]
//
// The context is synthetic: each layer's KV is random bf16 made on the GPU (a 131k-token prefill of an 8B model is
// not what this measures), quantized into specache's low-bit copy there and copied to the pinned host cache.
// Throughput counts real tokens; specache's speculative row rides along in the same step.
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { HostArena } from '../src/arena.js';
import { CpuAttentionPool } from '../src/cpu-attention.js';
import { DeviceArena, DeviceLayout } from '../src/cuda/device-arena.js';
import { DenseResident, ExactResident, SpecacheResident, specacheDeviceBytes, type HostKv, type ResidentAttention, type SpecacheKnobs } from '../src/cuda/resident-attention.js';
import { deviceCopyGBs } from '../src/bench/cuda-probe.js';
import { randomDeviceWeights } from '../src/cuda/cuda-weights.js';
import { PhaseProfile, ResidentDecoder } from '../src/cuda/resident-decoder.js';
import { weightLayout } from '../src/cuda/cuda-weights.js';
import { copyToHost, type StagedLayer } from '../src/cuda/resident-context.js';
import { parseModelConfig } from '../src/model/config.js';
import { shapeConfig } from '../src/model/shapes.js';
import type { ModelConfig } from '../src/model/types.js';
import { native, type KvRegion } from '../src/native.js';
import { MiB, median } from './memcpy.js';

const GiB = 1024 * MiB;
const BLOCK = 4096; // host cache block (tokens): large blocks keep the synthetic fill to a few thousand copies

const { values } = parseArgs({
  options: {
    shape: { type: 'string', default: 'llama-3.1-8b' },
    context: { type: 'string', default: '131072' },
    steps: { type: 'string', default: '16' },
    warmup: { type: 'string', default: '3' },
    policies: { type: 'string', default: 'dense,specache,exact,cpu' },
    budget: { type: 'string', default: '0.1' },
    topk: { type: 'string', default: '64' },
    'exact-steps': { type: 'string', default: '3' },
    json: { type: 'string' },
    profile: { type: 'boolean', default: false },
  },
});
const c: ModelConfig = parseModelConfig(shapeConfig(values.shape!), values.shape!);
const context = Number(values.context);
const steps = Number(values.steps);
const warmup = Number(values.warmup);
const policies = values.policies!.split(',');
const capacity = context + warmup + 3 * steps + 16; // specache runs three prefetch variants, then a profile
const knobs: SpecacheKnobs = { topK: Number(values.topk), sinks: 4, window: 64, bits: 1, keyGroupSize: 64 };
let stream = 0; // main() makes it a high-priority stream: the step's critical path goes first, the copy stream's side work fills in
const tokenHeadBytes = 2 * c.headDim * 2; // K and V, bf16
const fullKvBytes = c.numLayers * c.numKvHeads * context * tokenHeadBytes;
const kvLayerBytes = (tokens: number) => c.numKvHeads * tokens * tokenHeadBytes;

async function sync(): Promise<void> {
  await native().cudaStreamSynchronize({ stream });
}

/** Host KV for one sequence: [numLayers] regions of [numBlocks, Hkv, BLOCK, 2, D] bf16 in one pinned arena. */
function hostKv(): { arena: HostArena; kv: HostKv } {
  const numBlocks = Math.ceil(capacity / BLOCK);
  const layerBytes = numBlocks * c.numKvHeads * BLOCK * tokenHeadBytes;
  const arena = new HostArena(layerBytes * c.numLayers, { pin: true });
  const region = (l: number): KvRegion => ({ handle: arena.handle, offset: l * layerBytes, numBlocks, numKvHeads: c.numKvHeads, headDim: c.headDim, blockSize: BLOCK, dtype: 'bf16' });
  return { arena, kv: { region, blockIds: Int32Array.from({ length: numBlocks }, (_, i) => i) } };
}

async function fillContext(spec: SpecacheResident | null, exact: ExactResident | null, host: { arena: HostArena; kv: HostKv }): Promise<void> {
  const arena = DeviceArena.create(new DeviceLayout().add('kv', kvLayerBytes(context)));
  const staged: StagedLayer = { kv: (off) => arena.ref('kv', off), n: context, capacity: context };
  try {
    for (let l = 0; l < c.numLayers; l++) {
      native().cudaFillRandom({ dst: arena.ref('kv'), count: kvLayerBytes(context) / 2, dtype: 'bf16', seed: 7000 + l, scale: 1, stream });
      spec?.load(l, staged);
      exact?.load(l, staged);
      copyToHost(c, staged, host.kv, l, stream);
      await sync(); // the staging buffer is reused by the next layer
      process.stderr.write(`\rfilled layer ${l + 1}/${c.numLayers}`);
    }
    process.stderr.write('\n');
  } finally {
    arena.free();
  }
}


interface Row {
  policy: string;
  variant: string;
  deviceKvGiB: number;
  stepMs: number;
  tokensPerS: number;
  copyMsPerStep?: number;
  note?: string;
}

/** Runs n more steps with GPU phase events and prints ms per step by phase, next to the host's enqueue time. */
async function profileSteps(label: string, dec: ResidentDecoder, n: number, pos0: number): Promise<number> {
  dec.profile = new PhaseProfile(stream);
  let enqueue = 0;
  const { next } = await timeSteps(dec, n, pos0, () => (enqueue += dec.enqueueMs));
  const phases = dec.profile.drain();
  dec.profile = null;
  const total = [...phases.values()].reduce((a, b) => a + b, 0);
  console.log(`${label}: GPU ms/step by phase (events; total ${(total / n).toFixed(2)}), host enqueue ${(enqueue / n).toFixed(2)} ms/step`);
  for (const [phase, ms] of phases) console.log(`  ${phase.padEnd(26)} ${(ms / n).toFixed(3)}`);
  return next;
}

/**
 * n steps; each step's wall time. Device-resident policies are pipelined: step i + 1 is enqueued (fed by step i's
 * argmax on the device) before step i's ids reach the host, so the times are per step in steady state.
 */
async function timeSteps(dec: ResidentDecoder, n: number, pos0: number, after?: () => void): Promise<{ ms: number[]; next: number }> {
  const rows = dec.attention.speculative ? 2 : 1;
  const ms: number[] = [];
  let t0 = performance.now();
  let inFlight = dec.step(rows === 2 ? Int32Array.of(1, 2) : Int32Array.of(1), pos0);
  for (let i = 1; i <= n; i++) {
    const next = i < n ? dec.stepOnDevice(pos0 + i, rows) : null; // enqueued while step i - 1 still runs
    await inFlight;
    const t1 = performance.now();
    ms.push(t1 - t0);
    t0 = t1;
    after?.();
    if (next) inFlight = next;
  }
  return { ms, next: pos0 + n };
}

async function main(): Promise<void> {
  const info = native().buildInfo().cuda;
  if (info.deviceCount === 0) throw new Error(`no GPU: ${info.reason}`);
  const weightBytes = weightLayout(c).bytes;
  console.log(`${values.shape} (${(weightBytes / GiB).toFixed(1)} GiB bf16 weights) at ${context} tokens: full KV ${(fullKvBytes / GiB).toFixed(2)} GiB, budget ${values.budget} = ${((Number(values.budget) * fullKvBytes) / GiB).toFixed(2)} GiB; ${info.deviceName}`);
  stream = native().cudaStreamCreate({ highPriority: true });
  const weights = randomDeviceWeights(c, 1, stream);
  await sync();
  const rows: Row[] = [];
  const d2d = await deviceCopyGBs(512 * MiB, 5); // read + write, the reference DESIGN §7 uses
  const memcpy = await native().hostMemcpyBandwidth({ bytes: 512 * MiB, threads: os.availableParallelism(), iterations: 3 });

  if (policies.includes('dense')) {
    const dense = new DenseResident({ config: c, capacity, dtype: 'bf16', stream });
    for (let l = 0; l < c.numLayers; l++) native().cudaFillRandom({ dst: dense.kv(l), count: kvLayerBytes(capacity) / 2, dtype: 'bf16', seed: 7000 + l, scale: 1, stream });
    const dec = new ResidentDecoder(c, weights, dense, stream);
    const w = await timeSteps(dec, warmup, context);
    const { ms, next } = await timeSteps(dec, steps, w.next);
    if (values.profile) await profileSteps('dense', dec, 3, next);
    const stepMs = median(ms);
    const streamed = weightBytes + fullKvBytes;
    rows.push({ policy: 'dense', variant: '', deviceKvGiB: dense.deviceBytes / GiB, stepMs, tokensPerS: 1000 / stepMs, note: `reads ${(streamed / GiB).toFixed(1)} GiB/step = ${((streamed / stepMs) * 1e-6).toFixed(0)} GB/s; bound at the device copy's read+write ${d2d.toFixed(0)} GB/s: ${((streamed / (d2d * 1e9)) * 1000).toFixed(2)} ms` });
    dec.dispose();
    dense.dispose();
  }

  const onCpu = policies.filter((p) => p === 'exact' || p === 'cpu');
  const wantsHost = policies.includes('specache') || onCpu.length > 0;
  const host = wantsHost ? hostKv() : null;
  const spec = policies.includes('specache') && host ? new SpecacheResident({ config: c, capacity, dtype: 'bf16', stream }, knobs, host.kv, native().cudaStreamCreate()) : null;
  const pool = onCpu.length > 0 ? new CpuAttentionPool({ threads: os.availableParallelism() }) : null;
  const exact = pool && host ? new ExactResident({ config: c, capacity, dtype: 'bf16', stream }, knobs, host.kv, pool) : null;
  if (host) await fillContext(spec, exact, host);

  if (spec) {
    const budget = Number(values.budget) * fullKvBytes;
    const bytes = specacheDeviceBytes(c, capacity, knobs);
    if (bytes > budget) console.log(`specache needs ${(bytes / GiB).toFixed(3)} GiB > budget ${(budget / GiB).toFixed(3)} GiB`);
    spec.prime(context);
    const dec = new ResidentDecoder(c, weights, spec, stream);
    let pos = (await timeSteps(dec, warmup, context)).next;
    const byVariant: Record<string, number> = {};
    for (const variant of ['overlap', 'serial', 'none'] as const) {
      spec.prefetch = variant;
      spec.drainCopyMs();
      let enqueue = 0;
      const r = await timeSteps(dec, steps, pos, () => (enqueue += dec.enqueueMs / steps));
      pos = r.next;
      const { copyMs, stallMs } = spec.drainCopyMs();
      byVariant[variant] = median(r.ms);
      const hidden = variant === 'overlap' && copyMs > 0 ? `, stalled ${(stallMs / steps).toFixed(3)} ms/step: ${(100 * (1 - stallMs / copyMs)).toFixed(1)}% of the copy hidden` : '';
      rows.push({ policy: 'specache', variant, deviceKvGiB: spec.deviceBytes / GiB, stepMs: byVariant[variant], tokensPerS: 1000 / byVariant[variant], copyMsPerStep: copyMs / steps, note: `host enqueue ${enqueue.toFixed(2)} ms/step${hidden}` });
    }
    spec.prefetch = 'overlap';
    if (values.profile) pos = await profileSteps('specache', dec, 3, pos);
    spec.drainCopyMs();
    const exposed = byVariant.overlap - byVariant.none;
    const copy = byVariant.serial - byVariant.none;
    rows.push({ policy: 'specache', variant: 'vs no fetch', deviceKvGiB: spec.deviceBytes / GiB, stepMs: exposed, tokensPerS: NaN, note: `step time over the no-fetch variant: ${exposed.toFixed(3)} ms overlapped, ${copy.toFixed(3)} ms serial (noisy: the difference of two medians)` });
    dec.dispose();
  }

  for (const policy of onCpu) {
    if (!pool || !host) break;
    // exact keeps sinks and window on the device (filled above); cpu keeps nothing there.
    const res = policy === 'exact' ? exact! : new ExactResident({ config: c, capacity, dtype: 'bf16', stream }, { sinks: 0, window: 0 }, host.kv, pool);
    const dec = new ResidentDecoder(c, weights, res, stream);
    const w = await timeSteps(dec, 1, context);
    const { ms, next } = await timeSteps(dec, Number(values['exact-steps']), w.next);
    if (values.profile) await profileSteps(policy, dec, 1, next);
    const stepMs = median(ms);
    const cpuBytes = c.numLayers * (context - res.hotCap) * c.numKvHeads * tokenHeadBytes;
    const gbs = (cpuBytes / stepMs) * 1e-6;
    rows.push({ policy, variant: '', deviceKvGiB: res.deviceBytes / GiB, stepMs, tokensPerS: 1000 / stepMs, note: `CPU reads ${(cpuBytes / GiB).toFixed(1)} GiB/step = ${gbs.toFixed(1)} GB/s; ratio to host memcpy ${memcpy.gbPerS.toFixed(1)} GB/s (${memcpy.threads} threads): ${(gbs / memcpy.gbPerS).toFixed(2)}` });
    dec.dispose();
    if (res !== exact) res.dispose();
  }
  await pool?.dispose();

  console.log(`device copy ${d2d.toFixed(0)} GB/s (read + write), host memcpy ${memcpy.gbPerS.toFixed(1)} GB/s (${memcpy.threads} threads)`);
  for (const r of rows)
    console.log(`${r.policy.padEnd(9)} ${r.variant.padEnd(16)} device KV ${r.deviceKvGiB.toFixed(3)} GiB  step ${r.stepMs.toFixed(2)} ms  ${Number.isNaN(r.tokensPerS) ? '' : `${r.tokensPerS.toFixed(1)} tok/s`}${r.copyMsPerStep !== undefined ? `  copy ${r.copyMsPerStep.toFixed(3)} ms/step` : ''}${r.note ? `  ${r.note}` : ''}`);
  if (values.json) writeFileSync(values.json, JSON.stringify({ shape: values.shape, context, knobs, d2dGbPerS: d2d, memcpy, rows }, null, 2));
  spec?.dispose();
  exact?.dispose();
  weights.free();
  host?.arena.dispose();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
