// TierAllocator: first-fit byte ranges inside one capped device-tier arena (bookkeeping only, no memory), plus planTier.
import { KvoffArgumentError, KvoffCapacityError, KvoffDisposedError } from '../errors.js';

export const DEFAULT_TIER_ALIGNMENT = 256; // bytes; covers cudaMalloc's guarantee and every SIMD width we use

/** Thrown when an allocation cannot fit: carries the tag and the free-space picture as well as needed/available. */
export class TierCapacityError extends KvoffCapacityError {
  readonly tag: string;
  readonly largestFree: number; // bytes; equals `available`
  readonly totalFree: number; // bytes; > largestFree means fragmentation, not a too-small budget
  readonly capacity: number; // bytes
  constructor(tag: string, needed: number, largestFree: number, totalFree: number, capacity: number) {
    const why =
      totalFree >= needed
        ? `the ${totalFree} free bytes are fragmented (largest free range ${largestFree} of capacity ${capacity}); free neighbouring ranges or reset the tier`
        : `${totalFree} bytes free in total of capacity ${capacity}; raise vramBudget or free other device-tier buffers`;
    super(`device-tier bytes for "${tag}"`, needed, largestFree, why);
    this.tag = tag;
    this.largestFree = largestFree;
    this.totalFree = totalFree;
    this.capacity = capacity;
  }
}

/** Rounds bytes up to a multiple of alignment (a power of two). */
export function alignUp(bytes: number, alignment: number): number {
  return Math.ceil(bytes / alignment) * alignment;
}

export interface TierAllocatorOptions {
  capacity: number; // bytes; nothing is ever placed at or beyond it
  alignment?: number; // bytes, a power of two; every offset and every reserved size is a multiple of it
}

export class TierAllocator {
  readonly #capacity: number;
  readonly #alignment: number;
  // Free list sorted by start, fully coalesced (no two entries touch). Float64 because budgets exceed 4 GiB.
  #freeStart: Float64Array; // [cap] byte offset of free range i; live part is [0, #numFree)
  #freeSize: Float64Array; // [cap] bytes in free range i, > 0
  #numFree = 0;
  // Live allocations keyed by offset: reserved (aligned) bytes and tag; numbers and strings only, no object per range.
  #liveSize = new Map<number, number>(); // offset -> aligned bytes
  #liveTag = new Map<number, string>(); // offset -> tag
  #byTag = new Map<string, number>(); // tag -> aligned bytes in use
  #inUse = 0;
  #peak = 0;
  #live = true;

  constructor(opts: TierAllocatorOptions) {
    const { capacity, alignment = DEFAULT_TIER_ALIGNMENT } = opts ?? ({} as TierAllocatorOptions);
    if (!Number.isSafeInteger(capacity) || capacity < 1) {
      throw new KvoffArgumentError('TierAllocator capacity', 'a positive integer byte count', capacity);
    }
    if (!Number.isSafeInteger(alignment) || alignment < 1 || (alignment & (alignment - 1)) !== 0 || alignment > 2 ** 30) {
      throw new KvoffArgumentError('TierAllocator alignment', 'a power of two in [1, 2^30] bytes', alignment);
    }
    this.#capacity = capacity;
    this.#alignment = alignment;
    this.#freeStart = new Float64Array(8);
    this.#freeSize = new Float64Array(8);
    this.#resetRanges();
  }

  /** False after dispose(); the one member that never throws. */
  get live(): boolean {
    return this.#live;
  }

  get capacity(): number {
    this.#check();
    return this.#capacity;
  }

  get alignment(): number {
    this.#check();
    return this.#alignment;
  }

  /** Reserved bytes (aligned sizes) of all live allocations. */
  get bytesInUse(): number {
    this.#check();
    return this.#inUse;
  }

  /** capacity - bytesInUse: includes an unaligned tail that no aligned request can use. */
  get bytesFree(): number {
    this.#check();
    return this.#capacity - this.#inUse;
  }

  /** High-water mark of bytesInUse since construction or the last reset(). */
  get peakBytes(): number {
    this.#check();
    return this.#peak;
  }

  /** Size of the largest free range: the biggest request that can succeed right now is its aligned-down value. */
  get largestFree(): number {
    this.#check();
    let best = 0;
    for (let i = 0; i < this.#numFree; i++) if (this.#freeSize[i] > best) best = this.#freeSize[i];
    return best;
  }

  get numAllocations(): number {
    this.#check();
    return this.#liveSize.size;
  }

  /** Reserved bytes for `bytes` requested: what allocate() takes and what errors report. */
  alignedSize(bytes: number): number {
    this.#check();
    checkBytes(bytes);
    return alignUp(bytes, this.#alignment);
  }

  canAllocate(bytes: number): boolean {
    this.#check();
    checkBytes(bytes);
    return this.#findFit(alignUp(bytes, this.#alignment)) >= 0;
  }

  /** Reserves alignUp(bytes) at the lowest-offset free range that holds it; returns its byte offset. */
  allocate(bytes: number, tag: string): number {
    this.#check();
    checkBytes(bytes);
    if (typeof tag !== 'string' || tag.length === 0) throw new KvoffArgumentError('TierAllocator tag', 'a non-empty string', tag);
    const size = alignUp(bytes, this.#alignment);
    const i = this.#findFit(size);
    if (i < 0) throw new TierCapacityError(tag, size, this.largestFree, this.#capacity - this.#inUse, this.#capacity);
    const offset = this.#freeStart[i];
    // Carve from the front so the lowest offsets stay dense and the tail stays one big range.
    if (this.#freeSize[i] === size) this.#removeFree(i);
    else {
      this.#freeStart[i] += size;
      this.#freeSize[i] -= size;
    }
    this.#liveSize.set(offset, size);
    this.#liveTag.set(offset, tag);
    this.#byTag.set(tag, (this.#byTag.get(tag) ?? 0) + size);
    this.#inUse += size;
    if (this.#inUse > this.#peak) this.#peak = this.#inUse;
    return offset;
  }

  /** Returns a live allocation's range to the free list, merging it with free neighbours. */
  free(offset: number): void {
    this.#check();
    const size = this.#liveSize.get(offset);
    if (size === undefined) {
      throw new KvoffArgumentError('TierAllocator offset', 'the offset of a live allocation (unknown offset or double free)', offset);
    }
    const tag = this.#liveTag.get(offset)!;
    this.#liveSize.delete(offset);
    this.#liveTag.delete(offset);
    const left = this.#byTag.get(tag)! - size;
    if (left === 0) this.#byTag.delete(tag);
    else this.#byTag.set(tag, left);
    this.#inUse -= size;

    const i = this.#insertionIndex(offset); // first free range starting after offset
    const joinsPrev = i > 0 && this.#freeStart[i - 1] + this.#freeSize[i - 1] === offset;
    const joinsNext = i < this.#numFree && offset + size === this.#freeStart[i];
    if (joinsPrev && joinsNext) {
      this.#freeSize[i - 1] += size + this.#freeSize[i];
      this.#removeFree(i);
    } else if (joinsPrev) {
      this.#freeSize[i - 1] += size;
    } else if (joinsNext) {
      this.#freeStart[i] = offset;
      this.#freeSize[i] += size;
    } else {
      this.#insertFree(i, offset, size);
    }
  }

  /** Reserved bytes and tag of a live allocation, or undefined when offset is not one. */
  lookup(offset: number): { bytes: number; tag: string } | undefined {
    this.#check();
    const bytes = this.#liveSize.get(offset);
    return bytes === undefined ? undefined : { bytes, tag: this.#liveTag.get(offset)! };
  }

  /** Bytes in use per tag (tags with nothing live are absent): where the device budget goes. */
  usageByTag(): Record<string, number> {
    this.#check();
    return Object.fromEntries(this.#byTag);
  }

  /** A copy of the free list, sorted by offset: starts [n] and sizes [n] in bytes. */
  freeRanges(): { starts: Float64Array; sizes: Float64Array } {
    this.#check();
    return { starts: this.#freeStart.slice(0, this.#numFree), sizes: this.#freeSize.slice(0, this.#numFree) };
  }

  /** Forgets every allocation and the peak: the whole capacity is one free range again. */
  reset(): void {
    this.#check();
    this.#liveSize.clear();
    this.#liveTag.clear();
    this.#byTag.clear();
    this.#inUse = 0;
    this.#peak = 0;
    this.#resetRanges();
  }

  /** Idempotent; afterwards every member but `live` throws KvoffDisposedError. */
  dispose(): void {
    if (!this.#live) return;
    this.#live = false;
    this.#liveSize.clear();
    this.#liveTag.clear();
    this.#byTag.clear();
    this.#freeStart = new Float64Array(0);
    this.#freeSize = new Float64Array(0);
    this.#numFree = 0;
    this.#inUse = 0;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  #resetRanges(): void {
    this.#freeStart[0] = 0;
    this.#freeSize[0] = this.#capacity;
    this.#numFree = 1;
  }

  #findFit(size: number): number {
    for (let i = 0; i < this.#numFree; i++) if (this.#freeSize[i] >= size) return i;
    return -1;
  }

  // Binary search: the list is sorted by start, and a freed offset never lies inside a free range.
  #insertionIndex(offset: number): number {
    let lo = 0;
    let hi = this.#numFree;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.#freeStart[mid] < offset) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  #removeFree(i: number): void {
    this.#freeStart.copyWithin(i, i + 1, this.#numFree);
    this.#freeSize.copyWithin(i, i + 1, this.#numFree);
    this.#numFree--;
  }

  #insertFree(i: number, start: number, size: number): void {
    if (this.#numFree === this.#freeStart.length) {
      // At most (live allocations + 1) ranges exist, so doubling stays small.
      const starts = new Float64Array(this.#freeStart.length * 2);
      const sizes = new Float64Array(this.#freeSize.length * 2);
      starts.set(this.#freeStart);
      sizes.set(this.#freeSize);
      this.#freeStart = starts;
      this.#freeSize = sizes;
    }
    this.#freeStart.copyWithin(i + 1, i, this.#numFree);
    this.#freeSize.copyWithin(i + 1, i, this.#numFree);
    this.#freeStart[i] = start;
    this.#freeSize[i] = size;
    this.#numFree++;
  }

  #check(): void {
    if (!this.#live) throw new KvoffDisposedError('TierAllocator');
  }
}

export interface TierPart {
  tag: string;
  bytes: number; // requested bytes; reserved as alignUp(bytes, alignment)
}

export type TierPlan =
  | { ok: true; offsets: Float64Array; needed: number; given: number } // offsets [parts.length], bytes
  | { ok: false; needed: number; given: number }; // needed: the smallest budget that works for this working set

/**
 * Lays parts out back to back, in order, as a fresh TierAllocator would place them (so the offsets
 * match allocating them one by one). `needed` is the sum of aligned sizes: with first-fit on an empty
 * arena nothing smaller can hold them, and anything at least that large can.
 */
export function planTier(parts: ReadonlyArray<TierPart>, capacity: number, alignment = DEFAULT_TIER_ALIGNMENT): TierPlan {
  if (!Array.isArray(parts)) throw new KvoffArgumentError('planTier parts', 'an array of {tag, bytes}', parts);
  if (!Number.isSafeInteger(capacity) || capacity < 0) throw new KvoffArgumentError('planTier capacity', 'a non-negative integer byte count', capacity);
  if (!Number.isSafeInteger(alignment) || alignment < 1 || (alignment & (alignment - 1)) !== 0 || alignment > 2 ** 30) {
    throw new KvoffArgumentError('planTier alignment', 'a power of two in [1, 2^30] bytes', alignment);
  }
  const offsets = new Float64Array(parts.length); // [parts.length] byte offsets
  let needed = 0;
  for (let i = 0; i < parts.length; i++) {
    const p = parts[i];
    if (p === null || typeof p !== 'object' || typeof p.tag !== 'string' || p.tag.length === 0) {
      throw new KvoffArgumentError(`planTier parts[${i}]`, 'an object {tag: non-empty string, bytes}', p);
    }
    if (!Number.isSafeInteger(p.bytes) || p.bytes < 1) throw new KvoffArgumentError(`planTier parts[${i}].bytes`, 'a positive integer byte count', p.bytes);
    offsets[i] = needed;
    needed += alignUp(p.bytes, alignment);
  }
  if (!Number.isSafeInteger(needed)) throw new KvoffArgumentError('planTier parts', 'a total below 2^53 bytes', needed);
  return needed <= capacity ? { ok: true, offsets, needed, given: capacity } : { ok: false, needed, given: capacity };
}

function checkBytes(bytes: number): void {
  // Zero-byte ranges would share offsets with their neighbours and break free(offset).
  if (!Number.isSafeInteger(bytes) || bytes < 1) throw new KvoffArgumentError('TierAllocator bytes', 'a positive integer byte count', bytes);
}
