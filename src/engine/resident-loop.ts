// The token loop of a device-resident run: prefill, then one decode step per token. Every token after the first is
// chosen on the device (argmax, or cudaSample with the run's seeded draws), so a step that is all on the device runs
// a step ahead: each step is fed by the last one's token where it lies, on the device, and the next step is enqueued
// before this one's logits reach the host; the GPU never waits for the host's launches.
import { performance } from 'node:perf_hooks';
import type { ModelConfig } from '../model/types.js';
import type { EngineStats } from './stats.js';
import type { ResidentRun } from './resident-run.js';
import { sample, seededRandom, type SamplingOptions } from './sampling.js';

export interface ResidentLoopContext {
  config: ModelConfig;
  stats: EngineStats;
  prefillChunk: number;
  kvDtype: 'bf16' | 'f16';
  signal: AbortSignal; // follows the caller's
  stopAtEos: boolean;
  onPrefill?: (done: number, total: number) => void;
}

/** A generated token and the logits [vocab] it was drawn from. */
export interface LoopToken {
  token: number;
  logits: Float32Array;
}

/**
 * Yields the tokens of one prompt: the first from the prefill, then one per step. The token yielded i-th takes
 * position ids.length + i and is fed back only while fewer than maxNew are out and it fits `total`.
 */
export async function* residentLoop(run: ResidentRun, ids: Int32Array, total: number, maxNew: number, sampling: Required<SamplingOptions>, ctx: ResidentLoopContext): AsyncGenerator<LoopToken> {
  const { stats, signal } = ctx;
  const t0 = performance.now();
  const prefill = await run.decoder.prefill(ids, { chunk: ctx.prefillChunk, dtype: ctx.kvDtype, signal, onLayer: (done, layers) => ctx.onPrefill?.(Math.round((ids.length * done) / layers), ids.length) });
  stats.deviceMs += performance.now() - t0;
  stats.prefillTokens += ids.length;
  // Decode steps the run may take: step j (1-based) feeds the (j-1)-th token at position ids.length + j - 1.
  const steps = Math.max(0, Math.min(maxNew - 1, total - ids.length));
  const stop = (token: number) => ctx.stopAtEos && ctx.config.eosTokenIds.includes(token);
  const random = seededRandom(sampling.seed);
  const first = sample(prefill, sampling, random); // the host draws the first token; the device the rest, in order
  yield { token: first, logits: prefill };
  if (stop(first) || steps === 0) return;
  if (sampling.temperature > 0) run.decoder.sampleOnDevice({ temperature: sampling.temperature, topK: sampling.topK, topP: sampling.topP, random });
  yield* run.runsAhead ? pipelined(run, first, ids.length, steps, ctx, stop) : stepwise(run, first, ids.length, steps, ctx, stop);
}

/**
 * Counts the guess fed at step j (for position start + j) against the token step j produced for that position.
 * As on the host-side path, the last step's guess is never checked: steps - 1 counts in all.
 */
function countGuess(stats: EngineStats, fed: number | null, token: number): void {
  if (fed !== null) stats[fed === token ? 'specUsed' : 'specWasted'] += 1;
}

function countStep(run: ResidentRun, stats: EngineStats): void {
  stats.decodeTokens += 1;
  stats.bytesH2D += run.stepBytes.h2d;
  stats.bytesD2H += run.stepBytes.d2h;
}

async function* stepwise(run: ResidentRun, first: number, start: number, steps: number, ctx: ResidentLoopContext, stop: (t: number) => boolean): AsyncGenerator<LoopToken> {
  const V = ctx.config.vocabSize;
  const spec = run.attention.speculative;
  let token = first;
  let next: number | null = null; // argmax of the last step's second row: the next guess
  for (let j = 1; j <= steps; j++) {
    ctx.signal.throwIfAborted();
    // No guess yet on the first step: repeating the token is as good as any (a wrong guess costs only hot-set quality).
    const guess = spec ? (next ?? token) : null;
    const t0 = performance.now();
    const out = await run.step(token, guess, start + j - 1); // ids [rows], logits [rows, vocab]
    ctx.stats.deviceMs += performance.now() - t0;
    countStep(run, ctx.stats);
    const logits = out.logits.subarray(0, V);
    token = out.ids[0];
    if (spec) {
      if (j < steps) countGuess(ctx.stats, guess, token);
      next = out.ids[1];
    }
    yield { token, logits };
    if (stop(token)) return;
  }
}

/**
 * Step j + 1 is enqueued (fed on the device by step j's token, and its speculative argmax) before step j's results
 * are awaited. The tokens yielded are the device's choices; a step enqueued past an end-of-sequence token is
 * wasted, never yielded.
 */
async function* pipelined(run: ResidentRun, first: number, start: number, steps: number, ctx: ResidentLoopContext, stop: (t: number) => boolean): AsyncGenerator<LoopToken> {
  const V = ctx.config.vocabSize;
  const spec = run.attention.speculative;
  const rows = spec ? 2 : 1;
  const d = run.decoder;
  type Result = { ids: Int32Array; logits: Float32Array };
  const enqueue = (j: number): Promise<Result> => {
    const p = j === 1 ? d.stepWithLogits(spec ? Int32Array.of(first, first) : Int32Array.of(first), start, rows) : d.stepWithLogits(null, start + j - 1, rows);
    p.catch(() => {}); // awaited in order below; one failing while an earlier one is awaited must not go unhandled
    return p;
  };
  let pending = enqueue(1);
  let fed = first; // the guess the awaited step was fed (step 1: the token itself)
  let t0 = performance.now();
  for (let j = 1; j <= steps; j++) {
    ctx.signal.throwIfAborted();
    const ahead = j < steps ? enqueue(j + 1) : null;
    const r = await pending;
    ctx.stats.deviceMs += performance.now() - t0;
    t0 = performance.now();
    countStep(run, ctx.stats);
    const token = r.ids[0];
    if (spec) {
      if (j < steps) countGuess(ctx.stats, fed, token);
      fed = r.ids[1]; // what the next step was fed as its guess
    }
    yield { token, logits: r.logits.subarray(0, V) };
    if (stop(token) || ahead === null) {
      await ahead?.catch(() => {}); // let the step run ahead finish before the run frees its buffers
      return;
    }
    pending = ahead;
  }
}
