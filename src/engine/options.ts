// Engine options, validated with zod; errors name the field, the valid choices and what was given.
import { z } from 'zod';
import { KvoffArgumentError } from '../errors.js';
import { parseBytes } from '../units.js';
import { POLICY_SPECS, type Knobs } from './policies.js';

/** Every policy of DESIGN.md §2. */
export const ALL_POLICIES = [
  'dense', 'cpu', 'offload-layer', 'exact', 'tiered', 'specache', 'kivi', 'quest', 'infinigen', 'sparq',
  'streaming', 'h2o', 'tova', 'snapkv', 'pyramid', 'kvmerger', 'fastgen',
] as const;
export type PolicyName = (typeof ALL_POLICIES)[number];
/** The policies this build runs (each has a spec in src/engine/policies.ts or src/policies/). */
export const POLICIES: readonly PolicyName[] = ALL_POLICIES.filter((p) => POLICY_SPECS[p] !== undefined);

const byteSize = z.union([z.string(), z.number()]);

export const EngineOptionsSchema = z
  .object({
    policy: z.enum(POLICIES as [PolicyName, ...PolicyName[]]).default('dense'),
    vramBudget: byteSize.optional(),
    cpuThreads: z.number().int().min(1).max(1024).optional(),
    blockSize: z.number().int().min(1).max(1024).default(16),
    kvDtype: z.enum(['f16', 'bf16']).default('bf16'),
    prefillChunk: z.number().int().min(1).max(65536).default(256),
    residentStep: z.boolean().optional(), // default true; optional so a config file read back does not gain it
  })
  .catchall(z.unknown()); // the rest are the policy's knobs, checked against its own schema

const BASE_KEYS = ['policy', 'vramBudget', 'cpuThreads', 'blockSize', 'kvDtype', 'prefillChunk', 'residentStep'];

export interface EngineOptions {
  policy?: string;
  vramBudget?: string | number;
  cpuThreads?: number;
  blockSize?: number;
  kvDtype?: 'f16' | 'bf16';
  prefillChunk?: number; // prompt tokens per prefill pass: default 256, or 2048 on the device-resident step
  /**
   * CUDA backend, one prompt, policy dense, specache, tiered, exact or cpu: run prefill and every decode step on the device
   * (default true). false keeps the host-side path (attention per policy on the host, dense layers on the device).
   */
  residentStep?: boolean;
  /** Policy knobs (DESIGN.md §2), e.g. topK, bits, window; each policy lists its own. */
  [knob: string]: unknown;
}

export interface ResolvedEngineOptions {
  policy: PolicyName;
  vramBudget: number; // bytes; Infinity when not capped (or given as a share: see vramBudgetPercent)
  vramBudgetPercent: number | null; // "10%": that share of each run's full-precision KV bytes
  cpuThreads: number | undefined;
  blockSize: number;
  kvDtype: 'f16' | 'bf16';
  prefillChunk: number;
  residentPrefillChunk: number; // the device-resident prefill's: prefillChunk when given, else 2048 (fills the GPU)
  residentStep: boolean;
  knobs: Knobs; // only those given; the rest default, or are fitted to the budget per run
}

/** Turns the first zod issue into a KvoffArgumentError that lists the valid choices. */
export function zodToKvoff(err: z.ZodError, prefix: string, input: unknown): KvoffArgumentError {
  const issue = err.issues[0];
  const path = issue.path.map(String).join('.');
  const field = path ? `${prefix}.${path}` : prefix;
  let received: unknown = input;
  for (const key of issue.path) received = (received as Record<PropertyKey, unknown> | undefined)?.[key as PropertyKey];
  let expected = issue.message;
  if (issue.code === 'invalid_value' && 'values' in issue) expected = `one of ${(issue.values as unknown[]).map((v) => JSON.stringify(v)).join(', ')}`;
  if (issue.code === 'unrecognized_keys' && 'keys' in issue) {
    return new KvoffArgumentError(prefix, `only the options ${Object.keys(EngineOptionsSchema.shape).join(', ')}`, `unknown ${(issue.keys as string[]).join(', ')}`);
  }
  return new KvoffArgumentError(field, expected, received);
}

/** "10%" → 10; anything else → null (a byte size, checked by parseBytes). */
function percentOf(v: string | number): number | null {
  if (typeof v !== 'string') return null;
  const m = /^\s*(\d+(?:\.\d+)?)\s*%\s*$/.exec(v);
  if (!m) return null;
  const p = Number(m[1]);
  if (!(p > 0 && p <= 1000)) throw new KvoffArgumentError('vramBudget', 'a percentage in (0, 1000]', v);
  return p;
}

export function resolveEngineOptions(input: unknown): ResolvedEngineOptions {
  const r = EngineOptionsSchema.safeParse(input ?? {});
  if (!r.success) throw zodToKvoff(r.error, 'engine options', input);
  const o = r.data;
  const spec = POLICY_SPECS[o.policy]!;
  const given = Object.fromEntries(Object.entries(input ?? {}).filter(([key]) => !BASE_KEYS.includes(key)));
  const k = spec.knobs.safeParse(given);
  if (!k.success) {
    const issue = k.error.issues[0];
    if (issue.code === 'unrecognized_keys') {
      const names = Object.keys(spec.knobs.shape);
      throw new KvoffArgumentError('engine options', `only ${BASE_KEYS.join(', ')}${names.length ? ` and the ${o.policy} knobs ${names.join(', ')}` : ` (policy ${o.policy} takes no knobs)`}`, `unknown ${(issue as { keys: string[] }).keys.join(', ')}`);
    }
    throw zodToKvoff(k.error, 'engine options', given);
  }
  return {
    knobs: k.data as Knobs,
    policy: o.policy,
    vramBudget: o.vramBudget === undefined || percentOf(o.vramBudget) !== null ? Infinity : parseBytes(o.vramBudget, 'vramBudget'),
    vramBudgetPercent: o.vramBudget === undefined ? null : percentOf(o.vramBudget),
    cpuThreads: o.cpuThreads,
    blockSize: o.blockSize,
    kvDtype: o.kvDtype,
    prefillChunk: o.prefillChunk,
    residentPrefillChunk: (input as { prefillChunk?: number } | undefined)?.prefillChunk === undefined ? 2048 : o.prefillChunk,
    residentStep: o.residentStep ?? true,
  };
}
