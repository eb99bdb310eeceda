// InfiniGen's decode attention (Lee et al., OSDI'24): while layer l computes, layer l+1's tokens are speculated
// from layer l's input through partial (skewed, r-column) query weights against a partial key cache in the device
// tier, and fetched into the hot set on the copy thread. Layer l+1 then attends exactly over what was fetched plus
// the arriving token; every other token is dropped for that step, as in InfiniGen.
import { performance } from 'node:perf_hooks';
import type { HostDeviceTier, TierBuffer } from '../device/device-tier.js';
import type { TierPart } from '../device/tier-allocator.js';
import type { DecodeAttention, LayerCall } from '../engine/decode-attention.js';
import { HotSet } from '../engine/hot-set.js';
import type { SeqShape } from '../engine/policies.js';
import { roundThrough, toHalf } from '../kernels/half.js';
import type { HostKvCache } from '../kv/host-cache.js';
import type { Model } from '../model/model.js';
import { positionRange, ropeTables } from '../model/rope.js';
import { native } from '../native.js';
import { ownTokenPart } from '../engine/own-token.js';
import { partialWeights, type PartialWeights } from './infinigen-calibrate.js';
import { matVec, rmsNorm, selectPositions, skewRow, unrotate } from './infinigen-skew.js';

export interface InfinigenKnobs {
  topK: number; // speculated tokens per KV head, besides sinks and window
  partialRatio: number; // share of the head's skewed columns that score: r = ceil(partialRatio * headDim)
  window: number; // recent tokens always attended
  sinks: number; // first tokens always attended
}

export const INFINIGEN_DEFAULTS: InfinigenKnobs = { topK: 64, partialRatio: 0.25, window: 64, sinks: 4 };

/** r, the skewed columns kept of a head of D (the tiny epsilon keeps 0.3 * 30 from rounding up to 10). */
export const partialColumns = (ratio: number, D: number): number => Math.min(D, Math.max(1, Math.ceil(ratio * D - 1e-9)));

/** Hot-set slots per (layer, KV head): sinks, window and top-k of the tokens before the arriving one. */
const hotCapacity = (s: SeqShape, k: InfinigenKnobs): number => Math.max(1, Math.min(k.sinks + k.topK + k.window, s.capacityTokens));

/** Partial keys [L, H, capacity, r] 16-bit, and the hot set [L, H, sinks + topK + window, 2, D]. */
export function infinigenDeviceParts(s: SeqShape, k: InfinigenKnobs): TierPart[] {
  const r = partialColumns(k.partialRatio, s.headDim);
  return [
    { tag: 'partial-keys', bytes: s.numLayers * s.numKvHeads * s.capacityTokens * r * 2 },
    { tag: 'hot', bytes: HotSet.bytesFor({ ...s, capacity: hotCapacity(s, k) }) },
  ];
}

export class InfinigenAttention implements DecodeAttention {
  readonly #s: SeqShape;
  readonly #k: InfinigenKnobs;
  readonly #r: number;
  readonly #tier: HostDeviceTier;
  readonly #keys: TierBuffer; // [numLayers, numKvHeads, capacityTokens, r] 16-bit skewed pre-RoPE key columns
  readonly #hot: HotSet;
  readonly #invFreq: Float32Array;
  readonly #eps: number;
  readonly #ready: Promise<PartialWeights>;
  #w: PartialWeights | null = null; // set once calibration is done
  readonly #filled: Int32Array; // [numLayers] tokens whose partial keys are stored (every head)
  #src: { cache: HostKvCache; seq: number } | null = null; // known from the end of prefill on
  readonly #newK: Float32Array[]; // [numLayers] the arriving token's keys [numKvHeads, headDim], rounded as stored
  readonly #newV: Float32Array[]; // [numLayers] its values
  readonly #inflight: (Promise<number> | null)[]; // [numLayers * numKvHeads] prefetch of the speculated set
  readonly #chosen: (Int32Array | null)[]; // [numLayers * numKvHeads] the speculated positions, sorted
  readonly #deferred: (Float32Array | null)[]; // [numLayers] a speculation input that came before calibration did
  #scores: Float32Array; // [capacityTokens] scratch
  #specMs = 0; // speculation compute not yet booked as device time
  #copyMs = 0; // prefetch time on the copy thread
  #exposedMs = 0; // of which attend waited for
  #booked = 0; // copy time already added to stats.copyMs

  constructor(tier: HostDeviceTier, s: SeqShape, k: InfinigenKnobs, model: Model) {
    this.#s = { ...s };
    this.#k = { ...k };
    this.#r = partialColumns(k.partialRatio, s.headDim);
    this.#tier = tier;
    const [keys] = infinigenDeviceParts(s, k);
    this.#keys = tier.allocate(keys.bytes, keys.tag);
    this.#hot = new HotSet(tier, { ...s, capacity: hotCapacity(s, k) });
    this.#invFreq = model.invFreq;
    this.#eps = model.config.rmsNormEps;
    const { numLayers: L, numKvHeads: H, headDim: D } = s;
    this.#filled = new Int32Array(L);
    this.#newK = Array.from({ length: L }, () => new Float32Array(H * D));
    this.#newV = Array.from({ length: L }, () => new Float32Array(H * D));
    this.#inflight = new Array(L * H).fill(null);
    this.#chosen = new Array(L * H).fill(null);
    this.#deferred = new Array(L).fill(null);
    this.#scores = new Float32Array(Math.max(1, s.capacityTokens));
    // Calibration (once per model) runs beside the prompt's prefill; prefill keys are back-filled from the host
    // cache if it ends later. A failure surfaces in the first decode attend that needs it.
    this.#ready = partialWeights(model, this.#r);
    this.#ready.then((w) => (this.#w = w), () => {});
  }

  /** Tokens [start, start + T): k, v [T, numKvHeads, headDim] post-RoPE. Their partial keys join the device tier. */
  onWrite(layer: number, start: number, k: Float32Array, v: Float32Array): void {
    const { numKvHeads: H, headDim: D, dtype } = this.#s;
    const T = k.length / (H * D);
    // Rounded through the storage dtype, so keys written now and keys back-filled from the cache agree exactly.
    const kr = roundThrough(k, dtype);
    if (T === 1) {
      this.#newK[layer].set(kr);
      this.#newV[layer].set(roundThrough(v, dtype));
    }
    if (this.#w && this.#filled[layer] === start) this.#writeKeys(layer, start, kr);
  }

  onPrefillEnd(cache: HostKvCache, seq: number): void {
    this.#src = { cache, seq };
  }

  /**
   * x_l of the token at `pos`: speculates layer l+1's set (and at l = 0 layer 0's own, from the same input) and
   * starts its prefetch, which overlaps layer l's compute.
   */
  onLayerInput(layer: number, hidden: Float32Array, pos: number): void {
    const targets = layer === 0 ? [0, 1] : [layer + 1];
    for (const t of targets) {
      if (t >= this.#s.numLayers) continue;
      if (this.#w && this.#src) {
        this.#backfill(t, pos);
        this.#speculate(t, hidden, pos);
      } else {
        this.#deferred[t] = Float32Array.from(hidden); // the caller's buffer moves on; attend selects from this copy
      }
    }
  }

  /** One decode query: q, out [numKvHeads, G, headDim]; lse [numKvHeads, G]. */
  async attend(call: LayerCall, q: Float32Array, out: Float32Array, lse: Float32Array): Promise<void> {
    const { layer, cache, seq, groupSize: G, scale, stats } = call;
    const { numKvHeads: H, headDim: D } = this.#s;
    this.#src = { cache, seq };
    const n = cache.store.numTokens(seq); // the arriving token is the last, at n - 1
    const deferred = this.#deferred[layer];
    if (deferred) {
      // No speculation could be issued before this layer (calibration was still running): select and fetch now.
      // Waiting for calibration is one-time setup, not copy time: it is left out of the overlap.
      this.#deferred[layer] = null;
      if (!this.#w) this.#w = await this.#ready;
      this.#backfill(layer, n);
      this.#speculate(layer, deferred, n - 1);
    }
    const d0 = performance.now();
    let waited = 0;
    const selfO = new Float32Array(G * D); // [G, D] the arriving token's part: o = v, lse = its score
    const selfL = new Float32Array(G); // [G]
    for (let h = 0; h < H; h++) {
      const i = layer * H + h;
      const w0 = performance.now();
      const fetched = await this.#inflight[i]!;
      waited += performance.now() - w0;
      this.#inflight[i] = null;
      const want = this.#chosen[i]!;
      this.#chosen[i] = null;
      stats.hotMisses += fetched;
      stats.hotHits += want.length - fetched;
      stats.bytesH2D += fetched * 2 * D * 2;
      const qh = q.subarray(h * G * D, (h + 1) * G * D);
      const o = out.subarray(h * G * D, (h + 1) * G * D);
      const l = lse.subarray(h * G, (h + 1) * G);
      const kNew = this.#newK[layer].subarray(h * D, (h + 1) * D);
      const vNew = this.#newV[layer].subarray(h * D, (h + 1) * D);
      ownTokenPart(qh, kNew, vNew, G, D, scale, selfO, selfL);
      const { slots } = this.#hot.resident(layer, h); // exactly `want` after its prefetch
      if (slots.length === 0) {
        o.set(selfO);
        l.set(selfL);
        continue;
      }
      native().kvAttend({ ...this.#hot.region(layer, h), blockIds: slots, numTokens: slots.length, kvHeads: Int32Array.of(0), groupSize: G, scale, q: qh, out: o, lse: l });
      native().lseMerge({ rows: G, headDim: D, oA: o, lseA: l, oB: selfO, lseB: selfL, out: o, lseOut: l });
    }
    this.#exposedMs += waited;
    stats.deviceMs += performance.now() - d0 - waited + this.#specMs;
    this.#specMs = 0;
    stats.copyMs += this.#copyMs - this.#booked;
    this.#booked = this.#copyMs;
    stats.overlapRatio = this.#copyMs > 0 ? Math.min(1, Math.max(0, 1 - this.#exposedMs / this.#copyMs)) : 0;
  }

  /** Waits for prefetches still in flight (their results are unused). */
  async settle(): Promise<void> {
    await Promise.allSettled(this.#inflight.filter((p) => p !== null));
    this.#inflight.fill(null);
    this.#chosen.fill(null);
  }

  dispose(): void {
    if (this.#tier.live) this.#tier.free(this.#keys.offset);
  }

  /** Layer `t`'s selection of the tokens [0, n) from input x (the previous layer's, or its own at layer 0), fetched on the copy thread. */
  #speculate(t: number, x: Float32Array, n: number): void {
    const s0 = performance.now();
    const w = this.#w!;
    const { cache, seq } = this.#src!;
    const H = this.#s.numKvHeads;
    const r = this.#r;
    const xn = rmsNorm(x, w.norm[t], this.#eps); // [hidden] what layer t's projections would read
    const src = { region: cache.region(t), blockIds: cache.store.blockIds(seq) };
    const scores = this.#scores.subarray(0, n);
    for (let h = 0; h < H; h++) {
      const i = t * H + h;
      const q = matVec(w.wq[i], xn, w.bq[i], r); // [r] the group's mean partial query
      if (n > 0) native().partialKeyScores({ dtype: this.#s.dtype, dim: r, n, rows: 1, keys: this.#keysRef(t, h), q, out: scores });
      const want = selectPositions(scores, n, this.#k);
      this.#chosen[i] = want;
      const c0 = performance.now();
      this.#inflight[i] = this.#hot.prefetch(t, h, want, src).then((fetched) => {
        this.#copyMs += performance.now() - c0;
        return fetched;
      });
      this.#inflight[i]!.catch(() => {}); // awaited in attend; an abort in between must not count as unhandled
    }
    this.#specMs += performance.now() - s0;
  }

  /** Partial keys of (layer, head) start here: [capacityTokens, r]. */
  #keysRef(layer: number, head: number): { handle: number; offset: number } {
    const { numKvHeads: H, capacityTokens: C } = this.#s;
    return { handle: this.#keys.ref.handle, offset: this.#keys.ref.offset + (layer * H + head) * C * this.#r * 2 };
  }

  /** Stores the partial keys of tokens [start, start + T) from their post-RoPE keys k [T, H, D] (rounded as stored). */
  #writeKeys(layer: number, start: number, k: Float32Array): void {
    const { numKvHeads: H, headDim: D, dtype } = this.#s;
    const r = this.#r;
    const T = k.length / (H * D);
    const pre = k.slice(); // [T, H, D]
    const { cos, sin } = ropeTables(this.#invFreq, positionRange(start, T));
    unrotate(pre, cos, sin, H, D);
    const row = new Float32Array(r);
    for (let h = 0; h < H; h++) {
      const basis = this.#w!.bases[layer * H + h];
      const half = new Uint16Array(T * r); // [T, r]
      for (let t = 0; t < T; t++) {
        skewRow(pre, (t * H + h) * D, basis, D, r, row);
        for (let j = 0; j < r; j++) half[t * r + j] = toHalf(row[j], dtype);
      }
      const ref = this.#keysRef(layer, h);
      native().arenaWrite({ handle: ref.handle, offset: ref.offset + start * r * 2, data: new Uint8Array(half.buffer) });
    }
    this.#filled[layer] = start + T;
  }

  /** Partial keys of layer `t` up to `n` tokens, reading what is missing from the host cache. */
  #backfill(t: number, n: number): void {
    const from = this.#filled[t];
    if (from >= n) return;
    const { cache, seq } = this.#src!;
    this.#writeKeys(t, from, cache.readTokens(t, seq, from, n - from).k);
  }

}
