// kivi (KIVI, Liu et al. 2024): every token's K and V quantized to 2 or 4 bits in the device tier, keys per
// channel over groups of tokens, values per token; the most recent `window` tokens also stay full precision.
// Nothing is offloaded: decode attends the low-bit copy of every token older than the window and the exact
// window, merged by LSE. The host copy the engine writes is never read.
import { performance } from 'node:perf_hooks';
import { z } from 'zod';
import type { HostDeviceTier } from '../device/device-tier.js';
import { LowBitTier, type LowBitShape } from '../device/low-bit-tier.js';
import type { DecodeAttention, LayerCall } from '../engine/decode-attention.js';
import type { Knobs, PolicySpec, SeqShape } from '../engine/policies.js';
import type { TierPart } from '../device/tier-allocator.js';
import { native } from '../native.js';
import { halvingsTo } from './budget-fit.js';
import { RecentRing } from './recent-ring.js';

export interface KiviKnobs {
  bits: 2 | 4;
  window: number; // recent tokens kept full precision; at least one key group, so every older token is quantized
  keyGroupSize: 32 | 64;
}

export const KIVI_DEFAULTS: KiviKnobs = { bits: 2, window: 128, keyGroupSize: 32 };

/**
 * Where each of n tokens is attended: [0, lowBitEnd) from the low-bit copy, [lowBitEnd, n) exactly from the
 * window. The low-bit copy holds complete key groups only ([0, quantized)); the window's tokens among them are
 * excluded from the low-bit part so the two parts are disjoint.
 */
export function kiviSplit(n: number, window: number, quantized: number): { lowBitEnd: number; exclude: Int32Array } {
  const lowBitEnd = Math.max(0, n - window);
  if (quantized < lowBitEnd) throw new Error(`kiviSplit: tokens [${quantized}, ${lowBitEnd}) are neither quantized nor in the window`);
  const top = Math.min(quantized, n);
  return { lowBitEnd, exclude: Int32Array.from({ length: Math.max(0, top - lowBitEnd) }, (_, i) => lowBitEnd + i) };
}

/** Values are quantized per token in groups of channels; 32 where the head allows it (KIVI's group size). */
const valueGroupSize = (headDim: number): number => (headDim % 32 === 0 ? 32 : headDim);

function lowBitShape(s: SeqShape, k: KiviKnobs): LowBitShape {
  return { ...s, bits: k.bits, keyGroupSize: k.keyGroupSize, valueGroupSize: valueGroupSize(s.headDim) };
}

export function kiviDeviceParts(s: SeqShape, k: KiviKnobs): TierPart[] {
  return [
    { tag: 'low-bit', bytes: LowBitTier.bytesFor(lowBitShape(s, k)) },
    { tag: 'window', bytes: RecentRing.bytesFor({ ...s, window: k.window }) },
  ];
}

export class KiviAttention implements DecodeAttention {
  readonly #k: KiviKnobs;
  readonly #s: SeqShape;
  readonly #lowBit: LowBitTier;
  readonly #ring: RecentRing;
  readonly #pending: Float32Array[]; // [numLayers] keys of the open key group: [keyGroupSize, numKvHeads, headDim]

  constructor(tier: HostDeviceTier, s: SeqShape, k: KiviKnobs) {
    this.#k = k;
    this.#s = s;
    this.#lowBit = new LowBitTier({ tier, ...lowBitShape(s, k) });
    try {
      this.#ring = new RecentRing(tier, { ...s, window: k.window });
    } catch (err) {
      this.#lowBit.dispose();
      throw err;
    }
    this.#pending = Array.from({ length: s.numLayers }, () => new Float32Array(k.keyGroupSize * s.numKvHeads * s.headDim));
  }

  /** Values are quantized at once; keys when their group completes; the newest tokens also go into the window. */
  onWrite(layer: number, start: number, k: Float32Array, v: Float32Array): void {
    this.#lowBit.appendValues(layer, v, start);
    this.#ring.write(layer, start, k, v);
    const row = this.#s.numKvHeads * this.#s.headDim;
    const KG = this.#k.keyGroupSize;
    const pending = this.#pending[layer];
    const T = k.length / row;
    for (let t = 0; t < T; t++) {
      const pos = start + t;
      pending.set(k.subarray(t * row, (t + 1) * row), (pos % KG) * row);
      // A sequence's last, incomplete group stays in the window only: the low-bit copy has no room for it.
      if (pos % KG === KG - 1 && Math.floor(pos / KG) < this.#lowBit.maxGroups) this.#lowBit.appendKeyGroup(layer, pending, Math.floor(pos / KG));
    }
  }

  /** q, out [numKvHeads, G, headDim]; lse [numKvHeads, G]: exact window, merged with the low-bit rest. */
  async attend(call: LayerCall, q: Float32Array, out: Float32Array, lse: Float32Array): Promise<void> {
    const { layer, cache, seq, groupSize: G, scale, stats } = call;
    const { numKvHeads: H, headDim: D } = this.#s;
    const t0 = performance.now();
    const n = cache.store.numTokens(seq); // bookkeeping only: no host KV is read
    const { lowBitEnd, exclude } = kiviSplit(n, this.#k.window, this.#lowBit.quantizedTokens(layer));
    const oTail = new Float32Array(G * D); // [G, D]
    const lTail = new Float32Array(G); // [G]
    for (let h = 0; h < H; h++) {
      const qh = q.subarray(h * G * D, (h + 1) * G * D);
      const o = out.subarray(h * G * D, (h + 1) * G * D);
      const l = lse.subarray(h * G, (h + 1) * G);
      this.#ring.attend(layer, h, lowBitEnd, qh, scale, o, l);
      if (lowBitEnd === 0) continue;
      this.#lowBit.attendTail(layer, h, qh, scale, exclude, oTail, lTail);
      native().lseMerge({ rows: G, headDim: D, oA: o, lseA: l, oB: oTail, lseB: lTail, out: o, lseOut: l });
    }
    stats.deviceMs += performance.now() - t0;
  }

  async settle(): Promise<void> {}

  dispose(): void {
    this.#lowBit.dispose();
    this.#ring.dispose();
  }
}

const full = (k: Knobs): KiviKnobs => ({ ...KIVI_DEFAULTS, ...k }) as KiviKnobs;

/** Under a budget kivi keeps its bits (the knob says how lossy it is) and gives up window, then finer key groups. */
function candidates(given: Knobs): Knobs[] {
  const groups = given.keyGroupSize !== undefined ? [given.keyGroupSize] : [32, 64];
  const out: Knobs[] = [];
  for (const keyGroupSize of groups) {
    const windows = given.window !== undefined ? [given.window] : halvingsTo(KIVI_DEFAULTS.window, keyGroupSize);
    for (const window of windows) if (window >= keyGroupSize) out.push({ ...full(given), keyGroupSize, window });
  }
  return out;
}

export const kiviPolicy: PolicySpec = {
  name: 'kivi', kvHome: 'host', stagesLayer: false, speculative: false,
  knobs: z.object({
    bits: z.literal([2, 4]),
    window: z.number().int().min(1).max(1 << 20),
    keyGroupSize: z.literal([32, 64]),
  }).partial().strict().superRefine((k, ctx) => {
    const group = k.keyGroupSize ?? KIVI_DEFAULTS.keyGroupSize;
    if (k.window !== undefined && k.window < group) ctx.addIssue({ code: 'custom', path: ['window'], message: `at least keyGroupSize (${group})` });
  }),
  candidates,
  seqParts: (s, k) => kiviDeviceParts(s, full(k)),
  openSeq: (tier, s, k) => new KiviAttention(tier, s, full(k)),
};
