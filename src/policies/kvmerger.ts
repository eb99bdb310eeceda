// kvmerger (KVMerger, Wang et al. 2024): at the end of prefill, per (layer, KV head), runs of consecutive tokens
// with similar keys (cosine >= threshold) merge into their pivotal state, the member the observation window
// attends most, with Gaussian-kernel weights on the distance to the pivot's key (keys and values alike). If more
// states remain than the kept set holds, the least-attended ones outside the recent window go, as in H2O. Decode
// attends the kept states exactly; once full, each new token makes room by merging the least-attended state
// into a similar neighbour, or dropping it.
import { performance } from 'node:perf_hooks';
import { z } from 'zod';
import type { HostDeviceTier } from '../device/device-tier.js';
import type { TierPart } from '../device/tier-allocator.js';
import type { DecodeAttention, LayerCall } from '../engine/decode-attention.js';
import type { Knobs, PolicySpec, SeqShape } from '../engine/policies.js';
import { KvoffArgumentError } from '../errors.js';
import { fromHalf, toHalf } from '../kernels/half.js';
import type { HostKvCache } from '../kv/host-cache.js';
import { native } from '../native.js';
import { ownTokenPart } from '../engine/own-token.js';
import { largestFitting, tierBytes } from './budget-fit.js';
import { KeptSet } from './kept-set.js';
import { cosineAt, decodeVictim, evictToBudget, mergeInto, mergePrompt } from './kvmerger-sets.js';
import { QueryWindow, windowAttention } from './observation.js';

export interface KvMergerKnobs {
  capacity: number; // kept states per (layer, KV head)
  threshold: number; // cosine similarity of keys that makes a merging set
  recent: number; // the latest tokens: never merged or evicted
  window: number; // the prompt's last queries whose attention picks pivots and ranks states
}

export const KVMERGER_DEFAULTS = { threshold: 0.9, window: 32 };

/** As H2O (whose eviction kvmerger uses to meet the budget), half the kept states go to the recent tokens. */
export const kvmergerRecent = (capacity: number): number => Math.max(1, Math.floor(capacity / 2));

/** The recent tokens and at least one older state to merge into or evict. */
const minCapacity = (given: Knobs): number => (given.recent ?? 1) + 1;

function resolve(given: Knobs, capacity: number): KvMergerKnobs {
  if (capacity < minCapacity(given)) throw new KvoffArgumentError('engine options.capacity', `at least recent + 1 = ${minCapacity(given)} for kvmerger`, capacity);
  return { ...KVMERGER_DEFAULTS, recent: kvmergerRecent(capacity), ...given, capacity } as KvMergerKnobs;
}

const asKnobs = (k: KvMergerKnobs): Knobs => ({ ...k });

export function kvmergerDeviceParts(s: SeqShape, k: Pick<KvMergerKnobs, 'capacity'>): TierPart[] {
  return [{ tag: 'kept', bytes: KeptSet.bytesFor({ ...s, capacities: new Array(s.numLayers).fill(k.capacity) }) }];
}

export class KvMergerAttention implements DecodeAttention {
  readonly #k: KvMergerKnobs;
  readonly #s: SeqShape;
  readonly #kept: KeptSet;
  #queries: QueryWindow | null; // dropped once the prompt is merged
  readonly #scores: Float32Array[]; // [numLayers * numKvHeads] each [capacity]: accumulated attention per slot
  readonly #mass: Float32Array[]; // [numLayers * numKvHeads] each [capacity]: kernel mass each slot's state carries
  readonly #newK: Float32Array[]; // [numLayers] the arriving token's keys [numKvHeads, headDim], rounded as stored
  readonly #newV: Float32Array[]; // [numLayers] its values
  readonly #newPos: Int32Array; // [numLayers]
  #decoding = false;
  #promptBytesRead = 0; // host bytes merging read, booked on the first decode step (onPrefillEnd has no stats)

  constructor(tier: HostDeviceTier, s: SeqShape, k: KvMergerKnobs) {
    this.#k = k;
    this.#s = s;
    this.#kept = new KeptSet(tier, { ...s, capacities: new Array(s.numLayers).fill(k.capacity) });
    this.#queries = new QueryWindow(s.numLayers, s.numKvHeads * s.groupSize, s.headDim, k.window);
    const slots = () => Array.from({ length: s.numLayers * s.numKvHeads }, () => new Float32Array(k.capacity));
    this.#scores = slots();
    this.#mass = slots();
    this.#newK = Array.from({ length: s.numLayers }, () => new Float32Array(s.numKvHeads * s.headDim));
    this.#newV = Array.from({ length: s.numLayers }, () => new Float32Array(s.numKvHeads * s.headDim));
    this.#newPos = new Int32Array(s.numLayers).fill(-1);
  }

  /** The prompt is read back from the host cache at its end; a decode token is held until it is attended. */
  onWrite(layer: number, start: number, k: Float32Array, v: Float32Array): void {
    if (!this.#decoding) return;
    const { dtype } = this.#s;
    for (let i = 0; i < k.length; i++) {
      this.#newK[layer][i] = fromHalf(toHalf(k[i], dtype), dtype);
      this.#newV[layer][i] = fromHalf(toHalf(v[i], dtype), dtype);
    }
    this.#newPos[layer] = start;
  }

  onPrefillQueries(layer: number, start: number, q: Float32Array): void {
    this.#queries?.push(layer, start, q);
  }

  /** Merging sets collapse into their pivots, then the budget is met by H2O eviction; the states fill the kept set. */
  onPrefillEnd(cache: HostKvCache, seq: number): void {
    const { numLayers, numKvHeads: H, groupSize: G, headDim: D } = this.#s;
    const { capacity, recent, threshold } = this.#k;
    const n = cache.store.numTokens(seq);
    const scale = 1 / Math.sqrt(D);
    const src = (l: number) => ({ region: cache.region(l), blockIds: cache.store.blockIds(seq) });
    for (let l = 0; l < numLayers; l++) {
      const win = this.#queries!.get(l);
      const kv = n > capacity ? cache.readTokens(l, seq, 0, n) : null; // [n, H, D] each
      this.#promptBytesRead += n * H * 2 * D * 2; // the prompt's K and V, read to merge or copied as they are
      for (let h = 0; h < H; h++) {
        const attn = win.count > 0 ? windowAttention(cache, seq, l, h, win, G, D, scale, n) : new Float32Array(n);
        const i = l * H + h;
        if (!kv) {
          // Everything fits: nothing to merge, the prompt is kept exactly.
          this.#kept.fill(l, h, Int32Array.from({ length: n }, (_, t) => t), src(l));
          this.#scores[i].set(attn);
          this.#mass[i].fill(1);
          continue;
        }
        const keys = headRows(kv.k, n, H, D, h); // [n, D]
        const values = headRows(kv.v, n, H, D, h); // [n, D]
        const states = evictToBudget(mergePrompt(keys, values, D, attn, n - recent, threshold), capacity, n - recent);
        for (const st of states) {
          const slot = this.#kept.put(l, h, st.position, st.k, st.v);
          this.#scores[i][slot] = st.score;
          this.#mass[i][slot] = st.mass;
        }
      }
    }
    this.#queries = null;
    this.#decoding = true;
  }

  /** q, out [numKvHeads, G, headDim]; lse [numKvHeads, G]: the kept states and the arriving token, exactly. */
  async attend(call: LayerCall, q: Float32Array, out: Float32Array, lse: Float32Array): Promise<void> {
    const { layer, scale, stats } = call;
    const { numKvHeads: H, groupSize: G, headDim: D } = this.#s;
    const t0 = performance.now();
    stats.bytesH2D += this.#promptBytesRead;
    this.#promptBytesRead = 0;
    const selfO = new Float32Array(G * D); // [G, D] the arriving token alone: o = v, lse = its score
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
      // H2O's score: this step's attention (mean over the group's query heads) added to each state's sum.
      const i = layer * H + h;
      const raw = new Float32Array(G * m); // [G, m] scaled q.k of the kept states
      if (m > 0) native().kvScores({ ...region, blockIds: slots, numTokens: m, kvHead: 0, rows: G, q: qh, scale, out: raw });
      for (let j = 0; j < m; j++) {
        let p = 0;
        for (let g = 0; g < G; g++) p += Math.exp(raw[g * m + j] - l[g]);
        this.#scores[i][slots[j]] += p / G;
      }
      let pNew = 0;
      for (let g = 0; g < G; g++) pNew += Math.exp(selfL[g] - l[g]);
      if (m >= this.#kept.capacity(layer)) this.#makeRoom(layer, h, slots, pos - this.#k.recent + 1);
      const slot = this.#kept.put(layer, h, pos, kNew, vNew);
      this.#scores[i][slot] = pNew / G;
      this.#mass[i][slot] = 1;
    }
    stats.deviceMs += performance.now() - t0;
  }

  /** Frees one slot of a full (layer, head): the least-attended older state merges into a similar neighbour or goes. */
  #makeRoom(layer: number, head: number, slots: Int32Array, protectFrom: number): void {
    const i = layer * this.#s.numKvHeads + head;
    const held = this.#kept.positions(layer, head);
    const positions = Int32Array.from(slots, (s) => held[s]);
    const scores = Float32Array.from(slots, (s) => this.#scores[i][s]);
    const rows = new Map<number, { k: Float32Array; v: Float32Array }>();
    const row = (j: number) => {
      if (!rows.has(j)) rows.set(j, this.#readSlot(layer, head, slots[j]));
      return rows.get(j)!;
    };
    const cos = (a: number, b: number) => {
      const both = new Float32Array(2 * this.#s.headDim);
      both.set(row(a).k);
      both.set(row(b).k, this.#s.headDim);
      return cosineAt(both, this.#s.headDim, 0, 1);
    };
    const { victim, into } = decodeVictim(positions, scores, protectFrom, this.#k.threshold, cos);
    if (victim < 0) throw new Error(`kvmerger: nothing to evict in layer ${layer} head ${head} (capacity ${this.#k.capacity}, recent ${this.#k.recent})`);
    const vSlot = slots[victim];
    this.#kept.evict(layer, head, vSlot);
    if (into < 0) return;
    const tSlot = slots[into];
    const merged = mergeInto({ ...row(into), mass: this.#mass[i][tSlot] }, { ...row(victim), mass: this.#mass[i][vSlot] });
    const score = this.#scores[i][tSlot] + this.#scores[i][vSlot];
    this.#kept.evict(layer, head, tSlot);
    const slot = this.#kept.put(layer, head, positions[into], merged.k, merged.v);
    this.#scores[i][slot] = score;
    this.#mass[i][slot] = merged.mass;
  }

  /** One kept slot's K and V rows as floats (a read of the device tier). */
  #readSlot(layer: number, head: number, slot: number): { k: Float32Array; v: Float32Array } {
    const { headDim: D, dtype } = this.#s;
    const r = this.#kept.region(layer, head);
    const raw = native().arenaRead({ handle: r.handle, offset: r.offset + slot * 2 * D * 2, bytes: 2 * D * 2 });
    const half = new Uint16Array(raw.buffer, raw.byteOffset, 2 * D); // [2 (K, V), D]
    return { k: Float32Array.from(half.subarray(0, D), (x) => fromHalf(x, dtype)), v: Float32Array.from(half.subarray(D), (x) => fromHalf(x, dtype)) };
  }


  async settle(): Promise<void> {}

  dispose(): void {
    this.#kept.dispose();
  }
}

/** Head h's rows of x [n, numKvHeads, D], packed: [n, D]. */
function headRows(x: Float32Array, n: number, H: number, D: number, h: number): Float32Array {
  const out = new Float32Array(n * D);
  for (let t = 0; t < n; t++) out.set(x.subarray((t * H + h) * D, (t * H + h + 1) * D), t * D);
  return out;
}

export const kvmergerPolicy: PolicySpec = {
  name: 'kvmerger', kvHome: 'host', stagesLayer: false, speculative: false,
  knobs: z.object({
    capacity: z.number().int().min(1).max(1 << 24),
    threshold: z.number().min(-1).max(1),
    recent: z.number().int().min(0).max(1 << 20),
    window: z.number().int().min(1).max(1 << 12),
  }).partial().strict().superRefine((k, ctx) => {
    if (k.capacity !== undefined && k.capacity < minCapacity(k)) ctx.addIssue({ code: 'custom', path: ['capacity'], message: `at least recent + 1 = ${minCapacity(k)}` });
  }),
  /** As many kept states as the bytes allow; never more than the sequence holds (then nothing is merged). */
  fit(s, bytes, given) {
    if (given.capacity !== undefined) return asKnobs(resolve(given, given.capacity));
    const min = minCapacity(given);
    const top = Math.max(min, s.capacityTokens);
    const capacity = Number.isFinite(bytes) ? largestFitting(min, top, (c) => tierBytes(kvmergerDeviceParts(s, { capacity: c })) <= bytes) : top;
    return capacity === null ? null : asKnobs(resolve(given, capacity));
  },
  // Only reached when the fit fails: the smallest setting, whose bytes the capacity error reports.
  candidates: (given) => [asKnobs(resolve(given, given.capacity ?? minCapacity(given)))],
  seqParts: (s, k) => kvmergerDeviceParts(s, { capacity: k.capacity }),
  openSeq: (tier, s, k) => new KvMergerAttention(tier, s, resolve(k, k.capacity)),
};
