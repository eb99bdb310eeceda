// Decode attention of the eviction family (streaming, h2o, tova, snapkv, pyramid, fastgen): prefill is exact over
// the host cache; at its end a rule picks what each (layer, KV head) keeps, copied into the kept set; from then on
// decode attends only the kept set plus the arriving token, and the rule decides what to forget.
import { performance } from 'node:perf_hooks';
import type { DecodeAttention, LayerCall } from '../engine/decode-attention.js';
import { ownTokenPart } from '../engine/own-token.js';
import type { HostDeviceTier } from '../device/device-tier.js';
import { fromHalf, toHalf } from '../kernels/half.js';
import type { HostKvCache } from '../kv/host-cache.js';
import { native, type KvDtype } from '../native.js';
import { KeptSet } from './kept-set.js';
import { QueryWindow, windowAttention } from './observation.js';

/** One (layer, KV head) at a decode step, as a rule sees it: the kept tokens (slot order), then the arriving one. */
export interface Candidates {
  positions: Int32Array; // [m] token positions; the last is the arriving token's
  scores: Float32Array; // [m] attention (mean over the group's query heads): this step's, or summed so far; 0 with scoring 'none'
}

/** What makes an eviction policy: pure selection and eviction rules, plus what they need observed. */
export interface EvictionRule {
  /** Slots per KV head of each layer. */
  capacities: number[];
  /** Last prefill queries per layer whose attention `select` ranks by (0: none, attn is all zeros). */
  window: number;
  /** A kept token's score at decode: none (no scores computed), this step's attention (tova), or its running sum (h2o). */
  scoring: 'none' | 'current' | 'accumulate';
  /** Sorted prompt positions that (layer, head) keeps, at most capacities[layer]; attn [n]: the window's attention. */
  select(layer: number, head: number, n: number, attn: Float32Array): Int32Array;
  /** Indices into c to forget (c.positions.length - 1 is the arriving token); the rest must fit `capacity`. */
  evict(layer: number, head: number, c: Candidates, capacity: number): number[];
  /** Token ids at positions [start, start + ids.length) (fastgen's token classes). */
  onTokens?(ids: Int32Array, start: number): void;
}

export interface EvictionShape {
  numLayers: number;
  numKvHeads: number;
  groupSize: number;
  headDim: number;
  dtype: KvDtype;
}

export class EvictionAttention implements DecodeAttention {
  readonly #s: EvictionShape;
  readonly #rule: EvictionRule;
  readonly #kept: KeptSet;
  #queries: QueryWindow | null; // dropped once the prompt is selected from
  readonly #slotScores: Float32Array[]; // [numLayers * numKvHeads] each [capacity]: per slot, see EvictionRule.scoring
  readonly #newK: Float32Array[]; // [numLayers] the arriving token's keys [numKvHeads, headDim], rounded as stored
  readonly #newV: Float32Array[]; // [numLayers] its values [numKvHeads, headDim]
  readonly #newPos: Int32Array; // [numLayers] its position
  #decoding = false;

  constructor(tier: HostDeviceTier, shape: EvictionShape, rule: EvictionRule) {
    this.#s = { ...shape };
    this.#rule = rule;
    this.#kept = new KeptSet(tier, { ...shape, capacities: rule.capacities });
    const numHeads = shape.numKvHeads * shape.groupSize;
    this.#queries = new QueryWindow(shape.numLayers, numHeads, shape.headDim, rule.window);
    this.#slotScores = [];
    for (let l = 0; l < shape.numLayers; l++) for (let h = 0; h < shape.numKvHeads; h++) this.#slotScores.push(new Float32Array(rule.capacities[l]));
    const row = shape.numKvHeads * shape.headDim;
    this.#newK = Array.from({ length: shape.numLayers }, () => new Float32Array(row));
    this.#newV = Array.from({ length: shape.numLayers }, () => new Float32Array(row));
    this.#newPos = new Int32Array(shape.numLayers).fill(-1);
  }

  /** Prompt writes are read back from the host cache at the end of prefill; a decode token is held until attended. */
  onWrite(layer: number, start: number, k: Float32Array, v: Float32Array): void {
    if (!this.#decoding) return;
    const { dtype } = this.#s;
    // Rounded through the storage dtype: what the kept set (and dense's cache) would hold.
    for (let i = 0; i < k.length; i++) {
      this.#newK[layer][i] = fromHalf(toHalf(k[i], dtype), dtype);
      this.#newV[layer][i] = fromHalf(toHalf(v[i], dtype), dtype);
    }
    this.#newPos[layer] = start;
  }

  onPrefillQueries(layer: number, start: number, q: Float32Array): void {
    this.#queries?.push(layer, start, q);
  }

  onTokens(ids: Int32Array, start: number): void {
    this.#rule.onTokens?.(ids, start);
  }

  /** The one-shot selection: per (layer, KV head), the rule's pick of the prompt goes into the kept set. */
  onPrefillEnd(cache: HostKvCache, seq: number): void {
    const { numLayers, numKvHeads: H, groupSize: G, headDim: D } = this.#s;
    const n = cache.store.numTokens(seq);
    const scale = 1 / Math.sqrt(D);
    const blockIds = cache.store.blockIds(seq);
    for (let l = 0; l < numLayers; l++) {
      const win = this.#queries!.get(l);
      for (let h = 0; h < H; h++) {
        const attn = win.count > 0 ? windowAttention(cache, seq, l, h, win, G, D, scale, n) : new Float32Array(n);
        const keep = this.#rule.select(l, h, n, attn);
        this.#kept.fill(l, h, keep, { region: cache.region(l), blockIds });
        // Slots 0..keep.length-1 hold `keep`: their starting scores are the window's attention.
        const scores = this.#slotScores[l * H + h];
        if (this.#rule.scoring !== 'none') for (let i = 0; i < keep.length; i++) scores[i] = attn[keep[i]];
      }
    }
    this.#queries = null;
    this.#decoding = true;
  }

  /** One decode query: q, out [numKvHeads, G, headDim]; lse [numKvHeads, G]. */
  async attend(call: LayerCall, q: Float32Array, out: Float32Array, lse: Float32Array): Promise<void> {
    const { layer, scale, stats } = call;
    const { numKvHeads: H, groupSize: G, headDim: D } = this.#s;
    const t0 = performance.now();
    const selfO = new Float32Array(G * D); // [G, D] the arriving token's part: o = v, lse = its score
    const selfL = new Float32Array(G); // [G]
    const pos = this.#newPos[layer];
    for (let h = 0; h < H; h++) {
      const qh = q.subarray(h * G * D, (h + 1) * G * D);
      const o = out.subarray(h * G * D, (h + 1) * G * D);
      const l = lse.subarray(h * G, (h + 1) * G);
      const kNew = this.#newK[layer].subarray(h * D, (h + 1) * D);
      const vNew = this.#newV[layer].subarray(h * D, (h + 1) * D);
      const region = this.#kept.region(layer, h);
      const slots = this.#kept.usedSlots(layer, h);
      const m = slots.length;
      native().kvAttend({ ...region, blockIds: slots, numTokens: m, kvHeads: Int32Array.of(0), groupSize: G, q: qh, scale, out: o, lse: l });
      ownTokenPart(qh, kNew, vNew, G, D, scale, selfO, selfL);
      native().lseMerge({ rows: G, headDim: D, oA: o, lseA: l, oB: selfO, lseB: selfL, out: o, lseOut: l });

      const c: Candidates = { positions: new Int32Array(m + 1), scores: new Float32Array(m + 1) };
      const slotScores = this.#slotScores[layer * H + h];
      const held = this.#kept.positions(layer, h);
      for (let j = 0; j < m; j++) c.positions[j] = held[slots[j]];
      c.positions[m] = pos;
      if (this.#rule.scoring !== 'none') {
        const raw = new Float32Array(G * m); // [G, m] scaled q.k of the kept tokens
        if (m > 0) native().kvScores({ ...region, blockIds: slots, numTokens: m, kvHead: 0, rows: G, q: qh, scale, out: raw });
        const accumulate = this.#rule.scoring === 'accumulate';
        for (let j = 0; j < m; j++) {
          let p = 0;
          for (let g = 0; g < G; g++) p += Math.exp(raw[g * m + j] - l[g]);
          p /= G;
          slotScores[slots[j]] = accumulate ? slotScores[slots[j]] + p : p;
          c.scores[j] = slotScores[slots[j]];
        }
        let p = 0;
        for (let g = 0; g < G; g++) p += Math.exp(selfL[g] - l[g]);
        c.scores[m] = p / G;
      }
      const cap = this.#kept.capacity(layer);
      let keepNew = true;
      for (const i of this.#rule.evict(layer, h, c, cap)) {
        if (i === m) keepNew = false;
        else this.#kept.evict(layer, h, slots[i]);
      }
      if (keepNew) {
        const slot = this.#kept.put(layer, h, pos, kNew, vNew);
        slotScores[slot] = c.scores[m];
      }
    }
    stats.deviceMs += performance.now() - t0;
  }


  async settle(): Promise<void> {}

  dispose(): void {
    this.#kept.dispose();
  }
}
