// The policies as data: where the full-precision KV lives, the knobs each takes (zod), the knob settings to try
// under a byte budget, and the per-sequence device-tier state each opens.
import { z } from 'zod';
import type { HostDeviceTier } from '../device/device-tier.js';
import type { TierPart } from '../device/tier-allocator.js';
import type { KvDtype } from '../native.js';
import type { DecodeAttention } from './decode-attention.js';
import type { Model } from '../model/model.js';
import { halvingsTo } from '../policies/budget-fit.js';
import { BASELINE_POLICIES } from '../policies/registry.js';
import type { PolicyName } from './options.js';
import { EXACT_DEFAULTS, SPECACHE_DEFAULTS, SplitAttention, TIERED_DEFAULTS, splitDeviceParts, type SplitKnobs } from './split-attention.js';

/** One sequence's share of the run: what its device-tier state is sized for. */
export interface SeqShape {
  numLayers: number;
  numKvHeads: number;
  groupSize: number; // query heads per KV head
  headDim: number;
  dtype: KvDtype;
  capacityTokens: number; // the most tokens the sequence will hold
}

export type Knobs = Record<string, number>;

/** What a policy may read besides the KV: the model (its config, tokenizer, weights). */
export interface PolicyEnv {
  model: Model;
}

export interface PolicySpec {
  name: PolicyName;
  /** Home of the full-precision cache: the device tier (dense) or pinned host memory (everything else). */
  kvHome: 'device' | 'host';
  /** Copies the whole layer's KV into a device staging buffer before attending (HF OffloadedCache). */
  stagesLayer: boolean;
  /** Feeds a speculative second token each decode step (SpeCache). */
  speculative: boolean;
  /** The knobs the policy takes, validated strictly (unknown names are refused with this list). */
  knobs: z.ZodObject<z.ZodRawShape>;
  /** Knob settings to try, best first, under a byte budget; the knobs the user gave stay fixed. */
  candidates(given: Knobs): Knobs[];
  /**
   * Optional: sizes the knobs straight from one sequence's share of the budget (`bytes`; Infinity when
   * uncapped), e.g. an eviction policy's kept tokens. Its result is tried before `candidates`.
   */
  fit?(s: SeqShape, bytes: number, given: Knobs): Knobs | null;
  /** Device-tier parts of one sequence under `knobs`. */
  seqParts(s: SeqShape, knobs: Knobs): TierPart[];
  /** The sequence's decode attention, its device state allocated from `tier`; null: attention reads the cache. */
  openSeq(tier: HostDeviceTier, s: SeqShape, knobs: Knobs, env: PolicyEnv): DecodeAttention | null;
}

const noKnobs = z.object({}).strict();

const plain = {
  kvHome: 'host', stagesLayer: false, speculative: false, knobs: noKnobs,
  candidates: () => [{}], seqParts: () => [], openSeq: () => null,
} as const;

const splitKnobs = {
  topK: z.number().int().min(0).max(1 << 20),
  sinks: z.number().int().min(0).max(1 << 16),
  window: z.number().int().min(1).max(1 << 20),
  bits: z.literal([1, 2, 4]),
  keyGroupSize: z.literal([32, 64]),
};

/**
 * Under a budget, a split policy first gives up precision of the low-bit copy (it is the bulk at long context),
 * then coarser key groups (less metadata), then hot-set size.
 */
function splitCandidates(defaults: SplitKnobs, given: Knobs): Knobs[] {
  const bitsList = given.bits !== undefined ? [given.bits] : [4, 2, 1].filter((b) => b <= defaults.bits);
  const groups = given.keyGroupSize !== undefined ? [given.keyGroupSize] : [32, 64];
  const topKs = given.topK !== undefined ? [given.topK] : halvingsTo(defaults.topK, 8);
  const out: Knobs[] = [];
  for (const bits of bitsList) {
    for (const keyGroupSize of groups) {
      for (const topK of topKs) {
        // The always-hot window covers the keys not yet quantized: at least one key group.
        const window = given.window ?? Math.max(defaults.window, keyGroupSize);
        out.push({ ...strip(defaults), ...given, bits, keyGroupSize, topK, window });
      }
    }
  }
  return out;
}

function strip(k: SplitKnobs): Knobs {
  const { mode: _, ...rest } = k;
  return rest;
}

function splitPolicy(name: 'exact' | 'tiered' | 'specache', defaults: SplitKnobs): PolicySpec {
  const shape = name === 'tiered' ? { ...splitKnobs, cpuK: z.number().int().min(0).max(1 << 24) } : splitKnobs;
  const full = (k: Knobs): SplitKnobs => ({ ...defaults, ...k, mode: defaults.mode }) as SplitKnobs;
  return {
    name, kvHome: 'host', stagesLayer: false, speculative: name === 'specache',
    knobs: z.object(shape).partial().strict().superRefine((k, ctx) => {
      // The always-hot window covers the keys not yet quantized: at least one key group.
      const group = k.keyGroupSize ?? defaults.keyGroupSize;
      if (k.window !== undefined && k.window < group) ctx.addIssue({ code: 'custom', path: ['window'], message: `at least keyGroupSize (${group})` });
    }),
    candidates: (given) => splitCandidates(defaults, given),
    seqParts: (s, k) => splitDeviceParts(s, full(k)),
    openSeq: (tier, s, k) => new SplitAttention(tier, s, full(k)),
  };
}

const ENGINE_POLICIES: Partial<Record<PolicyName, PolicySpec>> = {
  dense: { ...plain, name: 'dense', kvHome: 'device' },
  // FastDecode / llama.cpp -nkvo: attention runs where the KV is, on the CPU workers; the device holds no KV.
  cpu: { ...plain, name: 'cpu' },
  // HF OffloadedCache: each sequence's layer is staged whole in the device tier before it is attended.
  'offload-layer': {
    ...plain, name: 'offload-layer', stagesLayer: true,
    seqParts: (s) => [{ tag: 'staging', bytes: s.numKvHeads * s.capacityTokens * 2 * s.headDim * 2 }],
  },
  // He & Zhai + SpeCache's hot set: low-bit keys pick the hot tokens; the device attends them, the CPU the rest.
  exact: splitPolicy('exact', EXACT_DEFAULTS),
  // Ours: full precision for the hottest k1 (device), exact CPU attention for the next k2, a low-bit tail for the rest.
  tiered: splitPolicy('tiered', TIERED_DEFAULTS),
  // SpeCache: full-precision hot top-k plus a low-bit tail on the device; a speculative token picks the next hot set.
  specache: splitPolicy('specache', SPECACHE_DEFAULTS),
};

/** Every policy this build runs: the engine's own (above) and the baselines of src/policies/, one file each. */
export const POLICY_SPECS: Partial<Record<PolicyName, PolicySpec>> = {
  ...ENGINE_POLICIES,
  ...Object.fromEntries(BASELINE_POLICIES.map((p) => [p.name, p])),
};
