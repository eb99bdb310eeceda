// The token loop of a device-resident run, of one prompt or a batch: prefill per sequence, then one decode step per
// token for every sequence at once. Every token after the first is chosen on the device (argmax, or cudaSample with
// each sequence's seeded draws), so a step that is all on the device runs a step ahead: each step is fed by the last
// one's tokens where they lie, on the device, and the next step is enqueued before this one's logits reach the host;
// the GPU never waits for the host's launches.
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

/** A generated token of sequence `seq` and the logits [vocab] it was drawn from. */
export interface LoopToken {
  seq: number;
  token: number;
  logits: Float32Array;
}

/** One sequence of the batch: where its steps start, how many it may take, and what it was last fed as its guess. */
interface Seq {
  start: number; // prompt length: step j feeds position start + j - 1
  total: number; // positions it may fill
  steps: number; // decode steps it may take
  done: boolean;
  fed: number; // the guess its current step was fed
}

/**
 * Yields the tokens of every prompt: the first of each from its prefill, then one per step per live sequence, in
 * sequence order within a step. Sequence s's i-th token takes position prompts[s].length + i and is fed back only
 * while fewer than maxNew are out and it fits totals[s]. A sequence that is done keeps its rows in the batch (the
 * step's shape stays the same) at its last position; its tokens are not yielded.
 */
export async function* residentLoop(run: ResidentRun, prompts: readonly Int32Array[], totals: readonly number[], maxNew: number, sampling: Required<SamplingOptions>, ctx: ResidentLoopContext): AsyncGenerator<LoopToken> {
  const { stats, signal } = ctx;
  const B = prompts.length;
  const randoms = prompts.map((_, s) => seededRandom(sampling.seed + s)); // the host-side path's streams, one a sequence
  const stop = (token: number) => ctx.stopAtEos && ctx.config.eosTokenIds.includes(token);
  const seqs: Seq[] = [];
  const firsts: LoopToken[] = [];
  for (let s = 0; s < B; s++) {
    const ids = prompts[s];
    const t0 = performance.now();
    const onLayer = (done: number, layers: number) => ctx.onPrefill?.(Math.round((ids.length * done) / layers), ids.length);
    const logits = await run.decoder.prefill(ids, { seq: s, chunk: ctx.prefillChunk, dtype: ctx.kvDtype, signal, onLayer });
    stats.deviceMs += performance.now() - t0;
    stats.prefillTokens += ids.length;
    const token = sample(logits, sampling, randoms[s]); // the host draws the first token; the device the rest, in order
    const steps = Math.max(0, Math.min(maxNew - 1, totals[s] - ids.length));
    seqs.push({ start: ids.length, total: totals[s], steps, done: stop(token) || steps === 0, fed: token });
    firsts.push({ seq: s, token, logits });
  }
  yield* firsts;
  if (seqs.every((q) => q.done)) return;
  if (sampling.temperature > 0) run.decoder.sampleOnDevice({ temperature: sampling.temperature, topK: sampling.topK, topP: sampling.topP, random: randoms });
  yield* stepLoop(run, seqs, firsts.map((t) => t.token), ctx, stop);
}

/**
 * Steps 1 .. the longest sequence's steps. A run whose whole step is on the device enqueues step j + 1 (fed on the
 * device by step j's tokens and speculative argmaxes) before step j's results are awaited; one with a CPU part feeds
 * each step from the host. A step enqueued past the last token any sequence needs is wasted, never yielded.
 */
async function* stepLoop(run: ResidentRun, seqs: Seq[], firsts: number[], ctx: ResidentLoopContext, stop: (t: number) => boolean): AsyncGenerator<LoopToken> {
  const V = ctx.config.vocabSize;
  const spec = run.attention.speculative;
  const rowsPer = spec ? 2 : 1;
  const steps = Math.max(...seqs.map((q) => q.steps));
  const positions = (j: number) => seqs.map((q) => Math.min(q.start + j - 1, q.total - 1));
  // Host-fed rows: each sequence's last token and, when speculative, its guess (the first step's is the token itself).
  let last = firsts.slice();
  const hostRows = (): Int32Array => Int32Array.from(seqs.flatMap((q, s) => (spec ? [last[s], q.fed] : [last[s]])));
  type Result = { ids: Int32Array; logits: Float32Array };
  const enqueue = (j: number): Promise<Result> => {
    const p = run.decoder.stepBatch(j === 1 || !run.runsAhead ? hostRows() : null, positions(j), rowsPer);
    p.catch(() => {}); // awaited in order below; one failing while an earlier one is awaited must not go unhandled
    return p;
  };
  let pending = enqueue(1);
  let t0 = performance.now();
  for (let j = 1; j <= steps; j++) {
    ctx.signal.throwIfAborted();
    const ahead = run.runsAhead && j < steps ? enqueue(j + 1) : null;
    const r = await pending;
    ctx.stats.deviceMs += performance.now() - t0;
    t0 = performance.now();
    const out: LoopToken[] = [];
    last = seqs.map((_, s) => r.ids[s * rowsPer]);
    for (const [s, q] of seqs.entries()) {
      const token = r.ids[s * rowsPer];
      if (spec) {
        // As on the host-side path, the last step's guess is never checked: steps - 1 count in all.
        if (!q.done && j < q.steps) ctx.stats[q.fed === token ? 'specUsed' : 'specWasted'] += 1;
        q.fed = r.ids[s * rowsPer + 1]; // what the next step is fed as its guess
      }
      if (q.done) continue;
      ctx.stats.decodeTokens += 1;
      ctx.stats.bytesH2D += run.stepBytes.h2d;
      ctx.stats.bytesD2H += run.stepBytes.d2h;
      out.push({ seq: s, token, logits: r.logits.subarray(s * rowsPer * V, (s * rowsPer + 1) * V) });
      if (stop(token) || j >= q.steps) q.done = true;
    }
    yield* out;
    if (seqs.every((q) => q.done) || j === steps) {
      await ahead?.catch(() => {}); // let a step run ahead finish before the run frees its buffers
      return;
    }
    if (ahead === null) t0 = performance.now(); // the time the consumer took is not the step's
    pending = ahead ?? enqueue(j + 1);
  }
}
