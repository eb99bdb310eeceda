// An abort in the middle of a step leaves the engine usable: the next generation equals an undisturbed one.
import { rm } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createEngine, loadModel, type Model } from '../src/index.js';
import { arenaTotals } from '../src/arena.js';
import { writeTinyModel, type TinyModel } from './fixtures.js';

let tiny: TinyModel;
let model: Model;
beforeAll(async () => {
  tiny = await writeTinyModel({ layers: 2, heads: 4, kvHeads: 2, hidden: 64, vocab: 97, maxPos: 512, seed: 91 });
  model = await loadModel(tiny.dir, { backend: 'cpu' });
});
afterAll(async () => {
  await model?.dispose();
  await rm(tiny.dir, { recursive: true, force: true });
});

const prompt = Array.from({ length: 300 }, (_, i) => (i * 11 + 3) % 97);

async function tokens(engine: Awaited<ReturnType<typeof createEngine>>, signal?: AbortSignal, onPrefill?: () => void) {
  const out: number[] = [];
  for await (const t of engine.generate(prompt, { maxNewTokens: 6, stopAtEos: false, signal, onPrefill })) out.push(t.token);
  return out;
}

describe.each(['dense', 'cpu', 'exact', 'specache'])('abort mid-step (%s)', (policy) => {
  it('rejects during prefill (a hang would hit the test timeout), frees the run, and the next run equals an undisturbed one', async () => {
    const clean = await createEngine(model, { policy, prefillChunk: 64 });
    const want = await tokens(clean);
    await clean.dispose();

    const engine = await createEngine(model, { policy, prefillChunk: 64 });
    const arenas = arenaTotals().count;
    const ac = new AbortController();
    await expect(tokens(engine, ac.signal, () => ac.abort(new Error('stop')))).rejects.toThrow(/stop|abort/i);
    expect(arenaTotals().count).toBe(arenas); // the run's cache and device tier are gone
    expect(await tokens(engine)).toEqual(want);
    await engine.dispose();
  }, 60_000);
});

describe('abort during decode', () => {
  it.each(['exact', 'tiered', 'specache'])('%s: an abort after some tokens rejects the generation and the engine goes on', async (policy) => {
    const engine = await createEngine(model, { policy });
    const ac = new AbortController();
    const got: number[] = [];
    await expect((async () => {
      for await (const t of engine.generate(prompt, { maxNewTokens: 20, stopAtEos: false, signal: ac.signal })) {
        got.push(t.token);
        if (got.length === 3) setImmediate(() => ac.abort(new Error('stop'))); // lands while the next step runs
      }
    })()).rejects.toThrow(/stop|abort/i);
    expect(got.length).toBeGreaterThanOrEqual(3);
    expect((await tokens(engine)).length).toBe(6);
    await engine.dispose();
  }, 60_000);
});
