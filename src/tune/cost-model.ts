// The predicted time of one decode step (DESIGN §1), per policy, as pure functions of (shape, context, batch, knobs, constants).
import { transferMs } from '../bench/bound.js';
import type { Knobs } from '../engine/policies.js';
import { unitBytes } from '../kernels/paged-kv.js';

/** What the model needs of a model's attention: one token-head's K and V are `unitBytes(headDim)` bytes. */
export interface TuneShape {
  numLayers: number;
  numKvHeads: number;
  groupSize: number; // query heads per KV head
  headDim: number;
}

/** CPU attention through the worker pool at one thread count. */
export interface ThreadRate {
  threads: number;
  attnGBs: number; // full-precision KV attended per second (1e9 bytes/s)
  skipGBs: number; // KV walked past per second when every token is excluded (tiered's CPU part walks them all)
  dispatchMs: number; // one round trip of a near-empty request: dispatch, workers, merge
}

/** Low-bit kernels at one bit width, per KV head, in tokens per ms. */
export interface LowBitRate {
  scoreTokPerMs: number; // low-bit key scoring plus top-k: the selection of a hot set
  attendTokPerMs: number; // attention over low-bit keys and values (the tail of tiered and specache)
}

export interface CostConstants {
  backend: 'cpu' | 'cuda';
  deviceReadGBs: number; // full-precision KV attended in the device tier (the hot set, generic policies)
  linkGBs: number; // bulk host -> device copy (offload-layer's staging); on the cpu backend a host copy
  gatherGBs: number; // hot-set misses gathered as (token, head) units of this model's head shape
  lowBit: Partial<Record<'1' | '2' | '4', LowBitRate>>;
  cpu: ThreadRate[]; // by thread count, ascending
  denseLayerMs: number; // dense pre- and post-attention graphs of one layer for one row
  denseRowMs: number; // what each further row of the same step adds to a layer's graphs
  stepOverheadMs: number; // per step, outside the layers: embedding, final norm and logits, sampling, scheduling
  missRate: number; // share of the top-k that is not resident and must be fetched each step (an assumption, see README)
  /**
   * Per policy, what a step costs per (sequence, layer, KV head) beyond the formulas: the main thread's
   * bookkeeping, one worker request per head, awaits, and for policies without a formula their host reads.
   * Fitted from short runs of each policy at two contexts.
   */
  residual: Record<string, Residual>;
}

/**
 * Residual cost per (sequence, layer, KV head) at n tokens: fixedMs + msPerKTokens * min(n, upToTokens) / 1000.
 * The line is fitted between two short trial contexts and held flat past the longer one: on the H100, a slope
 * fitted at 4k and 16k and carried to 131k charged exact 500 ms a step it never spent (predicted 2.4x measured).
 */
export interface Residual {
  fixedMs: number;
  msPerKTokens: number;
  upToTokens?: number; // the longer trial context; absent: the line goes on
}

/** One setting the search considers: a policy, its knobs, the CPU threads, and the device-tier bytes planned for it. */
export interface CostCandidate {
  policy: string;
  knobs: Knobs;
  cpuThreads: number;
  deviceBytes: number; // the whole run's device tier, as planned under the budget
}

export type Limiter = 'copy' | 'cpu' | 'device';

export interface StepCost {
  msPerStep: number;
  /** Per layer, all sequences of the batch together. */
  layer: { copyMs: number; cpuMs: number; deviceMs: number; attentionMs: number; serialMs: number };
  stepOverheadMs: number;
  limiter: Limiter; // which of the three sets the layer's attention time
  missesPerHead: number; // units fetched per (sequence, layer, KV head) each step
}

/** The policies that attend every token exactly (the others trade quality for speed or memory). */
export const LOSSLESS = new Set(['dense', 'cpu', 'offload-layer', 'exact']);

/** The measured row for `threads`, or the nearest fewer threads measured (never an optimistic one). */
export function threadRate(c: CostConstants, threads: number): ThreadRate {
  let best = c.cpu[0];
  for (const r of c.cpu) if (r.threads <= threads && r.threads >= best.threads) best = r;
  return best;
}

/** Whether `policy` sends work to the CPU worker pool on this backend, so its thread count matters. */
export function usesCpuPool(policy: string, backend: CostConstants['backend']): boolean {
  if (policy === 'cpu' || policy === 'exact' || policy === 'tiered') return true;
  // The CPU backend has no device attention kernel for whole layers: the engine attends dense's and
  // offload-layer's device-tier KV through the worker pool (forward.ts attendCache).
  return backend === 'cpu' && (policy === 'dense' || policy === 'offload-layer');
}

function lowBitRate(c: CostConstants, bits: number): LowBitRate {
  // A width this machine could not measure (head_dim not a multiple of 8 / bits) never wins.
  return c.lowBit[String(bits) as '1' | '2' | '4'] ?? { scoreTokPerMs: 0, attendTokPerMs: 0 };
}

const residualMs = (r: Residual | undefined, n: number): number => (r ? r.fixedMs + (r.msPerKTokens * Math.min(n, r.upToTokens ?? Infinity)) / 1000 : 0);

const tokensMs = (tokens: number, perMs: number): number => (tokens <= 0 ? 0 : perMs > 0 ? tokens / perMs : Infinity);

/** CPU attention of `bytes` of full-precision KV (and `skippedBytes` walked past) at `threads` threads. */
function cpuMs(c: CostConstants, threads: number, bytes: number, skippedBytes = 0): number {
  if (bytes <= 0 && skippedBytes <= 0) return 0;
  const r = threadRate(c, threads);
  return r.dispatchMs + transferMs(bytes, r.attnGBs) + transferMs(skippedBytes, r.skipGBs);
}

/** Full-precision attention of `bytes` where dense and offload-layer attend: the device, or (cpu backend) the pool. */
function wholeLayerMs(c: CostConstants, threads: number, bytes: number): { cpuMs: number; deviceMs: number } {
  return usesCpuPool('dense', c.backend) ? { cpuMs: cpuMs(c, threads, bytes), deviceMs: 0 } : { cpuMs: 0, deviceMs: transferMs(bytes, c.deviceReadGBs) };
}

/**
 * One decode step with `context` tokens in each of `batch` sequences. Per layer: the copy stream, the CPU
 * workers and the device run at once, so attention takes the slowest of them; the dense graphs before and
 * after attention run alone. The step is the layers' sum plus a fixed overhead.
 */
export function stepCost(s: TuneShape, context: number, batch: number, cand: CostCandidate, c: CostConstants): StepCost {
  const n = context;
  const heads = batch * s.numKvHeads; // (sequence, KV head) pairs of one layer
  const u = unitBytes(s.headDim);
  const k = cand.knobs;
  let copyMs = 0;
  let cpu = 0;
  let device = 0;
  let attentionMs: number;
  let rows = batch;
  let missesPerHead = 0;
  switch (cand.policy) {
    case 'dense':
    case 'cpu': {
      const w = cand.policy === 'cpu' ? { cpuMs: cpuMs(c, cand.cpuThreads, heads * n * u), deviceMs: 0 } : wholeLayerMs(c, cand.cpuThreads, heads * n * u);
      cpu = w.cpuMs;
      device = w.deviceMs;
      attentionMs = Math.max(cpu, device);
      break;
    }
    case 'offload-layer': {
      // HF OffloadedCache: the layer is staged whole, then attended; the two do not overlap.
      copyMs = transferMs(heads * n * u, c.linkGBs);
      const w = wholeLayerMs(c, cand.cpuThreads, heads * n * u);
      cpu = w.cpuMs;
      device = w.deviceMs;
      attentionMs = copyMs + cpu + device;
      break;
    }
    case 'exact':
    case 'tiered':
    case 'specache': {
      // The device-resident exact (CUDA) keeps only sinks and window on the device: no top-k, nothing selected.
      const topK = k.topK ?? 0;
      const hot = Math.min(n, (k.sinks ?? 0) + (k.window ?? 0) + topK);
      const quantized = topK > 0 && k.keyGroupSize ? Math.floor(n / k.keyGroupSize) * k.keyGroupSize : 0;
      const rate = lowBitRate(c, k.bits ?? 0);
      const hotMs = transferMs(heads * hot * u, c.deviceReadGBs);
      const selectMs = tokensMs(heads * quantized, rate.scoreTokPerMs);
      // The newest token enters the recent window each step, so it always misses; of the top-k, missRate does.
      missesPerHead = Math.min(hot, 1 + c.missRate * Math.min(topK, Math.max(0, quantized - (k.sinks ?? 0))));
      copyMs = transferMs(heads * missesPerHead * u, c.gatherGBs);
      if (cand.policy === 'exact') {
        device = selectMs + hotMs;
        cpu = cpuMs(c, cand.cpuThreads, heads * (n - hot) * u);
        // Misses are gathered on demand before the hot set is attended: copy and device work are serial.
        attentionMs = Math.max(copyMs + device, cpu);
      } else if (cand.policy === 'tiered') {
        const k2 = Math.min(k.cpuK ?? 0, Math.max(0, n - hot));
        const tail = Math.max(0, n - hot - k2);
        device = selectMs + hotMs + tokensMs(heads * tail, rate.attendTokPerMs);
        // The workers attend k2 tokens, but walk past the other n - k2 (they are sent as an exclude list).
        cpu = k2 > 0 ? cpuMs(c, cand.cpuThreads, heads * k2 * u, heads * (n - k2) * u) : 0;
        attentionMs = Math.max(copyMs + device, cpu);
      } else {
        // Two rows per sequence: the real token attends the hot set and the low-bit tail; the speculative one
        // does the same, then scores every low-bit key to choose the next hot set, whose misses are fetched
        // while the step goes on.
        rows = 2 * batch;
        device = selectMs + 2 * (hotMs + tokensMs(heads * Math.max(0, n - hot), rate.attendTokPerMs));
        attentionMs = Math.max(copyMs, device);
      }
      break;
    }
    default: {
      // A policy the model has no formula for: everything it keeps is read by the device once per step.
      device = transferMs(cand.deviceBytes / s.numLayers, c.deviceReadGBs);
      attentionMs = device;
    }
  }
  const serialMs = c.denseLayerMs + (rows - 1) * c.denseRowMs + heads * residualMs(c.residual[cand.policy], n);
  let limiter: Limiter = 'device';
  if (cpu > device && cpu >= copyMs) limiter = 'cpu';
  else if (copyMs > device && copyMs > cpu) limiter = 'copy';
  return {
    msPerStep: s.numLayers * (attentionMs + serialMs) + c.stepOverheadMs,
    layer: { copyMs, cpuMs: cpu, deviceMs: device, attentionMs, serialMs },
    stepOverheadMs: c.stepOverheadMs,
    limiter,
    missesPerHead,
  };
}
