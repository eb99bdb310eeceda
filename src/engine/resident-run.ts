// The engine's device-resident run (CUDA backend, one sequence): prefill and every decode step on the GPU through
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
  shape: HostKvShape; // the run's host cache (numBlocks covers capacity)
  capacity: number; // tokens the sequence may reach (prompt + new tokens)
  promptTokens: number;
  pool: CpuAttentionPool;
}

/** A knob setting and what it costs on the device, or why the resident step cannot take it. */
interface Candidate {
  knobs: Knobs;
  bytes: number;
  build: (host: HostKv | null, stream: number, copyStream: number, weights: DeviceArena) => ResidentAttention;
}

/**
 * The resident exact's one setting: it keeps only sinks and window on the device and the CPU workers attend the
 * rest, so the low-bit knobs (topK, bits, keyGroupSize) have nothing to size. (tune plans it from this too.)
 */
export function residentExactHot(spec: PolicySpec, given: Knobs): { sinks: number; window: number } {
  const k = spec.candidates(given)[0];
  return { sinks: k.sinks, window: k.window };
}

function candidates(r: ResidentRunRequest): Candidate[] {
  const c = r.model.config;
  const s = (stream: number) => ({ config: c, capacity: r.capacity, dtype: r.shape.dtype, stream });
  switch (r.spec.name) {
    case 'dense':
      return [{ knobs: {}, bytes: denseKvBytes(c, r.capacity), build: (_h, stream) => new DenseResident(s(stream)) }];
    case 'cpu':
      return [{ knobs: {}, bytes: exactDeviceBytes(c, { sinks: 0, window: 0 }), build: (h, stream) => new ExactResident(s(stream), { sinks: 0, window: 0 }, h!, r.pool) }];
    case 'exact': {
      const hot = residentExactHot(r.spec, r.given);
      return [{ knobs: hot, bytes: exactDeviceBytes(c, hot), build: (h, stream) => new ExactResident(s(stream), hot, h!, r.pool) }];
    }
    case 'specache':
    case 'tiered':
      // Left to the budget, the key bits go first (partialRatio 1/4 -> 1/8 -> 1/16: 4 -> 2 -> 1 bits), then the top-k.
      return (r.given.partialRatio !== undefined ? [r.given.partialRatio] : [0.25, 0.125, 0.0625]).flatMap((partialRatio) => r.spec.candidates({ ...r.given, partialRatio })).flatMap((k) => {
        const cpuK = r.spec.name === 'tiered' ? k.cpuK : 0;
        const knobs: SpecacheKnobs = { topK: k.topK, sinks: k.sinks, window: k.window, bits: k.bits as 1 | 2 | 4, keyGroupSize: k.keyGroupSize as 32 | 64, cpuK };
        // The device kernels need a window of whole key groups and a context the top-k can pick from.
        // (tiered with cpuK 0 would be specache without its speculative row, and the device top-k ranks at most 4096:
        // the host-side path runs those.)
        if (knobs.window % knobs.keyGroupSize !== 0 || r.promptTokens < knobs.sinks + knobs.window + knobs.topK || (r.spec.name === 'tiered' && (cpuK === 0 || knobs.topK + cpuK > 4096))) return [];
        const { cpuK: _, ...common } = knobs;
        return [{
          knobs: r.spec.name === 'tiered' ? { ...knobs } : common, bytes: specacheDeviceBytes(c, r.capacity, knobs),
          build: (h, stream, copy) => new SpecacheResident(s(stream), knobs, h!, copy, cpuK > 0 ? r.pool : null),
        }];
      });
    case 'infinigen':
      // The device step ranks from a window of whole key groups, with at least one token between sinks and window.
      // Left to the budget, the key bits go first (partialRatio 1/4 -> 1/8 -> 1/16: 4 -> 2 -> 1 bits), then the top-k.
      return (r.given.partialRatio !== undefined ? [r.given.partialRatio] : [0.25, 0.125, 0.0625]).flatMap((partialRatio) => r.spec.candidates({ ...r.given, partialRatio })).flatMap((k) => {
        const knobs: InfinigenResidentKnobs = { topK: k.topK, partialRatio: k.partialRatio, window: k.window, sinks: k.sinks };
        if (knobs.window < INFINIGEN_KEY_GROUP || knobs.window % INFINIGEN_KEY_GROUP !== 0 || r.promptTokens < knobs.sinks + knobs.window + 1) return [];
        return [{
          knobs: { ...knobs }, bytes: infinigenDeviceBytes(c, r.capacity, knobs),
          build: (h, stream, copy, weights) => new InfinigenResident(s(stream), knobs, h!, copy, weights),
        }];
      });
    default:
      return [];
  }
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
  readonly stepBytes: { h2d: number; d2h: number }; // PCIe bytes of one decode step (stepBytesOf)
  readonly #cache: HostKvCache | null;
  readonly #streams: number[];
  #live = true;

  private constructor(
    readonly knobs: Knobs,
    readonly attention: ResidentAttention,
    cache: HostKvCache | null,
    decoder: ResidentDecoder,
    streams: number[],
  ) {
    this.#cache = cache;
    this.decoder = decoder;
    this.#streams = streams;
    this.stepBytes = stepBytesOf(decoder.config, attention, knobs);
  }

  /**
   * The resident run for this request, or null when the device step does not cover it (another backend or policy,
   * or knobs its kernels refuse): the engine then takes its host-side path. A budget too small fails here, as the
   * host-side plan would, naming the smallest that works.
   */
  static open(r: ResidentRunRequest): ResidentRun | null {
    if (r.model.backend !== 'cuda' || !(r.model.dense instanceof CudaDenseLayers) || !RESIDENT_POLICIES.includes(r.spec.name)) return null;
    const list = candidates(r);
    if (list.length === 0) return null;
    const chosen = list.find((k) => k.bytes <= r.budget);
    if (!chosen) {
      const needed = Math.min(...list.map((k) => k.bytes));
      throw new KvoffCapacityError('bytes of KV device tier', needed, r.budget,
        `policy ${r.spec.name} needs at least ${needed} bytes (${formatBytes(needed)}) on the device for ${r.capacity} tokens; given ${r.budget} bytes (${formatBytes(r.budget)})`);
    }
    const streams = [native().cudaStreamCreate({ highPriority: true }), native().cudaStreamCreate()];
    let cache: HostKvCache | null = null;
    let attention: ResidentAttention | null = null;
    try {
      // One sequence owns every block, in order; the device and the CPU workers read them through this table.
      cache = r.spec.kvHome === 'host' ? new HostKvCache(r.shape, { pin: true }) : null;
      const host: HostKv | null = cache && { region: (l) => cache!.region(l), blockIds: Int32Array.from({ length: r.shape.numBlocks }, (_, i) => i) };
      attention = chosen.build(host, streams[0], streams[1], r.model.dense.weights);
      const decoder = new ResidentDecoder(r.model.config, r.model.dense.weights, attention, streams[0]);
      return new ResidentRun(chosen.knobs, attention, cache, decoder, streams);
    } catch (err) {
      attention?.dispose();
      cache?.dispose();
      for (const s of streams) native().cudaStreamDestroy({ stream: s });
      throw err;
    }
  }

  get deviceBytes(): number {
    return this.attention.deviceBytes;
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
   * One step for the token at pos, and the speculative guess at pos + 1 when the policy wants one: the device's
   * choice per row (ids [rows]) and the logits [rows, vocab].
   */
  step(token: number, guess: number | null, pos: number): Promise<{ ids: Int32Array; logits: Float32Array }> {
    return this.decoder.stepWithLogits(guess === null ? Int32Array.of(token) : Int32Array.of(token, guess), pos, guess === null ? 1 : 2);
  }

  /**
   * Waits for the device, then frees the run's device and host memory and its streams. Resolves with the copy time
   * of specache's prefetches and the part of it the steps waited for (ms; zeros for the other policies).
   */
  async close(): Promise<{ copyMs: number; stallMs: number }> {
    if (!this.#live) return { copyMs: 0, stallMs: 0 };
    this.#live = false;
    await this.decoder.idle(); // a step enqueued ahead (or still waiting on exact's CPU part) finishes launching first
    let synced = true;
    for (const s of this.#streams) await native().cudaStreamSynchronize({ stream: s }).catch(() => (synced = false));
    // Timing events can be read only once complete: after a failed step they are only freed.
    const copy = (synced && this.attention.drainCopyMs?.()) || { copyMs: 0, stallMs: 0 };
    this.decoder.dispose();
    this.attention.dispose();
    this.#cache?.dispose();
    for (const s of this.#streams) native().cudaStreamDestroy({ stream: s });
    return copy;
  }
}
