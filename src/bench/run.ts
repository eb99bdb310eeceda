// One bench configuration (policy, context, batch, budget): synthetic prompts in, timings, counters and the bound out.
import { performance } from 'node:perf_hooks';
import { createEngine, type Engine, type GenerateOptions } from '../engine/engine.js';
import type { EngineOptions, PolicyName } from '../engine/options.js';
import { seededRandom } from '../engine/sampling.js';
import type { EngineStats } from '../engine/stats.js';
import { KvoffCapacityError } from '../errors.js';
import { resolveBudget } from '../eval/run-eval.js';
import type { Model } from '../model/model.js';
import type { ModelConfig } from '../model/types.js';
import { stepBound, sumMs, type Resource } from './bound.js';
import { stepKvTraffic } from './kv-traffic.js';
import type { Machine } from './machine.js';

export interface BenchCase {
  policy: PolicyName;
  context: number;
  batch: number;
  budget: string | null; // as given: bytes or a percentage of the run's full KV; null: uncapped
}

/** Counters of the decode steps alone (prefill excluded), divided by the number of steps. */
export interface PerStep {
  bytesH2D: number;
  bytesD2H: number;
  cpuAttnMs: number;
  deviceMs: number;
  copyMs: number;
  weightBytes: number;
  deviceKvBytes: number; // estimated, see kv-traffic.ts
  cpuKvBytes: number; // estimated, see kv-traffic.ts
}

export interface BenchRun {
  policy: PolicyName;
  context: number;
  batch: number;
  budget: string | null;
  vramBudgetBytes: number | null;
  fullKvBytes: number; // full-precision KV of the whole run, what a percentage budget is taken of
  status: 'ok' | 'skipped';
  reason: string | null; // why it was skipped
  minBudgetBytes: number | null; // skipped for want of budget: the smallest that works
  steps: number; // decode steps timed
  prefillTokPerS: number | null;
  decodeTokPerS: number | null; // tokens of all sequences per second
  msPerTokenMedian: number | null; // per decode step: each sequence gets one token per step
  msPerTokenP90: number | null;
  boundMsPerToken: number | null;
  boundSharedBusMsPerToken: number | null; // sum instead of max: the bound when the resources share one bus (cpu backend)
  boundLimiter: Resource | null;
  measuredOverBound: number | null; // msPerTokenMedian / boundMsPerToken
  perStep: PerStep | null;
  knobs: Record<string, number> | null; // the policy knobs the run used (fitted to the budget)
  stats: EngineStats | null; // engine.stats() at the end of the run
}

export interface RunOptions {
  steps: number;
  seed: number;
  engine: EngineOptions; // from --config and --cpu-threads; policy and budget come from the case
  machine: Machine;
  signal?: AbortSignal;
  onPrefill?: (done: number, total: number) => void;
}

// Batches go through engine.generateBatch where the build has it; looked up at run time, so a build without it
// records batch > 1 runs as skipped instead of failing.
type GenerateBatch = (prompts: (string | ArrayLike<number>)[], opts: GenerateOptions) => AsyncGenerator<{ seq: number; token: number; text: string }>;

/** Seeded token ids that avoid the end-of-sequence ids (and BOS past position 0), so nothing in the prompt ends it. */
export function syntheticPrompt(length: number, vocab: number, avoid: number[], seed: number): Int32Array {
  const r = seededRandom(seed);
  const ids = new Int32Array(length); // [length]
  for (let i = 0; i < length; i++) {
    let id: number;
    do id = Math.floor(r() * vocab);
    while (avoid.includes(id));
    ids[i] = id;
  }
  return ids;
}

function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] ?? NaN; // nearest rank
}

function skipped(c: BenchCase, budgetBytes: number | null, fullKvBytes: number, steps: number, reason: string, minBudgetBytes: number | null = null): BenchRun {
  return {
    ...c, vramBudgetBytes: budgetBytes, fullKvBytes, status: 'skipped', reason, minBudgetBytes, steps, prefillTokPerS: null, decodeTokPerS: null,
    msPerTokenMedian: null, msPerTokenP90: null, boundMsPerToken: null, boundSharedBusMsPerToken: null, boundLimiter: null,
    measuredOverBound: null, perStep: null, knobs: null, stats: null,
  };
}

export async function runCase(model: Model, c: BenchCase, o: RunOptions): Promise<BenchRun> {
  const cfg = model.config;
  const total = c.context + o.steps + 1; // prompt + every generated token: the cache the run allocates
  // A percentage budget needs the run's full KV first, which an engine (its block size) knows: ask an uncapped one.
  let engine = await createEngine(model, { ...o.engine, policy: c.policy });
  const fullKvBytes = engine.kvBytesFor(total) * c.batch;
  const budgetBytes = resolveBudget(c.budget ?? undefined, fullKvBytes, '--vram-budget');
  if (budgetBytes !== null) {
    await engine.dispose();
    engine = await createEngine(model, { ...o.engine, policy: c.policy, vramBudget: budgetBytes });
  }
  try {
    const batched = (engine as unknown as { generateBatch?: GenerateBatch }).generateBatch;
    if (c.batch > 1 && typeof batched !== 'function') return skipped(c, budgetBytes, fullKvBytes, o.steps, 'batch > 1 needs engine.generateBatch, which this build does not have');
    const avoid = [...cfg.eosTokenIds, ...(cfg.bosTokenId === null ? [] : [cfg.bosTokenId])];
    const prompts = Array.from({ length: c.batch }, (_, s) => syntheticPrompt(c.context, cfg.vocabSize, avoid, o.seed * 1000003 + s));
    // The first token comes out of prefill; each one after it is one decode step.
    const gen: GenerateOptions = { maxNewTokens: o.steps + 1, stopAtEos: false, temperature: 0, signal: o.signal, onPrefill: o.onPrefill };
    const stream: AsyncIterable<unknown> = c.batch === 1 ? engine.generate(prompts[0], gen) : batched!.call(engine, prompts, gen);
    return await timeRun(engine, cfg, stream, c, budgetBytes, fullKvBytes, o);
  } catch (err) {
    if (err instanceof KvoffCapacityError) return skipped(c, budgetBytes, fullKvBytes, o.steps, err.message, Number.isFinite(err.needed) ? err.needed : null);
    const code = (err as { code?: unknown }).code;
    if (c.batch > 1 && typeof code === 'string' && /UNSUPPORTED|NOT_IMPLEMENTED/.test(code)) return skipped(c, budgetBytes, fullKvBytes, o.steps, (err as Error).message);
    throw err;
  } finally {
    await engine.dispose();
  }
}

/** A step ends when every sequence of the batch has its token; the first step's end is the end of prefill. */
async function timeRun(engine: Engine, cfg: ModelConfig, stream: AsyncIterable<unknown>, c: BenchCase, budgetBytes: number | null, fullKvBytes: number, o: RunOptions): Promise<BenchRun> {
  const t0 = performance.now();
  let last = t0;
  let prefillMs = NaN;
  let atDecode: EngineStats | null = null;
  const stepMs: number[] = [];
  let tokens = 0;
  for await (const _ of stream) {
    if (++tokens % c.batch !== 0) continue;
    const now = performance.now();
    if (atDecode === null) {
      prefillMs = now - t0;
      atDecode = engine.stats(); // decode figures start here
    } else {
      stepMs.push(now - last);
    }
    last = now;
  }
  const end = engine.stats();
  const n = Math.max(1, stepMs.length);
  const from = atDecode ?? end;
  const delta = (k: 'bytesH2D' | 'bytesD2H' | 'cpuAttnMs' | 'deviceMs' | 'copyMs') => (end[k] - from[k]) / n;
  const kv = stepKvTraffic(c.policy, cfg, c.context, c.batch, end.deviceBytesPeak, engine.lastKnobs);
  const perStep: PerStep = {
    bytesH2D: delta('bytesH2D'), bytesD2H: delta('bytesD2H'), cpuAttnMs: delta('cpuAttnMs'), deviceMs: delta('deviceMs'), copyMs: delta('copyMs'),
    weightBytes: end.weightBytes, ...kv,
  };
  const bound = stepBound({ weightBytes: perStep.weightBytes, deviceKvBytes: kv.deviceKvBytes, h2dBytes: perStep.bytesH2D, cpuKvBytes: kv.cpuKvBytes }, o.machine);
  const sorted = [...stepMs].sort((a, b) => a - b);
  const median = stepMs.length ? quantile(sorted, 0.5) : null;
  const decodeMs = stepMs.reduce((a, b) => a + b, 0);
  return {
    ...c, vramBudgetBytes: budgetBytes, fullKvBytes, status: 'ok', reason: null, minBudgetBytes: null, steps: stepMs.length,
    prefillTokPerS: (c.context * c.batch) / (prefillMs / 1000),
    decodeTokPerS: stepMs.length ? (stepMs.length * c.batch) / (decodeMs / 1000) : null,
    msPerTokenMedian: median, msPerTokenP90: stepMs.length ? quantile(sorted, 0.9) : null,
    boundMsPerToken: bound.ms, boundSharedBusMsPerToken: sumMs(bound), boundLimiter: bound.limiter,
    measuredOverBound: median !== null && bound.ms > 0 ? median / bound.ms : null,
    perStep, knobs: engine.lastKnobs, stats: end,
  };
}
