// `kvoff eval`: retrieval accuracy per policy and context, as a table or as JSON.
import { TASKS, type TaskName } from '../eval/tasks.js';
import { runEval, type EvalResult } from '../eval/run-eval.js';
import { KvoffArgumentError } from '../errors.js';
import { loadModel, type BackendName } from '../model/model.js';
import { formatBytes } from '../units.js';
import { createProgress } from './progress.js';
import { formatTable } from './text-table.js';

export interface EvalFlags {
  model?: string;
  task: string;
  context: string;
  policies: string;
  budget?: string;
  trials: number;
  seed: number;
  json?: boolean;
  backend: BackendName;
  cpuThreads?: number;
}

export function intList(flag: string, text: string): number[] {
  const parts = text.split(',').map((s) => s.trim());
  const n = parts.map(Number);
  if (parts.some((p, i) => p === '' || !Number.isSafeInteger(n[i]) || n[i] < 1)) throw new KvoffArgumentError(flag, 'comma-separated positive integers like 2048,8192', text);
  return n;
}

function taskList(text: string): TaskName[] {
  const names = text.split(',').map((s) => s.trim());
  for (const t of names) if (!(TASKS as readonly string[]).includes(t)) throw new KvoffArgumentError('--task', `one of ${TASKS.join(', ')} (or both, comma-separated)`, t);
  return names as TaskName[];
}

function table(results: EvalResult[]): string {
  const rows = results.map((r) => [
    r.policy, r.task, String(r.context), r.budgetBytes === null ? 'all' : formatBytes(r.budgetBytes),
    r.skipped ? `needs ${formatBytes(r.skipped.minBudgetBytes)}` : `${(100 * r.accuracy).toFixed(1)}%`, String(r.trials),
    r.skipped ? '-' : `[${(100 * r.ci95[0]).toFixed(0)}%, ${(100 * r.ci95[1]).toFixed(0)}%]`,
  ]);
  return formatTable(['policy', 'task', 'context', 'budget', 'accuracy', 'trials', '95% CI'], rows);
}

export async function runEvalCommand(f: EvalFlags): Promise<void> {
  const tasks = taskList(f.task);
  const contexts = intList('--context', f.context);
  const policies = f.policies.split(',').map((s) => s.trim()).filter(Boolean);
  if (policies.length === 0) throw new KvoffArgumentError('--policies', 'at least one policy name', f.policies);
  const progress = createProgress(!f.json);
  const model = await loadModel(f.model, { backend: f.backend, onProgress: (s, d, t) => progress.update(`loading ${s}`, d, t) });
  try {
    const results = await runEval(model, {
      tasks, contexts, policies, budget: f.budget, trials: f.trials, seed: f.seed, cpuThreads: f.cpuThreads,
      onTrial: (d, t) => progress.update('trials', d, t),
    });
    progress.stop();
    process.stdout.write(f.json ? `${JSON.stringify({ results })}\n` : `${table(results)}\n`);
  } finally {
    progress.stop();
    await model.dispose();
  }
}
