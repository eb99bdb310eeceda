// h2o (Heavy-Hitter Oracle): the `recent` latest tokens plus the heavy hitters, the tokens with the largest
// attention accumulated over the steps so far. At prefill the accumulation starts from the observation window's
// attention (the last `window` prompt queries; the paper sums over every prompt query, O(n^2) here); each decode
// step adds its attention, averaged over the query heads of the KV head's group.
import { z } from 'zod';
import type { Knobs } from '../engine/policies.js';
import type { Candidates } from './eviction-attention.js';
import { evictionPolicy, uniformCapacities, windowKnob, type EvictionDef } from './eviction-spec.js';
import { lowestScore, range, topPositions } from './ranking.js';

export const H2O_DEFAULTS = { window: 32 };

/** The paper splits the budget evenly between heavy hitters and recent tokens. */
export const h2oRecent = (capacity: number): number => Math.max(1, Math.floor(capacity / 2));

/** Prompt positions kept: the latest `recent`, and the best capacity - recent of the rest by accumulated attention. */
export function h2oKeep(attn: Float32Array, capacity: number, recent: number): Int32Array {
  const n = attn.length;
  if (n <= capacity) return range(0, n);
  const heavy = topPositions(attn, range(0, n - recent), capacity - recent);
  return Int32Array.from([...heavy, ...range(n - recent, n)]);
}

/**
 * At decode, once over capacity: the token with the least accumulated attention outside the recent window
 * (the latest `recent` positions, the arriving one included) is evicted.
 */
export function h2oEvict(c: Candidates, capacity: number, recent: number): number[] {
  const m = c.positions.length;
  if (m <= capacity) return [];
  const newest = c.positions[m - 1];
  const victim = lowestScore(c.positions, c.scores, (i) => c.positions[i] <= newest - recent);
  return [victim];
}

const def: EvictionDef = {
  name: 'h2o',
  knobs: { recent: z.number().int().min(1).max(1 << 24), window: windowKnob },
  minCapacity: (given) => (given.recent ?? 1) + 1,
  minWhy: 'the recent tokens and at least one heavy hitter',
  resolve: (given: Knobs, capacity: number): Knobs => ({ ...H2O_DEFAULTS, recent: h2oRecent(capacity), ...given, capacity }),
  layerCapacities: uniformCapacities,
  rule: (capacities, k) => ({
    capacities,
    window: k.window,
    scoring: 'accumulate',
    select: (_l, _h, _n, attn) => h2oKeep(attn, k.capacity, k.recent),
    evict: (_l, _h, c, cap) => h2oEvict(c, cap, k.recent),
  }),
};

export const h2oPolicy = evictionPolicy(def);
