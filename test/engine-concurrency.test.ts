// Races: random delays on the copy thread and the CPU workers (every interleaving of copy and compute the
// scheduler could produce) give bit-identical results, and a worker that crashes mid-step fails the step.
import { rm } from 'node:fs/promises';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { CpuAttentionPool, KvoffWorkerError } from '../src/cpu-attention.js';
import { createEngine, loadModel, type Model } from '../src/index.js';
import { native } from '../src/native.js';
import { rng } from './helpers.js';
import { writeTinyModel, type TinyModel } from './fixtures.js';

let tiny: TinyModel;
let model: Model;
beforeAll(async () => {
  tiny = await writeTinyModel({ layers: 2, heads: 4, kvHeads: 2, hidden: 64, vocab: 97, maxPos: 1024, seed: 33 });
  model = await loadModel(tiny.dir, { backend: 'cpu' });
});
afterAll(async () => {
  await model?.dispose();
  await rm(tiny.dir, { recursive: true, force: true });
});
afterEach(() => {
  vi.restoreAllMocks();
});

const prompts = [Array.from({ length: 330 }, (_, i) => (i * 17 + 4) % 97), Array.from({ length: 290 }, (_, i) => (i * 5 + 1) % 97)];

// A hot set smaller than the context, so every part of the split carries tokens.
const knobs = (policy: string) => (['exact', 'tiered', 'specache'].includes(policy) ? { topK: 16 } : {});

async function run(policy: string) {
  const engine = await createEngine(model, { policy, cpuThreads: 2, ...knobs(policy) });
  try {
    const logits: Float32Array[][] = [[], []];
    for await (const t of engine.generateBatch(prompts, { maxNewTokens: 8, stopAtEos: false })) logits[t.seq].push(t.logits.slice());
    return logits;
  } finally {
    await engine.dispose();
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Delays every worker task and every async gather by a random 0–3 ms, before it starts and after it ends. */
function jitter(seed: number): { tasks: number; gathers: number } {
  const count = { tasks: 0, gathers: 0 };
  const r = rng(seed);
  const delay = () => sleep(Math.floor((r() + 1) * 1.5 * 2) / 2);
  const runTask = CpuAttentionPool.prototype.runTask;
  vi.spyOn(CpuAttentionPool.prototype, 'runTask').mockImplementation(async function (this: CpuAttentionPool, task, opts) {
    count.tasks++;
    await delay();
    const out = await runTask.call(this, task, opts);
    await delay();
    return out;
  });
  const nat = native();
  const gather = nat.kvGatherAsync.bind(nat);
  vi.spyOn(nat, 'kvGatherAsync').mockImplementation(async (o) => {
    count.gathers++;
    await delay();
    await gather(o);
    await delay();
  });
  return count;
}

describe('copy and compute interleavings', () => {
  it.each(['exact', 'tiered', 'specache', 'cpu'])('%s: random delays on the copy thread and the workers change nothing', async (policy) => {
    const want = await run(policy);
    for (const seed of [1, 2, 3]) {
      const count = jitter(seed);
      const got = await run(policy);
      vi.restoreAllMocks();
      expect(count.tasks).toBeGreaterThan(policy === 'specache' ? 0 : 20); // specache decodes without the workers
      if (policy === 'specache') expect(count.gathers).toBeGreaterThan(8); // its prefetches went through the copy thread
      for (let s = 0; s < want.length; s++) {
        expect(got[s].length).toBe(want[s].length);
        for (let i = 0; i < want[s].length; i++) expect(Buffer.from(got[s][i].buffer).equals(Buffer.from(want[s][i].buffer)), `seed ${seed} seq ${s} step ${i}`).toBe(true);
      }
    }
  }, 120_000);
});

describe('a crashed worker', () => {
  it.each(['cpu', 'exact', 'tiered'])('%s: fails the step with KvoffWorkerError, never hangs, and the engine goes on', async (policy) => {
    const want = await run(policy);
    const engine = await createEngine(model, { policy, cpuThreads: 2, ...knobs(policy) });
    const runTask = CpuAttentionPool.prototype.runTask;
    let calls = 0;
    // The 40th task crashes its thread: inside decode for every policy here.
    vi.spyOn(CpuAttentionPool.prototype, 'runTask').mockImplementation(function (this: CpuAttentionPool, task, opts) {
      return runTask.call(this, ++calls === 40 ? { kind: 'crash' } : task, opts);
    });
    const err = await (async () => {
      for await (const _ of engine.generateBatch(prompts, { maxNewTokens: 8, stopAtEos: false })) void _;
    })().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(KvoffWorkerError);
    vi.restoreAllMocks();
    const logits: Float32Array[][] = [[], []];
    for await (const t of engine.generateBatch(prompts, { maxNewTokens: 8, stopAtEos: false })) logits[t.seq].push(t.logits.slice());
    await engine.dispose();
    for (let s = 0; s < 2; s++) for (let i = 0; i < want[s].length; i++) expect(Buffer.from(logits[s][i].buffer).equals(Buffer.from(want[s][i].buffer))).toBe(true);
  }, 120_000);
});
