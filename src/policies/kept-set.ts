// The kept set of an eviction policy in the device tier: per (layer, KV head) a fixed number of slots, each one
// full-precision (token, head) unit. Decode attends only what is here; an evicted token is gone for good.
import type { HostDeviceTier, TierBuffer } from '../device/device-tier.js';
import { unitBytes } from '../kernels/paged-kv.js';
import { native, type KvDtype, type KvRegion } from '../native.js';

export interface KeptShape {
  numLayers: number;
  numKvHeads: number;
  headDim: number;
  dtype: KvDtype;
  capacities: number[]; // [numLayers] slots per KV head of each layer (pyramid: shrinking with depth)
}

export class KeptSet {
  readonly shape: KeptShape;
  readonly #tier: HostDeviceTier;
  readonly #buffer: TierBuffer; // [sum over layers of numKvHeads * capacities[l], 2, headDim] of 16-bit values
  readonly #firstUnit: number[]; // [numLayers] index of layer l's first unit in the buffer
  // Per (layer, head): the position held by each slot, -1 when free. Index [layer * numKvHeads + head].
  readonly #positions: Int32Array[]; // each [capacities[layer]]
  readonly #counts: Int32Array; // [numLayers * numKvHeads] slots in use

  static bytesFor(s: KeptShape): number {
    return s.capacities.reduce((n, c) => n + c, 0) * s.numKvHeads * unitBytes(s.headDim);
  }

  constructor(tier: HostDeviceTier, shape: KeptShape) {
    for (const c of shape.capacities) if (!Number.isSafeInteger(c) || c < 1) throw new Error(`KeptSet: capacity ${c} per head, expected >= 1`);
    this.shape = { ...shape, capacities: [...shape.capacities] };
    this.#tier = tier;
    this.#buffer = tier.allocate(KeptSet.bytesFor(shape), 'kept');
    this.#firstUnit = [];
    let unit = 0;
    for (const c of shape.capacities) {
      this.#firstUnit.push(unit);
      unit += c * shape.numKvHeads;
    }
    this.#positions = [];
    for (let l = 0; l < shape.numLayers; l++) {
      for (let h = 0; h < shape.numKvHeads; h++) this.#positions.push(new Int32Array(shape.capacities[l]).fill(-1));
    }
    this.#counts = new Int32Array(shape.numLayers * shape.numKvHeads);
  }

  capacity(layer: number): number {
    return this.shape.capacities[layer];
  }

  /** One head's slots as a paged region of one-token blocks, so kvAttend / kvScores read them by slot id. */
  region(layer: number, head: number): KvRegion {
    const { headDim, dtype } = this.shape;
    const offset = this.#buffer.ref.offset + (this.#firstUnit[layer] + head * this.shape.capacities[layer]) * unitBytes(headDim);
    return { handle: this.#buffer.ref.handle, offset, numBlocks: this.shape.capacities[layer], numKvHeads: 1, headDim, blockSize: 1, dtype };
  }

  /** The position in each slot of (layer, head), -1 when free: [capacity]. Read-only for callers. */
  positions(layer: number, head: number): Int32Array {
    return this.#positions[layer * this.shape.numKvHeads + head];
  }

  count(layer: number, head: number): number {
    return this.#counts[layer * this.shape.numKvHeads + head];
  }

  /** Slots in use, in slot order: the block list kvAttend and kvScores take. */
  usedSlots(layer: number, head: number): Int32Array {
    const pos = this.positions(layer, head);
    const out = new Int32Array(this.count(layer, head));
    for (let s = 0, o = 0; s < pos.length; s++) if (pos[s] >= 0) out[o++] = s;
    return out;
  }

  /**
   * Fills an empty (layer, head) with `positions` copied from the host cache (`src`: the layer's region and
   * the sequence's block table), into slots 0..n-1: the one-shot selection at the end of prefill.
   */
  fill(layer: number, head: number, positions: Int32Array, src: { region: KvRegion; blockIds: Int32Array }): void {
    const i = layer * this.shape.numKvHeads + head;
    if (this.#counts[i] !== 0) throw new Error(`KeptSet.fill: layer ${layer} head ${head} is not empty`);
    if (positions.length > this.capacity(layer)) throw new Error(`KeptSet.fill: ${positions.length} positions exceed capacity ${this.capacity(layer)}`);
    if (positions.length === 0) return;
    const slots = Int32Array.from({ length: positions.length }, (_, s) => s);
    const r = this.region(layer, head);
    native().kvGather({
      ...src.region, blockIds: src.blockIds, kvHeads: Int32Array.of(head), n: positions.length, positions,
      dst: { handle: r.handle, offset: r.offset }, dstSlots: slots, dstCapacity: this.capacity(layer),
    });
    this.#positions[i].set(positions);
    this.#counts[i] = positions.length;
  }

  /** Writes one token's K and V rows (k, v: [headDim]) into a free slot; returns the slot. */
  put(layer: number, head: number, position: number, k: Float32Array, v: Float32Array): number {
    const i = layer * this.shape.numKvHeads + head;
    const slot = this.#positions[i].indexOf(-1);
    if (slot < 0) throw new Error(`KeptSet.put: layer ${layer} head ${head} is full`);
    native().kvAppend({ ...this.region(layer, head), slots: Int32Array.of(slot), k, v });
    this.#positions[i][slot] = position;
    this.#counts[i]++;
    return slot;
  }

  /** Frees a slot: its token is forgotten. */
  evict(layer: number, head: number, slot: number): void {
    const i = layer * this.shape.numKvHeads + head;
    if (this.#positions[i][slot] < 0) throw new Error(`KeptSet.evict: slot ${slot} of layer ${layer} head ${head} is already free`);
    this.#positions[i][slot] = -1;
    this.#counts[i]--;
  }

  dispose(): void {
    if (this.#tier.live) this.#tier.free(this.#buffer.offset);
  }
}
