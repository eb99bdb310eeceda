// Hand cases for the paged KV bookkeeping: pool, block table, sequence store, bad input and disposed use.
import { describe, expect, it } from 'vitest';
import { KvoffArgumentError, KvoffCapacityError, KvoffDisposedError, KvoffRangeError } from '../src/errors.js';
import { BlockPool, BlockTable, SequenceStore } from '../src/kv/index.js';

const ids = (a: Int32Array) => Array.from(a);

function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  throw new Error('expected a throw');
}

describe('BlockPool', () => {
  it('hands out 0, 1, 2, ... from a fresh pool and reuses the last freed block first', () => {
    const pool = new BlockPool(4);
    expect(ids(pool.allocate(3))).toEqual([0, 1, 2]);
    expect([pool.numFree, pool.numUsed, pool.numBlocks]).toEqual([1, 3, 4]);
    pool.release(1);
    pool.release(0);
    expect(ids(pool.allocate(1))).toEqual([0]);
    expect(ids(pool.allocate(1))).toEqual([1]);
    expect(ids(pool.freeIds())).toEqual([3]);
  });

  it('counts references and frees a block only when the last owner leaves', () => {
    const pool = new BlockPool(2);
    const [b] = pool.allocate(1);
    pool.retain(b!);
    pool.retain(b!);
    expect(pool.refCount(b!)).toBe(3);
    pool.release(b!);
    pool.release(b!);
    expect(pool.numFree).toBe(1);
    pool.release(b!);
    expect(pool.refCount(b!)).toBe(0);
    expect(pool.numFree).toBe(2);
  });

  it('check-then-act: canAllocate agrees with allocate, and a short pool reports needed and available', () => {
    const pool = new BlockPool(3);
    pool.allocate(2);
    expect(pool.canAllocate(1)).toBe(true);
    expect(pool.canAllocate(2)).toBe(false);
    expect(pool.canAllocate(0)).toBe(true);
    expect(pool.allocate(0).length).toBe(0);
    const e = thrown(() => pool.allocate(5));
    expect(e).toBeInstanceOf(KvoffCapacityError);
    expect(e).toMatchObject({ code: 'KVOFF_E_CAPACITY', needed: 5, available: 1 });
    expect(pool.numFree).toBe(1); // nothing taken on failure
  });

  it('rejects out-of-range and non-integer ids, double release and retaining a free block', () => {
    const pool = new BlockPool(4);
    const [b] = pool.allocate(1);
    expect(thrown(() => pool.release(4))).toMatchObject({ constructor: KvoffRangeError, field: 'blockId', value: 4, min: 0, max: 3 });
    expect(thrown(() => pool.release(-1))).toBeInstanceOf(KvoffRangeError);
    expect(thrown(() => pool.refCount(99))).toBeInstanceOf(KvoffRangeError);
    expect(thrown(() => pool.retain(1.5))).toBeInstanceOf(KvoffArgumentError);
    expect(thrown(() => pool.release(Number.NaN))).toBeInstanceOf(KvoffArgumentError);
    pool.release(b!);
    const e = thrown(() => pool.release(b!));
    expect(e).toBeInstanceOf(KvoffArgumentError);
    expect((e as Error).message).toBe('Expected a block in use (refCount >= 1), not a free one for blockId but received 0');
    expect(thrown(() => pool.retain(2))).toBeInstanceOf(KvoffArgumentError);
    expect(pool.numFree).toBe(4); // failed calls left no trace
    expect(ids(pool.freeIds()).sort()).toEqual([0, 1, 2, 3]);
  });

  it('rejects bad sizes and counts', () => {
    expect(thrown(() => new BlockPool(0))).toBeInstanceOf(KvoffArgumentError);
    expect(thrown(() => new BlockPool(2.5))).toBeInstanceOf(KvoffArgumentError);
    const pool = new BlockPool(2);
    expect(thrown(() => pool.allocate(-1))).toBeInstanceOf(KvoffArgumentError);
    expect(thrown(() => pool.canAllocate(0.5))).toBeInstanceOf(KvoffArgumentError);
  });

  it('throws KvoffDisposedError from every member after dispose, which is idempotent', () => {
    const pool = new BlockPool(2);
    pool.allocate(1);
    pool.dispose();
    pool.dispose();
    expect(pool.live).toBe(false);
    const uses: Array<() => unknown> = [
      () => pool.numBlocks, () => pool.numFree, () => pool.numUsed, () => pool.canAllocate(1),
      () => pool.allocate(1), () => pool.retain(0), () => pool.release(0), () => pool.refCount(0), () => pool.freeIds(),
    ];
    for (const use of uses) expect(thrown(use)).toMatchObject({ constructor: KvoffDisposedError, resource: 'BlockPool' });
  });

  it('works with `using`', () => {
    let p: BlockPool;
    {
      using pool = new BlockPool(1);
      p = pool;
    }
    expect(p.live).toBe(false);
  });
});

describe('BlockTable', () => {
  it('maps positions to slots blockId * blockSize + offset and grows past its initial capacity', () => {
    const t = new BlockTable(4, 1);
    const phys = [7, 2, 9, 0, 5, 11];
    for (const b of phys) t.pushBlock(b);
    t.addTokens(22);
    expect([t.numBlocks, t.numTokens, t.numSlots]).toEqual([6, 22, 24]);
    expect(ids(t.blockIds())).toEqual(phys);
    expect(t.blockId(2)).toBe(9);
    expect(t.slotOf(0)).toBe(28);
    expect(t.slotOf(5)).toBe(9);
    expect(t.slotOf(23)).toBe(47); // backed but not yet counted: writers ask before addTokens
    expect(ids(t.slotsFor(2, 7))).toEqual([30, 31, 8, 9, 10, 11, 36]);
    const expected = Array.from({ length: 24 }, (_, p) => t.slotOf(p));
    expect(ids(t.slotsFor(0, 24))).toEqual(expected);
    expect(t.slotsFor(24, 0).length).toBe(0);
  });

  it('blockIds is a view: it sees copy-on-write swaps', () => {
    const t = new BlockTable(2);
    t.pushBlock(3);
    t.pushBlock(4);
    const view = t.blockIds();
    t.setBlockId(1, 8);
    expect(ids(view)).toEqual([3, 8]);
  });

  it('prefix shares the blocks covering the first tokens, a partial last block included', () => {
    const t = new BlockTable(4);
    for (const b of [1, 2, 3]) t.pushBlock(b);
    t.addTokens(10);
    const c = t.prefix(6);
    expect([c.numBlocks, c.numTokens]).toEqual([2, 6]);
    expect(ids(c.blockIds())).toEqual([1, 2]);
    expect(t.prefix(0).numBlocks).toBe(0);
    expect(t.prefix(10).numBlocks).toBe(3);
  });

  it('rejects positions, indices and counts outside what exists', () => {
    const t = new BlockTable(4);
    t.pushBlock(0);
    t.addTokens(3);
    expect(thrown(() => t.slotOf(4))).toMatchObject({ constructor: KvoffRangeError, field: 'position', value: 4, min: 0, max: 3 });
    expect(thrown(() => t.slotOf(-1))).toBeInstanceOf(KvoffRangeError);
    expect(thrown(() => t.blockId(1))).toBeInstanceOf(KvoffRangeError);
    expect(thrown(() => t.slotsFor(2, 3))).toBeInstanceOf(KvoffRangeError);
    expect(thrown(() => t.slotsFor(0, -1))).toBeInstanceOf(KvoffArgumentError);
    expect(thrown(() => t.addTokens(2))).toBeInstanceOf(KvoffRangeError);
    expect(thrown(() => t.prefix(4))).toBeInstanceOf(KvoffRangeError);
    expect(thrown(() => t.pushBlock(-2))).toBeInstanceOf(KvoffArgumentError);
    expect(thrown(() => t.pushBlock(2 ** 31))).toBeInstanceOf(KvoffArgumentError);
    expect(thrown(() => new BlockTable(0))).toBeInstanceOf(KvoffArgumentError);
  });
});

describe('SequenceStore', () => {
  it('allocates blocks as tokens arrive and returns their slots', () => {
    const store = new SequenceStore({ numBlocks: 8, blockSize: 4 });
    const s = store.createSequence();
    const a = store.appendTokens(s, 6);
    expect(ids(a.slots)).toEqual([0, 1, 2, 3, 4, 5]);
    expect(a.copies.length).toBe(0);
    expect(ids(store.appendTokens(s, 3).slots)).toEqual([6, 7, 8]);
    expect(ids(store.blockIds(s))).toEqual([0, 1, 2]);
    expect(store.numTokens(s)).toBe(9);
    expect(store.appendTokens(s, 0).slots.length).toBe(0);
    expect(store.pool.numUsed).toBe(3);
  });

  it('fork shares every block; the first write to a shared partial block copies it (either side)', () => {
    const store = new SequenceStore({ numBlocks: 8, blockSize: 4 });
    const p = store.createSequence();
    store.appendTokens(p, 6); // blocks [0, 1], block 1 half full
    const c = store.fork(p);
    expect(ids(store.blockIds(c))).toEqual([0, 1]);
    expect([store.pool.refCount(0), store.pool.refCount(1)]).toEqual([2, 2]);

    const w = store.appendTokens(c, 1);
    expect(ids(w.copies)).toEqual([1, 2]); // copy block 1 into the fresh block 2 before writing
    expect(ids(w.slots)).toEqual([2 * 4 + 2]);
    expect(ids(store.blockIds(c))).toEqual([0, 2]);
    expect([store.pool.refCount(1), store.pool.refCount(2)]).toEqual([1, 1]);

    // The parent is now the only owner of block 1: no copy.
    expect(ids(store.appendTokens(p, 1).copies)).toEqual([]);
  });

  it('a full shared last block needs no copy: new tokens go to new blocks', () => {
    const store = new SequenceStore({ numBlocks: 8, blockSize: 4 });
    const p = store.createSequence();
    store.appendTokens(p, 8);
    const c = store.fork(p);
    const w = store.appendTokens(c, 2);
    expect(w.copies.length).toBe(0);
    expect(ids(w.slots)).toEqual([8, 9]);
  });

  it('shares a prompt prefix, copying the partly covered block on the first write', () => {
    const store = new SequenceStore({ numBlocks: 8, blockSize: 4 });
    const p = store.createSequence();
    store.appendTokens(p, 10); // blocks [0, 1, 2]
    const c = store.createSequenceWithPrefix(p, 6); // covers block 0 fully, block 1 half
    expect(store.numTokens(c)).toBe(6);
    expect(ids(store.blockIds(c))).toEqual([0, 1]);
    expect([store.pool.refCount(0), store.pool.refCount(1), store.pool.refCount(2)]).toEqual([2, 2, 1]);
    expect(store.canAppend(c, 2 + 4 * 5)).toBe(false); // 1 copy + 5 new > 5 free
    const w = store.appendTokens(c, 3);
    expect(ids(w.copies)).toEqual([1, 3]);
    expect(ids(w.slots)).toEqual([14, 15, 16]);
    expect(thrown(() => store.createSequenceWithPrefix(p, 11))).toMatchObject({ constructor: KvoffRangeError, value: 11, max: 10 });
  });

  it('fails an append the pool cannot back with the numbers, changing nothing', () => {
    const store = new SequenceStore({ numBlocks: 3, blockSize: 4 });
    const p = store.createSequence();
    store.appendTokens(p, 6);
    const c = store.fork(p);
    expect(store.canAppend(c, 7)).toBe(false); // 1 copy + 2 new > 1 free
    const e = thrown(() => store.appendTokens(c, 7));
    expect(e).toBeInstanceOf(KvoffCapacityError);
    expect(e).toMatchObject({ needed: 3, available: 1 });
    expect(ids(store.blockIds(c))).toEqual([0, 1]);
    expect(store.numTokens(c)).toBe(6);
    expect(store.pool.numFree).toBe(1);
    expect(store.canAppend(c, 2)).toBe(true);
  });

  it('freeing sequences returns unshared blocks only', () => {
    const store = new SequenceStore({ numBlocks: 8, blockSize: 2 });
    const p = store.createSequence();
    store.appendTokens(p, 4);
    const c = store.fork(p);
    store.appendTokens(c, 2);
    store.freeSequence(p);
    expect(store.pool.numUsed).toBe(3);
    store.freeSequence(c);
    expect(store.pool.numFree).toBe(8);
    expect(store.numSequences).toBe(0);
  });

  it('rejects unknown or freed sequence ids and bad counts', () => {
    const store = new SequenceStore({ numBlocks: 2, blockSize: 2 });
    const s = store.createSequence();
    store.freeSequence(s);
    for (const use of [
      () => store.appendTokens(s, 1), () => store.canAppend(s, 1), () => store.fork(s), () => store.freeSequence(s),
      () => store.blockIds(s), () => store.numTokens(s), () => store.createSequenceWithPrefix(s, 0),
    ]) {
      expect(thrown(use)).toMatchObject({ constructor: KvoffArgumentError, field: 'seqId' });
    }
    const t = store.createSequence();
    expect(t).not.toBe(s); // ids are never reused
    expect(thrown(() => store.appendTokens(t, -1))).toBeInstanceOf(KvoffArgumentError);
    expect(thrown(() => store.appendTokens(t, 1.5))).toBeInstanceOf(KvoffArgumentError);
    expect(thrown(() => new SequenceStore({ numBlocks: 2 ** 20, blockSize: 2 ** 12 }))).toBeInstanceOf(KvoffArgumentError);
    expect(thrown(() => new SequenceStore({ numBlocks: 4, blockSize: 0 }))).toBeInstanceOf(KvoffArgumentError);
  });

  it('throws KvoffDisposedError after dispose, and disposes its pool', () => {
    const store = new SequenceStore({ numBlocks: 4, blockSize: 2 });
    const s = store.createSequence();
    store.appendTokens(s, 3);
    const pool = store.pool;
    store.dispose();
    store.dispose();
    expect(pool.live).toBe(false);
    for (const use of [
      () => store.createSequence(), () => store.appendTokens(s, 1), () => store.canAppend(s, 1), () => store.fork(s),
      () => store.freeSequence(s), () => store.blockIds(s), () => store.numTokens(s), () => store.pool,
      () => store.createSequenceWithPrefix(s, 1), () => store.numSequences,
    ]) {
      expect(thrown(use)).toMatchObject({ constructor: KvoffDisposedError, resource: 'SequenceStore' });
    }
  });
});
