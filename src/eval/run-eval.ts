// Retrieval accuracy of policies on the demo tasks: seeded trials, greedy decoding, Wilson 95% intervals.
import { createEngine } from '../engine/engine.js';
import type { EngineOptions } from '../engine/options.js';
import { KvoffArgumentError, KvoffCapacityError } from '../errors.js';
import type { Model } from '../model/model.js';
import { parseBytes } from '../units.js';
import { wilson95 } from './stats.js';
import { loadTaskSpec, scoreAnswer, trialInstance, type TaskName } from './tasks.js';

export interface EvalResult {
  policy: string;
  task: TaskName;
  context: number;
  budgetBytes: number | null; // null: uncapped
  accuracy: number;
  trials: number;
  ci95: [number, number];
  /** Set when the policy cannot run at this budget: the smallest budget that works, in bytes. */
  skipped?: { reason: string; minBudgetBytes: number };
}

export interface EvalOptions {
  tasks: TaskName[];
  contexts: number[];
  policies: string[];
  budget?: string; // bytes ("2GiB", 4096) or a percentage of the run's full-precision KV ("10%")
  trials: number;
  seed: number;
  cpuThreads?: number;
  signal?: AbortSignal;
  onTrial?: (done: number, total: number) => void;
}

/** "10%" of the full-precision KV of a context, or an absolute byte size; `flag` names the option in errors. */
export function resolveBudget(budget: string | undefined, fullKvBytes: number, flag = '--budget'): number | null {
  if (budget === undefined) return null;
  const pct = /^\s*(\d+(?:\.\d+)?)\s*%\s*$/.exec(budget);
  if (pct) {
    const p = Number(pct[1]);
    if (!(p > 0 && p <= 1000)) throw new KvoffArgumentError(flag, 'a percentage in (0, 1000]', budget);
    return Math.floor((fullKvBytes * p) / 100);
  }
  return parseBytes(budget, flag);
}

export async function runEval(model: Model, o: EvalOptions): Promise<EvalResult[]> {
  const spec = loadTaskSpec();
  const results: EvalResult[] = [];
  const total = o.policies.length * o.tasks.length * o.contexts.length * o.trials;
  let done = 0;
  for (const policy of o.policies) {
    for (const context of o.contexts) {
      const probe = await createEngine(model, { policy, cpuThreads: o.cpuThreads }); // validates the policy name early
      const budgetBytes = resolveBudget(o.budget, probe.kvBytesFor(context));
      await probe.dispose();
      const opts: EngineOptions = { policy, cpuThreads: o.cpuThreads, ...(budgetBytes === null ? {} : { vramBudget: budgetBytes }) };
      const engine = await createEngine(model, opts);
      try {
        for (const task of o.tasks) {
          let correct = 0;
          for (let trial = 0; trial < o.trials; trial++) {
            const inst = trialInstance(spec, task, context, o.seed, trial);
            let text = '';
            try {
              for await (const t of engine.generate(inst.prompt, { maxNewTokens: spec.max_new_tokens, signal: o.signal })) {
                text += t.text;
                if (text.includes(spec.answer_terminator)) break;
              }
            } catch (err) {
              // Too small a budget fails the first generation, before any work: the cell is skipped, with the
              // smallest budget that works. Trials of one cell are all about as long, so no later one fails so.
              if (!(err instanceof KvoffCapacityError) || trial > 0) throw err;
              const skipped = { reason: err.message, minBudgetBytes: err.needed };
              for (const t of o.tasks) results.push({ policy, task: t, context, budgetBytes, accuracy: Number.NaN, trials: 0, ci95: [0, 1], skipped });
              done += o.tasks.length * o.trials; // the progress bar still ends at its total
              o.onTrial?.(done, total);
              break;
            }
            if (scoreAnswer(spec, text, inst.answer)) correct++;
            o.onTrial?.(++done, total);
          }
          if (results.some((r) => r.policy === policy && r.context === context && r.skipped)) break;
          results.push({ policy, task, context, budgetBytes, accuracy: correct / o.trials, trials: o.trials, ci95: wilson95(correct, o.trials) });
        }
      } finally {
        await engine.dispose();
      }
    }
  }
  return results;
}
