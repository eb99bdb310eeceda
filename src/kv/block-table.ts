// BlockTable: one sequence's map from logical block index to physical blockId, plus its token count.
import { KvoffArgumentError, KvoffRangeError } from '../errors.js';

const MIN_CAPACITY = 4;

/**
 * Plain bookkeeping: the table never touches refcounts, so whoever pushes or shares ids (the
 * SequenceStore) owns retain/release. Invariant kept by that owner: numBlocks = ceil(numTokens / blockSize).
 */
export class BlockTable {
  readonly blockSize: number;
  #ids: Int32Array; // [capacity] physical blockId per logical block; the used part is [0, #numBlocks)
  #numBlocks = 0;
  #numTokens = 0;

  constructor(blockSize: number, capacity = MIN_CAPACITY) {
    if (!Number.isSafeInteger(blockSize) || blockSize < 1) throw new KvoffArgumentError('BlockTable blockSize', 'a positive integer', blockSize);
    if (!Number.isSafeInteger(capacity) || capacity < 0) throw new KvoffArgumentError('BlockTable capacity', 'a non-negative integer', capacity);
    this.blockSize = blockSize;
    this.#ids = new Int32Array(Math.max(capacity, MIN_CAPACITY));
  }

  get numTokens(): number {
    return this.#numTokens;
  }

  get numBlocks(): number {
    return this.#numBlocks;
  }

  /** Positions the current blocks can hold, numBlocks * blockSize: slots exist for all of them. */
  get numSlots(): number {
    return this.#numBlocks * this.blockSize;
  }

  blockId(logicalIndex: number): number {
    checkIndex('logicalIndex', logicalIndex, this.#numBlocks);
    return this.#ids[logicalIndex];
  }

  /** Slot of a position backed by a block (any position < numSlots, so writers can ask before addTokens). */
  slotOf(position: number): number {
    checkIndex('position', position, this.numSlots);
    const bs = this.blockSize;
    const logical = Math.floor(position / bs);
    return this.#ids[logical] * bs + (position - logical * bs);
  }

  /** Slots of positions [start, start + count), [count]; all must lie below numSlots. */
  slotsFor(start: number, count: number): Int32Array {
    if (!Number.isSafeInteger(count) || count < 0) throw new KvoffArgumentError('count', 'a non-negative integer', count);
    const out = new Int32Array(count); // [count] slot per position
    if (count === 0) return out;
    checkIndex('start', start, this.numSlots);
    checkIndex('start + count - 1', start + count - 1, this.numSlots);
    const bs = this.blockSize;
    // Walk block by block: one division per call instead of one per token.
    let logical = Math.floor(start / bs);
    let offset = start - logical * bs;
    let base = this.#ids[logical] * bs;
    for (let i = 0; i < count; i++) {
      out[i] = base + offset;
      if (++offset === bs && i + 1 < count) {
        offset = 0;
        base = this.#ids[++logical] * bs;
      }
    }
    return out;
  }

  /**
   * A subarray VIEW of the used part, [numBlocks], not a copy: handed to native code every decode
   * step, so it must not allocate a buffer. It sees later setBlockId (copy on write) but goes stale
   * once pushBlock grows the storage; call .slice() to keep a snapshot.
   */
  blockIds(): Int32Array {
    return this.#ids.subarray(0, this.#numBlocks);
  }

  /** Appends a physical block as the next logical block. */
  pushBlock(blockId: number): void {
    checkBlockId(blockId);
    if (this.#numBlocks === this.#ids.length) {
      const grown = new Int32Array(this.#ids.length * 2); // amortised O(1) push
      grown.set(this.#ids);
      this.#ids = grown;
    }
    this.#ids[this.#numBlocks++] = blockId;
  }

  /** Points a logical block at another physical one: the copy-on-write swap. */
  setBlockId(logicalIndex: number, blockId: number): void {
    checkIndex('logicalIndex', logicalIndex, this.#numBlocks);
    checkBlockId(blockId);
    this.#ids[logicalIndex] = blockId;
  }

  /** Counts n more tokens; the blocks backing them must already be pushed. */
  addTokens(n: number): void {
    if (!Number.isSafeInteger(n) || n < 0) throw new KvoffArgumentError('n', 'a non-negative integer', n);
    if (this.#numTokens + n > this.numSlots) throw new KvoffRangeError('numTokens', this.#numTokens + n, 0, this.numSlots);
    this.#numTokens += n;
  }

  /** A new table over the blocks covering the first numTokens positions (ids shared, refcounts untouched). */
  prefix(numTokens: number): BlockTable {
    if (!Number.isSafeInteger(numTokens)) throw new KvoffArgumentError('numTokens', 'an integer', numTokens);
    if (numTokens < 0 || numTokens > this.#numTokens) throw new KvoffRangeError('numTokens', numTokens, 0, this.#numTokens);
    const n = Math.ceil(numTokens / this.blockSize);
    const child = new BlockTable(this.blockSize, n);
    child.#ids.set(this.#ids.subarray(0, n));
    child.#numBlocks = n;
    child.#numTokens = numTokens;
    return child;
  }
}

function checkIndex(field: string, i: number, length: number): void {
  if (!Number.isInteger(i)) throw new KvoffArgumentError(field, 'an integer', i);
  if (i < 0 || i >= length) throw new KvoffRangeError(field, i, 0, length - 1);
}

function checkBlockId(id: number): void {
  if ((id | 0) !== id || id < 0) throw new KvoffArgumentError('blockId', 'a non-negative int32 block id', id);
}
