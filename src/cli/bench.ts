// `kvoff bench`: flags to a grid of runs (context x budget x batch x policy), then a table, JSON and an SVG plot.
import { existsSync, statSync } from 'node:fs';
import { rename, rm, statfs, writeFile } from 'node:fs/promises';
import { freemem, tmpdir, totalmem } from 'node:os';
import { dirname, resolve } from 'node:path';
import { footprintWarning, shapeFootprint } from '../bench/footprint.js';
import { measureMachine, type Machine } from '../bench/machine.js';
import { loadVega, plotSpec, renderSvg, type VegaModules } from '../bench/plot.js';
import { runCase, type BenchCase, type BenchRun } from '../bench/run.js';
import { machineLine, runsTable } from '../bench/table.js';
import { EngineOptionsSchema, POLICIES, type EngineOptions, type PolicyName } from '../engine/options.js';
import { KvoffArgumentError } from '../errors.js';
import { resolveBudget } from '../eval/run-eval.js';
import { Model, loadModel, resolveBackend, type BackendName } from '../model/model.js';
import { cudaProbe } from '../bench/cuda-probe.js';
import { parseModelConfig } from '../model/config.js';
import { writeRandomModel } from '../model/random-model.js';
import { shapeConfig } from '../model/shapes.js';
import type { ModelConfig } from '../model/types.js';
import { readConfigFile } from './config-file.js';
import { intList } from './eval.js';
import { createProgress, type Progress } from './progress.js';

export interface BenchFlags {
  model?: string;
  shape?: string;
  context: string;
  batch: string;
  policies: string;
  vramBudget?: string;
  config?: string;
  out?: string;
  plot?: string;
  steps: number;
  seed: number;
  json?: boolean;
  backend: BackendName;
  cpuThreads?: number;
}

interface Plan {
  contexts: number[];
  batches: number[];
  policies: PolicyName[];
  budgets: (string | null)[]; // null: uncapped
  engine: (policy: PolicyName) => EngineOptions;
}

export function policyList(text: string): PolicyName[] {
  const names = text.split(',').map((s) => s.trim());
  for (const p of names) {
    if (!(POLICIES as readonly string[]).includes(p)) throw new KvoffArgumentError('--policies', `comma-separated policies, each one of ${POLICIES.join(', ')}`, p);
  }
  return [...new Set(names)] as PolicyName[];
}

/** "1.6GiB,10%,none": each a byte size, a percentage of the run's full KV, or none (uncapped). */
export function budgetList(text: string | undefined): (string | null)[] {
  if (text === undefined) return [null];
  return text.split(',').map((b) => {
    const t = b.trim();
    if (t === 'none') return null;
    try {
      resolveBudget(t, 0, '--vram-budget'); // checks the syntax; percentages are resolved per run
    } catch (err) {
      if (!(err instanceof KvoffArgumentError)) throw err;
      throw new KvoffArgumentError('--vram-budget', 'comma-separated budgets, each a byte size (1.6GiB, 160KiB, 4096), a percentage of the run\'s full KV (10%) or none', t);
    }
    return t;
  });
}

export function checkOutputPath(flag: string, path: string | undefined, ext?: string): void {
  if (path === undefined) return;
  if (ext && !path.toLowerCase().endsWith(ext)) throw new KvoffArgumentError(flag, `a file name ending in ${ext}`, path);
  const dir = dirname(resolve(path));
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new KvoffArgumentError(flag, 'a file in an existing directory', path);
}

/** Every flag, checked before a model is loaded or a weight is written. */
function plan(f: BenchFlags): Plan {
  if (f.model !== undefined && f.shape !== undefined) throw new KvoffArgumentError('--model/--shape', 'one of --model or --shape, not both', `--model ${f.model} --shape ${f.shape}`);
  if (f.shape !== undefined) shapeConfig(f.shape);
  checkOutputPath('--out', f.out);
  checkOutputPath('--plot', f.plot, '.svg');
  // A tuned.json is tuned for one policy: its knobs go to that policy's runs only (to every run if it names
  // none); its engine-wide settings go to all. Each run names its own policy and budget.
  const tuned: EngineOptions = f.config ? readConfigFile(f.config) : {};
  const { policy: tunedFor, vramBudget: _budget, ...rest } = tuned;
  const base = Object.fromEntries(Object.entries(rest).filter(([k]) => Object.hasOwn(EngineOptionsSchema.shape, k)));
  const knobs = Object.fromEntries(Object.entries(rest).filter(([k]) => !Object.hasOwn(EngineOptionsSchema.shape, k)));
  if (f.cpuThreads !== undefined) base.cpuThreads = f.cpuThreads;
  const engine = (policy: PolicyName): EngineOptions => (tunedFor === undefined || tunedFor === policy ? { ...base, ...knobs } : { ...base });
  return {
    contexts: [...new Set(intList('--context', f.context))].sort((a, b) => a - b),
    batches: [...new Set(intList('--batch', f.batch))].sort((a, b) => a - b),
    policies: policyList(f.policies),
    budgets: budgetList(f.vramBudget),
    engine,
  };
}

/** A --shape's config and random bf16 weights in a temp dir, with a warning when the shape is large for this machine. */
async function writeShape(name: string, p: Plan, steps: number, progress: Progress): Promise<string> {
  const json = shapeConfig(name);
  const config = parseModelConfig(json, `--shape ${name}`);
  checkContexts(config, p.contexts, steps); // before writing gigabytes of weights
  const need = shapeFootprint(config, Math.max(...p.contexts) + steps + 1, Math.max(...p.batches));
  const disk = await statfs(tmpdir()).then((s) => s.bavail * s.bsize, () => Infinity);
  const warning = footprintWarning(need, { totalMem: totalmem(), freeMem: freemem(), freeDisk: disk, tmp: tmpdir() });
  if (warning) console.error(`kvoff: warning: --shape ${name}: ${warning}`);
  const m = await writeRandomModel(json, { dtype: 'bf16', onProgress: (d, t) => progress.update(`writing random ${name} weights`, d, t) });
  return m.dir;
}

function checkContexts(config: ModelConfig, contexts: number[], steps: number): void {
  const max = config.maxPositionEmbeddings;
  // Each run needs the prompt, the token prefill yields, and one position per timed decode step.
  for (const c of contexts) {
    if (c + steps + 1 > max) throw new KvoffArgumentError('--context', `contexts of at most ${max - steps - 1} tokens (max_position_embeddings ${max} less --steps ${steps} + 1)`, c);
  }
}

/** Writes `text` to `path` through a temp file, so a failure never leaves half a file. */
export async function writeWhole(path: string, text: string): Promise<void> {
  const tmp = `${path}.partial-${process.pid}`;
  try {
    await writeFile(tmp, text);
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

export async function runBench(f: BenchFlags): Promise<void> {
  const p = plan(f);
  const vega: VegaModules | null = f.plot ? await loadVega() : null;
  if (f.plot && !vega) throw new KvoffArgumentError('--plot', 'the vega and vega-lite packages installed (npm install vega vega-lite)', f.plot);
  const progress = createProgress(!f.json);
  let shapeDir: string | null = null;
  const ac = new AbortController();
  const onSigint = () => ac.abort(new Error('interrupted'));
  process.once('SIGINT', onSigint);
  let model: Model | null = null;
  try {
    // On CUDA a --shape's random weights are made on the GPU (an 8B model would take minutes to write and read back),
    // except for batched infinigen: the host-side path's calibration reads the weight files (one sequence runs on the
    // device-resident step, which needs none).
    const shape = f.shape !== undefined ? parseModelConfig(shapeConfig(f.shape), `--shape ${f.shape}`) : null;
    const calibrates = p.policies.includes('infinigen') && p.batches.some((b) => b > 1);
    if (shape && resolveBackend(f.backend) === 'cuda' && !calibrates) {
      checkContexts(shape, p.contexts, f.steps);
      progress.update(`random ${f.shape} weights on the GPU`, 0, 1);
      model = await Model.randomOnDevice(shape, 1);
    } else {
      if (f.shape !== undefined) shapeDir = await writeShape(f.shape, p, f.steps, progress);
      model = await loadModel(shapeDir ?? f.model, { backend: f.backend, onProgress: (s, d, t) => progress.update(`loading ${s}`, d, t) });
    }
    // The weight files stay until the end: infinigen's calibration reads the model directory again.
    checkContexts(model.config, p.contexts, f.steps);
    progress.update('measuring host memory bandwidth', 0, 1);
    const machine: Machine = await measureMachine(model.backend, model.backend === 'cuda' ? cudaProbe : undefined);
    const cases: BenchCase[] = [];
    for (const context of p.contexts)
      for (const budget of p.budgets) for (const batch of p.batches) for (const policy of p.policies) cases.push({ policy, context, batch, budget });
    const runs: BenchRun[] = [];
    for (const [i, c] of cases.entries()) {
      const label = `run ${i + 1}/${cases.length}: ${c.policy} ${c.context}x${c.batch}`;
      progress.update(label, 0, c.context * c.batch);
      let prefilled = 0;
      runs.push(await runCase(model, c, {
        steps: f.steps, seed: f.seed, engine: p.engine(c.policy), machine, signal: ac.signal,
        onPrefill: (d, t) => {
          if (d === t) prefilled += t;
          progress.update(label, Math.min(prefilled + (d === t ? 0 : d), c.context * c.batch), c.context * c.batch);
        },
      }));
    }
    progress.stop();
    const result = {
      machine, runs,
      model: { source: f.shape ? `shape ${f.shape}` : (f.model ?? 'demo'), ...model.config, weightBytes: model.weightBytes },
      settings: { steps: f.steps, seed: f.seed, config: f.config ?? null },
    };
    const json = JSON.stringify(result, null, 2);
    const svg = f.plot && vega ? await renderSvg(plotSpec(runs), vega) : null; // before writing anything: all or nothing
    if (f.out) await writeWhole(f.out, `${json}\n`);
    if (f.plot && svg !== null) await writeWhole(f.plot, svg);
    if (f.json) process.stdout.write(`${JSON.stringify(result)}\n`);
    else process.stdout.write(`${machineLine(machine)}\n${runsTable(runs)}\n`);
  } finally {
    process.off('SIGINT', onSigint);
    progress.stop();
    await model?.dispose();
    if (shapeDir) await rm(shapeDir, { recursive: true, force: true });
  }
}
