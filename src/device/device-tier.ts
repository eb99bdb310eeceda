// HostDeviceTier: the CPU backend's device tier, a capped pageable host arena carved up by a TierAllocator.
import { HostArena } from '../arena.js';
import { KvoffArgumentError, KvoffDisposedError } from '../errors.js';
import type { ArenaRef } from '../native.js';
import { TierAllocator, type TierAllocatorOptions } from './tier-allocator.js';

/** One device-tier buffer: its byte offset in the tier and a ref that native kernels take as a buffer. */
export interface TierBuffer {
  offset: number; // bytes from the start of the tier
  ref: ArenaRef; // { handle, offset } into the backing arena
}

export class HostDeviceTier {
  readonly #allocator: TierAllocator;
  readonly #arena: HostArena;
  #live = true;

  constructor(opts: TierAllocatorOptions) {
    // Allocator first: it validates capacity/alignment before any memory is taken.
    this.#allocator = new TierAllocator(opts);
    // Not pinned: this region stands in for VRAM, and pinning a second copy would only steal locked pages from the host tier.
    // The arena may round up to whole pages; the allocator still never places anything at or beyond capacity.
    this.#arena = new HostArena(this.#allocator.capacity, { pin: false });
  }

  get live(): boolean {
    return this.#live;
  }

  /** The backing arena's handle, for native calls that take (handle, offset) pairs such as arenaCopy. */
  get handle(): number {
    this.#check();
    return this.#arena.handle;
  }

  get capacity(): number {
    this.#check();
    return this.#allocator.capacity;
  }

  get alignment(): number {
    this.#check();
    return this.#allocator.alignment;
  }

  get bytesInUse(): number {
    this.#check();
    return this.#allocator.bytesInUse;
  }

  get bytesFree(): number {
    this.#check();
    return this.#allocator.bytesFree;
  }

  get peakBytes(): number {
    this.#check();
    return this.#allocator.peakBytes;
  }

  get largestFree(): number {
    this.#check();
    return this.#allocator.largestFree;
  }

  get numAllocations(): number {
    this.#check();
    return this.#allocator.numAllocations;
  }

  usageByTag(): Record<string, number> {
    this.#check();
    return this.#allocator.usageByTag();
  }

  canAllocate(bytes: number): boolean {
    this.#check();
    return this.#allocator.canAllocate(bytes);
  }

  /** Reserves alignUp(bytes) in the tier; throws TierCapacityError (a KvoffCapacityError) when it cannot fit. */
  allocate(bytes: number, tag: string): TierBuffer {
    this.#check();
    const offset = this.#allocator.allocate(bytes, tag);
    return { offset, ref: { handle: this.#arena.handle, offset } };
  }

  /** A ref for a live allocation's offset (e.g. after passing only the integer offset around). */
  ref(offset: number): ArenaRef {
    this.#check();
    if (this.#allocator.lookup(offset) === undefined) {
      throw new KvoffArgumentError('HostDeviceTier offset', 'the offset of a live allocation', offset);
    }
    return { handle: this.#arena.handle, offset };
  }

  free(offset: number): void {
    this.#check();
    this.#allocator.free(offset);
  }

  /** Forgets every allocation; the bytes stay as they were (callers must not rely on zeroed buffers). */
  reset(): void {
    this.#check();
    this.#allocator.reset();
  }

  /** Idempotent; frees the backing arena. Afterwards every member but `live` throws KvoffDisposedError. */
  dispose(): void {
    if (!this.#live) return;
    this.#live = false;
    this.#allocator.dispose();
    this.#arena.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  #check(): void {
    if (!this.#live) throw new KvoffDisposedError('HostDeviceTier');
  }
}
