// Measures the cost model's constants on this machine, with this model's head shape: doctor's memcpy and link
// figures, the native kernels over a synthetic KV, the worker pool per thread count, and a few dense steps.
import { availableParallelism, totalmem } from 'node:os';
import { performance } from 'node:perf_hooks';
import { HostArena } from '../arena.js';
import { cudaProbe } from '../bench/cuda-probe.js';
import type { DeviceProbe, Machine } from '../bench/machine.js';
import { runCase, type BenchRun } from '../bench/run.js';
import { CpuAttentionPool } from '../cpu-attention.js';
import { resolveEngineOptions, type PolicyName } from '../engine/options.js';
import { doctor, type DoctorReport } from '../hardware/doctor.js';
import { threadCounts } from '../hardware/memcpy-threads.js';
import type { Model } from '../model/model.js';
import { f32ToF16 } from '../kernels/half.js';
import { native, type KvRegion } from '../native.js';
import { blockBytes, unitBytes } from '../kernels/paged-kv.js';
import { stepCost, type CostConstants, type LowBitRate, type Residual, type ThreadRate, type TuneShape } from './cost-model.js';

/** The share of the top-k assumed to miss each step: not measured up front (it depends on the text); see README. */
export const DEFAULT_MISS_RATE = 0.5;

export interface MeasureOptions {
  /** Small buffers and few repetitions: for tests; the numbers get noisy. */
  quick?: boolean;
  /** The policies to fit a residual for, from short runs of each. */
  policies?: readonly PolicyName[];
  /** The KV one decode step of the run reads (every layer, the whole batch): the CPU workers are timed over as much. */
  runKvBytes?: number;
  onProgress?: (stage: string, done: number, total: number) => void;
  signal?: AbortSignal;
}

export interface Measured {
  constants: CostConstants;
  sources: Record<string, string>; // where each constant came from, in words
  machine: Machine; // what the confirmation runs' bound divides by
  failed: Record<string, string>; // policies whose trial run threw, with the message
}

// Full sizes outgrow the last-level cache, as doctor's do; quick sizes take milliseconds. The CPU workers' KV is
// sized by workerKvBytes() instead. On CUDA the policies' trial
// runs are longer: a step's fixed cost (launches, the dense layers) hides the per-token slope below a few thousand.
const SIZES = {
  full: { kvBytes: 512 << 20, lowBitTokens: 1 << 16, gatherUnits: 1 << 14, reps: 5, denseContext: 64, denseSteps: 8, policyContexts: [128, 1024], policySteps: 6 },
  quick: { kvBytes: 2 << 20, lowBitTokens: 4096, gatherUnits: 512, reps: 2, denseContext: 16, denseSteps: 3, policyContexts: [128, 256], policySteps: 4 },
};
const CUDA_POLICY_CONTEXTS = { full: [4096, 16384], quick: [512, 2048] };

/** The most synthetic KV a layer of the workers' measurement holds; larger runs are measured as several layers. */
export const LAYER_KV_CAP = 512 << 20;
/** At most this many such layers: 2 GiB, read a step at a time as the run reads its layers. */
export const MAX_LAYERS = 4;

/**
 * How much synthetic KV the CPU workers are timed over: as much as a step of the run reads, within [2 MiB, 2 GiB]
 * (and an eighth of host memory). The cache then holds it when it holds the run's KV, and not when it does not. A
 * server's L3 holds over 100 MiB (300 MiB on the H100 host): at a fixed 128 MiB its workers read 55 GB/s, above its
 * 43 GB/s memcpy, while the 8B shape at 131k reads 512 MiB a layer from DRAM; the demo model at 8k reads 7.8 MiB a
 * step, from cache. Without the run's size (or in quick mode) the fixed sizes stand.
 */
export function workerKvBytes(runKvBytes: number | undefined, quick: boolean | undefined, hostBytes = totalmem()): number {
  const size = SIZES[quick ? 'quick' : 'full'].kvBytes;
  if (quick || runKvBytes === undefined || !(runKvBytes > 0)) return size;
  const cap = Math.max(size, Math.min(MAX_LAYERS * LAYER_KV_CAP, Math.floor(hostBytes / 8)));
  return Math.min(cap, Math.max(2 << 20, Math.ceil(runKvBytes)));
}

/** How many layers of at most LAYER_KV_CAP the measurement splits `bytes` into. */
export function workerKvLayers(bytes: number): number {
  return Math.min(MAX_LAYERS, Math.max(1, Math.ceil(bytes / LAYER_KV_CAP)));
}

const KEY_GROUP = 32; // the split policies' default; the kernels' speed per token hardly depends on it
const HOT_TOKENS = 4 + 64 + 64; // sinks + window + top-k: the k a selection asks top-k for

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** Median ms of `reps` calls after one untimed warm-up (page faults and lazy starts stay out of the timing). */
async function timeMs(reps: number, fn: () => unknown): Promise<number> {
  await fn();
  const times: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    await fn();
    times.push(performance.now() - t0);
  }
  return Math.max(median(times), 1e-6);
}

const gbs = (bytes: number, ms: number): number => bytes / (ms * 1e6);

/**
 * `layers` paged KVs of `tokens` tokens each in the engine's layout, [numBlocks, H, blockSize, 2, D] bf16, in one
 * arena with every page touched. `region` is the first layer's.
 */
class SyntheticKv {
  readonly arena: HostArena;
  readonly regions: KvRegion[];
  readonly blockIds: Int32Array;
  readonly tokens: number; // a layer's

  constructor(heads: number, headDim: number, blockSize: number, bytes: number, layers: number) {
    const block = blockBytes({ numKvHeads: heads, blockSize, headDim });
    const numBlocks = Math.max(1, Math.floor(bytes / layers / block));
    this.arena = new HostArena(layers * numBlocks * block, { pin: true });
    this.arena.write(0, new Uint8Array(this.arena.bytes).fill(0x3c)); // small finite bf16 values
    this.regions = Array.from({ length: layers }, (_, l) => ({
      handle: this.arena.handle, offset: l * numBlocks * block, numBlocks, numKvHeads: heads, headDim, blockSize, dtype: 'bf16' as const,
    }));
    this.blockIds = Int32Array.from({ length: numBlocks }, (_, i) => i);
    this.tokens = numBlocks * blockSize;
  }

  get region(): KvRegion {
    return this.regions[0]!;
  }

  dispose(): void {
    this.arena.dispose();
  }
}

type Probed = Awaited<ReturnType<DeviceProbe>>;

/** The bench's Machine from doctor's figures (and on CUDA the device probe's): the confirmation runs' bound divides by it. */
function machineOf(r: DoctorReport, backend: 'cpu' | 'cuda', probe: Probed | null): Machine {
  const top = r.memcpy.rows[r.memcpy.rows.length - 1];
  const memcpy = { threads: top.threads, bytesPerThread: Math.floor(top.bytes / top.threads), copyGBs: top.gbPerS, readWriteGBs: top.readWriteGbPerS };
  const base = { backend, cpuModel: r.cpu.model, cpuCount: r.cpu.cores, totalMemBytes: totalmem(), simd: r.cpu.simd, memcpy, hostGBs: top.readWriteGbPerS };
  if (probe) {
    return { ...base, deviceGBs: probe.deviceGBs, pcieGBs: probe.pcieGBs, sources: { deviceGBs: probe.source, pcieGBs: probe.source, hostGBs: 'host memcpy r+w' } };
  }
  return { ...base, deviceGBs: top.readWriteGbPerS, pcieGBs: top.gbPerS, sources: { deviceGBs: 'host memcpy r+w (cpu backend)', pcieGBs: 'host memcpy copy (cpu backend)', hostGBs: 'host memcpy r+w' } };
}

/**
 * The low-bit kernels on the GPU, from the device bandwidth: scoring reads one token-head's packed keys and their
 * share of the per-channel zero/scale; attention reads keys and values. Bandwidth-bound estimates: the residual fit
 * of each policy's trial runs takes up what they miss (launches, top-k, the merge).
 */
function deviceLowBit(D: number, deviceGBs: number): CostConstants['lowBit'] {
  const out: CostConstants['lowBit'] = {};
  for (const bits of [1, 2, 4] as const) {
    if ((D * bits) % 8 !== 0) continue;
    const keyBytes = (D * bits) / 8 + (4 * D) / KEY_GROUP; // packed key + f16 zero and scale per channel per group
    const perMs = (deviceGBs * 1e6) / keyBytes;
    out[String(bits) as '1' | '2' | '4'] = { scoreTokPerMs: perMs, attendTokPerMs: perMs / 2 };
  }
  return out;
}

/** Low-bit selection (score every key, then top-k) and low-bit attention over `tokens` tokens of one head. */
async function measureLowBit(bits: 1 | 2 | 4, D: number, G: number, tokens: number, reps: number): Promise<LowBitRate> {
  const numGroups = Math.max(1, Math.floor(tokens / KEY_GROUP));
  const n = numGroups * KEY_GROUP;
  const row = (D * bits) / 8;
  const codes = new Uint8Array(n * row).map((_, i) => Math.imul(i, 2654435761) >>> 24); // [numGroups, KG, D*bits/8], scattered codes
  const zero = new Uint16Array(numGroups * D).fill(f32ToF16(-0.5)); // fp16 [numGroups, D]
  const scale = new Uint16Array(numGroups * D).fill(f32ToF16(0.01));
  const valueZero = new Uint16Array(n).fill(f32ToF16(-0.5)); // fp16 [n, 1]: one value group spans the head
  const valueScale = new Uint16Array(n).fill(f32ToF16(0.01));
  const q = new Float32Array(G * D).fill(0.01); // [G, D]
  const scores = new Float32Array(n);
  const k = Math.min(n, HOT_TOKENS);
  const top = new Int32Array(k);
  const o = new Float32Array(G * D);
  const lse = new Float32Array(G);
  const shape = { bits, headDim: D, numGroups };
  const selectMs = await timeMs(reps, () => {
    native().kiviScoreKeys({ ...shape, groupSize: KEY_GROUP, queryHeads: G, q, codes, zero, scale, out: scores });
    native().topK({ rows: 1, n, k, scores, out: top });
  });
  const attendMs = await timeMs(reps, () => native().kiviAttend({
    ...shape, keyGroupSize: KEY_GROUP, valueGroupSize: D, queryHeads: G, q, scale: 1 / Math.sqrt(D),
    keyCodes: codes, keyZero: zero, keyScale: scale, valueCodes: codes, valueZero, valueScale, out: o, lse,
  }));
  return { scoreTokPerMs: n / selectMs, attendTokPerMs: n / attendMs };
}

/** The worker pool at `threads` threads: full attention, an all-excluded walk, and a one-block round trip. */
async function measurePool(kv: SyntheticKv, G: number, threads: number, reps: number): Promise<ThreadRate> {
  const H = kv.region.numKvHeads;
  const D = kv.region.headDim;
  const pool = new CpuAttentionPool({ threads });
  try {
    const base = { blockIds: kv.blockIds, kvHeads: Int32Array.from({ length: H }, (_, h) => h), groupSize: G, scale: 1 / Math.sqrt(D) };
    const q = new Float32Array(H * G * D).fill(0.01); // [H, G, D]
    const out = new Float32Array(H * G * D);
    const lse = new Float32Array(H * G);
    const layers = kv.regions.length;
    const bytes = layers * kv.tokens * H * unitBytes(D);
    // A step: every layer once, in order, each awaited before the next as the run's layers are.
    const step = async (extra: { exclude?: Int32Array }) => {
      for (const region of kv.regions) await pool.attend({ ...base, ...extra, region, numTokens: kv.tokens, q, out, lse });
    };
    const attnMs = await timeMs(reps, () => step({}));
    const dispatchMs = await timeMs(Math.max(reps, 5), () => pool.attend({ ...base, region: kv.region, numTokens: kv.region.blockSize, q, out, lse }));
    const exclude = Int32Array.from({ length: kv.tokens }, (_, i) => i);
    const skipMs = await timeMs(reps, () => step({ exclude }));
    // The model charges dispatchMs once per request on top of bytes / rate, so the rate leaves the round trips out;
    // they are at most half the step (a noisy round trip must not blow the rate up). On the H100 machine the round
    // trip was a fifth of a 128 MiB request, and counting it twice put 131k predictions 30% over the measured steps.
    const net = (ms: number) => Math.max(ms - layers * dispatchMs, ms / 2);
    return { threads, attnGBs: gbs(bytes, net(attnMs)), skipGBs: gbs(bytes, net(skipMs)), dispatchMs };
  } finally {
    await pool.dispose();
  }
}

/**
 * Every constant of the cost model, measured now. The cpu backend's "device" is the main thread over a host
 * arena, so device-tier reads are one thread's native attention; on CUDA they are the GPU's memory bandwidth and
 * misses come over PCIe, both measured by the bench's device probe, and the CPU part is the worker pool as on the CPU.
 */
export async function measureConstants(model: Model, backend: 'cpu' | 'cuda', o: MeasureOptions = {}): Promise<Measured> {
  const size = o.quick ? SIZES.quick : SIZES.full;
  const c = model.config;
  const H = c.numKvHeads;
  const D = c.headDim;
  const G = c.numHeads / c.numKvHeads;
  const u = unitBytes(D);
  const { blockSize } = resolveEngineOptions({});
  const stages = ['memcpy and link', 'device-tier reads and gathers', 'low-bit kernels', 'CPU attention workers', 'dense layers', 'each policy'];
  const stage = (i: number) => {
    o.signal?.throwIfAborted();
    o.onProgress?.(`measuring ${stages[i]}`, i, stages.length);
  };

  stage(0);
  const report = await doctor({ backend, quick: o.quick });
  const oneThread = report.memcpy.rows[0];
  const probe = backend === 'cuda' ? await cudaProbe() : null;
  const machine = machineOf(report, backend, probe);

  stage(1);
  const kernels = await measureKernels(H, D, G, blockSize, { ...size, kvBytes: workerKvBytes(o.runKvBytes, o.quick) }, (i) => stage(i), probe);
  const policyContexts = probe ? CUDA_POLICY_CONTEXTS[o.quick ? 'quick' : 'full'] : size.policyContexts;

  stage(4);
  const dense = await measureDense(model, machine, size.denseContext, size.denseSteps, o.signal);
  const formulas: CostConstants = {
    backend, deviceReadGBs: kernels.deviceReadGBs, linkGBs: probe ? probe.pcieGBs : oneThread.gbPerS, gatherGBs: kernels.gatherGBs, lowBit: kernels.lowBit,
    cpu: kernels.cpu, denseLayerMs: dense.layerMs, denseRowMs: dense.rowMs, stepOverheadMs: dense.overheadMs, missRate: DEFAULT_MISS_RATE,
    residual: {},
  };

  stage(5);
  const { residual, failed } = await fitResiduals(model, machine, formulas, o.policies ?? [], policyContexts, size.policySteps, o.signal);
  o.onProgress?.(`measuring ${stages[5]}`, stages.length, stages.length);
  const sources = {
    deviceReadGBs: probe ? `the GPU's device copy (read + write): ${probe.source}` : `one thread's native attention over ${kernels.tokens} tokens x ${H} KV heads (cpu backend: the device tier is host memory read by the main thread)`,
    linkGBs: probe ? `pinned H2D: ${probe.source}` : 'host memcpy, 1 thread (cpu backend: a "copy to the device" is a host copy)',
    gatherGBs: probe ? 'pinned H2D (the zero-copy gather of 256- and 512-byte units reaches 0.8-0.9 of it on the H100)' : `kvGather of ${kernels.units} scattered (token, head) units of ${u} B`,
    lowBit: probe ? `the device bandwidth over the packed keys (and values) with their zero/scale, per token-head: an estimate the residual fit corrects` : `native KIVI score + top-k and low-bit attention over ${size.lowBitTokens} tokens of one head`,
    cpu: `the worker pool over ${kernels.layers} layer(s) of ${kernels.tokens} tokens x ${H} KV heads, a step at a time, at 1, 2, 4, ... up to all cores`,
    denseLayerMs: `dense decode steps at context ${size.denseContext}: engine deviceMs / steps / layers`,
    denseRowMs: 'the same at batch 2, less batch 1, per layer',
    stepOverheadMs: 'dense step wall time less its deviceMs and cpuAttnMs',
    missRate: 'assumed; the confirmation runs report the measured misses',
    residual: `runs of each policy at contexts ${policyContexts.join(' and ')} (uncapped, default knobs, the faster of two at each), less the model's prediction, per layer and KV head, as a line in the context held flat past the longer one`,
  };
  return { constants: { ...formulas, residual }, sources, machine, failed };
}

/**
 * The device tier's rates and the worker pool over a synthetic KV of the model's head shape, freed before the model
 * runs. On CUDA the device tier is the GPU's: the probe's figures stand in, and the host kernels are not timed.
 */
async function measureKernels(H: number, D: number, G: number, blockSize: number, size: (typeof SIZES)['full'], stage: (i: number) => void, probe: Probed | null) {
  const kv = new SyntheticKv(H, D, blockSize, size.kvBytes, workerKvLayers(size.kvBytes));
  try {
    const tier = probe
      ? { deviceReadGBs: probe.deviceGBs, gatherGBs: probe.pcieGBs, lowBit: deviceLowBit(D, probe.deviceGBs), units: 0 }
      : await measureHostTier(kv, G, size, stage);
    stage(3);
    const cpu: ThreadRate[] = [];
    for (const threads of threadCounts(availableParallelism())) cpu.push(await measurePool(kv, G, threads, size.reps));
    return { ...tier, cpu, tokens: kv.tokens, layers: kv.regions.length };
  } finally {
    kv.dispose();
  }
}

/** The CPU backend's device tier: one thread's native attention, scattered gathers and the low-bit kernels. */
async function measureHostTier(kv: SyntheticKv, G: number, size: (typeof SIZES)['full'], stage: (i: number) => void) {
  const { numKvHeads: H, headDim: D } = kv.region;
  const u = unitBytes(D);
  const q = new Float32Array(H * G * D).fill(0.01);
  const out = new Float32Array(q.length);
  const lse = new Float32Array(H * G);
  const kvHeads = Int32Array.from({ length: H }, (_, h) => h);
  const attendMs = await timeMs(size.reps, () => native().kvAttend({ ...kv.region, blockIds: kv.blockIds, numTokens: kv.tokens, kvHeads, groupSize: G, scale: 1 / Math.sqrt(D), q, out, lse }));
  // Misses are scattered (token, head) units: one run each, the worst case of the gather.
  const units = Math.min(size.gatherUnits, kv.tokens);
  const positions = Int32Array.from({ length: units }, (_, i) => (Math.imul(i, 2654435761) >>> 0) % kv.tokens);
  using dst = new HostArena(units * u, { pin: false });
  const gatherMs = await timeMs(size.reps, () => native().kvGather({ ...kv.region, blockIds: kv.blockIds, kvHeads: Int32Array.of(0), n: units, positions, dst: { handle: dst.handle, offset: 0 } }));

  stage(2);
  const lowBit: CostConstants['lowBit'] = {};
  for (const bits of [1, 2, 4] as const) {
    if ((D * bits) % 8 === 0) lowBit[String(bits) as '1' | '2' | '4'] = await measureLowBit(bits, D, G, size.lowBitTokens, size.reps);
  }
  return { deviceReadGBs: gbs(kv.tokens * H * u, attendMs), gatherGBs: gbs(units * u, gatherMs), lowBit, units };
}

/** Dense steps of the real model at a short context, at batch 1 and 2: the graphs per layer and the rest. */
async function measureDense(model: Model, machine: Machine, context: number, steps: number, signal?: AbortSignal) {
  const L = model.config.numLayers;
  const ctx = Math.max(1, Math.min(context, model.config.maxPositionEmbeddings - steps - 1));
  const opts = { steps, seed: 0, engine: {}, machine, signal };
  const run = (batch: number) => runCase(model, { policy: 'dense', context: ctx, batch, budget: null }, opts);
  // The first decode step of a row count sets up the graphs' buffers (tens of ms); the per-step figures are
  // means, so each row count is run once untimed.
  await run(1);
  await run(2);
  const one = await run(1);
  const two = await run(2);
  const s1 = one.perStep!;
  const layerMs = s1.deviceMs / L;
  // Without engine.generateBatch, assume each row costs what the first does.
  const rowMs = two.status === 'ok' && two.perStep ? Math.max(0, (two.perStep.deviceMs - s1.deviceMs) / L) : layerMs;
  const overheadMs = Math.max(0, (one.msPerTokenMedian ?? 0) - s1.deviceMs - s1.cpuAttnMs - s1.copyMs);
  return { layerMs, rowMs, overheadMs };
}

/**
 * Short runs of each policy, uncapped, with its default knobs, at two contexts: what they cost beyond the formulas
 * (JS bookkeeping per head, one worker request per head, awaits; for a policy without a formula, its host reads),
 * per (layer, KV head), as a line in the context. Two runs at each context, the faster median: a stall of the
 * machine in one short run would otherwise be charged to every step.
 */
async function fitResiduals(model: Model, machine: Machine, constants: CostConstants, policies: readonly PolicyName[], contexts: number[], steps: number, signal?: AbortSignal) {
  const c = model.config;
  const shape: TuneShape = { numLayers: c.numLayers, numKvHeads: c.numKvHeads, groupSize: c.numHeads / c.numKvHeads, headDim: c.headDim };
  const threads = constants.cpu[constants.cpu.length - 1].threads;
  const [n1, n2] = contexts.map((n) => Math.max(1, Math.min(n, c.maxPositionEmbeddings - steps - 1)));
  const residualAt = async (policy: PolicyName, n: number): Promise<number | null> => {
    const runs: BenchRun[] = [];
    for (let seed = 0; seed < 2; seed++) runs.push(await runCase(model, { policy, context: n, batch: 1, budget: null }, { steps, seed, engine: { cpuThreads: threads }, machine, signal }));
    const best = runs.filter((r) => r.status === 'ok' && r.msPerTokenMedian !== null).sort((a, b) => a.msPerTokenMedian! - b.msPerTokenMedian!)[0];
    if (!best) return null;
    const cand = { policy, knobs: best.knobs ?? {}, cpuThreads: threads, deviceBytes: best.stats?.deviceBytesPeak ?? 0 };
    return (best.msPerTokenMedian! - stepCost(shape, n, 1, cand, constants).msPerStep) / (c.numLayers * c.numKvHeads);
  };
  const residual: Record<string, Residual> = {};
  const failed: Record<string, string> = {};
  for (const policy of policies) {
    let r1: number | null;
    let r2: number | null;
    try {
      r1 = await residualAt(policy, n1);
      r2 = n2 > n1 ? await residualAt(policy, n2) : r1;
    } catch (err) {
      signal?.throwIfAborted();
      failed[policy] = (err as Error).message; // one broken policy should not stop the others being tuned
      continue;
    }
    if (r1 === null || r2 === null) continue; // the search finds it unfit as well, or charges nothing extra
    if (!Number.isFinite(r1) || !Number.isFinite(r2)) {
      failed[policy] = `the cost model has no finite prediction for its trial runs (${r1}, ${r2} ms residual)`;
      continue;
    }
    const slope = n2 > n1 ? Math.max(0, (r2 - r1) / (n2 - n1)) : 0; // ms per token
    residual[policy] = { fixedMs: Math.max(0, r1 - slope * n1), msPerKTokens: slope * 1000, upToTokens: n2 };
  }
  return { residual, failed };
}
