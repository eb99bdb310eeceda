// pyramid (PyramidKV): SnapKV's selection with per-layer budgets that shrink linearly with depth (lower layers
// attend broadly, upper ones to few tokens), the total the same as snapkv's at equal capacity.
import { z } from 'zod';
import type { Knobs, SeqShape } from '../engine/policies.js';
import { evictionPolicy, type EvictionDef } from './eviction-spec.js';
import { SNAPKV_DEFAULTS, snapkvKnobs, snapkvRule } from './snapkv.js';

export const PYRAMID_DEFAULTS = { ...SNAPKV_DEFAULTS, beta: 20 };

/**
 * Slots per KV head of each of L layers: each keeps the `window` plus a selected part that falls linearly from
 * layer 0 to the last, where it is 1/beta of the average; the selected parts sum to L * (capacity - window)
 * exactly (floors first, the remainder one each to the layers with the largest fractions, lower layers on ties).
 */
export function pyramidCapacities(L: number, capacity: number, window: number, beta: number): number[] {
  const avg = capacity - window; // selected tokens per layer, on average
  if (L === 1) return [capacity];
  const top = avg / beta; // the last layer's
  const bottom = 2 * avg - top; // layer 0's, so that the mean is avg
  const exact = Array.from({ length: L }, (_, l) => bottom - ((bottom - top) * l) / (L - 1));
  const sel = exact.map(Math.floor);
  let rest = L * avg - sel.reduce((a, b) => a + b, 0);
  const order = exact.map((x, l) => [x - Math.floor(x), l] as const).sort((a, b) => b[0] - a[0] || a[1] - b[1]);
  for (let i = 0; rest > 0; i = (i + 1) % L, rest--) sel[order[i][1]]++;
  return sel.map((x) => x + window);
}

function layerCapacities(s: SeqShape, k: Knobs): number[] {
  // Uncapped, or room for every token: nothing is evicted, a pyramid would only move memory around.
  if (k.capacity >= s.capacityTokens) return new Array(s.numLayers).fill(k.capacity);
  return pyramidCapacities(s.numLayers, k.capacity, k.window, k.beta);
}

const def: EvictionDef = {
  name: 'pyramid',
  knobs: { ...snapkvKnobs, beta: z.number().min(1).max(1e6) },
  minCapacity: (given) => (given.window ?? PYRAMID_DEFAULTS.window) + 1,
  minWhy: 'the observation window and at least one selected token per layer on average',
  resolve: (given: Knobs, capacity: number): Knobs => ({ ...PYRAMID_DEFAULTS, ...given, capacity }),
  layerCapacities,
  rule: (capacities, k) => snapkvRule(capacities, k),
};

export const pyramidPolicy = evictionPolicy(def);
