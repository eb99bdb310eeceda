// Device-tier allocator: alignment, first-fit, coalescing, typed errors, planTier numbers, a random-run property, and HostDeviceTier I/O.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { arenaTotals } from '../src/arena.js';
import { HostDeviceTier } from '../src/device/device-tier.js';
import { TierAllocator, TierCapacityError, alignUp, planTier } from '../src/device/tier-allocator.js';
import { KvoffArgumentError, KvoffCapacityError, KvoffDisposedError } from '../src/errors.js';
import { native } from '../src/native.js';

function freeList(a: TierAllocator): Array<[number, number]> {
  const { starts, sizes } = a.freeRanges();
  return Array.from(starts, (s, i) => [s, sizes[i]!]);
}

describe('TierAllocator', () => {
  it('aligns offsets and reserved sizes (default 256)', () => {
    const a = new TierAllocator({ capacity: 4096 });
    expect(a.alignment).toBe(256);
    expect(a.allocate(1, 'x')).toBe(0);
    expect(a.allocate(256, 'x')).toBe(256);
    expect(a.allocate(257, 'y')).toBe(512);
    expect(a.bytesInUse).toBe(256 + 256 + 512);
    expect(a.lookup(512)).toEqual({ bytes: 512, tag: 'y' });
    expect(a.alignedSize(300)).toBe(512);

    const b = new TierAllocator({ capacity: 100, alignment: 16 });
    expect(b.allocate(3, 't')).toBe(0);
    expect(b.allocate(17, 't')).toBe(16);
    expect(b.bytesInUse).toBe(48);
  });

  it('places at the lowest free range that fits (first fit), not the tightest', () => {
    const a = new TierAllocator({ capacity: 10 * 256 });
    const o = [0, 1, 2, 3, 4].map(() => a.allocate(256, 'k')); // [0, 1280)
    a.free(o[1]!); // hole of 1 unit at 256
    a.free(o[3]!); // hole of 1 unit at 768; tail [1280, 2560) is 5 units
    expect(a.allocate(512, 'big')).toBe(1280); // neither hole fits two units
    expect(a.allocate(100, 'small')).toBe(256); // lowest hole first
    expect(a.allocate(100, 'small')).toBe(768);
    expect(freeList(a)).toEqual([[1792, 768]]);
  });

  it('coalesces with the previous, the next, and both neighbours', () => {
    const a = new TierAllocator({ capacity: 1024, alignment: 1 });
    const [p, q, r, s] = [a.allocate(100, 't'), a.allocate(100, 't'), a.allocate(100, 't'), a.allocate(100, 't')];
    expect(freeList(a)).toEqual([[400, 624]]);
    a.free(p); // no free neighbour on the left, q is live
    expect(freeList(a)).toEqual([[0, 100], [400, 624]]);
    a.free(s); // joins the tail (next)
    expect(freeList(a)).toEqual([[0, 100], [300, 724]]);
    a.free(q); // joins p (previous)
    expect(freeList(a)).toEqual([[0, 200], [300, 724]]);
    a.free(r); // bridges both
    expect(freeList(a)).toEqual([[0, 1024]]);
    expect(a.largestFree).toBe(1024);
  });

  it('throws a capacity error carrying the tag, the aligned need, the largest free range and total free', () => {
    const a = new TierAllocator({ capacity: 1024 });
    const x = a.allocate(256, 'sinks');
    a.allocate(256, 'window');
    a.free(x); // free: [0,256) and [512,1024): 768 total, largest 512
    expect(a.canAllocate(600)).toBe(false);
    let err: unknown;
    try {
      a.allocate(600, 'hot-set');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(KvoffCapacityError);
    expect(err).toBeInstanceOf(TierCapacityError);
    const e = err as TierCapacityError;
    expect(e.code).toBe('KVOFF_E_CAPACITY');
    expect(e.tag).toBe('hot-set');
    expect(e.needed).toBe(768);
    expect(e.available).toBe(512);
    expect(e.largestFree).toBe(512);
    expect(e.totalFree).toBe(768);
    expect(e.capacity).toBe(1024);
    expect(e.message).toContain('"hot-set"');
    expect(e.message).toContain('768');
    expect(e.message).toContain('fragmented');
    // A failed allocation changes nothing.
    expect(a.bytesInUse).toBe(256);
    expect(freeList(a)).toEqual([[0, 256], [512, 512]]);
    expect(() => a.allocate(2048, 'lowbit')).toThrow(/raise vramBudget/);
  });

  it('rejects double free, unknown offsets and bad arguments with typed errors', () => {
    const a = new TierAllocator({ capacity: 1024 });
    const o = a.allocate(10, 't');
    a.allocate(10, 't');
    a.free(o);
    expect(() => a.free(o)).toThrow(KvoffArgumentError);
    expect(() => a.free(128)).toThrow(KvoffArgumentError); // inside nothing live
    expect(() => a.free(256 + 1)).toThrow(KvoffArgumentError); // interior of a live range
    expect(() => a.allocate(0, 't')).toThrow(KvoffArgumentError);
    expect(() => a.allocate(1.5, 't')).toThrow(KvoffArgumentError);
    expect(() => a.allocate(8, '')).toThrow(KvoffArgumentError);
    expect(() => a.canAllocate(-1)).toThrow(KvoffArgumentError);
    expect(() => new TierAllocator({ capacity: 0 })).toThrow(KvoffArgumentError);
    expect(() => new TierAllocator({ capacity: 1024, alignment: 24 })).toThrow(KvoffArgumentError);
    expect(a.bytesInUse).toBe(256);
  });

  it('reports usage by tag, peak, reset and disposed use', () => {
    const a = new TierAllocator({ capacity: 8192 });
    const l = a.allocate(1000, 'lowbit');
    a.allocate(256, 'window');
    a.allocate(300, 'lowbit');
    expect(a.usageByTag()).toEqual({ lowbit: 1024 + 512, window: 256 });
    a.free(l);
    expect(a.usageByTag()).toEqual({ lowbit: 512, window: 256 });
    expect(a.peakBytes).toBe(1024 + 256 + 512);
    expect(a.bytesInUse).toBe(768);
    expect(a.bytesFree).toBe(8192 - 768);
    a.reset();
    expect(a.bytesInUse).toBe(0);
    expect(a.peakBytes).toBe(0);
    expect(a.usageByTag()).toEqual({});
    expect(freeList(a)).toEqual([[0, 8192]]);
    a.dispose();
    a.dispose(); // idempotent
    expect(a.live).toBe(false);
    expect(() => a.allocate(1, 't')).toThrow(KvoffDisposedError);
    expect(() => a.canAllocate(1)).toThrow(KvoffDisposedError);
    expect(() => a.free(0)).toThrow(KvoffDisposedError);
    expect(() => a.bytesInUse).toThrow(KvoffDisposedError);
    expect(() => a.usageByTag()).toThrow(KvoffDisposedError);
  });

  it('handles capacities above 4 GiB (offsets are not 32-bit)', () => {
    const a = new TierAllocator({ capacity: 80 * 2 ** 30 });
    expect(a.allocate(5 * 2 ** 30, 'lowbit')).toBe(0);
    expect(a.allocate(2 ** 30, 'hot')).toBe(5 * 2 ** 30);
    expect(a.largestFree).toBe(74 * 2 ** 30);
  });
});

describe('planTier', () => {
  const parts = [
    { tag: 'lowbit', bytes: 1000 },
    { tag: 'window', bytes: 256 },
    { tag: 'sinks', bytes: 1 },
  ];

  it('reports needed (the smallest budget that works) and given when it does not fit', () => {
    const r = planTier(parts, 1500);
    expect(r).toEqual({ ok: false, needed: 1024 + 256 + 256, given: 1500 });
    const exact = planTier(parts, 1536);
    expect(exact.ok).toBe(true);
    expect(planTier(parts, 1535).ok).toBe(false);
    expect(planTier([], 0)).toMatchObject({ ok: true, needed: 0, given: 0 });
    expect(planTier([{ tag: 'a', bytes: 3 }], 16, 16)).toMatchObject({ ok: true, needed: 16 });
    expect(() => planTier([{ tag: 'a', bytes: 0 }], 16)).toThrow(KvoffArgumentError);
    expect(() => planTier(parts, -1)).toThrow(KvoffArgumentError);
  });

  it('gives the offsets a fresh allocator hands out in the same order, and `needed` always fits', () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ tag: fc.constantFrom('a', 'b', 'c'), bytes: fc.integer({ min: 1, max: 5000 }) }), { maxLength: 20 }),
        fc.constantFrom(1, 64, 256, 4096),
        (ps, alignment) => {
          const plan = planTier(ps, 2 ** 40, alignment);
          expect(plan.ok).toBe(true);
          if (!plan.ok) return;
          if (plan.needed === 0) return;
          const a = new TierAllocator({ capacity: plan.needed, alignment });
          ps.forEach((p, i) => expect(a.allocate(p.bytes, p.tag)).toBe(plan.offsets[i]));
          expect(a.bytesFree).toBe(0);
          expect(planTier(ps, plan.needed - 1, alignment)).toEqual({ ok: false, needed: plan.needed, given: plan.needed - 1 });
        },
      ),
      { numRuns: 200 },
    );
  });
});

type Op = { kind: 'alloc'; bytes: number; tag: string } | { kind: 'free'; pick: number };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { arbitrary: fc.record({ kind: fc.constant('alloc' as const), bytes: fc.integer({ min: 1, max: 3000 }), tag: fc.constantFrom('lowbit', 'window', 'sinks', 'hot', 'staging') }), weight: 3 },
  { arbitrary: fc.record({ kind: fc.constant('free' as const), pick: fc.nat() }), weight: 2 },
);

describe('TierAllocator property', () => {
  it('random allocate/free runs keep the ranges consistent', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 40_000 }),
        fc.constantFrom(1, 8, 256, 1024),
        fc.array(opArb, { maxLength: 120 }),
        (capacity, alignment, ops) => {
          const a = new TierAllocator({ capacity, alignment });
          const live: Array<[number, number, string]> = []; // [offset, aligned bytes, tag]
          const check = () => {
            const { starts, sizes } = a.freeRanges();
            let free = 0;
            for (let i = 0; i < starts.length; i++) {
              free += sizes[i]!;
              expect(sizes[i]!).toBeGreaterThan(0);
              if (i > 0) expect(starts[i]!).toBeGreaterThan(starts[i - 1]! + sizes[i - 1]!); // sorted, coalesced
            }
            const inUse = live.reduce((s, r) => s + r[1], 0);
            expect(a.bytesInUse).toBe(inUse);
            expect(inUse + free).toBe(capacity);
            expect(a.peakBytes).toBeGreaterThanOrEqual(a.bytesInUse);
            // Live and free ranges together tile [0, capacity) with no overlap.
            const all = [...live.map((r) => [r[0], r[1]] as const), ...Array.from(starts, (s, i) => [s, sizes[i]!] as const)].sort((x, y) => x[0] - y[0]);
            let cursor = 0;
            for (const [off, size] of all) {
              expect(off).toBe(cursor);
              expect(off % alignment).toBe(0);
              cursor = off + size;
            }
            expect(cursor).toBe(capacity);
            for (const [off, size] of live) {
              expect(off).toBeGreaterThanOrEqual(0);
              expect(off + size).toBeLessThanOrEqual(capacity);
            }
            const byTag: Record<string, number> = {};
            for (const [, size, tag] of live) byTag[tag] = (byTag[tag] ?? 0) + size;
            expect(a.usageByTag()).toEqual(byTag);
          };
          for (const op of ops) {
            if (op.kind === 'alloc') {
              const size = alignUp(op.bytes, alignment);
              const { starts, sizes } = a.freeRanges();
              const firstFit = Array.from(sizes).findIndex((s) => s >= size);
              expect(a.canAllocate(op.bytes)).toBe(firstFit >= 0);
              if (firstFit >= 0) {
                const off = a.allocate(op.bytes, op.tag);
                expect(off).toBe(starts[firstFit]);
                live.push([off, size, op.tag]);
              } else {
                expect(() => a.allocate(op.bytes, op.tag)).toThrow(TierCapacityError);
              }
            } else if (live.length > 0) {
              const [off] = live.splice(op.pick % live.length, 1)[0]!;
              a.free(off);
              expect(() => a.free(off)).toThrow(KvoffArgumentError);
            }
            check();
          }
          for (const [off] of live.splice(0)) a.free(off);
          check();
          expect(freeList(a)).toEqual([[0, capacity]]);
          expect(a.usageByTag()).toEqual({});
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe('HostDeviceTier', () => {
  it('hands out refs that native arenaWrite/arenaRead use, never beyond capacity', () => {
    const before = arenaTotals();
    const tier = new HostDeviceTier({ capacity: 64 * 1024 });
    expect(arenaTotals().count).toBe(before.count + 1);
    const a = tier.allocate(1000, 'lowbit');
    const b = tier.allocate(4096, 'window');
    expect(a.offset).toBe(0);
    expect(b.offset).toBe(1024);
    expect(a.ref).toEqual({ handle: tier.handle, offset: 0 });
    expect(b.ref).toEqual({ handle: tier.handle, offset: 1024 });
    expect(tier.ref(b.offset)).toEqual(b.ref);
    expect(() => tier.ref(512)).toThrow(KvoffArgumentError);

    const n = native();
    const da = new Uint8Array(1000).map((_, i) => (i * 7 + 1) & 0xff);
    const db = new Float32Array(1024).map((_, i) => i * 0.5 - 3); // [1024] = 4096 bytes
    n.arenaWrite({ handle: a.ref.handle, offset: a.ref.offset, data: da });
    n.arenaWrite({ handle: b.ref.handle, offset: b.ref.offset, data: new Uint8Array(db.buffer) });
    expect(n.arenaRead({ handle: a.ref.handle, offset: a.ref.offset, bytes: 1000 })).toEqual(da);
    const back = n.arenaRead({ handle: b.ref.handle, offset: b.ref.offset, bytes: 4096 });
    expect(new Float32Array(back.buffer, back.byteOffset, 1024)).toEqual(db);
    // Neighbours untouched: the slack after a's 1000 bytes is still zero.
    expect(Array.from(n.arenaRead({ handle: tier.handle, offset: 1000, bytes: 24 }))).toEqual(new Array(24).fill(0));

    expect(tier.usageByTag()).toEqual({ lowbit: 1024, window: 4096 });
    expect(tier.bytesInUse).toBe(5120);
    expect(tier.canAllocate(64 * 1024 - 5120)).toBe(true);
    const rest = tier.allocate(64 * 1024 - 5120, 'staging');
    expect(rest.offset + 64 * 1024 - 5120).toBe(tier.capacity);
    expect(tier.canAllocate(1)).toBe(false);
    expect(() => tier.allocate(1, 'hot')).toThrow(KvoffCapacityError);
    tier.free(a.offset);
    expect(() => tier.free(a.offset)).toThrow(KvoffArgumentError);
    expect(tier.peakBytes).toBe(64 * 1024);

    tier.dispose();
    tier.dispose();
    expect(arenaTotals().count).toBe(before.count);
    expect(() => tier.allocate(1, 't')).toThrow(KvoffDisposedError);
    expect(() => tier.handle).toThrow(KvoffDisposedError);
  });

  it('validates before taking memory', () => {
    const before = arenaTotals();
    expect(() => new HostDeviceTier({ capacity: 0 })).toThrow(KvoffArgumentError);
    expect(() => new HostDeviceTier({ capacity: 4096, alignment: 3 })).toThrow(KvoffArgumentError);
    expect(arenaTotals()).toEqual(before);
  });
});
