// The device-resident token loop's bookkeeping without a GPU: a fake run whose "model" is a fixed next-token rule,
// driven greedy a step ahead (fed by its own argmax) and step by step, against the rule unrolled by hand.
import { describe, expect, it } from 'vitest';
import { residentLoop, type ResidentLoopContext } from '../src/engine/resident-loop.js';
import type { ResidentRun } from '../src/engine/resident-run.js';
import { validateSampling } from '../src/engine/sampling.js';
import { emptyStats } from '../src/engine/stats.js';
import type { ModelConfig } from '../src/model/types.js';

const V = 16;
/** The fake model: the token after `token` at position `pos`. */
const rule = (token: number, pos: number): number => (token * 5 + pos) % V;

function oneHot(rows: number[]): Float32Array {
  const out = new Float32Array(rows.length * V); // [rows, V]
  rows.forEach((t, r) => (out[r * V + t] = 1));
  return out;
}

/** A ResidentRun stand-in: prefill's token is the prompt's sum mod V, each step applies the rule to its rows. */
function fakeRun(o: { speculative: boolean; runsAhead: boolean; failAtPos?: number }) {
  let lastIds = new Int32Array(0); // "on the device": the last step's argmax
  const fed: number[][] = []; // rows fed per step, for the test to inspect
  const compute = (tokens: Int32Array, pos: number) => {
    if (pos === o.failAtPos) return Promise.reject(new Error('step failed'));
    fed.push([...tokens]);
    const ids = Int32Array.from(tokens, (t, r) => rule(t, pos + r));
    lastIds = ids;
    return Promise.resolve({ ids, logits: oneHot([...ids]) });
  };
  const decoder = {
    prefill: async (ids: Int32Array) => oneHot([ids.reduce((a, b) => a + b, 0) % V]),
    stepWithLogits: (tokens: Int32Array | null, pos: number, rows: 1 | 2) => compute(tokens ?? lastIds.slice(0, rows), pos),
    sampleOnDevice: () => {}, // the fake's "device" choice is the rule, which top-k 1 sampling must reproduce
  };
  const run = {
    decoder, runsAhead: o.runsAhead, attention: { speculative: o.speculative }, stepBytes: { h2d: 10, d2h: 1 },
    step: (token: number, guess: number | null, pos: number) => compute(guess === null ? Int32Array.of(token) : Int32Array.of(token, guess), pos),
  };
  return { run: run as unknown as ResidentRun, fed };
}

function context(eos: number[] = [], signal = new AbortController().signal): ResidentLoopContext {
  return { config: { vocabSize: V, eosTokenIds: eos } as unknown as ModelConfig, stats: emptyStats(0), prefillChunk: 8, kvDtype: 'bf16', signal, stopAtEos: true };
}

async function tokens(run: ResidentRun, ctx: ResidentLoopContext, prompt: number[], total: number, maxNew: number, temperature = 0): Promise<number[]> {
  const out: number[] = [];
  const sampling = validateSampling({ temperature, topK: temperature > 0 ? 1 : 0 });
  for await (const t of residentLoop(run, Int32Array.from(prompt), total, maxNew, sampling, ctx)) out.push(t.token);
  return out;
}

/** The rule unrolled: the first token from the prompt, then one per position. */
function expected(prompt: number[], n: number): number[] {
  const out = [prompt.reduce((a, b) => a + b, 0) % V];
  for (let i = 1; i < n; i++) out.push(rule(out[i - 1], prompt.length + i - 1));
  return out;
}

describe('the resident token loop', () => {
  const prompt = [3, 1, 4, 1, 5];
  it.each([
    ['greedy, a step ahead, speculative', { speculative: true, runsAhead: true }, 0],
    ['greedy, a step ahead', { speculative: false, runsAhead: true }, 0],
    ['greedy, step by step (a CPU part)', { speculative: false, runsAhead: false }, 0],
    ['sampling (top-k 1, drawn on the device), a step ahead, speculative', { speculative: true, runsAhead: true }, 1],
    ['sampling (top-k 1, drawn on the device), step by step (a CPU part)', { speculative: false, runsAhead: false }, 1],
  ])('%s: yields the rule\'s tokens, maxNew in all, steps - 1 guesses counted', async (_, o, temperature) => {
    const { run, fed } = fakeRun(o);
    const ctx = context();
    const got = await tokens(run, ctx, prompt, 100, 7, temperature);
    expect(got).toEqual(expected(prompt, 7));
    expect(ctx.stats.decodeTokens).toBe(6);
    expect(ctx.stats.prefillTokens).toBe(prompt.length);
    expect(ctx.stats.bytesH2D).toBe(60);
    // Every step fed the token before it: the device-fed steps took the last argmax, as the host ones did.
    expect(fed.map((rows) => rows[0])).toEqual(got.slice(0, 6));
    if (o.speculative) {
      expect(ctx.stats.specUsed + ctx.stats.specWasted).toBe(5);
      // The first step's guess is the token itself; later ones are the last step's second argmax.
      expect(fed[0][1]).toBe(got[0]);
      for (let j = 1; j < fed.length; j++) expect(fed[j][1]).toBe(rule(fed[j - 1][1], prompt.length + j));
    } else expect(fed.every((rows) => rows.length === 1)).toBe(true);
  });

  it('stops at the capacity: the last token yielded takes position total, and is not fed', async () => {
    for (const runsAhead of [true, false]) {
      const { run, fed } = fakeRun({ speculative: false, runsAhead });
      const got = await tokens(run, context(), prompt, prompt.length + 3, 50);
      expect(got).toEqual(expected(prompt, 4));
      expect(fed.length).toBe(3);
    }
  });

  it('maxNew 1 yields the prefill token only; an end-of-sequence token stops the run after it is yielded', async () => {
    const { run, fed } = fakeRun({ speculative: true, runsAhead: true });
    expect(await tokens(run, context(), prompt, 100, 1)).toEqual(expected(prompt, 1));
    expect(fed.length).toBe(0);
    const all = expected(prompt, 8);
    for (const runsAhead of [true, false]) {
      const { run: r2 } = fakeRun({ speculative: false, runsAhead });
      expect(await tokens(r2, context([all[3]]), prompt, 100, 8)).toEqual(all.slice(0, 4));
    }
  });

  it('a failed step fails the run, including one enqueued ahead while an earlier one was awaited', async () => {
    for (const runsAhead of [true, false]) {
      const { run } = fakeRun({ speculative: true, runsAhead, failAtPos: prompt.length + 2 });
      const got: number[] = [];
      const go = async () => {
        for await (const t of residentLoop(run, Int32Array.from(prompt), 100, 8, validateSampling({}), context())) got.push(t.token);
      };
      await expect(go()).rejects.toThrow('step failed');
      expect(got).toEqual(expected(prompt, 3)); // the tokens before the failed step came out
    }
  });

  it('an abort stops the run between steps', async () => {
    const ac = new AbortController();
    const { run } = fakeRun({ speculative: true, runsAhead: true });
    const got: number[] = [];
    const go = async () => {
      for await (const t of residentLoop(run, Int32Array.from(prompt), 100, 50, validateSampling({}), context([], ac.signal))) {
        got.push(t.token);
        if (got.length === 3) ac.abort();
      }
    };
    await expect(go()).rejects.toMatchObject({ name: 'AbortError' });
    expect(got.length).toBe(3);
  });
});
