// infinigen (InfiniGen, OSDI'24): the next layer's top-k is speculated from this layer's input with partial, skewed
// q/k columns and prefetched one layer ahead; knobs, budget fitting and device parts. See infinigen-attention.ts.
import { z } from 'zod';
import type { Knobs, PolicySpec, SeqShape } from '../engine/policies.js';
import { halvingsTo, largestFitting, tierBytes } from './budget-fit.js';
import { INFINIGEN_DEFAULTS, InfinigenAttention, infinigenDeviceParts, type InfinigenKnobs } from './infinigen-attention.js';

const full = (k: Knobs): InfinigenKnobs => ({ ...INFINIGEN_DEFAULTS, ...k }) as InfinigenKnobs;

export const infinigenPolicy: PolicySpec = {
  name: 'infinigen', kvHome: 'host', stagesLayer: false, speculative: false,
  knobs: z.object({
    topK: z.number().int('an integer >= 1').min(1, 'an integer >= 1').max(1 << 24, 'an integer <= 16777216'),
    partialRatio: z.number().gt(0, 'a number in (0, 1]').max(1, 'a number in (0, 1]'),
    window: z.number().int('an integer >= 0').min(0, 'an integer >= 0').max(1 << 20, 'an integer <= 1048576'),
    sinks: z.number().int('an integer >= 0').min(0, 'an integer >= 0').max(1 << 16, 'an integer <= 65536'),
  }).partial().strict(),
  /** topK, when not given, as large as the bytes left after the partial keys allow (every token at most). */
  fit(s: SeqShape, bytes: number, given: Knobs) {
    const base = full(given);
    if (given.topK !== undefined || !Number.isFinite(bytes)) return { ...base };
    const topK = largestFitting(1, Math.max(1, s.capacityTokens), (x) => tierBytes(infinigenDeviceParts(s, { ...base, topK: x })) <= bytes);
    return topK === null ? null : { ...base, topK };
  },
  // Halvings of the default top-k; the last is the smallest setting, whose bytes a refusal reports.
  candidates: (given) => (given.topK !== undefined ? [{ ...full(given) }] : halvingsTo(INFINIGEN_DEFAULTS.topK, 1).map((topK) => ({ ...full(given), topK }))),
  seqParts: (s, k) => infinigenDeviceParts(s, full(k)),
  openSeq: (tier, s, k, env) => new InfinigenAttention(tier, s, full(k), env.model),
};
