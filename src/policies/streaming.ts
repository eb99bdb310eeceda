// streaming (StreamingLLM): the first `sinks` tokens plus a window of the most recent ones; the rest is dropped.
// Keys keep the positions they were rotated with (no re-rotation inside the cache, unlike the paper's rolling
// positions): the host cache stores post-RoPE keys, and the engine's positions keep counting.
import { z } from 'zod';
import type { Knobs } from '../engine/policies.js';
import { evictionPolicy, uniformCapacities, type EvictionDef } from './eviction-spec.js';
import { oldestFrom, range } from './ranking.js';
import type { Candidates } from './eviction-attention.js';

export const STREAMING_DEFAULTS = { sinks: 4 };

/** Positions of an n-token prompt kept under `capacity`: the sinks, then the latest capacity - sinks. */
export function streamingKeep(n: number, capacity: number, sinks: number): Int32Array {
  if (n <= capacity) return range(0, n);
  return Int32Array.from([...range(0, sinks), ...range(n - (capacity - sinks), n)]);
}

/** At decode, once over capacity: the oldest token past the sinks leaves the window. */
export function streamingEvict(c: Candidates, capacity: number, sinks: number): number[] {
  if (c.positions.length <= capacity) return [];
  return [oldestFrom(c.positions, sinks)];
}

const def: EvictionDef = {
  name: 'streaming',
  knobs: { sinks: z.number().int().min(0).max(1 << 16) },
  minCapacity: (given) => (given.sinks ?? STREAMING_DEFAULTS.sinks) + 1,
  minWhy: 'the sinks and a window of at least one token',
  resolve: (given: Knobs, capacity: number): Knobs => ({ ...STREAMING_DEFAULTS, ...given, capacity }),
  layerCapacities: uniformCapacities,
  rule: (capacities, k) => ({
    capacities,
    window: 0,
    scoring: 'none',
    select: (_l, _h, n) => streamingKeep(n, k.capacity, k.sinks),
    evict: (_l, _h, c, cap) => streamingEvict(c, cap, k.sinks),
  }),
};

export const streamingPolicy = evictionPolicy(def);
