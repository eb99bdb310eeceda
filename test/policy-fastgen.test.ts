// fastgen's rule on hand-made attention: the cheapest per-head policy that recovers the threshold, and decode
// re-applying it; token classes from the demo tokenizer.
import { describe, expect, it } from 'vitest';
import { Policy, TokenClass, fastgenChoose, fastgenEvict, tokenClasses } from '../src/policies/fastgen.js';
import { loadModel } from '../src/index.js';

const S = TokenClass.Special, P = TokenClass.Punct, O = TokenClass.Other;
const params = { recentRatio: 0.3, heavyRatio: 0.3 };

describe('fastgen rule', () => {
  // 10 tokens: bos, words, punctuation; local (30%) = positions 7, 8, 9; heavy (30%) = 3 tokens.
  const classes = Uint8Array.of(S, O, O, P, O, O, P, O, O, O);

  it('picks special for a head that looks at special tokens only', () => {
    const attn = Float32Array.of(1.9, 0, 0, 0.02, 0, 0, 0, 0.04, 0, 0.04);
    expect(fastgenChoose(attn, classes, 10, 0.95, params)).toEqual({ policy: Policy.Special, keep: Int32Array.of(0) });
  });

  it('picks punct, then local, then heavy as the mass spreads', () => {
    const punct = Float32Array.of(1, 0, 0, 0.5, 0, 0, 0.45, 0.05, 0, 0);
    expect(fastgenChoose(punct, classes, 10, 0.95, params)).toEqual({ policy: Policy.Punct, keep: Int32Array.of(0, 3, 6) });
    const local = Float32Array.of(0.5, 0, 0.02, 0.2, 0, 0, 0.3, 0.5, 0.2, 0.28);
    expect(fastgenChoose(local, classes, 10, 0.95, params)).toEqual({ policy: Policy.Local, keep: Int32Array.of(0, 3, 6, 7, 8, 9) });
    const heavy = Float32Array.of(0.2, 0.6, 0, 0.1, 0.5, 0.01, 0.1, 0.1, 0.1, 0.2);
    expect(fastgenChoose(heavy, classes, 10, 0.95, params)).toEqual({ policy: Policy.Heavy, keep: Int32Array.of(0, 1, 3, 4, 5, 6, 7, 8, 9) });
  });

  it('falls back to full, capped by capacity best class first', () => {
    const flat = Float32Array.from({ length: 10 }, () => 0.2);
    const r = fastgenChoose(flat, classes, 10, 0.95, params);
    expect(r.policy).toBe(Policy.Full);
    expect(r.keep).toEqual(Int32Array.from({ length: 10 }, (_, i) => i));
    // capacity 5: special (0), the newest local up to half the capacity (9, 8), then by score, newer on ties (7, 6)
    expect(fastgenChoose(flat, classes, 5, 0.95, params).keep).toEqual(Int32Array.of(0, 6, 7, 8, 9));
    // by score: 1 and 4 outrank the punctuation (3, 6) and the older local token (7)
    const peaks = Float32Array.of(0.2, 0.9, 0.1, 0.2, 0.8, 0.1, 0.2, 0.2, 0.2, 0.2);
    expect(fastgenChoose(peaks, classes, 5, 0.99, params).keep).toEqual(Int32Array.of(0, 1, 4, 8, 9));
  });

  it('at decode a special head drops every other arriving token; a local head drops what leaves the window', () => {
    const c = { positions: Int32Array.of(0, 10), scores: Float32Array.of(1, 0.5) };
    expect(fastgenEvict(Policy.Special, c, Uint8Array.of(S, O), 8, params)).toEqual([1]);
    expect(fastgenEvict(Policy.Special, c, Uint8Array.of(S, S), 8, params)).toEqual([]);
    // len 11: local = latest ceil(3.3) = 4 positions (7..10); 6 is neither local nor punct: it goes.
    const l = { positions: Int32Array.of(0, 6, 7, 8, 9, 10), scores: new Float32Array(6) };
    expect(fastgenEvict(Policy.Local, l, Uint8Array.of(S, O, O, O, O, O), 8, params)).toEqual([1]);
    // over capacity 4: special 0, the protected newest 2 (9, 10), then of punct 6 and local 7, 8 (scores equal) the newest, 8
    expect(fastgenEvict(Policy.Local, l, Uint8Array.of(S, P, O, O, O, O), 4, params)).toEqual([1, 2]);
  });

  it('token classes of the demo tokenizer: bos, eos, pad and reserved are special; ".", " ", "\\n" punctuation', async () => {
    const demo = await loadModel('demo', { backend: 'cpu' });
    try {
      const t = tokenClasses(demo);
      for (const id of [256, 257, 258, 259, 263]) expect(t[id], `id ${id}`).toBe(S);
      for (const ch of ['.', ',', ' ', '\n', '?']) expect(t[ch.charCodeAt(0)], JSON.stringify(ch)).toBe(P);
      for (const ch of ['a', 'Z', '7']) expect(t[ch.charCodeAt(0)], ch).toBe(O);
    } finally {
      await demo.dispose();
    }
  });
});
