// The shape of kvoff's claim on the demo model at a short context and a small budget: offloading forgets
// nothing where eviction forgets. exact retrieves exactly what dense does; streaming loses a needle outside its
// window (test/policies-eviction.test.ts holds that on these same trials); specache and tiered retrieve it.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadModel, type Model } from '../src/index.js';
import { runEval } from '../src/eval/run-eval.js';

let demo: Model;
beforeAll(async () => {
  demo = await loadModel('demo', { backend: 'cpu' });
});
afterAll(async () => {
  await demo?.dispose();
});

// seed 1 at 1k: every needle lies before streaming's 10% window; 25% is about the smallest budget the split
// policies' working set (low-bit copy + hot set) fits at this length.
const base = { tasks: ['passkey' as const], contexts: [1024], trials: 4, seed: 1, cpuThreads: 2 };

describe('offloading forgets nothing (demo model, 1k tokens, 25% device budget)', () => {
  it('exact answers exactly as dense does; specache and tiered retrieve the needle', async () => {
    const [dense] = await runEval(demo, { ...base, policies: ['dense'] });
    const results = await runEval(demo, { ...base, policies: ['exact', 'specache', 'tiered'], budget: '25%' });
    const by = Object.fromEntries(results.map((r) => [r.policy, r]));
    for (const r of results) expect(r.skipped, r.policy).toBeUndefined();
    expect(dense.accuracy).toBe(1);
    expect(by.exact.accuracy).toBe(dense.accuracy);
    expect(by.specache.accuracy).toBeGreaterThanOrEqual(0.75);
    expect(by.tiered.accuracy).toBeGreaterThanOrEqual(0.75);
  }, 120_000);
});
