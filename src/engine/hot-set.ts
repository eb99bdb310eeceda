// The resident hot set of each (layer, KV head) in the device tier: full-precision (token, head) units in
// slots. A step keeps the units it still wants (hits) and gathers only the misses, in one batched call.
import type { HostDeviceTier, TierBuffer } from '../device/device-tier.js';
import { native, type KvDtype, type KvRegion } from '../native.js';

export interface HotSetShape {
  numLayers: number;
  numKvHeads: number;
  headDim: number;
  dtype: KvDtype;
  capacity: number; // slots per (layer, KV head)
}

const unitBytes = (headDim: number) => 2 * headDim * 2; // K and V rows, 16-bit

export class HotSet {
  readonly shape: HotSetShape;
  readonly #buffer: TierBuffer; // [numLayers, numKvHeads, capacity, 2, headDim]
  readonly #resident: Map<number, number>[]; // [numLayers * numKvHeads] position -> slot

  static bytesFor(s: HotSetShape): number {
    return s.numLayers * s.numKvHeads * s.capacity * unitBytes(s.headDim);
  }

  constructor(tier: HostDeviceTier, shape: HotSetShape) {
    this.shape = { ...shape };
    this.#buffer = tier.allocate(HotSet.bytesFor(shape), 'hot');
    this.#resident = Array.from({ length: shape.numLayers * shape.numKvHeads }, () => new Map());
  }

  /** One head's slots as a paged region of one-token blocks, so kvAttend reads them by slot id in any order. */
  region(layer: number, head: number): KvRegion {
    const { numKvHeads, headDim, dtype, capacity } = this.shape;
    const offset = this.#buffer.ref.offset + (layer * numKvHeads + head) * capacity * unitBytes(headDim);
    return { handle: this.#buffer.ref.handle, offset, numBlocks: capacity, numKvHeads: 1, headDim, blockSize: 1, dtype };
  }

  /** What (layer, head) holds now: positions (sorted) and their slots. */
  resident(layer: number, head: number): { positions: Int32Array; slots: Int32Array } {
    const r = this.#resident[layer * this.shape.numKvHeads + head];
    const positions = Int32Array.from(r.keys()).sort();
    return { positions, slots: Int32Array.from(positions, (p) => r.get(p)!) };
  }

  /** Evicts what `want` drops and assigns slots to its misses; returns the gather to run, if any. */
  #plan(layer: number, head: number, want: Int32Array, src: { region: KvRegion; blockIds: Int32Array }) {
    const resident = this.#resident[layer * this.shape.numKvHeads + head];
    const wanted = new Set(want);
    const used = new Set<number>();
    for (const [pos, slot] of resident) {
      if (wanted.has(pos)) used.add(slot);
      else resident.delete(pos);
    }
    const free: number[] = [];
    for (let s = this.shape.capacity - 1; s >= 0; s--) if (!used.has(s)) free.push(s);
    const missPos: number[] = [];
    const missSlot: number[] = [];
    for (const p of want) {
      if (resident.has(p)) continue;
      const slot = free.pop()!;
      resident.set(p, slot);
      missPos.push(p);
      missSlot.push(slot);
    }
    const r = this.region(layer, head);
    const gather = missPos.length === 0 ? null : {
      ...src.region, blockIds: src.blockIds, kvHeads: Int32Array.of(head), n: missPos.length, positions: Int32Array.from(missPos),
      dst: { handle: r.handle, offset: r.offset }, dstSlots: Int32Array.from(missSlot), dstCapacity: this.shape.capacity,
    };
    return { gather, hits: want.length - missPos.length, misses: missPos.length, resident };
  }

  /**
   * Makes `want` (sorted positions, at most `capacity`) resident for (layer, head), fetching misses from
   * `src` (the host cache layer and the sequence's block table). Returns the slot of each wanted position.
   */
  update(layer: number, head: number, want: Int32Array, src: { region: KvRegion; blockIds: Int32Array }): { slots: Int32Array; hits: number; misses: number } {
    const { gather, hits, misses, resident } = this.#plan(layer, head, want, src);
    if (gather) native().kvGather(gather);
    return { slots: Int32Array.from(want, (p) => resident.get(p)!), hits, misses };
  }

  /**
   * Starts fetching the misses of `want` on the copy thread and returns at once: the prefetch of the next
   * step. Everything in `want` must already be in the host cache. Resolves with the units fetched.
   */
  prefetch(layer: number, head: number, want: Int32Array, src: { region: KvRegion; blockIds: Int32Array }): Promise<number> {
    const { gather, misses } = this.#plan(layer, head, want, src);
    return gather ? native().kvGatherAsync(gather).then(() => misses) : Promise.resolve(0);
  }
}
