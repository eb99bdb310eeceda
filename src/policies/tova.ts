// tova (Token Omission Via Attention): a fixed-size cache; each step, once over size, the token with the lowest
// attention of the current query is dropped. The paper averages the attention over all heads of a layer; here
// each KV head keeps its own set, so the average is over the query heads of its GQA group. At the end of prefill
// the current query is the prompt's last: the top `capacity` by its attention are kept.
import type { Knobs } from '../engine/policies.js';
import type { Candidates } from './eviction-attention.js';
import { evictionPolicy, uniformCapacities, type EvictionDef } from './eviction-spec.js';
import { lowestScore, range, topPositions } from './ranking.js';

/** Prompt positions kept: the `capacity` best by the last query's attention. */
export function tovaKeep(attn: Float32Array, capacity: number): Int32Array {
  const n = attn.length;
  if (n <= capacity) return range(0, n);
  return Int32Array.from(topPositions(attn, range(0, n), capacity));
}

/** At decode, once over capacity: the lowest current-step attention goes, the arriving token included. */
export function tovaEvict(c: Candidates, capacity: number): number[] {
  if (c.positions.length <= capacity) return [];
  return [lowestScore(c.positions, c.scores, () => true)];
}

const def: EvictionDef = {
  name: 'tova',
  knobs: {},
  minCapacity: () => 1,
  minWhy: 'one token',
  resolve: (given: Knobs, capacity: number): Knobs => ({ ...given, capacity }),
  layerCapacities: uniformCapacities,
  rule: (capacities, k) => ({
    capacities,
    window: 1, // the current query only
    scoring: 'current',
    select: (_l, _h, _n, attn) => tovaKeep(attn, k.capacity),
    evict: (_l, _h, c, cap) => tovaEvict(c, cap),
  }),
};

export const tovaPolicy = evictionPolicy(def);
