// The engine's device-resident run (CUDA backend, one sequence or a batch): prefill and every decode step on the GPU through
// ResidentDecoder, with the policy's KV where the design puts it (dense: all on the device; specache: low-bit copy
// and hot set on the device, full precision in pinned host memory; tiered: specache's device part selected by the
// step's own query, plus the next cpuK tokens attended by the CPU workers; exact and cpu: host KV attended by the
// CPU workers, sinks and window on the device for exact; infinigen: keys-only low-bit copy and hot set on the device, each
// layer's top-k speculated and fetched while the layer before it computes). Only token ids go down and logits come back per step.
import type { CpuAttentionPool } from '../cpu-attention.js';
import { CudaDenseLayers } from '../cuda/cuda-dense-layers.js';
import type { DeviceArena } from '../cuda/device-arena.js';
import {
  DenseResident, ExactResident, SpecacheResident, denseKvBytes, exactDeviceBytes, specacheDeviceBytes,
  type HostKv, type ResidentAttention, type SpecacheKnobs,
} from '../cuda/resident-attention.js';
import { ResidentDecoder } from '../cuda/resident-decoder.js';
import { INFINIGEN_KEY_GROUP, InfinigenResident, infinigenDeviceBytes, type InfinigenResidentKnobs } from '../cuda/infinigen-resident.js';
import { KvoffCapacityError } from '../errors.js';
import { HostKvCache, type HostKvShape } from '../kv/host-cache.js';
import type { Model } from '../model/model.js';
import type { ModelConfig } from '../model/types.js';
import { native } from '../native.js';
import { formatBytes } from '../units.js';
import type { PolicyName } from './options.js';
import type { Knobs, PolicySpec } from './policies.js';

/** Policies whose whole step runs on the device; the others keep the engine's host-side path on CUDA too. */
export const RESIDENT_POLICIES: readonly PolicyName[] = ['dense', 'specache', 'tiered', 'exact', 'cpu', 'infinigen'];

export interface ResidentRunRequest {
  model: Model;
  spec: PolicySpec;
  given: Knobs; // the knobs the user set
  budget: number; // device KV bytes; Infinity when uncapped
  shape: HostKvShape; // the run's host cache (numBlocks covers every sequence's capacity, in whole blocks)
  capacities: readonly number[]; // tokens each sequence may reach (prompt + new tokens): one per sequence
  promptTokens: number; // the shortest prompt
  pool: CpuAttentionPool;
}

/** A knob setting and what it costs on the device, or why the resident step cannot take it. */
interface Candidate {
  knobs: Knobs;
  bytes: (capacity: number, seq: number, batch: number) => number; // of sequence seq of a batch
  /** Sequence `seq` of `batch`: the policies that run a batch's layer at once size the leader's (seq 0's) buffers by it. */
  build: (capacity: number, host: HostKv | null, stream: number, copyStream: number, weights: DeviceArena, seq: number, batch: number) => ResidentAttention;
}

/**
 * The resident exact's one setting: it keeps only sinks and window on the device and the CPU workers attend the
 * rest, so the low-bit knobs (topK, bits, keyGroupSize) have nothing to size. (tune plans it from this too.)
 */
export function residentExactHot(spec: PolicySpec, given: Knobs): { sinks: number; window: number } {
  const k = spec.candidates(given)[0];
  return { sinks: k.sinks, window: k.window };
}

/**
 * For the policies whose batch shares its first sequence's buffers: sequence 0 is made with the batch size (the
 * leader), every later one with { leader }. Sequences are built in order.
 */
function joining<T>(): (seq: number, batch: number, make: (seqs: number | { leader: T }) => T) => T {
  let leader: T | null = null;
  return (seq, batch, make) => {
    const x = make(seq === 0 ? batch : { leader: leader! });
    if (seq === 0) leader = x;
    return x;
  };
}

function candidates(r: ResidentRunRequest): Candidate[] {
  const c = r.model.config;
  const s = (capacity: number, stream: number) => ({ config: c, capacity, dtype: r.shape.dtype, stream });
  switch (r.spec.name) {
    case 'dense': {
      // The leader holds the batch's KV, each sequence's sized for the longest (one launch a kernel covers them all).
      const longest = Math.max(...r.capacities);
      const join = joining<DenseResident>();
      return [{
        knobs: {}, bytes: () => denseKvBytes(c, longest),
        build: (_cap, _h, stream, _copy, _w, seq, batch) => join(seq, batch, (seqs) => new DenseResident(s(longest, stream), seqs)),
      }];
    }
    case 'cpu':
      return [{ knobs: {}, bytes: () => exactDeviceBytes(c, { sinks: 0, window: 0 }), build: (cap, h, stream) => new ExactResident(s(cap, stream), { sinks: 0, window: 0 }, h!, r.pool) }];
    case 'exact': {
      const hot = residentExactHot(r.spec, r.given);
      return [{ knobs: hot, bytes: () => exactDeviceBytes(c, hot), build: (cap, h, stream) => new ExactResident(s(cap, stream), hot, h!, r.pool) }];
    }
    case 'specache':
    case 'tiered':
      return r.spec.candidates(r.given).flatMap((k) => {
        const cpuK = r.spec.name === 'tiered' ? k.cpuK : 0;
        const knobs: SpecacheKnobs = { topK: k.topK, sinks: k.sinks, window: k.window, bits: k.bits as 1 | 2 | 4, keyGroupSize: k.keyGroupSize as 32 | 64, cpuK };
        // The device kernels need a window of whole key groups and a context the top-k can pick from.
        // (tiered with cpuK 0 would be specache without its speculative row, and the device top-k ranks at most 4096:
        // the host-side path runs those.)
        if (knobs.window % knobs.keyGroupSize !== 0 || r.promptTokens < knobs.sinks + knobs.window + knobs.topK || (r.spec.name === 'tiered' && (cpuK === 0 || knobs.topK + cpuK > 4096))) return [];
        const { cpuK: _, ...common } = knobs;
        return [{
          knobs: r.spec.name === 'tiered' ? { ...knobs } : common, bytes: (cap) => specacheDeviceBytes(c, cap, knobs),
          build: (cap, h, stream, copy) => new SpecacheResident(s(cap, stream), knobs, h!, copy, cpuK > 0 ? r.pool : null),
        }];
      });
    case 'infinigen':
      // The device step ranks from a window of whole key groups, with at least one token between sinks and window.
      // Left to the budget, the key bits go first (partialRatio 1/4 -> 1/8 -> 1/16: 4 -> 2 -> 1 bits), then the top-k.
      return byTopKThenBits(r.spec, r.given).flatMap((k) => {
        const knobs: InfinigenResidentKnobs = { topK: k.topK, partialRatio: k.partialRatio, window: k.window, sinks: k.sinks };
        if (knobs.window < INFINIGEN_KEY_GROUP || knobs.window % INFINIGEN_KEY_GROUP !== 0 || r.promptTokens < knobs.sinks + knobs.window + 1) return [];
        // As dense's: the batch's leader holds every sequence's buffers, each sized for the longest.
        const longest = Math.max(...r.capacities);
        const join = joining<InfinigenResident>();
        return [{
          knobs: { ...knobs }, bytes: (_cap, seq, batch) => (seq === 0 ? infinigenDeviceBytes(c, longest, knobs, batch) : 0),
          build: (_cap, h, stream, copy, weights, seq, batch) => join(seq, batch, (seqs) => new InfinigenResident(s(longest, stream), knobs, h!, copy, weights, seqs)),
        }];
      });
    default:
      return [];
  }
}

/**
 * infinigen's settings in the order the budget tries them: at each top-k (the policy's halvings), 4, 2 then 1 key
 * bits (partialRatio 1/4, 1/8, 1/16) unless the user set partialRatio.
 */
export function byTopKThenBits(spec: PolicySpec, given: Knobs): Knobs[] {
  const ratios = given.partialRatio !== undefined ? [given.partialRatio] : [0.25, 0.125, 0.0625];
  const lists = ratios.map((partialRatio) => spec.candidates({ ...given, partialRatio }));
  return lists[0].flatMap((_, i) => lists.map((l) => l[i]));
}

/** PCIe bytes of one decode step each way (counted, not timed): fetched hot rows, q down and (o, lse) up per layer. */
function stepBytesOf(c: ModelConfig, attention: ResidentAttention, k: Knobs): { h2d: number; d2h: number } {
  const rowBytes = 4 * c.headDim; // K and V of one token-head, 16-bit
  const heads = c.numHeads * c.headDim * 4; // q, or o: [nH, D] f32
  let h2d = 0;
  let d2h = 0;
  if (attention instanceof InfinigenResident) {
    h2d += c.numKvHeads * k.topK * rowBytes;
  } else if (attention instanceof SpecacheResident) {
    h2d += c.numKvHeads * k.topK * rowBytes;
    if ((k.cpuK ?? 0) > 0) {
      d2h += heads + c.numKvHeads * (k.topK + k.cpuK) * 4; // q and the picks
      h2d += heads + c.numHeads * 4; // o and lse
    }
  } else if (attention instanceof ExactResident) {
    d2h += heads;
    h2d += heads + (attention.hotCap > 0 ? c.numHeads * 4 : 0); // cpu merges nothing: no lse
  }
  return { h2d: h2d * c.numLayers, d2h: d2h * c.numLayers };
}

export class ResidentRun {
  readonly decoder: ResidentDecoder;
  readonly stepBytes: { h2d: number; d2h: number }; // PCIe bytes of one sequence's decode step (stepBytesOf)
  readonly #cache: HostKvCache | null;
  readonly #streams: number[];
  #live = true;

  private constructor(
    readonly knobs: Knobs,
    cache: HostKvCache | null,
    decoder: ResidentDecoder,
    streams: number[],
  ) {
    this.#cache = cache;
    this.decoder = decoder;
    this.#streams = streams;
    this.stepBytes = stepBytesOf(decoder.config, decoder.attention, knobs);
  }

  /**
   * The resident run for this request (one sequence or a batch), or null when the device step does not cover it
   * (another backend or policy, or knobs its kernels refuse): the engine then takes its host-side path. The batch
   * shares the budget: a budget too small for every sequence fails here, as the host-side plan would, naming the
   * smallest that works.
   */
  static open(r: ResidentRunRequest): ResidentRun | null {
    if (r.model.backend !== 'cuda' || !(r.model.dense instanceof CudaDenseLayers) || !RESIDENT_POLICIES.includes(r.spec.name)) return null;
    const list = candidates(r);
    if (list.length === 0) return null;
    const bytes = (k: Candidate) => r.capacities.reduce((sum, cap, seq) => sum + k.bytes(cap, seq, r.capacities.length), 0);
    const chosen = list.find((k) => bytes(k) <= r.budget);
    if (!chosen) {
      const needed = Math.min(...list.map(bytes));
      const tokens = r.capacities.length === 1 ? `${r.capacities[0]} tokens` : `${r.capacities.length} sequences of ${r.capacities.join(', ')} tokens`;
      throw new KvoffCapacityError('bytes of KV device tier', needed, r.budget,
        `policy ${r.spec.name} needs at least ${needed} bytes (${formatBytes(needed)}) on the device for ${tokens}; given ${r.budget} bytes (${formatBytes(r.budget)})`);
    }
    // Each sequence owns a run of whole blocks, in order; the device and the CPU workers read them through its table.
    let first = 0;
    const blockIds = r.capacities.map((cap) => {
      const blocks = Math.ceil(cap / r.shape.blockSize);
      first += blocks;
      return Int32Array.from({ length: blocks }, (_, i) => first - blocks + i);
    });
    if (first > r.shape.numBlocks) throw new Error(`resident run: ${first} blocks needed, the host cache has ${r.shape.numBlocks}`);
    const streams = [native().cudaStreamCreate({ highPriority: true }), native().cudaStreamCreate()];
    let cache: HostKvCache | null = null;
    const attentions: ResidentAttention[] = [];
    try {
      cache = r.spec.kvHome === 'host' ? new HostKvCache(r.shape, { pin: true }) : null;
      for (const [seq, cap] of r.capacities.entries()) {
        const host: HostKv | null = cache && { region: (l) => cache!.region(l), blockIds: blockIds[seq] };
        attentions.push(chosen.build(cap, host, streams[0], streams[1], r.model.dense.weights, seq, r.capacities.length));
      }
      const decoder = new ResidentDecoder(r.model.config, r.model.dense.weights, attentions, streams[0]);
      return new ResidentRun(chosen.knobs, cache, decoder, streams);
    } catch (err) {
      for (const a of attentions) a.dispose();
      cache?.dispose();
      for (const s of streams) native().cudaStreamDestroy({ stream: s });
      throw err;
    }
  }

  /** The first sequence's attention; every sequence's has the same policy and knobs. */
  get attention(): ResidentAttention {
    return this.decoder.attention;
  }

  get deviceBytes(): number {
    return this.decoder.attentions.reduce((sum, a) => sum + a.deviceBytes, 0);
  }

  /**
   * Whether decoding should run a step ahead: only when the whole step is on the device (dense, specache, infinigen).
   * With a CPU part (exact, cpu, tiered) each layer waits for the host anyway, and running ahead measured slower
   * (exact 126 -> 174 ms a step, tiered 50 -> 67 ms at 32k on the H100).
   */
  get runsAhead(): boolean {
    return !this.attention.waitsForHost;
  }

  get hostBytes(): number {
    return this.#cache?.bytes ?? 0;
  }

  /**
   * Waits for the device, then frees the run's device and host memory and its streams. Resolves with the copy time
   * of the prefetches (specache, tiered, infinigen) and the part of it the steps waited for (ms; zeros for the others).
   */
  async close(): Promise<{ copyMs: number; stallMs: number }> {
    if (!this.#live) return { copyMs: 0, stallMs: 0 };
    this.#live = false;
    await this.decoder.idle(); // a step enqueued ahead (or still waiting on exact's CPU part) finishes launching first
    let synced = true;
    for (const s of this.#streams) await native().cudaStreamSynchronize({ stream: s }).catch(() => (synced = false));
    // Timing events can be read only once complete: after a failed step they are only freed (by dispose).
    const copy = { copyMs: 0, stallMs: 0 };
    for (const a of this.decoder.attentions) {
      const t = synced ? a.drainCopyMs?.() : undefined;
      copy.copyMs += t?.copyMs ?? 0;
      copy.stallMs += t?.stallMs ?? 0;
    }
    this.decoder.dispose();
    for (const a of this.decoder.attentions) a.dispose();
    this.#cache?.dispose();
    for (const s of this.#streams) native().cudaStreamDestroy({ stream: s });
    return copy;
  }
}
