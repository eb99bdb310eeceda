// Layout of the device tier's KIVI low-bit copy (one layer: a section per KV head, 256-byte aligned buffers),
// the scratch size of cudaKiviAttend, and plain references of the device kernels' token conventions. The
// native side derives the same layout from the same shape fields (native/src/cuda/cuda_lowbit.h).
import { KvoffArgumentError } from '../errors.js';
import { topKRef } from './topk.js';

/** The shape fields every low-bit entry point takes. */
export interface DeviceLowBitShape {
  numKvHeads: number;
  headDim: number; // 32, 64, 128 or 256
  bits: 1 | 2 | 4;
  keyGroupSize: 32 | 64; // tokens per key group (keys are quantized per channel over them)
  valueGroupSize: number; // channels per value group: a multiple of 8 dividing headDim
  capacityTokens: number; // tokens per KV head; keys hold floor(capacity / keyGroupSize) groups
  keysOnly?: boolean; // no value copy (scoring only)
}

/** Byte offsets inside one KV head's section (head h's section starts at h * sectionBytes), and the sizes. */
export interface DeviceLowBitLayout {
  sectionBytes: number; // a multiple of 256
  layerBytes: number; // numKvHeads * sectionBytes
  keyCodes: number; // u8   [maxGroups, keyGroupSize, headDim * bits / 8]
  keyZero: number; // fp16 [maxGroups, headDim]
  keyScale: number; // fp16 [maxGroups, headDim]
  valueCodes: number; // u8   [capacityTokens, headDim * bits / 8] (empty with keysOnly)
  valueZero: number; // fp16 [capacityTokens, headDim / valueGroupSize]
  valueScale: number; // fp16 [capacityTokens, headDim / valueGroupSize]
}

/** Sub-buffer alignment: with a 256-aligned layer base every buffer starts on a full 256-byte boundary. */
export const DEVICE_LOW_BIT_ALIGN = 256;
/** Most tokens per KV head the device kernels index (32-bit token arithmetic with room to spare). */
export const DEVICE_LOW_BIT_MAX_CAPACITY = 1 << 26;
/** Tokens per cudaKiviAttend chunk; chunks sit at absolute multiples of it. */
export const KIVI_ATTEND_CHUNK = 512;
/** Most query heads per KV head cudaKiviAttend takes, over all its rows (rows * groupSize). */
export const KIVI_ATTEND_MAX_G = 16;
/** cudaTopK limits. */
export const TOPK_MAX_N = 1 << 20;
export const TOPK_MAX_K = 4096;

const alignUp = (v: number, a: number): number => Math.ceil(v / a) * a;

function posInt(field: string, v: unknown, max: number): number {
  if (!Number.isSafeInteger(v) || (v as number) < 1 || (v as number) > max) throw new KvoffArgumentError(field, `an integer in [1, ${max}]`, v);
  return v as number;
}

/** Throws KvoffArgumentError naming the first bad field (the same rules as the native entry points). */
export function checkDeviceLowBitShape(s: DeviceLowBitShape): void {
  if (s === null || typeof s !== 'object') throw new KvoffArgumentError('deviceLowBitLayout options', 'an options object', s);
  posInt('numKvHeads', s.numKvHeads, 1024);
  if (![32, 64, 128, 256].includes(s.headDim)) throw new KvoffArgumentError('headDim', '32, 64, 128 or 256', s.headDim);
  if (s.bits !== 1 && s.bits !== 2 && s.bits !== 4) throw new KvoffArgumentError('bits', '1, 2 or 4', s.bits);
  if (s.keyGroupSize !== 32 && s.keyGroupSize !== 64) throw new KvoffArgumentError('keyGroupSize', '32 or 64', s.keyGroupSize);
  const vg = s.valueGroupSize;
  if (!Number.isSafeInteger(vg) || vg < 8 || vg % 8 !== 0 || s.headDim % vg !== 0) {
    throw new KvoffArgumentError('valueGroupSize', `a multiple of 8 that divides headDim ${s.headDim}`, vg);
  }
  posInt('capacityTokens', s.capacityTokens, DEVICE_LOW_BIT_MAX_CAPACITY);
  if (s.keysOnly !== undefined && typeof s.keysOnly !== 'boolean') throw new KvoffArgumentError('keysOnly', 'a boolean or undefined', s.keysOnly);
}

/** The per-layer layout of the device low-bit copy; equal to native cudaLowBitLayout() for the same shape. */
export function deviceLowBitLayout(s: DeviceLowBitShape): DeviceLowBitLayout {
  checkDeviceLowBitShape(s);
  const D = s.headDim;
  const rowBytes = (D * s.bits) / 8;
  const maxGroups = Math.floor(s.capacityTokens / s.keyGroupSize);
  let at = 0;
  const take = (bytes: number): number => {
    const start = at;
    at = alignUp(at + bytes, DEVICE_LOW_BIT_ALIGN);
    return start;
  };
  const keyCodes = take(maxGroups * s.keyGroupSize * rowBytes);
  const keyZero = take(maxGroups * D * 2);
  const keyScale = take(maxGroups * D * 2);
  const valueTokens = s.keysOnly ? 0 : s.capacityTokens;
  const valueCodes = take(valueTokens * rowBytes);
  const valueZero = take(valueTokens * (D / s.valueGroupSize) * 2);
  const valueScale = take(valueTokens * (D / s.valueGroupSize) * 2);
  return { sectionBytes: at, layerBytes: at * s.numKvHeads, keyCodes, keyZero, keyScale, valueCodes, valueZero, valueScale };
}

/** Chunks a token range [first, end) touches (chunks are aligned to absolute multiples of KIVI_ATTEND_CHUNK). */
export function kiviAttendChunks(first: number, end: number): number {
  return end <= first ? 0 : Math.ceil(end / KIVI_ATTEND_CHUNK) - Math.floor(first / KIVI_ATTEND_CHUNK);
}

/**
 * Scratch bytes cudaKiviAttend needs for any range of at most maxTokens tokens and `rows` query rows (default 1):
 * per KV head and chunk, rows * G partial outputs [headDim] f32 plus (max, sum) f32. A range of L tokens spans at
 * most ceil(L / chunk) + 1 chunks.
 */
export function cudaKiviAttendScratchBytes(o: { numKvHeads: number; groupSize: number; headDim: number; maxTokens: number; rows?: number }): number {
  posInt('numKvHeads', o.numKvHeads, 1024);
  posInt('groupSize', o.groupSize, KIVI_ATTEND_MAX_G);
  const rows = o.rows === undefined ? 1 : posInt('rows', o.rows, Math.floor(KIVI_ATTEND_MAX_G / o.groupSize));
  posInt('headDim', o.headDim, 4096);
  if (!Number.isSafeInteger(o.maxTokens) || o.maxTokens < 0) throw new KvoffArgumentError('maxTokens', 'a non-negative integer', o.maxTokens);
  const chunks = o.maxTokens === 0 ? 0 : Math.ceil(o.maxTokens / KIVI_ATTEND_CHUNK) + 1;
  return o.numKvHeads * chunks * rows * o.groupSize * (o.headDim + 2) * 4;
}

/**
 * Reference of cudaTopK on one [rows, ld] buffer: absolute positions of the k best of [first, first + n) per row
 * (topKRef's order: best first, ties to the lower index, NaN last), and the [rows, ld] u8 mask of them.
 */
export function deviceTopKRef(scores: Float32Array, rows: number, ld: number, first: number, n: number, k: number): { out: Int32Array; mask: Uint8Array } {
  const out = new Int32Array(rows * k);
  const mask = new Uint8Array(rows * ld);
  for (let r = 0; r < rows; r++) {
    const idx = topKRef(scores.subarray(r * ld + first, r * ld + first + n), 1, n, k);
    for (let j = 0; j < k; j++) {
      out[r * k + j] = first + idx[j]!;
      mask[r * ld + first + idx[j]!] = 1;
    }
  }
  return { out, mask };
}
