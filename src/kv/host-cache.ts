// HostKvCache: the full-precision paged KV cache of every layer in one page-locked arena, with the
// sequence store's block tables shared by all layers (a token has one slot, in each layer's region).
import { HostArena } from '../arena.js';
import { KvoffArgumentError } from '../errors.js';
import { native, type ArenaRef, type KvDtype, type KvRegion } from '../native.js';
import { fromHalf } from '../kernels/half.js';
import { SequenceStore } from './sequence-store.js';

export interface HostKvShape {
  numLayers: number;
  numKvHeads: number;
  headDim: number;
  blockSize: number;
  numBlocks: number;
  dtype: KvDtype;
}

/** Bytes of one block of one layer: [numKvHeads, blockSize, 2 (K,V), headDim] of 16-bit values. */
export function kvBlockBytes(s: Pick<HostKvShape, 'numKvHeads' | 'headDim' | 'blockSize'>): number {
  return s.numKvHeads * s.blockSize * 2 * s.headDim * 2;
}

export interface HostKvCacheOptions {
  pin?: boolean;
  /** Place the layers at this arena offset (e.g. inside the device tier) instead of owning an arena. */
  at?: ArenaRef;
}

export class HostKvCache {
  readonly shape: HostKvShape;
  readonly blockBytes: number;
  readonly layerBytes: number;
  readonly bytes: number; // all layers: [numLayers, numBlocks, numKvHeads, blockSize, 2, headDim] of 16-bit values
  readonly handle: number;
  readonly baseOffset: number;
  readonly store: SequenceStore;
  readonly #owned: HostArena | null;

  constructor(shape: HostKvShape, opts: HostKvCacheOptions = {}) {
    for (const key of ['numLayers', 'numKvHeads', 'headDim', 'blockSize', 'numBlocks'] as const) {
      const v = shape[key];
      if (!Number.isSafeInteger(v) || v < 1) throw new KvoffArgumentError(`HostKvCache ${key}`, 'a positive integer', v);
    }
    this.shape = { ...shape };
    this.blockBytes = kvBlockBytes(shape);
    this.layerBytes = this.blockBytes * shape.numBlocks;
    this.bytes = this.layerBytes * shape.numLayers;
    this.store = new SequenceStore({ numBlocks: shape.numBlocks, blockSize: shape.blockSize });
    try {
      this.#owned = opts.at ? null : new HostArena(this.bytes, { pin: opts.pin });
    } catch (err) {
      this.store.dispose();
      throw err;
    }
    this.handle = opts.at ? opts.at.handle : this.#owned!.handle;
    this.baseOffset = opts.at ? opts.at.offset : 0;
  }


  static bytesFor(shape: HostKvShape): number {
    return kvBlockBytes(shape) * shape.numBlocks * shape.numLayers;
  }

  region(layer: number): KvRegion {
    if (!Number.isInteger(layer) || layer < 0 || layer >= this.shape.numLayers)
      throw new KvoffArgumentError('layer', `an integer in [0, ${this.shape.numLayers - 1}]`, layer);
    const { numBlocks, numKvHeads, headDim, blockSize, dtype } = this.shape;
    return { handle: this.handle, offset: this.baseOffset + layer * this.layerBytes, numBlocks, numKvHeads, headDim, blockSize, dtype };
  }

  /**
   * Reserves slots for n new tokens of a sequence; copy-on-write of a shared partial block is done
   * here, for every layer, before anyone writes. Returns the slots [n].
   */
  reserve(seqId: number, n: number): Int32Array {
    const { slots, copies } = this.store.appendTokens(seqId, n);
    for (let i = 0; i < copies.length; i += 2) {
      for (let l = 0; l < this.shape.numLayers; l++) {
        const base = this.baseOffset + l * this.layerBytes;
        native().arenaCopy({
          srcHandle: this.handle, srcOffset: base + copies[i] * this.blockBytes,
          dstHandle: this.handle, dstOffset: base + copies[i + 1] * this.blockBytes, bytes: this.blockBytes,
        });
      }
    }
    return slots;
  }

  /** Writes K and V rows, [slots.length, numKvHeads, headDim] each, into one layer. */
  write(layer: number, slots: Int32Array, k: Float32Array, v: Float32Array): void {
    native().kvAppend({ ...this.region(layer), slots, k, v });
  }

  /**
   * Reads back K and V of positions [start, start + n) of a sequence in one layer, as float32
   * [n, numKvHeads, headDim] each: what a policy needs to rebuild its device state from a shared prefix.
   */
  readTokens(layer: number, seqId: number, start: number, n: number): { k: Float32Array; v: Float32Array } {
    const { numKvHeads: H, headDim: D, blockSize: bs, dtype } = this.shape;
    const ids = this.store.blockIds(seqId);
    const k = new Float32Array(n * H * D);
    const v = new Float32Array(n * H * D);
    const base = this.baseOffset + layer * this.layerBytes;
    for (let b = Math.floor(start / bs); b * bs < start + n; b++) {
      const raw = native().arenaRead({ handle: this.handle, offset: base + ids[b] * this.blockBytes, bytes: this.blockBytes });
      const block = new Uint16Array(raw.buffer, raw.byteOffset, raw.byteLength / 2); // [H, bs, 2, D]
      for (let o = Math.max(0, start - b * bs); o < bs && b * bs + o < start + n; o++) {
        const t = b * bs + o - start;
        for (let h = 0; h < H; h++) {
          const row = (h * bs + o) * 2 * D;
          for (let c = 0; c < D; c++) {
            k[(t * H + h) * D + c] = fromHalf(block[row + c], dtype);
            v[(t * H + h) * D + c] = fromHalf(block[row + D + c], dtype);
          }
        }
      }
    }
    return { k, v };
  }

  /** Frees the block tables, and the arena when the cache owns it (a placed cache's memory belongs to its owner). */
  dispose(): void {
    this.store.dispose();
    this.#owned?.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
