// fastgen (FastGen): each (layer, KV head) gets its own policy at the end of prefill, the cheapest of
//   special < special+punctuation < +local (recent) < +frequent (heavy hitters) < full
// whose kept tokens recover `threshold` of the head's attention (the observation window's). The paper has no
// budget; here each set is capped by `capacity`: special tokens first, then the newest local tokens (up to half
// the capacity), then the rest of the set by attention, so "full" under a budget is H2O-like. Uncapped, the
// cheap heads still drop what their policy drops (threshold 1 keeps everything). At decode every head
// re-applies its policy to its kept tokens plus the arriving one: local = the latest recentRatio of the
// sequence, frequent = the best heavyRatio of it by attention accumulated H2O-style.
import { z } from 'zod';
import type { Knobs, PolicyEnv } from '../engine/policies.js';
import type { Model } from '../model/model.js';
import type { Candidates, EvictionRule } from './eviction-attention.js';
import { evictionPolicy, uniformCapacities, windowKnob, type EvictionDef } from './eviction-spec.js';
import { range } from './ranking.js';

export const FASTGEN_DEFAULTS = { window: 32, threshold: 0.95, recentRatio: 0.3, heavyRatio: 0.3 };

/** The per-head policies, cheapest first. */
export const FASTGEN_POLICIES = ['special', 'punct', 'local', 'heavy', 'full'] as const;
export const Policy = { Special: 0, Punct: 1, Local: 2, Heavy: 3, Full: 4 } as const;
export type Policy = (typeof Policy)[keyof typeof Policy];

/** Token classes: 0 other, 1 special (bos, eos, pad, other added special tokens), 2 punctuation or whitespace. */
export const TokenClass = { Other: 0, Special: 1, Punct: 2 } as const;

export interface FastgenParams {
  recentRatio: number;
  heavyRatio: number;
}

/**
 * Tier of each token under `policy` and `capacity`: 0 special, 1 the newest local tokens (at most half the
 * capacity, so that under a tight budget the local window cannot crowd out every attended token, as in H2O's
 * even split), 2 the rest of the policy's set (punctuation, older local, heavy hitters; under "full" everything),
 * ranked by attention; -1 when the policy drops the token.
 */
function tiers(policy: number, positions: ArrayLike<number>, classes: ArrayLike<number>, scores: ArrayLike<number>, len: number, capacity: number, p: FastgenParams): Int8Array {
  const m = positions.length;
  const t = new Int8Array(m).fill(-1);
  const localFrom = len - Math.ceil(p.recentRatio * len);
  const protectedFrom = Math.max(localFrom, len - Math.floor(capacity / 2));
  const heavyIdx: number[] = [];
  for (let i = 0; i < m; i++) {
    const cls = classes[i];
    if (cls === TokenClass.Special) t[i] = 0;
    else if (policy >= Policy.Local && positions[i] >= protectedFrom) t[i] = 1;
    else if ((cls === TokenClass.Punct && policy >= Policy.Punct) || (policy >= Policy.Local && positions[i] >= localFrom)) t[i] = 2;
    else if (policy >= Policy.Heavy) heavyIdx.push(i);
  }
  // The frequent set: the best heavyRatio of the sequence among what is left; the rest only under "full".
  heavyIdx.sort((a, b) => scores[b] - scores[a] || positions[a] - positions[b]);
  const quota = Math.ceil(p.heavyRatio * len);
  heavyIdx.forEach((i, rank) => {
    if (rank < quota || policy === Policy.Full) t[i] = 2;
  });
  return t;
}

/** Indices kept under `capacity`: better tiers first; the newest first among protected local tokens, else higher score (then newer). */
function keptIndices(t: Int8Array, positions: ArrayLike<number>, scores: ArrayLike<number>, capacity: number): number[] {
  const idx: number[] = [];
  for (let i = 0; i < t.length; i++) if (t[i] >= 0) idx.push(i);
  if (idx.length <= capacity) return idx;
  idx.sort((a, b) => t[a] - t[b] || (t[a] === 1 ? 0 : scores[b] - scores[a]) || positions[b] - positions[a]);
  return idx.slice(0, capacity);
}

/**
 * The cheapest policy for one head of an n-token prompt whose capped kept set holds `threshold` of the window's
 * attention `attn` [n]; classes [n]. Returns the policy and the sorted positions it keeps.
 */
export function fastgenChoose(attn: Float32Array, classes: Uint8Array, capacity: number, threshold: number, p: FastgenParams): { policy: Policy; keep: Int32Array } {
  const n = attn.length;
  const positions = range(0, n);
  let total = 0;
  for (let j = 0; j < n; j++) total += attn[j];
  for (let policy = 0; ; policy++) {
    const kept = keptIndices(tiers(policy, positions, classes, attn, n, capacity, p), positions, attn, capacity);
    let mass = 0;
    for (const i of kept) mass += attn[i];
    if (policy === Policy.Full || mass >= threshold * total) return { policy: policy as Policy, keep: Int32Array.from(kept).sort() };
  }
}

/** At decode: what the head's policy no longer keeps among kept + arriving, then the worst while over capacity. */
export function fastgenEvict(policy: number, c: Candidates, classes: Uint8Array, capacity: number, p: FastgenParams): number[] {
  const m = c.positions.length;
  const len = c.positions[m - 1] + 1;
  const t = tiers(policy, c.positions, classes, c.scores, len, capacity, p);
  const keep = new Set(keptIndices(t, c.positions, c.scores, capacity));
  const out: number[] = [];
  for (let i = 0; i < m; i++) if (!keep.has(i)) out.push(i);
  return out;
}

const PUNCT = /^[\p{P}\s]+$/u;
const classTables = new WeakMap<Model, Uint8Array>();

/**
 * Token classes of a model's vocabulary [vocab]: special = bos, eos, and tokens that vanish when decoded with
 * special tokens skipped (pad, reserved, chat markers); punctuation = tokens whose text is only punctuation or
 * whitespace. Built once per model.
 */
export function tokenClasses(model: Pick<Model, 'config' | 'tokenizer'>): Uint8Array {
  const cached = classTables.get(model as Model);
  if (cached) return cached;
  const c = model.config;
  const table = new Uint8Array(c.vocabSize);
  const tok = model.tokenizer;
  if (tok) {
    for (let id = 0; id < Math.min(c.vocabSize, tok.vocabSize); id++) {
      const text = tok.decode([id]);
      if (text !== '' && tok.decode([id], { skipSpecialTokens: true }) === '') table[id] = TokenClass.Special;
      else if (PUNCT.test(text)) table[id] = TokenClass.Punct;
    }
  }
  for (const id of [c.bosTokenId, ...c.eosTokenIds]) if (id !== null && id >= 0 && id < c.vocabSize) table[id] = TokenClass.Special;
  classTables.set(model as Model, table);
  return table;
}

export function fastgenRule(capacities: number[], k: Knobs, env: PolicyEnv, maxTokens: number, numKvHeads: number): EvictionRule {
  const table = tokenClasses(env.model);
  const classes = new Uint8Array(maxTokens); // [maxTokens] class of the token at each position
  const policies = new Int8Array(capacities.length * numKvHeads); // [numLayers * numKvHeads]
  const p: FastgenParams = { recentRatio: k.recentRatio, heavyRatio: k.heavyRatio };
  return {
    capacities,
    window: k.window,
    scoring: 'accumulate',
    onTokens: (ids, start) => {
      for (let i = 0; i < ids.length; i++) if (start + i < classes.length) classes[start + i] = table[ids[i]] ?? TokenClass.Other;
    },
    select: (layer, head, n, attn) => {
      const { policy, keep } = fastgenChoose(attn, classes.subarray(0, n), capacities[layer], k.threshold, p);
      policies[layer * numKvHeads + head] = policy;
      return keep;
    },
    evict: (layer, head, c, cap) => {
      const cls = Uint8Array.from(c.positions, (pos) => classes[pos]);
      return fastgenEvict(policies[layer * numKvHeads + head], c, cls, cap, p);
    },
  };
}

const ratio = z.number().min(0).max(1);

const def: EvictionDef = {
  name: 'fastgen',
  knobs: { window: windowKnob, threshold: z.number().gt(0).max(1), recentRatio: ratio, heavyRatio: ratio },
  minCapacity: () => 1,
  minWhy: 'one token',
  resolve: (given: Knobs, capacity: number): Knobs => ({ ...FASTGEN_DEFAULTS, ...given, capacity }),
  layerCapacities: uniformCapacities,
  rule: (capacities, k, env, s) => fastgenRule(capacities, k, env, s.capacityTokens, s.numKvHeads),
};

export const fastgenPolicy = evictionPolicy(def);
