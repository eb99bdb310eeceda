// The last `window` tokens of every (layer, KV head) in full precision in the device tier: a ring indexed by
// position % window, written as tokens arrive and attended exactly (KIVI's full-precision residual).
import type { HostDeviceTier, TierBuffer } from '../device/device-tier.js';
import { native, type KvDtype, type KvRegion } from '../native.js';

export interface RecentRingShape {
  numLayers: number;
  numKvHeads: number;
  headDim: number;
  dtype: KvDtype;
  window: number; // slots per (layer, KV head)
}

export class RecentRing {
  readonly shape: RecentRingShape;
  readonly #tier: HostDeviceTier;
  readonly #buffer: TierBuffer; // [numLayers, window, numKvHeads, 2, headDim] of 16-bit values
  readonly #end: Int32Array; // [numLayers] position after the newest token written

  static bytesFor(s: RecentRingShape): number {
    return s.numLayers * s.window * s.numKvHeads * 2 * s.headDim * 2;
  }

  constructor(tier: HostDeviceTier, shape: RecentRingShape, tag = 'window') {
    this.shape = { ...shape };
    this.#tier = tier;
    this.#buffer = tier.allocate(RecentRing.bytesFor(shape), tag);
    this.#end = new Int32Array(shape.numLayers);
  }

  /**
   * A layer's ring as a paged region of one-token blocks holding every head: slot = position % window, so
   * kvAppend writes all heads of a token at once and kvAttend reads any slots in any order.
   */
  region(layer: number): KvRegion {
    const { window, numKvHeads, headDim, dtype } = this.shape;
    const offset = this.#buffer.ref.offset + layer * RecentRing.bytesFor({ ...this.shape, numLayers: 1 });
    return { handle: this.#buffer.ref.handle, offset, numBlocks: window, numKvHeads, headDim, blockSize: 1, dtype };
  }

  /** Tokens [start, start + T) arrived: k, v [T, numKvHeads, headDim]; only the newest `window` can stay. */
  write(layer: number, start: number, k: Float32Array, v: Float32Array): void {
    const { window: W, numKvHeads: H, headDim: D } = this.shape;
    const T = k.length / (H * D);
    const skip = Math.max(0, T - W);
    const slots = Int32Array.from({ length: T - skip }, (_, i) => (start + skip + i) % W);
    if (slots.length > 0) native().kvAppend({ ...this.region(layer), slots, k: k.subarray(skip * H * D), v: v.subarray(skip * H * D) });
    this.#end[layer] = Math.max(this.#end[layer], start + T);
  }

  /** Exact attention of q [G, headDim] over positions [from, end) of one head, all still in the ring. */
  attend(layer: number, head: number, from: number, q: Float32Array, scale: number, out: Float32Array, lse: Float32Array): void {
    const { window: W, headDim: D } = this.shape;
    const end = this.#end[layer];
    if (from < end - W) throw new Error(`RecentRing.attend: position ${from} has left the ring (window ${W}, end ${end})`);
    const slots = Int32Array.from({ length: Math.max(0, end - from) }, (_, i) => (from + i) % W);
    native().kvAttend({ ...this.region(layer), blockIds: slots, numTokens: slots.length, kvHeads: Int32Array.of(head), groupSize: q.length / D, q, scale, out, lse });
  }

  dispose(): void {
    if (this.#tier.live) this.#tier.free(this.#buffer.offset);
  }
}
