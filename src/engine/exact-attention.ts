// The `exact` policy's decode attention: per KV head, the hot set (sinks, recent window, top-k by low-bit
// score) is attended in the device tier while the CPU workers attend everything else; LSE merges the two.
// The two parts are disjoint and cover every token, so the result is exact whatever the selection.
import { performance } from 'node:perf_hooks';
import type { CpuAttentionPool } from '../cpu-attention.js';
import type { HostDeviceTier } from '../device/device-tier.js';
import { LowBitTier } from '../device/low-bit-tier.js';
import type { HostKvCache } from '../kv/host-cache.js';
import { native } from '../native.js';
import { HotSet } from './hot-set.js';
import type { EngineStats } from './stats.js';

export interface ExactKnobs {
  topK: number; // hot tokens chosen by low-bit score, per KV head
  sinks: number;
  window: number; // recent tokens, always hot; covers the keys not yet quantized
  bits: 1 | 2 | 4; // of the low-bit keys used for scoring
  keyGroupSize: 32 | 64;
}

export const EXACT_DEFAULTS: ExactKnobs = { topK: 64, sinks: 4, window: 64, bits: 2, keyGroupSize: 32 };

interface Shape {
  numLayers: number;
  numKvHeads: number;
  headDim: number;
  dtype: 'f16' | 'bf16';
  capacityTokens: number;
}

export function exactDeviceParts(s: Shape, k: ExactKnobs, alignment?: number) {
  const lowBit = LowBitTier.bytesFor({ ...s, bits: k.bits, keyGroupSize: k.keyGroupSize, valueGroupSize: s.headDim, alignment });
  const hot = HotSet.bytesFor({ ...s, capacity: k.sinks + k.topK + k.window });
  return [{ tag: 'low-bit', bytes: lowBit }, { tag: 'hot', bytes: hot }];
}

export class ExactAttention {
  readonly #k: ExactKnobs;
  readonly #lowBit: LowBitTier;
  readonly #hot: HotSet;
  readonly #pending: Float32Array[]; // [numLayers] keys of the incomplete group: [keyGroupSize, numKvHeads, headDim]
  readonly #shape: Shape;

  constructor(tier: HostDeviceTier, shape: Shape, knobs: ExactKnobs) {
    this.#k = knobs;
    this.#shape = shape;
    this.#lowBit = new LowBitTier({ tier, ...shape, bits: knobs.bits, keyGroupSize: knobs.keyGroupSize, valueGroupSize: shape.headDim });
    this.#hot = new HotSet(tier, { ...shape, capacity: knobs.sinks + knobs.topK + knobs.window });
    this.#pending = Array.from({ length: shape.numLayers }, () => new Float32Array(knobs.keyGroupSize * shape.numKvHeads * shape.headDim));
  }

  /** Feeds the keys of tokens [start, start + T) (k: [T, numKvHeads, headDim]); complete groups get quantized. */
  onWrite(layer: number, start: number, k: Float32Array): void {
    const row = this.#shape.numKvHeads * this.#shape.headDim;
    const KG = this.#k.keyGroupSize;
    const pending = this.#pending[layer];
    const T = k.length / row;
    for (let t = 0; t < T; t++) {
      const pos = start + t;
      pending.set(k.subarray(t * row, (t + 1) * row), (pos % KG) * row);
      if (pos % KG === KG - 1) this.#lowBit.appendKeyGroup(layer, pending, Math.floor(pos / KG));
    }
  }

  /** Decode attention of one token: q, out [numKvHeads, G, headDim]; lse [numKvHeads, G]. */
  async attend(
    layer: number, cache: HostKvCache, seq: number, pool: CpuAttentionPool, G: number, scale: number,
    q: Float32Array, out: Float32Array, lse: Float32Array, stats: EngineStats, signal?: AbortSignal,
  ): Promise<void> {
    const { numKvHeads: H, headDim: D } = this.#shape;
    const n = cache.store.numTokens(seq);
    const src = { region: cache.region(layer), blockIds: cache.store.blockIds(seq) };
    const hot = Array.from({ length: H }, (_, h) => this.#select(layer, h, n, q.subarray(h * G * D, (h + 1) * G * D)));
    // CPU part first, so the workers run while the device part (here: the main thread) does its share.
    const oCpu = new Float32Array(H * G * D);
    const lCpu = new Float32Array(H * G);
    const t0 = performance.now();
    const cpu = Promise.all(hot.map((exclude, h) => pool.attend(
      { ...src, numTokens: n, kvHeads: Int32Array.of(h), groupSize: G, q: q.subarray(h * G * D, (h + 1) * G * D), scale, exclude,
        out: oCpu.subarray(h * G * D, (h + 1) * G * D), lse: lCpu.subarray(h * G, (h + 1) * G) },
      { signal },
    )));
    const d0 = performance.now();
    for (let h = 0; h < H; h++) {
      const { slots, hits, misses } = this.#hot.update(layer, h, hot[h], src);
      stats.hotHits += hits;
      stats.hotMisses += misses;
      stats.bytesH2D += misses * 2 * D * 2;
      native().kvAttend({
        ...this.#hot.region(layer, h), blockIds: slots, numTokens: slots.length, kvHeads: Int32Array.of(0), groupSize: G, scale,
        q: q.subarray(h * G * D, (h + 1) * G * D), out: out.subarray(h * G * D, (h + 1) * G * D), lse: lse.subarray(h * G, (h + 1) * G),
      });
    }
    stats.deviceMs += performance.now() - d0;
    await cpu;
    stats.cpuAttnMs += performance.now() - t0;
    native().lseMerge({ rows: H * G, headDim: D, oA: out, lseA: lse, oB: oCpu, lseB: lCpu, out, lseOut: lse });
  }

  /** Sorted hot positions of one head: sinks, the recent window, and the top-k of the quantized rest. */
  #select(layer: number, head: number, n: number, q: Float32Array): Int32Array {
    const { sinks, window, topK } = this.#k;
    const want = new Set<number>();
    for (let p = 0; p < Math.min(sinks, n); p++) want.add(p);
    for (let p = Math.max(0, n - window); p < n; p++) want.add(p);
    const quantized = Math.min(this.#lowBit.quantizedTokens(layer), n);
    const k = Math.min(topK, quantized);
    if (k > 0) {
      const scores = new Float32Array(this.#lowBit.quantizedTokens(layer));
      this.#lowBit.score(layer, head, q, scores);
      const top = new Int32Array(k);
      native().topK({ rows: 1, n: quantized, k, scores: scores.subarray(0, quantized), out: top });
      for (const p of top) want.add(p);
    }
    return Int32Array.from(want).sort();
  }

  dispose(): void {
    this.#lowBit.dispose();
  }
}
