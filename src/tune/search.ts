// The tuner's search: every policy x knob setting x CPU thread count that fits the VRAM budget, planned the way
// RunKv plans it, ranked by the cost model's predicted step time.
import { planTier, type TierPart } from '../device/tier-allocator.js';
import { POLICY_SPECS, type Knobs, type SeqShape } from '../engine/policies.js';
import type { PolicyName } from '../engine/options.js';
import { HostKvCache } from '../kv/host-cache.js';
import type { KvDtype } from '../native.js';
import { exactDeviceBytes } from '../cuda/resident-attention.js';
import { residentExactHot } from '../engine/resident-run.js';
import type { ModelConfig } from '../model/types.js';
import { stepCost, usesCpuPool, type CostConstants, type StepCost, type TuneShape } from './cost-model.js';

/** The KV layout the engine would use: its default block size and dtype. */
export interface PlanShape extends TuneShape {
  dtype: KvDtype;
  blockSize: number;
}

export interface SearchInput {
  shape: PlanShape;
  context: number; // tokens of each sequence when the step runs
  capacityTokens: number; // tokens each sequence's device state is sized for (context plus the tokens generated)
  batch: number;
  budgetBytes: number; // the device tier's cap; Infinity: uncapped
  policies: readonly PolicyName[];
  constants: CostConstants;
}

export interface Ranked {
  policy: PolicyName;
  knobs: Knobs; // as the policy's candidates give them (engineKnobs keeps those its schema takes)
  cpuThreads: number;
  deviceBytes: number; // planned device tier of the whole run
  cost: StepCost;
}

export interface Unfit {
  policy: PolicyName;
  minBudgetBytes: number | null; // the smallest budget any of its settings needs; null when none could be planned
  reason: string;
}

/** tiered's CPU share: a few sizes around its default of 256, never more than the context. */
export function cpuKValues(context: number): number[] {
  const out = [64, 128, 256, 512, 1024, 4096].filter((k) => k <= context);
  return out.length ? out : [context];
}

/** Only the knobs the policy's schema takes: candidates carry defaults of sibling policies (exact's cpuK). */
export function engineKnobs(policy: PolicyName, knobs: Knobs): Knobs {
  const names = Object.keys(POLICY_SPECS[policy]!.knobs.shape);
  return Object.fromEntries(Object.entries(knobs).filter(([key]) => names.includes(key)));
}

function seqShape(input: SearchInput): SeqShape {
  const s = input.shape;
  return { numLayers: s.numLayers, numKvHeads: s.numKvHeads, groupSize: s.groupSize, headDim: s.headDim, dtype: s.dtype, capacityTokens: input.capacityTokens };
}

/** dense's full-precision cache, shared by the batch in the device tier (none for the others). */
function sharedParts(input: SearchInput, policy: PolicyName): TierPart[] {
  if (POLICY_SPECS[policy]!.kvHome !== 'device') return [];
  const s = input.shape;
  const numBlocks = input.batch * Math.ceil(input.capacityTokens / s.blockSize);
  return [{ tag: 'kv', bytes: HostKvCache.bytesFor({ numLayers: s.numLayers, numKvHeads: s.numKvHeads, headDim: s.headDim, blockSize: s.blockSize, numBlocks, dtype: s.dtype }) }];
}

/** Device-tier parts of the run under `knobs`, in the order RunKv.open lays them out. */
function runParts(input: SearchInput, policy: PolicyName, knobs: Knobs): TierPart[] {
  const perSeq = POLICY_SPECS[policy]!.seqParts(seqShape(input), knobs);
  return [...sharedParts(input, policy), ...Array.from({ length: input.batch }, () => perSeq).flat()];
}

/**
 * On CUDA one sequence of exact runs the device-resident step (resident-run.ts): only sinks and window live on the
 * device, so its low-bit knobs size nothing. Its one setting is resident-run's (sinks, window), at what it costs
 * there, instead of the host-side plan's hot set and low-bit copy.
 */
function residentExact(input: SearchInput): Array<{ knobs: Knobs; bytes: number }> | null {
  if (input.constants.backend !== 'cuda' || input.batch !== 1) return null;
  const s = input.shape;
  const config = { numLayers: s.numLayers, numKvHeads: s.numKvHeads, numHeads: s.numKvHeads * s.groupSize, headDim: s.headDim } as ModelConfig;
  const hot = residentExactHot(POLICY_SPECS.exact!, {});
  return [{ knobs: hot, bytes: exactDeviceBytes(config, hot) }];
}

/** The knob settings to try: the policy's budget fit (if it has one) and its candidates, without repeats. */
function knobSettings(input: SearchInput, policy: PolicyName): Knobs[] {
  const spec = POLICY_SPECS[policy]!;
  const shared = sharedParts(input, policy).reduce((n, p) => n + p.bytes, 0);
  const perSeq = Number.isFinite(input.budgetBytes) ? Math.floor((input.budgetBytes - shared) / input.batch) : Infinity;
  let fitted: Knobs | null = null;
  try {
    fitted = spec.fit?.(seqShape(input), perSeq, {}) ?? null;
  } catch {
    fitted = null; // a fit that refuses this shape leaves the candidates
  }
  const list = [...(fitted ? [fitted] : []), ...spec.candidates({})];
  const expanded = policy === 'tiered' ? list.flatMap((k) => cpuKValues(input.context).map((cpuK) => ({ ...k, cpuK }))) : list;
  const seen = new Set<string>();
  return expanded.filter((k) => {
    const key = JSON.stringify(Object.entries(k).sort());
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

/**
 * Ranks every fitting (policy, knobs, cpuThreads) by predicted ms per step, fastest first; ties keep the
 * policy's own best-first order. Policies with no fitting setting are listed with the smallest budget they need.
 */
export function searchSettings(input: SearchInput): { ranked: Ranked[]; unfit: Unfit[] } {
  const c = input.constants;
  const cap = Number.isFinite(input.budgetBytes) ? Math.max(0, Math.floor(input.budgetBytes)) : Number.MAX_SAFE_INTEGER;
  const allThreads = c.cpu.map((r) => r.threads);
  const ranked: Ranked[] = [];
  const unfit: Unfit[] = [];
  for (const policy of input.policies) {
    if (!POLICY_SPECS[policy]) {
      unfit.push({ policy, minBudgetBytes: null, reason: 'not part of this build' });
      continue;
    }
    // Threads matter only where the worker pool attends; elsewhere the engine's default (every core) stays.
    const threads = usesCpuPool(policy, c.backend) ? allThreads : [allThreads[allThreads.length - 1]];
    let smallest: number | null = null;
    let error: string | null = null;
    let fits = 0;
    const resident = policy === 'exact' ? residentExact(input) : null;
    const settings = resident ? resident.map((r) => r.knobs) : knobSettings(input, policy);
    for (const [i, knobs] of settings.entries()) {
      let plan: { ok: boolean; needed: number };
      try {
        plan = resident ? { ok: resident[i].bytes <= cap, needed: resident[i].bytes } : planTier(runParts(input, policy, knobs), cap);
      } catch (err) {
        // What RunKv would refuse too, e.g. a bit width the head dimension cannot pack, or an empty part.
        error = (err as Error).message;
        continue;
      }
      if (!plan.ok) {
        smallest = smallest === null ? plan.needed : Math.min(smallest, plan.needed);
        continue;
      }
      fits++;
      for (const cpuThreads of threads) {
        const cand = { policy, knobs, cpuThreads, deviceBytes: plan.needed };
        const cost = stepCost(input.shape, input.context, input.batch, cand, c);
        if (Number.isFinite(cost.msPerStep)) ranked.push({ ...cand, cost });
      }
    }
    if (fits === 0) {
      unfit.push(smallest !== null
        ? { policy, minBudgetBytes: smallest, reason: `needs at least ${smallest} bytes of device tier` }
        : { policy, minBudgetBytes: null, reason: error ?? 'no knob setting could be planned' });
    }
  }
  ranked.sort((a, b) => a.cost.msPerStep - b.cost.msPerStep); // stable: ties keep best-first order
  return { ranked, unfit };
}
