// specache: two tokens a step (real + speculative), the guess picks the next hot set, a low-bit tail covers
// the rest; it retrieves on the demo model and counts its speculation.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runEval } from '../src/eval/run-eval.js';
import { createEngine, loadModel, type Model } from '../src/index.js';

let demo: Model;
beforeAll(async () => {
  demo = await loadModel('demo', { backend: 'cpu' });
});
afterAll(async () => {
  await demo?.dispose();
});

describe('specache policy', () => {
  it('counts one speculation per decode step after the first, and stays inside its budget', async () => {
    const probe = await createEngine(demo, { policy: 'specache', vramBudget: 1 });
    const need = await (async () => {
      try {
        for await (const _ of probe.generate('x'.repeat(600), { maxNewTokens: 8 })) void _;
      } catch (e) {
        return (e as { needed: number }).needed;
      }
      return 0;
    })();
    await probe.dispose();
    expect(need).toBeGreaterThan(0);
    const engine = await createEngine(demo, { policy: 'specache', vramBudget: need });
    const got: number[] = [];
    for await (const t of engine.generate('The grass is green. '.repeat(30), { maxNewTokens: 8, stopAtEos: false })) got.push(t.token);
    const s = engine.stats();
    expect(got).toHaveLength(8);
    expect(s.decodeTokens).toBe(7);
    expect(s.specUsed + s.specWasted).toBe(6);
    expect(s.deviceBytesPeak).toBeLessThanOrEqual(need);
    await engine.dispose();
  }, 60_000);

  it('retrieves the passkey and the asked key at 1024 tokens', async () => {
    const results = await runEval(demo, { tasks: ['passkey', 'multikey'], contexts: [1024], policies: ['specache'], trials: 4, seed: 9 });
    for (const r of results) expect(r.accuracy, r.task).toBeGreaterThanOrEqual(0.75);
  }, 120_000);
});
