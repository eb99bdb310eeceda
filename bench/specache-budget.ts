// specache under a tight device budget on the demo model: passkey accuracy beside dense at each trained length,
// with the speculation and hot-set hit rates (not a test: prints a table).
// Usage: npx tsc -p tsconfig.json && node dist/bench/specache-budget.js [--context 1024,4096,8192] [--trials 40] [--budget 10%]
import { parseArgs } from 'node:util';
import { createEngine, loadModel, type Engine } from '../src/index.js';
import { KvoffCapacityError } from '../src/errors.js';
import { resolveBudget } from '../src/eval/run-eval.js';
import { wilson95 } from '../src/eval/stats.js';
import { loadTaskSpec, scoreAnswer, trialInstance } from '../src/eval/tasks.js';

const { values } = parseArgs({
  options: { context: { type: 'string', default: '1024,4096,8192' }, trials: { type: 'string', default: '40' }, budget: { type: 'string', default: '10%' }, seed: { type: 'string', default: '0' }, task: { type: 'string', default: 'passkey' } },
});
const model = await loadModel('demo', { backend: 'cpu' });
const spec = loadTaskSpec();
const trials = Number(values.trials);
const task = values.task as 'passkey' | 'multikey';

async function accuracy(engine: Engine, context: number): Promise<number> {
  let correct = 0;
  for (let t = 0; t < trials; t++) {
    const inst = trialInstance(spec, task, context, Number(values.seed), t);
    let text = '';
    for await (const tok of engine.generate(inst.prompt, { maxNewTokens: spec.max_new_tokens })) {
      text += tok.text;
      if (text.includes(spec.answer_terminator)) break;
    }
    if (scoreAnswer(spec, text, inst.answer)) correct++;
  }
  return correct;
}

/** The smallest budget specache can run a context in: what a 1-byte budget's error names. */
async function smallest(context: number): Promise<number> {
  const e = await createEngine(model, { policy: 'specache', vramBudget: 1 });
  try {
    for await (const _ of e.generate(trialInstance(spec, task, context, 0, 0).prompt, { maxNewTokens: spec.max_new_tokens })) void _;
    return 0;
  } catch (err) {
    return (err as KvoffCapacityError).needed;
  } finally {
    await e.dispose();
  }
}

const rows = [];
for (const context of values.context!.split(',').map(Number)) {
  const dense = await createEngine(model, { policy: 'dense' });
  const full = dense.kvBytesFor(context + spec.max_new_tokens);
  const denseCorrect = await accuracy(dense, context);
  await dense.dispose();
  const asked = resolveBudget(values.budget, full)!;
  const min = await smallest(context);
  const budget = Math.max(asked, min); // below the smallest working set specache cannot run at all
  const engine = await createEngine(model, { policy: 'specache', vramBudget: budget });
  const correct = await accuracy(engine, context);
  const s = engine.stats();
  rows.push({
    context, trials, 'dense acc': (denseCorrect / trials).toFixed(3), 'specache acc': (correct / trials).toFixed(3),
    'specache 95% CI': wilson95(correct, trials).map((x) => x.toFixed(2)).join('-'),
    'asked budget': `${((100 * asked) / full).toFixed(1)}%`, 'smallest that runs': `${((100 * min) / full).toFixed(1)}%`, 'used budget': `${((100 * budget) / full).toFixed(1)}%`,
    knobs: JSON.stringify(engine.lastKnobs), 'spec hit rate': (s.specUsed / Math.max(1, s.specUsed + s.specWasted)).toFixed(3),
    'hot hit rate': (s.hotHits / Math.max(1, s.hotHits + s.hotMisses)).toFixed(3), 'overlap': s.overlapRatio.toFixed(2),
  });
  await engine.dispose();
  console.error(JSON.stringify(rows[rows.length - 1]));
}
await model.dispose();
console.table(rows);
