// Batched decode on the device-resident CUDA step, without a prefill: B sequences of synthetic context each, dense
// (every sequence's whole KV on the GPU) or infinigen (keys-only low-bit copy and hot set on the GPU, full KV in
// pinned host memory), timed a step ahead, with the GPU's time by phase next to the host's enqueue time: whether a
// batch's step is bound by the GPU or by the host's launches.
// Usage (GPU machine): node dist/bench/cuda-batch.js [--shape llama-3.1-8b] [--context 24576] [--batch 8]
//   [--policies dense,infinigen] [--steps 8] [--topk 64] [--bits 1] [--per-sequence]
//   [--copy-high]
//   (--per-sequence: a launch per sequence for each per-sequence kernel, instead of one launch for the batch;
//    --copy-high: the copy stream at the compute stream's high priority. infinigen also times its copy-stream kernels
//    alone on the idle GPU, to tell their own cost from the contention with the compute stream.)
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { HostArena } from '../src/arena.js';
import { randomDeviceWeights, weightLayout } from '../src/cuda/cuda-weights.js';
import { DeviceArena, DeviceLayout } from '../src/cuda/device-arena.js';
import { InfinigenResident } from '../src/cuda/infinigen-resident.js';
import { DenseResident, type HostKv, type ResidentAttention } from '../src/cuda/resident-attention.js';
import { copyToHost, type StagedLayer } from '../src/cuda/resident-context.js';
import { PhaseProfile, ResidentDecoder } from '../src/cuda/resident-decoder.js';
import { parseModelConfig } from '../src/model/config.js';
import { shapeConfig } from '../src/model/shapes.js';
import { native, type KvRegion } from '../src/native.js';
import { MiB, median } from './memcpy.js';

const GiB = 1024 * MiB;
const BLOCK = 4096; // host cache block (tokens)
const { values } = parseArgs({
  options: {
    shape: { type: 'string', default: 'llama-3.1-8b' },
    context: { type: 'string', default: '24576' },
    batch: { type: 'string', default: '8' },
    policies: { type: 'string', default: 'dense,infinigen' },
    steps: { type: 'string', default: '8' },
    topk: { type: 'string', default: '64' },
    bits: { type: 'string', default: '1' },
    'per-sequence': { type: 'boolean', default: false },
    'copy-high': { type: 'boolean', default: false },
  },
});
const c = parseModelConfig(shapeConfig(values.shape!), values.shape!);
const context = Number(values.context);
const B = Number(values.batch);
const steps = Number(values.steps);
const capacity = context + 3 * steps + 8;
const tokenHeadBytes = 4 * c.headDim; // K and V, bf16
const kvLayerBytes = (tokens: number) => c.numKvHeads * tokens * tokenHeadBytes;
const knobs = { topK: Number(values.topk), partialRatio: Number(values.bits) / 16, window: 64, sinks: 4 };
let stream = 0;
const sync = () => native().cudaStreamSynchronize({ stream });

/** All B sequences' host KV in one pinned arena: sequence s owns blocks [s * nb, (s + 1) * nb). */
function hostKv(): { arena: HostArena; kv: (s: number) => HostKv } {
  const nb = Math.ceil(capacity / BLOCK);
  const layerBytes = B * nb * c.numKvHeads * BLOCK * tokenHeadBytes;
  const arena = new HostArena(layerBytes * c.numLayers, { pin: true });
  const region = (l: number): KvRegion => ({ handle: arena.handle, offset: l * layerBytes, numBlocks: B * nb, numKvHeads: c.numKvHeads, headDim: c.headDim, blockSize: BLOCK, dtype: 'bf16' });
  return { arena, kv: (s) => ({ region, blockIds: Int32Array.from({ length: nb }, (_, i) => s * nb + i) }) };
}

/** Random KV for every layer of sequence s, handed to its attention and, when it has one, its host cache. */
async function fill(att: ResidentAttention, host: HostKv | null, s: number): Promise<void> {
  const arena = DeviceArena.create(new DeviceLayout().add('kv', kvLayerBytes(context)));
  const staged: StagedLayer = { kv: (off) => arena.ref('kv', off), n: context, capacity: context };
  try {
    for (let l = 0; l < c.numLayers; l++) {
      native().cudaFillRandom({ dst: arena.ref('kv'), count: kvLayerBytes(context) / 2, dtype: 'bf16', seed: 7000 + 97 * s + l, scale: 1, stream });
      att.load(l, staged, arena.ref('kv'));
      if (host) copyToHost(c, staged, host, l, stream);
      await sync();
    }
  } finally {
    arena.free();
  }
}

/** n steps a step ahead (each fed on the device by the last), wall ms of each, and the host's enqueue ms of each. */
async function timeSteps(dec: ResidentDecoder, n: number, pos0: number): Promise<{ ms: number[]; enqueue: number[]; next: number }> {
  const positions = (p: number) => Array.from({ length: B }, () => p);
  const ms: number[] = [];
  const enqueue: number[] = [];
  let t0 = performance.now();
  let inFlight = dec.stepBatch(new Int32Array(B).fill(1), positions(pos0), 1);
  for (let i = 1; i <= n; i++) {
    const next = i < n ? dec.stepBatch(null, positions(pos0 + i), 1) : null;
    await inFlight;
    const t1 = performance.now();
    ms.push(t1 - t0);
    enqueue.push(dec.enqueueMs);
    t0 = t1;
    if (next) inFlight = next;
  }
  return { ms, enqueue, next: pos0 + n };
}

/** infinigen's copy-stream kernels of one layer for the whole batch, each timed alone on the idle GPU (20 reps). */
async function timeAlone(lead: InfinigenResident, on: number): Promise<void> {
  const reps = 20;
  const H = B * c.numKvHeads;
  const n = context - knobs.window - knobs.sinks;
  const keys = { numKvHeads: H, headDim: c.headDim, bits: (knobs.partialRatio * 16) as 1 | 2 | 4, keyGroupSize: 64 as const, valueGroupSize: c.headDim, capacityTokens: capacity, keysOnly: true };
  const kernels: Array<[string, () => void]> = [
    ['cudaKiviScores', () => native().cudaKiviScores({ ...keys, lowBit: lead.ref('keys1'), groupSize: c.numHeads / c.numKvHeads, q: lead.ref('specQ'), numGroups: Math.ceil((context - knobs.window) / 64), out: lead.ref('scores'), ldOut: capacity, stream: on })],
    ['cudaTopK', () => native().cudaTopK({ scores: lead.ref('scores'), rows: H, ld: capacity, first: knobs.sinks, n, k: knobs.topK, out: lead.ref('picks1'), stream: on })],
    ['cudaKvGatherDevice', () => native().cudaKvGatherDevice({
      ...lead.host.region(1), seqs: B, blockTable: lead.ref('blockTable'), tableLen: Math.ceil(capacity), positions: lead.ref('picks1'), n: knobs.topK,
      dst: lead.ref('hot1'), dstCapacity: knobs.sinks + knobs.window + knobs.topK, dstSlot: knobs.sinks + knobs.window, table: lead.ref('gatherTable'), stream: on,
    })],
  ];
  const parts: string[] = [];
  for (const [name, run] of kernels) {
    run();
    await native().cudaStreamSynchronize({ stream: on });
    const t0 = native().cudaEventRecord({ stream: on, timing: true });
    for (let i = 0; i < reps; i++) run();
    const t1 = native().cudaEventRecord({ stream: on, timing: true });
    await native().cudaStreamSynchronize({ stream: on });
    parts.push(`${name} ${((native().cudaEventElapsedMs({ start: t0, end: t1 }) * 1000) / reps).toFixed(1)} us`);
    native().cudaEventFree({ event: t0 });
    native().cudaEventFree({ event: t1 });
  }
  console.log(`  alone, one layer of the batch (${H} heads x ${context} tokens): ${parts.join(', ')}`);
}

async function main(): Promise<void> {
  const info = native().buildInfo().cuda;
  if (info.deviceCount === 0) throw new Error(`no GPU: ${info.reason}`);
  console.log(`${values.shape} (${(weightLayout(c).bytes / GiB).toFixed(1)} GiB weights), batch ${B} x ${context} tokens; ${info.deviceName}`);
  stream = native().cudaStreamCreate({ highPriority: true });
  const copy = native().cudaStreamCreate({ highPriority: values['copy-high'] });
  const weights = randomDeviceWeights(c, 1, stream);
  await sync();
  for (const policy of values.policies!.split(',')) {
    const host = policy === 'dense' ? null : hostKv();
    const atts: ResidentAttention[] = [];
    try {
      for (let s = 0; s < B; s++) {
        const shape = { config: c, capacity, dtype: 'bf16' as const, stream };
        const att = policy === 'dense'
          ? new DenseResident(shape, s === 0 ? B : { leader: atts[0] as DenseResident })
          : new InfinigenResident(shape, knobs, host!.kv(s), copy, weights, s === 0 ? B : { leader: atts[0] as InfinigenResident });
        if (values['per-sequence']) (att as DenseResident | InfinigenResident).batchedKernels = false;
        atts.push(att);
        if (att instanceof DenseResident) for (let l = 0; l < c.numLayers; l++) native().cudaFillRandom({ dst: att.kv(l), count: kvLayerBytes(capacity) / 2, dtype: 'bf16', seed: 7000 + 97 * s + l, scale: 1, stream });
        else await fill(att, host!.kv(s), s);
      }
      const dec = new ResidentDecoder(c, weights, atts, stream);
      const warm = await timeSteps(dec, 3, context);
      const r = await timeSteps(dec, steps, warm.next);
      dec.profile = new PhaseProfile(stream);
      const lead = atts[0] instanceof InfinigenResident ? atts[0] : null;
      const copyProfile = lead ? new PhaseProfile(copy) : null;
      if (lead) lead.copyProfile = copyProfile;
      await timeSteps(dec, 2, r.next);
      await native().cudaStreamSynchronize({ stream: copy });
      const phases = dec.profile.drain();
      const copyPhases = copyProfile?.drain();
      dec.profile = null;
      if (lead) lead.copyProfile = null;
      const stepMs = median(r.ms);
      const gpu = [...phases.values()].reduce((a, b) => a + b, 0) / 2;
      const deviceKv = atts.reduce((n, a) => n + a.deviceBytes, 0);
      console.log(`${policy}: device KV ${(deviceKv / GiB).toFixed(2)} GiB; step ${stepMs.toFixed(2)} ms median = ${((B * 1000) / stepMs).toFixed(1)} tok/s; host enqueue ${median(r.enqueue).toFixed(2)} ms/step; GPU ${gpu.toFixed(2)} ms/step by phase (profiled):`);
      for (const [phase, ms] of phases) console.log(`  ${phase.padEnd(26)} ${(ms / 2).toFixed(3)}`);
      if (copyPhases) {
        console.log('  copy stream (the speculation of layers 1 ..; "idle" is its wait for the compute stream):');
        for (const [phase, ms] of copyPhases) console.log(`    ${phase.padEnd(24)} ${(ms / 2).toFixed(3)}`);
      }
      await sync();
      await native().cudaStreamSynchronize({ stream: copy });
      if (lead) await timeAlone(lead, copy);
      dec.dispose();
    } finally {
      for (const a of atts) a.dispose();
      host?.arena.dispose();
    }
  }
  native().cudaStreamDestroy({ stream: copy });
  weights.free();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
