// The device-resident run's planning that needs no GPU: the order in which infinigen's settings meet a budget, and
// the bits each key ratio buys on the device.
import { describe, expect, it } from 'vitest';
import { infinigenKeyBits } from '../src/cuda/infinigen-resident.js';
import { POLICY_SPECS } from '../src/engine/policies.js';
import { byTopKThenBits } from '../src/engine/resident-run.js';

describe('infinigen on the device: settings in budget order', () => {
  const spec = POLICY_SPECS.infinigen!;
  it('tries 4, 2 then 1 key bits at each top-k before halving the top-k', () => {
    const order = byTopKThenBits(spec, {}).map((k) => [k.topK, k.partialRatio]);
    expect(order.slice(0, 6)).toEqual([[64, 0.25], [64, 0.125], [64, 0.0625], [32, 0.25], [32, 0.125], [32, 0.0625]]);
    expect(order.at(-1)).toEqual([1, 0.0625]); // the smallest setting last: a refusal reports its bytes
    expect(order.map((k) => infinigenKeyBits(k[1]))).toEqual(order.map((_, i) => [4, 2, 1][i % 3]));
  });

  it('keeps what the user set: a given partialRatio, a given top-k', () => {
    expect(byTopKThenBits(spec, { partialRatio: 0.5 }).every((k) => k.partialRatio === 0.5)).toBe(true);
    expect(byTopKThenBits(spec, { topK: 16 }).map((k) => [k.topK, k.partialRatio])).toEqual([[16, 0.25], [16, 0.125], [16, 0.0625]]);
  });

  it('maps a key ratio to the bits holding the same key bytes, at most 4', () => {
    expect([1, 0.5, 0.25, 0.2, 0.125, 0.1, 0.0625, 0.01].map(infinigenKeyBits)).toEqual([4, 4, 4, 2, 2, 1, 1, 1]);
  });
});
