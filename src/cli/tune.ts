// `kvoff tune`: measures this machine, predicts every policy's decode step under a VRAM budget, confirms the best
// few by running them, and writes a validated tuned.json for `generate --config` and `bench --config`.
import { rm, statfs } from 'node:fs/promises';
import { freemem, tmpdir, totalmem } from 'node:os';
import { footprintWarning, shapeFootprint } from '../bench/footprint.js';
import { runCase, type BenchRun } from '../bench/run.js';
import { POLICIES, resolveEngineOptions, type EngineOptions, type PolicyName } from '../engine/options.js';
import { RESIDENT_POLICIES } from '../engine/resident-run.js';
import { KvoffArgumentError } from '../errors.js';
import { resolveBudget } from '../eval/run-eval.js';
import { HostKvCache } from '../kv/host-cache.js';
import { parseModelConfig } from '../model/config.js';
import { Model, loadModel, resolveBackend, type BackendName } from '../model/model.js';
import { writeRandomModel } from '../model/random-model.js';
import { shapeConfig } from '../model/shapes.js';
import type { ModelConfig } from '../model/types.js';
import { formatBytes } from '../units.js';
import { unitBytes } from '../kernels/paged-kv.js';
import { measureConstants } from '../tune/measure.js';
import type { TuneSection, TunedCandidate } from '../tune/record.js';
import { tuneText } from '../tune/report.js';
import { engineKnobs, searchSettings, type PlanShape, type Ranked } from '../tune/search.js';
import { checkOutputPath, policyList, writeWhole } from './bench.js';
import { TunedConfigSchema } from './config-file.js';
import { createProgress, type Progress } from './progress.js';

export interface TuneFlags {
  model?: string;
  shape?: string;
  context: number;
  batch: number;
  vramBudget: string;
  out: string;
  confirm: number;
  json?: boolean;
  backend: BackendName;
  policies?: string;
  quick?: boolean;
}

/**
 * By default tune searches only the lossless policies: the model ranks by speed alone, so a lossy policy
 * would win at its cheapest knobs (top-k of 1) and answer worse. Lossy ones are opt-in with --policies.
 */
export const DEFAULT_TUNE_POLICIES: PolicyName[] = POLICIES.filter((p) => ['dense', 'cpu', 'offload-layer', 'exact'].includes(p));

/**
 * On CUDA the lossless policies whose step runs on the device (resident-run.ts). offload-layer stays on the
 * host-side path there, whose prefill of a long trial context takes minutes: it is opt-in with --policies.
 */
export const DEFAULT_CUDA_TUNE_POLICIES: PolicyName[] = DEFAULT_TUNE_POLICIES.filter((p) => RESIDENT_POLICIES.includes(p));

const TOP_N = 10; // settings kept in tuned.json besides each policy's best

/** One of --model/--shape, the budget's syntax, the output path: all checked before anything is loaded. */
function checkFlags(f: TuneFlags, steps: number, backend: 'cpu' | 'cuda'): { policies: PolicyName[]; shapeJson: Record<string, unknown> | null } {
  if (f.model !== undefined && f.shape !== undefined) throw new KvoffArgumentError('--model/--shape', 'one of --model or --shape, not both', `--model ${f.model} --shape ${f.shape}`);
  const shapeJson = f.shape !== undefined ? shapeConfig(f.shape) : null;
  try {
    resolveBudget(f.vramBudget, 0, '--vram-budget');
  } catch (err) {
    if (!(err instanceof KvoffArgumentError)) throw err;
    throw new KvoffArgumentError('--vram-budget', 'a byte size (1.6GiB, 160KiB, 4096) or a percentage of the run\'s full KV (10%)', f.vramBudget);
  }
  checkOutputPath('--out', f.out);
  if (shapeJson) checkContext(parseModelConfig(shapeJson, `--shape ${f.shape}`), f.context, steps);
  const defaults = backend === 'cuda' ? DEFAULT_CUDA_TUNE_POLICIES : DEFAULT_TUNE_POLICIES;
  return { policies: f.policies === undefined ? defaults : policyList(f.policies), shapeJson };
}

function checkContext(c: ModelConfig, context: number, steps: number): void {
  const max = c.maxPositionEmbeddings - steps - 1; // the prompt, prefill's token, and each confirmation step
  if (context > max) throw new KvoffArgumentError('--context', `at most ${max} tokens (max_position_embeddings ${c.maxPositionEmbeddings} less the ${steps} confirmation steps + 1)`, context);
}

/** A --shape's random bf16 weights in a temp dir, with bench's warning when they are large for this machine. */
async function writeShape(name: string, json: Record<string, unknown>, tokens: number, batch: number, progress: Progress): Promise<string> {
  const need = shapeFootprint(parseModelConfig(json, `--shape ${name}`), tokens, batch);
  const disk = await statfs(tmpdir()).then((s) => s.bavail * s.bsize, () => Infinity);
  const warning = footprintWarning(need, { totalMem: totalmem(), freeMem: freemem(), freeDisk: disk, tmp: tmpdir() });
  if (warning) console.error(`kvoff: warning: --shape ${name}: ${warning}`);
  const m = await writeRandomModel(json, { dtype: 'bf16', onProgress: (d, t) => progress.update(`writing random ${name} weights`, d, t) });
  return m.dir;
}

/** The fastest setting of each policy, fastest first (`ranked` is sorted). */
function bestPerPolicy(ranked: Ranked[]): Ranked[] {
  return ranked.filter((r, i) => ranked.findIndex((x) => x.policy === r.policy) === i);
}

/** The best `k` settings of distinct policies (then the next best settings, if fewer policies fit). */
export function pickToConfirm(ranked: Ranked[], k: number): Ranked[] {
  const picked = bestPerPolicy(ranked).slice(0, k);
  for (const r of ranked) if (picked.length < k && !picked.includes(r)) picked.push(r);
  return picked;
}

function candidateOf(r: Ranked, run: BenchRun | null, c: ModelConfig, batch: number): TunedCandidate {
  const measured = run?.status === 'ok' ? run.msPerTokenMedian : null;
  // Units fetched per (sequence, layer, KV head) per step, from the run's H2D bytes: the miss rate, measured.
  const misses = run?.perStep && r.cost.missesPerHead > 0 ? run.perStep.bytesH2D / (unitBytes(c.headDim) * batch * c.numLayers * c.numKvHeads) : null;
  return {
    policy: r.policy, knobs: engineKnobs(r.policy, r.knobs), cpuThreads: r.cpuThreads, deviceBytes: r.deviceBytes,
    predictedMsPerStep: r.cost.msPerStep, limiter: r.cost.limiter,
    measuredMsPerStep: measured && measured > 0 ? measured : null,
    measuredOverPredicted: measured && measured > 0 ? measured / r.cost.msPerStep : null,
    measuredMissesPerHead: misses,
  };
}

export async function runTune(f: TuneFlags): Promise<void> {
  const steps = f.quick ? 3 : 8; // decode steps timed per confirmation run
  const { policies, shapeJson } = checkFlags(f, steps, f.backend === 'cpu' ? 'cpu' : resolveBackend('auto'));
  const backend = resolveBackend(f.backend); // after the flags: throws, saying why, when CUDA is asked for and absent
  const progress = createProgress(!f.json);
  let shapeDir: string | null = null;
  let model: Model | null = null;
  const ac = new AbortController();
  const onSigint = () => ac.abort(new Error('interrupted'));
  process.once('SIGINT', onSigint);
  try {
    if (shapeJson && backend === 'cuda' && !policies.includes('infinigen')) {
      // As in bench: a shape's random weights are made on the GPU (infinigen's calibration reads weight files).
      progress.update(`random ${f.shape} weights on the GPU`, 0, 1);
      model = await Model.randomOnDevice(parseModelConfig(shapeJson, `--shape ${f.shape}`), 1);
    } else {
      if (shapeJson) shapeDir = await writeShape(f.shape!, shapeJson, f.context + steps + 1, f.batch, progress);
      model = await loadModel(shapeDir ?? f.model, { backend: f.backend, onProgress: (s, d, t) => progress.update(`loading ${s}`, d, t) });
    }
    // The weight files stay until the end: a policy may read them again (infinigen calibrates from model.dir).
    const c = model.config;
    checkContext(c, f.context, steps);
    const defaults = resolveEngineOptions({});
    const shape: PlanShape = { numLayers: c.numLayers, numKvHeads: c.numKvHeads, groupSize: c.numHeads / c.numKvHeads, headDim: c.headDim, dtype: defaults.kvDtype, blockSize: defaults.blockSize };
    const capacityTokens = f.context + steps + 1; // what the confirmation runs (bench's runner) allocate
    // The run's full KV, as bench computes it: a percentage budget is a share of it, and the CPU workers are timed
    // over as much (the cache holds their KV exactly when it holds the run's).
    const fullKv = f.batch * HostKvCache.bytesFor({ ...shape, numBlocks: Math.ceil(capacityTokens / shape.blockSize) });
    const measured = await measureConstants(model, model.backend, {
      quick: f.quick, policies, runKvBytes: fullKv, signal: ac.signal, onProgress: (s, d, t) => progress.update(s, d, t),
    });
    const budgetBytes = resolveBudget(f.vramBudget, fullKv, '--vram-budget')!;
    const runnable = policies.filter((p) => !Object.hasOwn(measured.failed, p));
    const found = searchSettings({ shape, context: f.context, capacityTokens, batch: f.batch, budgetBytes, policies: runnable, constants: measured.constants });
    const { ranked } = found;
    const unfit = [...found.unfit, ...Object.entries(measured.failed).map(([policy, why]) => ({ policy: policy as PolicyName, minBudgetBytes: null, reason: `its trial run failed: ${why}` }))];
    if (ranked.length === 0) {
      const smallest = Math.min(...unfit.map((u) => u.minBudgetBytes ?? Infinity));
      throw new KvoffArgumentError('--vram-budget', Number.isFinite(smallest)
        ? `a budget that fits at least one of ${policies.join(', ')}: at least ${smallest} bytes (${formatBytes(smallest)})`
        : `a budget and policies that fit this model (${unfit.map((u) => `${u.policy}: ${u.reason}`).join('; ')})`, `${f.vramBudget} (${budgetBytes} bytes)`);
    }

    const toConfirm = pickToConfirm(ranked, f.confirm);
    const runs = new Map<Ranked, BenchRun>();
    for (const [i, r] of toConfirm.entries()) {
      const label = `confirming ${i + 1}/${toConfirm.length}: ${r.policy}`;
      progress.update(label, 0, f.context * f.batch);
      const engine: EngineOptions = { cpuThreads: r.cpuThreads, ...engineKnobs(r.policy, r.knobs) };
      try {
        runs.set(r, await runCase(model, { policy: r.policy, context: f.context, batch: f.batch, budget: String(budgetBytes) }, {
          steps, seed: 0, engine, machine: measured.machine, signal: ac.signal,
          onPrefill: (d) => progress.update(label, Math.min(d, f.context * f.batch), f.context * f.batch),
        }));
      } catch (err) {
        ac.signal.throwIfAborted();
        // The others still count: this one stays unconfirmed (measured null), and says why.
        console.error(`kvoff: warning: confirming ${r.policy} failed: ${(err as Error).message}`);
      }
    }
    progress.stop();

    const confirmed = toConfirm.map((r) => candidateOf(r, runs.get(r) ?? null, c, f.batch));
    // The confirmed setting that ran fastest wins; without a confirmation, the best prediction.
    const byMeasured = toConfirm.filter((_, i) => confirmed[i].measuredMsPerStep !== null).sort((a, b) => runs.get(a)!.msPerTokenMedian! - runs.get(b)!.msPerTokenMedian!);
    const chosen = byMeasured[0] ?? ranked[0];
    const perPolicy = bestPerPolicy(ranked);
    const top = [...new Set([...ranked.slice(0, TOP_N), ...perPolicy, ...toConfirm])].sort((a, b) => a.cost.msPerStep - b.cost.msPerStep);
    const candidates = top.map((r) => candidateOf(r, runs.get(r) ?? null, c, f.batch));
    const engine = { policy: chosen.policy, vramBudget: budgetBytes, cpuThreads: chosen.cpuThreads, ...engineKnobs(chosen.policy, chosen.knobs) };
    resolveEngineOptions(engine); // what generate --config will do with it: refuse here, before writing, if it would fail
    const chosenCand = candidateOf(chosen, runs.get(chosen) ?? null, c, f.batch);
    const tune: TuneSection = {
      context: f.context, batch: f.batch, shape: f.shape ?? null, model: f.shape !== undefined ? null : (f.model ?? 'demo'),
      vramBudget: f.vramBudget, budgetBytes, constants: measured.constants, sources: measured.sources,
      predictedMsPerStep: chosenCand.predictedMsPerStep, measuredMsPerStep: chosenCand.measuredMsPerStep,
      confirmSteps: toConfirm.length ? steps : 0, candidates, tunedAt: new Date().toISOString(),
    };
    const record = TunedConfigSchema.parse({ version: 1, engine, tune }); // never write what --config would refuse
    const json = JSON.stringify(record, null, 2);
    await writeWhole(f.out, `${json}\n`);
    const shown = perPolicy.map((r) => candidates[top.indexOf(r)]);
    process.stdout.write(f.json ? `${JSON.stringify(record)}\n` : `${tuneText(tune, engine, shown, confirmed, unfit, ranked.length, f.out)}\n`);
  } finally {
    process.off('SIGINT', onSigint);
    progress.stop();
    await model?.dispose();
    if (shapeDir) await rm(shapeDir, { recursive: true, force: true });
  }
}
