// Host arenas: pinning, fallback with a loud warning, read/write, and no growth over create/dispose cycles.
import { describe, expect, it } from 'vitest';
import { HostArena, arenaTotals } from '../src/arena.js';

describe('HostArena', () => {
  it('allocates page-locked memory (or says why not) and round-trips bytes', () => {
    const a = new HostArena(10_000);
    expect(a.bytes).toBeGreaterThanOrEqual(10_000);
    expect(['mlock', 'cudaHostRegister', 'pageable']).toContain(a.method);
    expect(a.pinned).toBe(a.method !== 'pageable');
    a.write(100, Uint8Array.of(1, 2, 3));
    expect(Array.from(a.read(99, 5))).toEqual([0, 1, 2, 3, 0]);
    a.dispose();
  });

  it('falls back to pageable memory with a warning when locking fails', () => {
    process.env.KVOFF_TEST_PIN_FAIL = '1';
    try {
      const a = new HostArena(4096);
      expect(a.pinned).toBe(false);
      expect(a.method).toBe('pageable');
      a.dispose();
    } finally {
      delete process.env.KVOFF_TEST_PIN_FAIL;
    }
  });

  it('does not grow memory over repeated create/dispose cycles', () => {
    const before = arenaTotals();
    const cycle = () => {
      for (let i = 0; i < 50; i++) {
        const a = new HostArena(4 << 20);
        a.write(0, new Uint8Array(4 << 20).fill(1)); // touch every page
        a.dispose();
      }
    };
    cycle(); // warm-up: allocator and JIT settle
    const rss0 = process.memoryUsage().rss;
    cycle();
    cycle();
    const growth = process.memoryUsage().rss - rss0;
    expect(arenaTotals()).toEqual(before);
    expect(growth).toBeLessThan(64 << 20); // 400 MiB went through; far less may stay
  });

  it('supports `using` disposal', () => {
    const before = arenaTotals().count;
    {
      using a = new HostArena(1024);
      expect(arenaTotals().count).toBe(before + 1);
      expect(a.live).toBe(true);
    }
    expect(arenaTotals().count).toBe(before);
  });
});
