// streaming's rule on hand-made cases: sinks plus the latest tokens at prefill, the oldest past the sinks evicted.
import { describe, expect, it } from 'vitest';
import { streamingEvict, streamingKeep } from '../src/policies/streaming.js';

const cands = (positions: number[]) => ({ positions: Int32Array.from(positions), scores: new Float32Array(positions.length) });

describe('streaming rule', () => {
  it('keeps the sinks and the latest capacity - sinks prompt tokens', () => {
    expect([...streamingKeep(20, 8, 2)]).toEqual([0, 1, 14, 15, 16, 17, 18, 19]);
    expect([...streamingKeep(20, 5, 0)]).toEqual([15, 16, 17, 18, 19]);
    expect([...streamingKeep(6, 8, 2)]).toEqual([0, 1, 2, 3, 4, 5]); // fits: everything
  });

  it('evicts the oldest token past the sinks once over capacity, whatever the slot order', () => {
    // Slots hold positions out of order (freed slots are reused); the arriving token 20 is last.
    expect(streamingEvict(cands([16, 0, 19, 1, 14, 15, 17, 18, 20]), 8, 2)).toEqual([4]); // position 14
    expect(streamingEvict(cands([0, 1, 2, 3]), 8, 2)).toEqual([]); // not full
    expect(streamingEvict(cands([0, 1, 2]), 2, 2)).toEqual([2]); // window of zero: the arriving token itself
  });
});
