// sparq (SparQ Attention, Ribar et al. 2024): per decode step and KV head, the query's top-r channels score every
// key approximately (only those key columns are read from the host cache), the top-k positions are fetched into
// hot-set slots and attended exactly, and the output is interpolated with the running mean of the values by the
// approximate mass alpha the top-k covers. The mean lives in the device tier, one row per (layer, KV head).
import { performance } from 'node:perf_hooks';
import { z } from 'zod';
import type { HostDeviceTier, TierBuffer } from '../device/device-tier.js';
import type { TierPart } from '../device/tier-allocator.js';
import type { DecodeAttention, LayerCall } from '../engine/decode-attention.js';
import { HotSet } from '../engine/hot-set.js';
import type { Knobs, PolicySpec, SeqShape } from '../engine/policies.js';
import { KvoffArgumentError } from '../errors.js';
import { native } from '../native.js';
import { halvingsTo, largestFitting, tierBytes } from './budget-fit.js';
import { approximateSoftmax, foldMean, interpolate, topComponents, topPositions } from './sparq-select.js';

export interface SparqKnobs {
  r: number; // query channels that score the keys
  k: number; // positions attended exactly, per KV head
}

export const SPARQ_DEFAULT_K = 64;
/**
 * SparQ's r = d/4 (a quarter of the key bytes read to score), but at least 16 channels (all of a smaller head):
 * on small heads d/4 channels rank the keys too poorly (the demo model's d = 32: 8 channels lost most tokens).
 */
export const sparqDefaultR = (headDim: number): number => Math.min(headDim, Math.max(16, Math.floor(headDim / 4)));

export function sparqDeviceParts(s: SeqShape, k: Pick<SparqKnobs, 'k'>): TierPart[] {
  return [
    { tag: 'hot', bytes: HotSet.bytesFor({ ...s, capacity: Math.max(1, Math.min(k.k, s.capacityTokens)) }) },
    { tag: 'value-mean', bytes: s.numLayers * s.numKvHeads * s.headDim * 4 },
  ];
}

function resolve(s: SeqShape, k: Knobs): SparqKnobs {
  const r = k.r ?? sparqDefaultR(s.headDim);
  if (r > s.headDim) throw new KvoffArgumentError('engine options.r', `at most headDim (${s.headDim})`, r);
  return { r, k: k.k ?? SPARQ_DEFAULT_K };
}

export class SparqAttention implements DecodeAttention {
  readonly #k: SparqKnobs;
  readonly #s: SeqShape;
  readonly #tier: HostDeviceTier;
  readonly #hot: HotSet;
  readonly #mean: TierBuffer; // [numLayers, numKvHeads, headDim] of f32: the running mean of the values

  constructor(tier: HostDeviceTier, s: SeqShape, k: SparqKnobs) {
    this.#k = k;
    this.#s = s;
    this.#tier = tier;
    this.#hot = new HotSet(tier, { ...s, capacity: Math.max(1, Math.min(k.k, s.capacityTokens)) });
    this.#mean = tier.allocate(sparqDeviceParts(s, k)[1].bytes, 'value-mean');
  }

  #meanRef(layer: number): { handle: number; offset: number; bytes: number } {
    const bytes = this.#s.numKvHeads * this.#s.headDim * 4;
    return { handle: this.#mean.ref.handle, offset: this.#mean.ref.offset + layer * bytes, bytes };
  }

  /** Tokens [start, start + T) join the running mean of the values (v: [T, numKvHeads, headDim]). */
  onWrite(layer: number, start: number, _k: Float32Array, v: Float32Array): void {
    const { numKvHeads: H, headDim: D } = this.#s;
    const T = v.length / (H * D);
    const ref = this.#meanRef(layer);
    const raw = native().arenaRead(ref);
    const stored = new Float32Array(raw.buffer, raw.byteOffset, H * D); // [H, D]
    for (let h = 0; h < H; h++) {
      const mean = Float64Array.from(stored.subarray(h * D, (h + 1) * D));
      if (start === 0) mean.fill(0); // the tier's bytes are not zeroed
      foldMean(mean, start, v, h * D, H * D, T);
      stored.set(mean, h * D);
    }
    native().arenaWrite({ handle: ref.handle, offset: ref.offset, data: raw });
  }

  /** q, out [numKvHeads, G, headDim]; lse [numKvHeads, G] (of the top-k part, minus log alpha). */
  async attend(call: LayerCall, q: Float32Array, out: Float32Array, lse: Float32Array): Promise<void> {
    const { layer, cache, seq, groupSize: G, scale, stats } = call;
    const { numKvHeads: H, headDim: D } = this.#s;
    const t0 = performance.now();
    const n = cache.store.numTokens(seq);
    const src = { region: cache.region(layer), blockIds: cache.store.blockIds(seq) };
    const rawMean = native().arenaRead(this.#meanRef(layer));
    const means = new Float32Array(rawMean.buffer, rawMean.byteOffset, H * D); // [H, D]
    const raw = new Float32Array(G * n); // [G, n] partial q.k
    for (let h = 0; h < H; h++) {
      const qh = q.subarray(h * G * D, (h + 1) * G * D);
      const o = out.subarray(h * G * D, (h + 1) * G * D);
      const l = lse.subarray(h * G, (h + 1) * G);
      const cols = topComponents(qh, G, D, this.#k.r);
      native().kvColumnScores({ ...src.region, blockIds: src.blockIds, numTokens: n, kvHead: h, rows: G, q: qh, columns: cols, out: raw });
      stats.bytesH2D += cols.length * n * 2; // the r key columns cross the link, 16-bit each
      const { positions, alpha } = topPositions(approximateSoftmax(raw, qh, G, D, cols, scale), G, this.#k.k);
      const { slots, hits, misses } = this.#hot.update(layer, h, positions, src);
      stats.hotHits += hits;
      stats.hotMisses += misses;
      stats.bytesH2D += misses * 2 * D * 2;
      native().kvAttend({ ...this.#hot.region(layer, h), blockIds: slots, numTokens: slots.length, kvHeads: Int32Array.of(0), groupSize: G, scale, q: qh, out: o, lse: l });
      interpolate(o, l, alpha, means.subarray(h * D, (h + 1) * D));
    }
    stats.deviceMs += performance.now() - t0;
  }

  async settle(): Promise<void> {}

  dispose(): void {
    if (this.#tier.live) this.#tier.free(this.#mean.offset);
  }
}

export const sparqPolicy: PolicySpec = {
  name: 'sparq', kvHome: 'host', stagesLayer: false, speculative: false,
  knobs: z.object({
    r: z.number().int().min(1).max(1024),
    k: z.number().int().min(1).max(1 << 24),
  }).partial().strict(),
  /** r from the head size; k, when not given, as large as the bytes allow (every token at most). */
  fit(s, bytes, given) {
    const r = resolve(s, given).r;
    if (given.k !== undefined || !Number.isFinite(bytes)) return { ...given, r, k: given.k ?? SPARQ_DEFAULT_K };
    const k = largestFitting(1, Math.max(1, s.capacityTokens), (x) => tierBytes(sparqDeviceParts(s, { k: x })) <= bytes);
    return k === null ? null : { r, k };
  },
  candidates: (given) => (given.k !== undefined ? [{ ...given }] : halvingsTo(SPARQ_DEFAULT_K, 1).map((k) => ({ ...given, k }))),
  seqParts: (s, k) => sparqDeviceParts(s, resolve(s, k)),
  openSeq: (tier, s, k) => new SparqAttention(tier, s, resolve(s, k)),
};
