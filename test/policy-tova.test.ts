// tova's rule on hand-made attention: the lowest current-step attention is dropped, at fixed size.
import { describe, expect, it } from 'vitest';
import { tovaEvict, tovaKeep } from '../src/policies/tova.js';

describe('tova rule', () => {
  it('keeps the top capacity tokens by the last prompt query', () => {
    expect([...tovaKeep(Float32Array.of(0.5, 0.05, 0.1, 0.3, 0.05), 3)]).toEqual([0, 2, 3]);
    expect([...tovaKeep(Float32Array.of(0.5, 0.5), 3)]).toEqual([0, 1]);
  });

  it('drops the lowest current attention, the arriving token included, only when over capacity', () => {
    const c = (scores: number[]) => ({ positions: Int32Array.of(0, 4, 2, 9), scores: Float32Array.from(scores) });
    expect(tovaEvict(c([0.4, 0.1, 0.3, 0.2]), 3)).toEqual([1]); // position 4
    expect(tovaEvict(c([0.4, 0.3, 0.25, 0.05]), 3)).toEqual([3]); // the arriving token itself
    expect(tovaEvict(c([0.1, 0.4, 0.1, 0.4]), 3)).toEqual([0]); // tie: the older (position 0 before 2)
    expect(tovaEvict(c([0.4, 0.1, 0.3, 0.2]), 4)).toEqual([]);
  });
});
