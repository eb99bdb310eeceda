// quest (Quest, Tang et al. 2024): per page of `pageSize` tokens, the min and max of the keys per channel live in
// the device tier. Each decode step and KV head scores every page by the upper bound of q.k inside it, and
// attends exactly the best `pages` pages plus the sinks and the newest page(s). Their (token, head) units come
// from the host cache into hot-set slots; resident ones are reused, misses fetched in one batched gather.
import { performance } from 'node:perf_hooks';
import { z } from 'zod';
import type { HostDeviceTier, TierBuffer } from '../device/device-tier.js';
import type { TierPart } from '../device/tier-allocator.js';
import type { DecodeAttention, LayerCall } from '../engine/decode-attention.js';
import { HotSet } from '../engine/hot-set.js';
import type { Knobs, PolicySpec, SeqShape } from '../engine/policies.js';
import { native } from '../native.js';
import { halvingsTo, largestFitting, tierBytes } from './budget-fit.js';
import { boundsToHalf, choosePages, foldPageBounds, questSlots, type PageChoice } from './quest-pages.js';

export const QUEST_DEFAULTS: PageChoice = { pageSize: 16, pages: 32, recentPages: 1, sinks: 4 };

const maxPages = (s: SeqShape, c: PageChoice): number => Math.ceil(s.capacityTokens / c.pageSize);

/** Bytes of one (layer, head)'s page metadata: [maxPages, 2 (min, max), headDim] of fp16 (min rounded down, max up). */
const metaBytesPerHead = (s: SeqShape, c: PageChoice): number => maxPages(s, c) * 2 * s.headDim * 2;

export function questDeviceParts(s: SeqShape, c: PageChoice): TierPart[] {
  return [
    { tag: 'page-meta', bytes: s.numLayers * s.numKvHeads * metaBytesPerHead(s, c) },
    { tag: 'hot', bytes: HotSet.bytesFor({ ...s, capacity: questSlots(c, s.capacityTokens) }) },
  ];
}

export class QuestAttention implements DecodeAttention {
  readonly #c: PageChoice;
  readonly #s: SeqShape;
  readonly #tier: HostDeviceTier;
  readonly #meta: TierBuffer; // [numLayers, numKvHeads, maxPages, 2 (min, max), headDim] of fp16
  readonly #open: Float32Array[]; // [numLayers * numKvHeads] each [2, headDim]: the newest page's row, as last written
  readonly #hot: HotSet;

  constructor(tier: HostDeviceTier, s: SeqShape, c: PageChoice) {
    this.#c = c;
    this.#s = s;
    this.#tier = tier;
    this.#meta = tier.allocate(s.numLayers * s.numKvHeads * metaBytesPerHead(s, c), 'page-meta'); // as questDeviceParts, in order
    try {
      this.#hot = new HotSet(tier, { ...s, capacity: questSlots(c, s.capacityTokens) });
    } catch (err) {
      tier.free(this.#meta.offset);
      throw err;
    }
    this.#open = Array.from({ length: s.numLayers * s.numKvHeads }, () => new Float32Array(2 * s.headDim));
  }

  #metaOffset(layer: number, head: number): number {
    return this.#meta.ref.offset + (layer * this.#s.numKvHeads + head) * metaBytesPerHead(this.#s, this.#c);
  }

  /** The pages the new keys fall in get their bounds widened, in the device tier. k, v: [T, numKvHeads, headDim]. */
  onWrite(layer: number, start: number, k: Float32Array, _v: Float32Array): void {
    const { numKvHeads: H, headDim: D } = this.#s;
    for (let h = 0; h < H; h++) {
      const { firstPage, rows } = foldPageBounds(k, H, D, h, start, this.#c.pageSize, this.#open[layer * H + h]);
      if (rows.length === 0) continue;
      const half = boundsToHalf(rows, D);
      const data = new Uint8Array(half.buffer, half.byteOffset, half.byteLength);
      native().arenaWrite({ handle: this.#meta.ref.handle, offset: this.#metaOffset(layer, h) + firstPage * 2 * D * 2, data });
    }
  }

  /** q, out [numKvHeads, G, headDim]; lse [numKvHeads, G]: exact attention over the chosen pages only. */
  async attend(call: LayerCall, q: Float32Array, out: Float32Array, lse: Float32Array): Promise<void> {
    const { layer, cache, seq, groupSize: G, scale, stats } = call;
    const { numKvHeads: H, headDim: D } = this.#s;
    const t0 = performance.now();
    const n = cache.store.numTokens(seq);
    const P = Math.ceil(n / this.#c.pageSize);
    const src = { region: cache.region(layer), blockIds: cache.store.blockIds(seq) };
    const bounds = new Float32Array(P); // [P]
    for (let h = 0; h < H; h++) {
      const qh = q.subarray(h * G * D, (h + 1) * G * D);
      native().pageBounds({ queryHeads: G, headDim: D, numPages: P, q: qh, meta: { handle: this.#meta.ref.handle, offset: this.#metaOffset(layer, h) }, out: bounds });
      const want = choosePages(bounds, n, this.#c);
      const { slots, hits, misses } = this.#hot.update(layer, h, want, src);
      stats.hotHits += hits;
      stats.hotMisses += misses;
      stats.bytesH2D += misses * 2 * D * 2;
      native().kvAttend({
        ...this.#hot.region(layer, h), blockIds: slots, numTokens: slots.length, kvHeads: Int32Array.of(0), groupSize: G, scale, q: qh,
        out: out.subarray(h * G * D, (h + 1) * G * D), lse: lse.subarray(h * G, (h + 1) * G),
      });
    }
    stats.deviceMs += performance.now() - t0;
  }

  async settle(): Promise<void> {}

  dispose(): void {
    if (this.#tier.live) this.#tier.free(this.#meta.offset);
  }
}

const full = (k: Knobs): PageChoice => ({ ...QUEST_DEFAULTS, ...k }) as PageChoice;

export const questPolicy: PolicySpec = {
  name: 'quest', kvHome: 'host', stagesLayer: false, speculative: false,
  knobs: z.object({
    pageSize: z.number().int().min(1).max(1024),
    pages: z.number().int().min(0).max(1 << 20),
    recentPages: z.number().int().min(0).max(1 << 10),
    sinks: z.number().int().min(0).max(1 << 16),
  }).partial().strict(),
  /** The token budget: as many pages as the bytes left after the metadata allow (all of them at most). */
  fit(s, bytes, given) {
    if (given.pages !== undefined || !Number.isFinite(bytes)) return null;
    const base = full(given);
    const pages = largestFitting(1, maxPages(s, base), (p) => tierBytes(questDeviceParts(s, { ...base, pages: p })) <= bytes);
    return pages === null ? null : { ...base, pages };
  },
  candidates: (given) => (given.pages !== undefined ? [{ ...full(given) }] : halvingsTo(QUEST_DEFAULTS.pages, 1).map((pages) => ({ ...full(given), pages }))),
  seqParts: (s, k) => questDeviceParts(s, full(k)),
  openSeq: (tier, s, k) => new QuestAttention(tier, s, full(k)),
};
