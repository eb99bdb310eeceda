// The PolicySpec shape every eviction policy shares: one knob `capacity` (kept tokens per layer and KV head, fitted
// from the byte budget), the kept set as the only device-tier part, and EvictionAttention driven by the policy's rule.
import { z } from 'zod';
import { DEFAULT_TIER_ALIGNMENT } from '../device/tier-allocator.js';
import type { Knobs, PolicyEnv, PolicySpec, SeqShape } from '../engine/policies.js';
import type { PolicyName } from '../engine/options.js';
import { KvoffArgumentError } from '../errors.js';
import { EvictionAttention, type EvictionRule } from './eviction-attention.js';
import { unitBytes } from '../kernels/paged-kv.js';
import { KeptSet } from './kept-set.js';

/** The `capacity` knob: kept tokens per (layer, KV head); pyramid: their average over layers. */
export const capacityKnob = z.number().int().min(1).max(1 << 24);
/** The observation window: the prompt's last queries that one-shot selection ranks by. */
export const windowKnob = z.number().int().min(1).max(1 << 12);
/** SnapKV's pooling kernel, odd so that it is centred on the token it scores (1: no pooling). */
export const poolKernelKnob = z.number().int().min(1).max(63).refine((k) => k % 2 === 1, 'an odd kernel size');

export interface EvictionDef {
  name: PolicyName;
  /** The knobs besides capacity (partial; defaults filled by `resolve`). */
  knobs: z.ZodRawShape;
  /** The smallest capacity that the given knobs allow. */
  minCapacity(given: Knobs): number;
  /** What sets the minimum, for the error a too-small given capacity gets, e.g. "sinks + 1". */
  minWhy: string;
  /** Every knob, derived defaults filled in, for `capacity` (at least the minimum). */
  resolve(given: Knobs, capacity: number): Knobs;
  /** Slots per KV head of each layer; they sum to numLayers * capacity (pyramid reshapes, never grows it). */
  layerCapacities(s: SeqShape, k: Knobs): number[];
  /** The rule, for a sequence whose layers have `capacities` slots per KV head. */
  rule(capacities: number[], k: Knobs, env: PolicyEnv, s: SeqShape): EvictionRule;
}

export function uniformCapacities(s: SeqShape, k: Knobs): number[] {
  return new Array(s.numLayers).fill(k.capacity);
}

export function evictionPolicy(def: EvictionDef): PolicySpec {
  const knobs = z.object({ capacity: capacityKnob, ...def.knobs }).partial().strict();
  // A sequence never holds more than capacityTokens tokens: slots past that would stay empty.
  const capacities = (s: SeqShape, k: Knobs) => def.layerCapacities(s, k).map((c) => Math.max(1, Math.min(c, s.capacityTokens)));
  return {
    name: def.name, kvHome: 'host', stagesLayer: false, speculative: false, knobs,
    fit(s, bytes, given) {
      const min = def.minCapacity(given);
      if (given.capacity !== undefined) {
        if (given.capacity < min) throw new KvoffArgumentError('engine options.capacity', `at least ${min} for ${def.name} (${def.minWhy})`, given.capacity);
        return def.resolve(given, given.capacity);
      }
      // One allocation per sequence, rounded up to the tier alignment: only whole aligned units of it are usable.
      const usable = Number.isFinite(bytes) ? Math.floor(bytes / DEFAULT_TIER_ALIGNMENT) * DEFAULT_TIER_ALIGNMENT : Infinity;
      const perToken = s.numLayers * s.numKvHeads * unitBytes(s.headDim);
      // Never more than the sequence can hold: with that much, nothing is ever evicted (it equals dense).
      const capacity = Math.min(Math.floor(usable / perToken), Math.max(s.capacityTokens, min));
      return capacity < min ? null : def.resolve(given, capacity);
    },
    // Only reached when the fit fails: the smallest setting, whose bytes the capacity error reports.
    candidates: (given) => [def.resolve(given, given.capacity ?? def.minCapacity(given))],
    seqParts: (s, k) => [{ tag: 'kept', bytes: KeptSet.bytesFor({ ...s, capacities: capacities(s, k) }) }],
    openSeq: (tier, s, k, env) => new EvictionAttention(tier, s, def.rule(capacities(s, k), k, env, s)),
  };
}
