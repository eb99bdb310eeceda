// The eviction family on the demo model through createEngine/generate: within budget, uncapped equals dense,
// knobs checked, and what is evicted is forgotten (a passkey outside streaming's window is lost).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KvoffArgumentError, KvoffCapacityError } from '../src/errors.js';
import { runEval } from '../src/eval/run-eval.js';
import { loadTaskSpec, trialInstance } from '../src/eval/tasks.js';
import { createEngine, loadModel, type Model } from '../src/index.js';

let demo: Model;
beforeAll(async () => {
  demo = await loadModel('demo', { backend: 'cpu' });
});
afterAll(async () => {
  await demo?.dispose();
});

const EVICTION = ['streaming', 'h2o', 'tova', 'snapkv', 'pyramid', 'fastgen'] as const;
const prompt = 'The grass is green. The sky is blue. '.repeat(10); // ~370 tokens
const NEW = 6;

async function run(policy: string, opts: Record<string, unknown> = {}) {
  const engine = await createEngine(demo, { policy, cpuThreads: 2, prefillChunk: 128, ...opts });
  try {
    const tokens: number[] = [];
    for await (const t of engine.generate(prompt, { maxNewTokens: NEW, stopAtEos: false })) tokens.push(t.token);
    return { tokens, stats: engine.stats(), knobs: engine.lastKnobs! };
  } finally {
    await engine.dispose();
  }
}

describe('eviction policies', () => {
  it('each runs at a small budget and stays within it', async () => {
    const probe = await createEngine(demo, { policy: 'dense' });
    const full = probe.kvBytesFor(370 + NEW);
    await probe.dispose();
    const budget = Math.floor(full * 0.2);
    for (const policy of EVICTION) {
      const r = await run(policy, { vramBudget: budget });
      expect(r.tokens).toHaveLength(NEW);
      expect(r.stats.deviceBytesPeak).toBeGreaterThan(0);
      expect(r.stats.deviceBytesPeak).toBeLessThanOrEqual(budget);
      // The kept set is the budget's: what fits of (token, head) units of 4 layers x 2 KV heads x 128 bytes.
      expect(r.knobs.capacity).toBeGreaterThan(50);
      expect(r.knobs.capacity).toBeLessThanOrEqual(Math.floor(budget / (4 * 2 * 128)));
      expect(r.stats.bytesH2D).toBe(0); // decode reads nothing from the host: evicted means forgotten
    }
  }, 60_000);

  it('uncapped, each keeps everything and equals dense', async () => {
    const dense = await run('dense');
    for (const policy of EVICTION) {
      // fastgen's heads drop what their policy drops even without a budget; threshold 1 asks for all of it.
      const r = await run(policy, policy === 'fastgen' ? { threshold: 1 } : {});
      expect(r.tokens, policy).toEqual(dense.tokens);
    }
  }, 60_000);

  it('a one-token prefill chunk (attended exactly, and observed) changes nothing', async () => {
    // 371 prompt tokens in chunks of 185: the last chunk is one token, which forward() sends to attend().
    for (const policy of ['tova', 'snapkv']) {
      const whole = await run(policy, { vramBudget: 64 * 1024 });
      const split = await run(policy, { vramBudget: 64 * 1024, prefillChunk: 185 });
      expect(split.stats.prefillTokens).toBe(371);
      expect(split.tokens, policy).toEqual(whole.tokens);
    }
  }, 30_000);

  it('a budget below the smallest working set fails with needed, given and the smallest budget', async () => {
    for (const policy of EVICTION) {
      const err = await run(policy, { vramBudget: 1000 }).catch((e: unknown) => e);
      expect(err, policy).toBeInstanceOf(KvoffCapacityError);
      const needed = (err as KvoffCapacityError).needed;
      expect((err as Error).message).toContain(`the smallest budget that works is ${needed} bytes`);
      const ok = await run(policy, { vramBudget: needed });
      expect(ok.stats.deviceBytesPeak).toBeLessThanOrEqual(needed);
    }
  }, 60_000);

  it('batches with a shared prompt prefix share the budget and stay within it', async () => {
    const prompts = [`${prompt}Here we go.`, `${prompt}There and back again.`];
    for (const policy of ['h2o', 'fastgen']) {
      const engine = await createEngine(demo, { policy, cpuThreads: 2, vramBudget: 2 * 60 * 1024 });
      const counts = [0, 0];
      for await (const t of engine.generateBatch(prompts, { maxNewTokens: NEW, stopAtEos: false })) counts[t.seq]++;
      expect(counts).toEqual([NEW, NEW]);
      expect(engine.stats().sharedPrefixTokens).toBeGreaterThan(300);
      expect(engine.stats().deviceBytesPeak).toBeLessThanOrEqual(2 * 60 * 1024);
      expect(engine.lastKnobs!.capacity).toBe(60);
      await engine.dispose();
    }
  }, 30_000);

  it.each([
    [{ policy: 'streaming', sinks: -1 }, /sinks/],
    [{ policy: 'streaming', topK: 8 }, /streaming knobs capacity, sinks.*unknown topK/s],
    [{ policy: 'snapkv', kernel: 4 }, /odd kernel size for engine options.kernel but received 4/],
    [{ policy: 'snapkv', avgPool: 2 }, /one of 0, 1 for engine options.avgPool/],
    [{ policy: 'fastgen', threshold: 1.5 }, /threshold/],
    [{ policy: 'tova', window: 4 }, /policy tova|tova knobs capacity.*unknown window/s],
  ])('%j is refused with the valid choices', async (opts, message) => {
    const err = await createEngine(demo, opts as never).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(KvoffArgumentError);
    expect((err as Error).message).toMatch(message);
  });

  it('a given capacity below the knobs\' minimum names the knob', async () => {
    const err = await run('streaming', { capacity: 4 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(KvoffArgumentError);
    expect((err as Error).message).toMatch(/at least 5 for streaming .* for engine options.capacity but received 4/);
    const h2o = await run('h2o', { capacity: 40, recent: 8 });
    expect(h2o.knobs).toMatchObject({ capacity: 40, recent: 8, window: 32 });
  }, 30_000);

  it('streaming loses a passkey outside its window at 1k context; dense finds it', async () => {
    // The premise: every trial's needle lies before streaming's window (102 kept tokens at 10%: 4 sinks + 98).
    const spec = loadTaskSpec();
    for (let trial = 0; trial < 4; trial++) {
      const { prompt: text, answer } = trialInstance(spec, 'passkey', 1024, 1, trial);
      const needleEnd = 1 + text.indexOf(`The pass key is ${answer}`) + 22; // byte tokens, after <|bos|>
      expect(needleEnd).toBeLessThan(1 + text.length - 98);
    }
    // dense keeps its whole KV on the device, so it runs uncapped; streaming gets 10% of the run's KV.
    const base = { tasks: ['passkey' as const], contexts: [1024], trials: 4, seed: 1, cpuThreads: 2 };
    const [streaming] = await runEval(demo, { ...base, policies: ['streaming'], budget: '10%' });
    const [dense] = await runEval(demo, { ...base, policies: ['dense'] });
    expect(dense.accuracy).toBe(1);
    expect(streaming.accuracy).toBe(0);
  }, 60_000);
});
