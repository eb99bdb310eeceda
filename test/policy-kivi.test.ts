// kivi's window/tail split on hand-made cases: every token is attended exactly once, by the window or by the
// low-bit copy, and the low-bit part never needs a token that is not quantized yet.
import { describe, expect, it } from 'vitest';
import { KIVI_DEFAULTS, kiviPolicy, kiviSplit } from '../src/policies/kivi.js';

/** Which part attends each of n tokens: 'w' window, 'q' low-bit, from a split. */
function parts(n: number, window: number, quantized: number): string {
  const { lowBitEnd, exclude } = kiviSplit(n, window, quantized);
  const ex = new Set(exclude);
  let s = '';
  for (let t = 0; t < n; t++) {
    const inWindow = t >= lowBitEnd;
    const inLowBit = t < quantized && !ex.has(t);
    expect(inWindow && inLowBit, `token ${t} attended twice`).toBe(false);
    s += inWindow ? 'w' : inLowBit ? 'q' : '?';
  }
  return s;
}

describe('kiviSplit', () => {
  it('a context within the window is attended exactly, whatever is quantized', () => {
    expect(kiviSplit(10, 128, 0)).toEqual({ lowBitEnd: 0, exclude: new Int32Array(0) });
    expect(parts(64, 64, 64)).toBe('w'.repeat(64));
  });

  it('past the window: the oldest tokens from the low-bit copy, the window exactly, disjoint and complete', () => {
    // 11 tokens, window 4, key groups of 4: groups [0,4) and [4,8) are quantized, [8,11) not yet.
    expect(kiviSplit(11, 4, 8)).toEqual({ lowBitEnd: 7, exclude: Int32Array.of(7) });
    expect(parts(11, 4, 8)).toBe('qqqqqqqwwww');
    // A window that ends on a group boundary excludes nothing.
    expect(parts(12, 4, 12)).toBe('qqqqqqqqwwww');
    // The smallest window that works (one key group) right after a group completes.
    expect(parts(300, 32, 288)).toBe('q'.repeat(268) + 'w'.repeat(32));
  });

  it('refuses a window that leaves tokens neither quantized nor exact', () => {
    expect(() => kiviSplit(40, 4, 32)).toThrow(/\[32, 36\) are neither quantized nor in the window/);
  });
});

describe('kivi knobs', () => {
  it('defaults to 2 bits and a 128-token window; candidates keep the bits and end at the smallest window', () => {
    expect(KIVI_DEFAULTS).toEqual({ bits: 2, window: 128, keyGroupSize: 32 });
    const c = kiviPolicy.candidates({});
    expect(c[0]).toEqual({ bits: 2, window: 128, keyGroupSize: 32 });
    expect(c.every((k) => k.bits === 2 && k.window >= k.keyGroupSize)).toBe(true);
    expect(kiviPolicy.candidates({ bits: 4, window: 64 })).toEqual([{ bits: 4, window: 64, keyGroupSize: 32 }, { bits: 4, window: 64, keyGroupSize: 64 }]);
  });

  it('refuses bad settings with the valid choices', () => {
    const bad = (k: object) => kiviPolicy.knobs.safeParse(k).error?.issues[0];
    expect(bad({ bits: 3 })).toMatchObject({ code: 'invalid_value', values: [2, 4] });
    expect(bad({ window: 16 })?.message).toBe('at least keyGroupSize (32)');
    expect(bad({ window: 32, keyGroupSize: 64 })?.message).toBe('at least keyGroupSize (64)');
    expect(bad({ topK: 8 })?.code).toBe('unrecognized_keys');
    expect(bad({ bits: 4, window: 64, keyGroupSize: 64 })).toBeUndefined();
  });
});
