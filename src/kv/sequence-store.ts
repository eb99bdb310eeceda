// SequenceStore: many sequences' block tables over one BlockPool, with forks, shared prompt prefixes and copy on write.
import { KvoffArgumentError, KvoffCapacityError, KvoffDisposedError } from '../errors.js';
import { BlockPool } from './block-pool.js';
import { BlockTable } from './block-table.js';

const INT32_MAX = 0x7fffffff;

export interface SequenceStoreOptions {
  numBlocks: number;
  blockSize: number;
}

export interface AppendResult {
  slots: Int32Array; // [nTokens] slot to write per appended token, in order
  copies: Int32Array; // [numCopies * 2] (srcBlockId, dstBlockId) pairs to copy BEFORE writing slots; 0 or 1 pair
}

const NO_COPIES = new Int32Array(0);

export class SequenceStore {
  readonly blockSize: number;
  #pool: BlockPool;
  #tables = new Map<number, BlockTable>(); // one object per sequence, none per block
  // Never reused, so a stale id fails loudly instead of reaching someone else's sequence.
  #nextSeqId = 0;
  #live = true;

  constructor(opts: SequenceStoreOptions) {
    const { numBlocks, blockSize } = opts;
    if (!Number.isSafeInteger(blockSize) || blockSize < 1) throw new KvoffArgumentError('SequenceStore blockSize', 'a positive integer', blockSize);
    // Slots cross into native code as int32.
    if (Number.isSafeInteger(numBlocks) && numBlocks * blockSize > INT32_MAX + 1) {
      throw new KvoffArgumentError('numBlocks * blockSize', `at most ${INT32_MAX + 1} slots`, numBlocks * blockSize);
    }
    this.blockSize = blockSize;
    this.#pool = new BlockPool(numBlocks);
  }

  /** The pool the store owns, for stats and checks; mutate it only through the store. */
  get pool(): BlockPool {
    this.#check();
    return this.#pool;
  }

  get live(): boolean {
    return this.#live;
  }

  get numSequences(): number {
    this.#check();
    return this.#tables.size;
  }

  createSequence(): number {
    this.#check();
    const seqId = this.#nextSeqId++;
    this.#tables.set(seqId, new BlockTable(this.blockSize));
    return seqId;
  }

  /**
   * A new sequence whose first numPrefixTokens positions are the parent's: it shares the blocks
   * covering them, a partly covered last block included (the first write to it copies it).
   */
  createSequenceWithPrefix(parentSeqId: number, numPrefixTokens: number): number {
    this.#check();
    const child = this.#table(parentSeqId).prefix(numPrefixTokens);
    const ids = child.blockIds();
    for (let i = 0; i < ids.length; i++) this.#pool.retain(ids[i]);
    const seqId = this.#nextSeqId++;
    this.#tables.set(seqId, child);
    return seqId;
  }

  /** A child sharing every block of the parent (beam search, parallel sampling). */
  fork(seqId: number): number {
    this.#check();
    return this.createSequenceWithPrefix(seqId, this.#table(seqId).numTokens);
  }

  canAppend(seqId: number, nTokens: number): boolean {
    this.#check();
    const table = this.#table(seqId);
    checkCount(nTokens);
    return this.#blocksNeeded(table, nTokens) <= this.#pool.numFree;
  }

  /**
   * Backs nTokens more positions and returns their slots. If the partly filled last block is shared,
   * it is first swapped for a private one and `copies` says which block to copy where; nothing changes
   * when the pool is short (KvoffCapacityError with needed and available blocks).
   */
  appendTokens(seqId: number, nTokens: number): AppendResult {
    this.#check();
    const table = this.#table(seqId);
    checkCount(nTokens);
    const needed = this.#blocksNeeded(table, nTokens);
    const available = this.#pool.numFree;
    if (needed > available) {
      throw new KvoffCapacityError('blocks', needed, available, `sequence ${seqId} needs them for ${nTokens} more tokens`);
    }
    const fresh = this.#pool.allocate(needed); // [needed] new private blocks
    let next = 0;
    let copies = NO_COPIES;
    if (this.#mustCopy(table, nTokens)) {
      const last = table.numBlocks - 1;
      const src = table.blockId(last);
      const dst = fresh[next++];
      table.setBlockId(last, dst);
      this.#pool.release(src); // still owned by the other sharers, so it stays in use
      copies = Int32Array.of(src, dst);
    }
    while (next < fresh.length) table.pushBlock(fresh[next++]);
    const slots = table.slotsFor(table.numTokens, nTokens);
    table.addTokens(nTokens);
    return { slots, copies };
  }

  /** Drops the sequence and its share of every block; unshared blocks go back to the pool. */
  freeSequence(seqId: number): void {
    this.#check();
    const ids = this.#table(seqId).blockIds();
    for (let i = 0; i < ids.length; i++) this.#pool.release(ids[i]);
    this.#tables.delete(seqId);
  }

  /** A view, [numBlocks], valid until the sequence next grows or copies on write (see BlockTable.blockIds). */
  blockIds(seqId: number): Int32Array {
    this.#check();
    return this.#table(seqId).blockIds();
  }

  numTokens(seqId: number): number {
    this.#check();
    return this.#table(seqId).numTokens;
  }

  /** Idempotent; frees every sequence and the pool, after which every member but `live` throws. */
  dispose(): void {
    if (!this.#live) return;
    this.#live = false;
    this.#tables.clear();
    this.#pool.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  // Writing into a block someone else also reads would change their tokens: copy it first.
  #mustCopy(table: BlockTable, nTokens: number): boolean {
    if (nTokens === 0 || table.numTokens % this.blockSize === 0) return false;
    return this.#pool.refCount(table.blockId(table.numBlocks - 1)) > 1;
  }

  #blocksNeeded(table: BlockTable, nTokens: number): number {
    const grow = Math.ceil((table.numTokens + nTokens) / this.blockSize) - table.numBlocks;
    return grow + (this.#mustCopy(table, nTokens) ? 1 : 0);
  }

  #table(seqId: number): BlockTable {
    const table = this.#tables.get(seqId);
    if (table === undefined) throw new KvoffArgumentError('seqId', 'a live sequence id', seqId);
    return table;
  }

  #check(): void {
    if (!this.#live) throw new KvoffDisposedError('SequenceStore');
  }
}

function checkCount(n: number): void {
  if (!Number.isSafeInteger(n) || n < 0) throw new KvoffArgumentError('nTokens', 'a non-negative integer', n);
}
