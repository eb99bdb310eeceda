// snapkv (SnapKV): one-shot selection at the end of prefill. The last `window` prompt queries vote: their attention
// over the earlier tokens, summed over the window and averaged over the group's query heads, is pooled along the
// tokens (so that a chosen token brings its neighbours) and the top capacity - window are kept with the window.
// The paper leaves decode uncompressed; under a fixed budget the selected prompt tokens stay and the window plus
// the generated tokens form a sliding window.
import { z } from 'zod';
import type { Knobs } from '../engine/policies.js';
import type { Candidates, EvictionRule } from './eviction-attention.js';
import { evictionPolicy, poolKernelKnob, uniformCapacities, windowKnob, type EvictionDef } from './eviction-spec.js';
import { oldestFrom, range, topPositions } from './ranking.js';

export const SNAPKV_DEFAULTS = { window: 32, kernel: 7, avgPool: 0 };

/**
 * 1-D pooling with stride 1 and a centred odd kernel, as torch's max_pool1d (padding -inf) or avg_pool1d (zero
 * padding, divided by the kernel size) with padding kernel >> 1.
 */
export function pool1d(x: Float32Array, kernel: number, avg: boolean): Float32Array {
  const n = x.length;
  const half = kernel >> 1;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    let acc = avg ? 0 : -Infinity;
    for (let j = Math.max(0, i - half); j <= Math.min(n - 1, i + half); j++) acc = avg ? acc + x[j] : Math.max(acc, x[j]);
    out[i] = avg ? acc / kernel : acc;
  }
  return out;
}

/**
 * Prompt positions kept: the last `window` tokens (the observation window), and the top capacity - window of the
 * earlier ones by pooled window attention.
 */
export function snapkvKeep(attn: Float32Array, capacity: number, window: number, kernel: number, avg: boolean): Int32Array {
  const n = attn.length;
  if (n <= capacity) return range(0, n);
  const W = Math.min(window, capacity); // capacity > window whenever the knobs passed their minimum
  const prefix = n - W;
  const pooled = pool1d(attn.subarray(0, prefix), kernel, avg);
  return Int32Array.from([...topPositions(pooled, range(0, prefix), capacity - W), ...range(prefix, n)]);
}

/** At decode, once over capacity: the oldest token of the sliding part (positions from `pinnedFrom` on) goes. */
export function snapkvEvict(c: Candidates, capacity: number, pinnedFrom: number): number[] {
  if (c.positions.length <= capacity) return [];
  const i = oldestFrom(c.positions, pinnedFrom);
  return [i >= 0 ? i : c.positions.length - 1];
}

/** The rule of snapkv and pyramid: per-layer capacities, selection as above. */
export function snapkvRule(capacities: number[], k: Knobs): EvictionRule {
  let pinnedFrom = 0; // the prompt's observation window starts here; selected tokens before it stay for good
  return {
    capacities,
    window: k.window,
    scoring: 'none',
    select: (layer, _h, n, attn) => {
      pinnedFrom = Math.max(0, n - k.window);
      return snapkvKeep(attn, capacities[layer], k.window, k.kernel, k.avgPool === 1);
    },
    evict: (_l, _h, c, cap) => snapkvEvict(c, cap, pinnedFrom),
  };
}

export const snapkvKnobs = { window: windowKnob, kernel: poolKernelKnob, avgPool: z.literal([0, 1]) };

const def: EvictionDef = {
  name: 'snapkv',
  knobs: snapkvKnobs,
  minCapacity: (given) => (given.window ?? SNAPKV_DEFAULTS.window) + 1,
  minWhy: 'the observation window and at least one selected token',
  resolve: (given: Knobs, capacity: number): Knobs => ({ ...SNAPKV_DEFAULTS, ...given, capacity }),
  layerCapacities: uniformCapacities,
  rule: (capacities, k) => snapkvRule(capacities, k),
};

export const snapkvPolicy = evictionPolicy(def);
