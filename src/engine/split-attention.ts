// Decode attention split across tiers, per KV head, merged by LSE. The hot set (sinks, recent window, top-k1
// by low-bit key score) is attended in full precision in the device tier. Then:
//   exact:  the CPU workers attend every other token, so the result is exact whatever the selection;
//   tiered: the CPU workers attend the next k2 tokens by score exactly, and the device attends the rest
//           through the low-bit (KIVI) copy: closer than a low-bit tail alone, cheaper than exact;
//   specache: the device attends the rest through the low-bit copy, and the hot set of a step is the one the
//           previous step's speculative token chose, so its misses can be fetched ahead (SpeCache).
// The parts are disjoint and cover every token.
import { performance } from 'node:perf_hooks';
import type { HostDeviceTier } from '../device/device-tier.js';
import { LowBitTier } from '../device/low-bit-tier.js';
import { HostArena } from '../arena.js';
import { KvoffArgumentError } from '../errors.js';
import { native, type KvRegion } from '../native.js';
import type { DecodeAttention, LayerCall } from './decode-attention.js';
import { HotSet } from './hot-set.js';
import { ownTokenPart } from './own-token.js';
import type { EngineStats } from './stats.js';

export interface SplitKnobs {
  mode: 'exact' | 'tiered' | 'specache';
  topK: number; // hot tokens chosen by low-bit score, per KV head (k1)
  cpuK: number; // tiered: the next tokens by score, attended exactly on the CPU (k2)
  sinks: number;
  window: number; // recent tokens, always hot; covers the keys not yet quantized
  bits: 1 | 2 | 4; // of the low-bit keys used for scoring
  keyGroupSize: 32 | 64;
}

export const EXACT_DEFAULTS: SplitKnobs = { mode: 'exact', topK: 64, cpuK: 0, sinks: 4, window: 64, bits: 2, keyGroupSize: 32 };
export const TIERED_DEFAULTS: SplitKnobs = { ...EXACT_DEFAULTS, mode: 'tiered', cpuK: 256, bits: 4 };
export const SPECACHE_DEFAULTS: SplitKnobs = { ...EXACT_DEFAULTS, mode: 'specache', bits: 4 };

interface Shape {
  numLayers: number;
  numKvHeads: number;
  headDim: number;
  dtype: 'f16' | 'bf16';
  capacityTokens: number;
}

/** Slots per (layer, KV head): sinks, top-k and window, plus the token that arrives between a speculative
 *  choice and its use (specache). */
const hotCapacity = (k: SplitKnobs): number => k.sinks + k.topK + k.window + 1;

/** exact only scores with the low-bit keys; tiered also attends the low-bit values of its tail. */
function lowBitShape(s: Shape, k: SplitKnobs) {
  // At least one key group, so a run shorter than a group still has a (never filled) low-bit section.
  const capacityTokens = Math.max(s.capacityTokens, k.keyGroupSize);
  return { ...s, capacityTokens, bits: k.bits, keyGroupSize: k.keyGroupSize, valueGroupSize: s.headDim, keysOnly: k.mode === 'exact' };
}

export function splitDeviceParts(s: Shape, k: SplitKnobs, alignment?: number) {
  const lowBit = LowBitTier.bytesFor({ ...lowBitShape(s, k), alignment });
  const hot = HotSet.bytesFor({ ...s, capacity: hotCapacity(k) });
  return [{ tag: 'low-bit', bytes: lowBit }, { tag: 'hot', bytes: hot }];
}

export class SplitAttention implements DecodeAttention {
  readonly #k: SplitKnobs;
  readonly #lowBit: LowBitTier;
  readonly #hot: HotSet;
  readonly #pending: Float32Array[]; // [numLayers] keys of the incomplete group: [keyGroupSize, numKvHeads, headDim]
  readonly #shape: Shape;
  readonly #guide: (Int32Array | null)[]; // [numLayers * numKvHeads] specache: hot positions the last speculative query chose
  readonly #inflight: (Promise<number> | null)[]; // [numLayers * numKvHeads] specache: the prefetch of those positions
  #scores = new Float32Array(0); // scratch for low-bit scores, reused across heads, layers and steps
  // tiered: [numKvHeads][cpuK, 2, headDim] 16-bit, pinned: each head's CPU picks gathered compact for the workers, so
  // they read k2 rows a head instead of skipping an exclusion list over the whole context (layers run in turn)
  readonly #compact: HostArena | null;
  #copyMs = 0; // prefetch time on the copy thread
  #exposedMs = 0; // of which a step waited for

  constructor(tier: HostDeviceTier, shape: Shape, knobs: SplitKnobs) {
    // Tokens past the last complete key group have no low-bit copy: the always-hot window must cover them.
    if (knobs.window < knobs.keyGroupSize) throw new KvoffArgumentError('window', `at least keyGroupSize (${knobs.keyGroupSize})`, knobs.window);
    this.#k = knobs;
    this.#shape = shape;
    this.#lowBit = new LowBitTier({ tier, ...lowBitShape(shape, knobs) });
    this.#hot = new HotSet(tier, { ...shape, capacity: hotCapacity(knobs) });
    this.#pending = Array.from({ length: shape.numLayers }, () => new Float32Array(knobs.keyGroupSize * shape.numKvHeads * shape.headDim));
    this.#guide = new Array(shape.numLayers * shape.numKvHeads).fill(null);
    this.#inflight = new Array(shape.numLayers * shape.numKvHeads).fill(null);
    this.#compact = knobs.mode === 'tiered' ? new HostArena(shape.numKvHeads * Math.max(1, knobs.cpuK) * 4 * shape.headDim, { pin: true }) : null;
  }

  /** tiered: head h's CPU picks (sorted positions) gathered into its compact slice: the request the workers attend. */
  #compactRequest(h: number, cpu: Int32Array, src: { region: KvRegion; blockIds: Int32Array }): { region: KvRegion; blockIds: Int32Array; numTokens: number } {
    const { headDim: D } = this.#shape;
    const offset = h * Math.max(1, this.#k.cpuK) * 4 * D;
    if (cpu.length > 0) native().kvGather({ ...src.region, blockIds: src.blockIds, kvHeads: Int32Array.of(h), n: cpu.length, positions: cpu, dst: { handle: this.#compact!.handle, offset } });
    const region: KvRegion = { handle: this.#compact!.handle, offset, numBlocks: 1, numKvHeads: 1, headDim: D, blockSize: Math.max(1, cpu.length), dtype: src.region.dtype };
    return { region, blockIds: Int32Array.of(0), numTokens: cpu.length };
  }

  /**
   * Feeds tokens [start, start + T) (k, v: [T, numKvHeads, headDim]): complete key groups get quantized; tiered
   * also quantizes every value, for its low-bit tail.
   */
  onWrite(layer: number, start: number, k: Float32Array, v: Float32Array): void {
    if (this.#k.mode !== 'exact') this.#lowBit.appendValues(layer, v, start);
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
  async attend(call: LayerCall, q: Float32Array, out: Float32Array, lse: Float32Array): Promise<void> {
    const { layer, cache, seq, pool, groupSize: G, scale, stats, signal } = call;
    const { numKvHeads: H, headDim: D } = this.#shape;
    const n = cache.store.numTokens(seq);
    const src = { region: cache.region(layer), blockIds: cache.store.blockIds(seq) };
    const qh = (h: number) => q.subarray(h * G * D, (h + 1) * G * D);
    const picks = Array.from({ length: H }, (_, h) => {
      const guide = this.#guide[layer * H + h];
      this.#guide[layer * H + h] = null;
      // specache: the positions the previous step's speculative token chose, plus what arrived since.
      return guide ? { hot: withRecent(guide, n, this.#k), cpu: new Int32Array(0) } : this.#select(layer, h, n, qh(h));
    });
    // CPU part first, so the workers run while the device parts (here: the main thread) do theirs.
    const oCpu = new Float32Array(H * G * D); // [H, G, D]
    const lCpu = new Float32Array(H * G); // [H, G]
    const t0 = performance.now();
    const part = (h: number) => ({ groupSize: G, q: qh(h), scale, out: oCpu.subarray(h * G * D, (h + 1) * G * D), lse: lCpu.subarray(h * G, (h + 1) * G) });
    const cpu = this.#k.mode === 'specache' ? Promise.resolve([]) : Promise.all(picks.map((pick, h) => pool.attend(
      this.#compact
        ? { ...this.#compactRequest(h, pick.cpu, src), kvHeads: Int32Array.of(0), ...part(h) }
        : { ...src, numTokens: n, kvHeads: Int32Array.of(h), exclude: pick.hot, ...part(h) },
      { signal },
    )));
    // Observed now, awaited below: a rejection (abort, crashed worker) while the device part runs must not
    // count as unhandled, and must still fail this step.
    cpu.catch(() => {});
    const d0 = performance.now();
    const oTail = new Float32Array(G * D); // [G, D]
    const lTail = new Float32Array(G);
    for (let h = 0; h < H; h++) {
      await this.#awaitPrefetch(layer * H + h, stats);
      const { slots, hits, misses } = this.#hot.update(layer, h, picks[h].hot, src);
      stats.hotHits += hits;
      stats.hotMisses += misses;
      stats.bytesH2D += misses * 2 * D * 2;
      const o = out.subarray(h * G * D, (h + 1) * G * D);
      const l = lse.subarray(h * G, (h + 1) * G);
      native().kvAttend({ ...this.#hot.region(layer, h), blockIds: slots, numTokens: slots.length, kvHeads: Int32Array.of(0), groupSize: G, scale, q: qh(h), out: o, lse: l });
      if (this.#k.mode !== 'exact') {
        const quantized = this.#lowBit.quantizedTokens(layer);
        this.#lowBit.attendTail(layer, h, qh(h), scale, unionBelow(picks[h].hot, picks[h].cpu, quantized), oTail, lTail);
        native().lseMerge({ rows: G, headDim: D, oA: o, lseA: l, oB: oTail, lseB: lTail, out: o, lseOut: l });
      }
    }
    stats.deviceMs += performance.now() - d0;
    await cpu;
    stats.cpuAttnMs += performance.now() - t0;
    if (this.#k.mode !== 'specache') native().lseMerge({ rows: H * G, headDim: D, oA: out, lseA: lse, oB: oCpu, lseB: lCpu, out, lseOut: lse });
  }

  /**
   * specache's speculative token: attends like the real one (the resident hot set plus the low-bit tail) and
   * itself (its KV is never stored), then picks the hot set of the next step from its query.
   * q, out [numKvHeads, G, headDim]; k, v [numKvHeads, headDim]; lse [numKvHeads, G].
   */
  attendSpeculative(call: LayerCall, q: Float32Array, k: Float32Array, v: Float32Array, out: Float32Array, lse: Float32Array): void {
    const { layer, cache, seq, groupSize: G, scale, stats } = call;
    const { numKvHeads: H, headDim: D } = this.#shape;
    const n = cache.store.numTokens(seq);
    const d0 = performance.now();
    const oPart = new Float32Array(G * D); // [G, D]
    const lPart = new Float32Array(G);
    const quantized = this.#lowBit.quantizedTokens(layer);
    for (let h = 0; h < H; h++) {
      const qg = q.subarray(h * G * D, (h + 1) * G * D);
      const o = out.subarray(h * G * D, (h + 1) * G * D);
      const l = lse.subarray(h * G, (h + 1) * G);
      const { positions, slots } = this.#hot.resident(layer, h);
      native().kvAttend({ ...this.#hot.region(layer, h), blockIds: slots, numTokens: slots.length, kvHeads: Int32Array.of(0), groupSize: G, scale, q: qg, out: o, lse: l });
      this.#lowBit.attendTail(layer, h, qg, scale, positions.filter((p) => p < quantized), oPart, lPart);
      native().lseMerge({ rows: G, headDim: D, oA: o, lseA: l, oB: oPart, lseB: lPart, out: o, lseOut: l });
      // Itself: its KV is never stored, so it joins as a one-token part.
      ownTokenPart(qg, k.subarray(h * D, (h + 1) * D), v.subarray(h * D, (h + 1) * D), G, D, scale, oPart, lPart);
      native().lseMerge({ rows: G, headDim: D, oA: o, lseA: l, oB: oPart, lseB: lPart, out: o, lseOut: l });
      const guide = this.#select(layer, h, n, qg).hot;
      this.#guide[layer * H + h] = guide;
      // Prefetch now, on the copy thread, what the next step will want: it overlaps the rest of this step.
      const c0 = performance.now();
      const src = { region: cache.region(layer), blockIds: cache.store.blockIds(seq) };
      this.#inflight[layer * H + h] = this.#hot.prefetch(layer, h, withRecent(guide, n, this.#k), src).then((fetched) => {
        this.#copyMs += performance.now() - c0;
        stats.hotMisses += fetched;
        stats.bytesH2D += fetched * 2 * D * 2;
        return fetched;
      });
    }
    stats.deviceMs += performance.now() - d0;
  }

  /** Waits for a (layer, head)'s prefetch, if one is in flight, and books the wait as exposed copy time. */
  async #awaitPrefetch(i: number, stats: EngineStats): Promise<void> {
    const p = this.#inflight[i];
    if (!p) return;
    this.#inflight[i] = null;
    const w0 = performance.now();
    await p;
    this.#exposedMs += performance.now() - w0;
    stats.copyMs = this.#copyMs;
    stats.overlapRatio = this.#copyMs > 0 ? Math.max(0, 1 - this.#exposedMs / this.#copyMs) : 0;
  }

  /**
   * One head's picks, as sorted positions: `hot` = sinks, the recent window and the best k1 of the quantized
   * tokens by low-bit score; `cpu` (tiered) = the next k2 by score.
   */
  #select(layer: number, head: number, n: number, q: Float32Array): { hot: Int32Array; cpu: Int32Array } {
    const { sinks, window, topK, cpuK, mode } = this.#k;
    const hot = new Set<number>();
    for (let p = 0; p < Math.min(sinks, n); p++) hot.add(p);
    for (let p = Math.max(0, n - window); p < n; p++) hot.add(p);
    const cpu: number[] = [];
    const quantized = Math.min(this.#lowBit.quantizedTokens(layer), n);
    const want = topK + (mode === 'tiered' ? cpuK : 0) + hot.size; // enough to fill both after skipping hot ones
    const k = Math.min(want, quantized);
    if (k > 0) {
      if (this.#scores.length < quantized) this.#scores = new Float32Array(this.#shape.capacityTokens); // [capacity]
      const scores = this.#scores.subarray(0, quantized);
      this.#lowBit.score(layer, head, q, scores);
      const ranked = new Int32Array(k);
      native().topK({ rows: 1, n: quantized, k, scores, out: ranked });
      let addedHot = 0;
      for (const p of ranked) {
        if (hot.has(p)) continue;
        if (addedHot < topK) {
          hot.add(p);
          addedHot++;
        } else if (cpu.length < cpuK) {
          cpu.push(p);
        } else break;
      }
    }
    return { hot: Int32Array.from(hot).sort(), cpu: Int32Array.from(cpu).sort() };
  }

  /** Waits for prefetches still in flight (their arenas stay alive natively, but the results are unused). */
  async settle(): Promise<void> {
    await Promise.allSettled(this.#inflight.filter((p) => p !== null));
    this.#inflight.fill(null);
  }

  dispose(): void {
    this.#compact?.dispose();
    this.#lowBit.dispose();
  }
}

/** Sorted union of two sorted, disjoint position lists, cut to positions below `limit`. */
function unionBelow(a: Int32Array, b: Int32Array, limit: number): Int32Array {
  const out: number[] = [];
  for (const p of a) if (p < limit) out.push(p);
  for (const p of b) if (p < limit) out.push(p);
  return Int32Array.from(out).sort();
}

/** A guided hot set brought up to date: the sinks and the recent window as of `n` tokens, sorted. */
function withRecent(guide: Int32Array, n: number, k: SplitKnobs): Int32Array {
  const set = new Set(guide);
  for (let p = 0; p < Math.min(k.sinks, n); p++) set.add(p);
  for (let p = Math.max(0, n - k.window); p < n; p++) set.add(p);
  return Int32Array.from(set).sort();
}
