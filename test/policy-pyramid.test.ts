// pyramid's budgets: linear in depth, the last layer at 1/beta of the average, the same total as uniform.
import { describe, expect, it } from 'vitest';
import { pyramidCapacities } from '../src/policies/pyramid.js';

describe('pyramid budgets', () => {
  it('shrink linearly with depth and sum to layers x capacity', () => {
    // 4 layers, capacity 102, window 32: 70 selected per layer on average, last 70/20 = 3.5, first 136.5:
    // 136.5, 92.17, 47.83, 3.5 -> floors 136, 92, 47, 3 (278); the 2 left go to the largest fractions (.83, then
    // .5 of layer 0 before layer 3's): 137, 92, 48, 3, plus the window.
    const caps = pyramidCapacities(4, 102, 32, 20);
    expect(caps).toEqual([169, 124, 80, 35]);
    expect(caps.reduce((a, b) => a + b, 0)).toBe(4 * 102);
    for (let l = 1; l < caps.length; l++) expect(caps[l]).toBeLessThan(caps[l - 1]);
    for (const c of caps) expect(c).toBeGreaterThanOrEqual(32); // the window always fits
  });

  it('a single layer, or no room to shape, stays uniform', () => {
    expect(pyramidCapacities(1, 50, 8, 20)).toEqual([50]);
    expect(pyramidCapacities(3, 9, 8, 20)).toEqual([10, 9, 8]); // 1 selected on average: 2, 1, 0
  });
});
