// BlockPool: physical KV block ids with a LIFO free list and reference counts (bookkeeping only, no memory).
import { KvoffArgumentError, KvoffCapacityError, KvoffDisposedError, KvoffRangeError } from '../errors.js';

const INT32_MAX = 0x7fffffff;

export class BlockPool {
  #numBlocks: number;
  // LIFO so the block freed last is reused first: its pages are the likeliest to still be warm.
  #free: Int32Array; // [numBlocks] stack of free block ids; the live part is [0, #numFree)
  #refs: Int32Array; // [numBlocks] refcount per physical block; 0 exactly when the id is on the free stack
  #numFree: number;
  #live = true;

  constructor(numBlocks: number) {
    if (!Number.isSafeInteger(numBlocks) || numBlocks < 1 || numBlocks > INT32_MAX) {
      throw new KvoffArgumentError('BlockPool numBlocks', `an integer in [1, ${INT32_MAX}]`, numBlocks);
    }
    this.#numBlocks = numBlocks;
    this.#free = new Int32Array(numBlocks);
    this.#refs = new Int32Array(numBlocks);
    // Pushed in reverse so a fresh pool hands out 0, 1, 2, ...: deterministic ids keep traces readable.
    for (let i = 0; i < numBlocks; i++) this.#free[i] = numBlocks - 1 - i;
    this.#numFree = numBlocks;
  }

  /** False after dispose(); the one member that never throws. */
  get live(): boolean {
    return this.#live;
  }

  get numBlocks(): number {
    this.#check();
    return this.#numBlocks;
  }

  get numFree(): number {
    this.#check();
    return this.#numFree;
  }

  get numUsed(): number {
    this.#check();
    return this.#numBlocks - this.#numFree;
  }

  canAllocate(n: number): boolean {
    this.#check();
    checkCount('BlockPool n', n);
    return n <= this.#numFree;
  }

  /** Pops n free blocks, each leaving with refCount 1. Returns their ids, [n]. */
  allocate(n: number): Int32Array {
    this.#check();
    checkCount('BlockPool n', n);
    if (n > this.#numFree) throw new KvoffCapacityError('blocks', n, this.#numFree, 'free some sequences or raise numBlocks');
    const ids = new Int32Array(n); // [n] physical block ids
    for (let i = 0; i < n; i++) {
      const id = this.#free[--this.#numFree];
      this.#refs[id] = 1;
      ids[i] = id;
    }
    return ids;
  }

  /** One more owner of a block in use (a fork or a shared prefix). */
  retain(id: number): void {
    this.#check();
    this.#checkUsed(id);
    if (this.#refs[id] === INT32_MAX) throw new KvoffRangeError('refCount', INT32_MAX + 1, 1, INT32_MAX);
    this.#refs[id]++;
  }

  /** Drops one owner; the block goes back on the free stack when the last one leaves. */
  release(id: number): void {
    this.#check();
    this.#checkUsed(id);
    if (--this.#refs[id] === 0) this.#free[this.#numFree++] = id;
  }

  refCount(id: number): number {
    this.#check();
    this.#checkId(id);
    return this.#refs[id];
  }

  /** A copy of the free stack, [numFree], top last: the stack keeps changing, so a view would lie. */
  freeIds(): Int32Array {
    this.#check();
    return this.#free.slice(0, this.#numFree);
  }

  /** Idempotent; afterwards every member but `live` throws KvoffDisposedError. */
  dispose(): void {
    if (!this.#live) return;
    this.#live = false;
    this.#free = new Int32Array(0);
    this.#refs = new Int32Array(0);
    this.#numFree = 0;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  #checkId(id: number): void {
    if (!Number.isInteger(id)) throw new KvoffArgumentError('blockId', 'an integer block id', id);
    if (id < 0 || id >= this.#numBlocks) throw new KvoffRangeError('blockId', id, 0, this.#numBlocks - 1);
  }

  // A free block has no owner to add to or drop: touching it means a double release or a stale id.
  #checkUsed(id: number): void {
    this.#checkId(id);
    if (this.#refs[id] === 0) throw new KvoffArgumentError('blockId', 'a block in use (refCount >= 1), not a free one', id);
  }

  #check(): void {
    if (!this.#live) throw new KvoffDisposedError('BlockPool');
  }
}

function checkCount(field: string, n: number): void {
  if (!Number.isSafeInteger(n) || n < 0) throw new KvoffArgumentError(field, 'a non-negative integer', n);
}
