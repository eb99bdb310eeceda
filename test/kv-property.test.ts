// Property tests: random create/append/fork/prefix/free runs keep the pool, the tables and the KV contents consistent.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { KvoffCapacityError } from '../src/errors.js';
import { SequenceStore } from '../src/kv/index.js';

type Op =
  | { kind: 'create' }
  | { kind: 'append'; pick: number; n: number }
  | { kind: 'fork'; pick: number }
  | { kind: 'prefix'; pick: number; frac: number }
  | { kind: 'free'; pick: number };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { arbitrary: fc.constant({ kind: 'create' as const }), weight: 2 },
  { arbitrary: fc.record({ kind: fc.constant('append' as const), pick: fc.nat(), n: fc.nat({ max: 9 }) }), weight: 6 },
  { arbitrary: fc.record({ kind: fc.constant('fork' as const), pick: fc.nat() }), weight: 2 },
  { arbitrary: fc.record({ kind: fc.constant('prefix' as const), pick: fc.nat(), frac: fc.double({ min: 0, max: 1, noNaN: true }) }), weight: 2 },
  { arbitrary: fc.record({ kind: fc.constant('free' as const), pick: fc.nat() }), weight: 2 },
);

/**
 * Simulates the KV region as one tag per slot: every appended token writes a unique tag, and
 * `copies` are applied block by block first. Each sequence must read back exactly the tags its own
 * history produced, so a missed copy on write (two sequences writing one slot) shows up as a wrong tag.
 */
class Harness {
  readonly store: SequenceStore;
  readonly memory: Int32Array; // [numBlocks * blockSize] tag per slot
  readonly expected = new Map<number, number[]>(); // seqId -> tag per position, from the model
  #nextTag = 1;

  constructor(readonly numBlocks: number, readonly blockSize: number) {
    this.store = new SequenceStore({ numBlocks, blockSize });
    this.memory = new Int32Array(numBlocks * blockSize);
  }

  live(pick: number): number | undefined {
    const seqs = [...this.expected.keys()];
    return seqs.length === 0 ? undefined : seqs[pick % seqs.length];
  }

  apply(op: Op): void {
    const { store } = this;
    if (op.kind === 'create') {
      this.expected.set(store.createSequence(), []);
      return;
    }
    const seq = this.live(op.pick);
    if (seq === undefined) return;
    const tags = this.expected.get(seq)!;
    switch (op.kind) {
      case 'append': {
        const can = store.canAppend(seq, op.n);
        const freeBefore = store.pool.numFree;
        if (!can) {
          let err: unknown;
          try {
            store.appendTokens(seq, op.n);
          } catch (e) {
            err = e;
          }
          expect(err).toBeInstanceOf(KvoffCapacityError);
          expect((err as KvoffCapacityError).available).toBe(freeBefore);
          expect((err as KvoffCapacityError).needed).toBeGreaterThan(freeBefore);
          expect(store.pool.numFree).toBe(freeBefore);
          expect(store.numTokens(seq)).toBe(tags.length);
          return;
        }
        const { slots, copies } = store.appendTokens(seq, op.n);
        expect(slots.length).toBe(op.n);
        expect(copies.length % 2).toBe(0);
        for (let i = 0; i < copies.length; i += 2) {
          const src = copies[i]! * this.blockSize;
          this.memory.copyWithin(copies[i + 1]! * this.blockSize, src, src + this.blockSize);
        }
        // COW: every slot written lies in a block this sequence alone owns.
        for (const slot of slots) expect(store.pool.refCount(Math.floor(slot / this.blockSize))).toBe(1);
        expect(new Set(slots).size).toBe(slots.length);
        for (const slot of slots) {
          const tag = this.#nextTag++;
          this.memory[slot] = tag;
          tags.push(tag);
        }
        return;
      }
      case 'fork': {
        this.expected.set(store.fork(seq), tags.slice());
        return;
      }
      case 'prefix': {
        const k = Math.floor(op.frac * tags.length);
        this.expected.set(store.createSequenceWithPrefix(seq, k), tags.slice(0, k));
        return;
      }
      case 'free': {
        store.freeSequence(seq);
        this.expected.delete(seq);
        return;
      }
    }
  }

  checkInvariants(): void {
    const { store, numBlocks, blockSize } = this;
    const pool = store.pool;
    expect(pool.numFree + pool.numUsed).toBe(numBlocks);
    expect(store.numSequences).toBe(this.expected.size);

    const owners = new Int32Array(numBlocks); // [numBlocks] table entries pointing at each block
    for (const [seq, tags] of this.expected) {
      expect(store.numTokens(seq)).toBe(tags.length);
      const ids = store.blockIds(seq);
      expect(ids.length).toBe(Math.ceil(tags.length / blockSize));
      for (const id of ids) owners[id]!++;
      // Contents: each position reads back the tag its own history wrote.
      for (let p = 0; p < tags.length; p++) {
        const slot = ids[Math.floor(p / blockSize)]! * blockSize + (p % blockSize);
        expect(this.memory[slot]).toBe(tags[p]);
      }
    }
    let used = 0;
    for (let b = 0; b < numBlocks; b++) {
      expect(pool.refCount(b)).toBe(owners[b]);
      if (owners[b]! > 0) used++;
    }
    expect(pool.numUsed).toBe(used);

    const free = pool.freeIds();
    expect(free.length).toBe(pool.numFree);
    expect(new Set(free).size).toBe(free.length); // no block on the free list twice
    for (const id of free) expect(owners[id]).toBe(0); // no block both free and referenced
  }

  freeAll(): void {
    for (const seq of [...this.expected.keys()]) {
      this.store.freeSequence(seq);
      this.expected.delete(seq);
      this.checkInvariants();
    }
    expect(this.store.pool.numFree).toBe(this.numBlocks);
    for (let b = 0; b < this.numBlocks; b++) expect(this.store.pool.refCount(b)).toBe(0);
  }
}

describe('SequenceStore properties', () => {
  it('keeps refcounts, the free list and every sequence\'s contents consistent under random operations', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 24 }),
        fc.integer({ min: 1, max: 5 }),
        fc.array(opArb, { minLength: 1, maxLength: 60 }),
        (numBlocks, blockSize, ops) => {
          const h = new Harness(numBlocks, blockSize);
          for (const op of ops) {
            h.apply(op);
            h.checkInvariants();
          }
          h.freeAll();
          h.store.dispose();
        },
      ),
      { numRuns: 200 },
    );
  });

  it('COW keeps the slots written by different sequences apart from each other and from shared blocks', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 4 }),
        fc.array(fc.tuple(fc.nat({ max: 3 }), fc.integer({ min: 1, max: 5 })), { minLength: 1, maxLength: 30 }),
        (blockSize, writes) => {
          // Four siblings share one half-filled prompt, then write in random order.
          const store = new SequenceStore({ numBlocks: 256, blockSize });
          const root = store.createSequence();
          store.appendTokens(root, 2 * blockSize + Math.max(1, blockSize - 1));
          const seqs = [store.fork(root), store.fork(root), store.createSequenceWithPrefix(root, blockSize + 1), store.fork(root)];
          const writer = new Map<number, number>(); // slot -> seqId that wrote it
          for (const [which, n] of writes) {
            const seq = seqs[which]!;
            const { slots } = store.appendTokens(seq, n);
            for (const slot of slots) {
              expect(store.pool.refCount(Math.floor(slot / blockSize))).toBe(1);
              const prev = writer.get(slot);
              expect(prev === undefined || prev === seq).toBe(true);
              writer.set(slot, seq);
            }
          }
          for (const s of [root, ...seqs]) store.freeSequence(s);
          expect(store.pool.numFree).toBe(256);
          store.dispose();
        },
      ),
      { numRuns: 200 },
    );
  });
});
