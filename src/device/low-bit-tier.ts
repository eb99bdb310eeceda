// LowBitTier: the KIVI low-bit copy of every layer's K and V, held in the device tier; scores and attends the quantized tail.
import { KvoffArgumentError, KvoffCapacityError, KvoffDisposedError, KvoffRangeError } from '../errors.js';
import { native, type ArenaRef } from '../native.js';
import type { HostDeviceTier } from './device-tier.js';
import { DEFAULT_TIER_ALIGNMENT, alignUp } from './tier-allocator.js';

export type LowBitBits = 1 | 2 | 4;

/** The shape of the low-bit copy; everything bytesFor needs. */
export interface LowBitShape {
  numLayers: number;
  numKvHeads: number;
  headDim: number; // D
  bits: LowBitBits;
  keyGroupSize: 32 | 64; // tokens per key quantization group (keys are quantized per channel over these tokens)
  valueGroupSize: number; // channels per value quantization group; divides headDim
  capacityTokens: number; // tokens per (layer, kvHead) the values can hold; keys hold floor(capacity / keyGroupSize) groups
  keysOnly?: boolean; // no value copy: for policies that only score with the low-bit keys (exact)
}

export interface LowBitTierOptions extends LowBitShape {
  tier: HostDeviceTier;
  tag?: string; // usageByTag key; 'low-bit' unless given
}

export const LOW_BIT_TAG = 'low-bit';

// Sub-buffers inside one layer's allocation start on this boundary: fp16 needs 2, 64 keeps SIMD loads within cache lines.
const SUB_ALIGN = 64;
// Bytes of one stored zero or scale: fp16, as KIVI stores them (f32 would make a 1-bit copy at head_dim 32
// 15.6% of the fp16 KV instead of 10.9%).
const META_BYTES = 2;

/** Byte offsets of one (layer, kvHead) section's six buffers, relative to the section start. */
interface HeadLayout {
  keyCodes: number; // u8  [maxGroups, keyGroupSize, D*bits/8]
  keyZero: number; // fp16 [maxGroups, D]
  keyScale: number; // fp16 [maxGroups, D]
  valueCodes: number; // u8  [capacity, D*bits/8]
  valueZero: number; // fp16 [capacity, D/valueGroupSize]
  valueScale: number; // fp16 [capacity, D/valueGroupSize]
  bytes: number; // the whole section, a multiple of SUB_ALIGN
}

function validateShape(s: LowBitShape): void {
  const posInt = (field: string, v: unknown): void => {
    if (!Number.isSafeInteger(v) || (v as number) < 1) throw new KvoffArgumentError(`LowBitTier ${field}`, 'a positive integer', v);
  };
  if (s === null || typeof s !== 'object') throw new KvoffArgumentError('LowBitTier options', 'an options object', s);
  posInt('numLayers', s.numLayers);
  posInt('numKvHeads', s.numKvHeads);
  posInt('headDim', s.headDim);
  posInt('capacityTokens', s.capacityTokens);
  posInt('valueGroupSize', s.valueGroupSize);
  if (s.bits !== 1 && s.bits !== 2 && s.bits !== 4) throw new KvoffArgumentError('LowBitTier bits', '1, 2 or 4', s.bits);
  if (s.keyGroupSize !== 32 && s.keyGroupSize !== 64) throw new KvoffArgumentError('LowBitTier keyGroupSize', '32 or 64', s.keyGroupSize);
  if ((s.headDim * s.bits) % 8 !== 0) throw new KvoffArgumentError('LowBitTier headDim', `a multiple of ${8 / s.bits} at ${s.bits} bits`, s.headDim);
  if (s.headDim % s.valueGroupSize !== 0) throw new KvoffArgumentError('LowBitTier valueGroupSize', `a divisor of headDim ${s.headDim}`, s.valueGroupSize);
}

function headLayout(s: LowBitShape): HeadLayout {
  const D = s.headDim;
  const rowBytes = (D * s.bits) / 8;
  const maxGroups = Math.floor(s.capacityTokens / s.keyGroupSize);
  const valueGroups = D / s.valueGroupSize;
  let at = 0;
  const take = (bytes: number): number => {
    const start = at;
    at = alignUp(at + bytes, SUB_ALIGN);
    return start;
  };
  const keyCodes = take(maxGroups * s.keyGroupSize * rowBytes);
  const keyZero = take(maxGroups * D * META_BYTES);
  const keyScale = take(maxGroups * D * META_BYTES);
  const valueTokens = s.keysOnly ? 0 : s.capacityTokens;
  const valueCodes = take(valueTokens * rowBytes);
  const valueZero = take(valueTokens * valueGroups * META_BYTES);
  const valueScale = take(valueTokens * valueGroups * META_BYTES);
  return { keyCodes, keyZero, keyScale, valueCodes, valueZero, valueScale, bytes: at };
}

/** Requested bytes of one layer's allocation: every kvHead's section back to back. */
function layerBytes(s: LowBitShape): number {
  return headLayout(s).bytes * s.numKvHeads;
}

export class LowBitTier {
  readonly numLayers: number;
  readonly numKvHeads: number;
  readonly headDim: number;
  readonly bits: LowBitBits;
  readonly keyGroupSize: number;
  readonly valueGroupSize: number;
  readonly capacityTokens: number;
  readonly maxGroups: number; // key groups per (layer, kvHead)
  readonly keysOnly: boolean;
  readonly #tier: HostDeviceTier;
  readonly #layout: HeadLayout;
  readonly #rowBytes: number; // packed bytes per token row: D*bits/8
  readonly #layerOffsets: number[]; // [numLayers] tier offsets of each layer's allocation
  readonly #handle: number; // the tier arena's handle, cached so hot paths build refs without a lookup
  readonly #keyGroups: Int32Array; // [numLayers] complete key groups quantized (contiguous from 0)
  readonly #valueTokens: Int32Array; // [numLayers] value tokens quantized (contiguous from 0)
  #scratch = new Float32Array(0); // [>= rows, D] one head's rows, transposed out of [rows, numKvHeads, D]
  #live = true;

  /** Exact bytes the constructor takes from a tier of the given alignment (or opts.tier's), for budget planning. */
  static bytesFor(opts: LowBitShape & { tier?: HostDeviceTier; alignment?: number }): number {
    validateShape(opts);
    const alignment = opts.tier ? opts.tier.alignment : (opts.alignment ?? DEFAULT_TIER_ALIGNMENT);
    return opts.numLayers * alignUp(layerBytes(opts), alignment);
  }

  constructor(opts: LowBitTierOptions) {
    validateShape(opts);
    const tag = opts.tag ?? LOW_BIT_TAG;
    this.numLayers = opts.numLayers;
    this.numKvHeads = opts.numKvHeads;
    this.headDim = opts.headDim;
    this.bits = opts.bits;
    this.keyGroupSize = opts.keyGroupSize;
    this.valueGroupSize = opts.valueGroupSize;
    this.capacityTokens = opts.capacityTokens;
    this.maxGroups = Math.floor(opts.capacityTokens / opts.keyGroupSize);
    this.keysOnly = opts.keysOnly ?? false;
    this.#tier = opts.tier;
    this.#layout = headLayout(opts);
    this.#rowBytes = (opts.headDim * opts.bits) / 8;
    this.#handle = opts.tier.handle;
    this.#keyGroups = new Int32Array(opts.numLayers);
    this.#valueTokens = new Int32Array(opts.numLayers);
    this.#layerOffsets = this.#allocateLayers(tag, layerBytes(opts));
  }

  get live(): boolean {
    return this.#live;
  }

  /** Tokens covered by complete key groups of this layer: the range score/attendTail work over. */
  quantizedTokens(layer: number): number {
    this.#check();
    this.#checkLayer(layer);
    return this.#keyGroups[layer]! * this.keyGroupSize;
  }

  /** Value tokens quantized so far in this layer (may run ahead of quantizedTokens). */
  valueTokens(layer: number): number {
    this.#check();
    this.#checkLayer(layer);
    return this.#valueTokens[layer]!;
  }

  /**
   * Quantizes v [n, numKvHeads, D] into token positions [start, start + n) of every head.
   * Values are quantized per token, so no grouping along tokens is needed and they go in at once.
   * start may rewrite earlier positions but never leave a gap.
   */
  appendValues(layer: number, v: Float32Array, start: number): void {
    this.#check();
    this.#checkLayer(layer);
    const D = this.headDim;
    const H = this.numKvHeads;
    if (!(v instanceof Float32Array) || v.length % (H * D) !== 0) {
      throw new KvoffArgumentError('LowBitTier.appendValues v', `a Float32Array of n * ${H} * ${D} elements ([n, numKvHeads, headDim])`, v);
    }
    if (this.keysOnly) throw new KvoffArgumentError('LowBitTier.appendValues', 'a tier created without keysOnly', 'one that holds keys only');
    const n = v.length / (H * D);
    const have = this.#valueTokens[layer]!;
    if (!Number.isSafeInteger(start) || start < 0 || start > have) throw new KvoffRangeError('LowBitTier.appendValues start', start, 0, have);
    if (start + n > this.capacityTokens) {
      throw new KvoffCapacityError('low-bit value tokens', start + n, this.capacityTokens, 'raise capacityTokens of the low-bit tier');
    }
    if (n === 0) return;
    const vg = D / this.valueGroupSize;
    for (let h = 0; h < H; h++) {
      const src = this.#gatherHead(v, n, h); // [n, D]
      const base = this.#sectionBase(layer, h);
      native().kiviQuantizeValues({
        bits: this.bits, headDim: D, groupSize: this.valueGroupSize, numTokens: n, src,
        codes: this.#ref(base + this.#layout.valueCodes + start * this.#rowBytes), // u8 [n, D*bits/8]
        zero: this.#ref(base + this.#layout.valueZero + start * vg * META_BYTES), // fp16 [n, D/valueGroupSize]
        scale: this.#ref(base + this.#layout.valueScale + start * vg * META_BYTES), // fp16 [n, D/valueGroupSize]
      });
    }
    this.#valueTokens[layer] = Math.max(have, start + n);
  }

  /**
   * Quantizes one complete key group k [keyGroupSize, numKvHeads, D] as group `group` of every head
   * (tokens [group * keyGroupSize, (group + 1) * keyGroupSize)). Keys are quantized per channel over
   * the group's tokens, so only whole groups come here; the partial group stays full precision in the
   * caller's recent window (KIVI's residual). group may rewrite an earlier group but never leave a gap.
   */
  appendKeyGroup(layer: number, k: Float32Array, group: number): void {
    this.#check();
    this.#checkLayer(layer);
    const D = this.headDim;
    const H = this.numKvHeads;
    const KG = this.keyGroupSize;
    if (!(k instanceof Float32Array) || k.length !== KG * H * D) {
      throw new KvoffArgumentError('LowBitTier.appendKeyGroup k', `a Float32Array(${KG * H * D}) ([keyGroupSize ${KG}, numKvHeads ${H}, headDim ${D}])`, k);
    }
    const have = this.#keyGroups[layer]!;
    if (!Number.isSafeInteger(group) || group < 0 || group > have) throw new KvoffRangeError('LowBitTier.appendKeyGroup group', group, 0, have);
    if (group >= this.maxGroups) {
      throw new KvoffCapacityError('low-bit key groups', group + 1, this.maxGroups, `capacityTokens ${this.capacityTokens} holds ${this.maxGroups} groups of ${KG}`);
    }
    for (let h = 0; h < H; h++) {
      const src = this.#gatherHead(k, KG, h); // [1, keyGroupSize, D]
      const base = this.#sectionBase(layer, h);
      native().kiviQuantizeKeys({
        bits: this.bits, headDim: D, groupSize: KG, numGroups: 1, src,
        codes: this.#ref(base + this.#layout.keyCodes + group * KG * this.#rowBytes), // u8 [1, KG, D*bits/8]
        zero: this.#ref(base + this.#layout.keyZero + group * D * META_BYTES), // fp16 [1, D]
        scale: this.#ref(base + this.#layout.keyScale + group * D * META_BYTES), // fp16 [1, D]
      });
    }
    this.#keyGroups[layer] = Math.max(have, group + 1);
  }

  /**
   * Approximate scores over the quantized tokens of one KV head: out[t] = mean over the G query heads
   * of q_g · dequant(K)_t. q [G, D]; out [>= quantizedTokens], only the first quantizedTokens written.
   */
  score(layer: number, kvHead: number, q: Float32Array, out: Float32Array): void {
    this.#check();
    this.#checkHead(layer, kvHead);
    const G = this.#queryHeads('score', q);
    const n = this.#keyGroups[layer]! * this.keyGroupSize;
    if (!(out instanceof Float32Array) || out.length < n) {
      throw new KvoffArgumentError('LowBitTier.score out', `a Float32Array of at least quantizedTokens ${n} elements`, out);
    }
    if (n === 0) return;
    const base = this.#sectionBase(layer, kvHead);
    native().kiviScoreKeys({
      bits: this.bits, headDim: this.headDim, groupSize: this.keyGroupSize, numGroups: this.#keyGroups[layer]!,
      queryHeads: G, q,
      codes: this.#ref(base + this.#layout.keyCodes), // u8 [groups, KG, D*bits/8]
      zero: this.#ref(base + this.#layout.keyZero), // fp16 [groups, D]
      scale: this.#ref(base + this.#layout.keyScale), // fp16 [groups, D]
      out: out.length === n ? out : out.subarray(0, n), // native wants the exact length
    });
  }

  /**
   * Softmax attention of q [G, D] over the quantized tokens of one KV head minus `exclude` (sorted,
   * strictly increasing positions in [0, quantizedTokens) that are attended in full precision
   * elsewhere). Writes out [G, D] and lse [G] for the log-sum-exp merge; with nothing left to attend,
   * out is zeros and lse is -inf, which the merge treats as an empty part.
   */
  attendTail(layer: number, kvHead: number, q: Float32Array, scale: number, exclude: Int32Array | undefined, out: Float32Array, lse: Float32Array): void {
    this.#check();
    this.#checkHead(layer, kvHead);
    const D = this.headDim;
    const G = this.#queryHeads('attendTail', q);
    if (!(out instanceof Float32Array) || out.length !== G * D) throw new KvoffArgumentError('LowBitTier.attendTail out', `a Float32Array(${G * D}) ([G, headDim])`, out);
    if (!(lse instanceof Float32Array) || lse.length !== G) throw new KvoffArgumentError('LowBitTier.attendTail lse', `a Float32Array(${G}) ([G])`, lse);
    if (!Number.isFinite(scale)) throw new KvoffArgumentError('LowBitTier.attendTail scale', 'a finite number', scale);
    if (exclude !== undefined && !(exclude instanceof Int32Array)) throw new KvoffArgumentError('LowBitTier.attendTail exclude', 'an Int32Array or undefined', exclude);
    const groups = this.#keyGroups[layer]!;
    const n = groups * this.keyGroupSize;
    // Keys without values would attend to whatever bytes the tier held before: refuse instead.
    if (this.#valueTokens[layer]! < n) {
      throw new KvoffRangeError('LowBitTier.attendTail value tokens', this.#valueTokens[layer]!, n, this.capacityTokens);
    }
    const base = this.#sectionBase(layer, kvHead);
    native().kiviAttend({
      bits: this.bits, headDim: D, keyGroupSize: this.keyGroupSize, valueGroupSize: this.valueGroupSize, numGroups: groups,
      queryHeads: G, q, scale,
      keyCodes: this.#ref(base + this.#layout.keyCodes), // u8 [groups, KG, D*bits/8]
      keyZero: this.#ref(base + this.#layout.keyZero), // fp16 [groups, D]
      keyScale: this.#ref(base + this.#layout.keyScale), // fp16 [groups, D]
      valueCodes: this.#ref(base + this.#layout.valueCodes), // u8 [n, D*bits/8]
      valueZero: this.#ref(base + this.#layout.valueZero), // fp16 [n, D/valueGroupSize]
      valueScale: this.#ref(base + this.#layout.valueScale), // fp16 [n, D/valueGroupSize]
      ...(exclude !== undefined && exclude.length > 0 ? { exclude } : {}),
      out,
      lse,
    });
  }

  /** Forgets every layer's contents without freeing (e.g. a new sequence); bytes are overwritten as it refills. */
  clear(): void {
    this.#check();
    this.#keyGroups.fill(0);
    this.#valueTokens.fill(0);
  }

  /** Idempotent; returns this tier's allocations to the device tier (which itself stays alive). */
  dispose(): void {
    if (!this.#live) return;
    this.#live = false;
    // The tier may already be gone (disposed first); its memory went with it.
    if (this.#tier.live) for (const off of this.#layerOffsets) this.#tier.free(off);
    this.#layerOffsets.length = 0;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  /** One allocation per layer; on failure frees what it took so a failed constructor leaks nothing. */
  #allocateLayers(tag: string, bytes: number): number[] {
    const offsets: number[] = [];
    try {
      for (let l = 0; l < this.numLayers; l++) offsets.push(this.#tier.allocate(bytes, tag).offset);
    } catch (err) {
      for (const off of offsets) this.#tier.free(off);
      throw err;
    }
    return offsets;
  }

  /** Tier byte offset of (layer, kvHead)'s section. */
  #sectionBase(layer: number, kvHead: number): number {
    return this.#layerOffsets[layer]! + kvHead * this.#layout.bytes;
  }

  #ref(offset: number): ArenaRef {
    return { handle: this.#handle, offset };
  }

  /** Copies head h's rows out of src [rows, numKvHeads, D] into a reused [rows, D] scratch (native kernels take one head, dense). */
  #gatherHead(src: Float32Array, rows: number, h: number): Float32Array {
    const D = this.headDim;
    const H = this.numKvHeads;
    if (this.#scratch.length < rows * D) this.#scratch = new Float32Array(rows * D);
    const dst = this.#scratch.subarray(0, rows * D); // [rows, D]
    for (let t = 0; t < rows; t++) dst.set(src.subarray((t * H + h) * D, (t * H + h + 1) * D), t * D);
    return dst;
  }

  /** G (query heads per KV head) implied by q [G, D]. */
  #queryHeads(fn: string, q: Float32Array): number {
    const D = this.headDim;
    if (!(q instanceof Float32Array) || q.length === 0 || q.length % D !== 0) {
      throw new KvoffArgumentError(`LowBitTier.${fn} q`, `a non-empty Float32Array of G * ${D} elements ([G, headDim])`, q);
    }
    return q.length / D;
  }

  #checkLayer(layer: number): void {
    if (!Number.isSafeInteger(layer) || layer < 0 || layer >= this.numLayers) throw new KvoffRangeError('LowBitTier layer', layer, 0, this.numLayers - 1);
  }

  #checkHead(layer: number, kvHead: number): void {
    this.#checkLayer(layer);
    if (!Number.isSafeInteger(kvHead) || kvHead < 0 || kvHead >= this.numKvHeads) throw new KvoffRangeError('LowBitTier kvHead', kvHead, 0, this.numKvHeads - 1);
  }

  #check(): void {
    if (!this.#live || !this.#tier.live) throw new KvoffDisposedError('LowBitTier');
  }
}
