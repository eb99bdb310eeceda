// h2o's rule on hand-made attention: heavy hitters by accumulated score plus the recent window.
import { describe, expect, it } from 'vitest';
import { h2oEvict, h2oKeep, h2oRecent } from '../src/policies/h2o.js';

describe('h2o rule', () => {
  it('keeps the recent tokens and the heaviest of the rest at prefill', () => {
    //                         0    1    2    3    4    5    6    7    8    9
    const attn = Float32Array.of(0.9, 0.1, 0.5, 0.05, 0.7, 0.2, 0.3, 0.0, 0.4, 0.6);
    // capacity 5, recent 2: positions 8, 9 are recent; the best 3 of 0..7 by score are 0 (0.9), 4 (0.7), 2 (0.5).
    expect([...h2oKeep(attn, 5, 2)]).toEqual([0, 2, 4, 8, 9]);
    // ties go to the older token
    expect([...h2oKeep(Float32Array.of(1, 1, 1, 1, 0), 3, 1)]).toEqual([0, 1, 4]);
    expect([...h2oKeep(attn, 10, 2)]).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  });

  it('evicts the least accumulated attention outside the recent window', () => {
    const c = {
      positions: Int32Array.of(0, 7, 3, 9, 8, 10), // kept in slot order, then the arriving 10
      scores: Float32Array.of(2.5, 0.1, 0.4, 0.01, 0.02, 0.3),
    };
    // recent 3 protects 8, 9, 10 although they score lowest; of 0, 7, 3 the lowest is 7.
    expect(h2oEvict(c, 5, 3)).toEqual([1]);
    // recent 1 protects only 10: 9 goes.
    expect(h2oEvict(c, 5, 1)).toEqual([3]);
    expect(h2oEvict(c, 6, 1)).toEqual([]);
  });

  it('splits capacity evenly between heavy and recent by default', () => {
    expect(h2oRecent(102)).toBe(51);
    expect(h2oRecent(3)).toBe(1);
  });
});
