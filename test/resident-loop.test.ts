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

/**
 * A ResidentRun stand-in: prefill's token is the prompt's sum mod V, each step applies the rule to its rows (sequence
 * s's rows at positions[s], positions[s] + 1). `fed` holds the rows each step was fed, per sequence.
 */
function fakeRun(o: { speculative: boolean; runsAhead: boolean; failAtPos?: number }) {
  let lastIds = new Int32Array(0); // "on the device": the last step's argmax
  const fed: number[][][] = []; // [step][sequence] rows fed, for the test to inspect
  const rowsPer = o.speculative ? 2 : 1;
  const compute = (tokens: Int32Array, positions: readonly number[]) => {
    if (positions.includes(o.failAtPos ?? -1)) return Promise.reject(new Error('step failed'));
    fed.push(positions.map((_, s) => [...tokens.subarray(s * rowsPer, (s + 1) * rowsPer)]));
    const ids = Int32Array.from(tokens, (t, i) => rule(t, positions[Math.floor(i / rowsPer)] + (i % rowsPer)));
    lastIds = ids;
    return Promise.resolve({ ids, logits: oneHot([...ids]) });
  };
  const decoder = {
    prefill: async (ids: Int32Array) => oneHot([ids.reduce((a, b) => a + b, 0) % V]),
    stepBatch: (tokens: Int32Array | null, positions: readonly number[]) => compute(tokens ?? lastIds.slice(), positions),
    sampleOnDevice: () => {}, // the fake's "device" choice is the rule, which top-k 1 sampling must reproduce
  };
  const run = { decoder, runsAhead: o.runsAhead, attention: { speculative: o.speculative }, stepBytes: { h2d: 10, d2h: 1 } };
  return { run: run as unknown as ResidentRun, fed };
}

function context(eos: number[] = [], signal = new AbortController().signal): ResidentLoopContext {
  return { config: { vocabSize: V, eosTokenIds: eos } as unknown as ModelConfig, stats: emptyStats(0), prefillChunk: 8, kvDtype: 'bf16', signal, stopAtEos: true };
}

async function tokens(run: ResidentRun, ctx: ResidentLoopContext, prompt: number[], total: number, maxNew: number, temperature = 0): Promise<number[]> {
  const out: number[] = [];
  const sampling = validateSampling({ temperature, topK: temperature > 0 ? 1 : 0 });
  for await (const t of residentLoop(run, [Int32Array.from(prompt)], [total], maxNew, sampling, ctx)) out.push(t.token);
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
    expect(fed.map((step) => step[0][0])).toEqual(got.slice(0, 6));
    if (o.speculative) {
      expect(ctx.stats.specUsed + ctx.stats.specWasted).toBe(5);
      // The first step's guess is the token itself; later ones are the last step's second argmax.
      expect(fed[0][0][1]).toBe(got[0]);
      for (let j = 1; j < fed.length; j++) expect(fed[j][0][1]).toBe(rule(fed[j - 1][0][1], prompt.length + j));
    } else expect(fed.every((step) => step[0].length === 1)).toBe(true);
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
        for await (const t of residentLoop(run, [Int32Array.from(prompt)], [100], 8, validateSampling({}), context())) got.push(t.token);
      };
      await expect(go()).rejects.toThrow('step failed');
      expect(got).toEqual(expected(prompt, 3)); // the tokens before the failed step came out
    }
  });

  it('a batch: each sequence yields its own tokens, in sequence order within a step, and stops on its own', async () => {
    const prompts = [[3, 1, 4, 1, 5], [2, 7], [9, 9, 9, 9, 9, 9, 9, 9]];
    const totals = [100, 2 + 3, 100]; // the second fits 3 more positions only
    const solo = prompts.map((p) => expected(p, 7));
    const eos = solo[2][2]; // the third stops at its third token (if no other sequence meets it sooner, checked below)
    for (const o of [{ speculative: true, runsAhead: true }, { speculative: false, runsAhead: true }, { speculative: false, runsAhead: false }]) {
      const { run, fed } = fakeRun(o);
      const ctx = context([eos]);
      const got: Array<{ seq: number; token: number }> = [];
      for await (const t of residentLoop(run, prompts.map((p) => Int32Array.from(p)), totals, 7, validateSampling({}), ctx)) got.push({ seq: t.seq, token: t.token });
      const want = solo.map((toks) => {
        const end = toks.indexOf(eos);
        return end < 0 ? toks : toks.slice(0, end + 1);
      });
      want[1] = want[1].slice(0, 4); // its prefill token and 3 steps
      for (let s = 0; s < 3; s++) expect(got.filter((t) => t.seq === s).map((t) => t.token), `${JSON.stringify(o)} seq ${s}`).toEqual(want[s]);
      // Step by step: the firsts of all three, then each step's tokens in sequence order.
      const order = got.map((t) => t.seq);
      expect(order.slice(0, 3)).toEqual([0, 1, 2]);
      expect(ctx.stats.decodeTokens).toBe(got.length - 3);
      // A finished sequence keeps its rows, at its last position; the steps run as long as the longest one needs
      // (running ahead, one more may be enqueued before an end-of-sequence token is seen: wasted, never yielded).
      const needed = Math.max(...want.map((w) => w.length)) - 1;
      expect(fed.length - needed).toBeGreaterThanOrEqual(0);
      expect(fed.length - needed).toBeLessThanOrEqual(o.runsAhead ? 1 : 0);
      expect(fed.every((step) => step.length === 3)).toBe(true);
    }
  });

  it('an abort stops the run between steps', async () => {
    const ac = new AbortController();
    const { run } = fakeRun({ speculative: true, runsAhead: true });
    const got: number[] = [];
    const go = async () => {
      for await (const t of residentLoop(run, [Int32Array.from(prompt)], [100], 50, validateSampling({}), context([], ac.signal))) {
        got.push(t.token);
        if (got.length === 3) ac.abort();
      }
    };
    await expect(go()).rejects.toMatchObject({ name: 'AbortError' });
    expect(got.length).toBe(3);
  });
});
